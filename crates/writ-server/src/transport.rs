//! How accepted connections are set up, shared by Writ and the benchmark's empty-RPC floor
//! so that both are measured on the same transport.
//!
//! Two settings matter for small RPCs:
//! - `TCP_NODELAY`: a response written in more than one segment must not wait for the
//!   peer's delayed ACK (Nagle), which costs ~40 ms per small RPC.
//! - Buffered, not vectored, writes. On a socket that reports vectored-write support, h2
//!   keeps every DATA frame of 256 bytes or more out of its write buffer and must flush
//!   the socket before it can queue the next frame (the same stream's trailers, or
//!   another stream's answer): one `writev` per answer, and a second for the trailers.
//!   Reporting no vectored support raises that threshold to 1 KiB, so answers below it
//!   (a Validate with its token's context is 300–900 bytes) are copied into the buffer
//!   and many streams' answers leave in one write. Measured in BENCHMARKS.md.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::{Connected, TcpConnectInfo, TcpIncoming};

/// Accepted connections from `listener`, with Writ's socket settings.
pub fn incoming(listener: TcpListener) -> impl Stream<Item = io::Result<Conn>> + Send + 'static {
    TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)))
        .map(|accepted| accepted.map(Conn))
}

/// An accepted TCP connection that asks its writer for buffered writes (see the module
/// docs).
#[derive(Debug)]
pub struct Conn(TcpStream);

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.0.connect_info()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    // `poll_write_vectored` keeps its default (writes the first non-empty slice), which is
    // what a writer that sees `is_write_vectored() == false` expects.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_connections_keep_peer_address_and_ask_for_buffered_writes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut accepted = Box::pin(incoming(listener));
        let client = TcpStream::connect(addr).await.unwrap();
        let conn = accepted.next().await.unwrap().unwrap();
        assert_eq!(
            conn.connect_info().remote_addr(),
            Some(client.local_addr().unwrap())
        );
        assert!(conn.0.nodelay().unwrap(), "TCP_NODELAY is set");
        assert!(!conn.is_write_vectored());
    }
}

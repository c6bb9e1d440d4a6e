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
//!
//! Two more bound what peers can hold:
//! - TCP keepalive (probes after 60 s idle, every 10 s, 3 unanswered drop the peer), so a
//!   peer that vanished without a FIN does not hold its connection for hours; the server
//!   also sends HTTP/2 pings (`lib.rs`), which catch a dead peer on a busy socket too.
//! - At most [`MAX_CONNECTIONS`] connections at once: past that, accepting pauses (new
//!   peers wait in the listen backlog) until a connection closes.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};
use tokio_stream::Stream;
use tonic::transport::server::{Connected, TcpConnectInfo, TcpIncoming};

/// Most connections served at once. Each costs a task, buffers and up to 256 streams;
/// 1024 is far above what a deployment of agents behind a proxy opens, and low enough
/// that a peer opening connections in a loop exhausts neither memory nor descriptors.
pub const MAX_CONNECTIONS: usize = 1024;

/// Accepted connections from `listener`, with Writ's socket settings, at most
/// [`MAX_CONNECTIONS`] at once.
pub fn incoming(listener: TcpListener) -> impl Stream<Item = io::Result<Conn>> + Send + 'static {
    incoming_limited(listener, MAX_CONNECTIONS)
}

/// [`incoming`] with at most `max` connections open at once: the next is accepted only
/// once one of them has closed.
pub fn incoming_limited(
    listener: TcpListener,
    max: usize,
) -> impl Stream<Item = io::Result<Conn>> + Send + 'static {
    Limited {
        accept: TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .with_keepalive(Some(Duration::from_secs(60)))
            .with_keepalive_interval(Some(Duration::from_secs(10)))
            .with_keepalive_retries(Some(3)),
        places: Arc::new(Semaphore::new(max)),
        max,
        place: None,
        waiting: None,
    }
}

type Acquire = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

/// Accepts a connection only while it holds a place for it.
struct Limited {
    accept: TcpIncoming,
    places: Arc<Semaphore>,
    max: usize,
    /// The place the next accepted connection takes.
    place: Option<OwnedSemaphorePermit>,
    /// Waiting for a place, every one being taken.
    waiting: Option<Acquire>,
}

impl Limited {
    /// A place for the next connection, or `Pending` until one is free.
    fn poll_place(&mut self, cx: &mut Context<'_>) -> Poll<OwnedSemaphorePermit> {
        if self.waiting.is_none() {
            if let Ok(place) = self.places.clone().try_acquire_owned() {
                return Poll::Ready(place);
            }
            tracing::warn!(
                max = self.max,
                "connection limit reached; new connections wait until one closes"
            );
            self.waiting = Some(Box::pin(self.places.clone().acquire_owned()));
        }
        let Some(waiting) = self.waiting.as_mut() else {
            return Poll::Pending;
        };
        match waiting.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(place) => {
                self.waiting = None;
                match place {
                    Ok(place) => Poll::Ready(place),
                    // The semaphore is never closed; should it be, accept nothing more.
                    Err(_) => Poll::Pending,
                }
            }
        }
    }
}

impl Stream for Limited {
    type Item = io::Result<Conn>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.place.is_none() {
            match this.poll_place(cx) {
                Poll::Ready(place) => this.place = Some(place),
                Poll::Pending => return Poll::Pending,
            }
        }
        match Pin::new(&mut this.accept).poll_next(cx) {
            Poll::Ready(Some(Ok(stream))) => Poll::Ready(Some(Ok(Conn {
                stream,
                _place: this.place.take(),
            }))),
            // A failed accept takes no place.
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// An accepted TCP connection that asks its writer for buffered writes (see the module
/// docs), holding its place among [`MAX_CONNECTIONS`] until it is dropped.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    _place: Option<OwnedSemaphorePermit>,
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
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
    use tokio_stream::StreamExt;

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
        assert!(conn.stream.nodelay().unwrap(), "TCP_NODELAY is set");
        assert!(!conn.is_write_vectored());
    }

    /// Finding 15: past the cap, the next connection is accepted only once one closes.
    #[tokio::test]
    async fn connections_past_the_cap_wait_until_one_closes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut accepted = Box::pin(incoming_limited(listener, 1));
        let _first_client = TcpStream::connect(addr).await.unwrap();
        let first = accepted.next().await.unwrap().unwrap();
        // The kernel completes the handshake (listen backlog); Writ does not take it.
        let second_client = TcpStream::connect(addr).await.unwrap();
        let waited = tokio::time::timeout(Duration::from_millis(300), accepted.next()).await;
        assert!(
            waited.is_err(),
            "a second connection was accepted past the cap"
        );
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(10), accepted.next())
            .await
            .expect("accepted once the first closed")
            .unwrap()
            .unwrap();
        assert_eq!(
            second.connect_info().remote_addr(),
            Some(second_client.local_addr().unwrap())
        );
    }
}

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
//! These bound what peers can hold:
//! - TCP keepalive (probes after 60 s idle, every 10 s, 3 unanswered drop the peer), so a
//!   peer that vanished without a FIN does not hold its connection for hours; the server
//!   also sends HTTP/2 pings (`lib.rs`), which catch a dead peer on a busy socket too.
//! - At most [`MAX_CONNECTIONS`] connections at once: past that, accepting pauses (new
//!   peers wait in the listen backlog) until a connection closes.
//! - At most [`MAX_CONNECTIONS_PER_PEER`] from one IP address (more are closed at once),
//!   and a connection that sends nothing within [`FIRST_BYTE_TIMEOUT`] is closed: one
//!   host opening silent sockets cannot take every place.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};
use tokio_stream::Stream;
use tonic::transport::server::{Connected, TcpConnectInfo, TcpIncoming};

/// Most connections served at once. Each costs a task, buffers and up to 256 streams;
/// 1024 is far above what a deployment of agents behind a proxy opens, and low enough
/// that a peer opening connections in a loop exhausts neither memory nor descriptors.
pub const MAX_CONNECTIONS: usize = 1024;
/// Most connections from one IP address at once (a proxy in front of Writ is one peer, and
/// needs fewer: HTTP/2 multiplexes).
pub const MAX_CONNECTIONS_PER_PEER: usize = 64;
/// How long a new connection may stay silent before it is closed (a client sends the
/// HTTP/2 preface at once).
pub const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(10);

/// Idle time before TCP keepalive probes a connection.
pub const TCP_KEEPALIVE_TIME: Duration = Duration::from_secs(60);
/// Time between unanswered keepalive probes.
pub const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Unanswered probes after which the kernel drops the connection.
pub const TCP_KEEPALIVE_RETRIES: u32 = 3;

/// What one listener admits.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections at once.
    pub max: usize,
    /// Connections at once from one IP address.
    pub per_peer: usize,
    /// Silence allowed before the first byte.
    pub first_byte: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max: MAX_CONNECTIONS,
            per_peer: MAX_CONNECTIONS_PER_PEER,
            first_byte: FIRST_BYTE_TIMEOUT,
        }
    }
}

/// Accepted connections from `listener`, with Writ's socket settings and [`Limits`].
pub fn incoming(listener: TcpListener) -> impl Stream<Item = io::Result<Conn>> + Send + 'static {
    incoming_limited(listener, Limits::default())
}

/// [`incoming`] with other limits: the next connection is accepted only once one of the
/// `max` has closed; one past a peer's share is closed at once.
pub fn incoming_limited(
    listener: TcpListener,
    limits: Limits,
) -> impl Stream<Item = io::Result<Conn>> + Send + 'static {
    Limited {
        places: Arc::new(Semaphore::new(limits.max)),
        limits,
        peers: Arc::new(std::sync::Mutex::new(HashMap::new())),
        accept: TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .with_keepalive(Some(TCP_KEEPALIVE_TIME))
            .with_keepalive_interval(Some(TCP_KEEPALIVE_INTERVAL))
            .with_keepalive_retries(Some(TCP_KEEPALIVE_RETRIES)),
        place: None,
        waiting: None,
    }
}

type Acquire = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

/// Connections open per peer address.
type Peers = Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>;

/// Accepts a connection only while it holds a place for it.
struct Limited {
    limits: Limits,
    peers: Peers,
    accept: TcpIncoming,
    places: Arc<Semaphore>,
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
                max = self.limits.max,
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
        loop {
            match Pin::new(&mut this.accept).poll_next(cx) {
                Poll::Ready(Some(Ok(stream))) => {
                    let Some(peer) = PeerShare::take(&this.peers, &stream, this.limits.per_peer)
                    else {
                        // Past its share: closed at once (dropped), the place kept.
                        continue;
                    };
                    return Poll::Ready(Some(Ok(Conn {
                        stream,
                        silent: Some(Box::pin(tokio::time::sleep(this.limits.first_byte))),
                        _place: this.place.take(),
                        _peer: peer,
                    })));
                }
                // A failed accept takes no place.
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// One connection's share of its peer's [`Limits::per_peer`], given back when dropped.
#[derive(Debug)]
struct PeerShare {
    peers: Peers,
    ip: Option<IpAddr>,
}

impl PeerShare {
    fn take(peers: &Peers, stream: &TcpStream, per_peer: usize) -> Option<PeerShare> {
        let ip = stream.peer_addr().ok().map(|a| a.ip());
        if let Some(ip) = ip {
            let mut open = peers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let n = open.entry(ip).or_insert(0);
            if *n >= per_peer {
                tracing::warn!(peer = %ip, per_peer, "too many connections from one peer; closing the newest");
                return None;
            }
            *n += 1;
        }
        Some(PeerShare {
            peers: peers.clone(),
            ip,
        })
    }
}

impl Drop for PeerShare {
    fn drop(&mut self) {
        let Some(ip) = self.ip else { return };
        let mut open = self
            .peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = open.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&ip);
            }
        }
    }
}

/// An accepted TCP connection that asks its writer for buffered writes (see the module
/// docs), holding its place among [`MAX_CONNECTIONS`] until it is dropped.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    /// Until the first byte arrives: when it fires, the connection is closed.
    silent: Option<Pin<Box<tokio::time::Sleep>>>,
    _place: Option<OwnedSemaphorePermit>,
    _peer: PeerShare,
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
        let before = buf.filled().len();
        let read = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.silent = None;
        } else if let Some(silent) = self.silent.as_mut()
            && silent.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the peer sent nothing after connecting",
            )));
        }
        read
    }
}

/// `impl AsyncWrite for $conn`, writing through its field `$stream`, with buffered, not
/// vectored, writes (see the module docs): every connection type Writ serves (`Conn`, and
/// `TlsConn` over it) asks its writer the same way.
macro_rules! buffered_writes {
    ($conn:ty, $stream:ident) => {
        impl ::tokio::io::AsyncWrite for $conn {
            fn poll_write(
                mut self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
                buf: &[u8],
            ) -> ::std::task::Poll<::std::io::Result<usize>> {
                ::tokio::io::AsyncWrite::poll_write(
                    ::std::pin::Pin::new(&mut self.$stream),
                    cx,
                    buf,
                )
            }

            fn poll_flush(
                mut self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
            ) -> ::std::task::Poll<::std::io::Result<()>> {
                ::tokio::io::AsyncWrite::poll_flush(::std::pin::Pin::new(&mut self.$stream), cx)
            }

            fn poll_shutdown(
                mut self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
            ) -> ::std::task::Poll<::std::io::Result<()>> {
                ::tokio::io::AsyncWrite::poll_shutdown(::std::pin::Pin::new(&mut self.$stream), cx)
            }

            // `poll_write_vectored` keeps its default (writes the first non-empty slice),
            // which is what a writer that sees `is_write_vectored() == false` expects.
            fn is_write_vectored(&self) -> bool {
                false
            }
        }
    };
}
pub(crate) use buffered_writes;

buffered_writes!(Conn, stream);

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWrite;
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
        // A peer that vanished without a FIN is dropped by the kernel's probes.
        let sock = socket2::SockRef::from(&conn.stream);
        assert!(sock.keepalive().unwrap(), "SO_KEEPALIVE is set");
        assert_eq!(sock.tcp_keepalive_time().unwrap(), TCP_KEEPALIVE_TIME);
        assert_eq!(
            sock.tcp_keepalive_interval().unwrap(),
            TCP_KEEPALIVE_INTERVAL
        );
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), TCP_KEEPALIVE_RETRIES);
    }

    /// Finding 15: past the cap, the next connection is accepted only once one closes.
    #[tokio::test]
    async fn connections_past_the_cap_wait_until_one_closes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = Limits {
            max: 1,
            ..Limits::default()
        };
        let mut accepted = Box::pin(incoming_limited(listener, limits));
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

    /// A host's connections past its share are closed at once; the rest are served, and
    /// its share comes back as they close.
    #[tokio::test]
    async fn one_peer_gets_its_share_and_no_more() {
        use tokio::io::AsyncReadExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = Limits {
            per_peer: 2,
            ..Limits::default()
        };
        let mut accepted = Box::pin(incoming_limited(listener, limits));
        let mut clients = Vec::new();
        let mut served = Vec::new();
        for _ in 0..2 {
            clients.push(TcpStream::connect(addr).await.unwrap());
            served.push(accepted.next().await.unwrap().unwrap());
        }
        // The third is accepted by the kernel and closed by Writ: its read ends (EOF or
        // reset), and nothing more is handed to the server.
        let mut third = TcpStream::connect(addr).await.unwrap();
        let next = accepted.next();
        tokio::pin!(next);
        let mut byte = [0u8; 1];
        tokio::select! {
            r = third.read(&mut byte) => assert!(matches!(r, Ok(0) | Err(_)), "{r:?}"),
            c = &mut next => panic!("a third connection was served: {c:?}"),
        }
        drop(served.pop());
        let _fourth = TcpStream::connect(addr).await.unwrap();
        let again = tokio::time::timeout(Duration::from_secs(10), &mut next)
            .await
            .expect("accepted once one of the two closed");
        assert!(again.unwrap().is_ok());
    }

    /// A connection that says nothing is closed after the first-byte timeout; one that
    /// speaks keeps its place.
    #[tokio::test]
    async fn a_silent_connection_is_closed_a_talking_one_is_not() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = Limits {
            first_byte: Duration::from_millis(200),
            ..Limits::default()
        };
        let mut accepted = Box::pin(incoming_limited(listener, limits));
        let _silent_client = TcpStream::connect(addr).await.unwrap();
        let mut silent = accepted.next().await.unwrap().unwrap();
        let mut buf = [0u8; 8];
        let r = tokio::time::timeout(Duration::from_secs(30), silent.read(&mut buf))
            .await
            .expect("the silent connection's read ended");
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::TimedOut);
        let mut talker = TcpStream::connect(addr).await.unwrap();
        let mut talking = accepted.next().await.unwrap().unwrap();
        talker.write_all(b"PRI").await.unwrap();
        assert_eq!(talking.read(&mut buf).await.unwrap(), 3);
        // Past the timeout, it still reads.
        tokio::time::sleep(Duration::from_millis(400)).await;
        talker.write_all(b"x").await.unwrap();
        assert_eq!(talking.read(&mut buf).await.unwrap(), 1);
    }
}

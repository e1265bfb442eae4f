//! The server's connections: at most [`MAX_CONNECTIONS`] at once (the server lives in
//! the supervisor's process, whose file descriptors its children and jobs need), and
//! none kept by a client that only holds it open.
//!
//! A connection is *busy* while a handler works on one of its requests or one of its
//! answers is still being sent (an event stream, a followed log): [`Busy`], taken by the
//! router's guard and held by the streams. One that is not busy is closed when
//! - nothing came or went on it for [`IDLE_FOR`] (a kept-alive connection, or one that
//!   never sent a request), or
//! - a request on it has been coming in for [`REQUEST_WITHIN`] without being whole (a
//!   client sending its headers a byte at a time);
//!
//! and when all [`MAX_CONNECTIONS`] are taken, a new one closes the one idle longest that
//! is not busy: connections held open by a client that does nothing never lock the API
//! out, even for a moment.
//!
//! It also gives the HTTP library's own refusals (a request it cannot parse: 400, 431)
//! the body every 4xx of ours has, JSON `{"error": ...}`: the library answers those
//! before any handler, with an empty body, and has no hook for it ([`own_refusal`]).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// The most connections at once.
pub const MAX_CONNECTIONS: usize = 256;

/// How long a connection that is not busy may stay silent both ways. Longer than the
/// event stream's keep-alive; a browser opens a new connection when it needs one.
pub const IDLE_FOR: Duration = Duration::from_secs(30);

/// How long a request may take to come in whole (its headers; a body is read by its
/// handler, under the guard's own limit).
pub const REQUEST_WITHIN: Duration = Duration::from_secs(10);

/// What the listener and the connections share.
struct Registry {
    epoch: Instant,
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Arc<ConnState>>>,
}

impl Registry {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn at(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<ConnState>>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Close the connection idle longest among those not busy; false if all are busy.
    fn evict_one(&self) -> bool {
        let open = self.lock();
        let victim = (open.values())
            .filter(|c| c.busy.load(Ordering::SeqCst) == 0 && !c.evicted.load(Ordering::SeqCst))
            .min_by_key(|c| c.last.load(Ordering::SeqCst));
        match victim {
            Some(c) => {
                c.evict();
                true
            }
            None => false,
        }
    }
}

/// One connection's state, shared with the handlers of its requests.
#[derive(Debug, Default)]
pub struct ConnState {
    /// Handlers and answers at work for it.
    busy: AtomicUsize,
    /// When (ms after the registry's epoch) a byte last came or went.
    last: AtomicU64,
    /// When the request coming in now began (ms after the epoch, plus one); 0: none is.
    reading_since: AtomicU64,
    /// Closed to make room: its next read or write fails.
    evicted: AtomicBool,
    /// Who to wake when it is evicted: its last pending read.
    waker: Mutex<Option<Waker>>,
}

impl ConnState {
    fn evict(&self) {
        self.evicted.store(true, Ordering::SeqCst);
        let waker = self
            .waker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// When it is to be closed unless something happens (None: busy, it is not).
    fn deadline(&self, registry: &Registry) -> Option<Instant> {
        if self.busy.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let idle = registry.at(self.last.load(Ordering::SeqCst)) + IDLE_FOR;
        match self.reading_since.load(Ordering::SeqCst) {
            0 => Some(idle),
            since => Some(idle.min(registry.at(since - 1) + REQUEST_WITHIN)),
        }
    }
}

/// A connection's handle for its handlers (in each request's extensions, by the guard).
#[derive(Clone, Debug)]
pub struct ConnTag(pub Arc<ConnState>);

/// The connection is busy while this lives (see the module's doc).
#[derive(Debug)]
pub struct Busy(Arc<ConnState>);

impl Busy {
    pub fn new(tag: &ConnTag) -> Busy {
        let state = tag.0.clone();
        state.busy.fetch_add(1, Ordering::SeqCst);
        // A request taken by a handler is whole.
        state.reading_since.store(0, Ordering::SeqCst);
        Busy(state)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The listener, holding at most [`MAX_CONNECTIONS`] connections at once.
pub struct Limited {
    inner: tokio::net::TcpListener,
    permits: Arc<Semaphore>,
    registry: Arc<Registry>,
}

impl Limited {
    pub fn new(inner: tokio::net::TcpListener) -> Limited {
        Limited {
            inner,
            permits: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
            registry: Arc::new(Registry {
                epoch: Instant::now(),
                next_id: AtomicU64::new(0),
                open: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// A place for one more connection: a free one, else one made by closing the one
    /// idle longest (waiting for it to go), else (all busy) the next to be freed.
    async fn place(&self) -> Option<OwnedSemaphorePermit> {
        loop {
            if let Ok(p) = self.permits.clone().try_acquire_owned() {
                return Some(p);
            }
            if !self.registry.evict_one() {
                return self.permits.clone().acquire_owned().await.ok();
            }
            // The evicted one closes at its next poll: soon, but not at once.
            match tokio::time::timeout(Duration::from_secs(1), self.permits.clone().acquire_owned())
                .await
            {
                Ok(p) => return p.ok(),
                Err(_) => continue,
            }
        }
    }
}

/// A connection, with its place among the [`MAX_CONNECTIONS`].
pub struct Connection {
    stream: tokio::net::TcpStream,
    _permit: OwnedSemaphorePermit,
    id: u64,
    state: Arc<ConnState>,
    registry: Arc<Registry>,
    timer: Pin<Box<Sleep>>,
    /// A refusal of the library's, rewritten with a JSON body, and how much of it went.
    rewritten: Option<(Vec<u8>, usize)>,
}

impl Connection {
    pub fn tag(&self) -> ConnTag {
        ConnTag(self.state.clone())
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

impl axum::serve::Listener for Limited {
    type Io = Connection;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Connection, std::net::SocketAddr) {
        // The semaphore is never closed.
        let Some(permit) = self.place().await else {
            std::future::pending::<()>().await;
            unreachable!("a pending future never ends");
        };
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    let registry = self.registry.clone();
                    let id = registry.next_id.fetch_add(1, Ordering::SeqCst);
                    let state = Arc::new(ConnState::default());
                    state.last.store(registry.now_ms(), Ordering::SeqCst);
                    registry.lock().insert(id, state.clone());
                    let timer = Box::pin(tokio::time::sleep(IDLE_FOR));
                    let conn = Connection {
                        stream,
                        _permit: permit,
                        id,
                        state,
                        registry,
                        timer,
                        rewritten: None,
                    };
                    return (conn, addr);
                }
                // Out of descriptors, say: wait a little rather than spin.
                Err(e) => {
                    log::debug!("http: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.inner.local_addr()
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Limited>> for ConnTag {
    fn connect_info(stream: axum::serve::IncomingStream<'_, Limited>) -> Self {
        stream.io().tag()
    }
}

fn evicted() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        "closed to make room for another connection",
    )
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.state.evicted.load(Ordering::SeqCst) {
            return Poll::Ready(Err(evicted()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    let now = this.registry.now_ms();
                    this.state.last.store(now, Ordering::SeqCst);
                    if this.state.busy.load(Ordering::SeqCst) == 0 {
                        let _ = this.state.reading_since.compare_exchange(
                            0,
                            now.saturating_add(1),
                            Ordering::SeqCst,
                            Ordering::SeqCst,
                        );
                    }
                }
                return Poll::Ready(Ok(()));
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {}
        }
        *this
            .state
            .waker
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(cx.waker().clone());
        // Evicted meanwhile: the waker may have been taken before it was stored.
        if this.state.evicted.load(Ordering::SeqCst) {
            return Poll::Ready(Err(evicted()));
        }
        loop {
            let Some(deadline) = this.state.deadline(&this.registry) else {
                return Poll::Pending;
            };
            if deadline <= Instant::now() {
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "idle, or a request too slow to come in",
                )));
            }
            this.timer.as_mut().reset(deadline);
            if this.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }
}

/// If `head` is the start of one of the library's own refusals (a 4xx with an empty body,
/// which no handler of ours ever answers: theirs are JSON), the same refusal with a JSON
/// body saying what was wrong.
fn own_refusal(head: &[u8]) -> Option<Vec<u8>> {
    if !(head.starts_with(b"HTTP/1.1 4") || head.starts_with(b"HTTP/1.0 4")) {
        return None;
    }
    let text = String::from_utf8_lossy(&head[..head.len().min(512)]);
    let code: u16 = text.get(9..12)?.parse().ok()?;
    let headers = format!("{}\r\n", text.split("\r\n\r\n").next()?).to_ascii_lowercase();
    if !headers.contains("\r\ncontent-length: 0\r\n") {
        return None;
    }
    let (reason, error) = match code {
        400 => (
            "Bad Request",
            "the request is not HTTP/1.1 this server can read",
        ),
        414 => ("URI Too Long", "the request's URI is too long"),
        431 => (
            "Request Header Fields Too Large",
            "the request's headers are too large",
        ),
        _ => ("Refused", "the request is refused"),
    };
    let body = serde_json::json!({ "error": error }).to_string();
    Some(
        format!(
            "HTTP/1.1 {code} {reason}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

impl Connection {
    /// Write what is left of a rewritten refusal; ready once it is all written.
    fn drain_rewritten(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while let Some((bytes, done)) = &mut self.rewritten {
            if *done == bytes.len() {
                break;
            }
            match Pin::new(&mut self.stream).poll_write(cx, &bytes[*done..]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()))
                }
                Poll::Ready(Ok(n)) => *done += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }

    /// `head` is what the library writes first: if it is one of its own refusals, the
    /// JSON one goes instead (and what it writes after is dropped: the connection
    /// closes).
    fn rewrite(&mut self, head: &[u8]) -> bool {
        if self.rewritten.is_some() {
            return true;
        }
        if self.state.busy.load(Ordering::SeqCst) > 0 {
            return false;
        }
        match own_refusal(head) {
            Some(bytes) => {
                self.rewritten = Some((bytes, 0));
                true
            }
            None => false,
        }
    }

    /// Something was written: the connection is not idle, and no request is coming in.
    fn wrote(&self) {
        self.state
            .last
            .store(self.registry.now_ms(), Ordering::SeqCst);
        self.state.reading_since.store(0, Ordering::SeqCst);
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.state.evicted.load(Ordering::SeqCst) {
            return Poll::Ready(Err(evicted()));
        }
        if self.rewrite(buf) {
            self.wrote();
            return match self.drain_rewritten(cx) {
                Poll::Ready(Ok(())) | Poll::Pending => Poll::Ready(Ok(buf.len())),
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            };
        }
        let r = Pin::new(&mut self.stream).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.wrote();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::task::ready!(self.drain_rewritten(cx))?;
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::task::ready!(self.drain_rewritten(cx))?;
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        if self.state.evicted.load(Ordering::SeqCst) {
            return Poll::Ready(Err(evicted()));
        }
        let head = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &b[..]);
        if self.rewrite(head) {
            self.wrote();
            let len = bufs.iter().map(|b| b.len()).sum();
            return match self.drain_rewritten(cx) {
                Poll::Ready(Ok(())) | Poll::Pending => Poll::Ready(Ok(len)),
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            };
        }
        let r = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.wrote();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::own_refusal;

    #[test]
    fn the_librarys_refusals_get_a_json_body_and_nothing_else_does() {
        let hyper = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: Tue, 01 Dec 2026 20:54:37 GMT\r\n\r\n";
        let out = String::from_utf8(own_refusal(hyper).expect("rewritten")).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
        assert!(head.contains("content-type: application/json"), "{head}");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
        let big = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n";
        assert!(String::from_utf8(own_refusal(big).unwrap())
            .unwrap()
            .starts_with("HTTP/1.1 431 "));
        // Ours (a body), successes, and a body's bytes are left alone.
        for left in [
            &b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 28\r\n\r\n{\"error\":\"no such endpoint\"}"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 in a job's log\r\ncontent-length: 12\r\n",
            b"{\"error\": \"x\"}",
            b"",
        ] {
            assert_eq!(own_refusal(left), None, "{}", String::from_utf8_lossy(left));
        }
        // Whatever follows the status line, cut anywhere (inside a character too), it
        // never panics.
        let mut head = b"HTTP/1.1 4\xff\xfe0\r\ncontent-length: 0\r\n\r\n\xe2\x82".to_vec();
        head.extend(std::iter::repeat_n(b'\xc3', 600));
        for cut in 0..=head.len() {
            let _ = own_refusal(&head[..cut]);
        }
    }
}

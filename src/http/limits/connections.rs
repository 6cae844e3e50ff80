//! The accept loop and the lifecycle of every connection, so no client can
//! hold connections: hyper is driven directly (`axum::serve` has none of
//! these knobs).
//!
//! - At most `max_connections` are open (`BPF_REGISTRY_MAX_CONNECTIONS`,
//!   by default derived from `RLIMIT_NOFILE`). At the cap, the connection
//!   idle the longest (no request in progress; a silent or handshaking
//!   one counts as idle since its accept) is closed to make room; when
//!   every connection has a request in progress, the new one is refused:
//!   a minimal `503` with `Retry-After` on plain HTTP, a close on TLS.
//! - A connection without a request in progress is closed after
//!   `header_read_timeout`, counted from the accept or from the end of its
//!   last response: silent HTTP/1, h2c after the preface, TLS after the
//!   handshake and idle HTTP/2 alike. The TLS handshake runs in the
//!   connection's own task (concurrently, bounded by the cap) within
//!   `tls_handshake_timeout`.
//! - A write that makes no progress for `write_stall_timeout` (the client
//!   stopped reading its response) closes the connection.
//! - A plain connection starts in the front (`front`): it serves the
//!   fleet's long-polls itself, parked with nothing but the socket, and
//!   hands the connection to hyper at the first request it does not serve.
//! - Accept errors never end the loop: out of descriptors (a cap set above
//!   what `RLIMIT_NOFILE` allows), up to 32 idle connections are closed,
//!   the cap is lowered to what is left open, and accepting pauses briefly.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, Semaphore};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

use super::write_stall::WriteStall;
use super::BodyHolding;
use crate::config::Config;

mod front;

/// Upper bound of the derived connection cap (each open connection costs
/// a descriptor and some buffers).
const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Descriptors kept free for the store (blob files, temp files, the lock)
/// and the runtime: a quarter of `RLIMIT_NOFILE`, at least this many.
const MIN_RESERVED_DESCRIPTORS: u64 = 64;
/// How long a closing connection with nothing in progress may take to send
/// its goodbye (an HTTP/2 GOAWAY) before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// The most an HTTP/1 connection reads ahead (hyper's default is about
/// 400 KiB): a pushed body arrives in pieces of at most this size, so a
/// push in flight holds a few of them, not a few hundred KiB per read;
/// also the longest request head (431 beyond it).
const H1_MAX_BUF: usize = 64 * 1024;
/// HTTP/2 keep-alive pings while a request is in progress find dead peers.
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);
/// Refused connections being answered 503 at once; beyond that they are
/// closed without an answer.
const MAX_REFUSALS: usize = 16;
/// How long a refused connection is drained before the close (so the 503
/// is not lost to a reset).
const REFUSAL_DRAIN: Duration = Duration::from_secs(1);
/// Pause of the accept loop when out of descriptors with nothing to close.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Pause after closing idle connections for descriptors.
const ACCEPT_BACKOFF_EVICTED: Duration = Duration::from_millis(5);
/// Idle connections closed when accepting runs out of descriptors.
const SHED_ON_EMFILE: usize = 32;
/// At most one warning per this period for refusals and accept errors.
const WARN_EVERY: Duration = Duration::from_secs(10);

const REFUSAL_503: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: application/json\r\nContent-Length: 80\r\nConnection: close\r\n\r\n{\"error\":\"too_many_connections\",\"message\":\"connection cap reached; retry later\"}";

/// The connection limits of [`serve`].
#[derive(Clone, Debug)]
pub struct ConnectionPolicy {
    /// Longest a connection may go without a request in progress (and the
    /// HTTP/1 header read timeout).
    pub header_read_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    pub max_connections: usize,
    pub write_stall_timeout: Duration,
}

impl ConnectionPolicy {
    /// From the config; an unset `BPF_REGISTRY_MAX_CONNECTIONS` is derived
    /// from `RLIMIT_NOFILE`, a set one above what it leaves is warned about.
    pub fn from_config(c: &Config) -> Self {
        let soft = nofile_soft_limit();
        let usable = soft.map(usable_descriptors);
        let max_connections = match (c.max_connections, usable) {
            (Some(n), Some(u)) => {
                if n as u64 > u {
                    tracing::warn!(
                        max_connections = n,
                        rlimit_nofile = soft.unwrap_or(0),
                        "BPF_REGISTRY_MAX_CONNECTIONS={n} leaves too few of the {} file descriptors (RLIMIT_NOFILE) for the store: accepting may fail with EMFILE; raise `ulimit -n` or lower the cap",
                        soft.unwrap_or(0)
                    );
                }
                n
            }
            (Some(n), None) => n,
            (None, Some(u)) => usize::try_from(u)
                .unwrap_or(usize::MAX)
                .clamp(1, DEFAULT_MAX_CONNECTIONS),
            (None, None) => DEFAULT_MAX_CONNECTIONS,
        };
        ConnectionPolicy {
            header_read_timeout: c.header_read_timeout,
            tls_handshake_timeout: c.tls_handshake_timeout,
            max_connections: max_connections.max(1),
            write_stall_timeout: c.body_idle_timeout,
        }
    }
}

/// Descriptors connections may use out of a soft limit.
fn usable_descriptors(soft: u64) -> u64 {
    soft.saturating_sub((soft / 4).max(MIN_RESERVED_DESCRIPTORS))
}

fn nofile_soft_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes into the struct we own.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    if rc != 0 || lim.rlim_cur == libc::RLIM_INFINITY {
        return None;
    }
    // `rlim_t` is not u64 everywhere.
    #[allow(clippy::unnecessary_cast)]
    Some(lim.rlim_cur as u64)
}

// ---- open connections --------------------------------------------------------

/// Whether a connection has requests in progress, and since when it has
/// had none.
#[derive(Clone, Copy, Debug)]
struct Idleness {
    in_flight: usize,
    since: Instant,
}

/// One open connection as the registry and its requests see it. A lock
/// and two `Notify`s, not a `watch` channel: this is held per open
/// connection (ten thousand parked long-polls), and a channel's shared
/// state is about 360 bytes where this is under 100.
struct Activity {
    state: Mutex<Idleness>,
    /// Woken when `state` changes (a request begins or ends).
    changed: Notify,
    /// Told to close (to make room for a new connection).
    evict: Notify,
}

impl Activity {
    fn new() -> Self {
        Activity {
            state: Mutex::new(Idleness {
                in_flight: 0,
                since: Instant::now(),
            }),
            changed: Notify::new(),
            evict: Notify::new(),
        }
    }

    fn now(&self) -> Idleness {
        *self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn modify(&self, f: impl FnOnce(&mut Idleness)) {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()));
        self.changed.notify_waiters();
    }
}

/// A request in progress on a connection; dropped with its response body.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn begin(activity: &Arc<Activity>) -> Self {
        activity.modify(|s| s.in_flight += 1);
        InFlight(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.modify(|s| {
            s.in_flight = s.in_flight.saturating_sub(1);
            if s.in_flight == 0 {
                s.since = Instant::now();
            }
        });
    }
}

/// The open connections, for the cap and eviction.
struct Registry {
    /// The cap; lowered when accepting runs out of descriptors below it.
    max: AtomicUsize,
    open: Mutex<HashMap<u64, Arc<Activity>>>,
    next_id: AtomicU64,
}

/// A connection's place in the registry; leaves it when dropped.
struct Slot {
    registry: Arc<Registry>,
    id: u64,
    activity: Arc<Activity>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Activity>>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Closes the connection idle the longest; false when none is idle.
    fn evict_one(open: &mut HashMap<u64, Arc<Activity>>) -> bool {
        let victim = open
            .iter()
            .map(|(id, a)| (*id, a.now()))
            .filter(|(_, s)| s.in_flight == 0)
            .min_by_key(|(_, s)| s.since)
            .map(|(id, _)| id);
        match victim.and_then(|id| open.remove(&id)) {
            Some(a) => {
                a.evict.notify_one();
                true
            }
            None => false,
        }
    }

    fn new(max: usize) -> Self {
        Registry {
            max: AtomicUsize::new(max.max(1)),
            open: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        }
    }

    /// Out of descriptors: closes up to `SHED_ON_EMFILE` idle connections
    /// (descriptors for the store and new clients) and lowers the cap to
    /// what is left open, so it does not happen again. Returns the new cap
    /// when something was closed.
    fn shed(&self) -> Option<usize> {
        let mut open = self.lock();
        let mut closed = 0;
        while closed < SHED_ON_EMFILE && Self::evict_one(&mut open) {
            closed += 1;
        }
        if closed == 0 {
            return None;
        }
        let cap = open.len().max(1);
        self.max.fetch_min(cap, Ordering::Relaxed);
        Some(cap)
    }

    /// A slot for a new connection, making room if needed; `None` when
    /// every open connection is busy.
    fn admit(self: &Arc<Self>) -> Option<Slot> {
        let mut open = self.lock();
        if open.len() >= self.max.load(Ordering::Relaxed) && !Self::evict_one(&mut open) {
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let activity = Arc::new(Activity::new());
        open.insert(id, activity.clone());
        Some(Slot {
            registry: self.clone(),
            id,
            activity,
        })
    }
}

/// Resolves once the connection has had no request in progress for
/// `timeout`, counted from its last request's end or from `from`,
/// whichever is later.
async fn idle_for(activity: &Activity, from: Instant, timeout: Duration) {
    loop {
        // Registered before the state is read: a change after the read
        // wakes it.
        let changed = activity.changed.notified();
        let mut changed = pin!(changed);
        changed.as_mut().enable();
        let now = activity.now();
        if now.in_flight > 0 {
            changed.await;
            continue;
        }
        let deadline = now.since.max(from) + timeout;
        tokio::select! {
            _ = tokio::time::sleep_until(deadline.into()) => {
                let later = activity.now();
                if later.in_flight == 0 && later.since == now.since {
                    return;
                }
            }
            _ = changed => {}
        }
    }
}

/// Rate-limited warnings (a flood must not flood the log).
struct Throttle(Mutex<Option<Instant>>);

impl Throttle {
    fn ready(&self) -> bool {
        let mut last = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match *last {
            Some(t) if t.elapsed() < WARN_EVERY => false,
            _ => {
                *last = Some(Instant::now());
                true
            }
        }
    }
}

// ---- the accept loop ------------------------------------------------------------

/// Serves `app` on `listener` (TLS-terminated with `tls`) until `shutdown`
/// resolves, then lets in-flight requests finish. HTTP/1.1 and HTTP/2
/// (prior knowledge, or ALPN over TLS). Each request carries the peer
/// address as `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: Router,
    policy: ConnectionPolicy,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let tls = tls.map(TlsAcceptor::from);
    let registry = Arc::new(Registry::new(policy.max_connections));
    tracing::info!(
        max_connections = policy.max_connections,
        "accepting connections"
    );
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS));
    let refusal_warning = Throttle(Mutex::new(None));
    let accept_warning = Throttle(Mutex::new(None));
    let (signal_tx, signal_rx) = watch::channel(());
    let (close_tx, close_rx) = watch::channel(());
    let mut shutdown = pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = &mut shutdown => break,
        };
        let (tcp, peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                accept_failed(e, &registry, &accept_warning).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let Some(slot) = registry.admit() else {
            if refusal_warning.ready() {
                tracing::warn!(
                    max_connections = policy.max_connections,
                    "connection cap reached and every connection busy: refusing connections"
                );
            }
            refuse(tcp, tls.is_none(), &refusals);
            continue;
        };
        tracing::trace!(remote = %peer, "connection accepted");
        let conn = Connection {
            peer,
            app: app.clone(),
            policy: policy.clone(),
            slot,
            signal: signal_rx.clone(),
        };
        let tls = tls.clone();
        let close_rx = close_rx.clone();
        tokio::spawn(async move {
            conn.run(tcp, tls).await;
            drop(close_rx);
        });
    }
    drop(listener);
    let _ = signal_tx.send(());
    drop(signal_rx);
    drop(close_rx);
    close_tx.closed().await;
    Ok(())
}

/// An accept error: connection-level ones are skipped; out of descriptors
/// (or memory), idle connections are closed, the cap lowered and
/// accepting pauses briefly; anything else pauses too, so a persistent
/// error never spins.
async fn accept_failed(e: io::Error, registry: &Registry, warning: &Throttle) {
    use io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted
    ) {
        tracing::debug!(error = %e, "accept: connection failed");
        return;
    }
    let out_of_resources = matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    );
    let lowered = if out_of_resources {
        registry.shed()
    } else {
        None
    };
    if let Some(cap) = lowered {
        tracing::warn!(
            error = %e,
            max_connections = cap,
            "accept: out of file descriptors: idle connections closed and the connection cap lowered (raise `ulimit -n` or lower BPF_REGISTRY_MAX_CONNECTIONS)"
        );
    } else if warning.ready() {
        tracing::warn!(error = %e, "accept failed; pausing");
    }
    tokio::time::sleep(if lowered.is_some() {
        ACCEPT_BACKOFF_EVICTED
    } else {
        ACCEPT_BACKOFF
    })
    .await;
}

/// Refuses a connection without stalling the accept loop: on plain HTTP a
/// minimal 503 (written without waiting), then a short drain so the answer
/// is not lost to a reset; on TLS, or beyond `MAX_REFUSALS`, a close.
fn refuse(mut tcp: TcpStream, plain: bool, refusals: &Arc<Semaphore>) {
    if !plain {
        return;
    }
    let Ok(permit) = refusals.clone().try_acquire_owned() else {
        return;
    };
    if tcp.try_write(REFUSAL_503).is_err() {
        return;
    }
    tokio::spawn(async move {
        let _permit = permit;
        let _ = tcp.shutdown().await;
        let mut sink = [0u8; 4096];
        let _ = tokio::time::timeout(REFUSAL_DRAIN, async {
            while let Ok(n) = tcp.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
    });
}

// ---- one connection --------------------------------------------------------------

struct Connection {
    peer: SocketAddr,
    app: Router,
    policy: ConnectionPolicy,
    slot: Slot,
    signal: watch::Receiver<()>,
}

impl Connection {
    async fn run(self, tcp: TcpStream, tls: Option<TlsAcceptor>) {
        let accepted = Instant::now();
        let io = WriteStall::new(tcp, self.policy.write_stall_timeout);
        // Each variant's future on the heap, sized for itself: a held
        // plain connection does not carry room for a TLS one.
        match tls {
            None => Box::pin(self.run_plain(io, accepted)).await,
            Some(acceptor) => Box::pin(self.run_tls(io, acceptor, accepted)).await,
        }
    }

    /// The TLS handshake (bounded by its timeout, the header timeout and
    /// eviction), then HTTP over it.
    async fn run_tls(
        mut self,
        io: WriteStall<TcpStream>,
        acceptor: TlsAcceptor,
        accepted: Instant,
    ) {
        let activity = self.slot.activity.clone();
        let handshake =
            tokio::time::timeout(self.policy.tls_handshake_timeout, acceptor.accept(io));
        let peer = self.peer;
        let tls = tokio::select! {
            r = handshake => match r {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(client = %peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(client = %peer, "TLS handshake timed out");
                    return;
                }
            },
            _ = idle_for(&activity, accepted, self.policy.header_read_timeout) => {
                tracing::debug!(client = %peer, "TLS handshake: header timeout");
                return;
            }
            _ = activity.evict.notified() => {
                tracing::debug!(client = %peer, "closed during the TLS handshake to make room");
                return;
            }
            _ = self.signal.changed() => return,
        };
        Box::pin(self.drive(tls, accepted)).await
    }

    /// Plain HTTP: the front serves what it can (the fleet's long-polls,
    /// parked cheaply), then hyper the rest of the connection.
    async fn run_plain(mut self, mut io: WriteStall<TcpStream>, accepted: Instant) {
        let front = front::Front {
            peer: self.peer,
            app: &self.app,
            activity: &self.slot.activity,
            policy: &self.policy,
            signal: &mut self.signal,
            accepted,
        };
        match front.serve(&mut io).await {
            front::Ended::Closed => {}
            front::Ended::HandOver(read) => {
                // Its own allocation: a parked connection's future does
                // not carry room for hyper's.
                Box::pin(self.drive(front::Rewind::new(read, io), Instant::now())).await
            }
        }
    }

    /// Serves HTTP on an established connection until it ends, goes idle,
    /// is evicted or the server shuts down.
    async fn drive<I>(mut self, io: I, accepted: Instant)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = self.slot.activity.clone();
        let peer = self.peer;
        let app = self.app.clone();
        let tracked = activity.clone();
        let service = tower::service_fn(move |req: axum::http::Request<hyper::body::Incoming>| {
            let in_flight = InFlight::begin(&tracked);
            let mut req = req.map(Body::new);
            req.extensions_mut().insert(ConnectInfo(peer));
            let app = app.clone();
            async move {
                let resp = app.oneshot(req).await?;
                Ok::<_, std::convert::Infallible>(
                    resp.map(|b| Body::new(BodyHolding::new(b, in_flight))),
                )
            }
        });
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.policy.header_read_timeout)
            .max_buf_size(H1_MAX_BUF);
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(H2_PING_INTERVAL)
            .keep_alive_timeout(H2_PING_TIMEOUT);
        let mut conn = pin!(builder
            .serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(service)));
        let why = tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(client = %peer, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = idle_for(&activity, accepted, self.policy.header_read_timeout) => "idle",
            _ = activity.evict.notified() => "closed to make room",
            _ = self.signal.changed() => "shutdown",
        };
        tracing::debug!(client = %peer, why, "closing connection");
        // Requests in progress finish; with none, the goodbye gets a moment.
        conn.as_mut().graceful_shutdown();
        let closing = Instant::now();
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(client = %peer, error = %e, "connection ended with an error");
                }
            }
            _ = idle_for(&activity, closing, CLOSE_GRACE) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_is_a_well_formed_503() {
        let text = std::str::from_utf8(REFUSAL_503).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "));
        assert!(head.contains(&format!("\r\nContent-Length: {}\r\n", body.len())));
        assert!(head.contains(&format!(
            "\r\nRetry-After: {}\r\n",
            super::super::RETRY_AFTER_SECS
        )));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"], "too_many_connections");
    }

    #[test]
    fn derived_cap_leaves_descriptors_for_the_store() {
        assert_eq!(usable_descriptors(256), 192);
        assert_eq!(usable_descriptors(1024), 768);
        assert_eq!(usable_descriptors(100), 36);
        assert_eq!(usable_descriptors(10), 0);
    }

    #[tokio::test]
    async fn at_the_cap_the_longest_idle_connection_is_evicted() {
        let registry = Arc::new(Registry::new(2));
        let a = registry.admit().unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        let b = registry.admit().unwrap();
        let _busy = InFlight::begin(&b.activity);
        let c = registry
            .admit()
            .expect("room made by evicting the idle one");
        assert!(!registry.lock().contains_key(&a.id));
        // `a` was told to close.
        tokio::time::timeout(Duration::from_secs(1), a.activity.evict.notified())
            .await
            .unwrap();
        let _busy_c = InFlight::begin(&c.activity);
        assert!(registry.admit().is_none(), "every connection is busy");
        drop(a);
        assert_eq!(registry.lock().len(), 2);
    }

    #[test]
    fn out_of_descriptors_idle_connections_are_shed_and_the_cap_lowered() {
        let registry = Arc::new(Registry::new(1000));
        let slots: Vec<Slot> = (0..40).map(|_| registry.admit().unwrap()).collect();
        let _busy: Vec<InFlight> = slots[..4]
            .iter()
            .map(|s| InFlight::begin(&s.activity))
            .collect();
        assert_eq!(registry.shed(), Some(8));
        assert_eq!(registry.max.load(Ordering::Relaxed), 8);
        // Only the busy ones and the youngest idle ones are left.
        assert!(registry.lock().contains_key(&slots[0].id));
        assert!(!registry.lock().contains_key(&slots[4].id));
        assert!(registry.lock().contains_key(&slots[39].id));
        assert!(registry.admit().is_some(), "room by evicting an idle one");
    }
}

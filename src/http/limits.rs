//! Limits against bad clients.
//!
//! - [`serve`] (in `limits/connections.rs`): the accept loop and the
//!   lifecycle of connections: open-connection cap, idle and handshake
//!   timeouts, stalled writes.
//! - [`enforce`] (middleware): at most `BPF_REGISTRY_MAX_CONCURRENT_REQUESTS`
//!   requests at once (a request counts until its response body is sent);
//!   one more is answered at once with 429 `TOOMANYREQUESTS` and
//!   `Retry-After`, never queued. `/healthz` is exempt, and so are
//!   long-polls (`GET .../desired?wait=`, `GET /artifacts/for-host/...?wait=`):
//!   `BPF_REGISTRY_MAX_WATCHERS` bounds those from their start.
//! - Request body pace ([`BodyPace`]): a body fails when it stalls for
//!   `BPF_REGISTRY_BODY_IDLE_TIMEOUT` between two chunks, or when it
//!   delivers less than `BPF_REGISTRY_MIN_BODY_RATE` bytes/s over a
//!   `BPF_REGISTRY_BODY_RATE_WINDOW` of waiting for it. The handler then
//!   stores nothing, and its error answer becomes 408 (the route's
//!   dialect, `Connection: close`), so the permit is freed at once.
//!
//! Body sizes are capped where bodies are read: manifests
//! (`BPF_REGISTRY_MAX_MANIFEST_BYTES`), `POST /artifacts` (from
//! `BPF_REGISTRY_MAX_ARTIFACT_BYTES`), other JSON bodies (their handlers);
//! blob bodies stream to disk and are bounded by the store only.

mod connections;
mod write_stall;

pub use connections::{serve, ConnectionPolicy};

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::Version;
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::sync::Semaphore;

use super::error::Dialect;
use super::RouteName;
use crate::config::Config;

/// Seconds a client is told to wait after a 429 (or a refused connection).
pub const RETRY_AFTER_SECS: u64 = 1;

/// How fast a request body must arrive. Time counts only while the handler
/// waits for the body, so a slow disk is never blamed on the client.
#[derive(Clone, Copy, Debug)]
pub struct BodyPace {
    /// Longest stall between two chunks.
    pub idle_timeout: Duration,
    /// Bytes per second a body must deliver over each `window` of waiting;
    /// 0 turns the minimum off.
    pub min_rate: u64,
    pub window: Duration,
}

impl BodyPace {
    /// Bytes a full window must bring.
    fn window_bytes(&self) -> u64 {
        let ms = u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX);
        self.min_rate.saturating_mul(ms) / 1000
    }
}

/// The request limits of the middleware.
#[derive(Clone)]
pub struct RequestLimits {
    permits: Arc<Semaphore>,
    pace: BodyPace,
}

impl RequestLimits {
    pub fn new(max_concurrent_requests: usize, pace: BodyPace) -> Self {
        RequestLimits {
            permits: Arc::new(Semaphore::new(max_concurrent_requests.max(1))),
            pace,
        }
    }

    pub fn from_config(c: &Config) -> Self {
        Self::new(
            c.max_concurrent_requests,
            BodyPace {
                idle_timeout: c.body_idle_timeout,
                min_rate: c.min_body_rate,
                window: c.body_rate_window,
            },
        )
    }
}

/// Why the limits turn a request away; the dialect tables
/// (`http::error`) make the answer.
#[derive(Debug, Clone)]
pub enum LimitRefusal {
    /// The concurrent-request cap is reached: 429 with `Retry-After`.
    Busy,
    /// The body was cut for its pace: 408. `upload` when the request was
    /// an upload's (its OCI code tells the client to resume);
    /// `close_connection` over HTTP/1 (HTTP/2 has no connection header;
    /// its stream simply ends).
    BodyCut {
        cut: BodyCut,
        upload: bool,
        close_connection: bool,
    },
}

impl LimitRefusal {
    pub const BUSY_MESSAGE: &'static str = "too many requests in progress; retry later";
}

/// The 429 answer, in the dialect of the route, with `Retry-After`.
pub fn too_many_requests(path: &str) -> Response {
    let mut r = Dialect::of_path(path).answer(LimitRefusal::Busy);
    r.extensions_mut().insert(RouteName("limits.rejected"));
    r
}

/// The 408 answer to a body cut for its pace, in the dialect of the route
/// (`route`, the name the handler gave its answer, says whether it was an
/// upload's), with `Connection: close` over HTTP/1.
fn request_timeout(path: &str, route: Option<&str>, version: Version, cut: &BodyCut) -> Response {
    let refusal = LimitRefusal::BodyCut {
        cut: cut.clone(),
        upload: route.is_some_and(|r| r.starts_with("v2.upload.")),
        close_connection: version < Version::HTTP_2,
    };
    let mut r = Dialect::of_path(path).answer(refusal);
    r.extensions_mut().insert(RouteName("limits.body_too_slow"));
    r
}

/// The middleware: concurrency cap and body pace.
/// A fleet long-poll: counted by the watcher cap instead.
fn is_long_poll(req: &Request) -> bool {
    let path = req.uri().path();
    let watchable = (path.starts_with("/hosts/") && path.ends_with("/desired"))
        || path.starts_with("/artifacts/for-host/");
    watchable
        && (req.method() == axum::http::Method::GET || req.method() == axum::http::Method::HEAD)
        && req
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|p| p.starts_with("wait=")))
}

pub async fn enforce(State(limits): State<RequestLimits>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let permit = if path == "/healthz" || is_long_poll(&req) {
        None
    } else {
        match limits.permits.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                tracing::warn!(path = %path, "concurrent request cap reached");
                return too_many_requests(&path);
            }
        }
    };
    let version = req.version();
    let cut = Arc::new(OnceLock::new());
    let req = req.map(|b| Body::new(PacedBody::new(b, limits.pace, cut.clone())));
    let mut resp = next.run(req).await;
    if let Some(c) = cut.get() {
        // The handler saw the body fail; whatever error it chose, the
        // cause is the client's pace.
        if resp.status().is_client_error() || resp.status().is_server_error() {
            tracing::warn!(path = %path, cause = %c, "request body cut");
            let route = resp.extensions().get::<RouteName>().map(|r| r.0);
            resp = request_timeout(&path, route, version, c);
        }
    }
    match permit {
        Some(permit) => resp.map(|b| Body::new(BodyHolding::new(b, permit))),
        None => resp,
    }
}

/// Why a request body was cut off.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BodyCut {
    #[error("request body stalled for more than {0:?}")]
    Stalled(Duration),
    #[error(
        "request body too slow: {received} bytes in {window:?}, the minimum is {min_rate} bytes/s"
    )]
    TooSlow {
        received: u64,
        window: Duration,
        min_rate: u64,
    },
}

impl BodyCut {
    /// The numbers of the cut, for the answer's `detail`.
    pub fn detail(&self) -> serde_json::Value {
        match self {
            BodyCut::Stalled(t) => serde_json::json!({"idle_timeout_ms": t.as_millis() as u64}),
            BodyCut::TooSlow {
                received,
                window,
                min_rate,
            } => serde_json::json!({
                "received_bytes": received,
                "window_ms": window.as_millis() as u64,
                "min_rate_bytes_per_second": min_rate,
            }),
        }
    }
}

/// A request body held to a [`BodyPace`]. The timers run only while a read
/// is pending; a cut is recorded in `cut` for the middleware's answer.
struct PacedBody {
    inner: Body,
    pace: BodyPace,
    cut: Arc<OnceLock<BodyCut>>,
    /// Fires after `idle_timeout` of one pending read.
    idle: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Fires when the waiting time of the current window reaches `window`.
    window_end: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Time spent waiting in the current window (without the pending read).
    waited: Duration,
    /// When the pending read began.
    pending_since: Option<Instant>,
    /// Bytes received in the current window.
    received: u64,
}

impl PacedBody {
    fn new(inner: Body, pace: BodyPace, cut: Arc<OnceLock<BodyCut>>) -> Self {
        PacedBody {
            inner,
            pace,
            cut,
            idle: None,
            window_end: None,
            waited: Duration::ZERO,
            pending_since: None,
            received: 0,
        }
    }

    fn fail(&mut self, cut: BodyCut) -> Poll<Option<Result<Frame<Bytes>, axum::BoxError>>> {
        let err = Box::new(cut.clone());
        let _ = self.cut.set(cut);
        self.idle = None;
        self.window_end = None;
        Poll::Ready(Some(Err(err)))
    }

    /// A full window of waiting has passed: too few bytes is a cut,
    /// enough starts the next window.
    fn window_complete(&mut self) -> Result<(), BodyCut> {
        if self.received < self.pace.window_bytes() {
            return Err(BodyCut::TooSlow {
                received: self.received,
                window: self.pace.window,
                min_rate: self.pace.min_rate,
            });
        }
        self.received = 0;
        self.waited = Duration::ZERO;
        Ok(())
    }
}

impl http_body::Body for PacedBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Some(c) = this.cut.get() {
            return Poll::Ready(Some(Err(Box::new(c.clone()))));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(r) => {
                this.idle = None;
                this.window_end = None;
                if let Some(since) = this.pending_since.take() {
                    this.waited += since.elapsed();
                }
                if let Some(Ok(frame)) = &r {
                    if let Some(data) = frame.data_ref() {
                        this.received += data.len() as u64;
                    }
                }
                Poll::Ready(r.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let now = Instant::now();
                let since = *this.pending_since.get_or_insert(now);
                let timeout = this.pace.idle_timeout;
                let idle = this
                    .idle
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if idle.as_mut().poll(cx).is_ready() {
                    return this.fail(BodyCut::Stalled(timeout));
                }
                if this.pace.min_rate == 0 {
                    return Poll::Pending;
                }
                let window = this.pace.window;
                let left = window.saturating_sub(this.waited);
                let end = this.window_end.get_or_insert_with(|| {
                    Box::pin(tokio::time::sleep_until((since + left).into()))
                });
                if end.as_mut().poll(cx).is_ready() {
                    // This window's waiting time is complete.
                    this.waited = window;
                    if let Err(c) = this.window_complete() {
                        return this.fail(c);
                    }
                    this.pending_since = Some(now);
                    let next = this.window_end.insert(Box::pin(tokio::time::sleep(window)));
                    if next.as_mut().poll(cx).is_ready() {
                        cx.waker().wake_by_ref();
                    }
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that keeps something (a concurrency permit, a
/// connection's in-flight mark) until it is sent or dropped.
pub(super) struct BodyHolding<T> {
    inner: Body,
    _held: T,
}

impl<T> BodyHolding<T> {
    pub(super) fn new(inner: Body, held: T) -> Self {
        BodyHolding { inner, _held: held }
    }
}

impl<T: Unpin + Send + 'static> http_body::Body for BodyHolding<T> {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

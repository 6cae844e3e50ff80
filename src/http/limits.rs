//! Limits against bad clients.
//!
//! - [`serve`]: the accept loop (hyper directly, as `axum::serve` cannot
//!   set a header timeout): a client must send a request's headers within
//!   `BPF_REGISTRY_HEADER_READ_TIMEOUT` (this also closes idle keep-alive
//!   connections after that long); in-flight requests finish on shutdown.
//! - [`enforce`] (middleware): at most `BPF_REGISTRY_MAX_CONCURRENT_REQUESTS`
//!   requests at once (a request counts until its response body is sent);
//!   one more is answered at once with 429 `TOOMANYREQUESTS` and
//!   `Retry-After`, never queued. `/healthz` is exempt. Every request body
//!   fails when it stalls for `BPF_REGISTRY_BODY_IDLE_TIMEOUT` between two
//!   chunks; the handler then answers an error and nothing is stored.
//!
//! Body sizes are capped where bodies are read: manifests
//! (`BPF_REGISTRY_MAX_MANIFEST_BYTES`), `POST /artifacts` (from
//! `BPF_REGISTRY_MAX_ARTIFACT_BYTES`), other JSON bodies (their handlers);
//! blob bodies stream to disk and are bounded by the store only.

use std::fmt::Debug;
use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt;

use super::{json_response, RouteName};
use crate::config::Config;
use crate::error::{OciError, OciErrorCode};

/// Seconds a client is told to wait after a 429.
pub const RETRY_AFTER_SECS: u64 = 1;

/// The request limits of the middleware.
#[derive(Clone)]
pub struct RequestLimits {
    permits: Arc<Semaphore>,
    body_idle_timeout: Duration,
}

impl RequestLimits {
    pub fn new(max_concurrent_requests: usize, body_idle_timeout: Duration) -> Self {
        RequestLimits {
            permits: Arc::new(Semaphore::new(max_concurrent_requests.max(1))),
            body_idle_timeout,
        }
    }

    pub fn from_config(c: &Config) -> Self {
        Self::new(c.max_concurrent_requests, c.body_idle_timeout)
    }
}

/// The 429 answer, in the dialect of the route (OCI envelope under `/v2`,
/// the REST error shape elsewhere), with `Retry-After`.
pub fn too_many_requests(path: &str) -> Response {
    let mut r = if path == "/v2" || path.starts_with("/v2/") {
        let mut r = OciError::new(
            OciErrorCode::TooManyRequests,
            "too many requests in progress; retry later",
        )
        .into_response();
        r.headers_mut().insert(
            super::v2::API_VERSION_HEADER,
            HeaderValue::from_static("registry/2.0"),
        );
        r
    } else {
        json_response(
            StatusCode::TOO_MANY_REQUESTS,
            &serde_json::json!({
                "error": "too_many_requests",
                "message": "too many requests in progress; retry later",
            }),
        )
    };
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    r.extensions_mut().insert(RouteName("limits.rejected"));
    r
}

/// The middleware: concurrency cap and stalled-body timeout.
pub async fn enforce(State(limits): State<RequestLimits>, req: Request, next: Next) -> Response {
    let permit = if req.uri().path() == "/healthz" {
        None
    } else {
        match limits.permits.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                tracing::warn!(path = %req.uri().path(), "concurrent request cap reached");
                return too_many_requests(req.uri().path());
            }
        }
    };
    let timeout = limits.body_idle_timeout;
    let req = req.map(|b| Body::new(IdleTimeoutBody::new(b, timeout)));
    let resp = next.run(req).await;
    match permit {
        Some(permit) => resp.map(|b| {
            Body::new(HoldPermit {
                inner: b,
                _permit: permit,
            })
        }),
        None => resp,
    }
}

/// The error a stalled request body ends with.
#[derive(Debug, thiserror::Error)]
#[error("request body stalled for more than {0:?}")]
pub struct BodyStalled(pub Duration);

/// A request body that fails if no data arrives for `timeout` while the
/// handler waits for it (the timer runs only while a read is pending).
struct IdleTimeoutBody {
    inner: Body,
    timeout: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl IdleTimeoutBody {
    fn new(inner: Body, timeout: Duration) -> Self {
        IdleTimeoutBody {
            inner,
            timeout,
            sleep: None,
        }
    }
}

impl http_body::Body for IdleTimeoutBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(r) => {
                this.sleep = None;
                Poll::Ready(r.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let timeout = this.timeout;
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.sleep = None;
                        Poll::Ready(Some(Err(Box::new(BodyStalled(timeout)))))
                    }
                    Poll::Pending => Poll::Pending,
                }
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

/// A response body that keeps its request's concurrency permit until it
/// is sent (or dropped).
struct HoldPermit {
    inner: Body,
    _permit: OwnedSemaphorePermit,
}

impl http_body::Body for HoldPermit {
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

/// Serves `app` on `listener` until `shutdown` resolves, then lets the
/// open connections finish their requests. HTTP/1.1 and HTTP/2 (prior
/// knowledge, or ALPN from a TLS listener); HTTP/1 request headers must
/// arrive within `header_read_timeout`. Each request carries the peer
/// address as `ConnectInfo<L::Addr>`, like axum's
/// `into_make_service_with_connect_info`.
pub async fn serve<L>(
    mut listener: L,
    app: Router,
    header_read_timeout: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: Debug + Clone + Send + Sync + 'static,
{
    let (signal_tx, signal_rx) = watch::channel(());
    let (close_tx, close_rx) = watch::channel(());
    let mut shutdown = pin!(shutdown);
    loop {
        let (io, addr) = tokio::select! {
            conn = listener.accept() => conn,
            _ = &mut shutdown => break,
        };
        tracing::trace!(remote = ?addr, "connection accepted");
        let service =
            app.clone()
                .map_request(move |mut req: axum::http::Request<hyper::body::Incoming>| {
                    req.extensions_mut()
                        .insert(axum::extract::ConnectInfo(addr.clone()));
                    req.map(Body::new)
                });
        let hyper_service = TowerToHyperService::new(service);
        let mut signal_rx = signal_rx.clone();
        let close_rx = close_rx.clone();
        tokio::spawn(async move {
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout);
            let mut conn =
                pin!(builder.serve_connection_with_upgrades(TokioIo::new(io), hyper_service));
            let mut draining = false;
            loop {
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(error = %e, "connection ended with an error");
                        }
                        break;
                    }
                    changed = signal_rx.changed(), if !draining => {
                        let _ = changed;
                        draining = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
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

//! The axum layer: the router, shared state, request logging with request
//! ids, the request metrics and `GET /metrics` ([`metrics`]), and the
//! helpers that turn service answers into responses. Errors answer through
//! the one table of their dialect, in [`error`].

pub mod auth;
pub mod endpoint;
pub mod error;
mod health;
pub mod limits;
pub mod metrics;
pub mod openapi;
mod rest;
pub mod tls;
mod ui;
pub mod v2;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use http_body_util::BodyExt;

use crate::artifacts::ArtifactService;
use crate::config::Config;
use crate::oci::Digest;
use crate::registry::{BlobRead, Registry};

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub registry: Arc<Registry>,
    pub artifacts: Arc<ArtifactService>,
    /// Hosts, selectors resolution, watching, rollout and channels.
    pub fleet: Arc<crate::fleet::FleetService>,
    pub config: Arc<Config>,
    /// Users, policy and token key; `None` when authentication is off.
    pub auth: Option<Arc<crate::auth::Auth>>,
    /// Artifact signing and verification (`signer` off by default).
    pub signing: Arc<crate::signing::SigningService>,
    /// The server's metrics; `None` when `BPF_REGISTRY_METRICS=off`.
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
}

/// The matched route's constant name, left in response extensions for the
/// request log.
#[derive(Clone, Copy)]
pub struct RouteName(pub &'static str);

pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// On a response that is never sent: a long-poll run that parked its wait
/// with the plain HTTP/1.1 front (`limits::connections`), which runs the
/// request again when the wait ends. Not logged or counted as a request.
#[derive(Clone, Copy)]
pub struct ParkedAnswer;

pub fn router(state: AppState) -> Router {
    let request_limits = limits::RequestLimits::from_config(&state.config);
    let recorder = state.metrics.clone();
    let mut routes = Router::new();
    if recorder.is_some() {
        routes = routes.route("/metrics", any(metrics::serve));
    }
    let app = routes
        .route("/healthz", get(health::healthz))
        .route("/openapi.json", get(openapi::serve))
        // REST: one table, in `rest::endpoint`.
        .route("/artifacts", any(rest::dispatch))
        .route("/artifacts/{*rest}", any(rest::dispatch))
        .route("/hosts", any(rest::dispatch))
        .route("/hosts/{*rest}", any(rest::dispatch))
        .route("/channels/{*rest}", any(rest::dispatch))
        .route("/signing/public-key", any(rest::dispatch))
        .route("/v2", any(v2::dispatch))
        .route("/v2/", any(v2::dispatch))
        .route("/v2/{*rest}", any(v2::dispatch))
        .route("/token", get(auth::token_get).post(auth::token_post))
        // The web console: authenticates its own pages (`ui`).
        .route("/ui", get(ui::redirect))
        .route("/ui/", any(ui::dispatch))
        .route("/ui/{*rest}", any(ui::dispatch))
        .fallback(fallback)
        // Authentication and authorization, in one place (a no-op when off).
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::middleware,
        ))
        // Parses every `/v2` request once, before it is authorized; the
        // middleware and the handler both use that one parse.
        .layer(middleware::from_fn(endpoint::layer))
        .with_state(state)
        // Concurrency cap and stalled-body timeout (inside the log, so a
        // 429 is logged too).
        .layer(middleware::from_fn_with_state(
            request_limits,
            limits::enforce,
        ))
        .layer(middleware::from_fn(log_requests));
    match recorder {
        Some(m) => metrics::instrument(app, m),
        None => app,
    }
}

async fn fallback(req: Request) -> Response {
    let mut r = error::RestError::no_route(req.method().as_str(), req.uri().path()).into_response();
    r.extensions_mut().insert(RouteName("fallback"));
    r
}

pub fn json_response<T: serde::Serialize + ?Sized>(status: StatusCode, value: &T) -> Response {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// Why a capped body could not be read.
pub enum BodyReadError {
    TooLarge,
    Broken(String),
}

/// Buffers a JSON/manifest body, refusing more than `max` bytes. The
/// body goes into one buffer sized from its declared length, chunk by
/// chunk, so a large body (a REST create) is held once, never twice.
pub async fn read_body_capped(mut body: Body, max: u64) -> Result<bytes::Bytes, BodyReadError> {
    let hint = http_body::Body::size_hint(&body);
    if hint.lower() > max {
        return Err(BodyReadError::TooLarge);
    }
    let expected = hint.exact().unwrap_or(hint.lower()).min(max);
    let mut buf = bytes::BytesMut::with_capacity(usize::try_from(expected).unwrap_or(0));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyReadError::Broken(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if (buf.len() as u64).saturating_add(data.len() as u64) > max {
                return Err(BodyReadError::TooLarge);
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// A streamed blob, whole or a range of it.
pub fn blob_response(blob: BlobRead, digest: &Digest, content_type: &str) -> Response {
    let status = if blob.partial {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let mut r = (status, Body::from_stream(blob.body)).into_response();
    let h = r.headers_mut();
    let hv = |s: String| HeaderValue::from_str(&s).unwrap_or_else(|_| HeaderValue::from_static(""));
    h.insert(header::CONTENT_LENGTH, hv(blob.len.to_string()));
    h.insert(header::CONTENT_TYPE, hv(content_type.to_string()));
    h.insert(v2::DIGEST_HEADER, hv(digest.to_string()));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::ETAG, hv(format!("\"{digest}\"")));
    if blob.partial {
        let end = (blob.start + blob.len).saturating_sub(1);
        h.insert(
            header::CONTENT_RANGE,
            hv(format!("bytes {}-{}/{}", blob.start, end, blob.total)),
        );
    }
    r
}

static REQUEST_COUNTER: AtomicU64 = AtomicU64::new(0);

fn new_request_id() -> String {
    let n = REQUEST_COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{:08x}-{n:x}", std::process::id())
}

/// One log line per request, and a request id echoed as `X-Request-Id`
/// (and known to the error tables while the request is handled, so an
/// internal failure is logged under it).
async fn log_requests(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let id = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        .map(str::to_string)
        .unwrap_or_else(new_request_id);
    let mut resp = error::with_request_id(Arc::from(id.as_str()), next.run(req)).await;
    if resp.extensions().get::<ParkedAnswer>().is_some() {
        tracing::debug!(request_id = %id, "long-poll parked");
        return resp;
    }
    let route = resp
        .extensions()
        .get::<RouteName>()
        .map(|r| r.0)
        .unwrap_or("unmatched");
    let status = resp.status().as_u16();
    let bytes = resp
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    // Who it was served for (authentication on; never a secret).
    let user = resp
        .extensions()
        .get::<auth::ServedUser>()
        .map(|u| u.0.clone());
    tracing::info!(
        request_id = %id,
        method = %method,
        route,
        status,
        bytes,
        user = user.as_deref(),
        duration_us = started.elapsed().as_micros() as u64,
        "request"
    );
    resp
}

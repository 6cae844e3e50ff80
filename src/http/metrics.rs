//! `GET /metrics` and the request-metrics layer.
//!
//! - [`track`], the outermost layer: a request counts in
//!   `http_server_active_requests` while it is served; when its response
//!   body has been sent (or dropped) its duration, status and body sizes
//!   are recorded under its method and route template, blob bytes are
//!   counted, and an auth refusal's [`FailureReason`] is counted.
//! - The route template is derived from the typed endpoint, parsed once
//!   per request: [`RouteTemplate::of_v2`] and [`RouteTemplate::of_rest`]
//!   (the one template table), which the `/v2` parse layer and the REST
//!   dispatcher leave in the response extensions. A literal route of the
//!   router (`/healthz`, `/token`, `/metrics`) is its own template; anything
//!   that did not parse into an endpoint is `unmatched`. So no label ever
//!   holds a repository name, a digest or a user name.
//! - [`serve`], the handler: open without authentication; with it, for the
//!   metrics token or a user granted `metrics` (`auth::authorize_metrics`).
//!   The gauges read from the services (artifacts, host associations,
//!   upload sessions) are read at each scrape.

use std::borrow::Cow;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body::{Frame, SizeHint};

use super::auth::{self, FailureReason};
use super::endpoint::Endpoint;
use super::error::{RestError, RestErrorCode};
use super::rest::endpoint::{ArtifactOp, RestEndpoint, RouteError};
use super::{AppState, RouteName};
use crate::metrics::{method_label, BlobDirection, Metrics, RequestRecord, StateCounts};

/// The route template of a request's endpoint, left in its response
/// extensions; `blob` says whether its body bytes are blob bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteTemplate {
    pub template: &'static str,
    pub blob: Option<BlobDirection>,
}

const UNMATCHED: &str = "unmatched";

impl RouteTemplate {
    const fn plain(template: &'static str) -> RouteTemplate {
        RouteTemplate {
            template,
            blob: None,
        }
    }

    /// The template of a `/v2` endpoint (the OCI distribution spec's
    /// paths, with `{name}` for the repository).
    pub fn of_v2(ep: &Endpoint) -> RouteTemplate {
        const MANIFEST: &str = "/v2/{name}/manifests/{reference}";
        const BLOB: &str = "/v2/{name}/blobs/{digest}";
        const UPLOADS: &str = "/v2/{name}/blobs/uploads/";
        const UPLOAD: &str = "/v2/{name}/blobs/uploads/{uuid}";
        let uploaded = |template| RouteTemplate {
            template,
            blob: Some(BlobDirection::In),
        };
        match ep {
            Endpoint::Base => Self::plain("/v2/"),
            Endpoint::Catalog { .. } => Self::plain("/v2/_catalog"),
            Endpoint::ListTags { .. } => Self::plain("/v2/{name}/tags/list"),
            Endpoint::GetManifest { .. }
            | Endpoint::UnknownManifest { .. }
            | Endpoint::PutManifest { .. }
            | Endpoint::DeleteManifest { .. } => Self::plain(MANIFEST),
            Endpoint::GetBlob { head: false, .. } => RouteTemplate {
                template: BLOB,
                blob: Some(BlobDirection::Out),
            },
            Endpoint::GetBlob { head: true, .. } | Endpoint::DeleteBlob { .. } => Self::plain(BLOB),
            Endpoint::StartUpload {
                digest: Some(_), ..
            } => uploaded(UPLOADS),
            Endpoint::StartUpload { digest: None, .. } => Self::plain(UPLOADS),
            Endpoint::PatchUpload { .. } | Endpoint::PutUpload { .. } => uploaded(UPLOAD),
            Endpoint::GetUpload { .. } | Endpoint::DeleteUpload { .. } => Self::plain(UPLOAD),
            Endpoint::Referrers { .. } => Self::plain("/v2/{name}/referrers/{digest}"),
        }
    }

    /// The template of a REST endpoint (the paths of the REST API).
    pub fn of_rest(ep: &RestEndpoint) -> RouteTemplate {
        match ep {
            RestEndpoint::List { .. } | RestEndpoint::Create => Self::plain("/artifacts"),
            RestEndpoint::ForHost { .. } => Self::plain("/artifacts/for-host/{host_id}"),
            RestEndpoint::Fleet(f) => Self::plain(f.template()),
            RestEndpoint::PublicKey { .. } => Self::plain("/signing/public-key"),
            RestEndpoint::Artifact { op, .. } => match op {
                ArtifactOp::Get | ArtifactOp::Delete => Self::plain("/artifacts/{id}"),
                ArtifactOp::Binary => RouteTemplate {
                    template: "/artifacts/{id}/binary",
                    blob: Some(BlobDirection::Out),
                },
                ArtifactOp::Hosts | ArtifactOp::AddHost => Self::plain("/artifacts/{id}/hosts"),
                ArtifactOp::RemoveHost { .. } => Self::plain("/artifacts/{id}/hosts/{host_id}"),
                ArtifactOp::Signatures => Self::plain("/artifacts/{id}/signatures"),
                ArtifactOp::Verify => Self::plain("/artifacts/{id}/verify"),
                ArtifactOp::Selectors | ArtifactOp::AddSelector => {
                    Self::plain("/artifacts/{id}/selectors")
                }
                ArtifactOp::RemoveSelector { .. } => {
                    Self::plain("/artifacts/{id}/selectors/{selector_id}")
                }
                ArtifactOp::Rollout { .. } => Self::plain("/artifacts/{id}/rollout"),
            },
        }
    }

    /// Leaves the template in a response's extensions.
    pub fn on(self, mut r: Response) -> Response {
        r.extensions_mut().insert(self);
        r
    }
}

/// The route label of a finished request: its endpoint's template, else
/// the router's own template when it is a literal path, else `unmatched`
/// (a catch-all's match says nothing, and a fallback has none).
fn route_label(
    template: Option<RouteTemplate>,
    matched: Option<&MatchedPath>,
) -> Cow<'static, str> {
    match (template, matched) {
        (Some(t), _) => Cow::Borrowed(t.template),
        (None, Some(m)) if !m.as_str().contains('{') => Cow::Owned(m.as_str().to_string()),
        _ => Cow::Borrowed(UNMATCHED),
    }
}

/// Puts [`track`] around `app` (outermost, so a 429 and the time of the
/// request log count too), with every auth failure reason at 0.
pub fn instrument(app: axum::Router, metrics: Arc<Metrics>) -> axum::Router {
    metrics.declare_auth_failure_reasons(&FailureReason::ALL.map(FailureReason::as_str));
    app.layer(axum::middleware::from_fn_with_state(metrics, track))
}

/// The layer: see the module doc. Installed only when metrics are on.
pub async fn track(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let active = Active::new(metrics.clone());
    let method = method_label(req.method().as_str());
    let matched = req.extensions().get::<MatchedPath>().cloned();
    let read = Arc::new(AtomicU64::new(0));
    let counted = read.clone();
    let req = req.map(|inner| {
        Body::new(CountingBody {
            inner,
            read: counted,
        })
    });
    let resp = next.run(req).await;
    if resp
        .extensions()
        .get::<crate::http::ParkedAnswer>()
        .is_some()
    {
        // A long-poll run that parked: counted once, by the run that
        // answers.
        return resp;
    }
    if let Some(reason) = resp.extensions().get::<FailureReason>() {
        metrics.auth_failure(reason.as_str());
    }
    let template = resp.extensions().get::<RouteTemplate>().copied();
    let pending = Pending {
        active,
        started,
        method,
        route: route_label(template, matched.as_ref()),
        status: resp.status().as_u16(),
        read,
        blob: template.and_then(|t| t.blob),
    };
    resp.map(|inner| {
        Body::new(ObservedBody {
            inner,
            sent: 0,
            pending: Some(pending),
        })
    })
}

/// Counts one request in `http_server_active_requests` while it lives.
struct Active(Arc<Metrics>);

impl Active {
    fn new(metrics: Arc<Metrics>) -> Active {
        metrics.request_started();
        Active(metrics)
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.request_ended();
    }
}

/// What is recorded once the response body is done.
struct Pending {
    active: Active,
    started: Instant,
    method: &'static str,
    route: Cow<'static, str>,
    status: u16,
    read: Arc<AtomicU64>,
    blob: Option<BlobDirection>,
}

impl Pending {
    fn record(self, sent: u64) {
        let r = RequestRecord {
            method: self.method,
            route: self.route,
            status: self.status,
            duration: self.started.elapsed(),
            request_body_bytes: self.read.load(Ordering::Relaxed),
            response_body_bytes: sent,
            blob: self.blob,
        };
        self.active.0.record_request(r);
        // `active` drops here: the request is no longer in flight.
    }
}

/// A request body that counts the bytes the handler read.
struct CountingBody {
    inner: Body,
    read: Arc<AtomicU64>,
}

impl http_body::Body for CountingBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &r {
            if let Some(data) = frame.data_ref() {
                self.read.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that counts the bytes sent and records the request
/// when it is dropped: after the last byte went out, or when the client
/// went away.
struct ObservedBody {
    inner: Body,
    sent: u64,
    pending: Option<Pending>,
}

impl http_body::Body for ObservedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &r {
            if let Some(data) = frame.data_ref() {
                self.sent += data.len() as u64;
            }
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        if let Some(p) = self.pending.take() {
            p.record(self.sent);
        }
    }
}

/// `GET /metrics` (and `HEAD`).
pub async fn serve(State(state): State<AppState>, req: Request) -> Response {
    let mut r = RouteTemplate::plain("/metrics").on(answer(&state, req).await);
    r.extensions_mut().insert(RouteName("metrics"));
    r
}

async fn answer(state: &AppState, req: Request) -> Response {
    let method = req.method();
    if method != Method::GET && method != Method::HEAD {
        let e = RouteError::MethodNotAllowed { allow: "GET,HEAD" };
        return RestError::of_route(e, method.as_str(), req.uri().path()).into_response();
    }
    let Some(metrics) = &state.metrics else {
        return RestError::no_route(method.as_str(), req.uri().path()).into_response();
    };
    if let Some(a) = &state.auth {
        if let Err(refusal) = auth::authorize_metrics(state, a, req).await {
            return refusal;
        }
    }
    let (artifacts, host_associations) = match state.artifacts.counts().await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let counts = StateCounts {
        artifacts,
        host_associations,
        upload_sessions: state.registry.upload_sessions() as u64,
    };
    match metrics.encode(counts) {
        Ok(text) => {
            let mut r = (StatusCode::OK, text).into_response();
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
            );
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        Err(e) => RestError::new(
            RestErrorCode::InternalError,
            format!("metrics not encodable: {e}"),
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::endpoint::parse;

    const D: &str = "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";
    const U: &str = "3f2b8a4e-1c2d-4e5f-8a9b-0c1d2e3f4a5b";

    #[test]
    fn v2_endpoints_have_templates_without_names_digests_or_ids() {
        let cases = [
            (Method::GET, "/v2/".to_string(), None, "/v2/"),
            (Method::GET, "/v2/_catalog".into(), None, "/v2/_catalog"),
            (
                Method::GET,
                "/v2/team/prog/tags/list".into(),
                None,
                "/v2/{name}/tags/list",
            ),
            (
                Method::GET,
                "/v2/team/prog/manifests/v1".into(),
                None,
                "/v2/{name}/manifests/{reference}",
            ),
            (
                Method::HEAD,
                format!("/v2/a/manifests/{D}"),
                None,
                "/v2/{name}/manifests/{reference}",
            ),
            (
                Method::GET,
                "/v2/a/manifests/.bad".into(),
                None,
                "/v2/{name}/manifests/{reference}",
            ),
            (
                Method::PUT,
                "/v2/a/manifests/v1".into(),
                None,
                "/v2/{name}/manifests/{reference}",
            ),
            (
                Method::GET,
                format!("/v2/a/b/c/blobs/{D}"),
                None,
                "/v2/{name}/blobs/{digest}",
            ),
            (
                Method::DELETE,
                format!("/v2/a/blobs/{D}"),
                None,
                "/v2/{name}/blobs/{digest}",
            ),
            (
                Method::POST,
                "/v2/a/blobs/uploads/".into(),
                None,
                "/v2/{name}/blobs/uploads/",
            ),
            (
                Method::PATCH,
                format!("/v2/a/blobs/uploads/{U}"),
                None,
                "/v2/{name}/blobs/uploads/{uuid}",
            ),
            (
                Method::PUT,
                format!("/v2/a/blobs/uploads/{U}"),
                Some(format!("digest={D}")),
                "/v2/{name}/blobs/uploads/{uuid}",
            ),
            (
                Method::GET,
                format!("/v2/a/referrers/{D}"),
                None,
                "/v2/{name}/referrers/{digest}",
            ),
        ];
        for (m, path, q, want) in cases {
            let ep = parse(&m, &path, q.as_deref()).unwrap_or_else(|e| panic!("{m} {path}: {e:?}"));
            assert_eq!(RouteTemplate::of_v2(&ep).template, want, "{m} {path}");
        }
    }

    #[test]
    fn blob_bytes_are_counted_on_blob_transfers_only() {
        let dir = |m: Method, path: String, q: Option<String>| {
            RouteTemplate::of_v2(&parse(&m, &path, q.as_deref()).unwrap()).blob
        };
        assert_eq!(
            dir(Method::GET, format!("/v2/a/blobs/{D}"), None),
            Some(BlobDirection::Out)
        );
        assert_eq!(dir(Method::HEAD, format!("/v2/a/blobs/{D}"), None), None);
        assert_eq!(
            dir(Method::PATCH, format!("/v2/a/blobs/uploads/{U}"), None),
            Some(BlobDirection::In)
        );
        assert_eq!(
            dir(
                Method::POST,
                "/v2/a/blobs/uploads/".into(),
                Some(format!("digest={D}"))
            ),
            Some(BlobDirection::In)
        );
        assert_eq!(dir(Method::POST, "/v2/a/blobs/uploads/".into(), None), None);
        assert_eq!(dir(Method::GET, "/v2/a/manifests/v1".into(), None), None);
    }

    #[test]
    fn rest_endpoints_have_templates() {
        let cases = [
            (Method::GET, "/artifacts".to_string(), "/artifacts"),
            (Method::POST, "/artifacts".into(), "/artifacts"),
            (
                Method::GET,
                "/artifacts/for-host/node-1".into(),
                "/artifacts/for-host/{host_id}",
            ),
            (
                Method::GET,
                "/signing/public-key".into(),
                "/signing/public-key",
            ),
            (Method::DELETE, format!("/artifacts/{D}"), "/artifacts/{id}"),
            (
                Method::GET,
                format!("/artifacts/{D}/binary"),
                "/artifacts/{id}/binary",
            ),
            (
                Method::POST,
                format!("/artifacts/{D}/hosts"),
                "/artifacts/{id}/hosts",
            ),
            (
                Method::DELETE,
                format!("/artifacts/{D}/hosts/node-1"),
                "/artifacts/{id}/hosts/{host_id}",
            ),
            (
                Method::GET,
                format!("/artifacts/{D}/signatures"),
                "/artifacts/{id}/signatures",
            ),
            (
                Method::GET,
                format!("/artifacts/{D}/verify"),
                "/artifacts/{id}/verify",
            ),
        ];
        for (m, path, want) in cases {
            let ep = RestEndpoint::parse(&m, &path, None)
                .unwrap_or_else(|e| panic!("{m} {path}: {e:?}"));
            assert_eq!(RouteTemplate::of_rest(&ep).template, want, "{m} {path}");
        }
    }

    #[test]
    fn requests_without_an_endpoint_are_unmatched() {
        assert_eq!(route_label(None, None), "unmatched");
        let t = RouteTemplate::plain("/v2/");
        assert_eq!(route_label(Some(t), None), "/v2/");
    }
}

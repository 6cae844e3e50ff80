//! The web console at `/ui/`: server-rendered HTML pages over the same
//! services and the same authorization as the REST reads they mirror.
//!
//! Each request is parsed once into a [`UiEndpoint`] (`endpoint`), its
//! caller established from the API's own credentials (Basic, or a bearer
//! token), authorized like the REST or OCI read it shows (`pages`), and
//! rendered with `maud` (`views`), which escapes every value: tenants
//! write artifact names, metadata, descriptions and tags, and none of it
//! is ever emitted unescaped. The stylesheet and the script are embedded
//! in the binary and served from `/ui/static/`, so the page runs under a
//! strict `Content-Security-Policy` with no inline script or style and no
//! external origin.
//!
//! With authentication on, a caller without credentials gets 401 with a
//! `Basic` challenge (the browser asks for the API's user and password);
//! no secret or token is ever rendered. Errors are HTML pages carrying
//! the REST error table's status and machine-readable code.

mod endpoint;
mod pages;
mod views;
mod views_detail;

use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;

use super::metrics::RouteTemplate;
use super::{AppState, RouteName};
use crate::http::auth::{self, AuthRefusal, FailureReason};
use crate::http::error::{RestError, RestErrorCode};
pub use endpoint::UiEndpoint;
use endpoint::{Asset, UiRouteError};

const CSS: &str = include_str!("static/console.css");
const JS: &str = include_str!("static/console.js");
const ICON: &str = include_str!("static/favicon.svg");

/// The console's security headers, on every answer under `/ui`.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The `WWW-Authenticate` challenge of the console: Basic, so a browser
/// asks for the API's credentials.
pub const BASIC_CHALLENGE: &str = "Basic realm=\"bpf-registry\"";

/// `GET /ui`: to the console's index.
pub async fn redirect() -> Response {
    let mut r = StatusCode::PERMANENT_REDIRECT.into_response();
    r.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static("/ui/"));
    secured(named("ui", "/ui", r))
}

/// Every console route: parse, authenticate, authorize and render.
pub async fn dispatch(State(state): State<AppState>, req: Request) -> Response {
    let ep = match UiEndpoint::parse(req.method(), req.uri().path(), req.uri().query()) {
        Ok(ep) => ep,
        Err(e) => {
            let err = match e {
                UiRouteError::NoRoute => {
                    RestError::no_route(req.method().as_str(), req.uri().path())
                }
                UiRouteError::MethodNotAllowed => RestError::new(
                    RestErrorCode::MethodNotAllowed,
                    "the console only answers GET and HEAD",
                ),
                UiRouteError::Invalid(e) => RestError::from(e),
            };
            let mut r = error_page(err.into_response()).await;
            if r.status() == StatusCode::METHOD_NOT_ALLOWED {
                r.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            }
            return secured(named("ui", "unmatched", r));
        }
    };
    let (template, route) = ep.route();
    let r = match ep {
        // The embedded files hold no data: served without credentials.
        UiEndpoint::Static { asset } => static_file(asset),
        ep => {
            // Pages have no body; the head is all they read.
            let (parts, _) = req.into_parts();
            page(&state, &parts, ep).await
        }
    };
    secured(named(route, template, r))
}

async fn page(state: &AppState, req: &Parts, ep: UiEndpoint) -> Response {
    let caller = match auth::identify_console(state, req).await {
        Ok(c) => c,
        Err((reason, refusal)) => return auth_refused(reason, refusal).await,
    };
    if caller.as_ref().is_some_and(|c| c.is_anonymous_rest()) {
        let refusal = AuthRefusal::Unauthenticated {
            message: "authentication required",
            scope: None,
            challenges: Vec::new(),
        };
        return auth_refused(FailureReason::NoCredentials, refusal).await;
    }
    let origin = pages::Origin::of(state, &req.headers);
    match pages::render(state, caller.as_ref(), &origin, ep).await {
        Ok(markup) => html(StatusCode::OK, markup.into_string()),
        Err(refusal) => error_page(refusal).await,
    }
}

/// A refusal of the credentials: the console's page, with the Basic
/// challenge when the caller must (re)authenticate.
async fn auth_refused(reason: FailureReason, refusal: AuthRefusal) -> Response {
    let mut r = error_page(RestError::from(refusal).into_response()).await;
    r.extensions_mut().insert(reason);
    r
}

fn static_file(asset: Asset) -> Response {
    let (body, content_type) = match asset {
        Asset::Css => (CSS, "text/css; charset=utf-8"),
        Asset::Js => (JS, "text/javascript; charset=utf-8"),
        Asset::Icon => (ICON, "image/svg+xml"),
    };
    let mut r = (StatusCode::OK, body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    r
}

fn html(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // Pages show what the caller may read: never kept by a shared cache.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The console's error page for a REST error answer (the one REST error
/// table decides the status and the code; its message is the public
/// one). The body is a small JSON document from that table.
async fn error_page(rest: Response) -> Response {
    const MAX_ERROR_BODY: usize = 64 * 1024;
    let status = rest.status();
    let retry_after = rest.headers().get(header::RETRY_AFTER).cloned();
    let limited = http_body_util::Limited::new(rest.into_body(), MAX_ERROR_BODY);
    let body = limited
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let code = parsed["error"].as_str().unwrap_or("internal_error");
    let message = parsed["message"].as_str().unwrap_or("");
    let repositories: Vec<&str> = parsed["repositories"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    let page = views::error_page(status, code, message, &repositories);
    let mut r = html(status, page.into_string());
    if let Some(v) = retry_after {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(BASIC_CHALLENGE),
        );
    }
    r
}

fn named(route: &'static str, template: &'static str, mut r: Response) -> Response {
    r.extensions_mut().insert(RouteName(route));
    RouteTemplate {
        template,
        blob: None,
    }
    .on(r)
}

/// The security headers of every console answer.
fn secured(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

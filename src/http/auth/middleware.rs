//! The auth middleware: establishes the [`Caller`] of every `/v2` and
//! `/artifacts...` request, authorizes the `/v2` endpoint the parse layer
//! left in the request extensions (REST endpoints are authorized by
//! `http::rest` on what they resolve to), and leaves the caller for the
//! handlers.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::credentials::{client_ip, identify, realm};
use super::refusal::{failure_response, refusal_response, scope_string, Refusal};
use super::{Caller, Who};
use crate::auth::{Action, Actions};
use crate::http::endpoint::{Access, Parsed};
use crate::http::error::{Dialect, OciError, OciErrorCode};
use crate::http::rest::endpoint::authenticates;
use crate::http::AppState;

/// The middleware. Runs on every route; does nothing when authentication
/// is off or for `/healthz`, `/token` and unknown paths.
pub async fn middleware(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(auth) = state.auth.clone() else {
        return next.run(req).await;
    };
    // A `/v2` request carries its parse; a REST one is known by its route
    // table's prefix.
    let dialect = if req.extensions().get::<Parsed>().is_some() {
        Dialect::Oci
    } else if authenticates(req.uri().path()) {
        Dialect::Rest
    } else {
        return next.run(req).await;
    };
    let realm: Arc<str> = realm(&state, req.headers(), req.uri()).into();
    let ip = client_ip(&req);
    let fallback_route = match dialect {
        Dialect::Oci => "v2.auth",
        Dialect::Rest => "rest.auth",
    };
    let who = match identify(&auth, req.headers(), ip).await {
        Ok(w) => w,
        Err(f) => {
            let r = failure_response(f, dialect, &realm, fallback_route);
            drain(req.into_body()).await;
            return r;
        }
    };
    let caller = Caller { auth, who, realm };
    let (mut parts, body) = req.into_parts();
    let decision = match dialect {
        Dialect::Oci => v2(&caller, &mut parts),
        // REST: authenticated here, authorized by `http::rest` on the
        // parsed endpoint and the artifact it resolves to.
        Dialect::Rest => Decision::Allow,
    };
    match decision {
        Decision::Refuse(r) => {
            drain(body).await;
            r
        }
        Decision::Allow => {
            let user = caller.user().map(Arc::<str>::from);
            parts.extensions.insert(caller);
            let resp = next.run(Request::from_parts(parts, body)).await;
            with_user(resp, user)
        }
    }
}

/// The user a request was served for, left in the response extensions
/// for the request log.
#[derive(Debug, Clone)]
pub struct ServedUser(pub Arc<str>);

fn with_user(mut resp: Response, user: Option<Arc<str>>) -> Response {
    if let Some(u) = user {
        resp.extensions_mut().insert(ServedUser(u));
    }
    resp
}

/// What the middleware decided about a request.
enum Decision {
    /// Let it through (with the caller in its extensions).
    Allow,
    /// Answer this instead; the handler never runs.
    Refuse(Response),
}

/// Reads and drops what is left of a small request body before a refusal
/// goes out, so an HTTP/2 client sees its stream end cleanly instead of
/// being reset (curl reports such a reset as an error even after a full
/// answer). Bounded: 64 KiB, one second; a larger body is cut off.
pub(crate) async fn drain(body: Body) {
    const DRAIN_MAX: usize = 64 * 1024;
    const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(1);
    let limited = http_body_util::Limited::new(body, DRAIN_MAX);
    let _ = tokio::time::timeout(DRAIN_TIME, http_body_util::BodyExt::collect(limited)).await;
}

/// Authorizes the `/v2` request [`crate::http::endpoint::layer`] parsed. The middleware
/// decides on that value and hands it on; when a mount is not allowed it
/// replaces the value with the same request without the mount (a plain
/// upload session, what distribution does), never the URI.
fn v2(caller: &Caller, parts: &mut Parts) -> Decision {
    let Some(Parsed(parsed)) = parts.extensions.get::<Parsed>() else {
        // The parse layer runs before this middleware on every `/v2`
        // path; refuse rather than let an unparsed request through.
        return Decision::Refuse(
            OciError::new(
                OciErrorCode::Unknown,
                "a /v2 request reached authorization unparsed",
            )
            .into_response(),
        );
    };
    let ep = match parsed {
        Ok(ep) => ep,
        Err(_) => {
            // A malformed request: the handler explains, to those who
            // authenticated (nothing runs).
            if caller.is_anonymous() {
                return Decision::Refuse(refusal_response(
                    Refusal::Challenge(None),
                    Dialect::Oci,
                    &caller.realm,
                    None,
                    "v2",
                ));
            }
            return Decision::Allow;
        }
    };
    let route = ep.route();
    // Whether the caller may pull the source of an explicit mount.
    let mount_allowed = match ep.access() {
        Access::Base => {
            if caller.is_anonymous() {
                return Decision::Refuse(refusal_response(
                    Refusal::Challenge(None),
                    Dialect::Oci,
                    &caller.realm,
                    None,
                    route,
                ));
            }
            None
        }
        Access::Catalog => {
            let ok = match &caller.who {
                Who::Token(c) => c
                    .access
                    .iter()
                    .any(|a| a.kind == "registry" && a.name == "catalog"),
                // A user always gets the list (filtered to what they may
                // pull, possibly empty); an anonymous caller only when the
                // policy lets anonymous callers pull somewhere.
                Who::User(_) => true,
                Who::Anonymous => caller.may_somewhere(Action::Pull),
            };
            if !ok {
                let refusal = match &caller.who {
                    Who::Token(_) => Refusal::Challenge(Some("insufficient_scope")),
                    Who::User(_) | Who::Anonymous => Refusal::Challenge(None),
                };
                return Decision::Refuse(refusal_response(
                    refusal,
                    Dialect::Oci,
                    &caller.realm,
                    Some("registry:catalog:*"),
                    route,
                ));
            }
            // The handler lists only what `visible` admits.
            None
        }
        Access::Repository { need, mount_from } => {
            if !caller.may(need.repo, need.action) {
                let scope = scope_string(need.repo, need.advertised);
                let refusal = caller.refusal(Some((need.repo, Actions::NONE.with(need.action))));
                return Decision::Refuse(refusal_response(
                    refusal,
                    Dialect::Oci,
                    &caller.realm,
                    Some(&scope),
                    route,
                ));
            }
            mount_from.map(|from| caller.may(from, Action::Pull))
        }
    };
    if mount_allowed == Some(false) {
        let without = ep.clone().without_mount();
        parts.extensions.insert(Parsed(Ok(without)));
    }
    Decision::Allow
}

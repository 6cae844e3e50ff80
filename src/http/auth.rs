//! Authentication and authorization at the HTTP edge, in one place: the
//! middleware that establishes who is calling (Basic credentials, a Bearer
//! token, or nobody) and decides whether the request may proceed, and the
//! `/token` endpoint of the Docker token flow (`GET` with Basic, and the
//! OAuth2 `POST` form with `grant_type=password` or `refresh_token`).
//!
//! For `/v2/*` the middleware authorizes the endpoint that
//! [`super::endpoint::layer`] parsed, by the access the endpoint states
//! (`Endpoint::access`: `pull` for reads, `push` for writes, `delete` for
//! deletes; a cross-repository mount also needs `pull` on `from`, else the
//! middleware replaces the parsed value by the same request without the
//! mount, a plain upload). For `/artifacts...` the
//! middleware only authenticates: `http::rest` authorizes the parsed
//! endpoint on what it resolves to (the decoded create body, the copy an
//! id names) with the `*_rest` methods of [`Caller`]. Lists (`GET /artifacts`,
//! `/artifacts/for-host/...`, `/v2/_catalog`) are filtered to what the
//! caller may pull: the middleware leaves a [`Caller`] in the request
//! extensions for the handlers. `/healthz` and `/token` stay open. Nothing
//! here runs when authentication is off.
//!
//! Refusals: no or bad credentials → 401 `UNAUTHORIZED` with a
//! `WWW-Authenticate: Bearer realm=...,service=...,scope=...` challenge;
//! authenticated but not allowed → 403 `DENIED` (a token that merely lacks
//! a scope its user could get → 401 `insufficient_scope`, so clients fetch
//! a new one); too many failed logins → 429 `TOOMANYREQUESTS` with
//! `Retry-After`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::json;

use super::endpoint::{Access, Parsed};
use super::{json_response, read_body_capped, AppState, RouteName};
use crate::auth::{parse_scopes, token, Action, Actions, Auth, Claims, LoginError};
use crate::error::{OciError, OciErrorCode};
use crate::oci::RepoName;

/// Largest `POST /token` form accepted.
const MAX_TOKEN_FORM_BYTES: u64 = 64 * 1024;

#[derive(Clone)]
enum Who {
    Anonymous,
    /// Basic credentials that checked out.
    User(Arc<str>),
    /// A valid bearer token (its `sub` is empty for an anonymous token).
    Token(Arc<Claims>),
}

/// Who is calling, as the middleware established it; left in the request
/// extensions so handlers can filter lists. Absent when authentication
/// is off.
#[derive(Clone)]
pub struct Caller {
    auth: Arc<Auth>,
    who: Who,
    realm: Arc<str>,
}

impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caller")
            .field("user", &self.user())
            .finish()
    }
}

impl Caller {
    /// The user name, if the caller authenticated as one.
    pub fn user(&self) -> Option<&str> {
        match &self.who {
            Who::Anonymous => None,
            Who::User(u) => Some(u),
            Who::Token(c) => Some(c.sub.as_str()).filter(|s| !s.is_empty()),
        }
    }

    fn is_anonymous(&self) -> bool {
        matches!(self.who, Who::Anonymous)
    }

    /// Whether the caller may do `action` on `repo`.
    pub fn may(&self, repo: &RepoName, action: Action) -> bool {
        match &self.who {
            Who::Anonymous => self.auth.actions_for(None, repo).contains(action),
            Who::User(u) => self.auth.actions_for(Some(u), repo).contains(action),
            Who::Token(c) => c.grants(repo.as_str(), action.as_str()),
        }
    }

    /// Whether the caller may do `action` on at least one repository.
    fn may_somewhere(&self, action: Action) -> bool {
        match &self.who {
            Who::Anonymous => self.auth.may_somewhere(None, action),
            Who::User(u) => self.auth.may_somewhere(Some(u), action),
            Who::Token(c) => c.grants_somewhere(action.as_str()),
        }
    }

    /// Whether the caller may see `repo` in a list (catalog, REST lists).
    /// A token is judged by its user's policy here: lists are not scoped.
    fn may_list(&self, repo: &RepoName) -> bool {
        match &self.who {
            Who::Token(c) => {
                let user = Some(c.sub.as_str()).filter(|s| !s.is_empty());
                self.auth.actions_for(user, repo).contains(Action::Pull)
            }
            _ => self.may(repo, Action::Pull),
        }
    }

    /// 401 (go and authenticate, or get a token with this scope) or 403
    /// (you are known and not allowed).
    fn refusal(&self, scope: Option<(&RepoName, Actions)>) -> Refusal {
        match &self.who {
            Who::Anonymous => Refusal::Challenge(None),
            Who::User(_) => Refusal::Denied,
            Who::Token(c) if c.sub.is_empty() => Refusal::Challenge(Some("insufficient_scope")),
            Who::Token(c) => {
                let could = match scope {
                    Some((repo, needed)) => {
                        let allowed = self.auth.actions_for(Some(&c.sub), repo);
                        !needed.is_empty() && needed.intersect(allowed) == needed
                    }
                    None => false,
                };
                if could {
                    Refusal::Challenge(Some("insufficient_scope"))
                } else {
                    Refusal::Denied
                }
            }
        }
    }

    // ---- REST: what `http::rest` authorizes with -----------------------

    /// The REST answer refusing `action` on `repo`: 401 with a challenge
    /// (anonymous, or a token its user could extend) or 403 `denied`.
    pub fn refuse_rest(&self, repo: &RepoName, action: Action) -> Response {
        let needed = Actions::NONE.with(action);
        let scope = scope_string(repo, needed);
        refusal_response(
            self.refusal(Some((repo, needed))),
            Api::Rest,
            &self.realm,
            Some(&scope),
            "rest",
        )
    }

    /// No user behind the call: no credentials, or an anonymous token.
    pub fn is_anonymous_rest(&self) -> bool {
        match &self.who {
            Who::Anonymous => true,
            Who::User(_) => false,
            Who::Token(c) => c.sub.is_empty(),
        }
    }

    /// Whether the caller's principal may pull `repo` by the policy (a
    /// token is judged by its user's grants, as lists are): such a caller
    /// learns nothing new from being told to get a token for `repo`.
    pub fn could_pull_rest(&self, repo: &RepoName) -> bool {
        self.may_list(repo)
    }

    /// The REST 401 for a caller who must authenticate: a Bearer and a
    /// Basic challenge, no scope.
    pub fn rest_challenge(&self) -> Response {
        refusal_response(
            Refusal::Challenge(None),
            Api::Rest,
            &self.realm,
            None,
            "rest.auth",
        )
    }

    /// For a REST list: an anonymous caller who may pull nothing is asked
    /// to authenticate.
    pub fn refuse_rest_list(&self) -> Option<Response> {
        (self.is_anonymous() && !self.may_somewhere(Action::Pull)).then(|| self.rest_challenge())
    }

    /// For `POST /artifacts` before its body is read: a caller who may
    /// push nowhere is refused (the repository is checked once decoded).
    pub fn refuse_rest_create(&self) -> Option<Response> {
        if self.may_somewhere(Action::Push) {
            return None;
        }
        let refusal = match &self.who {
            Who::Anonymous => Refusal::Challenge(None),
            Who::Token(c)
                if c.sub.is_empty() || self.auth.may_somewhere(Some(&c.sub), Action::Push) =>
            {
                Refusal::Challenge(Some("insufficient_scope"))
            }
            _ => Refusal::Denied,
        };
        Some(refusal_response(
            refusal,
            Api::Rest,
            &self.realm,
            None,
            "rest.artifacts.create",
        ))
    }
}

impl Caller {
    /// Whom per-principal limits (upload sessions) count against: the
    /// user, or `ip` for an anonymous caller.
    pub fn principal(&self, ip: IpAddr) -> crate::registry::Principal {
        match self.user() {
            Some(u) => crate::registry::Principal::user(u),
            None => crate::registry::Principal::address(ip),
        }
    }

    /// The principal of a request the middleware let through: its
    /// caller's, or its source address when authentication is off.
    pub fn principal_of(req: &Request) -> crate::registry::Principal {
        let ip = client_ip(req);
        match req.extensions().get::<Caller>() {
            Some(c) => c.principal(ip),
            None => crate::registry::Principal::address(ip),
        }
    }
}

/// Keeps the entries of a list the caller may pull; everything when
/// authentication is off (`caller` is `None`).
pub fn visible(caller: Option<&Caller>, repo: &RepoName) -> bool {
    caller.is_none_or(|c| c.may_list(repo))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// 401 with a challenge; `error=` when a token was presented.
    Challenge(Option<&'static str>),
    /// 403 `DENIED`.
    Denied,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    V2,
    Rest,
}

fn scope_string(repo: &RepoName, actions: Actions) -> String {
    format!("repository:{repo}:{}", actions.to_scope_string())
}

fn hv(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn challenge_header(realm: &str, scope: Option<&str>, error: Option<&str>) -> HeaderValue {
    let mut v = format!("Bearer realm=\"{realm}\",service=\"{}\"", token::SERVICE);
    if let Some(s) = scope {
        v.push_str(&format!(",scope=\"{s}\""));
    }
    if let Some(e) = error {
        v.push_str(&format!(",error=\"{e}\""));
    }
    hv(&v)
}

fn named(route: &'static str, mut r: Response) -> Response {
    r.extensions_mut().insert(RouteName(route));
    r
}

fn v2_headers(mut r: Response) -> Response {
    r.headers_mut().insert(
        super::v2::API_VERSION_HEADER,
        HeaderValue::from_static("registry/2.0"),
    );
    r
}

fn refusal_response(
    refusal: Refusal,
    api: Api,
    realm: &str,
    scope: Option<&str>,
    route: &'static str,
) -> Response {
    let (status, code, rest_code, message) = match refusal {
        Refusal::Challenge(_) => (
            StatusCode::UNAUTHORIZED,
            OciErrorCode::Unauthorized,
            "unauthorized",
            "authentication required",
        ),
        Refusal::Denied => (
            StatusCode::FORBIDDEN,
            OciErrorCode::Denied,
            "denied",
            "requested access to the resource is denied",
        ),
    };
    let mut r = match api {
        Api::V2 => {
            let mut e = OciError::new(code, message);
            if let Some(s) = scope {
                e = e.with_detail(json!({ "scope": s }));
            }
            v2_headers(e.into_response())
        }
        Api::Rest => json_response(status, &json!({ "error": rest_code, "message": message })),
    };
    if let Refusal::Challenge(error) = refusal {
        r.headers_mut().append(
            header::WWW_AUTHENTICATE,
            challenge_header(realm, scope, error),
        );
        if api == Api::Rest {
            r.headers_mut().append(
                header::WWW_AUTHENTICATE,
                hv(&format!("Basic realm=\"{}\"", token::SERVICE)),
            );
        }
    }
    named(route, r)
}

/// Why the presented credentials were not accepted.
enum Failure {
    /// Malformed header, unknown user, wrong password.
    BadCredentials,
    /// A bearer token that does not verify (bad signature, expired, ...).
    BadToken,
    RateLimited(std::time::Duration),
}

fn failure_response(f: Failure, api: Api, realm: &str, route: &'static str) -> Response {
    match f {
        Failure::BadCredentials | Failure::BadToken => {
            let token_error = matches!(f, Failure::BadToken).then_some("invalid_token");
            let message = if token_error.is_some() {
                "the bearer token is invalid or expired"
            } else {
                "invalid user name or password"
            };
            let mut r = match api {
                Api::V2 => {
                    v2_headers(OciError::new(OciErrorCode::Unauthorized, message).into_response())
                }
                Api::Rest => json_response(
                    StatusCode::UNAUTHORIZED,
                    &json!({ "error": "unauthorized", "message": message }),
                ),
            };
            r.headers_mut().append(
                header::WWW_AUTHENTICATE,
                challenge_header(realm, None, token_error),
            );
            named(route, r)
        }
        Failure::RateLimited(wait) => {
            let secs = wait.as_secs().max(1);
            let message = format!("too many failed logins; retry in {secs} s");
            let mut r = match api {
                Api::V2 => v2_headers(
                    OciError::new(OciErrorCode::TooManyRequests, message).into_response(),
                ),
                Api::Rest => json_response(
                    StatusCode::TOO_MANY_REQUESTS,
                    &json!({ "error": "too_many_requests", "message": message }),
                ),
            };
            r.headers_mut()
                .insert(header::RETRY_AFTER, hv(&secs.to_string()));
            named(route, r)
        }
    }
}

enum Presented {
    Nothing,
    Basic(String, String),
    Bearer(String),
}

fn presented(headers: &HeaderMap) -> Result<Presented, Failure> {
    let Some(v) = headers.get(header::AUTHORIZATION) else {
        return Ok(Presented::Nothing);
    };
    let v = v.to_str().map_err(|_| Failure::BadCredentials)?.trim();
    let (scheme, rest) = v.split_once(' ').unwrap_or((v, ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("basic") {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(rest))
            .map_err(|_| Failure::BadCredentials)?;
        let s = String::from_utf8(raw).map_err(|_| Failure::BadCredentials)?;
        let (u, p) = s.split_once(':').ok_or(Failure::BadCredentials)?;
        if u.is_empty() {
            return Err(Failure::BadCredentials);
        }
        return Ok(Presented::Basic(u.to_string(), p.to_string()));
    }
    if scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty() {
        return Ok(Presented::Bearer(rest.to_string()));
    }
    Err(Failure::BadCredentials)
}

fn client_ip(req: &Request) -> IpAddr {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

/// `<external URL or scheme://Host>/token`.
fn realm(state: &AppState, headers: &HeaderMap, uri: &Uri) -> String {
    if let Some(base) = &state.config.external_url {
        return format!("{base}/token");
    }
    let scheme = if state.config.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| uri.authority().map(|a| a.to_string()))
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']')
                })
        })
        .unwrap_or_else(|| state.config.http_addr.to_string());
    format!("{scheme}://{host}/token")
}

async fn identify(auth: &Arc<Auth>, headers: &HeaderMap, ip: IpAddr) -> Result<Who, Failure> {
    match presented(headers)? {
        Presented::Nothing => Ok(Who::Anonymous),
        Presented::Basic(user, password) => match auth.check_password(&user, &password, ip).await {
            Ok(()) => Ok(Who::User(user.into())),
            Err(LoginError::Invalid) => Err(Failure::BadCredentials),
            Err(LoginError::RateLimited(wait)) => Err(Failure::RateLimited(wait)),
        },
        Presented::Bearer(t) => match auth.verify_access_token(&t) {
            Ok(c) => Ok(Who::Token(c)),
            Err(e) => {
                tracing::debug!(reason = %e, client = %ip, "bearer token refused");
                Err(Failure::BadToken)
            }
        },
    }
}

/// The middleware. Runs on every route; does nothing when authentication
/// is off or for `/healthz`, `/token` and unknown paths.
pub async fn middleware(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(auth) = state.auth.clone() else {
        return next.run(req).await;
    };
    let path = req.uri().path();
    let api = if path == "/v2" || path.starts_with("/v2/") {
        Api::V2
    } else if path == "/artifacts" || path.starts_with("/artifacts/") {
        Api::Rest
    } else {
        return next.run(req).await;
    };
    let realm: Arc<str> = realm(&state, req.headers(), req.uri()).into();
    let ip = client_ip(&req);
    let fallback_route = match api {
        Api::V2 => "v2.auth",
        Api::Rest => "rest.auth",
    };
    let who = match identify(&auth, req.headers(), ip).await {
        Ok(w) => w,
        Err(f) => {
            let r = failure_response(f, api, &realm, fallback_route);
            drain(req.into_body()).await;
            return r;
        }
    };
    let caller = Caller { auth, who, realm };
    let (mut parts, body) = req.into_parts();
    let decision = match api {
        Api::V2 => v2(&caller, &mut parts),
        // REST: authenticated here, authorized by `http::rest` on the
        // parsed endpoint and the artifact it resolves to.
        Api::Rest => Decision::Allow,
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
async fn drain(body: Body) {
    const DRAIN_MAX: usize = 64 * 1024;
    const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(1);
    let limited = http_body_util::Limited::new(body, DRAIN_MAX);
    let _ = tokio::time::timeout(DRAIN_TIME, http_body_util::BodyExt::collect(limited)).await;
}

/// Authorizes the `/v2` request [`super::endpoint::layer`] parsed. The middleware
/// decides on that value and hands it on; when a mount is not allowed it
/// replaces the value with the same request without the mount (a plain
/// upload session, what distribution does), never the URI.
fn v2(caller: &Caller, parts: &mut Parts) -> Decision {
    let Some(Parsed(parsed)) = parts.extensions.get::<Parsed>() else {
        // The parse layer runs before this middleware on every `/v2`
        // path; refuse rather than let an unparsed request through.
        tracing::error!("a /v2 request reached authorization unparsed");
        return Decision::Refuse(v2_headers(
            OciError::new(OciErrorCode::Unknown, "internal error").into_response(),
        ));
    };
    let ep = match parsed {
        Ok(ep) => ep,
        Err(_) => {
            // A malformed request: the handler explains, to those who
            // authenticated (nothing runs).
            if caller.is_anonymous() {
                return Decision::Refuse(refusal_response(
                    Refusal::Challenge(None),
                    Api::V2,
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
                    Api::V2,
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
                _ => caller.may_somewhere(Action::Pull) || caller.user().is_some(),
            };
            if !ok {
                let refusal = match &caller.who {
                    Who::User(_) => Refusal::Denied,
                    Who::Token(_) => Refusal::Challenge(Some("insufficient_scope")),
                    Who::Anonymous => Refusal::Challenge(None),
                };
                return Decision::Refuse(refusal_response(
                    refusal,
                    Api::V2,
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
                    Api::V2,
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

// ---- the token endpoint ------------------------------------------------

fn token_error(status: StatusCode, code: &str, message: &str) -> Response {
    let mut r = json_response(
        status,
        &json!({ "errors": [{ "code": code, "message": message }] }),
    );
    r.extensions_mut().insert(RouteName("token"));
    r
}

fn token_answer(auth: &Auth, user: Option<&str>, scope: &str, refresh: Option<String>) -> Response {
    let scopes = parse_scopes(scope);
    match auth.issue(user, &scopes) {
        Ok(issued) => {
            let granted = issued
                .access
                .iter()
                .map(|a| format!("{}:{}:{}", a.kind, a.name, a.actions.join(",")))
                .collect::<Vec<_>>()
                .join(" ");
            tracing::info!(
                user = user.unwrap_or(""),
                asked = scopes.len(),
                granted = issued.access.len(),
                "token issued"
            );
            let mut body = json!({
                "token": issued.token,
                "access_token": issued.token,
                "expires_in": issued.expires_in,
                "issued_at": issued.issued_at,
                "scope": granted,
            });
            if let Some(r) = refresh {
                body["refresh_token"] = json!(r);
            }
            let mut resp = json_response(StatusCode::OK, &body);
            resp.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            resp.extensions_mut().insert(RouteName("token"));
            resp
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot sign a token");
            token_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "UNKNOWN",
                "cannot sign a token",
            )
        }
    }
}

fn service_ok(service: Option<&str>) -> bool {
    service.is_none_or(|s| s.is_empty() || s == token::SERVICE)
}

fn login_failure(e: LoginError) -> Response {
    match e {
        LoginError::Invalid => token_error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "invalid user name or password",
        ),
        LoginError::RateLimited(wait) => {
            let secs = wait.as_secs().max(1);
            let mut r = token_error(
                StatusCode::TOO_MANY_REQUESTS,
                "TOOMANYREQUESTS",
                &format!("too many failed logins; retry in {secs} s"),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, hv(&secs.to_string()));
            r
        }
    }
}

fn not_found() -> Response {
    token_error(
        StatusCode::NOT_FOUND,
        "NAME_UNKNOWN",
        "authentication is off",
    )
}

/// `GET /token?service=&scope=[&offline_token=true]`, Basic credentials
/// optional (none: an anonymous token).
pub async fn token_get(State(state): State<AppState>, req: Request) -> Response {
    let Some(auth) = state.auth.clone() else {
        return not_found();
    };
    let q: Vec<(String, String)> = req
        .uri()
        .query()
        .and_then(|q| serde_urlencoded::from_str(q).ok())
        .unwrap_or_default();
    let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    if !service_ok(get("service")) {
        return token_error(
            StatusCode::BAD_REQUEST,
            "UNSUPPORTED",
            "unknown service: this registry is bpf-registry",
        );
    }
    let scope = q
        .iter()
        .filter(|(k, _)| k == "scope")
        .map(|(_, v)| v.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    let ip = client_ip(&req);
    let user = match presented(req.headers()) {
        Ok(Presented::Nothing) | Ok(Presented::Bearer(_)) => None,
        Ok(Presented::Basic(u, p)) => match auth.check_password(&u, &p, ip).await {
            Ok(()) => Some(u),
            Err(e) => return login_failure(e),
        },
        Err(_) => return login_failure(LoginError::Invalid),
    };
    let refresh = match (&user, get("offline_token")) {
        (Some(u), Some("true")) => auth.issue_refresh(u).ok(),
        _ => None,
    };
    token_answer(&auth, user.as_deref(), &scope, refresh)
}

/// `POST /token` (OAuth2 form): `grant_type=password` with `username` and
/// `password`, or `grant_type=refresh_token` with `refresh_token`; plus
/// `service`, `scope` (space separated), `access_type=offline` for a
/// refresh token.
pub async fn token_post(State(state): State<AppState>, req: Request) -> Response {
    let Some(auth) = state.auth.clone() else {
        return not_found();
    };
    let ip = client_ip(&req);
    let form_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
        .unwrap_or(false);
    if !form_type {
        return token_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED",
            "expected application/x-www-form-urlencoded",
        );
    }
    let Ok(body) = read_body_capped(req.into_body(), MAX_TOKEN_FORM_BYTES).await else {
        return token_error(
            StatusCode::BAD_REQUEST,
            "UNSUPPORTED",
            "form too large or unreadable",
        );
    };
    let form: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    drop(body);
    let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    if !service_ok(get("service")) {
        return token_error(
            StatusCode::BAD_REQUEST,
            "UNSUPPORTED",
            "unknown service: this registry is bpf-registry",
        );
    }
    let scope = get("scope").unwrap_or("").to_string();
    match get("grant_type") {
        Some("password") => {
            let (Some(u), Some(p)) = (get("username"), get("password")) else {
                return token_error(
                    StatusCode::BAD_REQUEST,
                    "UNSUPPORTED",
                    "username and password are required",
                );
            };
            if let Err(e) = auth.check_password(u, p, ip).await {
                return login_failure(e);
            }
            let refresh = if get("access_type") == Some("offline") {
                auth.issue_refresh(u).ok()
            } else {
                None
            };
            token_answer(&auth, Some(u), &scope, refresh)
        }
        Some("refresh_token") => {
            let Some(r) = get("refresh_token") else {
                return token_error(
                    StatusCode::BAD_REQUEST,
                    "UNSUPPORTED",
                    "refresh_token is required",
                );
            };
            match auth.verify_refresh(r) {
                Ok(user) => token_answer(&auth, Some(&user), &scope, Some(r.to_string())),
                Err(_) => token_error(
                    StatusCode::UNAUTHORIZED,
                    "UNAUTHORIZED",
                    "the refresh token is invalid, expired or revoked",
                ),
            }
        }
        _ => token_error(
            StatusCode::BAD_REQUEST,
            "UNSUPPORTED",
            "grant_type must be password or refresh_token",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_format() {
        let h = challenge_header(
            "https://r.example/token",
            Some("repository:bpf/x:pull,push"),
            Some("insufficient_scope"),
        );
        assert_eq!(
            h.to_str().unwrap(),
            "Bearer realm=\"https://r.example/token\",service=\"bpf-registry\",scope=\"repository:bpf/x:pull,push\",error=\"insufficient_scope\""
        );
    }

    #[test]
    fn authorization_headers() {
        let mut h = HeaderMap::new();
        assert!(matches!(presented(&h), Ok(Presented::Nothing)));
        h.insert(header::AUTHORIZATION, hv("Basic YWxpY2U6cHc6eA=="));
        assert!(matches!(presented(&h), Ok(Presented::Basic(u, p)) if u == "alice" && p == "pw:x"));
        h.insert(header::AUTHORIZATION, hv("bearer abc.def.ghi"));
        assert!(matches!(presented(&h), Ok(Presented::Bearer(t)) if t == "abc.def.ghi"));
        for bad in [
            "Basic !!!",
            "Basic Om5vdXNlcg==",
            "Digest x",
            "Bearer ",
            "Basic bm9jb2xvbg==",
        ] {
            h.insert(header::AUTHORIZATION, hv(bad));
            assert!(presented(&h).is_err(), "{bad}");
        }
    }
}

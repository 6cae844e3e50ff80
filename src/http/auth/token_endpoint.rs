//! The `/token` endpoint of the Docker token flow: `GET` with optional
//! Basic credentials (none: an anonymous token), and the OAuth2 `POST`
//! form with `grant_type=password` or `refresh_token`. Its query and its
//! form are decoded once by the strict decoder (only `scope` may repeat);
//! its errors are the OCI envelope, through `http::error::oci`.

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::credentials::{client_ip, presented, Presented};
use super::refusal::{named, FailureReason};
use super::AuthRefusal;
use crate::auth::{parse_scopes, token, Auth, LoginError};
use crate::http::endpoint::query::Query;
use crate::http::error::{OciError, OciErrorCode};
use crate::http::{json_response, read_body_capped, AppState};

/// Largest `POST /token` form accepted.
const MAX_TOKEN_FORM_BYTES: u64 = 64 * 1024;

/// The parameter that may be given more than once (each a scope).
const REPEATABLE: &[&str] = &["scope"];

/// A `/token` answer (Docker token spec and OAuth2 both).
#[derive(Serialize, utoipa::ToSchema)]
pub struct TokenAnswer {
    /// An ES256 JWT for `Authorization: Bearer`.
    pub token: String,
    /// The same token, under its OAuth2 name.
    pub access_token: String,
    /// Seconds the token is valid.
    pub expires_in: u64,
    /// RFC 3339.
    pub issued_at: String,
    /// What was granted, space separated (`repository:<name>:<actions>`).
    pub scope: String,
    /// With `offline_token=true` (GET) or `access_type=offline` (POST).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
}

fn token_error(e: OciError) -> Response {
    named("token", e.into_response())
}

fn invalid(message: &str) -> Response {
    token_error(OciError::new(OciErrorCode::ParameterInvalid, message))
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
            let body = TokenAnswer {
                access_token: issued.token.clone(),
                token: issued.token,
                expires_in: issued.expires_in,
                issued_at: issued.issued_at,
                scope: granted,
                refresh_token: refresh,
            };
            let mut resp = json_response(StatusCode::OK, &body);
            resp.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            named("token", resp)
        }
        Err(e) => token_error(OciError::new(
            OciErrorCode::Unknown,
            format!("cannot sign a token: {e}"),
        )),
    }
}

fn service_ok(service: Option<&str>) -> bool {
    service.is_none_or(|s| s.is_empty() || s == token::SERVICE)
}

fn login_failure(e: LoginError) -> Response {
    let reason = match e {
        LoginError::Invalid => FailureReason::BadCredentials,
        LoginError::RateLimited(_) => FailureReason::Throttled,
    };
    let refusal = match e {
        // No challenge: this is where clients come to authenticate.
        LoginError::Invalid => AuthRefusal::Unauthenticated {
            message: "invalid user name or password",
            scope: None,
            challenges: Vec::new(),
        },
        LoginError::RateLimited(wait) => AuthRefusal::Throttled {
            retry_after: wait.as_secs().max(1),
        },
    };
    reason.on(token_error(refusal.into()))
}

fn not_found() -> Response {
    token_error(OciError::new(
        OciErrorCode::NameUnknown,
        "authentication is off",
    ))
}

/// Decodes the query or form; `None` for a malformed one or a parameter
/// given twice (other than `scope`), answered with [`malformed`].
fn decode(raw: Option<&str>) -> Option<Query> {
    Query::parse(raw, REPEATABLE).ok()
}

fn malformed() -> Response {
    invalid("malformed parameters, or a parameter given more than once")
}

/// `GET /token?service=&scope=[&offline_token=true]`, Basic credentials
/// optional (none: an anonymous token).
pub async fn token_get(State(state): State<AppState>, req: Request) -> Response {
    let Some(auth) = state.auth.clone() else {
        return not_found();
    };
    let Some(q) = decode(req.uri().query()) else {
        return malformed();
    };
    if !service_ok(q.get("service")) {
        return invalid("unknown service: this registry is bpf-registry");
    }
    let scope = q.all("scope").collect::<Vec<_>>().join(" ");
    let ip = client_ip(&req);
    let user = match presented(req.headers()) {
        Ok(Presented::Nothing) | Ok(Presented::Bearer(_)) => None,
        Ok(Presented::Basic(u, p)) => match auth.check_password(&u, &p, ip).await {
            Ok(()) => Some(u),
            Err(e) => return login_failure(e),
        },
        Err(_) => return login_failure(LoginError::Invalid),
    };
    let refresh = match (&user, q.get("offline_token")) {
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
        return token_error(OciError::new(
            OciErrorCode::MediaTypeUnsupported,
            "expected application/x-www-form-urlencoded",
        ));
    }
    let Ok(body) = read_body_capped(req.into_body(), MAX_TOKEN_FORM_BYTES).await else {
        return invalid("form too large or unreadable");
    };
    let form = std::str::from_utf8(&body)
        .ok()
        .and_then(|text| decode(Some(text)));
    drop(body);
    let Some(form) = form else {
        return malformed();
    };
    if !service_ok(form.get("service")) {
        return invalid("unknown service: this registry is bpf-registry");
    }
    let scope = form.all("scope").collect::<Vec<_>>().join(" ");
    match form.get("grant_type") {
        Some("password") => {
            let (Some(u), Some(p)) = (form.get("username"), form.get("password")) else {
                return invalid("username and password are required");
            };
            if let Err(e) = auth.check_password(u, p, ip).await {
                return login_failure(e);
            }
            let refresh = if form.get("access_type") == Some("offline") {
                auth.issue_refresh(u).ok()
            } else {
                None
            };
            token_answer(&auth, Some(u), &scope, refresh)
        }
        Some("refresh_token") => {
            let Some(r) = form.get("refresh_token") else {
                return invalid("refresh_token is required");
            };
            match auth.verify_refresh(r) {
                Ok(user) => token_answer(&auth, Some(&user), &scope, Some(r.to_string())),
                Err(_) => FailureReason::BadToken.on(token_error(OciError::new(
                    OciErrorCode::Unauthorized,
                    "the refresh token is invalid, expired or revoked",
                ))),
            }
        }
        _ => invalid("grant_type must be password or refresh_token"),
    }
}

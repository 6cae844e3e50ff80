//! Who may read `GET /metrics` while authentication is on: a caller
//! presenting `Authorization: Bearer <BPF_REGISTRY_METRICS_TOKEN>`
//! (compared in constant time), or Basic credentials of a user whom the
//! policy grants `metrics = true` (every user without a policy file).
//! Registry access tokens from `/token` carry repository scopes only and do
//! not open it. Refusals are the auth layer's usual ones, in the REST
//! dialect: 401 without or with bad credentials (failed logins count
//! toward the login limits), 403 for a user without the grant.

use std::sync::Arc;

use axum::extract::Request;
use axum::response::Response;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

use super::credentials::{client_ip, identify, presented, realm, Presented};
use super::refusal::{failure_response, refusal_response, Refusal};
use super::Who;
use crate::auth::Auth;
use crate::http::error::Dialect;
use crate::http::AppState;

/// The route name of `/metrics` in the request log.
const ROUTE: &str = "metrics";

/// Whether two secrets are equal, in time independent of where they
/// differ and of their lengths (both are hashed first).
fn same_secret(presented: &str, expected: &str) -> bool {
    let a = Sha256::digest(presented.as_bytes());
    let b = Sha256::digest(expected.as_bytes());
    a.as_slice().ct_eq(b.as_slice()).into()
}

/// `Ok` when the caller may read the metrics; else the refusal to send.
/// The request's body is not read (a scrape has none).
pub async fn authorize_metrics(
    state: &AppState,
    auth: &Arc<Auth>,
    req: Request,
) -> Result<(), Response> {
    let ip = client_ip(&req);
    let (parts, _body) = req.into_parts();
    let headers = &parts.headers;
    if let (Some(token), Ok(Presented::Bearer(b))) =
        (&state.config.metrics_token, presented(headers))
    {
        if same_secret(&b, token.expose()) {
            return Ok(());
        }
    }
    let realm = realm(state, headers, &parts.uri);
    let refuse = |r: Refusal| refusal_response(r, Dialect::Rest, &realm, None, ROUTE);
    match identify(auth, headers, ip).await {
        Err(f) => Err(failure_response(f, Dialect::Rest, &realm, ROUTE)),
        Ok(Who::Anonymous) => Err(refuse(Refusal::Challenge(None))),
        Ok(Who::Token(c)) if c.sub.is_empty() => Err(refuse(Refusal::Challenge(None))),
        Ok(Who::User(u)) if auth.may_read_metrics(&u) => Ok(()),
        Ok(Who::User(_) | Who::Token(_)) => Err(refuse(Refusal::Denied)),
    }
}

#[cfg(test)]
mod tests {
    use super::same_secret;

    #[test]
    fn secrets_compare_equal_only_when_identical() {
        assert!(same_secret("0123456789abcdef", "0123456789abcdef"));
        assert!(!same_secret("0123456789abcdeF", "0123456789abcdef"));
        assert!(!same_secret("0123456789abcdef0", "0123456789abcdef"));
        assert!(!same_secret("", "0123456789abcdef"));
    }
}

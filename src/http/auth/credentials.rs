//! Credentials: what the `Authorization` header presents (Basic or
//! Bearer), checking it against the users and the token key, the client's
//! address (for login limits and per-address caps) and the realm a
//! challenge points to.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request};
use axum::http::{header, HeaderMap, Uri};
use base64::Engine as _;

use super::Who;
use crate::auth::{Auth, LoginError};
use crate::http::AppState;

/// Why the presented credentials were not accepted.
pub(super) enum Failure {
    /// Malformed header, unknown user, wrong password.
    BadCredentials,
    /// A bearer token that does not verify (bad signature, expired, ...).
    BadToken,
    RateLimited(std::time::Duration),
}

pub(super) enum Presented {
    Nothing,
    Basic(String, String),
    Bearer(String),
}

pub(super) fn presented(headers: &HeaderMap) -> Result<Presented, Failure> {
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

pub(super) fn client_ip(req: &Request) -> IpAddr {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

/// `<external URL or scheme://Host>/token`.
pub(super) fn realm(state: &AppState, headers: &HeaderMap, uri: &Uri) -> String {
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

pub(super) async fn identify(
    auth: &Arc<Auth>,
    headers: &HeaderMap,
    ip: IpAddr,
) -> Result<Who, Failure> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn hv(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
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

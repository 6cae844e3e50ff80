//! Authentication and authorization at the HTTP edge, in one place: who is
//! calling ([`Caller`], established by the middleware from Basic
//! credentials, a Bearer token, or nobody), whether the request may
//! proceed, and the `/token` endpoint of the Docker token flow.
//!
//! - `mod.rs` (here): [`Caller`] and what it may do.
//! - `credentials`: reading the `Authorization` header, checking it, the
//!   client address and the token realm.
//! - `middleware`: the middleware, and the authorization of a parsed
//!   `/v2` endpoint.
//! - `refusal`: the refusals (401 with its `WWW-Authenticate` challenges,
//!   403, 429) as [`AuthRefusal`] values, which the dialect tables of
//!   `http::error` answer.
//! - `token_endpoint`: `GET /token` with Basic, and the OAuth2 `POST` form
//!   with `grant_type=password` or `refresh_token`.
//! - `metrics_access`: who may read `GET /metrics` (the metrics token, or
//!   a user the policy grants `metrics`).
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

mod credentials;
mod metrics_access;
mod middleware;
mod refusal;
mod token_endpoint;

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::Request;

use crate::auth::{Action, Auth, Claims, HostAction};
use crate::oci::RepoName;

pub use metrics_access::authorize_metrics;
pub(crate) use middleware::drain;
pub use middleware::{middleware, ServedUser};
pub use refusal::{AuthRefusal, FailureReason};
pub use token_endpoint::{token_get, token_post, TokenAnswer};

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

    /// Whether the caller may do `action` on the fleet host `host`. A
    /// token carries no host scopes: it is judged by its user's grants
    /// (an anonymous token by `[anonymous]`).
    pub fn may_host(&self, host: &str, action: HostAction) -> bool {
        self.auth
            .host_actions_for(self.user(), host)
            .contains(action)
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
        let ip = credentials::client_ip(req);
        match req.extensions().get::<Caller>() {
            Some(c) => c.principal(ip),
            None => crate::registry::Principal::address(ip),
        }
    }
}

/// A caller for unit tests elsewhere in the crate: `user` by Basic, or
/// anonymous.
#[cfg(test)]
pub(crate) fn test_caller(auth: Arc<Auth>, user: Option<&str>) -> Caller {
    let who = match user {
        Some(u) => Who::User(u.into()),
        None => Who::Anonymous,
    };
    Caller {
        auth,
        who,
        realm: "http://127.0.0.1/token".into(),
    }
}

/// Keeps the entries of a list the caller may pull; everything when
/// authentication is off (`caller` is `None`).
pub fn visible(caller: Option<&Caller>, repo: &RepoName) -> bool {
    caller.is_none_or(|c| c.may_list(repo))
}

/// Who calls a web console page (`http::ui`), from the same credentials
/// the API takes: `Ok(None)` when authentication is off. A refusal comes
/// with its reason (for the metrics) and answers in the console's own
/// error page; whether an anonymous caller may go on is the console's
/// decision.
pub async fn identify_console(
    state: &crate::http::AppState,
    parts: &axum::http::request::Parts,
) -> Result<Option<Caller>, (FailureReason, AuthRefusal)> {
    let Some(auth) = state.auth.clone() else {
        return Ok(None);
    };
    let realm: Arc<str> = credentials::realm(state, &parts.headers, &parts.uri).into();
    let ip = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    match credentials::identify(&auth, &parts.headers, ip).await {
        Ok(who) => Ok(Some(Caller { auth, who, realm })),
        Err(f) => Err((f.reason(), f.refusal(&realm))),
    }
}

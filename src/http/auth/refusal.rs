//! The refusals of the auth layer, as values: [`AuthRefusal`] says why a
//! request is turned away and carries its `WWW-Authenticate` challenges;
//! the dialect tables (`http::error::{oci,rest}`) make the wire answer
//! (401 `UNAUTHORIZED`/`unauthorized`, 403 `DENIED`/`denied`, 429 with
//! `Retry-After`). Also the [`Caller`] methods `http::rest` refuses with.
//! Every refusal leaves its [`FailureReason`] in the response extensions
//! (for `registry_auth_failures_total{reason}`).

use axum::http::HeaderValue;
use axum::response::Response;

use super::credentials::Failure;
use super::{Caller, Who};
use crate::auth::{token, Action, Actions, HostAction};
use crate::http::error::Dialect;
use crate::http::RouteName;
use crate::oci::RepoName;

/// Why the auth layer turns a request away.
#[derive(Debug, Clone)]
pub enum AuthRefusal {
    /// 401: authenticate, or get a token for `scope`; `challenges` are the
    /// `WWW-Authenticate` values, in order.
    Unauthenticated {
        message: &'static str,
        scope: Option<String>,
        challenges: Vec<HeaderValue>,
    },
    /// 403: known, and not allowed.
    Denied { scope: Option<String> },
    /// 429: too many failed logins; retry after that many seconds.
    Throttled { retry_after: u64 },
}

impl AuthRefusal {
    pub const DENIED_MESSAGE: &'static str = "requested access to the resource is denied";

    pub fn throttled_message(retry_after: u64) -> String {
        format!("too many failed logins; retry in {retry_after} s")
    }
}

/// Why the auth layer refused a request, from a fixed list: the `reason`
/// label of `registry_auth_failures_total`, left in the response
/// extensions of every refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureReason {
    /// No credentials where they are needed (the 401 challenge).
    NoCredentials,
    /// A malformed `Authorization` header, an unknown user or a wrong
    /// password.
    BadCredentials,
    /// A bearer token that does not verify, or an invalid refresh token.
    BadToken,
    /// A token without the scope needed (401 `insufficient_scope`).
    InsufficientScope,
    /// Authenticated, and not allowed (403).
    Denied,
    /// Too many failed logins (429).
    Throttled,
}

impl FailureReason {
    pub const ALL: [FailureReason; 6] = [
        FailureReason::NoCredentials,
        FailureReason::BadCredentials,
        FailureReason::BadToken,
        FailureReason::InsufficientScope,
        FailureReason::Denied,
        FailureReason::Throttled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::NoCredentials => "no_credentials",
            FailureReason::BadCredentials => "bad_credentials",
            FailureReason::BadToken => "bad_token",
            FailureReason::InsufficientScope => "insufficient_scope",
            FailureReason::Denied => "denied",
            FailureReason::Throttled => "throttled",
        }
    }

    /// Leaves the reason in a refusal's extensions.
    pub(super) fn on(self, mut r: Response) -> Response {
        r.extensions_mut().insert(self);
        r
    }
}

/// What a refusal asks of the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// 401 with a challenge; `error=` when a token was presented.
    Challenge(Option<&'static str>),
    /// 403 `DENIED`.
    Denied,
}

pub(super) fn scope_string(repo: &RepoName, actions: Actions) -> String {
    format!("repository:{repo}:{}", actions.to_scope_string())
}

pub(super) fn hv(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

pub(super) fn challenge_header(
    realm: &str,
    scope: Option<&str>,
    error: Option<&str>,
) -> HeaderValue {
    let mut v = format!("Bearer realm=\"{realm}\",service=\"{}\"", token::SERVICE);
    if let Some(s) = scope {
        v.push_str(&format!(",scope=\"{s}\""));
    }
    if let Some(e) = error {
        v.push_str(&format!(",error=\"{e}\""));
    }
    hv(&v)
}

pub(super) fn named(route: &'static str, mut r: Response) -> Response {
    r.extensions_mut().insert(RouteName(route));
    r
}

/// The answer to a refusal: a REST 401 offers Basic besides the Bearer
/// challenge.
pub(super) fn refusal_response(
    refusal: Refusal,
    dialect: Dialect,
    realm: &str,
    scope: Option<&str>,
    route: &'static str,
) -> Response {
    let reason = match refusal {
        Refusal::Challenge(None) => FailureReason::NoCredentials,
        Refusal::Challenge(Some(_)) => FailureReason::InsufficientScope,
        Refusal::Denied => FailureReason::Denied,
    };
    let r = match refusal {
        Refusal::Challenge(error) => {
            let mut challenges = vec![challenge_header(realm, scope, error)];
            if dialect == Dialect::Rest {
                challenges.push(hv(&format!("Basic realm=\"{}\"", token::SERVICE)));
            }
            AuthRefusal::Unauthenticated {
                message: "authentication required",
                scope: scope.map(str::to_string),
                challenges,
            }
        }
        Refusal::Denied => AuthRefusal::Denied {
            scope: scope.map(str::to_string),
        },
    };
    reason.on(named(route, dialect.answer(r)))
}

/// The answer to credentials that were not accepted.
pub(super) fn failure_response(
    f: Failure,
    dialect: Dialect,
    realm: &str,
    route: &'static str,
) -> Response {
    let reason = f.reason();
    reason.on(named(route, dialect.answer(f.refusal(realm))))
}

impl Failure {
    pub(super) fn reason(&self) -> FailureReason {
        match self {
            Failure::BadCredentials => FailureReason::BadCredentials,
            Failure::BadToken => FailureReason::BadToken,
            Failure::RateLimited(_) => FailureReason::Throttled,
        }
    }

    pub(super) fn refusal(self, realm: &str) -> AuthRefusal {
        match self {
            Failure::BadCredentials | Failure::BadToken => {
                let token_error = matches!(self, Failure::BadToken).then_some("invalid_token");
                let message = if token_error.is_some() {
                    "the bearer token is invalid or expired"
                } else {
                    "invalid user name or password"
                };
                AuthRefusal::Unauthenticated {
                    message,
                    scope: None,
                    challenges: vec![challenge_header(realm, None, token_error)],
                }
            }
            Failure::RateLimited(wait) => AuthRefusal::Throttled {
                retry_after: wait.as_secs().max(1),
            },
        }
    }
}

impl Caller {
    /// 401 (go and authenticate, or get a token with this scope) or 403
    /// (you are known and not allowed).
    pub(super) fn refusal(&self, scope: Option<(&RepoName, Actions)>) -> Refusal {
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
            Dialect::Rest,
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
            Dialect::Rest,
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

    /// The REST answer refusing a host action: 401 with a challenge when
    /// no user is behind the call (there is no host scope a token could
    /// add), else 403 `denied`.
    pub fn refuse_rest_host(&self) -> Response {
        let refusal = if self.is_anonymous_rest() {
            Refusal::Challenge(None)
        } else {
            Refusal::Denied
        };
        refusal_response(refusal, Dialect::Rest, &self.realm, None, "rest")
    }

    /// For `GET /hosts`: a caller with no user behind it who may read no
    /// host is asked to authenticate.
    pub fn refuse_rest_host_list(&self) -> Option<Response> {
        (self.is_anonymous_rest() && !self.auth.may_host_somewhere(None, HostAction::Read))
            .then(|| self.rest_challenge())
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
            Dialect::Rest,
            &self.realm,
            None,
            "rest.artifacts.create",
        ))
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
}

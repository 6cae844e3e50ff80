//! Authorization of a parsed REST endpoint, decided on what it resolved
//! to: the repository a decoded create body writes, and the copy an id
//! names.
//!
//! What an id means: a REST id is a manifest digest, and the same manifest
//! can live in several repositories, each copy a separate artifact. An id
//! resolves among the copies the caller may pull (all of them when
//! authentication is off), ordered by when each was linked into its
//! repository:
//!
//! - `?repository=<name>` picks that copy;
//! - reads (`GET /artifacts/{id}`, `/binary`, `/hosts`, `/signatures`,
//!   `/verify`) take the first copy;
//! - writes (`DELETE`, host add/remove) need exactly one copy visible to
//!   the caller, else 409 `ambiguous_id` listing the repositories the
//!   caller may pull that hold it;
//! - then the endpoint's action is checked on the chosen copy's repository
//!   (403 `denied`, or 401 for a token lacking the scope).
//!
//! A caller who may pull no copy gets exactly what an unknown id gets: 404
//! `not_found` when authenticated, a 401 challenge when anonymous, so the
//! answer is no existence oracle. (A token whose user may pull a copy but
//! whose scope lacks it gets a 401 `insufficient_scope` challenge naming
//! that repository: its user may see it anyway.)
//!
//! Fleet hosts are authorized on their id alone, before anything is looked
//! up (so the answer is no existence oracle), by the host grants of the
//! caller's user (a token by its user's grants: tokens carry no host
//! scopes): 403 `denied` when a user is behind the call, else a 401
//! challenge. `GET /hosts` shows the hosts the caller may `read`.

use std::sync::Arc;

use axum::response::{IntoResponse, Response};

use super::endpoint::IdRef;
use crate::artifacts::model::ArtifactRecord;
use crate::artifacts::{ArtifactError, ArtifactKey, HostId};
use crate::auth::{Action, HostAction};
use crate::http::auth::{self, Caller};
use crate::oci::RepoName;

/// A refusal (401, 403, 404 or 409), ready to be answered.
pub struct Refused(Box<Response>);

impl From<Response> for Refused {
    fn from(r: Response) -> Self {
        Refused(Box::new(r))
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        *self.0
    }
}

/// Who is asking: `None` when authentication is off (everything allowed).
#[derive(Clone, Copy)]
pub struct Access<'a> {
    caller: Option<&'a Caller>,
}

impl<'a> Access<'a> {
    pub fn new(caller: Option<&'a Caller>) -> Self {
        Access { caller }
    }

    fn may(&self, repo: &RepoName, action: Action) -> bool {
        self.caller.is_none_or(|c| c.may(repo, action))
    }

    /// Whether a list may show an entry of `repo`.
    pub fn visible(&self, repo: &RepoName) -> bool {
        auth::visible(self.caller, repo)
    }

    /// Before a list is built.
    pub fn check_list(&self) -> Result<(), Refused> {
        match self.caller.and_then(Caller::refuse_rest_list) {
            Some(r) => Err(r.into()),
            None => Ok(()),
        }
    }

    /// Before a create body is read.
    pub fn check_create(&self) -> Result<(), Refused> {
        match self.caller.and_then(Caller::refuse_rest_create) {
            Some(r) => Err(r.into()),
            None => Ok(()),
        }
    }

    /// The caller's user name, when one is behind the call.
    pub fn user(&self) -> Option<&str> {
        self.caller.and_then(Caller::user)
    }

    /// `action` on a repository a path names (channels).
    pub fn check_repo(&self, repo: &RepoName, action: Action) -> Result<(), Refused> {
        match self.caller {
            Some(c) if !c.may(repo, action) => Err(c.refuse_rest(repo, action).into()),
            _ => Ok(()),
        }
    }

    /// Push on the repository a decoded create body writes.
    pub fn check_push(&self, repo: &RepoName) -> Result<(), Refused> {
        match self.caller {
            Some(c) if !c.may(repo, Action::Push) => Err(c.refuse_rest(repo, Action::Push).into()),
            _ => Ok(()),
        }
    }

    /// `action` on the fleet host `host` (see the module doc).
    pub fn check_host(&self, host: &HostId, action: HostAction) -> Result<(), Refused> {
        match self.caller {
            Some(c) if !c.may_host(host.as_str(), action) => Err(c.refuse_rest_host().into()),
            _ => Ok(()),
        }
    }

    /// Whether `GET /hosts` may show `host`: the caller may read it.
    pub fn host_visible(&self, host: &HostId) -> bool {
        self.caller
            .is_none_or(|c| c.may_host(host.as_str(), HostAction::Read))
    }

    /// Before `GET /hosts` is built: a caller without a user who may read
    /// no host is asked to authenticate.
    pub fn check_host_list(&self) -> Result<(), Refused> {
        match self.caller.and_then(Caller::refuse_rest_host_list) {
            Some(r) => Err(r.into()),
            None => Ok(()),
        }
    }

    /// The copy `id` means for this caller and `action` (see the module
    /// doc); `copies` are every copy, the first linked first.
    pub fn resolve(
        &self,
        copies: Vec<Arc<ArtifactRecord>>,
        id: &IdRef,
        action: Action,
    ) -> Result<ArtifactKey, Refused> {
        self.resolve_copy(copies, id, action).map(|c| c.key())
    }

    /// [`Access::resolve`], answering the chosen copy's record (as read
    /// for the decision).
    pub fn resolve_copy(
        &self,
        copies: Vec<Arc<ArtifactRecord>>,
        id: &IdRef,
        action: Action,
    ) -> Result<Arc<ArtifactRecord>, Refused> {
        let copies: Vec<Arc<ArtifactRecord>> = copies
            .into_iter()
            .filter(|c| id.repository.as_ref().is_none_or(|r| &c.repo == r))
            .collect();
        let readable: Vec<&Arc<ArtifactRecord>> = copies
            .iter()
            .filter(|c| self.may(&c.repo, Action::Pull))
            .collect();
        let chosen = match readable.as_slice() {
            [] => return Err(self.unseen(&copies, id).into()),
            [first, ..] if action == Action::Pull => *first,
            [only] => *only,
            several => {
                return Err(ArtifactError::AmbiguousId {
                    id: id.digest.clone(),
                    repositories: several.iter().map(|c| c.repo.clone()).collect(),
                }
                .into_response()
                .into())
            }
        };
        if let Some(c) = self.caller {
            if !c.may(&chosen.repo, action) {
                return Err(c.refuse_rest(&chosen.repo, action).into());
            }
        }
        Ok(Arc::clone(chosen))
    }

    /// The answer for an id with no copy the caller may pull: the same as
    /// for an id that does not exist.
    fn unseen(&self, copies: &[Arc<ArtifactRecord>], id: &IdRef) -> Response {
        let unknown = || ArtifactError::NotFound(id.digest.to_string()).into_response();
        let Some(c) = self.caller else {
            return unknown();
        };
        if let Some(copy) = copies.iter().find(|r| c.could_pull_rest(&r.repo)) {
            return c.refuse_rest(&copy.repo, Action::Pull);
        }
        if c.is_anonymous_rest() {
            return c.rest_challenge();
        }
        unknown()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Auth, AuthSettings};
    use crate::http::auth::test_caller;
    use axum::http::StatusCode;

    fn auth(dir: &std::path::Path, policy: Option<&str>) -> Arc<Auth> {
        let h = bcrypt::hash("pw", 4).unwrap();
        std::fs::write(dir.join("htpasswd"), format!("agent-1:{h}\nolga:{h}\n")).unwrap();
        let policy = policy.map(|p| {
            std::fs::write(dir.join("policy.toml"), p).unwrap();
            dir.join("policy.toml")
        });
        Arc::new(
            Auth::load(AuthSettings {
                htpasswd: dir.join("htpasswd"),
                policy,
                token_key: None,
                token_ttl: std::time::Duration::from_secs(300),
                data_dir: dir.join("data"),
            })
            .unwrap(),
        )
    }

    async fn code(r: Refused) -> (StatusCode, serde_json::Value) {
        let r = r.into_response();
        let status = r.status();
        let body = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn hosts_follow_the_host_grants() {
        let dir = tempfile::tempdir().unwrap();
        let auth = auth(
            dir.path(),
            Some("[groups]\nops=[\"olga\"]\n[[grant]]\nusers=[\"agent-*\"]\nhosts=[\"{user}\"]\nactions=[\"report\"]\n[[grant]]\ngroups=[\"ops\"]\nhosts=[\"**\"]\nactions=[\"read\",\"delete\"]\n"),
        );
        let host = |s: &str| HostId::parse(s).unwrap();
        let agent = test_caller(auth.clone(), Some("agent-1"));
        let olga = test_caller(auth.clone(), Some("olga"));
        let nobody = test_caller(auth.clone(), None);
        let (agent, olga, nobody) = (
            Access::new(Some(&agent)),
            Access::new(Some(&olga)),
            Access::new(Some(&nobody)),
        );
        assert!(agent
            .check_host(&host("agent-1"), HostAction::Report)
            .is_ok());
        assert!(agent.check_host(&host("agent-1"), HostAction::Read).is_ok());
        assert!(agent.host_visible(&host("agent-1")));
        assert!(!agent.host_visible(&host("agent-2")));
        assert!(olga.host_visible(&host("agent-2")));
        assert!(olga.check_host(&host("x"), HostAction::Delete).is_ok());
        assert!(agent.check_host_list().is_ok());
        // Known and not allowed: 403 denied.
        for (who, h, a) in [
            (&agent, "agent-2", HostAction::Report),
            (&agent, "agent-1", HostAction::Delete),
            (&olga, "x", HostAction::Report),
        ] {
            let (status, body) = code(who.check_host(&host(h), a).unwrap_err()).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{h} {a}");
            assert_eq!(body["error"], "denied", "{body}");
        }
        // Anonymous: 401, for a host action and for the list.
        let (status, body) = code(
            nobody
                .check_host(&host("agent-1"), HostAction::Read)
                .unwrap_err(),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["error"], "unauthorized", "{body}");
        assert!(!nobody.host_visible(&host("agent-1")));
        let (status, _) = code(nobody.check_host_list().unwrap_err()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        // Authentication off: everything open.
        let open = Access::new(None);
        assert!(open.check_host(&host("h"), HostAction::Delete).is_ok());
        assert!(open.host_visible(&host("h")) && open.check_host_list().is_ok());
    }

    #[tokio::test]
    async fn default_policy_and_anonymous_hosts() {
        let dir = tempfile::tempdir().unwrap();
        let d = auth(dir.path(), None);
        let user = test_caller(d.clone(), Some("olga"));
        let user = Access::new(Some(&user));
        let h = HostId::parse("any").unwrap();
        for a in HostAction::ALL {
            assert!(user.check_host(&h, a).is_ok());
        }
        let anon = test_caller(d, None);
        assert!(Access::new(Some(&anon))
            .check_host(&h, HostAction::Read)
            .is_err());
        // [anonymous] hosts: anonymous callers may read them and list.
        let dir = tempfile::tempdir().unwrap();
        let a = auth(
            dir.path(),
            Some("[anonymous]\nhosts=[\"lab-*\"]\nactions=[\"read\"]\n"),
        );
        let anon = test_caller(a.clone(), None);
        let anon = Access::new(Some(&anon));
        assert!(anon.check_host_list().is_ok());
        assert!(anon.host_visible(&HostId::parse("lab-1").unwrap()));
        assert!(!anon.host_visible(&h));
        let (status, _) = code(
            anon.check_host(&HostId::parse("lab-1").unwrap(), HostAction::Report)
                .unwrap_err(),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        // ...and so may every user.
        let olga = test_caller(a, Some("olga"));
        assert!(Access::new(Some(&olga)).host_visible(&HostId::parse("lab-1").unwrap()));
    }
}

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

use std::sync::Arc;

use axum::response::{IntoResponse, Response};

use super::endpoint::IdRef;
use crate::artifacts::model::ArtifactRecord;
use crate::artifacts::{ArtifactError, ArtifactKey};
use crate::auth::Action;
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

    /// Push on the repository a decoded create body writes.
    pub fn check_push(&self, repo: &RepoName) -> Result<(), Refused> {
        match self.caller {
            Some(c) if !c.may(repo, Action::Push) => Err(c.refuse_rest(repo, Action::Push).into()),
            _ => Ok(()),
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
        Ok(chosen.key())
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

//! One function per console page: authorize the parsed endpoint exactly
//! like the REST or OCI read it mirrors, call the services, and hand what
//! they answered to the views. A refusal or a service error is a REST
//! error answer, which `ui` turns into the error page.
//!
//! - The index and a host's page are `GET /artifacts` (with `host=`):
//!   one page of what the caller may pull, filtered before paging, and
//!   the catalog filtered the same way (`/v2/_catalog`).
//! - An artifact's page is `GET /artifacts/{id}`: the id resolves among
//!   the copies the caller may pull (`rest::access`), so a copy it may
//!   not pull is answered as an unknown id.
//! - A repository's page is `GET /v2/{name}/tags/list` with what the
//!   caller may pull of it; a repository it may not pull is answered
//!   like one that does not exist (404), never 403, so the page is no
//!   existence oracle.

use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use maud::Markup;

use super::endpoint::{Filters, UiEndpoint, TAG_PAGE_SIZE};
use super::views::{self, Page};
use super::views_detail::{self, ArtifactView, HostFleet, RepositoryView, TagRow};
use crate::artifacts::{ArtifactError, FleetRefusal, HostId, ListQuery};
use crate::auth::Action;
use crate::http::auth::Caller;
use crate::http::error::{RestError, RestErrorCode};
use crate::http::rest::access::Access;
use crate::http::rest::endpoint::IdRef;
use crate::http::AppState;
use crate::oci::{Reference, RepoName, Tag};
use crate::registry::RegistryError;

/// Repositories shown on the index (the first page of the catalog).
const REPOSITORIES_SHOWN: usize = 100;
/// Versions (platforms) of one artifact shown on its page.
const PLATFORMS_SHOWN: usize = 32;

/// Where the registry is, as the caller reached it: what the copy-paste
/// commands name.
pub struct Origin {
    /// `http` or `https`.
    pub scheme: &'static str,
    /// `host[:port]`, validated.
    pub authority: String,
}

impl Origin {
    /// The external URL when one is configured, else the scheme the server
    /// listens with and the request's `Host` (only host characters; any
    /// other value falls back to the listening address).
    pub fn of(state: &AppState, headers: &HeaderMap) -> Origin {
        if let Some(base) = &state.config.external_url {
            let (scheme, rest) = match base.split_once("://") {
                Some(("https", rest)) => ("https", rest),
                Some((_, rest)) => ("http", rest),
                None => ("https", base.as_str()),
            };
            return Origin {
                scheme,
                authority: rest.trim_end_matches('/').to_string(),
            };
        }
        let scheme = if state.config.tls_cert.is_some() {
            "https"
        } else {
            "http"
        };
        let authority = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| {
                !h.is_empty()
                    && h.len() <= 255
                    && h.bytes().all(|b| {
                        b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']')
                    })
            })
            .map(str::to_string)
            .unwrap_or_else(|| state.config.http_addr.to_string());
        Origin { scheme, authority }
    }

    pub fn base_url(&self) -> String {
        format!("{}://{}", self.scheme, self.authority)
    }
}

fn failed(e: impl Into<ArtifactError>) -> Response {
    e.into().into_response()
}

fn repository_not_found(repo: &RepoName) -> Response {
    RestError::new(
        RestErrorCode::NotFound,
        format!("repository {repo} not found"),
    )
    .into_response()
}

/// Renders the page `ep` names for `caller` (`None`: authentication off).
pub async fn render(
    state: &AppState,
    caller: Option<&Caller>,
    origin: &Origin,
    ep: UiEndpoint,
) -> Result<Markup, Response> {
    let access = Access::new(caller);
    let page = Page {
        user: caller.and_then(Caller::user),
    };
    match ep {
        UiEndpoint::Index { filters, query } => index(state, access, &page, &filters, &query).await,
        UiEndpoint::Artifact { id } => artifact(state, access, &page, origin, &id).await,
        UiEndpoint::Host { host, query } => host_page(state, access, &page, &host, &query).await,
        UiEndpoint::Repository {
            repo,
            last_tag,
            query,
        } => repository(state, access, &page, &repo, last_tag.as_deref(), &query).await,
        UiEndpoint::Static { .. } => Err(failed(ArtifactError::Internal(
            "a static file reached the page renderer".into(),
        ))),
    }
}

async fn index(
    state: &AppState,
    access: Access<'_>,
    page: &Page<'_>,
    filters: &Filters,
    query: &ListQuery,
) -> Result<Markup, Response> {
    access.check_list().map_err(IntoResponse::into_response)?;
    let shown = |r: &RepoName| access.visible(r) && filters.matches_search(r);
    let (artifacts, next_cursor) = state.artifacts.list(query, &shown).await.map_err(failed)?;
    let repositories = state
        .registry
        .catalog(Some(REPOSITORIES_SHOWN), None, shown)
        .await
        .map_err(failed)?;
    Ok(views::index_page(
        page,
        filters,
        &repositories.items,
        repositories.next_last.is_some(),
        &artifacts,
        next_cursor.as_deref(),
    ))
}

async fn artifact(
    state: &AppState,
    access: Access<'_>,
    page: &Page<'_>,
    origin: &Origin,
    id: &IdRef,
) -> Result<Markup, Response> {
    let copies = state.artifacts.copies(&id.digest).await.map_err(failed)?;
    let other_copies: Vec<RepoName> = copies
        .iter()
        .filter(|c| access.visible(&c.repo))
        .map(|c| c.repo.clone())
        .collect();
    let key = access
        .resolve(copies, id, Action::Pull)
        .map_err(IntoResponse::into_response)?;
    let artifact = state.artifacts.get(&key).await.map_err(failed)?;
    // The other platforms of the same version (one index, one tag).
    let platforms = ListQuery {
        name: Some(key.repo.to_string()),
        version: Some(artifact.version.clone()),
        limit: PLATFORMS_SHOWN,
        ..ListQuery::default()
    };
    let (platforms, _) = state
        .artifacts
        .list(&platforms, &|r| access.visible(r))
        .await
        .map_err(failed)?;
    let verification = match state.signing.verify(&key.repo, &key.digest).await {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(artifact = %key, error = %e, "console: signature verification unavailable");
            None
        }
    };
    Ok(views_detail::artifact_page(
        page,
        &ArtifactView {
            artifact: &artifact,
            platforms: &platforms,
            copies: &other_copies,
            verification: verification.as_ref(),
            origin,
            curl_user: state.auth.as_ref().map(|_| page.user.unwrap_or("")),
        },
    ))
}

async fn host_page(
    state: &AppState,
    access: Access<'_>,
    page: &Page<'_>,
    host: &HostId,
    query: &ListQuery,
) -> Result<Markup, Response> {
    access.check_list().map_err(IntoResponse::into_response)?;
    let (artifacts, next_cursor) = state
        .artifacts
        .list(query, &|r| access.visible(r))
        .await
        .map_err(failed)?;
    // Facts and reports only for a caller who may read the host (as
    // `GET /hosts/{id}` and its deployments); the associated artifacts
    // are listed by repository access, as before.
    let fleet = match access.host_visible(host) {
        true => host_fleet(state, access, host).await?,
        false => HostFleet::Hidden,
    };
    Ok(views_detail::host_page(
        page,
        host,
        &fleet,
        &artifacts,
        next_cursor.as_deref(),
    ))
}

/// What the fleet knows of `host`; its reports only for the artifacts
/// whose repositories the caller may see.
async fn host_fleet(
    state: &AppState,
    access: Access<'_>,
    host: &HostId,
) -> Result<HostFleet, Response> {
    let read = async {
        let facts = state.fleet.host(host).await?;
        let visible = |r: &RepoName| access.visible(r);
        let deployments = state.fleet.deployments(host, &visible).await?;
        Ok::<_, ArtifactError>(HostFleet::Registered(Box::new(facts), deployments))
    };
    match read.await {
        Ok(fleet) => Ok(fleet),
        // Never registered, or deleted between the two reads.
        Err(ArtifactError::Fleet {
            kind: FleetRefusal::HostNotFound,
            ..
        }) => Ok(HostFleet::Unregistered),
        Err(e) => Err(failed(e)),
    }
}

async fn repository(
    state: &AppState,
    access: Access<'_>,
    page: &Page<'_>,
    repo: &RepoName,
    last_tag: Option<&str>,
    query: &ListQuery,
) -> Result<Markup, Response> {
    if !access.visible(repo) {
        return Err(repository_not_found(repo));
    }
    let tags = match state
        .registry
        .list_tags(repo, Some(TAG_PAGE_SIZE), last_tag)
        .await
    {
        Ok(t) => t,
        Err(RegistryError::NameUnknown(_)) => return Err(repository_not_found(repo)),
        Err(e) => return Err(failed(e)),
    };
    let mut rows = Vec::with_capacity(tags.items.len());
    for t in &tags.items {
        let Ok(tag) = Tag::parse(t) else { continue };
        match state.registry.resolve(repo, &Reference::Tag(tag)).await {
            Ok(digest) => rows.push(TagRow {
                tag: t.clone(),
                digest: Some(digest),
            }),
            // Untagged between the two reads.
            Err(RegistryError::ManifestUnknown(_)) => rows.push(TagRow {
                tag: t.clone(),
                digest: None,
            }),
            Err(e) => return Err(failed(e)),
        }
    }
    let (artifacts, next_cursor) = state
        .artifacts
        .list(query, &|r| access.visible(r))
        .await
        .map_err(failed)?;
    let mut referrers = Vec::with_capacity(artifacts.len());
    for a in &artifacts {
        let digest = crate::oci::Digest::parse(&a.id)
            .map_err(|e| failed(ArtifactError::Internal(format!("artifact id: {e}"))))?;
        let found = state
            .registry
            .referrers(repo, &digest, None)
            .await
            .map_err(failed)?;
        referrers.push(found);
    }
    Ok(views_detail::repository_page(
        page,
        &RepositoryView {
            repo,
            tags: &rows,
            next_tag: tags.next_last.as_deref(),
            artifacts: &artifacts,
            referrers: &referrers,
            next_cursor: next_cursor.as_deref(),
        },
    ))
}

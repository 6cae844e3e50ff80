//! The fleet's REST handlers: each takes its parsed (and authorized)
//! endpoint, reads a bounded JSON body where it has one, calls the fleet
//! or artifact service, and maps the answer (watch answers with their
//! `ETag`, 304 when unchanged).

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use super::access::Access;
use super::endpoint::{ChannelOp, FleetEndpoint, HostOp};
use super::handlers::{is_json, refuse};
use super::response::json_ok;
use crate::artifacts::model::ArtifactRecord;
use crate::artifacts::{ArtifactError, ArtifactKey, FleetRefusal, HostId};
use crate::fleet::service::{ChannelBody, SelectorJson};
use crate::fleet::watch::{Outcome, Parking};
use crate::fleet::Selector;
use crate::http::{read_body_capped, AppState, BodyReadError};
use crate::oci::Tag;

/// The largest fleet JSON body (a host with 64 labels fits many times).
const MAX_FLEET_BODY_BYTES: u64 = 64 * 1024;

/// A bounded JSON body, decoded.
async fn body<T: DeserializeOwned>(req: Request) -> Result<T, Response> {
    if !is_json(req.headers()) {
        return Err(refuse(req, ArtifactError::UnsupportedMediaType.into_response()).await);
    }
    let bytes = match read_body_capped(req.into_body(), MAX_FLEET_BODY_BYTES).await {
        Ok(b) => b,
        Err(BodyReadError::TooLarge) => {
            return Err(ArtifactError::InvalidRequest(format!(
                "the body is over {MAX_FLEET_BODY_BYTES} bytes"
            ))
            .into_response())
        }
        Err(BodyReadError::Broken(m)) => {
            return Err(
                ArtifactError::InvalidRequest(format!("body could not be read: {m}"))
                    .into_response(),
            )
        }
    };
    serde_json::from_slice(&bytes)
        .map_err(|e| ArtifactError::InvalidJson(e.to_string()).into_response())
}

/// The parking a request's caller offers (the plain HTTP/1.1 front).
fn parking(req: &Request) -> Option<Parking> {
    req.extensions().get::<Parking>().cloned()
}

fn if_none_match(req: &Request) -> Option<String> {
    req.headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// A watch outcome on the wire: 200 with the body and `ETag`, or 304.
fn watched(r: Result<Outcome, ArtifactError>) -> Response {
    let (mut resp, etag) = match r {
        Ok(Outcome::Changed(a)) => {
            let mut resp = (StatusCode::OK, a.body).into_response();
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            (resp, a.etag)
        }
        Ok(Outcome::NotModified { etag }) => (StatusCode::NOT_MODIFIED.into_response(), etag),
        Ok(Outcome::Parked) => {
            // Never sent: the front holds the connection and runs the
            // request again when the wait ends.
            let mut resp = StatusCode::NOT_MODIFIED.into_response();
            resp.extensions_mut().insert(crate::http::ParkedAnswer);
            return resp;
        }
        Err(e) => return e.into_response(),
    };
    if let Ok(v) = HeaderValue::from_str(&etag) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// `GET /artifacts/for-host/{host_id}[?wait=]`.
pub async fn for_host(
    state: &AppState,
    access: Access<'_>,
    host: &HostId,
    wait: Option<std::time::Duration>,
    req: Request,
) -> Response {
    let inm = if_none_match(&req);
    let parking = parking(&req);
    // Not held for the whole wait: the request's headers are read.
    drop(req);
    let visible = |r: &crate::oci::RepoName| access.visible(r);
    watched(
        state
            .fleet
            .watch_for_host(host, &visible, inm.as_deref(), wait, parking.as_ref())
            .await,
    )
}

/// Every `/hosts...` and `/channels...` endpoint; `copy` is the copy a
/// report's artifact id resolved to (its record as read for the
/// decision).
pub async fn fleet(
    state: &AppState,
    access: Access<'_>,
    ep: FleetEndpoint,
    copy: Option<Arc<ArtifactRecord>>,
    req: Request,
) -> Response {
    let fleet = &state.fleet;
    match ep {
        FleetEndpoint::Hosts {
            selector,
            limit,
            cursor,
        } => {
            let may_read = |h: &str| HostId::parse(h).is_ok_and(|h| access.host_visible(&h));
            match fleet
                .hosts(selector.as_ref(), limit, cursor.as_deref(), &may_read)
                .await
            {
                Ok(list) => json_ok(StatusCode::OK, &list),
                Err(e) => e.into_response(),
            }
        }
        FleetEndpoint::Host { host, op } => match op {
            HostOp::Register => {
                let b = match body(req).await {
                    Ok(b) => b,
                    Err(r) => return r,
                };
                match fleet.put_host(&host, b).await {
                    Ok((json, created)) => {
                        let status = if created {
                            StatusCode::CREATED
                        } else {
                            StatusCode::OK
                        };
                        json_ok(status, &json)
                    }
                    Err(e) => e.into_response(),
                }
            }
            HostOp::Get => match fleet.host(&host).await {
                Ok(h) => json_ok(StatusCode::OK, &h),
                Err(e) => e.into_response(),
            },
            HostOp::Delete => match fleet.delete_host(&host).await {
                Ok(()) => StatusCode::NO_CONTENT.into_response(),
                Err(e) => e.into_response(),
            },
            HostOp::Desired { wait } => {
                let inm = if_none_match(&req);
                let parking = parking(&req);
                drop(req);
                let visible = |r: &crate::oci::RepoName| access.visible(r);
                watched(
                    fleet
                        .watch_desired(&host, &visible, inm.as_deref(), wait, parking.as_ref())
                        .await,
                )
            }
            HostOp::Deployments => {
                let visible = |r: &crate::oci::RepoName| access.visible(r);
                match fleet.deployments(&host, &visible).await {
                    Ok(d) => json_ok(StatusCode::OK, &d),
                    Err(e) => e.into_response(),
                }
            }
            HostOp::Report { .. } => {
                let Some(copy) = copy else {
                    return ArtifactError::Internal("a report without its resolved copy".into())
                        .into_response();
                };
                let b = match body(req).await {
                    Ok(b) => b,
                    Err(r) => return r,
                };
                match fleet.report(&host, &copy, b).await {
                    Ok(d) => json_ok(StatusCode::OK, &d),
                    Err(e) => e.into_response(),
                }
            }
        },
        FleetEndpoint::Channel { repo, channel, op } => {
            let by = access.user().map(str::to_string);
            let r = match op {
                ChannelOp::Get => fleet.channel(&repo, &channel).await,
                ChannelOp::Rollback => fleet.rollback(&repo, &channel, by.as_deref()).await,
                ChannelOp::Set => {
                    let b: ChannelBody = match body(req).await {
                        Ok(b) => b,
                        Err(r) => return r,
                    };
                    let Some(version) = b.version else {
                        return ArtifactError::InvalidRequest("version is required".into())
                            .into_response();
                    };
                    fleet
                        .set_channel(&repo, &channel, &version, by.as_deref())
                        .await
                }
            };
            match r {
                Ok(c) => json_ok(StatusCode::OK, &c),
                Err(e) => e.into_response(),
            }
        }
    }
}

/// `POST /artifacts/{id}/selectors` body.
#[derive(serde::Deserialize, utoipa::ToSchema)]
pub struct SelectorBody {
    /// Kubernetes label-selector syntax, e.g. `env=prod,role in (edge,core),!canary`.
    #[schema(value_type = String, required = true)]
    pub selector: Option<String>,
    /// A channel of the repository the matching hosts follow.
    #[serde(default)]
    pub channel: Option<String>,
}

/// `{"selectors": [...]}`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct SelectorList {
    pub selectors: Vec<SelectorJson>,
}

/// `GET`/`POST /artifacts/{id}/selectors`, `DELETE .../{selector_id}`.
pub async fn selectors(
    state: &AppState,
    key: &ArtifactKey,
    op: super::endpoint::ArtifactOp,
    req: Request,
) -> Response {
    use super::endpoint::ArtifactOp;
    let svc = &state.artifacts;
    match op {
        ArtifactOp::Selectors => match svc.selectors(key).await {
            Ok(rows) => json_ok(
                StatusCode::OK,
                &SelectorList {
                    selectors: rows.iter().map(SelectorJson::from).collect(),
                },
            ),
            Err(e) => e.into_response(),
        },
        ArtifactOp::AddSelector => {
            let b: SelectorBody = match body(req).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            let Some(text) = b.selector else {
                return ArtifactError::fleet(FleetRefusal::InvalidSelector, "selector is required")
                    .into_response();
            };
            let selector = match Selector::parse(&text) {
                Ok(s) => s,
                Err(e) => {
                    return ArtifactError::fleet(FleetRefusal::InvalidSelector, e.to_string())
                        .into_response()
                }
            };
            let channel = match b
                .channel
                .map(|c| Tag::parse(&c).map_err(|e| (c, e)))
                .transpose()
            {
                Ok(c) => c,
                Err((c, e)) => {
                    return ArtifactError::InvalidRequest(format!(
                        "invalid channel {:?}: {e}",
                        c.chars().take(130).collect::<String>()
                    ))
                    .into_response()
                }
            };
            match svc
                .add_selector(key, selector.text(), channel.as_ref())
                .await
            {
                Ok(c) => {
                    let status = if c.created {
                        StatusCode::CREATED
                    } else {
                        StatusCode::OK
                    };
                    json_ok(status, &SelectorJson::from(&c.value))
                }
                Err(e) => e.into_response(),
            }
        }
        ArtifactOp::RemoveSelector { selector_id } => {
            match svc.remove_selector(key, &selector_id).await {
                Ok(true) => StatusCode::NO_CONTENT.into_response(),
                Ok(false) => ArtifactError::fleet(
                    FleetRefusal::SelectorNotFound,
                    format!("artifact {} has no selector {selector_id}", key.digest),
                )
                .into_response(),
                Err(e) => e.into_response(),
            }
        }
        ArtifactOp::Rollout { limit, cursor } => {
            // Hosts are listed only where the caller may read them.
            let caller = req.extensions().get::<crate::http::auth::Caller>();
            let access = Access::new(caller);
            let may_read = |h: &str| HostId::parse(h).is_ok_and(|h| access.host_visible(&h));
            match state
                .fleet
                .rollout(key, limit, cursor.as_deref(), &may_read)
                .await
            {
                Ok(r) => json_ok(StatusCode::OK, &r),
                Err(e) => e.into_response(),
            }
        }
        _ => ArtifactError::Internal("not a fleet operation".into()).into_response(),
    }
}

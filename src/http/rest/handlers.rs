//! One handler per REST endpoint: authorize the parsed endpoint (see
//! `access`), call the artifact or signing service with the resolved
//! value, map the answer.

use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::access::Access;
use super::endpoint::ArtifactOp;
use super::response::{
    json_ok, respond, ArtifactList, HostAdded, HostBody, HostList, SignatureList, VerifyAnswer,
};
use crate::artifacts::limits::MAX_HOST_BODY_BYTES;
use crate::artifacts::{ArtifactError, ArtifactKey, CreateArtifact, HostId, Limit, ListQuery};
use crate::http::error::{RestError, RestErrorCode};
use crate::http::{blob_response, read_body_capped, AppState, BodyReadError};
use crate::oci::media;
use crate::registry::ByteRange;

pub(super) fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("application/json")
        })
        .unwrap_or(false)
}

/// A refusal, after draining the request body.
pub async fn refuse(req: Request, r: Response) -> Response {
    crate::http::auth::drain(req.into_body()).await;
    r
}

/// `GET /artifacts`
pub async fn list(state: &AppState, access: Access<'_>, query: &ListQuery) -> Response {
    let (artifacts, next_cursor) = match state.artifacts.list(query, &|r| access.visible(r)).await {
        Ok(found) => found,
        Err(e) => return e.into_response(),
    };
    json_ok(
        StatusCode::OK,
        &ArtifactList {
            artifacts,
            next_cursor,
        },
    )
}

/// `POST /artifacts`: a share of the create memory budget is taken for
/// the declared body, the body is parsed once, push is checked on the
/// repository the parsed request writes, and that request is what the
/// service decodes and stores.
pub async fn create(state: &AppState, access: Access<'_>, req: Request) -> Response {
    if !is_json(req.headers()) {
        return refuse(req, ArtifactError::UnsupportedMediaType.into_response()).await;
    }
    let svc = state.artifacts.clone();
    let max = svc.max_artifact_bytes();
    let declared = http_body::Body::size_hint(req.body()).exact();
    if declared.is_some_and(|n| n > svc.max_body_bytes()) {
        return ArtifactError::TooLarge { max }.into_response();
    }
    let memory = match svc.reserve_create_memory(declared).await {
        Ok(m) => m,
        Err(e) => return refuse(req, e.into_response()).await,
    };
    let body = match read_body_capped(req.into_body(), svc.max_body_bytes()).await {
        Ok(b) => b,
        Err(BodyReadError::TooLarge) => return ArtifactError::TooLarge { max }.into_response(),
        Err(BodyReadError::Broken(m)) => {
            return ArtifactError::InvalidRequest(format!("body could not be read: {m}"))
                .into_response()
        }
    };
    let request = match CreateArtifact::parse(body, max) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    if let Err(r) = access.check_push(request.repository()) {
        return r.into_response();
    }
    match svc.create(request, memory).await {
        Ok(c) => {
            let status = if c.created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            let location = format!("/artifacts/{}", c.value.id);
            let mut r = json_ok(status, &c.value);
            if let Ok(v) = HeaderValue::from_str(&location) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            r
        }
        Err(e) => e.into_response(),
    }
}

/// `/artifacts/{id}[/...]` on the copy the id resolved to.
pub async fn artifact(
    state: &AppState,
    key: &ArtifactKey,
    op: ArtifactOp,
    req: Request,
) -> Response {
    let svc = &state.artifacts;
    match op {
        ArtifactOp::Get => respond(StatusCode::OK, svc.get(key).await),
        ArtifactOp::Delete => match svc.delete(key).await {
            Ok(()) => StatusCode::NO_CONTENT.into_response(),
            Err(e) => e.into_response(),
        },
        ArtifactOp::Binary => binary(state, key, req.headers()).await,
        ArtifactOp::Hosts => respond(
            StatusCode::OK,
            svc.hosts(key).await.map(|hosts| HostList {
                id: key.digest.to_string(),
                repository: key.repo.to_string(),
                hosts,
            }),
        ),
        ArtifactOp::AddHost => add_host(state, key, req).await,
        op @ (ArtifactOp::Selectors
        | ArtifactOp::AddSelector
        | ArtifactOp::RemoveSelector { .. }
        | ArtifactOp::Rollout { .. }) => {
            super::fleet_handlers::selectors(state, key, op, req).await
        }
        ArtifactOp::RemoveHost { host } => match svc.remove_host(key, &host).await {
            Ok(()) => StatusCode::NO_CONTENT.into_response(),
            Err(e) => e.into_response(),
        },
        ArtifactOp::Signatures => {
            let r = state
                .signing
                .signatures(&key.repo, &key.digest)
                .await
                .map(|signatures| SignatureList {
                    id: key.digest.to_string(),
                    repository: key.repo.to_string(),
                    signatures,
                })
                .map_err(ArtifactError::from);
            respond(StatusCode::OK, r)
        }
        ArtifactOp::Verify => {
            let r = state
                .signing
                .verify(&key.repo, &key.digest)
                .await
                .map(|verification| VerifyAnswer {
                    id: key.digest.to_string(),
                    repository: key.repo.to_string(),
                    verification,
                })
                .map_err(ArtifactError::from);
            respond(StatusCode::OK, r)
        }
    }
}

/// `GET /artifacts/{id}/binary`, with `If-None-Match` and `Range`.
async fn binary(state: &AppState, key: &ArtifactKey, headers: &HeaderMap) -> Response {
    let svc = &state.artifacts;
    let etag = match svc.binary_etag(key).await {
        Ok(d) => format!("\"{d}\""),
        Err(e) => return e.into_response(),
    };
    let not_modified = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    if not_modified {
        let mut r = StatusCode::NOT_MODIFIED.into_response();
        if let Ok(v) = HeaderValue::from_str(&etag) {
            r.headers_mut().insert(header::ETAG, v);
        }
        return r;
    }
    let range = match headers.get(header::RANGE) {
        None => None,
        // A range RFC 9110 says to ignore is `Ok(None)`: the whole file.
        Some(v) => match v.to_str().ok().map(ByteRange::parse) {
            Some(Ok(r)) => r,
            _ => {
                return ArtifactError::InvalidRequest(
                    "malformed Range: expected bytes=<start>-<end>".into(),
                )
                .into_response()
            }
        },
    };
    match svc.binary(key, range).await {
        Ok((blob, digest, filename)) => {
            let mut r = blob_response(blob, &digest, media::OCI_LAYER_TAR_ZSTD);
            if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{filename}\"")) {
                r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
            }
            r
        }
        Err(e) => e.into_response(),
    }
}

/// `POST /artifacts/{id}/hosts` with `{"host_id": "..."}`
async fn add_host(state: &AppState, key: &ArtifactKey, req: Request) -> Response {
    if !is_json(req.headers()) {
        return refuse(req, ArtifactError::UnsupportedMediaType.into_response()).await;
    }
    let body = match read_body_capped(req.into_body(), MAX_HOST_BODY_BYTES).await {
        Ok(b) => b,
        Err(BodyReadError::TooLarge) => {
            return Limit::HostBody
                .refusal(MAX_HOST_BODY_BYTES, None)
                .into_response()
        }
        Err(BodyReadError::Broken(m)) => {
            return ArtifactError::InvalidRequest(format!("body could not be read: {m}"))
                .into_response()
        }
    };
    let (host, channel) = match serde_json::from_slice::<HostBody>(&body) {
        Ok(HostBody {
            host_id: Some(h),
            channel,
        }) => (h, channel),
        Ok(_) => {
            return ArtifactError::InvalidRequest("host_id is required".into()).into_response()
        }
        Err(e) => return ArtifactError::InvalidJson(e.to_string()).into_response(),
    };
    let host = match HostId::parse(&host) {
        Ok(h) => h,
        Err(e) => return e.into_response(),
    };
    let channel = match channel
        .map(|c| crate::oci::Tag::parse(&c).map_err(|e| (c, e)))
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
    match state.artifacts.add_host(key, &host, channel.as_ref()).await {
        Ok(c) => {
            let status = if c.created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            json_ok(
                status,
                &HostAdded {
                    id: key.digest.to_string(),
                    repository: key.repo.to_string(),
                    host_id: host.as_str().to_string(),
                    hosts: c.value,
                },
            )
        }
        Err(e) => e.into_response(),
    }
}

/// `GET /signing/public-key[?version=N]`: the PEM public key (default:
/// the latest version), for `cosign verify --key` or `openssl`.
pub async fn public_key(state: &AppState, version: Option<u32>) -> Response {
    match state.signing.public_key(version).await {
        Ok((keys, v)) => {
            let pem = keys
                .versions
                .get(&v)
                .map(|k| k.to_pem())
                .unwrap_or_default();
            let mut r = (StatusCode::OK, pem).into_response();
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-pem-file"),
            );
            for (name, value) in [
                ("x-signing-key-id", keys.key_id.clone()),
                ("x-signing-key-version", v.to_string()),
                ("x-signing-algorithm", keys.algorithm.as_str().to_string()),
            ] {
                if let Ok(value) = HeaderValue::from_str(&value) {
                    h.insert(name, value);
                }
            }
            r
        }
        // No signer, no key: the key is not found (not a failure).
        Err(e @ crate::signing::SigningError::Disabled) => {
            RestError::new(RestErrorCode::NotFound, e.to_string()).into_response()
        }
        Err(crate::signing::SigningError::NotFound(m)) => {
            RestError::new(RestErrorCode::NotFound, m).into_response()
        }
        Err(e) => ArtifactError::from(e).into_response(),
    }
}

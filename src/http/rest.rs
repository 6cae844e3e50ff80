//! The REST facade of the original service (`/artifacts...`): parse,
//! call the artifact service, map the answer. Errors are
//! `{"error":"<code>","message":"..."}` with the status of
//! `ArtifactError::status`.

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde_json::json;

use super::{
    auth, blob_response, json_response, read_body_capped, AppState, BodyReadError, RouteName,
};
use crate::artifacts::{ArtifactError, ListQuery};
use crate::auth::Action;
use crate::oci::media;
use crate::registry::ByteRange;

impl IntoResponse for ArtifactError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let message = if status.is_server_error() {
            tracing::error!(error = %self, "rest request failed");
            match self.code() {
                "storage_full" => "the registry's storage is full".to_string(),
                "signing_unavailable" => {
                    "the artifact could not be signed (the signer is unavailable); nothing was stored, retry later"
                        .to_string()
                }
                _ => "internal error".to_string(),
            }
        } else {
            self.to_string()
        };
        let mut r = json_response(status, &json!({ "error": self.code(), "message": message }));
        // A 416 says how long the file is (RFC 9110 §15.5.17).
        if let ArtifactError::Registry(crate::registry::RegistryError::RangeNotSatisfiable {
            total,
        }) = self
        {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{total}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
        }
        r
    }
}

fn named(route: &'static str, mut r: Response) -> Response {
    r.extensions_mut().insert(RouteName(route));
    r
}

fn respond<T: serde::Serialize>(
    route: &'static str,
    status: StatusCode,
    r: Result<T, ArtifactError>,
) -> Response {
    named(
        route,
        match r {
            // Serialized straight to bytes: no intermediate `Value` tree.
            Ok(v) => match serde_json::to_vec(&v) {
                Ok(body) => {
                    let mut r = (status, body).into_response();
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                    r
                }
                Err(e) => ArtifactError::Internal(format!("response not serializable: {e}"))
                    .into_response(),
            },
            Err(e) => e.into_response(),
        },
    )
}

#[derive(serde::Serialize)]
struct ArtifactList {
    artifacts: Vec<crate::artifacts::ArtifactJson>,
    next_cursor: Option<String>,
}

#[derive(serde::Serialize)]
struct ForHost<'a> {
    host_id: &'a str,
    artifacts: Vec<crate::artifacts::ArtifactJson>,
}

fn is_json(headers: &HeaderMap) -> bool {
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

/// `POST /artifacts`
pub async fn create(State(state): State<AppState>, req: Request) -> Response {
    const ROUTE: &str = "rest.artifacts.create";
    if !is_json(req.headers()) {
        return named(ROUTE, ArtifactError::UnsupportedMediaType.into_response());
    }
    let caller = req.extensions().get::<auth::Caller>().cloned();
    let svc = state.artifacts.clone();
    let body = match read_body_capped(req.into_body(), svc.max_body_bytes()).await {
        Ok(b) => b,
        Err(BodyReadError::TooLarge) => {
            return named(
                ROUTE,
                ArtifactError::TooLarge {
                    max: state.config.max_artifact_bytes,
                }
                .into_response(),
            )
        }
        Err(BodyReadError::Broken(m)) => {
            return named(
                ROUTE,
                ArtifactError::InvalidRequest(format!("body could not be read: {m}"))
                    .into_response(),
            )
        }
    };
    // Push is needed on the repository the body names.
    if let (Some(caller), Some(repo)) = (&caller, auth::requested_repository(&body)) {
        if !caller.may(&repo, Action::Push) {
            return named(ROUTE, caller.refuse_rest(&repo, Action::Push));
        }
    }
    match svc.create(body).await {
        Ok(c) => {
            let status = if c.created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            let location = format!("/artifacts/{}", c.value.id);
            let mut r = respond(ROUTE, status, Ok::<_, ArtifactError>(c.value));
            if let Ok(v) = HeaderValue::from_str(&location) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            r
        }
        Err(e) => named(ROUTE, e.into_response()),
    }
}

/// `GET /artifacts`
pub async fn list(
    State(state): State<AppState>,
    caller: Option<Extension<auth::Caller>>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    const ROUTE: &str = "rest.artifacts.list";
    let q = match q {
        Ok(Query(q)) => q,
        Err(e) => {
            return named(
                ROUTE,
                ArtifactError::InvalidRequest(e.body_text()).into_response(),
            )
        }
    };
    let caller = caller.map(|Extension(c)| c);
    let r = state
        .artifacts
        .list_visible(&q, &|repo| auth::visible(caller.as_ref(), repo))
        .map(|(artifacts, next_cursor)| ArtifactList {
            artifacts,
            next_cursor,
        });
    respond(ROUTE, StatusCode::OK, r)
}

/// `GET /artifacts/{id}`
pub async fn get(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    respond(
        "rest.artifacts.get",
        StatusCode::OK,
        state.artifacts.get(&id),
    )
}

/// `DELETE /artifacts/{id}`
pub async fn delete(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    named(
        "rest.artifacts.delete",
        match state.artifacts.delete(&id).await {
            Ok(()) => StatusCode::NO_CONTENT.into_response(),
            Err(e) => e.into_response(),
        },
    )
}

/// `GET /artifacts/{id}/binary`
pub async fn binary(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    const ROUTE: &str = "rest.artifacts.binary";
    let svc = &state.artifacts;
    let etag = match svc.binary_etag(&id) {
        Ok(d) => format!("\"{d}\""),
        Err(e) => return named(ROUTE, e.into_response()),
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
        return named(ROUTE, r);
    }
    let range = match headers.get(header::RANGE) {
        None => None,
        // A range RFC 9110 says to ignore is `Ok(None)`: the whole file.
        Some(v) => match v.to_str().ok().map(ByteRange::parse) {
            Some(Ok(r)) => r,
            _ => {
                return named(
                    ROUTE,
                    ArtifactError::InvalidRequest(
                        "malformed Range: expected bytes=<start>-<end>".into(),
                    )
                    .into_response(),
                )
            }
        },
    };
    match svc.binary(&id, range).await {
        Ok((blob, digest, filename)) => {
            let mut r = blob_response(blob, &digest, media::OCI_LAYER_TAR_ZSTD);
            if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{filename}\"")) {
                r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
            }
            named(ROUTE, r)
        }
        Err(e) => named(ROUTE, e.into_response()),
    }
}

#[derive(serde::Deserialize)]
struct HostBody {
    host_id: Option<String>,
}

/// `POST /artifacts/{id}/hosts` with `{"host_id": "..."}`
pub async fn add_host(
    State(state): State<AppState>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    const ROUTE: &str = "rest.hosts.add";
    if !is_json(req.headers()) {
        return named(ROUTE, ArtifactError::UnsupportedMediaType.into_response());
    }
    let body = match read_body_capped(req.into_body(), 64 * 1024).await {
        Ok(b) => b,
        Err(_) => {
            return named(
                ROUTE,
                ArtifactError::InvalidRequest("body over 64 KiB or unreadable".into())
                    .into_response(),
            )
        }
    };
    let host = match serde_json::from_slice::<HostBody>(&body) {
        Ok(HostBody { host_id: Some(h) }) => h,
        Ok(_) => {
            return named(
                ROUTE,
                ArtifactError::InvalidRequest("host_id is required".into()).into_response(),
            )
        }
        Err(e) => {
            return named(
                ROUTE,
                ArtifactError::InvalidJson(e.to_string()).into_response(),
            )
        }
    };
    match state.artifacts.add_host(&id, &host).await {
        Ok(c) => {
            let status = if c.created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            respond(
                ROUTE,
                status,
                Ok::<_, ArtifactError>(json!({ "id": id, "host_id": host, "hosts": c.value })),
            )
        }
        Err(e) => named(ROUTE, e.into_response()),
    }
}

/// `DELETE /artifacts/{id}/hosts/{host_id}`
pub async fn remove_host(
    State(state): State<AppState>,
    Path((id, host)): Path<(String, String)>,
) -> Response {
    named(
        "rest.hosts.remove",
        match state.artifacts.remove_host(&id, &host).await {
            Ok(()) => StatusCode::NO_CONTENT.into_response(),
            Err(e) => e.into_response(),
        },
    )
}

/// `GET /artifacts/{id}/hosts`
pub async fn hosts(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let r = state
        .artifacts
        .hosts(&id)
        .map(|h| json!({ "id": id, "hosts": h }));
    respond("rest.hosts.list", StatusCode::OK, r)
}

/// `GET /artifacts/for-host/{host_id}`
pub async fn for_host(
    State(state): State<AppState>,
    caller: Option<Extension<auth::Caller>>,
    Path(host): Path<String>,
) -> Response {
    let caller = caller.map(|Extension(c)| c);
    let r = state
        .artifacts
        .for_host_visible(&host, &|repo| auth::visible(caller.as_ref(), repo))
        .map(|artifacts| ForHost {
            host_id: &host,
            artifacts,
        });
    respond("rest.for_host", StatusCode::OK, r)
}

/// `GET /artifacts/{id}/signatures`: every stored signature of the artifact.
pub async fn signatures(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    const ROUTE: &str = "rest.signatures.list";
    let (repo, digest) = match state.artifacts.locate(&id) {
        Ok(x) => x,
        Err(e) => return named(ROUTE, e.into_response()),
    };
    let r = state
        .signing
        .signatures(&repo, &digest)
        .await
        .map(|s| json!({ "id": digest.to_string(), "signatures": s }))
        .map_err(ArtifactError::from);
    respond(ROUTE, StatusCode::OK, r)
}

/// `GET /artifacts/{id}/verify`: each signature checked against every
/// version of the configured key.
pub async fn verify(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    const ROUTE: &str = "rest.signatures.verify";
    let (repo, digest) = match state.artifacts.locate(&id) {
        Ok(x) => x,
        Err(e) => return named(ROUTE, e.into_response()),
    };
    let r = state
        .signing
        .verify(&repo, &digest)
        .await
        .map(|v| {
            json!({
                "id": digest.to_string(),
                "verified": v.verified,
                "key_id": v.key_id,
                "signatures": v.signatures,
            })
        })
        .map_err(ArtifactError::from);
    respond(ROUTE, StatusCode::OK, r)
}

#[derive(serde::Deserialize)]
pub struct KeyQuery {
    version: Option<String>,
}

/// `GET /signing/public-key[?version=N]`: the PEM public key (default:
/// the latest version), for `cosign verify --key` or `openssl`.
pub async fn public_key(
    State(state): State<AppState>,
    q: Result<Query<KeyQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    const ROUTE: &str = "rest.signing.public_key";
    let version = match q.map(|Query(q)| q.version) {
        Ok(None) => None,
        Ok(Some(v)) => match v.parse::<u32>() {
            Ok(n) => Some(n),
            Err(_) => {
                return named(
                    ROUTE,
                    ArtifactError::InvalidRequest(format!(
                        "invalid version {:?}: expected a key version number",
                        v.chars().take(40).collect::<String>()
                    ))
                    .into_response(),
                )
            }
        },
        Err(e) => {
            return named(
                ROUTE,
                ArtifactError::InvalidRequest(e.body_text()).into_response(),
            )
        }
    };
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
            named(ROUTE, r)
        }
        Err(crate::signing::SigningError::Disabled) => named(
            ROUTE,
            json_response(
                StatusCode::NOT_FOUND,
                &json!({
                    "error": "not_found",
                    "message": "signing is not configured on this registry (BPF_REGISTRY_SIGNER=none)"
                }),
            ),
        ),
        Err(crate::signing::SigningError::NotFound(m)) => named(
            ROUTE,
            json_response(
                StatusCode::NOT_FOUND,
                &json!({ "error": "not_found", "message": m }),
            ),
        ),
        Err(e) => named(ROUTE, ArtifactError::from(e).into_response()),
    }
}

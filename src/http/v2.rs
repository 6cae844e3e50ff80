//! Handlers of the OCI distribution API: take the `Endpoint` that
//! [`super::endpoint::layer`] parsed (and the auth middleware authorized) from the
//! request extensions, call the registry service, map the answer to
//! headers. Nothing here reads the path or the query again.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::TryStreamExt;
use serde_json::json;

use super::auth::{self, Caller};
use super::endpoint::{Endpoint, Mount, Parsed};
use super::error::{OciError, OciErrorCode};
use super::{json_response, read_body_capped, AppState, RouteName};
use crate::auth::Action;
use crate::oci::{media, Digest, RepoName};
use crate::registry::{ByteRange, Page, UploadStatus};
use crate::storage::UploadId;

pub const API_VERSION_HEADER: &str = "docker-distribution-api-version";
pub const DIGEST_HEADER: &str = "docker-content-digest";

/// The single entry point for `/v2` and everything below it. Works with
/// authentication off too: the parse layer runs on every `/v2` request.
pub async fn dispatch(State(state): State<AppState>, mut req: Request) -> Response {
    let endpoint = match req.extensions_mut().remove::<Parsed>() {
        Some(Parsed(Ok(e))) => e,
        Some(Parsed(Err(e))) => return e.into_response(),
        None => {
            let e = OciError::new(
                OciErrorCode::Unknown,
                "a /v2 request reached its handler unparsed",
            );
            return e.into_response();
        }
    };
    let route = endpoint.route();
    let mut resp = match handle(state, endpoint, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    resp.extensions_mut().insert(RouteName(route));
    with_api_version(resp)
}

fn with_api_version(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(API_VERSION_HEADER, HeaderValue::from_static("registry/2.0"));
    resp
}

fn hv(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// A request's body as a stream, with its length when the transport
/// enforces one (`Content-Length`).
fn body_stream(
    req: Request,
) -> (
    Option<u64>,
    impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Unpin + Send,
) {
    let len = http_body::Body::size_hint(req.body()).exact();
    let stream = req
        .into_body()
        .into_data_stream()
        .map_err(std::io::Error::other);
    (len, stream)
}

/// Where an upload session is: its `Location`.
fn upload_location(name: &RepoName, id: &UploadId) -> String {
    format!("/v2/{name}/blobs/uploads/{id}")
}

fn upload_accepted(
    reg: &crate::registry::Registry,
    name: &RepoName,
    status: &UploadStatus,
    code: StatusCode,
) -> Response {
    let range = format!("0-{}", status.offset.saturating_sub(1));
    let mut r = (code, Body::empty()).into_response();
    let h = r.headers_mut();
    if let Some(min) = reg.backend().chunk_min_length() {
        h.insert("oci-chunk-min-length", hv(&min.to_string()));
    }
    h.insert(header::LOCATION, hv(&upload_location(name, &status.id)));
    h.insert(header::RANGE, hv(&range));
    h.insert("docker-upload-uuid", hv(status.id.as_str()));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    r
}

fn blob_created(name: &RepoName, digest: &Digest) -> Response {
    let mut r = (StatusCode::CREATED, Body::empty()).into_response();
    let h = r.headers_mut();
    h.insert(header::LOCATION, hv(&format!("/v2/{name}/blobs/{digest}")));
    h.insert(DIGEST_HEADER, hv(&digest.to_string()));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    r
}

fn link_header(resp: &mut Response, base: &str, page: &Page, n: Option<usize>) {
    if let (Some(last), Some(n)) = (&page.next_last, n) {
        let last_enc =
            percent_encoding::utf8_percent_encode(last, percent_encoding::NON_ALPHANUMERIC);
        resp.headers_mut().insert(
            header::LINK,
            hv(&format!("<{base}?n={n}&last={last_enc}>; rel=\"next\"")),
        );
    }
}

/// `Content-Range: <start>-<end>` (optionally `bytes ` prefixed).
fn parse_content_range(h: &HeaderMap) -> Result<Option<(u64, u64)>, OciError> {
    let Some(v) = h.get(header::CONTENT_RANGE) else {
        return Ok(None);
    };
    let bad = || {
        OciError::new(
            OciErrorCode::RangeInvalid,
            "malformed Content-Range: expected <start>-<end>",
        )
    };
    let s = v.to_str().map_err(|_| bad())?.trim();
    let s = s.strip_prefix("bytes ").unwrap_or(s);
    let s = s.split('/').next().unwrap_or(s);
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let (a, b): (u64, u64) = (
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    );
    // `end` is inclusive: the chunk's length `end - start + 1` must fit a u64.
    if b < a || b.checked_sub(a).and_then(|d| d.checked_add(1)).is_none() {
        return Err(bad());
    }
    Ok(Some((a, b)))
}

/// Whether the caller may pull `repo` (everyone may when authentication
/// is off): the sources an automatic mount may copy from.
fn may_pull(caller: Option<&Caller>, repo: &RepoName) -> bool {
    caller.is_none_or(|c| c.may(repo, Action::Pull))
}

/// `POST .../blobs/uploads/?mount=`: links the blob from `from`, or, when
/// no `from` was given, from the first repository the caller may pull
/// that holds it. `false` when there is nothing to mount (the caller then
/// gets an upload session, exactly as for a digest stored nowhere).
async fn try_mount(
    reg: &crate::registry::Registry,
    caller: Option<&Caller>,
    name: &RepoName,
    mount: &Mount,
    automatic: bool,
) -> Result<bool, OciError> {
    let from = match &mount.from {
        // Authorized by the middleware (which drops a mount it refuses).
        Some(from) => from.clone(),
        // `BPF_REGISTRY_AUTOMATIC_MOUNT=off`: no discovery, a session.
        None if !automatic => return Ok(false),
        None => match reg
            .find_blob_holder(&mount.digest, |r| may_pull(caller, r))
            .await?
        {
            Some(holder) => holder,
            None => return Ok(false),
        },
    };
    Ok(reg.mount_blob(name, &from, &mount.digest).await?)
}

/// The `Accept` header(s) as a list of media ranges (with parameters).
fn accept_list(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_string()))
        .filter(|s| !s.is_empty())
        .collect()
}

/// A `Range` header: `None` for the whole blob (absent, or a range RFC 9110
/// says to ignore), 416 for one that is not a ranges-specifier.
fn requested_range(headers: &HeaderMap) -> Result<Option<ByteRange>, OciError> {
    let Some(v) = headers.get(header::RANGE) else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .and_then(|v| ByteRange::parse(v).ok())
        .ok_or_else(|| {
            OciError::new(
                OciErrorCode::RangeInvalid,
                "malformed Range: expected bytes=<start>-<end>",
            )
        })
}

async fn handle(state: AppState, endpoint: Endpoint, req: Request) -> Result<Response, OciError> {
    let reg = state.registry.clone();
    let caller = req.extensions().get::<Caller>().cloned();
    match endpoint {
        Endpoint::Base => Ok(json_response(StatusCode::OK, &json!({}))),
        Endpoint::Catalog { n, last } => {
            let visible = |r: &RepoName| auth::visible(caller.as_ref(), r);
            let page = reg.catalog(n, last.as_deref(), visible).await?;
            let mut r = json_response(StatusCode::OK, &json!({ "repositories": page.items }));
            link_header(&mut r, "/v2/_catalog", &page, n);
            Ok(r)
        }
        Endpoint::ListTags { name, n, last } => {
            let page = reg.list_tags(&name, n, last.as_deref()).await?;
            let mut r = json_response(
                StatusCode::OK,
                &json!({ "name": name.as_str(), "tags": page.items }),
            );
            link_header(&mut r, &format!("/v2/{name}/tags/list"), &page, n);
            Ok(r)
        }
        Endpoint::GetManifest {
            name,
            reference,
            head,
        } => {
            let accept = accept_list(req.headers());
            let m = reg.get_manifest(&name, &reference, &accept).await?;
            let len = m.bytes.len();
            let body = if head {
                Body::empty()
            } else {
                Body::from(m.bytes)
            };
            let mut r = (StatusCode::OK, body).into_response();
            let h = r.headers_mut();
            h.insert(header::CONTENT_TYPE, hv(&m.media_type));
            h.insert(header::CONTENT_LENGTH, hv(&len.to_string()));
            h.insert(DIGEST_HEADER, hv(&m.digest.to_string()));
            h.insert(header::ETAG, hv(&format!("\"{}\"", m.digest)));
            Ok(r)
        }
        Endpoint::UnknownManifest {
            name, reference, ..
        } => Err(OciError::new(
            OciErrorCode::ManifestUnknown,
            format!("manifest {reference:?} is not known to {name}: it is not a valid tag"),
        )),
        Endpoint::PutManifest { name, reference } => {
            let content_type = req
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let max = reg.limits().max_manifest_bytes;
            let body = read_body_capped(req.into_body(), max)
                .await
                .map_err(|e| OciError::of_body(e, OciErrorCode::ManifestTooLarge, max))?;
            // eBPF artifact manifests are signed before they are stored;
            // a signer that fails stores nothing: 503 UNAVAILABLE.
            let stored = state
                .signing
                .put_manifest(&name, &reference, content_type.as_deref(), body)
                .await?;
            let mut r = (StatusCode::CREATED, Body::empty()).into_response();
            let h = r.headers_mut();
            h.insert(
                header::LOCATION,
                hv(&format!("/v2/{name}/manifests/{}", stored.digest)),
            );
            h.insert(DIGEST_HEADER, hv(&stored.digest.to_string()));
            h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
            if let Some(subject) = &stored.manifest.subject {
                h.insert("oci-subject", hv(&subject.digest.to_string()));
            }
            Ok(r)
        }
        Endpoint::DeleteManifest { name, reference } => {
            reg.delete_manifest(&name, &reference).await?;
            Ok((StatusCode::ACCEPTED, Body::empty()).into_response())
        }
        Endpoint::GetBlob { name, digest, head } => {
            if head {
                let size = reg.blob_size(&name, &digest).await?.ok_or_else(|| {
                    OciError::new(
                        OciErrorCode::BlobUnknown,
                        format!("blob {digest} is not in {name}"),
                    )
                })?;
                let mut r = (StatusCode::OK, Body::empty()).into_response();
                let h = r.headers_mut();
                h.insert(header::CONTENT_LENGTH, hv(&size.to_string()));
                h.insert(DIGEST_HEADER, hv(&digest.to_string()));
                h.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
                return Ok(r);
            }
            // A HEAD ignores `Range`; only a GET reads it.
            let range = requested_range(req.headers())?;
            // A range outside the blob is a 416 with `Content-Range`.
            let blob = reg.read_blob(&name, &digest, range).await?;
            Ok(super::blob_response(
                blob,
                &digest,
                "application/octet-stream",
            ))
        }
        Endpoint::DeleteBlob { name, digest } => {
            reg.delete_blob(&name, &digest).await?;
            Ok((StatusCode::ACCEPTED, Body::empty()).into_response())
        }
        Endpoint::StartUpload {
            name,
            digest,
            mount,
        } => {
            if let Some(mount) = &mount {
                let automatic = state.config.automatic_mount;
                if try_mount(&reg, caller.as_ref(), &name, mount, automatic).await? {
                    return Ok(blob_created(&name, &mount.digest));
                }
            }
            if let Some(digest) = digest {
                let (len, stream) = body_stream(req);
                let d = reg.upload_monolithic(&name, &digest, len, stream).await?;
                return Ok(blob_created(&name, &d));
            }
            let owner = super::auth::Caller::principal_of(&req);
            let status = reg.start_upload(&name, &owner).await?;
            Ok(upload_accepted(&reg, &name, &status, StatusCode::ACCEPTED))
        }
        Endpoint::GetUpload { name, id } => {
            let status = reg.upload_status(&name, &id).await?;
            Ok(upload_accepted(
                &reg,
                &name,
                &status,
                StatusCode::NO_CONTENT,
            ))
        }
        Endpoint::PatchUpload { name, id } => {
            let range = parse_content_range(req.headers())?;
            let (start, expected) = match range {
                Some((a, b)) => (Some(a), b.checked_sub(a).and_then(|d| d.checked_add(1))),
                None => (None, None),
            };
            let (len, stream) = body_stream(req);
            // A chunk out of order is a 416 saying where the upload is.
            let status = reg
                .append_chunk(&name, &id, start, expected, len, stream)
                .await
                .map_err(|e| OciError::of_upload(e, upload_location(&name, &id)))?;
            Ok(upload_accepted(&reg, &name, &status, StatusCode::ACCEPTED))
        }
        Endpoint::PutUpload { name, id, digest } => {
            let range = parse_content_range(req.headers())?;
            let (len, stream) = body_stream(req);
            let d = reg
                .finish_upload(&name, &id, &digest, range, len, stream)
                .await
                .map_err(|e| OciError::of_upload(e, upload_location(&name, &id)))?;
            Ok(blob_created(&name, &d))
        }
        Endpoint::DeleteUpload { name, id } => {
            reg.cancel_upload(&name, &id).await?;
            Ok((StatusCode::NO_CONTENT, Body::empty()).into_response())
        }
        Endpoint::Referrers {
            name,
            digest,
            artifact_type: filter,
        } => {
            let list = reg.referrers(&name, &digest, filter.as_deref()).await?;
            let index = json!({
                "schemaVersion": 2,
                "mediaType": media::OCI_INDEX,
                "manifests": list,
            });
            let mut r = json_response(StatusCode::OK, &index);
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(media::OCI_INDEX),
            );
            if filter.is_some() {
                r.headers_mut().insert(
                    "oci-filters-applied",
                    HeaderValue::from_static("artifactType"),
                );
            }
            Ok(r)
        }
    }
}

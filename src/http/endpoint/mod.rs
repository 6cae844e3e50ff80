//! Parses `(method, /v2/... path, query)` into a typed `Endpoint`, once per
//! request, and says what access that endpoint needs. OCI names contain
//! `/`, so the path is matched from its end: the last one to three
//! segments say which endpoint it is; everything before them is the name.
//!
//! The query is decoded once, here, and strictly (`query`, the strict
//! decoder): a parameter given twice
//! (known or not) is a 400, so no later reader can pick a different value
//! than the one authorized. Unknown parameters given once are ignored
//! (clients add their own, such as containerd's `ns=`).
//!
//! [`layer`] runs the parser for every `/v2` request and leaves the result
//! in the request extensions ([`Parsed`]); the auth middleware authorizes
//! that value (and may replace it: a mount the caller may not make is
//! dropped) and `v2::dispatch` executes it. Nothing else reads the `/v2`
//! path or query. The layer also leaves the endpoint's route template in
//! the response (for the request metrics).

use axum::extract::Request;
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;

pub mod query;

use crate::auth::{Action, Actions};
use crate::http::error::{OciError, OciErrorCode};
use crate::http::metrics::RouteTemplate;
use crate::oci::{Digest, NameError, Reference, RepoName};
use crate::storage::UploadId;
use query::{percent_decode, Query, QueryError, MAX_PARAMETERS};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Base,
    Catalog {
        n: Option<usize>,
        last: Option<String>,
    },
    ListTags {
        name: RepoName,
        n: Option<usize>,
        last: Option<String>,
    },
    GetManifest {
        name: RepoName,
        reference: Reference,
        head: bool,
    },
    /// GET, HEAD or DELETE of a reference no manifest can have (not a valid
    /// tag, e.g. `.INVALID_MANIFEST_NAME`): authorized like any manifest
    /// request, then 404 `MANIFEST_UNKNOWN`.
    UnknownManifest {
        name: RepoName,
        reference: String,
        lookup: Lookup,
    },
    PutManifest {
        name: RepoName,
        reference: Reference,
    },
    DeleteManifest {
        name: RepoName,
        reference: Reference,
    },
    GetBlob {
        name: RepoName,
        digest: Digest,
        head: bool,
    },
    DeleteBlob {
        name: RepoName,
        digest: Digest,
    },
    /// `POST .../blobs/uploads/[?digest=][&mount=&from=]`.
    StartUpload {
        name: RepoName,
        /// A monolithic upload: the body is the blob.
        digest: Option<Digest>,
        mount: Option<Mount>,
    },
    GetUpload {
        name: RepoName,
        id: UploadId,
    },
    PatchUpload {
        name: RepoName,
        id: UploadId,
    },
    PutUpload {
        name: RepoName,
        id: UploadId,
        digest: Digest,
    },
    DeleteUpload {
        name: RepoName,
        id: UploadId,
    },
    Referrers {
        name: RepoName,
        digest: Digest,
        artifact_type: Option<String>,
    },
}

/// A cross-repository mount asked for by `?mount=<digest>[&from=<repo>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub digest: Digest,
    /// The source; `None` asks the registry to find a repository holding
    /// the blob (among those the caller may pull).
    pub from: Option<RepoName>,
}

/// Which request an [`Endpoint::UnknownManifest`] was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    Get,
    Head,
    Delete,
}

/// What one repository-scoped endpoint needs: the action checked on the
/// repository, and the actions offered in a challenge's scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need<'a> {
    pub repo: &'a RepoName,
    pub action: Action,
    pub advertised: Actions,
}

/// The access an endpoint needs (as Garage's `authorization_type()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access<'a> {
    /// `/v2/`: any caller who authenticated.
    Base,
    /// `/v2/_catalog`: the `registry:catalog:*` scope; the answer lists
    /// only the repositories the caller may pull.
    Catalog,
    /// One repository and action. `mount_from` is the source of an explicit
    /// mount, which needs `pull`; without it the mount is dropped (a plain
    /// upload session starts), the request is not refused.
    Repository {
        need: Need<'a>,
        mount_from: Option<&'a RepoName>,
    },
}

impl Endpoint {
    /// A constant name for logs.
    pub fn route(&self) -> &'static str {
        match self {
            Endpoint::Base => "v2.base",
            Endpoint::Catalog { .. } => "v2.catalog",
            Endpoint::ListTags { .. } => "v2.tags.list",
            Endpoint::GetManifest { head: false, .. }
            | Endpoint::UnknownManifest {
                lookup: Lookup::Get,
                ..
            } => "v2.manifest.get",
            Endpoint::GetManifest { head: true, .. }
            | Endpoint::UnknownManifest {
                lookup: Lookup::Head,
                ..
            } => "v2.manifest.head",
            Endpoint::PutManifest { .. } => "v2.manifest.put",
            Endpoint::DeleteManifest { .. }
            | Endpoint::UnknownManifest {
                lookup: Lookup::Delete,
                ..
            } => "v2.manifest.delete",
            Endpoint::GetBlob { head: false, .. } => "v2.blob.get",
            Endpoint::GetBlob { head: true, .. } => "v2.blob.head",
            Endpoint::DeleteBlob { .. } => "v2.blob.delete",
            Endpoint::StartUpload { .. } => "v2.upload.start",
            Endpoint::GetUpload { .. } => "v2.upload.status",
            Endpoint::PatchUpload { .. } => "v2.upload.patch",
            Endpoint::PutUpload { .. } => "v2.upload.put",
            Endpoint::DeleteUpload { .. } => "v2.upload.delete",
            Endpoint::Referrers { .. } => "v2.referrers",
        }
    }

    /// The repository the request is about, if any.
    pub fn repository(&self) -> Option<&RepoName> {
        match self {
            Endpoint::Base | Endpoint::Catalog { .. } => None,
            Endpoint::ListTags { name, .. }
            | Endpoint::GetManifest { name, .. }
            | Endpoint::UnknownManifest { name, .. }
            | Endpoint::PutManifest { name, .. }
            | Endpoint::DeleteManifest { name, .. }
            | Endpoint::GetBlob { name, .. }
            | Endpoint::DeleteBlob { name, .. }
            | Endpoint::StartUpload { name, .. }
            | Endpoint::GetUpload { name, .. }
            | Endpoint::PatchUpload { name, .. }
            | Endpoint::PutUpload { name, .. }
            | Endpoint::DeleteUpload { name, .. }
            | Endpoint::Referrers { name, .. } => Some(name),
        }
    }

    /// The access this endpoint needs: `pull` for reads, `push` for
    /// writes and uploads, `delete` for deletes.
    ///
    /// A blob `HEAD` is how pushes begin (clients check whether a blob is
    /// there before uploading it), and some clients (oras-py) keep the
    /// first token they get for the rest of the push, so its challenge
    /// offers `pull,push`: the token still carries only what the policy
    /// grants.
    pub fn access(&self) -> Access<'_> {
        let pull = Actions::NONE.with(Action::Pull);
        let push = pull.with(Action::Push);
        let delete = Actions::NONE.with(Action::Delete);
        let (repo, action, advertised) = match self {
            Endpoint::Base => return Access::Base,
            Endpoint::Catalog { .. } => return Access::Catalog,
            Endpoint::GetBlob {
                name, head: true, ..
            } => (name, Action::Pull, push),
            Endpoint::ListTags { name, .. }
            | Endpoint::GetManifest { name, .. }
            | Endpoint::UnknownManifest {
                name,
                lookup: Lookup::Get | Lookup::Head,
                ..
            }
            | Endpoint::GetBlob { name, .. }
            | Endpoint::Referrers { name, .. } => (name, Action::Pull, pull),
            Endpoint::PutManifest { name, .. }
            | Endpoint::StartUpload { name, .. }
            | Endpoint::GetUpload { name, .. }
            | Endpoint::PatchUpload { name, .. }
            | Endpoint::PutUpload { name, .. }
            | Endpoint::DeleteUpload { name, .. } => (name, Action::Push, push),
            Endpoint::DeleteManifest { name, .. }
            | Endpoint::UnknownManifest {
                name,
                lookup: Lookup::Delete,
                ..
            }
            | Endpoint::DeleteBlob { name, .. } => (name, Action::Delete, delete),
        };
        let mount_from = match self {
            Endpoint::StartUpload {
                mount: Some(Mount {
                    from: Some(from), ..
                }),
                ..
            } => Some(from),
            _ => None,
        };
        Access::Repository {
            need: Need {
                repo,
                action,
                advertised,
            },
            mount_from,
        }
    }

    /// The same request without its cross-repository mount: what runs
    /// when the caller may not pull the mount's source (distribution's
    /// behaviour: a plain upload session, nothing of the source leaks).
    pub fn without_mount(self) -> Endpoint {
        match self {
            Endpoint::StartUpload { name, digest, .. } => Endpoint::StartUpload {
                name,
                digest,
                mount: None,
            },
            other => other,
        }
    }
}

/// The parse of a `/v2` request, left in its extensions by [`layer`].
#[derive(Debug, Clone)]
pub struct Parsed(pub Result<Endpoint, OciError>);

/// Whether a path belongs to the OCI API.
pub fn is_v2_path(path: &str) -> bool {
    path == "/v2" || path.starts_with("/v2/")
}

/// Parses every `/v2` request once, before authentication, and leaves
/// the result in its extensions.
pub async fn layer(mut req: Request, next: Next) -> Response {
    let uri = req.uri();
    if is_v2_path(uri.path()) {
        let parsed = parse(req.method(), uri.path(), uri.query());
        let template = parsed.as_ref().ok().map(RouteTemplate::of_v2);
        req.extensions_mut().insert(Parsed(parsed));
        let resp = next.run(req).await;
        return match template {
            Some(t) => t.on(resp),
            None => resp,
        };
    }
    next.run(req).await
}

fn unsupported(method: &Method) -> OciError {
    OciError::new(
        OciErrorCode::Unsupported,
        format!("method {method} is not supported here"),
    )
}

fn not_found(path: &str) -> OciError {
    OciError::new(
        OciErrorCode::NameUnknown,
        format!("no such endpoint: {}", short(path)),
    )
    .with_detail(serde_json::json!({ "path": short(path) }))
}

fn short(s: &str) -> String {
    s.chars().take(100).collect()
}

/// The error for a bad query parameter, with the code clients expect for
/// that parameter.
fn param_error(key: &str, problem: &str) -> OciError {
    let code = match key {
        "digest" | "mount" => OciErrorCode::DigestInvalid,
        "from" => OciErrorCode::NameInvalid,
        "n" => OciErrorCode::PaginationNumberInvalid,
        _ => OciErrorCode::ParameterInvalid,
    };
    OciError::new(code, format!("query parameter {:?} {problem}", short(key)))
        .with_detail(serde_json::json!({ "parameter": short(key) }))
}

/// The query of a `/v2` request, decoded strictly (no parameter twice),
/// with the typed values its endpoints read.
struct Params(Query);

impl Params {
    fn parse(raw: Option<&str>) -> Result<Params, OciError> {
        Query::parse(raw, &[]).map(Params).map_err(|e| match e {
            QueryError::BadName => OciError::new(
                OciErrorCode::ParameterInvalid,
                "a query parameter name is not valid percent-encoded UTF-8",
            ),
            QueryError::BadValue { key } => param_error(&key, "is not valid percent-encoded UTF-8"),
            QueryError::Repeated { key } => param_error(&key, "is given more than once"),
            QueryError::TooMany => OciError::new(
                OciErrorCode::ParameterInvalid,
                format!("more than {MAX_PARAMETERS} query parameters"),
            ),
        })
    }

    fn text(&self, key: &str) -> Option<String> {
        self.0.get(key).map(str::to_string)
    }

    fn digest(&self, key: &str) -> Result<Option<Digest>, OciError> {
        self.0
            .get(key)
            .map(|v| Digest::parse(v).map_err(OciError::from))
            .transpose()
    }

    /// `n` of a paginated list.
    fn n(&self) -> Result<Option<usize>, OciError> {
        self.0
            .get("n")
            .map(|v| {
                v.parse::<usize>().map_err(|_| {
                    OciError::new(
                        OciErrorCode::PaginationNumberInvalid,
                        format!("invalid n {:?}: expected a non-negative integer", short(v)),
                    )
                })
            })
            .transpose()
    }

    /// `mount` and `from` of an upload start (`from` alone means nothing).
    fn mount(&self) -> Result<Option<Mount>, OciError> {
        let Some(digest) = self.digest("mount")? else {
            return Ok(None);
        };
        let from = self
            .0
            .get("from")
            .map(|f| RepoName::parse(f).map_err(OciError::from))
            .transpose()?;
        Ok(Some(Mount { digest, from }))
    }
}

/// A manifest reference of a GET, HEAD or DELETE: a reference that cannot
/// be a tag names no manifest (404, as the conformance suite expects); a
/// malformed digest stays `DIGEST_INVALID`.
fn lookup_reference(
    name: RepoName,
    raw: &str,
    lookup: Lookup,
) -> Result<Result<(RepoName, Reference), Endpoint>, OciError> {
    match Reference::parse(raw) {
        Ok(r) => Ok(Ok((name, r))),
        Err(NameError::InvalidTag(_)) => Ok(Err(Endpoint::UnknownManifest {
            name,
            reference: raw.chars().take(200).collect(),
            lookup,
        })),
        Err(e) => Err(e.into()),
    }
}

/// Parses a request. `path` is the raw URI path, starting with `/v2`;
/// `query` the raw query string, if any.
pub fn parse(method: &Method, path: &str, query: Option<&str>) -> Result<Endpoint, OciError> {
    let decoded = percent_decode(path).ok_or_else(|| {
        OciError::new(
            OciErrorCode::NameInvalid,
            "path is not valid percent-encoded UTF-8",
        )
    })?;
    let Some(rest) = decoded.strip_prefix("/v2") else {
        return Err(not_found(path));
    };
    let rest = rest.strip_prefix('/').unwrap_or(rest);
    let q = Params::parse(query)?;
    if rest.is_empty() {
        return match *method {
            Method::GET | Method::HEAD => Ok(Endpoint::Base),
            _ => Err(unsupported(method)),
        };
    }
    if rest == "_catalog" {
        return match *method {
            Method::GET => Ok(Endpoint::Catalog {
                n: q.n()?,
                last: q.text("last"),
            }),
            _ => Err(unsupported(method)),
        };
    }
    let segs: Vec<&str> = rest.split('/').collect();
    let n = segs.len();
    let seg = |i: usize| -> &str {
        n.checked_sub(i)
            .and_then(|k| segs.get(k))
            .copied()
            .unwrap_or("")
    };
    let name_of = |drop: usize| -> Result<RepoName, OciError> {
        let parts = segs.get(..n.saturating_sub(drop)).unwrap_or_default();
        Ok(RepoName::parse(&parts.join("/"))?)
    };
    let m = method;
    if n >= 3 && seg(2) == "tags" && seg(1) == "list" {
        let name = name_of(2)?;
        return match *m {
            Method::GET => Ok(Endpoint::ListTags {
                name,
                n: q.n()?,
                last: q.text("last"),
            }),
            _ => Err(unsupported(m)),
        };
    }
    if n >= 3 && seg(2) == "manifests" {
        let name = name_of(2)?;
        let raw = seg(1);
        let lookup = match *m {
            Method::GET => Lookup::Get,
            Method::HEAD => Lookup::Head,
            Method::DELETE => Lookup::Delete,
            Method::PUT => {
                let reference = Reference::parse(raw)?;
                return Ok(Endpoint::PutManifest { name, reference });
            }
            _ => return Err(unsupported(m)),
        };
        let (name, reference) = match lookup_reference(name, raw, lookup)? {
            Ok(valid) => valid,
            Err(unknown) => return Ok(unknown),
        };
        return Ok(match lookup {
            Lookup::Get | Lookup::Head => Endpoint::GetManifest {
                name,
                reference,
                head: lookup == Lookup::Head,
            },
            Lookup::Delete => Endpoint::DeleteManifest { name, reference },
        });
    }
    // `<name>/blobs/uploads` or `<name>/blobs/uploads/`
    let start_upload = (n >= 3 && seg(2) == "blobs" && seg(1) == "uploads")
        || (n >= 4 && seg(3) == "blobs" && seg(2) == "uploads" && seg(1).is_empty());
    if start_upload {
        let name = name_of(if seg(1).is_empty() { 3 } else { 2 })?;
        return match *m {
            Method::POST => Ok(Endpoint::StartUpload {
                name,
                digest: q.digest("digest")?,
                mount: q.mount()?,
            }),
            _ => Err(unsupported(m)),
        };
    }
    if n >= 4 && seg(3) == "blobs" && seg(2) == "uploads" {
        let name = name_of(3)?;
        let id = UploadId::parse(seg(1)).ok_or_else(|| {
            OciError::new(
                OciErrorCode::BlobUploadUnknown,
                format!("upload {:?} not found", short(seg(1))),
            )
        })?;
        return match *m {
            Method::GET => Ok(Endpoint::GetUpload { name, id }),
            Method::PATCH => Ok(Endpoint::PatchUpload { name, id }),
            Method::PUT => {
                let digest = q.digest("digest")?.ok_or_else(|| {
                    OciError::new(
                        OciErrorCode::DigestInvalid,
                        "the digest query parameter is required",
                    )
                })?;
                Ok(Endpoint::PutUpload { name, id, digest })
            }
            Method::DELETE => Ok(Endpoint::DeleteUpload { name, id }),
            _ => Err(unsupported(m)),
        };
    }
    if n >= 3 && seg(2) == "blobs" {
        let name = name_of(2)?;
        let digest = Digest::parse(seg(1))?;
        return match *m {
            Method::GET => Ok(Endpoint::GetBlob {
                name,
                digest,
                head: false,
            }),
            Method::HEAD => Ok(Endpoint::GetBlob {
                name,
                digest,
                head: true,
            }),
            Method::DELETE => Ok(Endpoint::DeleteBlob { name, digest }),
            _ => Err(unsupported(m)),
        };
    }
    if n >= 3 && seg(2) == "referrers" {
        let name = name_of(2)?;
        let digest = Digest::parse(seg(1))?;
        return match *m {
            Method::GET => Ok(Endpoint::Referrers {
                name,
                digest,
                artifact_type: q.text("artifactType"),
            }),
            _ => Err(unsupported(m)),
        };
    }
    Err(not_found(path))
}

#[cfg(test)]
mod tests;

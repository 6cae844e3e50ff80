//! Parses `(method, /v2/... path, query)` into a typed `Endpoint`, once per
//! request, and says what access that endpoint needs. OCI names contain
//! `/`, so the path is matched from its end: the last one to three
//! segments say which endpoint it is; everything before them is the name.
//!
//! The query is decoded once, here, and strictly: a parameter given twice
//! (known or not) is a 400, so no later reader can pick a different value
//! than the one authorized. Unknown parameters given once are ignored
//! (clients add their own, such as containerd's `ns=`).
//!
//! [`layer`] runs the parser for every `/v2` request and leaves the result
//! in the request extensions ([`Parsed`]); the auth middleware authorizes
//! that value (and may replace it: a mount the caller may not make is
//! dropped) and `v2::dispatch` executes it. Nothing else reads the `/v2`
//! path or query.

use std::collections::BTreeMap;

use axum::extract::Request;
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;

use crate::auth::{Action, Actions};
use crate::error::{OciError, OciErrorCode};
use crate::oci::{Digest, NameError, Reference, RepoName};
use crate::storage::UploadId;

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
        req.extensions_mut().insert(Parsed(parsed));
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
        format!("no such endpoint: {path}"),
    )
    .with_detail(serde_json::json!({ "path": path }))
}

/// Decodes `%XX` escapes; `None` for malformed escapes or a NUL byte.
fn percent_decode(s: &str) -> Option<String> {
    let decoded = percent_encoding::percent_decode_str(s).decode_utf8().ok()?;
    (!decoded.contains('\0')).then(|| decoded.into_owned())
}

/// Decodes one `application/x-www-form-urlencoded` key or value (`+` is a
/// space, as in every HTTP library's query parser).
fn form_decode(s: &str) -> Option<String> {
    percent_decode(&s.replace('+', " "))
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
        _ => OciErrorCode::QueryInvalid,
    };
    OciError::new(code, format!("query parameter {:?} {problem}", short(key)))
        .with_detail(serde_json::json!({ "parameter": short(key) }))
}

/// A decoded query: each parameter at most once.
struct Query(BTreeMap<String, String>);

impl Query {
    fn parse(raw: Option<&str>) -> Result<Query, OciError> {
        let mut map = BTreeMap::new();
        for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let key = form_decode(k).ok_or_else(|| {
                OciError::new(
                    OciErrorCode::QueryInvalid,
                    "a query parameter name is not valid percent-encoded UTF-8",
                )
            })?;
            let value = form_decode(v)
                .ok_or_else(|| param_error(&key, "is not valid percent-encoded UTF-8"))?;
            if map.contains_key(&key) {
                return Err(param_error(&key, "is given more than once"));
            }
            map.insert(key, value);
        }
        Ok(Query(map))
    }

    fn text(&self, key: &str) -> Option<String> {
        self.0.get(key).cloned()
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
    let q = Query::parse(query)?;
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
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const D2: &str = "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";
    const U: &str = "0b5f3c2e-8f5e-4c1a-9a53-3d5c1c6d2a10";

    fn ok(m: Method, p: &str) -> Endpoint {
        okq(m, p, None)
    }
    fn okq(m: Method, p: &str, q: Option<&str>) -> Endpoint {
        parse(&m, p, q).unwrap_or_else(|e| panic!("{p}?{q:?}: {e:?}"))
    }
    fn code(m: Method, p: &str) -> OciErrorCode {
        codeq(m, p, None)
    }
    fn codeq(m: Method, p: &str, q: Option<&str>) -> OciErrorCode {
        parse(&m, p, q).unwrap_err().code
    }
    fn repo(s: &str) -> RepoName {
        RepoName::parse(s).unwrap()
    }
    fn digest(s: &str) -> Digest {
        Digest::parse(s).unwrap()
    }

    #[test]
    fn every_shape() {
        assert_eq!(ok(Method::GET, "/v2/"), Endpoint::Base);
        assert_eq!(ok(Method::GET, "/v2"), Endpoint::Base);
        assert_eq!(
            ok(Method::GET, "/v2/_catalog"),
            Endpoint::Catalog {
                n: None,
                last: None
            }
        );
        assert!(
            matches!(ok(Method::GET, "/v2/a/b/c/tags/list"), Endpoint::ListTags { name, .. } if name.as_str() == "a/b/c")
        );
        assert!(matches!(
            ok(Method::GET, "/v2/a/manifests/latest"),
            Endpoint::GetManifest { head: false, .. }
        ));
        assert!(matches!(
            ok(Method::HEAD, &format!("/v2/a/manifests/{D}")),
            Endpoint::GetManifest {
                head: true,
                reference: Reference::Digest(_),
                ..
            }
        ));
        assert!(matches!(
            ok(Method::PUT, "/v2/x/y/manifests/v1"),
            Endpoint::PutManifest { .. }
        ));
        assert!(matches!(
            ok(Method::DELETE, "/v2/x/manifests/v1"),
            Endpoint::DeleteManifest { .. }
        ));
        assert!(matches!(
            ok(Method::GET, &format!("/v2/a/blobs/{D}")),
            Endpoint::GetBlob { head: false, .. }
        ));
        assert!(matches!(
            ok(Method::DELETE, &format!("/v2/a/blobs/{D}")),
            Endpoint::DeleteBlob { .. }
        ));
        assert_eq!(
            ok(Method::POST, "/v2/a/b/blobs/uploads/"),
            Endpoint::StartUpload {
                name: repo("a/b"),
                digest: None,
                mount: None
            }
        );
        assert!(matches!(
            ok(Method::POST, "/v2/a/blobs/uploads"),
            Endpoint::StartUpload { .. }
        ));
        assert!(matches!(
            ok(Method::PATCH, &format!("/v2/a/blobs/uploads/{U}")),
            Endpoint::PatchUpload { .. }
        ));
        assert!(matches!(
            ok(Method::GET, &format!("/v2/a/blobs/uploads/{U}")),
            Endpoint::GetUpload { .. }
        ));
        assert!(matches!(
            okq(Method::PUT, &format!("/v2/a/blobs/uploads/{U}"), Some(&format!("digest={D}"))),
            Endpoint::PutUpload { digest, .. } if digest.to_string() == D
        ));
        assert!(matches!(
            ok(Method::DELETE, &format!("/v2/a/blobs/uploads/{U}")),
            Endpoint::DeleteUpload { .. }
        ));
        assert_eq!(
            ok(Method::GET, &format!("/v2/a/referrers/{D}")),
            Endpoint::Referrers {
                name: repo("a"),
                digest: digest(D),
                artifact_type: None
            }
        );
        // A repository may itself contain `blobs` or `manifests` components.
        assert!(
            matches!(ok(Method::GET, "/v2/blobs/manifests/manifests/x"), Endpoint::GetManifest { name, .. } if name.as_str() == "blobs/manifests")
        );
        // Deep names are fine.
        let deep = (0..20)
            .map(|i| format!("c{i}"))
            .collect::<Vec<_>>()
            .join("/");
        assert!(matches!(
            ok(Method::GET, &format!("/v2/{deep}/tags/list")),
            Endpoint::ListTags { .. }
        ));
    }

    #[test]
    fn pagination_queries() {
        assert_eq!(
            okq(Method::GET, "/v2/_catalog", Some("n=10&last=a%2Fb")),
            Endpoint::Catalog {
                n: Some(10),
                last: Some("a/b".into())
            }
        );
        assert_eq!(
            okq(Method::GET, "/v2/r/tags/list", Some("last=v1&n=0")),
            Endpoint::ListTags {
                name: repo("r"),
                n: Some(0),
                last: Some("v1".into())
            }
        );
        for bad in ["n=x", "n=-1", "n=1.5", "n=", "n=1&n=1", "n=1&%6E=2"] {
            assert_eq!(
                codeq(Method::GET, "/v2/_catalog", Some(bad)),
                OciErrorCode::PaginationNumberInvalid,
                "{bad}"
            );
            assert_eq!(
                codeq(Method::GET, "/v2/r/tags/list", Some(bad)),
                OciErrorCode::PaginationNumberInvalid,
                "{bad}"
            );
        }
        assert_eq!(
            codeq(Method::GET, "/v2/_catalog", Some("last=a&last=b")),
            OciErrorCode::QueryInvalid
        );
        assert_eq!(
            codeq(Method::GET, "/v2/r/tags/list", Some("n=1&last=a&last=a")),
            OciErrorCode::QueryInvalid
        );
    }

    #[test]
    fn upload_queries() {
        let start = |q: &str| okq(Method::POST, "/v2/t/blobs/uploads/", Some(q));
        let start_code = |q: &str| codeq(Method::POST, "/v2/t/blobs/uploads/", Some(q));
        assert_eq!(
            start(&format!("digest={D}")),
            Endpoint::StartUpload {
                name: repo("t"),
                digest: Some(digest(D)),
                mount: None
            }
        );
        assert_eq!(
            start(&format!("mount={D}&from=s%2Fx")),
            Endpoint::StartUpload {
                name: repo("t"),
                digest: None,
                mount: Some(Mount {
                    digest: digest(D),
                    from: Some(repo("s/x"))
                })
            }
        );
        // Without `from`: an automatic mount.
        assert_eq!(
            start(&format!("mount={D}")),
            Endpoint::StartUpload {
                name: repo("t"),
                digest: None,
                mount: Some(Mount {
                    digest: digest(D),
                    from: None
                })
            }
        );
        // `from` without `mount` means nothing.
        assert_eq!(
            start("from=s"),
            Endpoint::StartUpload {
                name: repo("t"),
                digest: None,
                mount: None
            }
        );
        // Unknown parameters given once are ignored.
        assert!(matches!(
            start("ns=docker.io&x"),
            Endpoint::StartUpload {
                mount: None,
                digest: None,
                ..
            }
        ));
        // Repeated: refused with the parameter's code, however spelled.
        for (q, code) in [
            (
                format!("mount={D}&from=a&from=b"),
                OciErrorCode::NameInvalid,
            ),
            (
                format!("mount={D}&from=a&%66rom=b"),
                OciErrorCode::NameInvalid,
            ),
            (
                format!("mount={D}&from=a&fro%6D=a"),
                OciErrorCode::NameInvalid,
            ),
            (
                format!("mount={D}&mount={D2}&from=a"),
                OciErrorCode::DigestInvalid,
            ),
            (
                format!("digest={D}&digest={D2}"),
                OciErrorCode::DigestInvalid,
            ),
            (
                format!("digest={D}&digest={D}"),
                OciErrorCode::DigestInvalid,
            ),
            ("from=a&from=b".to_string(), OciErrorCode::NameInvalid),
            ("x=1&x=2".to_string(), OciErrorCode::QueryInvalid),
            ("x&x".to_string(), OciErrorCode::QueryInvalid),
            ("%ff=1".to_string(), OciErrorCode::QueryInvalid),
            ("digest=%ff".to_string(), OciErrorCode::DigestInvalid),
            ("digest=sha256:xyz".to_string(), OciErrorCode::DigestInvalid),
            ("digest=".to_string(), OciErrorCode::DigestInvalid),
            ("mount=nope&from=a".to_string(), OciErrorCode::DigestInvalid),
            (
                format!("mount={D}&from=NOT_VALID"),
                OciErrorCode::NameInvalid,
            ),
            (format!("mount={D}&from="), OciErrorCode::NameInvalid),
            (format!("mount={D}&from=a%00"), OciErrorCode::NameInvalid),
        ] {
            assert_eq!(start_code(&q), code, "{q}");
        }
        let put = |q: Option<&str>| parse(&Method::PUT, &format!("/v2/t/blobs/uploads/{U}"), q);
        assert_eq!(put(None).unwrap_err().code, OciErrorCode::DigestInvalid);
        assert_eq!(
            put(Some("digest=")).unwrap_err().code,
            OciErrorCode::DigestInvalid
        );
        assert_eq!(
            put(Some(&format!("digest={D}&digest={D2}")))
                .unwrap_err()
                .code,
            OciErrorCode::DigestInvalid
        );
        assert!(put(Some(&format!("digest={}", D.replace(':', "%3A")))).is_ok());
        // PATCH, GET and DELETE of a session take no parameters; a repeated
        // one is still refused.
        assert_eq!(
            parse(
                &Method::PATCH,
                &format!("/v2/t/blobs/uploads/{U}"),
                Some("a=1&a=1")
            )
            .unwrap_err()
            .code,
            OciErrorCode::QueryInvalid
        );
    }

    #[test]
    fn referrer_queries() {
        let p = format!("/v2/r/referrers/{D}");
        assert!(matches!(
            okq(Method::GET, &p, Some("artifactType=application%2Fvnd.x%2Bjson")),
            Endpoint::Referrers { artifact_type: Some(t), .. } if t == "application/vnd.x+json"
        ));
        assert_eq!(
            codeq(Method::GET, &p, Some("artifactType=a&artifactType=b")),
            OciErrorCode::QueryInvalid
        );
        // Repeated parameters are refused on every endpoint, also where the
        // parameter means nothing.
        for path in [
            "/v2/",
            "/v2/r/manifests/v1",
            &p,
            &format!("/v2/r/blobs/{D}"),
        ] {
            assert_eq!(
                codeq(Method::GET, path, Some("ns=a&ns=b")),
                OciErrorCode::QueryInvalid,
                "{path}"
            );
        }
    }

    #[test]
    fn invalid_tags_name_no_manifest() {
        for method in [Method::GET, Method::HEAD, Method::DELETE] {
            let e = ok(method.clone(), "/v2/a/manifests/.INVALID_MANIFEST_NAME");
            assert!(
                matches!(&e, Endpoint::UnknownManifest { name, reference, .. } if name.as_str() == "a" && reference == ".INVALID_MANIFEST_NAME"),
                "{method}: {e:?}"
            );
            // Authorized as the valid-reference request would be.
            let Access::Repository { need, .. } = e.access() else {
                panic!("{method}: not repository-scoped");
            };
            let expected = if method == Method::DELETE {
                Action::Delete
            } else {
                Action::Pull
            };
            assert_eq!(need.action, expected);
        }
        assert_eq!(
            code(Method::PUT, "/v2/a/manifests/.INVALID_MANIFEST_NAME"),
            OciErrorCode::ManifestInvalid
        );
        // A malformed digest stays a malformed digest.
        assert_eq!(
            code(Method::GET, "/v2/a/manifests/sha256:xyz"),
            OciErrorCode::DigestInvalid
        );
    }

    #[test]
    fn access_of_every_endpoint() {
        let need = |m: Method, p: &str, q: Option<&str>| match parse(&m, p, q).unwrap().access() {
            Access::Repository { need, mount_from } => (
                need.repo.to_string(),
                need.action,
                need.advertised.to_scope_string(),
                mount_from.map(|r| r.to_string()),
            ),
            other => panic!("{m} {p}: {other:?}"),
        };
        let n = |repo: &str, a: Action, adv: &str| (repo.to_string(), a, adv.to_string(), None);
        assert_eq!(ok(Method::GET, "/v2/").access(), Access::Base);
        assert_eq!(ok(Method::GET, "/v2/_catalog").access(), Access::Catalog);
        assert_eq!(
            need(Method::GET, "/v2/r/tags/list", None),
            n("r", Action::Pull, "pull")
        );
        assert_eq!(
            need(Method::GET, "/v2/r/manifests/v1", None),
            n("r", Action::Pull, "pull")
        );
        assert_eq!(
            need(Method::HEAD, &format!("/v2/r/blobs/{D}"), None),
            n("r", Action::Pull, "pull,push")
        );
        assert_eq!(
            need(Method::PUT, "/v2/r/manifests/v1", None),
            n("r", Action::Push, "pull,push")
        );
        assert_eq!(
            need(Method::DELETE, &format!("/v2/r/blobs/{D}"), None),
            n("r", Action::Delete, "delete")
        );
        assert_eq!(
            need(Method::PATCH, &format!("/v2/r/blobs/uploads/{U}"), None),
            n("r", Action::Push, "pull,push")
        );
        assert_eq!(
            need(
                Method::POST,
                "/v2/r/blobs/uploads/",
                Some(&format!("mount={D}&from=s"))
            ),
            (
                "r".to_string(),
                Action::Push,
                "pull,push".to_string(),
                Some("s".to_string())
            )
        );
        // An automatic mount has no source to check here: the handler
        // only looks in repositories the caller may pull.
        assert_eq!(
            need(
                Method::POST,
                "/v2/r/blobs/uploads/",
                Some(&format!("mount={D}"))
            ),
            n("r", Action::Push, "pull,push")
        );
        let e = okq(
            Method::POST,
            "/v2/r/blobs/uploads/",
            Some(&format!("mount={D}&from=s&digest={D2}")),
        );
        assert_eq!(
            e.without_mount(),
            Endpoint::StartUpload {
                name: repo("r"),
                digest: Some(digest(D2)),
                mount: None
            }
        );
    }

    #[test]
    fn malformed() {
        assert_eq!(
            code(Method::GET, "/v2/a/blobs/sha256:xyz"),
            OciErrorCode::DigestInvalid
        );
        assert_eq!(
            code(Method::GET, "/v2/a/referrers/nonsense:"),
            OciErrorCode::DigestInvalid
        );
        assert_eq!(
            code(Method::GET, "/v2/A/tags/list"),
            OciErrorCode::NameInvalid
        );
        assert_eq!(
            code(Method::GET, "/v2/../etc/tags/list"),
            OciErrorCode::NameInvalid
        );
        assert_eq!(
            code(Method::GET, "/v2/%2e%2e/tags/list"),
            OciErrorCode::NameInvalid
        );
        assert_eq!(
            code(Method::GET, "/v2/a%00/tags/list"),
            OciErrorCode::NameInvalid
        );
        assert_eq!(
            code(Method::GET, "/v2/a/_tags/x/tags/list"),
            OciErrorCode::NameInvalid
        );
        assert_eq!(
            code(Method::PUT, "/v2/a/manifests/-bad"),
            OciErrorCode::ManifestInvalid
        );
        assert_eq!(
            code(Method::GET, "/v2/a/blobs/uploads/not-a-uuid"),
            OciErrorCode::BlobUploadUnknown
        );
        assert_eq!(
            code(Method::POST, "/v2/a/manifests/x"),
            OciErrorCode::Unsupported
        );
        assert_eq!(
            code(Method::GET, "/v2/a/unknown"),
            OciErrorCode::NameUnknown
        );
        assert_eq!(
            code(Method::GET, "/v2//manifests/x"),
            OciErrorCode::NameInvalid
        );
    }
}

//! Parses `(method, /v2/... path)` into a typed `Endpoint`, once. OCI names
//! contain `/`, so the path is matched from its end: the last one to three
//! segments say which endpoint it is; everything before them is the name.

use axum::http::Method;

use crate::error::{OciError, OciErrorCode};
use crate::oci::{Digest, Reference, RepoName};
use crate::storage::UploadId;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Base,
    Catalog,
    ListTags {
        name: RepoName,
    },
    GetManifest {
        name: RepoName,
        reference: Reference,
        head: bool,
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
    StartUpload {
        name: RepoName,
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
    },
    DeleteUpload {
        name: RepoName,
        id: UploadId,
    },
    Referrers {
        name: RepoName,
        digest: Digest,
    },
}

impl Endpoint {
    /// A constant name for logs.
    pub fn route(&self) -> &'static str {
        match self {
            Endpoint::Base => "v2.base",
            Endpoint::Catalog => "v2.catalog",
            Endpoint::ListTags { .. } => "v2.tags.list",
            Endpoint::GetManifest { head: false, .. } => "v2.manifest.get",
            Endpoint::GetManifest { head: true, .. } => "v2.manifest.head",
            Endpoint::PutManifest { .. } => "v2.manifest.put",
            Endpoint::DeleteManifest { .. } => "v2.manifest.delete",
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
            Endpoint::Base | Endpoint::Catalog => None,
            Endpoint::ListTags { name }
            | Endpoint::GetManifest { name, .. }
            | Endpoint::PutManifest { name, .. }
            | Endpoint::DeleteManifest { name, .. }
            | Endpoint::GetBlob { name, .. }
            | Endpoint::DeleteBlob { name, .. }
            | Endpoint::StartUpload { name }
            | Endpoint::GetUpload { name, .. }
            | Endpoint::PatchUpload { name, .. }
            | Endpoint::PutUpload { name, .. }
            | Endpoint::DeleteUpload { name, .. }
            | Endpoint::Referrers { name, .. } => Some(name),
        }
    }
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

/// Parses a request. `path` is the raw URI path, starting with `/v2`.
pub fn parse(method: &Method, path: &str) -> Result<Endpoint, OciError> {
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
    if rest.is_empty() {
        return match *method {
            Method::GET | Method::HEAD => Ok(Endpoint::Base),
            _ => Err(unsupported(method)),
        };
    }
    if rest == "_catalog" {
        return match *method {
            Method::GET => Ok(Endpoint::Catalog),
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
            Method::GET => Ok(Endpoint::ListTags { name }),
            _ => Err(unsupported(m)),
        };
    }
    if n >= 3 && seg(2) == "manifests" {
        let name = name_of(2)?;
        let reference = Reference::parse(seg(1))?;
        return match *m {
            Method::GET => Ok(Endpoint::GetManifest {
                name,
                reference,
                head: false,
            }),
            Method::HEAD => Ok(Endpoint::GetManifest {
                name,
                reference,
                head: true,
            }),
            Method::PUT => Ok(Endpoint::PutManifest { name, reference }),
            Method::DELETE => Ok(Endpoint::DeleteManifest { name, reference }),
            _ => Err(unsupported(m)),
        };
    }
    // `<name>/blobs/uploads` or `<name>/blobs/uploads/`
    let start_upload = (n >= 3 && seg(2) == "blobs" && seg(1) == "uploads")
        || (n >= 4 && seg(3) == "blobs" && seg(2) == "uploads" && seg(1).is_empty());
    if start_upload {
        let name = name_of(if seg(1).is_empty() { 3 } else { 2 })?;
        return match *m {
            Method::POST => Ok(Endpoint::StartUpload { name }),
            _ => Err(unsupported(m)),
        };
    }
    if n >= 4 && seg(3) == "blobs" && seg(2) == "uploads" {
        let name = name_of(3)?;
        let id = UploadId::parse(seg(1)).ok_or_else(|| {
            OciError::new(
                OciErrorCode::BlobUploadUnknown,
                format!("upload {:?} not found", seg(1)),
            )
        })?;
        return match *m {
            Method::GET => Ok(Endpoint::GetUpload { name, id }),
            Method::PATCH => Ok(Endpoint::PatchUpload { name, id }),
            Method::PUT => Ok(Endpoint::PutUpload { name, id }),
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
            Method::GET => Ok(Endpoint::Referrers { name, digest }),
            _ => Err(unsupported(m)),
        };
    }
    Err(not_found(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const U: &str = "0b5f3c2e-8f5e-4c1a-9a53-3d5c1c6d2a10";

    fn ok(m: Method, p: &str) -> Endpoint {
        parse(&m, p).unwrap_or_else(|e| panic!("{p}: {e:?}"))
    }
    fn code(m: Method, p: &str) -> OciErrorCode {
        parse(&m, p).unwrap_err().code
    }

    #[test]
    fn every_shape() {
        assert_eq!(ok(Method::GET, "/v2/"), Endpoint::Base);
        assert_eq!(ok(Method::GET, "/v2"), Endpoint::Base);
        assert_eq!(ok(Method::GET, "/v2/_catalog"), Endpoint::Catalog);
        assert!(
            matches!(ok(Method::GET, "/v2/a/b/c/tags/list"), Endpoint::ListTags { name } if name.as_str() == "a/b/c")
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
        assert!(
            matches!(ok(Method::POST, "/v2/a/b/blobs/uploads/"), Endpoint::StartUpload { name } if name.as_str() == "a/b")
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
            ok(Method::PUT, &format!("/v2/a/blobs/uploads/{U}")),
            Endpoint::PutUpload { .. }
        ));
        assert!(matches!(
            ok(Method::DELETE, &format!("/v2/a/blobs/uploads/{U}")),
            Endpoint::DeleteUpload { .. }
        ));
        assert!(matches!(
            ok(Method::GET, &format!("/v2/a/referrers/{D}")),
            Endpoint::Referrers { .. }
        ));
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
            code(Method::GET, "/v2/a/manifests/-bad"),
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

//! Unit tests of the `/v2` endpoint parser: every shape, every malformed
//! path and query.

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
        OciErrorCode::ParameterInvalid
    );
    assert_eq!(
        codeq(Method::GET, "/v2/r/tags/list", Some("n=1&last=a&last=a")),
        OciErrorCode::ParameterInvalid
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
        ("x=1&x=2".to_string(), OciErrorCode::ParameterInvalid),
        ("x&x".to_string(), OciErrorCode::ParameterInvalid),
        ("%ff=1".to_string(), OciErrorCode::ParameterInvalid),
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
        OciErrorCode::ParameterInvalid
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
        OciErrorCode::ParameterInvalid
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
            OciErrorCode::ParameterInvalid,
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

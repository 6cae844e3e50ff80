//! Attacks on the `/v2` edge by a tenant who may write only her own
//! sandbox: `mallory` (pull, push, delete on `sandbox/mallory/**`, pull on
//! `bpf/**`), next to `alice` (everything on `bpf/**`), `admin`
//! (everything) and anonymous callers (pull on `public/**`).
//!
//! Each test proves that the request the middleware authorized is the
//! request the handler executed (one parse, one decision): repeated query
//! parameters are refused instead of being read "first here, last there",
//! a mount needs pull on every repository it could copy from (explicit
//! `from` or automatic), pagination reveals only names the caller may
//! pull, and a refusal says nothing about whether the repository exists.
//! The refusals that already held (forged tokens, path tricks, a PUT with
//! the wrong digest) are kept here as regression tests.

mod common;

use std::path::Path;

use base64::Engine as _;
use bpf_registry::auth::token::{unix_now, ISSUER, SERVICE};
use bpf_registry::auth::TokenKey;
use common::attacker::{
    password, write_htpasswd, ATTACKER_POLICY as POLICY, ATTACKER_USERS as USERS,
};
use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// A server with authentication on and the attacker policy.
struct Fixture {
    server: TestServer,
    _dir: tempfile::TempDir,
    key: TokenKey,
}

impl Fixture {
    async fn start() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        write_htpasswd(&dir.path().join("htpasswd"), &USERS, 4);
        let key = TokenKey::generate().expect("key");
        std::fs::write(dir.path().join("token.pem"), key.to_pem().expect("pem"))
            .expect("write key");
        std::fs::write(dir.path().join("policy.toml"), POLICY).expect("write policy");
        let htpasswd = path_str(&dir.path().join("htpasswd"));
        let key_path = path_str(&dir.path().join("token.pem"));
        let policy_path = path_str(&dir.path().join("policy.toml"));
        let server = TestServer::start_with_env(&[
            ("BPF_REGISTRY_AUTH_HTPASSWD", &htpasswd),
            ("BPF_REGISTRY_TOKEN_KEY", &key_path),
            ("BPF_REGISTRY_AUTH_POLICY", &policy_path),
        ])
        .await;
        Fixture {
            server,
            _dir: dir,
            key,
        }
    }

    /// Every file under `repositories/` and `blobs/` (a refusal must not
    /// change it).
    fn snapshot(&self) -> Vec<String> {
        let mut v = self.server.files_under("repositories");
        v.extend(self.server.files_under("blobs"));
        v
    }

    /// An access token for `user` and `scope` from `/token`.
    async fn token(&self, user: &str, scope: &str) -> String {
        let r = reqwest::Client::new()
            .get(self.server.url("/token"))
            .query(&[("service", SERVICE), ("scope", scope)])
            .basic_auth(user, Some(password(user)))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), StatusCode::OK, "token for {user} {scope}");
        let v: Value = r.json().await.expect("json");
        v["token"].as_str().expect("token").to_string()
    }

    /// `Authorization: Basic` for a raw request.
    fn basic_header(user: &str) -> String {
        let b =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{}", password(user)));
        format!("Basic {b}")
    }

    /// A raw request (the path and query exactly as given) as `user`.
    async fn raw(&self, user: &str, method: &str, path: &str, body: &[u8]) -> RawResponse {
        let auth = Self::basic_header(user);
        raw_request(
            self.server.addr,
            method,
            path,
            &[("Authorization", auth.as_str())],
            body,
        )
        .await
    }

    /// Status of `HEAD /v2/<repo>/blobs/<digest>` as admin (who sees all).
    async fn blob_status(&self, repo: &str, digest: &str) -> StatusCode {
        basic("admin")
            .head(self.server.url(&format!("/v2/{repo}/blobs/{digest}")))
            .send()
            .await
            .expect("send")
            .status()
    }
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn with_auth(value: &str) -> reqwest::Client {
    let mut h = reqwest::header::HeaderMap::new();
    h.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_str(value).expect("header"),
    );
    reqwest::Client::builder()
        .default_headers(h)
        .build()
        .expect("client")
}

fn basic(user: &str) -> reqwest::Client {
    with_auth(&Fixture::basic_header(user))
}

fn bearer(token: &str) -> reqwest::Client {
    with_auth(&format!("Bearer {token}"))
}

/// The OCI error code of a raw response.
fn raw_code(r: &RawResponse) -> String {
    let v = check_envelope(
        "raw",
        r.header("content-type").unwrap_or(""),
        &r.body,
        &[
            "DIGEST_INVALID",
            "NAME_INVALID",
            "PAGINATION_NUMBER_INVALID",
            "UNSUPPORTED",
            "DENIED",
            "UNAUTHORIZED",
            "MANIFEST_UNKNOWN",
            "NAME_UNKNOWN",
            "BLOB_UNKNOWN",
            "BLOB_UPLOAD_UNKNOWN",
            "MANIFEST_INVALID",
        ],
    );
    v["errors"][0]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

// ---- finding 2: one parse, one decision ------------------------------------

#[tokio::test]
async fn repeated_from_cannot_mount_a_blob_she_cannot_pull() {
    let f = Fixture::start().await;
    let secret = pseudo_random(300, 1);
    let d = f
        .server
        .push_blob(&basic("admin"), "secret/x", &secret)
        .await;
    // A blob of her own, so "any" exists and a mount from it would work.
    f.server
        .push_blob(
            &basic("mallory"),
            "sandbox/mallory/any",
            &pseudo_random(10, 2),
        )
        .await;
    let before = f.snapshot();
    for query in [
        format!("mount={d}&from=sandbox/mallory/any&from=secret/x"),
        format!("mount={d}&from=secret/x&from=sandbox/mallory/any"),
        format!("mount={d}&from=sandbox/mallory/any&%66rom=secret/x"),
        format!("mount={d}&mount={d}&from=secret/x"),
    ] {
        let path = format!("/v2/sandbox/mallory/loot/blobs/uploads/?{query}");
        let r = f.raw("mallory", "POST", &path, b"").await;
        assert_eq!(
            r.status,
            400,
            "{query}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let code = raw_code(&r);
        assert!(
            code == "NAME_INVALID" || code == "DIGEST_INVALID",
            "{query}: {code}"
        );
        assert_eq!(
            f.blob_status("sandbox/mallory/loot", &d).await,
            StatusCode::NOT_FOUND,
            "{query}: the secret blob became readable in her repository"
        );
    }
    assert_eq!(f.snapshot(), before, "a refused mount changed the store");
}

#[tokio::test]
async fn mount_from_a_repository_she_cannot_pull_is_a_plain_session() {
    let f = Fixture::start().await;
    let d = f
        .server
        .push_blob(&basic("admin"), "secret/x", &pseudo_random(300, 3))
        .await;
    let r = basic("mallory")
        .post(f.server.url(&format!(
            "/v2/sandbox/mallory/loot/blobs/uploads/?mount={d}&from=secret/x"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert!(location(&r).starts_with("/v2/sandbox/mallory/loot/blobs/uploads/"));
    assert_eq!(
        f.blob_status("sandbox/mallory/loot", &d).await,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn repeated_query_parameters_are_400_and_create_nothing() {
    let f = Fixture::start().await;
    let m = basic("mallory");
    f.server
        .push_image(
            &m,
            "sandbox/mallory/app",
            "v1",
            b"{}",
            &[b"layer"],
            json!({}),
        )
        .await;
    let data = pseudo_random(64, 4);
    let right = sha256(&data);
    let wrong = sha256(b"something else");
    let loc = f.server.start_upload(&m, "sandbox/mallory/app").await;
    let before = f.snapshot();
    let repo = "/v2/sandbox/mallory/app";
    let cases: Vec<(&str, String, &str)> = vec![
        // Monolithic upload: the digest checked is the digest stored.
        (
            "POST",
            format!("{repo}/blobs/uploads/?digest={wrong}&digest={right}"),
            "DIGEST_INVALID",
        ),
        (
            "POST",
            format!("{repo}/blobs/uploads/?digest={right}&%64igest={wrong}"),
            "DIGEST_INVALID",
        ),
        (
            "PUT",
            format!("{loc}?digest={wrong}&digest={right}"),
            "DIGEST_INVALID",
        ),
        (
            "GET",
            format!("{repo}/tags/list?n=1&n=100"),
            "PAGINATION_NUMBER_INVALID",
        ),
        (
            "GET",
            format!("{repo}/tags/list?n=1&last=a&last=b"),
            "UNSUPPORTED",
        ),
        (
            "GET",
            "/v2/_catalog?n=1&n=2".to_string(),
            "PAGINATION_NUMBER_INVALID",
        ),
        (
            "GET",
            "/v2/_catalog?last=a&last=b".to_string(),
            "UNSUPPORTED",
        ),
        (
            "GET",
            format!("{repo}/referrers/{right}?artifactType=a&artifactType=b"),
            "UNSUPPORTED",
        ),
        (
            "GET",
            format!("{repo}/manifests/v1?whatever=1&whatever=2"),
            "UNSUPPORTED",
        ),
    ];
    for (method, path, code) in &cases {
        let r = f.raw("mallory", method, path, &data).await;
        assert_eq!(
            r.status,
            400,
            "{method} {path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(raw_code(&r), *code, "{method} {path}");
    }
    assert_eq!(f.snapshot(), before, "a refused request changed the store");
    // The session the refused PUT named is still open and at offset 0.
    let r = m.get(f.server.abs(&loc)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&r, "range").as_deref(), Some("0-0"));
}

// ---- automatic cross-mount -------------------------------------------------

#[tokio::test]
async fn automatic_mount_only_finds_blobs_of_repositories_she_may_pull() {
    let f = Fixture::start().await;
    let secret = f
        .server
        .push_blob(&basic("admin"), "secret/x", &pseudo_random(300, 5))
        .await;
    let shared_bytes = pseudo_random(300, 6);
    let shared = f
        .server
        .push_blob(&basic("alice"), "bpf/tools", &shared_bytes)
        .await;
    let m = basic("mallory");
    let before = f.snapshot();

    // Only in a repository she cannot pull: a plain session, nothing linked.
    let r = m
        .post(f.server.url(&format!(
            "/v2/sandbox/mallory/loot/blobs/uploads/?mount={secret}"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(
        f.blob_status("sandbox/mallory/loot", &secret).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(f.snapshot(), before);
    // A digest stored nowhere answers exactly the same.
    let r2 = m
        .post(f.server.url(&format!(
            "/v2/sandbox/mallory/loot/blobs/uploads/?mount={}",
            sha256(b"stored nowhere")
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r2.status(), StatusCode::ACCEPTED);

    // In a repository she may pull: mounted, 201, readable.
    let r = m
        .post(f.server.url(&format!(
            "/v2/sandbox/mallory/app/blobs/uploads/?mount={shared}"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        location(&r),
        format!("/v2/sandbox/mallory/app/blobs/{shared}")
    );
    let got = m
        .get(
            f.server
                .url(&format!("/v2/sandbox/mallory/app/blobs/{shared}")),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(got.bytes().await.unwrap().as_ref(), shared_bytes.as_slice());

    // A token is judged by its own scopes: one for her repository only
    // cannot find the blob of bpf/tools.
    let t = f
        .token("mallory", "repository:sandbox/mallory/other:pull,push")
        .await;
    let r = bearer(&t)
        .post(f.server.url(&format!(
            "/v2/sandbox/mallory/other/blobs/uploads/?mount={shared}"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(
        f.blob_status("sandbox/mallory/other", &shared).await,
        StatusCode::NOT_FOUND
    );
}

// ---- finding 4: pagination and refusals leak no names ----------------------

/// Walks `/v2/_catalog?n=1` following `Link` as `c`; returns every name
/// seen in a body or a `Link` header.
async fn walk_catalog(f: &Fixture, c: &reqwest::Client, first: &str) -> Vec<String> {
    let mut url = f.server.url(first);
    let mut seen = Vec::new();
    for _ in 0..50 {
        let r = c.get(&url).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{url}");
        let next = next_link(&r);
        let v: Value = r.json().await.unwrap();
        for n in v["repositories"].as_array().unwrap() {
            seen.push(n.as_str().unwrap().to_string());
        }
        match next {
            Some(n) => {
                let last = n.split("last=").nth(1).unwrap_or("").to_string();
                let last = percent_encoding::percent_decode_str(&last)
                    .decode_utf8_lossy()
                    .into_owned();
                seen.push(format!("link:{last}"));
                url = f.server.abs(&n);
            }
            None => return seen,
        }
    }
    panic!("catalog pagination does not end");
}

#[tokio::test]
async fn anonymous_catalog_link_walk_reveals_no_hidden_name() {
    let f = Fixture::start().await;
    let admin = basic("admin");
    for repo in [
        "aaa/hidden",
        "bpf/net",
        "public/a",
        "public/b",
        "public/c",
        "sandbox/mallory/x",
        "secret/zzz",
    ] {
        f.server.push_blob(&admin, repo, repo.as_bytes()).await;
    }
    let seen = walk_catalog(&f, &client(), "/v2/_catalog?n=1").await;
    for name in &seen {
        let bare = name.strip_prefix("link:").unwrap_or(name);
        assert!(
            bare.starts_with("public/"),
            "anonymous saw {name}: {seen:?}"
        );
    }
    let bodies: Vec<&String> = seen.iter().filter(|s| !s.starts_with("link:")).collect();
    assert_eq!(bodies, ["public/a", "public/b", "public/c"]);
    // Starting after a hidden name reveals nothing either.
    let seen = walk_catalog(&f, &client(), "/v2/_catalog?n=1&last=bpf/zzz").await;
    assert!(
        seen.iter()
            .all(|s| s.trim_start_matches("link:").starts_with("public/")),
        "{seen:?}"
    );
    // mallory walks her own names and those she may pull, nothing else.
    let seen = walk_catalog(&f, &basic("mallory"), "/v2/_catalog?n=1").await;
    let bodies: Vec<&String> = seen.iter().filter(|s| !s.starts_with("link:")).collect();
    assert_eq!(
        bodies,
        [
            "bpf/net",
            "public/a",
            "public/b",
            "public/c",
            "sandbox/mallory/x"
        ]
    );
    assert!(
        seen.iter()
            .all(|s| !s.contains("secret") && !s.contains("aaa")),
        "{seen:?}"
    );
    // A page that would hold only hidden names is not padded with a Link.
    let r = client()
        .get(f.server.url("/v2/_catalog?n=3"))
        .send()
        .await
        .unwrap();
    assert!(header(&r, "link").is_none(), "{:?}", header(&r, "link"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["repositories"],
        json!(["public/a", "public/b", "public/c"])
    );
}

#[tokio::test]
async fn refusal_for_an_existing_and_a_missing_repository_is_identical() {
    let f = Fixture::start().await;
    f.server
        .push_image(
            &basic("admin"),
            "secret/real",
            "v1",
            b"{}",
            &[b"l"],
            json!({}),
        )
        .await;
    let d = sha256(b"l");
    let paths = |repo: &str| {
        vec![
            ("GET", format!("/v2/{repo}/tags/list")),
            ("GET", format!("/v2/{repo}/tags/list?n=1&last=a")),
            ("GET", format!("/v2/{repo}/manifests/v1")),
            ("HEAD", format!("/v2/{repo}/manifests/v1")),
            (
                "GET",
                format!("/v2/{repo}/manifests/.INVALID_MANIFEST_NAME"),
            ),
            ("GET", format!("/v2/{repo}/blobs/{d}")),
            ("GET", format!("/v2/{repo}/referrers/{d}")),
            ("POST", format!("/v2/{repo}/blobs/uploads/")),
            ("DELETE", format!("/v2/{repo}/manifests/v1")),
        ]
    };
    let strip = |r: &RawResponse, repo: &str| {
        let body = String::from_utf8_lossy(&r.body).replace(repo, "REPO");
        let challenge = r
            .header("www-authenticate")
            .unwrap_or("")
            .replace(repo, "REPO");
        (
            r.status,
            body,
            challenge,
            r.header("content-type").map(str::to_string),
        )
    };
    for (real, missing) in paths("secret/real").into_iter().zip(paths("secret/gone")) {
        for user in ["mallory", ""] {
            let (a, b) = if user.is_empty() {
                (
                    raw_request(f.server.addr, real.0, &real.1, &[], b"").await,
                    raw_request(f.server.addr, missing.0, &missing.1, &[], b"").await,
                )
            } else {
                (
                    f.raw(user, real.0, &real.1, b"").await,
                    f.raw(user, missing.0, &missing.1, b"").await,
                )
            };
            let expected = if user.is_empty() { 401 } else { 403 };
            assert_eq!(a.status, expected, "{user:?} {} {}", real.0, real.1);
            assert_eq!(
                strip(&a, "secret/real"),
                strip(&b, "secret/gone"),
                "{user:?} {} {}",
                real.0,
                real.1
            );
        }
    }
}

#[tokio::test]
async fn tag_list_pagination_of_a_repository_she_cannot_pull_is_refused() {
    let f = Fixture::start().await;
    let admin = basic("admin");
    for tag in ["a", "b", "c"] {
        f.server
            .push_image(&admin, "secret/tags", tag, b"{}", &[b"t"], json!({}))
            .await;
    }
    for path in [
        "/v2/secret/tags/tags/list?n=1",
        "/v2/secret/tags/tags/list?n=1&last=a",
    ] {
        let r = basic("mallory")
            .get(f.server.url(path))
            .send()
            .await
            .unwrap();
        assert!(header(&r, "link").is_none(), "{path}");
        assert_oci_error(r, StatusCode::FORBIDDEN, "DENIED").await;
    }
    // alice, who may pull bpf/**, pages through her own tags only.
    let alice = basic("alice");
    for tag in ["x", "y"] {
        f.server
            .push_image(&alice, "bpf/tags", tag, b"{}", &[b"t"], json!({}))
            .await;
    }
    let r = alice
        .get(f.server.url("/v2/bpf/tags/tags/list?n=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        next_link(&r).as_deref(),
        Some("/v2/bpf/tags/tags/list?n=1&last=x")
    );
}

// ---- refusals that already held ----------------------------------------------

#[tokio::test]
async fn forged_and_foreign_tokens_are_401() {
    let f = Fixture::start().await;
    let now = unix_now();
    let claims = json!({
        "iss": ISSUER, "sub": "mallory", "aud": SERVICE,
        "exp": now + 300, "nbf": now - 10, "iat": now - 10, "jti": "t",
        "access": [{"type": "repository", "name": "secret/x", "actions": ["pull", "push"]}],
    });
    let other = TokenKey::generate().unwrap();
    let foreign = other
        .sign_raw(
            &json!({"alg": "ES256", "typ": "JWT", "kid": f.key.kid()}),
            &claims,
        )
        .unwrap();
    let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    let unsigned = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(&serde_json::to_vec(&claims).unwrap())
    );
    let before = f.snapshot();
    for tok in [foreign.as_str(), unsigned.as_str(), "garbage"] {
        let r = bearer(tok)
            .post(f.server.url("/v2/secret/x/blobs/uploads/"))
            .send()
            .await
            .unwrap();
        assert_oci_error(r, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
    }
    assert_eq!(f.snapshot(), before);
}

#[tokio::test]
async fn path_tricks_never_reach_another_repository() {
    let f = Fixture::start().await;
    f.server
        .push_image(&basic("admin"), "secret/x", "v1", b"{}", &[b"s"], json!({}))
        .await;
    let before = f.snapshot();
    for (method, path) in [
        (
            "GET",
            "/v2/sandbox/mallory/%2e%2e/%2e%2e/secret/x/manifests/v1",
        ),
        ("GET", "/v2/sandbox/mallory/../../secret/x/manifests/v1"),
        (
            "GET",
            "/v2/sandbox%2fmallory%2f..%2f..%2fsecret%2fx/tags/list",
        ),
        (
            "PUT",
            "/v2/sandbox/mallory/a/manifests/..%2f..%2f..%2fsecret%2fx%2fmanifests%2fv1",
        ),
        ("POST", "/v2/sandbox/mallory/%2e%2e/blobs/uploads/"),
        ("GET", "/v2/sandbox/mallory/x%00/tags/list"),
    ] {
        let r = f.raw("mallory", method, path, b"{}").await;
        assert!(
            (400..500).contains(&r.status) && r.status != 403,
            "{method} {path}: {} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
        let code = raw_code(&r);
        assert!(
            [
                "NAME_INVALID",
                "NAME_UNKNOWN",
                "MANIFEST_UNKNOWN",
                "MANIFEST_INVALID"
            ]
            .contains(&code.as_str()),
            "{method} {path}: {code}"
        );
    }
    assert_eq!(f.snapshot(), before);
}

#[tokio::test]
async fn put_with_the_wrong_digest_stores_nothing() {
    let f = Fixture::start().await;
    let m = basic("mallory");
    let data = pseudo_random(100, 7);
    let claimed = sha256(b"what she claims");
    let before = f.snapshot();
    let r = m
        .post(f.server.url(&format!(
            "/v2/sandbox/mallory/app/blobs/uploads/?digest={claimed}"
        )))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_oci_error(r, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    let loc = f.server.start_upload(&m, "sandbox/mallory/app").await;
    let r = m
        .put(
            f.server
                .abs(&with_query(&loc, &format!("digest={claimed}"))),
        )
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_oci_error(r, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    assert_eq!(
        f.blob_status("sandbox/mallory/app", &claimed).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        f.blob_status("sandbox/mallory/app", &sha256(&data)).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(f.snapshot(), before, "a refused blob was stored");
}

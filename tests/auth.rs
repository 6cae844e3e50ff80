//! Authentication, authorization and TLS against a real server on
//! 127.0.0.1:0: Basic on every request, the Docker token flow (GET and the
//! OAuth2 POST form, refresh tokens), the policy per repository and
//! action on `/v2` and on the REST facade, list filtering, failed-login
//! limits, the `oci-client` crate with Basic credentials over HTTP and
//! over TLS with a self-signed CA, and every refusal: no credentials,
//! wrong password, unknown user, a pull-only user pushing, a token for
//! another repository, expired / `alg: none` / foreign-key / tampered
//! tokens, anonymous pull on and off. Each refusal is checked for its
//! status and code, and for changing nothing in the store.
//!
//! Keys and certificates are generated at test time (no committed
//! private keys); the TLS test uses the `openssl` command.

mod common;

use std::path::{Path, PathBuf};

use base64::Engine as _;
use bpf_registry::auth::token::{unix_now, ISSUER, SERVICE};
use bpf_registry::auth::TokenKey;
use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const POLICY: &str = r#"
[groups]
writers = ["alice"]

[[grant]]
groups = ["writers"]
repositories = ["bpf/**"]
actions = ["pull", "push", "delete"]

[[grant]]
users = ["bob"]
repositories = ["bpf/**"]
actions = ["pull"]

[[grant]]
users = ["alice"]
repositories = ["other/*"]
actions = ["pull", "push"]

[[grant]]
users = ["admin"]
repositories = ["**"]
actions = ["*"]

[anonymous]
repositories = ["public/*"]
actions = ["pull"]
"#;

const USERS: [&str; 5] = ["alice", "bob", "admin", "carol", "dave"];

fn password(user: &str) -> String {
    format!("{user}-Pa55word")
}

/// A server with authentication on, the files it reads, and the token key
/// (written by the test so it can forge tokens).
struct Fixture {
    server: TestServer,
    dir: tempfile::TempDir,
    key: TokenKey,
}

impl Fixture {
    async fn start(policy: Option<&str>) -> Fixture {
        Self::start_with(policy, &[]).await
    }

    async fn start_with(policy: Option<&str>, extra: &[(&str, &str)]) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        write_htpasswd(&dir.path().join("htpasswd"), &USERS);
        let key = TokenKey::generate().expect("key");
        std::fs::write(dir.path().join("token.pem"), key.to_pem().expect("pem"))
            .expect("write key");
        let htpasswd = path_str(&dir.path().join("htpasswd"));
        let key_path = path_str(&dir.path().join("token.pem"));
        let policy_path = path_str(&dir.path().join("policy.toml"));
        let mut env: Vec<(&str, &str)> = vec![
            ("BPF_REGISTRY_AUTH_HTPASSWD", &htpasswd),
            ("BPF_REGISTRY_TOKEN_KEY", &key_path),
        ];
        if let Some(p) = policy {
            std::fs::write(dir.path().join("policy.toml"), p).expect("write policy");
            env.push(("BPF_REGISTRY_AUTH_POLICY", &policy_path));
        }
        env.extend_from_slice(extra);
        let server = TestServer::start_with_env(&env).await;
        Fixture { server, dir, key }
    }

    fn htpasswd(&self) -> PathBuf {
        self.dir.path().join("htpasswd")
    }

    /// The repositories folder's files (to prove a refusal changed nothing).
    fn snapshot(&self) -> Vec<String> {
        let mut v = self.server.files_under("repositories");
        v.extend(self.server.files_under("blobs"));
        v
    }

    async fn token(&self, user: Option<&str>, scope: &str) -> String {
        let mut rb = reqwest::Client::new()
            .get(self.server.url("/token"))
            .query(&[("service", SERVICE), ("scope", scope)]);
        if let Some(u) = user {
            rb = rb.basic_auth(u, Some(password(u)));
        }
        let r = rb.send().await.expect("send");
        assert_eq!(r.status(), StatusCode::OK, "token for {user:?} {scope}");
        let v: Value = r.json().await.expect("json");
        assert_eq!(v["token"], v["access_token"]);
        v["token"].as_str().expect("token").to_string()
    }

    /// Signs arbitrary claims with the registry's key.
    fn forge(&self, claims: Value) -> String {
        self.key
            .sign_raw(
                &json!({"typ": "JWT", "alg": "ES256", "kid": self.key.kid()}),
                &claims,
            )
            .expect("sign")
    }
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn write_htpasswd(path: &Path, users: &[&str]) {
    let mut text = String::from("# test users\n");
    for u in users {
        let h = bcrypt::hash(password(u), 4).expect("bcrypt");
        // `htpasswd -B` writes $2y$.
        text.push_str(&format!("{u}:{}\n", h.replacen("$2b$", "$2y$", 1)));
    }
    std::fs::write(path, text).expect("write htpasswd");
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
    basic_with(user, &password(user))
}

fn basic_with(user: &str, pw: &str) -> reqwest::Client {
    let b = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"));
    with_auth(&format!("Basic {b}"))
}

fn bearer(token: &str) -> reqwest::Client {
    with_auth(&format!("Bearer {token}"))
}

fn b64url(v: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
}

/// Parses `Bearer k="v",k2="v2"` into pairs.
fn challenge(r: &reqwest::Response) -> Vec<(String, String)> {
    let v = header(r, "www-authenticate")
        .unwrap_or_else(|| panic!("no WWW-Authenticate on {}", r.status()));
    let rest = v
        .strip_prefix("Bearer ")
        .unwrap_or_else(|| panic!("not a Bearer challenge: {v}"));
    rest.split("\",")
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim_matches('"').to_string()))
        .collect()
}

fn param<'a>(c: &'a [(String, String)], k: &str) -> Option<&'a str> {
    c.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
}

async fn expect_401(r: reqwest::Response, scope: Option<&str>, error: Option<&str>) {
    let c = challenge(&r);
    assert!(
        param(&c, "realm").is_some_and(|r| r.ends_with("/token")),
        "{c:?}"
    );
    assert_eq!(param(&c, "service"), Some("bpf-registry"), "{c:?}");
    assert_eq!(param(&c, "scope"), scope, "{c:?}");
    assert_eq!(param(&c, "error"), error, "{c:?}");
    assert_oci_error(r, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
}

fn manifest_for(config_digest: &str, layer_digest: &str, layer_len: usize) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": BPF_CONFIG, "digest": config_digest, "size": 2},
        "layers": [{"mediaType": LAYER_TAR_ZSTD, "digest": layer_digest, "size": layer_len}],
    }))
    .expect("json")
}

/// Pushes a small image as `client`; returns the manifest digest.
async fn push(f: &Fixture, client: &reqwest::Client, repo: &str, tag: &str, seed: u64) -> String {
    let (d, _) = f
        .server
        .push_image(
            client,
            repo,
            tag,
            b"{}",
            &[&pseudo_random(300, seed)],
            json!({}),
        )
        .await;
    d
}

// ---- auth off ----------------------------------------------------------

#[tokio::test]
async fn without_htpasswd_everything_is_open_as_before() {
    let s = TestServer::start().await;
    let c = client();
    let r = c.get(s.url("/v2/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(header(&r, "www-authenticate").is_none());
    let (d, _) = s
        .push_image(&c, "bpf/open", "v1", b"{}", &[b"layer"], json!({}))
        .await;
    let r = c
        .get(s.url(&format!("/v2/bpf/open/manifests/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // No token endpoint when authentication is off.
    let r = c.get(s.url("/token")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

// ---- challenges and Basic ----------------------------------------------

#[tokio::test]
async fn base_without_credentials_is_401_with_the_token_realm() {
    let f = Fixture::start(Some(POLICY)).await;
    let r = client().get(f.server.url("/v2/")).send().await.unwrap();
    assert_eq!(
        header(&r, "www-authenticate").as_deref(),
        Some(
            format!(
                "Bearer realm=\"http://{}/token\",service=\"bpf-registry\"",
                f.server.registry()
            )
            .as_str()
        )
    );
    assert_eq!(
        header(&r, "docker-distribution-api-version").as_deref(),
        Some("registry/2.0")
    );
    expect_401(r, None, None).await;
    // With Basic credentials: 200.
    let r = basic("bob").get(f.server.url("/v2/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // /healthz stays open.
    let r = client().get(f.server.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn external_url_sets_the_realm() {
    let f = Fixture::start_with(
        None,
        &[(
            "BPF_REGISTRY_EXTERNAL_URL",
            "https://registry.example:8443/",
        )],
    )
    .await;
    let r = client().get(f.server.url("/v2/")).send().await.unwrap();
    let c = challenge(&r);
    assert_eq!(
        param(&c, "realm"),
        Some("https://registry.example:8443/token")
    );
}

#[tokio::test]
async fn basic_push_and_pull_follow_the_policy() {
    let f = Fixture::start(Some(POLICY)).await;
    let alice = basic("alice");
    let d = push(&f, &alice, "bpf/net/xdp", "v1", 1).await;
    // bob may pull it
    let r = basic("bob")
        .get(f.server.url("/v2/bpf/net/xdp/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "docker-content-digest"), Some(d.clone()));
    let r = basic("bob")
        .get(f.server.url("/v2/bpf/net/xdp/tags/list"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // admin may delete; alice may delete in bpf/**
    let r = alice
        .delete(f.server.url("/v2/bpf/net/xdp/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
}

#[tokio::test]
async fn no_credentials_wrong_password_and_unknown_user_are_401_and_change_nothing() {
    let f = Fixture::start(Some(POLICY)).await;
    let alice = basic("alice");
    push(&f, &alice, "bpf/x", "v1", 2).await;
    let before = f.snapshot();
    let layer = pseudo_random(100, 99);
    let digest = sha256(&layer);
    let up = format!("/v2/bpf/x/blobs/uploads/?digest={digest}");
    let manifest = manifest_for(&digest, &digest, layer.len());
    for (what, c) in [
        ("no credentials", client()),
        ("wrong password", basic_with("alice", "not-her-password")),
        ("unknown user", basic_with("mallory", "whatever")),
        ("malformed header", with_auth("Basic !!!not-base64")),
        ("unknown scheme", with_auth("Digest username=alice")),
    ] {
        let r = c
            .post(f.server.url(&up))
            .body(layer.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{what}");
        if what == "no credentials" {
            expect_401(r, Some("repository:bpf/x:pull,push"), None).await;
        } else {
            expect_401(r, None, None).await;
        }
        let r = c
            .put(f.server.url("/v2/bpf/x/manifests/v2"))
            .header("content-type", OCI_MANIFEST)
            .body(manifest.clone())
            .send()
            .await
            .unwrap();
        assert_oci_error(r, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
        let r = c
            .delete(f.server.url("/v2/bpf/x/manifests/v1"))
            .send()
            .await
            .unwrap();
        assert_oci_error(r, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
        let r = c
            .get(f.server.url("/v2/bpf/x/manifests/v1"))
            .send()
            .await
            .unwrap();
        assert_oci_error(r, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
    }
    assert_eq!(f.snapshot(), before, "a refused request changed the store");
    // The right password still works (the failures above were spread over
    // several users, under the limit).
    let r = alice
        .get(f.server.url("/v2/bpf/x/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn pull_only_user_pushing_or_deleting_is_403_denied_and_changes_nothing() {
    let f = Fixture::start(Some(POLICY)).await;
    let d = push(&f, &basic("alice"), "bpf/x", "v1", 3).await;
    let before = f.snapshot();
    let bob = basic("bob");
    let layer = pseudo_random(64, 5);
    let digest = sha256(&layer);
    let r = bob
        .post(
            f.server
                .url(&format!("/v2/bpf/x/blobs/uploads/?digest={digest}")),
        )
        .body(layer.clone())
        .send()
        .await
        .unwrap();
    assert!(header(&r, "www-authenticate").is_none());
    let v = assert_oci_error(r, StatusCode::FORBIDDEN, "DENIED").await;
    assert_eq!(
        v["errors"][0]["detail"]["scope"],
        "repository:bpf/x:pull,push"
    );
    let r = bob
        .post(f.server.url("/v2/bpf/x/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_oci_error(r, StatusCode::FORBIDDEN, "DENIED").await;
    let r = bob
        .put(f.server.url("/v2/bpf/x/manifests/v2"))
        .header("content-type", OCI_MANIFEST)
        .body(manifest_for(&digest, &digest, 64))
        .send()
        .await
        .unwrap();
    assert_oci_error(r, StatusCode::FORBIDDEN, "DENIED").await;
    for path in [
        format!("/v2/bpf/x/manifests/{d}"),
        "/v2/bpf/x/manifests/v1".to_string(),
    ] {
        let r = bob.delete(f.server.url(&path)).send().await.unwrap();
        assert_oci_error(r, StatusCode::FORBIDDEN, "DENIED").await;
    }
    // Pull on a repository outside the grant: 403 for a known user.
    let r = bob
        .get(f.server.url("/v2/other/x/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_oci_error(r, StatusCode::FORBIDDEN, "DENIED").await;
    assert_eq!(f.snapshot(), before);
    // The manifest is still there.
    let r = bob
        .get(f.server.url("/v2/bpf/x/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn failed_logins_are_limited_per_user_and_address_with_retry_after() {
    let f = Fixture::start(Some(POLICY)).await;
    let url = f.server.url("/v2/");
    for i in 0..5 {
        let r = basic_with("carol", "guess").get(&url).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    // Over the limit: even the right password is refused, with 429.
    let r = basic("carol").get(&url).send().await.unwrap();
    let retry: u64 = header(&r, "retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_oci_error(r, StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS").await;
    // The token endpoint is limited too.
    let r = reqwest::Client::new()
        .get(f.server.url("/token"))
        .basic_auth("carol", Some(password("carol")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(header(&r, "retry-after").is_some());
    // Another user from the same address is not affected.
    let r = basic("dave").get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

// ---- tokens ------------------------------------------------------------

#[tokio::test]
async fn token_flow_grants_the_intersection_of_asked_and_allowed() {
    let f = Fixture::start(Some(POLICY)).await;
    let r = reqwest::Client::new()
        .get(f.server.url("/token"))
        .query(&[
            ("service", SERVICE),
            ("scope", "repository:bpf/x:pull,push,delete"),
            ("scope", "repository:other/x:pull,delete"),
            ("scope", "repository:secret/x:pull"),
        ])
        .basic_auth("alice", Some(password("alice")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "cache-control").as_deref(), Some("no-store"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["expires_in"], 300);
    assert!(v["issued_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        v["scope"],
        "repository:bpf/x:pull,push,delete repository:other/x:pull"
    );
    let token = v["token"].as_str().unwrap();
    // The JWT is ES256 with our claims.
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3);
    let header_json: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(parts[0])
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header_json["alg"], "ES256");
    assert_eq!(header_json["kid"], f.key.kid());
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(parts[1])
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["iss"], ISSUER);
    assert_eq!(claims["aud"], SERVICE);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["access"].as_array().unwrap().len(), 2);

    // Push with the bearer token.
    let t = bearer(token);
    let d = push(&f, &t, "bpf/x", "v1", 7).await;
    let r = t
        .get(f.server.url(&format!("/v2/bpf/x/manifests/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = t.get(f.server.url("/v2/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // Wrong password at the token endpoint: 401.
    let r = reqwest::Client::new()
        .get(f.server.url("/token"))
        .query(&[("service", SERVICE), ("scope", "repository:bpf/x:pull")])
        .basic_auth("alice", Some("nope"))
        .send()
        .await
        .unwrap();
    assert_oci_error(r, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
    // Another service: 400.
    let r = reqwest::Client::new()
        .get(f.server.url("/token"))
        .query(&[("service", "someone-else")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn token_for_repository_a_used_on_b_is_refused() {
    let f = Fixture::start(Some(POLICY)).await;
    push(&f, &basic("admin"), "bpf/b", "v1", 8).await;
    push(&f, &basic("admin"), "secret/x", "v1", 9).await;
    let before = f.snapshot();
    let t = bearer(&f.token(Some("alice"), "repository:bpf/a:pull,push").await);
    // alice could get a token for bpf/b: 401 insufficient_scope, naming it.
    let r = t
        .get(f.server.url("/v2/bpf/b/manifests/v1"))
        .send()
        .await
        .unwrap();
    expect_401(r, Some("repository:bpf/b:pull"), Some("insufficient_scope")).await;
    let r = t
        .post(f.server.url("/v2/bpf/b/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    expect_401(
        r,
        Some("repository:bpf/b:pull,push"),
        Some("insufficient_scope"),
    )
    .await;
    // ... but never for secret/x: 403.
    let r = t
        .get(f.server.url("/v2/secret/x/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_oci_error(r, StatusCode::FORBIDDEN, "DENIED").await;
    // A pull token does not push.
    let t = bearer(&f.token(Some("alice"), "repository:bpf/b:pull").await);
    let r = t
        .delete(f.server.url("/v2/bpf/b/manifests/v1"))
        .send()
        .await
        .unwrap();
    expect_401(
        r,
        Some("repository:bpf/b:delete"),
        Some("insufficient_scope"),
    )
    .await;
    // bob's token never grants push, however asked.
    let t = bearer(&f.token(Some("bob"), "repository:bpf/b:pull,push").await);
    let r = t
        .post(f.server.url("/v2/bpf/b/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_oci_error(r, StatusCode::FORBIDDEN, "DENIED").await;
    assert_eq!(f.snapshot(), before);
}

#[tokio::test]
async fn forged_expired_and_foreign_tokens_are_401_invalid_token() {
    let f = Fixture::start(Some(POLICY)).await;
    push(&f, &basic("alice"), "bpf/x", "v1", 10).await;
    let before = f.snapshot();
    let now = unix_now();
    let claims = |exp: i64| {
        json!({
            "iss": ISSUER, "sub": "alice", "aud": SERVICE,
            "exp": exp, "nbf": now - 10, "iat": now - 10, "jti": "t",
            "access": [{"type": "repository", "name": "bpf/x", "actions": ["pull", "push", "delete"]}],
        })
    };
    let good = f.forge(claims(now + 300));
    // Sanity: the forged-but-properly-signed token works.
    let r = bearer(&good)
        .get(f.server.url("/v2/bpf/x/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    let expired = f.forge(claims(now - 1));
    let unsigned = format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(&serde_json::to_vec(&claims(now + 300)).unwrap())
    );
    let other_key = TokenKey::generate().unwrap();
    let foreign = other_key
        .sign_raw(&json!({"alg": "ES256", "typ": "JWT"}), &claims(now + 300))
        .unwrap();
    let foreign_with_our_kid = other_key
        .sign_raw(
            &json!({"alg": "ES256", "typ": "JWT", "kid": f.key.kid()}),
            &claims(now + 300),
        )
        .unwrap();
    // Tampered: bob's pull-only token, with push added to the claims.
    let bobs = f.token(Some("bob"), "repository:bpf/x:pull").await;
    let p: Vec<&str> = bobs.split('.').collect();
    let mut c: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(p[1])
            .unwrap(),
    )
    .unwrap();
    c["access"][0]["actions"] = json!(["pull", "push", "delete"]);
    let tampered = format!(
        "{}.{}.{}",
        p[0],
        b64url(&serde_json::to_vec(&c).unwrap()),
        p[2]
    );
    let mut wrong_aud = claims(now + 300);
    wrong_aud["aud"] = json!("another-registry");
    let wrong_aud = f.forge(wrong_aud);
    let mut wrong_iss = claims(now + 300);
    wrong_iss["iss"] = json!("evil");
    let wrong_iss = f.forge(wrong_iss);
    let hs256 = f
        .key
        .sign_raw(&json!({"alg": "HS256"}), &claims(now + 300))
        .unwrap();

    let layer = pseudo_random(50, 11);
    let digest = sha256(&layer);
    for (what, tok) in [
        ("expired", expired.as_str()),
        ("alg none", unsigned.as_str()),
        ("another key", foreign.as_str()),
        ("another key, our kid", foreign_with_our_kid.as_str()),
        ("tampered claims", tampered.as_str()),
        ("wrong audience", wrong_aud.as_str()),
        ("wrong issuer", wrong_iss.as_str()),
        ("HS256", hs256.as_str()),
        ("garbage", "not-a-jwt"),
    ] {
        let t = bearer(tok);
        let r = t
            .get(f.server.url("/v2/bpf/x/manifests/v1"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{what}");
        expect_401(r, None, Some("invalid_token")).await;
        let r = t
            .post(
                f.server
                    .url(&format!("/v2/bpf/x/blobs/uploads/?digest={digest}")),
            )
            .body(layer.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{what}");
        let r = t
            .delete(f.server.url("/v2/bpf/x/manifests/v1"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{what}");
        let r = t.get(f.server.url("/artifacts")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{what} (REST)");
    }
    assert_eq!(f.snapshot(), before);
}

#[tokio::test]
async fn oauth2_password_and_refresh_grants() {
    let f = Fixture::start(Some(POLICY)).await;
    let form = |pairs: &[(&str, &str)]| {
        reqwest::Client::new()
            .post(f.server.url("/token"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(serde_urlencoded::to_string(pairs).unwrap())
    };
    let r = form(&[
        ("grant_type", "password"),
        ("username", "alice"),
        ("password", &password("alice")),
        ("service", SERVICE),
        (
            "scope",
            "repository:bpf/x:pull,push repository:other/y:pull",
        ),
        ("client_id", "test"),
        ("access_type", "offline"),
    ])
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    let access = v["access_token"].as_str().unwrap().to_string();
    let refresh = v["refresh_token"].as_str().unwrap().to_string();
    assert_eq!(
        v["scope"],
        "repository:bpf/x:pull,push repository:other/y:pull"
    );
    push(&f, &bearer(&access), "bpf/x", "v1", 12).await;
    // A refresh token is not an access token.
    let r = bearer(&refresh)
        .get(f.server.url("/v2/"))
        .send()
        .await
        .unwrap();
    expect_401(r, None, Some("invalid_token")).await;
    // Refresh grant.
    let r = form(&[
        ("grant_type", "refresh_token"),
        ("refresh_token", &refresh),
        ("service", SERVICE),
        ("scope", "repository:bpf/x:pull"),
    ])
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    let t = v["access_token"].as_str().unwrap();
    let r = bearer(t)
        .get(f.server.url("/v2/bpf/x/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Wrong password, unknown grant, not a form.
    let r = form(&[
        ("grant_type", "password"),
        ("username", "alice"),
        ("password", "x"),
    ])
    .send()
    .await
    .unwrap();
    assert_oci_error(r, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
    let r = form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = reqwest::Client::new()
        .post(f.server.url("/token"))
        .json(&json!({"grant_type": "password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // GET with offline_token=true also hands out a refresh token.
    let r = reqwest::Client::new()
        .get(f.server.url("/token"))
        .query(&[("service", SERVICE), ("offline_token", "true")])
        .basic_auth("alice", Some(password("alice")))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert!(v["refresh_token"].is_string());

    // Changing alice's password (the file is re-read when it changes)
    // revokes her refresh tokens and the old password.
    let h = bcrypt::hash("brand-new-password", 4).unwrap();
    let text = std::fs::read_to_string(f.htpasswd()).unwrap();
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("alice:") {
                format!("alice:{h}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(f.htpasswd(), text).unwrap();
    // Polled a few times only: each failure counts towards the login limit.
    let mut reloaded = false;
    for _ in 0..4 {
        tokio::time::sleep(bpf_registry::auth::RELOAD_INTERVAL).await;
        let r = basic_with("alice", "brand-new-password")
            .get(f.server.url("/v2/"))
            .send()
            .await
            .unwrap();
        if r.status() == StatusCode::OK {
            reloaded = true;
            break;
        }
    }
    assert!(reloaded, "the changed htpasswd file was not picked up");
    let r = form(&[("grant_type", "refresh_token"), ("refresh_token", &refresh)])
        .send()
        .await
        .unwrap();
    assert_oci_error(r, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
    let r = basic("alice")
        .get(f.server.url("/v2/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

// ---- anonymous ---------------------------------------------------------

#[tokio::test]
async fn anonymous_pull_is_on_only_where_the_policy_says() {
    let f = Fixture::start(Some(POLICY)).await;
    push(&f, &basic("admin"), "public/tools", "v1", 13).await;
    push(&f, &basic("admin"), "bpf/x", "v1", 14).await;
    let before = f.snapshot();
    let anon = client();
    let r = anon
        .get(f.server.url("/v2/public/tools/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = anon
        .get(f.server.url("/v2/public/tools/tags/list"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Pushes begin with a blob HEAD: its challenge offers pull,push.
    let r = anon
        .head(f.server.url(&format!("/v2/bpf/x/blobs/{}", sha256(b"{}"))))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        param(&challenge(&r), "scope"),
        Some("repository:bpf/x:pull,push")
    );
    let r = anon
        .get(f.server.url("/v2/bpf/x/manifests/v1"))
        .send()
        .await
        .unwrap();
    expect_401(r, Some("repository:bpf/x:pull"), None).await;
    let r = anon
        .post(f.server.url("/v2/public/tools/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    expect_401(r, Some("repository:public/tools:pull,push"), None).await;
    let r = anon
        .delete(f.server.url("/v2/public/tools/manifests/v1"))
        .send()
        .await
        .unwrap();
    expect_401(r, Some("repository:public/tools:delete"), None).await;
    // An anonymous token gets pull on public/*, nothing else.
    let t = f
        .token(
            None,
            "repository:public/tools:pull,push repository:bpf/x:pull",
        )
        .await;
    let c = bearer(&t);
    let r = c
        .get(f.server.url("/v2/public/tools/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = c
        .post(f.server.url("/v2/public/tools/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    expect_401(
        r,
        Some("repository:public/tools:pull,push"),
        Some("insufficient_scope"),
    )
    .await;
    let r = c
        .get(f.server.url("/v2/bpf/x/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(f.snapshot(), before);

    // Without a policy file: anonymous may do nothing, users everything.
    let g = Fixture::start(None).await;
    push(&g, &basic("bob"), "public/tools", "v1", 15).await;
    let r = client()
        .get(g.server.url("/v2/public/tools/manifests/v1"))
        .send()
        .await
        .unwrap();
    expect_401(r, Some("repository:public/tools:pull"), None).await;
    let r = basic("carol")
        .delete(g.server.url("/v2/public/tools/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
}

// ---- lists, mounts, catalog ----------------------------------------------

#[tokio::test]
async fn catalog_shows_only_what_the_caller_may_pull() {
    let f = Fixture::start(Some(POLICY)).await;
    let admin = basic("admin");
    for repo in ["bpf/a", "other/b", "public/c", "secret/d"] {
        push(&f, &admin, repo, "v1", 16).await;
    }
    let repos = |v: Value| -> Vec<String> {
        v["repositories"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap().to_string())
            .collect()
    };
    let get = |c: reqwest::Client| {
        let url = f.server.url("/v2/_catalog");
        async move { c.get(url).send().await.unwrap() }
    };
    let r = get(admin.clone()).await;
    assert_eq!(
        repos(r.json().await.unwrap()),
        ["bpf/a", "other/b", "public/c", "secret/d"]
    );
    let r = get(basic("alice")).await;
    assert_eq!(
        repos(r.json().await.unwrap()),
        ["bpf/a", "other/b", "public/c"]
    );
    let r = get(basic("bob")).await;
    assert_eq!(repos(r.json().await.unwrap()), ["bpf/a", "public/c"]);
    let r = get(client()).await;
    assert_eq!(repos(r.json().await.unwrap()), ["public/c"]);
    let t = f.token(Some("bob"), "registry:catalog:*").await;
    let r = get(bearer(&t)).await;
    assert_eq!(repos(r.json().await.unwrap()), ["bpf/a", "public/c"]);
    // A token without the catalog scope: 401 insufficient_scope.
    let t = f.token(Some("bob"), "repository:bpf/a:pull").await;
    let r = get(bearer(&t)).await;
    expect_401(r, Some("registry:catalog:*"), Some("insufficient_scope")).await;
}

#[tokio::test]
async fn mount_from_a_repository_the_caller_cannot_pull_becomes_a_plain_upload() {
    let f = Fixture::start(Some(POLICY)).await;
    let admin = basic("admin");
    let secret = pseudo_random(200, 17);
    let d = f.server.push_blob(&admin, "secret/x", &secret).await;
    let alice = basic("alice");
    let r = alice
        .post(
            f.server
                .url(&format!("/v2/bpf/y/blobs/uploads/?mount={d}&from=secret/x")),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::ACCEPTED,
        "the mount must not happen"
    );
    let r = alice
        .head(f.server.url(&format!("/v2/bpf/y/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // From a repository she may pull, the mount works.
    let mine = f
        .server
        .push_blob(&alice, "bpf/z", &pseudo_random(100, 18))
        .await;
    let r = alice
        .post(
            f.server
                .url(&format!("/v2/bpf/y/blobs/uploads/?mount={mine}&from=bpf/z")),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
}

// ---- REST facade -------------------------------------------------------

async fn post_artifact(
    f: &Fixture,
    c: &reqwest::Client,
    name: &str,
    version: &str,
) -> reqwest::Response {
    c.post(f.server.url("/artifacts"))
        .json(&json!({
            "name": name, "version": version, "type": "map", "architecture": "x86_64",
            "data": base64::engine::general_purpose::STANDARD.encode(format!("payload of {name} {version}")),
        }))
        .send()
        .await
        .unwrap()
}

async fn created_id(r: reqwest::Response) -> String {
    assert_eq!(r.status(), StatusCode::CREATED);
    let v: Value = r.json().await.unwrap();
    v["id"].as_str().unwrap().to_string()
}

fn names(v: &Value, key: &str) -> Vec<String> {
    let mut n: Vec<String> = v[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap().to_string())
        .collect();
    n.sort();
    n
}

#[tokio::test]
async fn rest_facade_follows_the_policy() {
    let f = Fixture::start(Some(POLICY)).await;
    let (alice, bob, admin, anon) = (basic("alice"), basic("bob"), basic("admin"), client());
    let bpf_id = created_id(post_artifact(&f, &alice, "bpf/prog", "1.0.0").await).await;
    let other_id = created_id(post_artifact(&f, &alice, "other/prog", "1.0.0").await).await;
    let public_id = created_id(post_artifact(&f, &admin, "public/prog", "1.0.0").await).await;
    let secret_id = created_id(post_artifact(&f, &admin, "secret/prog", "1.0.0").await).await;
    for id in [&bpf_id, &other_id, &public_id, &secret_id] {
        let r = admin
            .post(f.server.url(&format!("/artifacts/{id}/hosts")))
            .json(&json!({"host_id": "host-1"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let before = f.snapshot();

    // POST /artifacts: push on `name`.
    let r = post_artifact(&f, &bob, "bpf/prog", "2.0.0").await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "denied");
    let r = post_artifact(&f, &alice, "secret/prog", "2.0.0").await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = post_artifact(&f, &anon, "public/prog", "2.0.0").await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(header(&r, "www-authenticate")
        .unwrap()
        .starts_with("Bearer realm="));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "unauthorized");
    let r = post_artifact(&f, &basic_with("alice", "wrong"), "bpf/prog", "2.0.0").await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // Reads need pull on the artifact's repository.
    let status = |c: &reqwest::Client, m: Method, path: String| {
        let rb = c.request(m, f.server.url(&path));
        async move { rb.send().await.unwrap().status() }
    };
    assert_eq!(
        status(&bob, Method::GET, format!("/artifacts/{bpf_id}")).await,
        StatusCode::OK
    );
    assert_eq!(
        status(&bob, Method::GET, format!("/artifacts/{bpf_id}/binary")).await,
        StatusCode::OK
    );
    assert_eq!(
        status(&bob, Method::GET, format!("/artifacts/{bpf_id}/hosts")).await,
        StatusCode::OK
    );
    // An artifact the caller may not read is answered like an unknown id
    // (no existence oracle).
    assert_eq!(
        status(&bob, Method::GET, format!("/artifacts/{other_id}")).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        status(&bob, Method::GET, format!("/artifacts/{secret_id}/binary")).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        status(&anon, Method::GET, format!("/artifacts/{public_id}")).await,
        StatusCode::OK
    );
    assert_eq!(
        status(&anon, Method::GET, format!("/artifacts/{bpf_id}")).await,
        StatusCode::UNAUTHORIZED
    );
    // Unknown ids: 404 for a user, 401 for nobody.
    let unknown = sha256(b"no such artifact");
    assert_eq!(
        status(&bob, Method::GET, format!("/artifacts/{unknown}")).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        status(&anon, Method::GET, format!("/artifacts/{unknown}")).await,
        StatusCode::UNAUTHORIZED
    );

    // Host associations need push; DELETE needs delete.
    let r = bob
        .post(f.server.url(&format!("/artifacts/{bpf_id}/hosts")))
        .json(&json!({"host_id": "host-2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        status(
            &bob,
            Method::DELETE,
            format!("/artifacts/{bpf_id}/hosts/host-1")
        )
        .await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        status(&bob, Method::DELETE, format!("/artifacts/{bpf_id}")).await,
        StatusCode::FORBIDDEN
    );
    // alice may push in other/* but not delete there.
    assert_eq!(
        status(&alice, Method::DELETE, format!("/artifacts/{other_id}")).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        status(&anon, Method::DELETE, format!("/artifacts/{public_id}")).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        f.snapshot(),
        before,
        "a refused REST request changed the store"
    );

    // Lists hold only what the caller may pull.
    let list = |c: &reqwest::Client, path: &str| {
        let rb = c.get(f.server.url(path));
        async move {
            let r = rb.send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            r.json::<Value>().await.unwrap()
        }
    };
    let all = ["bpf/prog", "other/prog", "public/prog", "secret/prog"];
    assert_eq!(names(&list(&admin, "/artifacts").await, "artifacts"), all);
    assert_eq!(
        names(&list(&alice, "/artifacts").await, "artifacts"),
        ["bpf/prog", "other/prog", "public/prog"]
    );
    assert_eq!(
        names(&list(&bob, "/artifacts").await, "artifacts"),
        ["bpf/prog", "public/prog"]
    );
    assert_eq!(
        names(&list(&anon, "/artifacts").await, "artifacts"),
        ["public/prog"]
    );
    assert_eq!(
        names(&list(&bob, "/artifacts?limit=1").await, "artifacts"),
        ["bpf/prog"]
    );
    assert_eq!(
        names(&list(&bob, "/artifacts/for-host/host-1").await, "artifacts"),
        ["bpf/prog", "public/prog"]
    );
    assert_eq!(
        names(
            &list(&anon, "/artifacts/for-host/host-1").await,
            "artifacts"
        ),
        ["public/prog"]
    );
    assert_eq!(
        names(
            &list(&admin, "/artifacts/for-host/host-1").await,
            "artifacts"
        ),
        all
    );

    // Allowed writes go through.
    assert_eq!(
        status(
            &alice,
            Method::DELETE,
            format!("/artifacts/{bpf_id}/hosts/host-1")
        )
        .await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        status(&alice, Method::DELETE, format!("/artifacts/{bpf_id}")).await,
        StatusCode::NO_CONTENT
    );
    let r = post_artifact(&f, &alice, "other/prog", "2.0.0").await;
    assert_eq!(r.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn rest_lists_ask_anonymous_callers_to_authenticate_when_nothing_is_public() {
    let f = Fixture::start(None).await;
    let r = client()
        .get(f.server.url("/artifacts"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = client()
        .get(f.server.url("/artifacts/for-host/h"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = basic("bob")
        .get(f.server.url("/artifacts"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

// ---- start-up errors -----------------------------------------------------

async fn start_error(env: &[(&str, String)]) -> String {
    let data = tempfile::tempdir().unwrap();
    let mut vars: Vec<(String, String)> = vec![
        ("BPF_REGISTRY_DATA_DIR".into(), path_str(data.path())),
        ("BPF_REGISTRY_LOG_LEVEL".into(), "ERROR".into()),
    ];
    vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.clone())));
    let config = bpf_registry::config::Config::from_lookup(|k| {
        vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    })
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let r = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        bpf_registry::run(listener, config, std::future::pending()),
    )
    .await
    .expect("the server should refuse to start");
    r.expect_err("the server should refuse to start")
        .to_string()
}

#[tokio::test]
async fn bad_files_stop_the_start_up_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let h = dir.path().join("htpasswd");
    let good = bcrypt::hash("pw", 4).unwrap();
    std::fs::write(&h, format!("alice:{good}\nbob:$apr1$salt$hash\n")).unwrap();
    let e = start_error(&[("BPF_REGISTRY_AUTH_HTPASSWD", path_str(&h))]).await;
    assert!(
        e.contains("BPF_REGISTRY_AUTH_HTPASSWD") && e.contains("line 2") && e.contains("bcrypt"),
        "{e}"
    );
    assert!(
        !e.contains("$apr1$salt$hash"),
        "the hash leaked into the error: {e}"
    );

    std::fs::write(&h, format!("alice:{good}\n")).unwrap();
    let p = dir.path().join("policy.toml");
    std::fs::write(&p, "[[grant]]\nusers = [\"alice\"]\nrepositories = [\"bpf/*\"]\nactions = [\"pull\", \"launch\"]\n").unwrap();
    let e = start_error(&[
        ("BPF_REGISTRY_AUTH_HTPASSWD", path_str(&h)),
        ("BPF_REGISTRY_AUTH_POLICY", path_str(&p)),
    ])
    .await;
    assert!(
        e.contains("BPF_REGISTRY_AUTH_POLICY") && e.contains("line 4") && e.contains("launch"),
        "{e}"
    );

    let k = dir.path().join("key.pem");
    std::fs::write(
        &k,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let e = start_error(&[
        ("BPF_REGISTRY_AUTH_HTPASSWD", path_str(&h)),
        ("BPF_REGISTRY_TOKEN_KEY", path_str(&k)),
    ])
    .await;
    assert!(e.contains("BPF_REGISTRY_TOKEN_KEY"), "{e}");
}

// ---- real clients: oci-client, over HTTP and over TLS ----------------------

mod oci {
    use super::*;
    use oci_client::client::{
        Certificate, CertificateEncoding, ClientConfig, ClientProtocol, Config, ImageLayer,
    };
    use oci_client::manifest::OciImageManifest;
    use oci_client::secrets::RegistryAuth;
    use oci_client::{Client, Reference};

    pub fn client(protocol: ClientProtocol, roots: Vec<Certificate>) -> Client {
        Client::new(ClientConfig {
            protocol,
            extra_root_certificates: roots,
            ..Default::default()
        })
    }

    pub fn artifact(payload: &[u8]) -> (Vec<ImageLayer>, Config, OciImageManifest) {
        let config = Config::new(b"{}".to_vec(), BPF_CONFIG.to_string(), None);
        let layers = vec![ImageLayer::new(
            payload.to_vec(),
            LAYER_TAR_ZSTD.to_string(),
            None,
        )];
        let manifest = OciImageManifest::build(&layers, &config, None);
        (layers, config, manifest)
    }

    /// Pushes as `pusher` with one client, pulls as `puller` with a fresh
    /// one (oci-client caches the credentials of its first use).
    pub async fn push_pull(
        make: impl Fn() -> Client,
        registry: &str,
        repo: &str,
        pusher: &str,
        puller: &str,
    ) {
        let r: Reference = format!("{registry}/{repo}:v1").parse().unwrap();
        let payload = pseudo_random(5000, 21);
        let (layers, config, manifest) = artifact(&payload);
        let auth = RegistryAuth::Basic(pusher.into(), password(pusher));
        make()
            .push(&r, &layers, config, &auth, Some(manifest))
            .await
            .expect("push");
        let auth = RegistryAuth::Basic(puller.into(), password(puller));
        let img = make()
            .pull(&r, &auth, vec![LAYER_TAR_ZSTD])
            .await
            .expect("pull");
        assert_eq!(img.layers[0].data.as_ref(), payload.as_slice());
    }

    pub fn pem_cert(data: Vec<u8>) -> Certificate {
        Certificate {
            encoding: CertificateEncoding::Pem,
            data,
        }
    }
}

#[tokio::test]
async fn oci_client_with_basic_credentials_pushes_and_pulls() {
    use oci_client::client::ClientProtocol;
    use oci_client::secrets::RegistryAuth;
    let f = Fixture::start(Some(POLICY)).await;
    let reg = f.server.registry();
    oci::push_pull(
        || oci::client(ClientProtocol::Http, Vec::new()),
        &reg,
        "bpf/oci/prog",
        "alice",
        "bob",
    )
    .await;
    // A fresh client (no cached token): bob may not push.
    let c = oci::client(ClientProtocol::Http, Vec::new());
    let r: oci_client::Reference = format!("{reg}/bpf/oci/prog:v2").parse().unwrap();
    let (layers, config, manifest) = oci::artifact(b"bob was here");
    let before = f.snapshot();
    let err = c
        .push(
            &r,
            &layers,
            config,
            &RegistryAuth::Basic("bob".into(), password("bob")),
            Some(manifest),
        )
        .await;
    let Err(err) = err else {
        panic!("a pull-only user must not push");
    };
    let msg = format!("{err:?}");
    assert!(
        msg.contains("DENIED") || msg.contains("403") || msg.contains("nauthorized"),
        "{msg}"
    );
    assert_eq!(f.snapshot(), before);
    // A wrong password: the pull fails.
    let c = oci::client(ClientProtocol::Http, Vec::new());
    let r: oci_client::Reference = format!("{reg}/bpf/oci/prog:v1").parse().unwrap();
    assert!(c
        .pull(
            &r,
            &RegistryAuth::Basic("alice".into(), "wrong".into()),
            vec![LAYER_TAR_ZSTD]
        )
        .await
        .is_err());
}

/// A CA and a server certificate for 127.0.0.1/localhost, made with the
/// `openssl` command. Returns (ca.pem, cert.pem, key.pem).
pub fn make_certs(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run openssl (install the openssl package)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        "ca.key",
    ]);
    run(&[
        "req",
        "-x509",
        "-new",
        "-key",
        "ca.key",
        "-sha256",
        "-days",
        "2",
        "-subj",
        "/CN=bpf-registry test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-out",
        "ca.pem",
    ]);
    run(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        "server.key",
    ]);
    run(&[
        "req",
        "-new",
        "-key",
        "server.key",
        "-subj",
        "/CN=127.0.0.1",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-sha256",
        "-extfile",
        "ext.cnf",
        "-out",
        "server.pem",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

/// A TLS server (the shared `TestServer` speaks plain HTTP).
struct TlsServer {
    addr: std::net::SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    _data: tempfile::TempDir,
}

impl TlsServer {
    async fn start(env: &[(&str, String)]) -> TlsServer {
        let data = tempfile::tempdir().unwrap();
        let mut vars: Vec<(String, String)> = vec![
            ("BPF_REGISTRY_DATA_DIR".into(), path_str(data.path())),
            ("BPF_REGISTRY_LOG_LEVEL".into(), "ERROR".into()),
        ];
        vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.clone())));
        let config = bpf_registry::config::Config::from_lookup(|k| {
            vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        })
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(bpf_registry::run(listener, config, async move {
            let _ = rx.await;
        }));
        TlsServer {
            addr,
            shutdown: Some(tx),
            task,
            _data: data,
        }
    }

    async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let r = tokio::time::timeout(std::time::Duration::from_secs(30), self.task)
            .await
            .expect("stopped in time");
        r.expect("no panic").expect("clean stop");
    }
}

#[tokio::test]
async fn tls_with_a_self_signed_ca_and_basic_credentials() {
    use oci_client::client::ClientProtocol;
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_certs(dir.path());
    let h = dir.path().join("htpasswd");
    write_htpasswd(&h, &USERS);
    let p = dir.path().join("policy.toml");
    std::fs::write(&p, POLICY).unwrap();
    let server = TlsServer::start(&[
        ("BPF_REGISTRY_AUTH_HTPASSWD", path_str(&h)),
        ("BPF_REGISTRY_AUTH_POLICY", path_str(&p)),
        ("BPF_REGISTRY_TLS_CERT", path_str(&cert)),
        ("BPF_REGISTRY_TLS_KEY", path_str(&key)),
    ])
    .await;
    let reg = server.addr.to_string();
    let roots = vec![oci::pem_cert(std::fs::read(&ca).unwrap())];
    // The challenge's realm is https; the token is fetched over TLS too.
    oci::push_pull(
        || oci::client(ClientProtocol::Https, roots.clone()),
        &reg,
        "bpf/tls/prog",
        "alice",
        "bob",
    )
    .await;

    // Without the CA the handshake fails; plain HTTP on the TLS port gets
    // no HTTP answer.
    let c = oci::client(ClientProtocol::Https, Vec::new());
    let r: oci_client::Reference = format!("{reg}/bpf/tls/prog:v1").parse().unwrap();
    assert!(c
        .pull(
            &r,
            &oci_client::secrets::RegistryAuth::Basic("bob".into(), password("bob")),
            vec![LAYER_TAR_ZSTD]
        )
        .await
        .is_err());
    let plain = reqwest::Client::new()
        .get(format!("http://{reg}/v2/"))
        .timeout(std::time::Duration::from_secs(10))
        .send()
        .await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());

    // curl with the CA: the realm names https.
    // (tokio's Command: the server runs on this test's runtime.)
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "-i", "--max-time", "20", "--cacert"])
        .arg(&ca)
        .arg(format!("https://{reg}/v2/"))
        .output()
        .await
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(
        text.starts_with("http/2 401") || text.starts_with("http/1.1 401"),
        "{text}"
    );
    assert!(
        text.contains(&format!("bearer realm=\"https://{reg}/token\"")),
        "{text}"
    );
    // A refused request with a body, over HTTP/2: a clean answer, not a
    // reset stream (curl exits 0 and sees the 401).
    let out = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "--http2",
            "--max-time",
            "20",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version}",
            "--cacert",
        ])
        .arg(&ca)
        .args(["-X", "POST", "--data-binary", "some bytes"])
        .arg(format!("https://{reg}/v2/bpf/tls/prog/blobs/uploads/"))
        .output()
        .await
        .expect("curl");
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "401 2");
    server.stop().await;

    // A certificate without its key, or a key that does not match: the
    // start-up stops, naming the variables.
    let e = start_error(&[
        ("BPF_REGISTRY_TLS_CERT", path_str(&cert)),
        ("BPF_REGISTRY_TLS_KEY", path_str(&dir.path().join("ca.key"))),
    ])
    .await;
    assert!(e.contains("BPF_REGISTRY_TLS"), "{e}");
}

#[tokio::test]
async fn token_parameters_given_twice_are_refused_except_scope() {
    let f = Fixture::start(Some(POLICY)).await;
    // `scope` repeats (Docker clients send one per repository).
    f.token(Some("alice"), "repository:bpf/x:pull").await;
    // Any other parameter twice is a 400: never "the first here, the
    // last there".
    let r = reqwest::Client::new()
        .get(f.server.url("/token"))
        .query(&[
            ("service", SERVICE),
            ("scope", "repository:bpf/x:pull"),
            ("service", SERVICE),
        ])
        .basic_auth("alice", Some(password("alice")))
        .send()
        .await
        .unwrap();
    assert_oci_error(r, StatusCode::BAD_REQUEST, "UNSUPPORTED").await;
    let form = serde_urlencoded::to_string([
        ("grant_type", "password"),
        ("username", "bob"),
        ("password", &password("alice")),
        ("username", "alice"),
        ("service", SERVICE),
    ])
    .unwrap();
    let r = reqwest::Client::new()
        .post(f.server.url("/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    assert_oci_error(r, StatusCode::BAD_REQUEST, "UNSUPPORTED").await;
}

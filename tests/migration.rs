//! Migration of a data directory written by the previous version (its
//! metadata a link tree: `repositories/<name>/_tags`, `_manifests`,
//! `_layers`, `_media_types`, and `_uploads/<id>/state`) into the metadata
//! store on the first start: everything readable afterwards, through OCI
//! and REST, an upload session resumable where it stood, and a `kill -9`
//! during the import resumed by the next start.
//!
//! The fixture generator below writes that layout file by file, as the
//! previous version did (see `storage::paths` of that version).

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// Writes one file of the legacy layout.
fn put(dir: &Path, rel: &str, data: &[u8]) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

/// A blob (content-addressed) and its descriptor.
fn blob(dir: &Path, media_type: &str, data: &[u8]) -> Value {
    let d = sha256(data);
    put(dir, &format!("blobs/sha256/{}", hex_of(&d)), data);
    json!({"mediaType": media_type, "digest": d, "size": data.len()})
}

/// Links a blob into a repository as the old version did.
fn link_layer(dir: &Path, repo: &str, desc: &Value) {
    let d = desc["digest"].as_str().unwrap();
    put(
        dir,
        &format!("repositories/{repo}/_layers/sha256/{}", hex_of(d)),
        d.as_bytes(),
    );
}

/// Stores and links a manifest; tags it when `tag` is given; records its
/// media type when the body has none.
fn manifest(
    dir: &Path,
    repo: &str,
    body: &Value,
    tag: Option<&str>,
    pushed_as: Option<&str>,
) -> String {
    let bytes = serde_json::to_vec(body).unwrap();
    let d = sha256(&bytes);
    put(dir, &format!("blobs/sha256/{}", hex_of(&d)), &bytes);
    put(
        dir,
        &format!("repositories/{repo}/_manifests/sha256/{}", hex_of(&d)),
        d.as_bytes(),
    );
    if let Some(t) = pushed_as {
        put(
            dir,
            &format!("repositories/{repo}/_media_types/sha256/{}", hex_of(&d)),
            t.as_bytes(),
        );
    }
    if let Some(tag) = tag {
        put(
            dir,
            &format!("repositories/{repo}/_tags/{tag}"),
            d.as_bytes(),
        );
    }
    d
}

/// One eBPF artifact of the REST facade (config, layer, manifest tagged
/// with its version) and a host association referrer; returns its id.
fn artifact(dir: &Path, repo: &str, name: &str, version: &str, host: Option<&str>) -> String {
    let config = blob(
        dir,
        "application/vnd.aegisflux.bpf.config.v1+json",
        serde_json::to_vec(&json!({"name": name, "version": version, "type": "program",
            "architecture": "x86_64", "description": "migrated"}))
        .unwrap()
        .as_slice(),
    );
    let layer = blob(
        dir,
        "application/vnd.oci.image.layer.v1.tar+zstd",
        format!("layer of {name} {version}").as_bytes(),
    );
    link_layer(dir, repo, &config);
    link_layer(dir, repo, &layer);
    let m = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.aegisflux.bpf.artifact.v1",
        "config": config, "layers": [layer],
        "annotations": {"org.opencontainers.image.version": version}});
    let id = manifest(dir, repo, &m, Some(version), None);
    if let Some(host) = host {
        let empty = blob(dir, "application/vnd.oci.empty.v1+json", b"{}");
        link_layer(dir, repo, &empty);
        let size = serde_json::to_vec(&m).unwrap().len();
        let assoc = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.aegisflux.bpf.host-association.v1",
            "config": empty, "layers": [empty],
            "subject": {"mediaType": OCI_MANIFEST, "digest": id, "size": size},
            "annotations": {"io.aegisflux.bpf.host-id": host}});
        manifest(dir, repo, &assoc, None, None);
    }
    id
}

/// A legacy store: artifacts with hosts, a Docker manifest without
/// `mediaType` (its pushed type recorded), an index over two images, and
/// an upload session with 5 acknowledged bytes (and 3 unacknowledged).
struct Legacy {
    ids: Vec<String>,
    docker: String,
    index: String,
    upload: String,
}

fn write_legacy(dir: &Path, artifacts: usize) -> Legacy {
    let mut ids = Vec::new();
    for i in 0..artifacts {
        let host = format!("host-{}", i % 7);
        ids.push(artifact(
            dir,
            "bpf/migrated",
            &format!("prog-{i}"),
            &format!("1.{i}"),
            Some(&host),
        ));
    }
    let config = blob(
        dir,
        "application/vnd.docker.container.image.v1+json",
        b"{\"os\":\"linux\"}",
    );
    link_layer(dir, "legacy/docker", &config);
    let docker = manifest(
        dir,
        "legacy/docker",
        &json!({"schemaVersion": 2, "config": config, "layers": []}),
        Some("latest"),
        Some(DOCKER_MANIFEST),
    );
    let mut children = Vec::new();
    for arch in ["amd64", "arm64"] {
        let cfg = blob(
            dir,
            "application/vnd.oci.image.config.v1+json",
            format!("{{\"architecture\":\"{arch}\"}}").as_bytes(),
        );
        link_layer(dir, "legacy/multi", &cfg);
        let m = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cfg, "layers": []});
        let bytes = serde_json::to_vec(&m).unwrap();
        let d = manifest(dir, "legacy/multi", &m, None, None);
        children.push(
            json!({"mediaType": OCI_MANIFEST, "digest": d, "size": bytes.len(),
                             "platform": {"os": "linux", "architecture": arch}}),
        );
    }
    let index = manifest(
        dir,
        "legacy/multi",
        &json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": children}),
        Some("v1"),
        None,
    );
    let upload = "0b7d3c52-6e4f-4f5e-9a3c-2d1e0f9a8b7c".to_string();
    put(dir, &format!("_uploads/{upload}/data"), b"hello123");
    put(
        dir,
        &format!("_uploads/{upload}/state"),
        br#"{"repository":"legacy/upload","offset":5,"started_at":1700000000}"#,
    );
    Legacy {
        ids,
        docker,
        index,
        upload,
    }
}

async fn check_migrated(s: &TestServer, legacy: &Legacy, artifacts: usize) {
    let c = client();
    // OCI: tags, the recorded media type, the index, the catalog.
    let v: Value = c
        .get(s.url("/v2/bpf/migrated/tags/list"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["tags"].as_array().unwrap().len(), artifacts);
    let r = c
        .get(s.url("/v2/legacy/docker/manifests/latest"))
        .header("accept", DOCKER_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "content-type").as_deref(), Some(DOCKER_MANIFEST));
    assert_eq!(
        header(&r, "docker-content-digest"),
        Some(legacy.docker.clone())
    );
    let r = c
        .get(s.url("/v2/legacy/multi/manifests/v1"))
        .header("accept", "application/vnd.oci.image.index.v1+json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        header(&r, "docker-content-digest"),
        Some(legacy.index.clone())
    );
    let v: Value = c
        .get(s.url("/v2/_catalog"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for repo in ["bpf/migrated", "legacy/docker", "legacy/multi"] {
        assert!(
            v["repositories"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r == repo),
            "{repo} in {v}"
        );
    }
    // REST: every artifact with its host; /for-host answers.
    for (i, id) in legacy.ids.iter().enumerate() {
        let v: Value = c
            .get(s.url(&format!("/artifacts/{id}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        // The REST name is the repository; each artifact is a version.
        assert_eq!(v["name"], "bpf/migrated", "{v}");
        assert_eq!(v["version"], format!("1.{i}"), "{v}");
        assert_eq!(v["hosts"], json!([format!("host-{}", i % 7)]), "{v}");
    }
    let v: Value = c
        .get(s.url("/artifacts/for-host/host-0"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        v["artifacts"].as_array().unwrap().len(),
        artifacts.div_ceil(7),
        "{v}"
    );
    // The upload resumes at its acknowledged offset; the unacknowledged
    // bytes are gone.
    let loc = format!("/v2/legacy/upload/blobs/uploads/{}", legacy.upload);
    let r = c.get(s.url(&loc)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&r, "range").as_deref(), Some("0-4"));
    let whole = b"hello world";
    let r = c
        .put(s.url(&format!("{loc}?digest={}", sha256(whole))))
        .header("content-range", format!("5-{}", whole.len() - 1))
        .body(&whole[5..])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);
}

#[tokio::test]
async fn the_first_start_imports_the_link_tree_of_the_previous_version() {
    // The previous version's layout: blob files in the data dir.
    if !common::engines::fs_blob_store_or_skip("the_first_start_imports_the_link_tree") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let legacy = write_legacy(&data, 20);
    let data_s = data.to_string_lossy().into_owned();
    let s = TestServer::start_with_env(&[("BPF_REGISTRY_DATA_DIR", data_s.as_str())]).await;
    check_migrated(&s, &legacy, 20).await;
    // A second start imports nothing again and changes nothing.
    let s = s.restart().await;
    let v: Value = client()
        .get(s.url("/v2/bpf/migrated/tags/list"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["tags"].as_array().unwrap().len(), 20);
    // Nothing of the old tree was deleted.
    assert!(data.join("repositories/bpf/migrated/_tags/1.0").exists());
}

/// Starts the binary on `data` with the store variables `env`, returns
/// the child.
fn spawn_binary(data: &Path, env: &[(String, String)]) -> std::process::Child {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    std::process::Command::new(env!("CARGO_BIN_EXE_bpf-registry"))
        .env("BPF_REGISTRY_DATA_DIR", data)
        .env("BPF_REGISTRY_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("BPF_REGISTRY_LOG_LEVEL", "ERROR")
        .env("BPF_REGISTRY_GC_INTERVAL", "0")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the binary")
}

#[tokio::test]
async fn a_kill_during_the_import_is_resumed_by_the_next_start() {
    if !common::engines::fs_blob_store_or_skip("a_kill_during_the_import") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let artifacts = 400;
    let legacy = write_legacy(&data, artifacts);
    // Every start, killed or not, and every check use one metadata store:
    // the configuration under test (a fresh database on PostgreSQL).
    let store_env = common::engines::fresh_server_env();
    let metadata_url = store_env
        .iter()
        .find(|(k, _)| k == common::engines::METADATA_VAR)
        .map(|(_, v)| v.clone());
    let open_metadata = || async {
        let config =
            bpf_registry::metadata::MetadataConfig::parse(metadata_url.as_deref(), &data).unwrap();
        bpf_registry::metadata::Metadata::open(&config)
            .await
            .unwrap()
    };
    // Kill -9 while the import runs, several times, at growing moments;
    // at least one kill must land mid-import (rows there, no mark).
    let mut interrupted = 0;
    for wait_ms in [400u64, 1000, 1500, 2500, 4000] {
        let mut child = spawn_binary(&data, &store_env);
        tokio::time::sleep(Duration::from_millis(wait_ms)).await;
        child.kill().unwrap();
        child.wait().unwrap();
        if metadata_url.is_none() && !data.join("metadata.db").exists() {
            continue;
        }
        let meta = open_metadata().await;
        let done = bpf_registry::metadata::schema::meta_value(&meta, "link_tree_imported")
            .await
            .unwrap()
            .is_some();
        let rows = meta.artifact_counts().await.unwrap().0 as usize;
        eprintln!("killed after {wait_ms} ms: {rows} artifacts imported, finished: {done}");
        if !done && rows > 0 {
            interrupted += 1;
        }
        if done {
            break;
        }
    }
    assert!(
        interrupted > 0,
        "no kill landed in the middle of the import"
    );
    let data_s = data.to_string_lossy().into_owned();
    let mut server_env = vec![("BPF_REGISTRY_DATA_DIR", data_s.as_str())];
    server_env.extend(store_env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let s = TestServer::start_with_env(&server_env).await;
    check_migrated(&s, &legacy, artifacts).await;
    let meta = open_metadata().await;
    assert_eq!(meta.artifact_counts().await.unwrap().0 as usize, artifacts);
}

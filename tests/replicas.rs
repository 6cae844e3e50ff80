//! Three replicas on one PostgreSQL database and one shared blob store
//! (a shared data directory here; the S3 configuration of the test command
//! runs them on Garage): a write acknowledged by any replica is what every
//! other replica answers at once (read-your-writes across replicas), and
//! an upload session's requests may go to any replica, round-robin.
//! Needs `BPF_TEST_POSTGRES` (the test command starts one); skipped with a
//! message without it, and failing under `CI=true`.

mod common;

use base64::Engine as _;
use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Three servers sharing one metadata database and one blob store; `None`
/// (the test skipped) without PostgreSQL.
async fn replicas() -> Option<(Vec<TestServer>, tempfile::TempDir)> {
    replicas_with(&[]).await
}

/// [`replicas`] with more variables for each server.
async fn replicas_with(extra: &[(&str, &str)]) -> Option<(Vec<TestServer>, tempfile::TempDir)> {
    if common::engines::postgres_base_url().is_none() {
        let msg = "BPF_TEST_POSTGRES is not set: the replica tests did not run";
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{msg}");
        }
        eprintln!("SKIPPED: {msg}");
        return None;
    }
    let db = common::engines::new_postgres_database();
    let shared = tempfile::tempdir().unwrap();
    let data = shared.path().join("data");
    let data_s = data.to_string_lossy().into_owned();
    let mut env: Vec<(&str, &str)> = vec![
        ("BPF_REGISTRY_METADATA", db.as_str()),
        ("BPF_REGISTRY_GC_INTERVAL", "0"),
    ];
    let blob_store = common::engines::fresh_server_env()
        .into_iter()
        .find(|(k, _)| k == "BPF_REGISTRY_BLOB_STORE");
    let blob_store_value;
    match &blob_store {
        Some((_, v)) => {
            blob_store_value = v.clone();
            env.push(("BPF_REGISTRY_BLOB_STORE", blob_store_value.as_str()));
        }
        // One blob store for all three: a shared data directory.
        None => env.push(("BPF_REGISTRY_DATA_DIR", data_s.as_str())),
    }
    env.extend_from_slice(extra);
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(TestServer::start_with_env(&env).await);
    }
    Some((servers, shared))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rest_create_on_one_replica_is_visible_on_another_at_once() {
    let Some((r, _shared)) = replicas().await else {
        return;
    };
    let c = client();
    for i in 0..5 {
        let host = format!("edge-{i}");
        let created: Value = c
            .post(r[0].url("/artifacts"))
            .json(
                &json!({"name": "fleet/xdp", "version": format!("1.{i}"), "type": "program",
                          "architecture": "x86_64", "data": "aGVsbG8=", "hosts": [host]}),
            )
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = created["id"].as_str().expect("id").to_string();
        // No wait, no retry: the acknowledgment is the commit.
        let v: Value = c
            .get(r[2].url(&format!("/artifacts/for-host/{host}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["artifacts"][0]["id"], id.as_str(), "{v}");
        let r1 = c
            .get(r[1].url(&format!("/artifacts/{id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r1.status(), StatusCode::OK);
        // Deleted on the third, gone on the first.
        let d = c
            .delete(r[2].url(&format!("/artifacts/{id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(d.status(), StatusCode::NO_CONTENT);
        let g = c
            .get(r[0].url(&format!("/artifacts/{id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(g.status(), StatusCode::NOT_FOUND);
    }
}

/// `for-host` caches each entry per repository counter: a write on
/// another replica (a second host associated, the artifact deleted) is in
/// the next answer of a replica that has the entry cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn for_host_entries_cached_on_one_replica_follow_writes_on_another() {
    let Some((r, _shared)) = replicas().await else {
        return;
    };
    let c = client();
    let get = |i: usize, host: &'static str| {
        let c = c.clone();
        let url = r[i].url(&format!("/artifacts/for-host/{host}"));
        async move {
            let v: Value = c.get(url).send().await.unwrap().json().await.unwrap();
            v
        }
    };
    let created: Value = c
        .post(r[0].url("/artifacts"))
        .json(&create_body("fleet/cached", "1.0.0", "x86_64", "aGVsbG8="))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().expect("id").to_string();
    let a = c
        .post(r[0].url(&format!("/artifacts/{id}/hosts")))
        .json(&json!({"host_id": "cache-1"}))
        .send()
        .await
        .unwrap();
    assert!(a.status().is_success(), "{}", a.status());
    let v = get(2, "cache-1").await;
    assert_eq!(v["artifacts"][0]["hosts"], json!(["cache-1"]), "{v}");
    // A second host, on another replica: the first host's entry lists it.
    let a = c
        .post(r[1].url(&format!("/artifacts/{id}/hosts")))
        .json(&json!({"host_id": "cache-2"}))
        .send()
        .await
        .unwrap();
    assert!(a.status().is_success(), "{}", a.status());
    let v = get(2, "cache-1").await;
    assert_eq!(
        v["artifacts"][0]["hosts"],
        json!(["cache-1", "cache-2"]),
        "{v}"
    );
    // Deleted on the first: gone from the third's answer.
    let d = c
        .delete(r[0].url(&format!("/artifacts/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(d.status(), StatusCode::NO_CONTENT);
    assert_eq!(get(2, "cache-1").await["artifacts"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chunked_push_round_robin_over_the_replicas_stores_the_exact_bytes() {
    let Some((r, _shared)) = replicas().await else {
        return;
    };
    let c = client();
    let data = pseudo_random(5 * 1024 * 1024 + 123, 42);
    let digest = sha256(&data);
    let resp = c
        .post(r[0].url("/v2/fleet/chunked/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let mut loc = location(&resp);
    let chunk = 1024 * 1024;
    for (n, part) in data.chunks(chunk).enumerate() {
        let replica = &r[(n + 1) % 3];
        let start = n * chunk;
        let resp = c
            .patch(replica.abs(&loc))
            .header(
                "content-range",
                format!("{start}-{}", start + part.len() - 1),
            )
            .header("content-type", "application/octet-stream")
            .body(part.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            StatusCode::ACCEPTED,
            "chunk {n} on replica {}",
            (n + 1) % 3
        );
        assert_eq!(
            header(&resp, "range"),
            Some(format!("0-{}", start + part.len() - 1))
        );
        loc = location(&resp);
    }
    let resp = c
        .put(r[2].abs(&format!(
            "{loc}{}digest={digest}",
            if loc.contains('?') { "&" } else { "?" }
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    for replica in &r {
        let got = c
            .get(replica.url(&format!("/v2/fleet/chunked/blobs/{digest}")))
            .send()
            .await
            .unwrap();
        assert_eq!(got.status(), StatusCode::OK);
        assert_eq!(sha256(&got.bytes().await.unwrap()), digest);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_racing_on_one_session_acknowledge_exactly_one_chunk() {
    let Some((r, _shared)) = replicas().await else {
        return;
    };
    let c = client();
    for trial in 0..10u64 {
        let resp = c
            .post(r[0].url("/v2/fleet/race/blobs/uploads/"))
            .send()
            .await
            .unwrap();
        let loc = location(&resp);
        let (a, b) = (
            pseudo_random(256 * 1024, trial),
            pseudo_random(256 * 1024, trial + 100),
        );
        let send = |replica: &TestServer, body: Vec<u8>| {
            let req = client()
                .patch(replica.abs(&loc))
                .header("content-range", format!("0-{}", body.len() - 1))
                .body(body);
            async move { req.send().await.unwrap().status() }
        };
        let (sa, sb) = tokio::join!(send(&r[1], a.clone()), send(&r[2], b.clone()));
        let won: Vec<bool> = [sa, sb]
            .iter()
            .map(|s| *s == StatusCode::ACCEPTED)
            .collect();
        assert_eq!(
            won.iter().filter(|w| **w).count(),
            1,
            "trial {trial}: {sa} {sb}"
        );
        for s in [sa, sb] {
            assert!(!s.is_server_error(), "trial {trial}: {s}");
        }
        // The acknowledged bytes are exactly the winner's.
        let winner = if won[0] { a } else { b };
        let put = c
            .put(r[0].abs(&format!("{loc}?digest={}", sha256(&winner))))
            .send()
            .await
            .unwrap();
        assert_eq!(put.status(), StatusCode::CREATED, "trial {trial}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn manifests_tags_and_catalog_agree_across_replicas() {
    let Some((r, _shared)) = replicas().await else {
        return;
    };
    let c = client();
    let repo = "fleet/images";
    let config = r[0].push_blob(&c, repo, b"{}").await;
    let layer = r[1].push_blob(&c, repo, b"layer").await;
    let m = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 2},
        "layers": [{"mediaType": "application/octet-stream", "digest": layer, "size": 5}]});
    let body = serde_json::to_vec(&m).unwrap();
    let put = c
        .put(r[2].url(&format!("/v2/{repo}/manifests/v1")))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::CREATED);
    for replica in &r {
        let got = c
            .get(replica.url(&format!("/v2/{repo}/manifests/v1")))
            .header("accept", "application/vnd.oci.image.manifest.v1+json")
            .send()
            .await
            .unwrap();
        assert_eq!(got.status(), StatusCode::OK);
        assert_eq!(got.bytes().await.unwrap().as_ref(), body.as_slice());
        let cat: Value = c
            .get(replica.url("/v2/_catalog"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(cat["repositories"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x == repo));
    }
    let del = c
        .delete(r[0].url(&format!("/v2/{repo}/manifests/v1")))
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), StatusCode::ACCEPTED);
    let got = c
        .get(r[1].url(&format!("/v2/{repo}/manifests/v1")))
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), StatusCode::NOT_FOUND);
}

/// Starts one upload session on `replica`: the response.
async fn start_session(c: &reqwest::Client, replica: &TestServer) -> reqwest::Response {
    c.post(replica.url("/v2/fleet/caps/blobs/uploads/"))
        .send()
        .await
        .unwrap()
}

/// The upload-session caps count every replica's sessions: sessions
/// started on two replicas fill the cap for the third (the count and the
/// insert are one serialized transaction, not a per-process table).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upload_session_caps_hold_across_replicas() {
    for (caps, what) in [
        (
            [
                ("BPF_REGISTRY_MAX_UPLOAD_SESSIONS", "3"),
                ("BPF_REGISTRY_MAX_UPLOAD_SESSIONS_PER_USER", "100"),
            ],
            "registry-wide",
        ),
        (
            [
                ("BPF_REGISTRY_MAX_UPLOAD_SESSIONS", "100"),
                ("BPF_REGISTRY_MAX_UPLOAD_SESSIONS_PER_USER", "3"),
            ],
            "per address",
        ),
    ] {
        let Some((r, _shared)) = replicas_with(&caps).await else {
            return;
        };
        let c = client();
        let mut sessions = Vec::new();
        for replica in [&r[0], &r[0], &r[1]] {
            let started = start_session(&c, replica).await;
            assert_eq!(started.status(), StatusCode::ACCEPTED, "{what}");
            sessions.push(replica.abs(&location(&started)));
        }
        for replica in &r {
            let refused = start_session(&c, replica).await;
            assert_oci_error(refused, StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS").await;
        }
        // One session cancelled on another replica than its own frees one
        // place: of three concurrent starts, one on each replica, exactly
        // one wins.
        let cancel = r[2].abs(&sessions[0].replacen(&r[0].base_url, "", 1));
        let d = c.delete(&cancel).send().await.unwrap();
        assert_eq!(
            d.status(),
            StatusCode::NO_CONTENT,
            "{what}: cancel {cancel}"
        );
        let statuses: Vec<StatusCode> = futures_util::future::join_all(
            r.iter()
                .map(|replica| async { start_session(&c, replica).await.status() }),
        )
        .await;
        let won = statuses
            .iter()
            .filter(|s| **s == StatusCode::ACCEPTED)
            .count();
        let refused = statuses
            .iter()
            .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
            .count();
        assert_eq!((won, refused), (1, 2), "{what}: {statuses:?}");
    }
}

fn create_body(name: &str, version: &str, arch: &str, data: &str) -> Value {
    json!({"name": name, "version": version, "type": "program", "architecture": arch,
           "data": base64::engine::general_purpose::STANDARD.encode(data)})
}

/// A version's check-then-write holds across replicas: two different
/// contents for one (name, version, architecture) posted to two replicas
/// at once give one 201 and one 409, never two versions under one name;
/// two architectures posted at once both land in the version's index.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_version_raced_on_two_replicas_is_created_once() {
    let Some((r, _shared)) = replicas().await else {
        return;
    };
    let c = client();
    let post = |replica: &TestServer, body: Value| {
        let (c, url) = (c.clone(), replica.url("/artifacts"));
        async move { c.post(url).json(&body).send().await.unwrap().status() }
    };
    for round in 0..8 {
        let version = format!("1.0.{round}");
        let (a, b) = tokio::join!(
            post(
                &r[0],
                create_body("race/one", &version, "x86_64", "content a")
            ),
            post(
                &r[1],
                create_body("race/one", &version, "x86_64", "content b")
            ),
        );
        let mut got = [a, b];
        got.sort();
        assert_eq!(
            got,
            [StatusCode::CREATED, StatusCode::CONFLICT],
            "round {round}"
        );
        let listed: Value = c
            .get(r[2].url(&format!("/artifacts?name=race/one&version={version}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            listed["artifacts"].as_array().map(Vec::len),
            Some(1),
            "{listed}"
        );

        let (a, b) = tokio::join!(
            post(
                &r[0],
                create_body("race/two", &version, "x86_64", "amd64 build")
            ),
            post(
                &r[1],
                create_body("race/two", &version, "aarch64", "arm64 build")
            ),
        );
        assert_eq!(
            (a, b),
            (StatusCode::CREATED, StatusCode::CREATED),
            "round {round}"
        );
        let index: Value = c
            .get(r[2].url(&format!("/v2/race/two/manifests/{version}")))
            .header("accept", "application/vnd.oci.image.index.v1+json")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            index["manifests"].as_array().map(Vec::len),
            Some(2),
            "round {round}: the version tag names both platforms: {index}"
        );
    }
}

/// "Signed once" holds across replicas: one manifest pushed to three
/// replicas at once (each signing with the same local key) is signed
/// exactly once, and its `.sig` tag holds that signature.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_manifest_pushed_to_three_replicas_at_once_is_signed_once() {
    let keys = tempfile::tempdir().unwrap();
    let key = {
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        use std::os::unix::fs::PermissionsExt;
        let bytes: [u8; 32] = pseudo_random(32, 78).try_into().unwrap();
        let pem = ed25519_dalek::SigningKey::from_bytes(&bytes)
            .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .unwrap()
            .to_string();
        let p = keys.path().join("signing.pem");
        std::fs::write(&p, pem).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p.to_string_lossy().into_owned()
    };
    let Some((r, _shared)) = replicas_with(&[
        ("BPF_REGISTRY_SIGNER", "key"),
        ("BPF_REGISTRY_SIGNING_KEY", key.as_str()),
    ])
    .await
    else {
        return;
    };
    let c = client();
    for round in 0..5 {
        let repo = format!("race/signed{round}");
        let cfg = r[0].push_blob(&c, &repo, b"{}").await;
        let layer = r[0]
            .push_blob(&c, &repo, format!("prog {round}").as_bytes())
            .await;
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "artifactType": "application/vnd.aegisflux.bpf.artifact.v1",
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": cfg, "size": 2},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd",
                        "digest": layer, "size": format!("prog {round}").len()}],
        }))
        .unwrap();
        let id = sha256(&manifest);
        let statuses = futures_util::future::join_all(r.iter().enumerate().map(|(i, replica)| {
            let (c, url, body) = (
                c.clone(),
                replica.url(&format!("/v2/{repo}/manifests/t{i}")),
                manifest.clone(),
            );
            async move {
                c.put(url)
                    .header("content-type", "application/vnd.oci.image.manifest.v1+json")
                    .body(body)
                    .send()
                    .await
                    .unwrap()
                    .status()
            }
        }))
        .await;
        assert!(
            statuses.iter().all(|s| *s == StatusCode::CREATED),
            "{statuses:?}"
        );
        let referrers: Value = c
            .get(r[1].url(&format!("/v2/{repo}/referrers/{id}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let signatures = referrers["manifests"].as_array().map(Vec::len);
        assert_eq!(
            signatures,
            Some(1),
            "round {round}: signed once: {referrers}"
        );
        let sig_tag: Value = c
            .get(r[2].url(&format!("/v2/{repo}/manifests/sha256-{}.sig", hex_of(&id))))
            .header("accept", "application/vnd.oci.image.manifest.v1+json")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            sig_tag["layers"].as_array().map(Vec::len),
            Some(1),
            "{sig_tag}"
        );
    }
}

/// A session another replica served and then ended frees its place on
/// every replica: the caps count the rows, not what each process has seen.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_ended_on_another_replica_frees_its_place_everywhere() {
    let Some((r, _shared)) = replicas_with(&[("BPF_REGISTRY_MAX_UPLOAD_SESSIONS", "2")]).await
    else {
        return;
    };
    let c = client();
    let started = start_session(&c, &r[1]).await;
    assert_eq!(started.status(), StatusCode::ACCEPTED);
    let path = location(&started);
    // Served once by replica 0 (which now knows the session)...
    let p = c
        .patch(r[0].abs(&path))
        .header("content-type", "application/octet-stream")
        .header("content-range", "0-3")
        .body("abcd")
        .send()
        .await
        .unwrap();
    assert_eq!(p.status(), StatusCode::ACCEPTED);
    // ...then cancelled on replica 1.
    let d = c.delete(r[1].abs(&path)).send().await.unwrap();
    assert_eq!(d.status(), StatusCode::NO_CONTENT);
    for n in 0..2 {
        let s = start_session(&c, &r[0]).await;
        assert_eq!(s.status(), StatusCode::ACCEPTED, "session {n} on replica 0");
    }
    let refused = start_session(&c, &r[2]).await;
    assert_oci_error(refused, StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS").await;
}

/// `conformance/replica_proxy.py` (stdlib only) in front of the replicas:
/// each request to the next replica. Returns the proxy process (the caller
/// stops and waits for it) and its port.
#[allow(clippy::zombie_processes)]
fn round_robin_proxy(r: &[TestServer], dir: &std::path::Path) -> (std::process::Child, u16) {
    let port_file = dir.join("proxy.port");
    let mut cmd = std::process::Command::new("python3");
    cmd.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/conformance/replica_proxy.py"
    ))
    .arg("--listen-port-file")
    .arg(&port_file);
    for replica in r {
        cmd.arg(&replica.base_url);
    }
    let mut child = cmd
        .spawn()
        .expect("start python3 conformance/replica_proxy.py");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if let Some(port) = std::fs::read_to_string(&port_file)
            .ok()
            .and_then(|p| p.trim().parse().ok())
        {
            return (child, port);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the proxy did not start");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// oci-client's chunked pushes (what bpfman uses) through a per-request
/// round-robin proxy: the POST, every PATCH and the PUT of one upload each
/// go to another replica; every replica then serves the exact bytes and
/// the manifest.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oci_client_chunked_pushes_round_robin_over_the_replicas() {
    let Some((r, shared)) = replicas().await else {
        return;
    };
    let (mut proxy, port) = round_robin_proxy(&r, shared.path());
    let oci = oci_client::Client::new(oci_client::client::ClientConfig {
        protocol: oci_client::client::ClientProtocol::Http,
        use_monolithic_push: false,
        ..Default::default()
    });
    let reference: oci_client::Reference =
        format!("127.0.0.1:{port}/fleet/oci:v1").parse().unwrap();
    let parts: Vec<Vec<u8>> = (0..5)
        .map(|i| pseudo_random(200_000 + i, 900 + i as u64))
        .collect();
    let whole = parts.concat();
    let digest = sha256(&whole);
    let items: Vec<oci_client::errors::Result<bytes::Bytes>> = parts
        .iter()
        .map(|p| Ok(bytes::Bytes::from(p.clone())))
        .collect();
    oci.push_blob_stream(&reference, futures_util::stream::iter(items), &digest, None)
        .await
        .expect("push_blob_stream through the round-robin proxy");
    // A whole image through the proxy: config and layer (chunked), manifest.
    let layer = oci_client::client::ImageLayer::new(
        pseudo_random(300_000, 77),
        "application/vnd.oci.image.layer.v1.tar+zstd".into(),
        None,
    );
    let config = oci_client::client::Config::new(
        br#"{"architecture":"amd64","os":"linux"}"#.to_vec(),
        "application/vnd.oci.image.config.v1+json".into(),
        None,
    );
    let pushed = oci
        .push(
            &reference,
            std::slice::from_ref(&layer),
            config,
            &oci_client::secrets::RegistryAuth::Anonymous,
            None,
        )
        .await
        .expect("push an image through the round-robin proxy");
    let manifest_digest = pushed.manifest_url.rsplit('/').next().unwrap().to_string();
    let c = client();
    for replica in &r {
        let got = c
            .get(replica.url(&format!("/v2/fleet/oci/blobs/{digest}")))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert!(
            got.as_ref() == whole.as_slice(),
            "blob on {}",
            replica.base_url
        );
        let m = c
            .head(replica.url("/v2/fleet/oci/manifests/v1"))
            .header("accept", "application/vnd.oci.image.manifest.v1+json")
            .send()
            .await
            .unwrap();
        assert_eq!(m.status(), StatusCode::OK);
        assert_eq!(
            header(&m, "docker-content-digest").as_deref(),
            Some(manifest_digest.as_str())
        );
    }
    // SIGTERM: the proxy writes how many requests each replica served.
    // SAFETY: kill(2) on the PID of a child this test started and has not
    // reaped yet.
    unsafe {
        libc::kill(proxy.id() as i32, libc::SIGTERM);
    }
    let _ = proxy.wait();
    let stats: Value = serde_json::from_str(
        &std::fs::read_to_string(shared.path().join("proxy.port.stats")).expect("proxy stats"),
    )
    .unwrap();
    let served: Vec<u64> = stats["served"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert!(
        served.iter().all(|n| *n >= 3),
        "every replica served part of the pushes: {served:?}"
    );
}

/// A long-poll held on one replica is woken by a write acknowledged by
/// another (PostgreSQL NOTIFY), and answers what every replica now says:
/// a host registered on replica 0, a selector assigning an artifact to
/// it, a waiter on replica 2 with the current ETag, then a new version
/// created on replica 1. Also: a read on any replica right after a write
/// sees it (the caches validate against the committed counters).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_waiter_on_one_replica_is_woken_by_a_write_on_another() {
    let Some((r, _shared)) = replicas().await else {
        return;
    };
    let c = client();
    let created: Value = c
        .post(r[0].url("/artifacts"))
        .json(&create_body("fleet/watched", "1.0.0", "x86_64", "v1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().expect("id").to_string();
    let host = c
        .put(r[0].url("/hosts/edge-w"))
        .json(&json!({"architecture": "x86_64", "kernel_release": "6.1.0", "labels": {"env": "prod"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(host.status(), StatusCode::CREATED);
    let sel = c
        .post(r[1].url(&format!("/artifacts/{id}/selectors")))
        .json(&json!({"selector": "env=prod"}))
        .send()
        .await
        .unwrap();
    assert_eq!(sel.status(), StatusCode::CREATED);
    // The selector, written on replica 1, is what replica 2 answers now.
    let now = c
        .get(r[2].url("/hosts/edge-w/desired"))
        .send()
        .await
        .unwrap();
    assert_eq!(now.status(), StatusCode::OK);
    let etag = now.headers()["etag"].to_str().unwrap().to_string();
    let v: Value = now.json().await.unwrap();
    assert_eq!(v["artifacts"][0]["version"], "1.0.0", "{v}");
    let waiter = {
        let c = c.clone();
        let url = r[2].url("/hosts/edge-w/desired?wait=50s");
        let etag = etag.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let resp = c
                .get(url)
                .header("if-none-match", etag)
                .send()
                .await
                .unwrap();
            (resp.status(), started.elapsed(), resp.text().await.unwrap())
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(
        !waiter.is_finished(),
        "the waiter holds while nothing changes"
    );
    let wrote = std::time::Instant::now();
    let v2 = c
        .post(r[1].url("/artifacts"))
        .json(&create_body("fleet/watched", "1.1.0", "x86_64", "v2"))
        .send()
        .await
        .unwrap();
    assert_eq!(v2.status(), StatusCode::CREATED);
    let acknowledged = wrote.elapsed();
    let (status, _, body) = waiter.await.unwrap();
    let woken_after = wrote.elapsed();
    assert_eq!(status, StatusCode::OK, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["artifacts"][0]["version"], "1.1.0", "{v}");
    // A liveness bound, far under the 50 s wait: the NOTIFY woke it.
    assert!(
        woken_after < std::time::Duration::from_secs(10),
        "woken {woken_after:?} after the write (acknowledged after {acknowledged:?})"
    );
    eprintln!("waiter on replica 2 woken {woken_after:?} after the write on replica 1 (acknowledged after {acknowledged:?})");
}

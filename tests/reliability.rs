//! Reliability: garbage collection under load, the `gc` and `scrub`
//! commands, limits against bad clients (slow headers, stalled bodies,
//! concurrency and upload-session caps, body caps) and a full disk (a
//! size-limited tmpfs). The crash harness is `conformance/crash_harness.py`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{pseudo_random, sha256, TestServer};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_bpf-registry");
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(8)
        .build()
        .expect("client")
}

/// Runs the binary's maintenance command on a data dir; (status, stdout, stderr).
fn cli(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut c = Command::new(BIN);
    c.args(args)
        .env("BPF_REGISTRY_DATA_DIR", data_dir)
        .env("BPF_REGISTRY_LOG_LEVEL", "WARN");
    // The stores the test server used on this directory.
    for (k, v) in common::store_env_of(data_dir) {
        c.env(k, v);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().expect("run bpf-registry");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A push that may fail (the load test retries), unlike the panicking
/// helpers of `common`.
async fn try_push_blob(
    c: &reqwest::Client,
    base: &str,
    repo: &str,
    data: &[u8],
    chunked: bool,
) -> Result<String, String> {
    let digest = sha256(data);
    if !chunked {
        let r = c
            .post(format!("{base}/v2/{repo}/blobs/uploads/?digest={digest}"))
            .body(data.to_vec())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        return match r.status() {
            StatusCode::CREATED => Ok(digest),
            s => Err(format!("monolithic upload: {s}")),
        };
    }
    let r = c
        .post(format!("{base}/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if r.status() != StatusCode::ACCEPTED {
        return Err(format!("start upload: {}", r.status()));
    }
    let mut loc = common::location(&r);
    let half = data.len() / 2;
    for (start, part) in [(0, &data[..half]), (half, &data[half..])] {
        if part.is_empty() {
            continue;
        }
        let r = c
            .patch(format!("{base}{loc}"))
            .header(
                "content-range",
                format!("{start}-{}", start + part.len() - 1),
            )
            .body(part.to_vec())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if r.status() != StatusCode::ACCEPTED {
            return Err(format!("patch: {}", r.status()));
        }
        loc = common::location(&r);
    }
    let r = c
        .put(format!(
            "{base}{}",
            common::with_query(&loc, &format!("digest={digest}"))
        ))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    match r.status() {
        StatusCode::CREATED => Ok(digest),
        s => Err(format!("closing put: {s}")),
    }
}

/// One acknowledged image: what must be readable later.
#[derive(Clone)]
struct Acked {
    repo: String,
    tag: String,
    digest: String,
    manifest: Vec<u8>,
    blobs: Vec<(String, Vec<u8>)>,
}

async fn try_push_image(
    c: &reqwest::Client,
    base: &str,
    repo: &str,
    tag: &str,
    config: &[u8],
    layer: &[u8],
    chunked: bool,
) -> Result<Acked, (StatusCode, String)> {
    let fail = |e: String| (StatusCode::INTERNAL_SERVER_ERROR, e);
    let cd = try_push_blob(c, base, repo, config, false)
        .await
        .map_err(fail)?;
    let ld = try_push_blob(c, base, repo, layer, chunked)
        .await
        .map_err(fail)?;
    let m = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": cd, "size": config.len()},
        "layers": [{"mediaType": "application/octet-stream", "digest": ld, "size": layer.len()}],
    });
    let body = serde_json::to_vec(&m).expect("json");
    let r = c
        .put(format!("{base}/v2/{repo}/manifests/{tag}"))
        .header("content-type", MANIFEST)
        .body(body.clone())
        .send()
        .await
        .map_err(|e| fail(e.to_string()))?;
    let status = r.status();
    if status != StatusCode::CREATED {
        let text = r.text().await.unwrap_or_default();
        return Err((status, text));
    }
    Ok(Acked {
        repo: repo.into(),
        tag: tag.into(),
        digest: sha256(&body),
        manifest: body,
        blobs: vec![(cd, config.to_vec()), (ld, layer.to_vec())],
    })
}

async fn verify_acked(c: &reqwest::Client, base: &str, a: &Acked) -> Result<(), String> {
    let r = c
        .get(format!("{base}/v2/{}/manifests/{}", a.repo, a.tag))
        .header("accept", MANIFEST)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if r.status() != StatusCode::OK {
        return Err(format!("{}:{} manifest: {}", a.repo, a.tag, r.status()));
    }
    let body = r.bytes().await.map_err(|e| e.to_string())?;
    if body.as_ref() != a.manifest.as_slice() || sha256(&body) != a.digest {
        return Err(format!("{}:{} manifest bytes differ", a.repo, a.tag));
    }
    for (d, data) in &a.blobs {
        let r = c
            .get(format!("{base}/v2/{}/blobs/{d}", a.repo))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if r.status() != StatusCode::OK {
            return Err(format!("{}:{} blob {d}: {}", a.repo, a.tag, r.status()));
        }
        let got = r.bytes().await.map_err(|e| e.to_string())?;
        if got.as_ref() != data.as_slice() || &sha256(&got) != d {
            return Err(format!("{}:{} blob {d}: bytes differ", a.repo, a.tag));
        }
    }
    Ok(())
}

/// Every blob file under `blobs/sha256` hashes to its name.
fn assert_blobs_sound(data_dir: &Path) -> usize {
    let dir = data_dir.join("blobs/sha256");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.contains(".tmp-") {
            continue;
        }
        let bytes = std::fs::read(e.path()).expect("read blob");
        assert_eq!(
            sha256(&bytes),
            format!("sha256:{name}"),
            "blob {name} is corrupt"
        );
        n += 1;
    }
    n
}

fn blob_path(data_dir: &Path, digest: &str) -> PathBuf {
    data_dir
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gc_under_load_keeps_every_acknowledged_artifact() {
    // The online collector runs every 50 ms with no grace period while
    // four clients push (monolithic and chunked, re-uploading shared
    // content), delete, and leave orphans; a REST client posts artifacts.
    let server = TestServer::start_with_env(&[
        ("BPF_REGISTRY_GC_INTERVAL", "50ms"),
        ("BPF_REGISTRY_GC_GRACE", "0"),
    ])
    .await;
    let base = server.base_url.clone();
    let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
    let orphans: Arc<Mutex<Vec<String>>> = Arc::default();
    let retries = Arc::new(AtomicU64::new(0));
    let deletes = Arc::new(AtomicU64::new(0));
    let unexpected: Arc<Mutex<Vec<String>>> = Arc::default();
    let deadline = Instant::now() + Duration::from_secs(6);
    const MIN_PUSHES: u64 = 10;
    const LIVENESS: Duration = Duration::from_secs(180);
    let mut tasks = Vec::new();
    for w in 0..4u64 {
        let (base, acked, orphans, retries, deletes, unexpected) = (
            base.clone(),
            acked.clone(),
            orphans.clone(),
            retries.clone(),
            deletes.clone(),
            unexpected.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let c = client();
            let repo = format!("load/w{w}");
            let mut mine: Vec<Acked> = Vec::new();
            let mut i = 0u64;
            // At least MIN_PUSHES each, however slow the machine: the
            // assertions below need load, not speed.
            while Instant::now() < deadline || i < MIN_PUSHES {
                assert!(
                    Instant::now() < deadline + LIVENESS,
                    "worker {w}: {i} pushes in {LIVENESS:?} past the deadline"
                );
                i += 1;
                let config = format!("{{\"worker\":{w},\"i\":{i}}}").into_bytes();
                // A quarter re-upload one of a few shared layers: content
                // already stored, often unreferenced, often old.
                let layer = if i.is_multiple_of(4) {
                    pseudo_random(20_000, 7 + i % 3)
                } else {
                    pseudo_random(1000 + (i as usize * 37) % 60_000, w * 1_000_000 + i)
                };
                let tag = format!("t{i}");
                loop {
                    match try_push_image(
                        &c,
                        &base,
                        &repo,
                        &tag,
                        &config,
                        &layer,
                        i.is_multiple_of(2),
                    )
                    .await
                    {
                        Ok(a) => {
                            mine.push(a);
                            break;
                        }
                        // With no grace period, a blob uploaded between two
                        // collections may go before its manifest is pushed:
                        // the push fails cleanly and is retried.
                        // Retried for as long as the liveness bound allows
                        // (on a loaded machine a push may span several
                        // collections 50 ms apart).
                        Err((StatusCode::BAD_REQUEST, text))
                            if text.contains("MANIFEST_BLOB_UNKNOWN")
                                && Instant::now() < deadline + LIVENESS =>
                        {
                            retries.fetch_add(1, Ordering::Relaxed);
                        }
                        Err((s, text)) => {
                            unexpected
                                .lock()
                                .unwrap()
                                .push(format!("push {repo}:{tag}: {s} {text}"));
                            break;
                        }
                    }
                }
                // Garbage for the collector: an orphan blob, and every third
                // image deleted again.
                let orphan = pseudo_random(3000, 99_000_000 + w * 100_000 + i);
                if let Ok(d) = try_push_blob(&c, &base, &repo, &orphan, false).await {
                    orphans.lock().unwrap().push(d);
                }
                if i.is_multiple_of(3) && mine.len() > 2 {
                    let victim = mine.remove(mine.len() / 2);
                    let r = c
                        .delete(format!("{base}/v2/{repo}/manifests/{}", victim.digest))
                        .send()
                        .await
                        .expect("delete");
                    assert_eq!(r.status(), StatusCode::ACCEPTED);
                    deletes.fetch_add(1, Ordering::Relaxed);
                }
            }
            acked.lock().unwrap().extend(mine);
        }));
    }
    // REST artifacts with host associations, concurrently.
    // (artifact id, the data posted)
    type RestAcked = Arc<Mutex<Vec<(String, Vec<u8>)>>>;
    let rest_acked: RestAcked = Arc::default();
    {
        let (base, rest_acked, unexpected) = (base.clone(), rest_acked.clone(), unexpected.clone());
        tasks.push(tokio::spawn(async move {
            let c = client();
            let mut i = 0;
            while Instant::now() < deadline {
                i += 1;
                let data = pseudo_random(5000, 555_000 + i);
                let r = c
                    .post(format!("{base}/artifacts"))
                    .json(&json!({
                        "name": "load/rest", "version": format!("1.0.{i}"), "type": "map",
                        "architecture": "x86_64",
                        "data": base64::engine::general_purpose::STANDARD.encode(&data),
                        "hosts": ["host-a"],
                    }))
                    .send()
                    .await
                    .expect("post");
                let status = r.status();
                let v: Value = r.json().await.unwrap_or_default();
                if status == StatusCode::CREATED {
                    let id = v["id"].as_str().unwrap_or_default().to_string();
                    rest_acked.lock().unwrap().push((id, data));
                } else if status.is_server_error() {
                    unexpected
                        .lock()
                        .unwrap()
                        .push(format!("rest create: {status} {v}"));
                }
                // 4xx/5xx without acknowledgement is allowed under grace 0
                // only as a clean refusal; 5xx is reported above.
            }
        }));
    }
    for t in tasks {
        t.await.expect("worker");
    }
    let acked = acked.lock().unwrap().clone();
    let unexpected = unexpected.lock().unwrap().clone();
    assert!(unexpected.is_empty(), "unexpected answers: {unexpected:#?}");
    assert!(
        acked.len() > 20,
        "too few pushes acknowledged: {}",
        acked.len()
    );

    // Let a few more collections run over the quiet store, then verify.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let c = client();
    let mut verified = 0;
    for a in &acked {
        verify_acked(&c, &base, a)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        verified += 1;
    }
    let rest = rest_acked.lock().unwrap().clone();
    for (id, data) in &rest {
        let r = c
            .get(format!("{base}/artifacts/{id}/binary"))
            .send()
            .await
            .expect("binary");
        assert_eq!(r.status(), StatusCode::OK, "artifact {id}");
        let bin = r.bytes().await.expect("bytes");
        let mut tar = tar::Archive::new(zstd::Decoder::new(&bin[..]).expect("zstd"));
        let mut entry = tar
            .entries()
            .expect("tar")
            .next()
            .expect("entry")
            .expect("entry");
        let mut content = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut content).expect("read");
        assert_eq!(&content, data, "artifact {id} content");
    }
    let fh: Value = c
        .get(format!("{base}/artifacts/for-host/host-a"))
        .send()
        .await
        .expect("for-host")
        .json()
        .await
        .expect("json");
    let listed = fh["artifacts"].as_array().map(|a| a.len()).unwrap_or(0);
    assert_eq!(
        listed,
        rest.len(),
        "for-host lists every acknowledged association"
    );

    // The collector did collect: every orphan goes within a few runs.
    let orphans = orphans.lock().unwrap().clone();
    if !common::engines::fs_blob_store_or_skip(
        "gc_under_load_keeps_every_acknowledged_artifact: its blob file checks",
    ) {
        return;
    }
    let t0 = Instant::now();
    loop {
        let left = orphans
            .iter()
            .filter(|d| blob_path(server.data_dir(), d).exists())
            .count();
        if left == 0 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{left} orphans never collected"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let blobs = assert_blobs_sound(server.data_dir());
    println!(
        "gc under load: {} pushes acknowledged and verified, {} REST artifacts verified, {} deletes, {} retries after MANIFEST_BLOB_UNKNOWN, {} orphans collected, {} blobs left, 0 violations",
        verified,
        rest.len(),
        deletes.load(Ordering::Relaxed),
        retries.load(Ordering::Relaxed),
        orphans.len(),
        blobs
    );
}

#[tokio::test]
async fn gc_command_frees_unreferenced_blobs_and_refuses_beside_a_server() {
    if !common::engines::fs_blob_store_or_skip(
        "gc_command_frees_unreferenced_blobs_and_refuses_beside_a_server",
    ) {
        return;
    }
    let server = TestServer::start_with_env(&[("BPF_REGISTRY_GC_INTERVAL", "0")]).await;
    let (c, base) = (client(), server.base_url.clone());
    let kept = try_push_image(&c, &base, "gc/cli", "v1", b"{}", b"kept layer", false)
        .await
        .expect("push");
    let gone = try_push_image(&c, &base, "gc/cli", "v2", b"{}", &[9u8; 10_000], true)
        .await
        .expect("push");
    let orphan = try_push_blob(&c, &base, "gc/cli", &[5u8; 4321], false)
        .await
        .expect("orphan");
    let r = c
        .delete(format!("{base}/v2/gc/cli/manifests/{}", gone.digest))
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let data_dir = server.data_dir().to_path_buf();
    let grace0 = [("BPF_REGISTRY_GC_GRACE", "0")];

    // Beside a running server: gc refuses, a dry run reads.
    let (code, _, err) = cli(&data_dir, &["gc"], &grace0);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("in use by a running bpf-registry server"),
        "{err}"
    );
    let (code, out, err) = cli(&data_dir, &["gc", "--dry-run", "--json"], &grace0);
    assert_eq!(code, 0, "{err}");
    let dry: Value = serde_json::from_str(&out).expect("json report");
    let expected_bytes = (gone.manifest.len() + 10_000 + 4321) as u64;
    assert_eq!(dry["blobs_deleted"], 3);
    assert_eq!(dry["bytes_freed"], expected_bytes);
    assert!(blob_path(&data_dir, &orphan).exists());

    let mut server = server;
    server.stop().await;
    // The default grace period (1 h) keeps the fresh garbage.
    let (code, out, _) = cli(&data_dir, &["gc", "--json"], &[]);
    assert_eq!(code, 0);
    let r: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        (r["blobs_deleted"].as_u64(), r["blobs_young"].as_u64()),
        (Some(0), Some(3))
    );

    let (code, out, err) = cli(
        &data_dir,
        &["gc"],
        &[
            ("BPF_REGISTRY_GC_GRACE", "0"),
            ("BPF_REGISTRY_LOG_LEVEL", "INFO"),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("{expected_bytes} bytes freed")),
        "{out}"
    );
    assert!(
        err.contains("garbage collection finished"),
        "structured log line: {err}"
    );
    for d in [&orphan, &gone.digest, &gone.blobs[1].0] {
        assert!(!blob_path(&data_dir, d).exists(), "{d} collected");
    }
    let server = server.restart().await;
    verify_acked(&client(), &server.base_url, &kept)
        .await
        .expect("kept image intact");
}

#[tokio::test]
async fn scrub_finds_a_flipped_byte_and_repair_quarantines_it() {
    if !common::engines::fs_blob_store_or_skip(
        "scrub_finds_a_flipped_byte_and_repair_quarantines_it",
    ) {
        return;
    }
    let server = TestServer::start_with_env(&[("BPF_REGISTRY_GC_INTERVAL", "0")]).await;
    let (c, base) = (client(), server.base_url.clone());
    let big_layer = pseudo_random(3 * 1024 * 1024, 42);
    let small = try_push_image(&c, &base, "scrub/x", "small", b"{}", b"small layer", false)
        .await
        .expect("push");
    let big = try_push_image(&c, &base, "scrub/x", "big", b"{}", &big_layer, true)
        .await
        .expect("push");
    let data_dir = server.data_dir().to_path_buf();
    let (code, out, _) = cli(&data_dir, &["scrub"], &[]);
    assert_eq!(code, 0, "clean store: {out}");
    assert!(out.contains("scrub: OK"), "{out}");

    let flip = |d: &str| {
        let p = blob_path(&data_dir, d);
        let mut bytes = std::fs::read(&p).expect("read");
        let i = bytes.len() / 2;
        bytes[i] ^= 0x20;
        std::fs::write(&p, &bytes).expect("write");
    };
    let (small_layer, big_layer_d) = (small.blobs[1].0.clone(), big.blobs[1].0.clone());
    flip(&small_layer);
    flip(&big_layer_d);

    // What a reader sees: a small blob is verified before it is sent (500,
    // never the corrupt bytes); a large one streams, and the client's
    // digest check fails.
    let r = c
        .get(format!("{base}/v2/scrub/x/blobs/{small_layer}"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let r = c
        .get(format!("{base}/v2/scrub/x/blobs/{big_layer_d}"))
        .send()
        .await
        .expect("get");
    let got = r.bytes().await.expect("body");
    assert_ne!(
        sha256(&got),
        big_layer_d,
        "the client's digest check catches it"
    );

    // scrub (read-only) runs beside the server; --repair does not.
    let (code, out, _) = cli(&data_dir, &["scrub"], &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("corrupt_blob"), "{out}");
    assert!(
        out.contains(small_layer.as_str()) && out.contains(big_layer_d.as_str()),
        "{out}"
    );
    assert!(out.contains("FAILED, 2 problems found"), "{out}");
    let (code, _, err) = cli(&data_dir, &["scrub", "--repair"], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("in use"), "{err}");

    let mut server = server;
    server.stop().await;
    let (code, out, _) = cli(&data_dir, &["scrub", "--repair", "--json"], &[]);
    assert_eq!(code, 1, "something was wrong, even if repaired");
    let report: Value = serde_json::from_str(&out).expect("json");
    let quarantined = report["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .filter(|p| p["kind"] == "corrupt_blob" && p["repaired"] == true)
        .count();
    assert_eq!(quarantined, 2);
    for d in [&small_layer, &big_layer_d] {
        assert!(!blob_path(&data_dir, d).exists());
        assert!(data_dir
            .join("_quarantine/sha256")
            .join(d.trim_start_matches("sha256:"))
            .exists());
    }
    // The manifests now miss their layers: still reported, until a push of
    // the same content stores it again.
    let (code, out, _) = cli(&data_dir, &["scrub"], &[]);
    assert_eq!(code, 1);
    assert!(out.contains("manifest_blob_missing"), "{out}");
    let server = server.restart().await;
    let r = c
        .get(format!(
            "{}/v2/scrub/x/blobs/{small_layer}",
            server.base_url
        ))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    try_push_blob(&c, &server.base_url, "scrub/x", b"small layer", false)
        .await
        .expect("re-push");
    try_push_blob(&c, &server.base_url, "scrub/x", &big_layer, true)
        .await
        .expect("re-push");
    let (code, out, _) = cli(&data_dir, &["scrub"], &[]);
    assert_eq!(code, 0, "{out}");
    verify_acked(&c, &server.base_url, &small)
        .await
        .expect("small");
    verify_acked(&c, &server.base_url, &big).await.expect("big");
}

/// Reads from a socket until EOF, an error or `limit`; returns what came
/// and how long it took.
async fn read_until_closed(s: &mut tokio::net::TcpStream, limit: Duration) -> (Vec<u8>, Duration) {
    let t0 = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(limit.saturating_sub(t0.elapsed()), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    (out, t0.elapsed())
}

#[tokio::test]
async fn slow_headers_are_cut_off() {
    let server = TestServer::start_with_env(&[("BPF_REGISTRY_HEADER_READ_TIMEOUT", "1s")]).await;
    let mut s = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    // Half a request, then a byte now and then: never a full header block.
    s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let dripper = async {
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if s.write_all(b"X").await.is_err() {
                break;
            }
        }
    };
    let t0 = Instant::now();
    dripper.await;
    let (_, took) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    let total = t0.elapsed().max(took);
    assert!(
        total < Duration::from_secs(9),
        "connection kept open for {total:?}"
    );
    // A well-behaved client on a new connection is served.
    let r = reqwest::get(server.url("/v2/")).await.expect("get");
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn header_timeout_closes_a_silent_connection() {
    let server = TestServer::start_with_env(&[("BPF_REGISTRY_HEADER_READ_TIMEOUT", "1s")]).await;
    let mut s = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    s.write_all(b"GET /v2/ HTTP/1.1\r\n").await.expect("write");
    let (_, took) = read_until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(4),
        "closed after {took:?}"
    );
}

#[tokio::test]
async fn stalled_body_is_cut_off_and_nothing_is_acknowledged() {
    let server = TestServer::start_with_env(&[("BPF_REGISTRY_BODY_IDLE_TIMEOUT", "1s")]).await;
    let c = client();
    let r = c
        .post(server.url("/v2/limits/stall/blobs/uploads/"))
        .send()
        .await
        .expect("start");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let loc = common::location(&r);
    let mut s = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    let head = format!(
        "PATCH {loc} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.expect("write");
    s.write_all(&[1u8; 1000]).await.expect("write");
    let (answer, took) = read_until_closed(&mut s, Duration::from_secs(10)).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(
        took < Duration::from_secs(5),
        "stalled body held for {took:?}"
    );
    // A stalled body is a timeout (408), answered in the OCI envelope.
    assert!(text.starts_with("HTTP/1.1 408"), "answer: {text}");
    assert!(text.contains("BLOB_UPLOAD_INVALID"), "answer: {text}");
    // The session did not advance; a proper chunk then completes it.
    let r = c.get(server.url(&loc)).send().await.expect("status");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let data = b"complete body".to_vec();
    let r = c
        .put(server.abs(&common::with_query(
            &loc,
            &format!("digest={}", sha256(&data)),
        )))
        .body(data)
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn concurrent_request_cap_answers_429_with_retry_after() {
    let server = TestServer::start_with_env(&[("BPF_REGISTRY_MAX_CONCURRENT_REQUESTS", "2")]).await;
    let c = client();
    // Two requests that stay in progress: PATCHes whose bodies never come.
    let mut held = Vec::new();
    for _ in 0..2 {
        let r = c
            .post(server.url("/v2/limits/cap/blobs/uploads/"))
            .send()
            .await
            .expect("start");
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        let loc = common::location(&r);
        let mut s = tokio::net::TcpStream::connect(server.addr)
            .await
            .expect("connect");
        let head = format!("PATCH {loc} HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n");
        s.write_all(head.as_bytes()).await.expect("write");
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = c.get(server.url("/v2/")).send().await.expect("get");
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(common::header(&r, "retry-after").as_deref(), Some("1"));
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["errors"][0]["code"], "TOOMANYREQUESTS");
    let r = c.get(server.url("/artifacts")).send().await.expect("get");
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(common::header(&r, "retry-after").is_some());
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error"], "too_many_requests");
    // Health checks are never refused.
    let r = c.get(server.url("/healthz")).send().await.expect("get");
    assert_eq!(r.status(), StatusCode::OK);
    // Once the stalled requests end, requests are served again.
    for mut s in held {
        s.write_all(&[0u8; 10]).await.expect("finish body");
        let _ = read_until_closed(&mut s, Duration::from_millis(300)).await;
    }
    drop(c);
    let r = client().get(server.url("/v2/")).send().await.expect("get");
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn upload_session_cap_answers_429_with_retry_after() {
    let server = TestServer::start_with_env(&[("BPF_REGISTRY_MAX_UPLOAD_SESSIONS", "2")]).await;
    let c = client();
    for _ in 0..2 {
        let r = c
            .post(server.url("/v2/limits/sessions/blobs/uploads/"))
            .send()
            .await
            .expect("start");
        assert_eq!(r.status(), StatusCode::ACCEPTED);
    }
    let r = c
        .post(server.url("/v2/limits/sessions/blobs/uploads/"))
        .send()
        .await
        .expect("start");
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(common::header(&r, "retry-after").as_deref(), Some("1"));
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["errors"][0]["code"], "TOOMANYREQUESTS");
    // A monolithic upload needs no session and still works.
    try_push_blob(&c, &server.base_url, "limits/sessions", b"mono", false)
        .await
        .expect("monolithic upload");
}

#[tokio::test]
async fn body_caps_are_enforced() {
    let server = TestServer::start_with_env(&[
        ("BPF_REGISTRY_MAX_MANIFEST_BYTES", "1024"),
        ("BPF_REGISTRY_MAX_ARTIFACT_BYTES", "1000"),
    ])
    .await;
    let c = client();
    let m = json!({"schemaVersion": 2, "mediaType": MANIFEST,
                   "config": {"mediaType": "x", "digest": sha256(b"{}"), "size": 2},
                   "layers": [], "annotations": {"pad": "x".repeat(2000)}});
    let r = c
        .put(server.url("/v2/limits/caps/manifests/v1"))
        .header("content-type", MANIFEST)
        .body(serde_json::to_vec(&m).expect("json"))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["errors"][0]["code"], "MANIFEST_INVALID");
    let r = c
        .post(server.url("/artifacts"))
        .json(
            &json!({"name": "caps", "version": "1", "type": "map", "architecture": "x86_64",
                      "data": base64::engine::general_purpose::STANDARD.encode([0u8; 2000])}),
        )
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error"], "payload_too_large");
}

/// A tmpfs of `size` mounted for the test, unmounted when dropped.
struct TmpfsMount {
    dir: tempfile::TempDir,
}

impl TmpfsMount {
    fn mount(size: &str) -> Result<TmpfsMount, String> {
        let dir = tempfile::Builder::new()
            .prefix("bpf-registry-tmpfs-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(TmpfsMount { dir })
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test]
async fn full_disk_gives_507_leaves_nothing_partial_and_reads_keep_working() {
    // Fills a tmpfs under the data dir: the fs blob store's disk.
    if !common::engines::fs_blob_store_or_skip("full_disk_gives_507") {
        return;
    }
    let mount = match TmpfsMount::mount("8m") {
        Ok(m) => m,
        Err(e) => {
            let msg =
                format!("cannot mount a size-limited tmpfs (needs root / CAP_SYS_ADMIN): {e}");
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{msg}");
            }
            eprintln!("SKIPPED full_disk test: {msg}");
            return;
        }
    };
    let data_dir = mount.dir.path().join("data");
    let data_dir_s = data_dir.to_string_lossy().into_owned();
    let server = TestServer::start_with_env(&[
        ("BPF_REGISTRY_DATA_DIR", data_dir_s.as_str()),
        ("BPF_REGISTRY_GC_INTERVAL", "0"),
    ])
    .await;
    let (c, base) = (client(), server.base_url.clone());
    let first = try_push_image(
        &c,
        &base,
        "full/disk",
        "v1",
        b"{}",
        b"before the disk filled",
        false,
    )
    .await
    .expect("push before full");

    // Fill the disk with 1.5 MiB blobs until the registry says 507.
    let mut full_answer = None;
    for i in 0..20u64 {
        let data = pseudo_random(1536 * 1024, 1000 + i);
        let d = sha256(&data);
        let r = c
            .post(format!("{base}/v2/full/disk/blobs/uploads/?digest={d}"))
            .body(data)
            .send()
            .await
            .expect("post");
        match r.status() {
            StatusCode::CREATED => continue,
            s => {
                let ct = common::header(&r, "content-type");
                let v: Value = r.json().await.expect("a JSON error body");
                full_answer = Some((s, ct, v, d));
                break;
            }
        }
    }
    let (status, ct, body, failed_digest) = full_answer.expect("the disk never filled");
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{body}");
    assert_eq!(ct.as_deref(), Some("application/json"));
    assert_eq!(body["errors"][0]["code"], "UNKNOWN");
    assert!(
        !blob_path(&data_dir, &failed_digest).exists(),
        "no partial blob"
    );

    // A chunked upload fails cleanly too, and the session is not advanced.
    let r = c
        .post(format!("{base}/v2/full/disk/blobs/uploads/"))
        .send()
        .await
        .expect("post");
    // A session whose cancel the full disk refused leaves its folder for
    // the purge; nothing else may be left.
    let mut kept_session: Option<String> = None;
    if r.status() == StatusCode::ACCEPTED {
        let loc = common::location(&r);
        let r = c
            .patch(format!("{base}{loc}"))
            .body(pseudo_random(3 * 1024 * 1024, 77))
            .send()
            .await
            .expect("patch");
        assert_eq!(r.status(), StatusCode::INSUFFICIENT_STORAGE);
        let r = c
            .delete(format!("{base}{loc}"))
            .send()
            .await
            .expect("cancel");
        // Ending a session is a metadata write too: on a full disk it is
        // refused as such (507), never a generic 500.
        assert!(
            matches!(
                r.status(),
                StatusCode::NO_CONTENT | StatusCode::INSUFFICIENT_STORAGE
            ),
            "{}",
            r.status()
        );
        if r.status() == StatusCode::INSUFFICIENT_STORAGE {
            // Ended for clients all the same (its row and folder go with
            // the next purge).
            let r = c.get(format!("{base}{loc}")).send().await.expect("status");
            assert_eq!(r.status(), StatusCode::NOT_FOUND);
            kept_session = loc.rsplit('/').next().map(str::to_string);
        }
    } else {
        assert_eq!(r.status(), StatusCode::INSUFFICIENT_STORAGE);
    }
    // The REST facade answers its own 507.
    let r = c
        .post(format!("{base}/artifacts"))
        .json(&json!({"name": "full-rest", "version": "1", "type": "map", "architecture": "x86_64",
                      "data": base64::engine::general_purpose::STANDARD.encode(pseudo_random(3 * 1024 * 1024, 5))}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::INSUFFICIENT_STORAGE);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error"], "storage_full");

    // Nothing partial: no temp files, no leftover upload data, every blob
    // sound; and reads keep working.
    let mut stack = vec![data_dir.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            assert!(
                !name.contains(".tmp-"),
                "temp file left: {}",
                e.path().display()
            );
            if e.path().is_dir() {
                stack.push(e.path());
            }
        }
    }
    let leftover: Vec<_> = std::fs::read_dir(data_dir.join("_uploads"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| Some(e.file_name().to_string_lossy().into_owned()) != kept_session)
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    assert!(leftover.is_empty(), "upload leftovers: {leftover:?}");
    assert_blobs_sound(&data_dir);
    verify_acked(&c, &base, &first)
        .await
        .expect("reads on a full disk");
    drop(server);
    drop(mount);
}

/// Measurement, not a check: `cargo test --release --test reliability --
/// --ignored --nocapture gc_time_on_10k_manifests`. Builds a store of
/// 10,000 manifests in 100 repositories (config + layer each, every tenth
/// manifest deleted again, plus 1,000 orphan blobs), then times gc.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore]
async fn gc_time_on_10k_manifests() {
    use bpf_registry::oci::{Digest, Reference, RepoName};
    use bpf_registry::registry::gc::GcOptions;
    use bpf_registry::registry::{Limits, Registry};
    use bpf_registry::storage::{Backend, FsBackend};

    let dir = tempfile::tempdir().expect("tempdir");
    let backend: Arc<dyn Backend> = Arc::new(FsBackend::open(dir.path()).expect("open"));
    let meta = bpf_registry::metadata::Metadata::open_in_dir(dir.path())
        .await
        .expect("metadata");
    let reg = Arc::new(Registry::new(backend, meta, Limits::default()));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for r in 0..100u64 {
        let reg = reg.clone();
        tasks.push(tokio::spawn(async move {
            let repo = RepoName::parse(&format!("bench/repo{r}")).expect("name");
            for i in 0..100u64 {
                let config = format!("{{\"r\":{r},\"i\":{i}}}").into_bytes();
                let layer = pseudo_random(2048, r * 1000 + i);
                let cd = reg
                    .put_small_blob(&repo, bytes::Bytes::from(config.clone()))
                    .await
                    .expect("config");
                let ld = reg
                    .put_small_blob(&repo, bytes::Bytes::from(layer.clone()))
                    .await
                    .expect("layer");
                let m = json!({"schemaVersion": 2, "mediaType": MANIFEST,
                    "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": cd, "size": config.len()},
                    "layers": [{"mediaType": "application/octet-stream", "digest": ld, "size": layer.len()}]});
                let tag = Reference::parse(&format!("v{i}")).expect("tag");
                let stored = reg
                    .put_manifest(&repo, &tag, None, bytes::Bytes::from(serde_json::to_vec(&m).expect("json")))
                    .await
                    .expect("manifest");
                if i % 10 == 0 {
                    reg.delete_manifest(&repo, &Reference::Digest(stored.digest))
                        .await
                        .expect("delete");
                }
                if i % 10 == 5 {
                    let orphan = pseudo_random(4096, 9_000_000 + r * 1000 + i);
                    let d: Digest = reg
                        .put_small_blob(&repo, bytes::Bytes::from(orphan))
                        .await
                        .expect("orphan");
                    let _ = d;
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("generator");
    }
    println!("generated 10,000 manifests in {:?}", t0.elapsed());
    let opts = GcOptions {
        dry_run: false,
        delete_untagged: false,
        grace: Duration::ZERO,
        upload_ttl: Duration::from_secs(86400),
        temp_min_age: Duration::ZERO,
    };
    let mut dry = opts.clone();
    dry.dry_run = true;
    let r = reg.gc(&dry).await.expect("gc");
    println!(
        "gc --dry-run: {} ms ({} blobs, {} would go)",
        r.duration_ms, r.blobs_total, r.blobs_deleted
    );
    let r = reg.gc(&opts).await.expect("gc");
    println!(
        "gc: {} ms; {} manifests kept, {} blobs of {} deleted, {} bytes freed, {} blob links removed",
        r.duration_ms, r.manifests_kept, r.blobs_deleted, r.blobs_total, r.bytes_freed, r.blob_links_removed
    );
    let r = reg.gc(&opts).await.expect("gc");
    println!("gc again (nothing to do): {} ms", r.duration_ms);
    assert_eq!(r.blobs_deleted, 0);
}

/// Runs a second server on `data_dir` until it fails or, if it starts,
/// for a few seconds (a liveness bound, not a measured time).
async fn serve_briefly_on(data_dir: &Path) -> std::io::Result<()> {
    let dir = data_dir.to_string_lossy().into_owned();
    let config = bpf_registry::config::Config::from_lookup(|k| match k {
        "BPF_REGISTRY_DATA_DIR" => Some(dir.clone()),
        "BPF_REGISTRY_HTTP_ADDR" => Some("127.0.0.1:0".into()),
        "BPF_REGISTRY_LOG_LEVEL" => Some("ERROR".into()),
        _ => None,
    })
    .expect("config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    bpf_registry::run(listener, config, tokio::time::sleep(Duration::from_secs(3))).await
}

#[tokio::test]
async fn a_second_server_on_the_same_data_dir_is_refused() {
    use bpf_registry::storage::lock::{DataDirLock, LockMode};
    let server = TestServer::start_with_env(&[("BPF_REGISTRY_GC_INTERVAL", "0")]).await;
    let c = client();
    let data_dir = server.data_dir().to_path_buf();
    let err = serve_briefly_on(&data_dir)
        .await
        .expect_err("a second server must not start beside the first");
    let msg = err.to_string();
    assert!(
        msg.contains(&data_dir.display().to_string())
            && msg.contains("another bpf-registry server or a maintenance command"),
        "{msg}"
    );
    // The first one is unaffected.
    let r = c
        .get(format!("{}/v2/", server.base_url))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::OK);

    // Read-only maintenance runs beside it; gc does not.
    let (code, out, err) = cli(&data_dir, &["scrub"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = cli(&data_dir, &["gc"], &[]);
    assert_eq!(code, 1, "{err}");

    // A maintenance command holding the lock also keeps a server out.
    let mut server = server;
    server.stop().await;
    let held = DataDirLock::try_acquire(&data_dir, LockMode::Exclusive).expect("lock");
    let err = serve_briefly_on(&data_dir)
        .await
        .expect_err("no server beside a maintenance command");
    assert!(err.to_string().contains("maintenance command"), "{err}");
    drop(held);
    let server = server.restart().await;
    let r = c
        .get(format!("{}/v2/", server.base_url))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::OK, "starts once the lock is free");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tag_put_racing_a_delete_of_its_manifest_never_leaves_a_dangling_tag() {
    // Delete-by-digest removes the manifest's tags, then its link; a tag
    // PUT to the same digest in between would survive the delete and name
    // an unlinked manifest, and a tag moved to another manifest in between
    // would be deleted with the old one. Over many trials, every tag that
    // is listed must resolve, and every moved tag must name its new target.
    let server = TestServer::start_with_env(&[("BPF_REGISTRY_GC_INTERVAL", "0")]).await;
    let (c, base) = (client(), server.base_url.clone());
    let repo = "race/tags";
    let config = try_push_blob(&c, &base, repo, b"{}", false)
        .await
        .expect("config");
    let layer = try_push_blob(&c, &base, repo, b"race layer", false)
        .await
        .expect("layer");
    let manifest = |trial: &str| {
        serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": MANIFEST,
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": config, "size": 2},
            "layers": [{"mediaType": "application/octet-stream", "digest": layer, "size": 10}],
            "annotations": {"trial": trial},
        }))
        .expect("json")
    };
    let put = |reference: String, body: Vec<u8>| {
        let (c, url) = (c.clone(), format!("{base}/v2/{repo}/manifests/{reference}"));
        async move {
            c.put(url)
                .header("content-type", MANIFEST)
                .body(body)
                .send()
                .await
                .expect("put")
                .status()
        }
    };
    let other = manifest("other");
    assert_eq!(
        put("other".into(), other.clone()).await,
        StatusCode::CREATED
    );
    const TRIALS: usize = 100;
    const TAGS: usize = 4;
    let mut moved_lost = Vec::new();
    for trial in 0..TRIALS {
        let body = manifest(&trial.to_string());
        let digest = sha256(&body);
        assert_eq!(
            put(format!("seed-{trial}"), body.clone()).await,
            StatusCode::CREATED
        );
        let moving = format!("moving-{trial}");
        assert_eq!(put(moving.clone(), body.clone()).await, StatusCode::CREATED);
        let del = {
            let (c, url) = (c.clone(), format!("{base}/v2/{repo}/manifests/{digest}"));
            tokio::spawn(async move { c.delete(url).send().await.expect("delete").status() })
        };
        let mut puts: Vec<_> = (0..TAGS)
            .map(|i| tokio::spawn(put(format!("t{trial}-{i}"), body.clone())))
            .collect();
        puts.push(tokio::spawn(put(moving.clone(), other.clone())));
        assert_eq!(del.await.expect("join"), StatusCode::ACCEPTED);
        for p in puts {
            assert_eq!(p.await.expect("join"), StatusCode::CREATED);
        }
        let r = c
            .head(format!("{base}/v2/{repo}/manifests/{moving}"))
            .send()
            .await
            .expect("head");
        if common::header(&r, "docker-content-digest") != Some(sha256(&other)) {
            moved_lost.push(moving);
        }
    }
    let v: Value = c
        .get(format!("{base}/v2/{repo}/tags/list"))
        .send()
        .await
        .expect("tags")
        .json()
        .await
        .expect("json");
    let tags: Vec<String> = v["tags"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let mut dangling = Vec::new();
    for t in &tags {
        let r = c
            .head(format!("{base}/v2/{repo}/manifests/{t}"))
            .send()
            .await
            .expect("head");
        if r.status() != StatusCode::OK {
            dangling.push(t.clone());
        }
    }
    println!(
        "tag PUT vs delete: {TRIALS} trials, {} tags listed, {} dangling, {} moved tags lost",
        tags.len(),
        dangling.len(),
        moved_lost.len()
    );
    assert!(
        dangling.is_empty(),
        "tags naming an unlinked manifest: {dangling:?}"
    );
    assert!(
        moved_lost.is_empty(),
        "moved tags deleted with their old manifest: {moved_lost:?}"
    );
}

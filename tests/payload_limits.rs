//! Bounded REST creates against a real server: a zstd bomb declaring a
//! 64 GiB tar entry is refused with 413 at once and never delays
//! `/healthz`; hostile pre-packed archives (`..`, absolute paths, links,
//! devices, FIFOs) are 400 `invalid_artifact` naming the entry and store
//! nothing; one 64 MiB create peaks well under 3x its payload in the real
//! binary (its `VmHWM`), six at once stay within the create memory budget,
//! and a create that cannot get memory within the wait bound is 503 with
//! `Retry-After`, nothing stored.
//!
//! Measured values (time to 413, `/healthz` latency, peak RSS) are printed
//! with `--nocapture`; the assertions are generous liveness and memory
//! bounds, not performance targets.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use common::{pseudo_random, TestServer};
use futures_util::StreamExt as _;
use reqwest::StatusCode;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_bpf-registry");
const MIB: u64 = 1024 * 1024;
/// The default artifact cap, and the payload of the memory tests.
const PAYLOAD: usize = 64 << 20;
/// Liveness bound of a refusal or a `/healthz` beside an attack.
const LIVENESS: Duration = Duration::from_secs(2);
/// A guard against a hung request (not a bound being tested).
const REQUEST_GUARD: Duration = Duration::from_secs(120);

// ---- payloads --------------------------------------------------------------------

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// A create body around base64 `data` (built by hand: no second copy).
fn create_body(name: &str, version: &str, data_b64: &str) -> Vec<u8> {
    let head = format!(
        r#"{{"name":"{name}","version":"{version}","type":"map","architecture":"x86_64","data":""#
    );
    let mut body = Vec::with_capacity(head.len() + data_b64.len() + 2);
    body.extend_from_slice(head.as_bytes());
    body.extend_from_slice(data_b64.as_bytes());
    body.extend_from_slice(b"\"}");
    body
}

/// A zstd frame built by hand (raw and RLE blocks) holding a tar whose one
/// entry declares `declared` bytes, all zeros: ~4 compressed bytes per
/// 128 KiB, so a 64 GiB entry is a 2 MiB payload.
fn zstd_bomb(declared: u64) -> Vec<u8> {
    const BLOCK: u64 = 128 * 1024;
    let mut h = tar::Header::new_gnu();
    h.set_path("bomb.bin").expect("path");
    h.set_size(declared);
    h.set_mode(0o644);
    h.set_cksum();
    // Magic; frame header: no checksum, no content size; window 2^17.
    let mut out = vec![0x28, 0xB5, 0x2F, 0xFD, 0x00, (17 - 10) << 3];
    let block_header = |last: bool, kind: u32, size: u64| {
        let v = u32::from(last) | (kind << 1) | ((size as u32) << 3);
        [v as u8, (v >> 8) as u8, (v >> 16) as u8]
    };
    out.extend_from_slice(&block_header(false, 0, 512)); // raw: the tar header
    out.extend_from_slice(h.as_bytes());
    // The entry's data and the two zero blocks that end the archive.
    let mut left = declared + 1024;
    while left > 0 {
        let n = left.min(BLOCK);
        left -= n;
        out.extend_from_slice(&block_header(left == 0, 1, n)); // RLE of 0x00
        out.push(0);
    }
    out
}

/// A tar entry with raw name bytes (no checks) of `kind`, with `data`.
fn raw_entry(name: &str, kind: tar::EntryType, link: &str, data: &[u8]) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
    h.set_entry_type(kind);
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

/// A tar.zst of a harmless file followed by `hostile`.
fn archive_with(hostile: Vec<u8>) -> Vec<u8> {
    let mut tar = raw_entry("ok.txt", tar::EntryType::Regular, "", b"fine");
    tar.extend_from_slice(&hostile);
    tar.extend_from_slice(&[0u8; 1024]);
    zstd::encode_all(&tar[..], 3).expect("zstd")
}

/// 64 MiB of noise whose first bytes make it an x86-64 ELF object: kept
/// whole for inspection (not eBPF, so a `map` is accepted).
fn elf_payload(len: usize) -> Vec<u8> {
    let mut p = pseudo_random(len, 7);
    p[..4].copy_from_slice(b"\x7fELF");
    p[4] = 2; // 64-bit
    p[5] = 1; // little-endian
    p[18] = 62; // e_machine: x86-64
    p[19] = 0;
    p
}

// ---- the in-process server ---------------------------------------------------------

async fn post(
    c: &reqwest::Client,
    base: &str,
    body: impl Into<reqwest::Body>,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let r = c
        .post(format!("{base}/artifacts"))
        .header("content-type", "application/json")
        .timeout(REQUEST_GUARD)
        .body(body)
        .send()
        .await
        .expect("send POST /artifacts");
    let status = r.status();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap_or_default();
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, headers, v)
}

/// Everything the store holds except internal (`.`) names.
fn stored(s: &TestServer) -> Vec<String> {
    let mut all = s.files_under("blobs");
    all.extend(s.files_under("repositories"));
    all
}

async fn catalog(c: &reqwest::Client, s: &TestServer) -> Value {
    c.get(s.url("/v2/_catalog"))
        .send()
        .await
        .expect("catalog")
        .json()
        .await
        .expect("catalog json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zstd_bomb_declaring_a_64_gib_entry_is_413_at_once_and_stores_nothing() {
    let s = TestServer::start().await;
    let c = common::client();
    let bomb = zstd_bomb(64 << 30);
    assert!(bomb.len() < 2_200_000, "{} bytes", bomb.len());
    let body = create_body("bombs/one", "1.0.0", &b64(&bomb));
    let before = stored(&s);
    let started = Instant::now();
    let (status, _, v) = post(&c, &s.base_url, body).await;
    let took = started.elapsed();
    eprintln!(
        "MEASURE time to answer a 64 GiB bomb: {} ms",
        took.as_millis()
    );
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    assert_eq!(v["error"], "payload_too_large", "{v}");
    assert!(took < LIVENESS, "the bomb took {took:?}");
    assert_eq!(stored(&s), before);
    assert_eq!(catalog(&c, &s).await["repositories"], serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers_promptly_while_two_bombs_run() {
    let s = TestServer::start().await;
    let c = common::client();
    let bomb = b64(&zstd_bomb(64 << 30));
    let bombs: Vec<_> = (0..2)
        .map(|i| {
            let c = c.clone();
            let base = s.base_url.clone();
            let body = create_body(&format!("bombs/b{i}"), "1.0.0", &bomb);
            tokio::spawn(async move { post(&c, &base, body).await })
        })
        .collect();
    let mut worst = Duration::ZERO;
    let mut probes = 0;
    // At least a few probes, and on until both bombs are answered.
    while probes < 5 || bombs.iter().any(|b| !b.is_finished()) {
        let started = Instant::now();
        let r = tokio::time::timeout(REQUEST_GUARD, c.get(s.url("/healthz")).send())
            .await
            .expect("healthz hung")
            .expect("healthz");
        assert_eq!(r.status(), StatusCode::OK);
        worst = worst.max(started.elapsed());
        probes += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "MEASURE /healthz under two bombs: worst {} ms over {probes} probes",
        worst.as_millis()
    );
    for b in bombs {
        let (status, _, v) = b.await.expect("bomb task");
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    }
    assert!(worst < LIVENESS, "/healthz took {worst:?} beside two bombs");
}

#[tokio::test]
async fn hostile_prepacked_archives_are_invalid_artifact_naming_the_entry() {
    use tar::EntryType as E;
    let s = TestServer::start().await;
    let c = common::client();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "../../etc/x",
            raw_entry("../../etc/x", E::Regular, "", b"x"),
        ),
        (
            "/etc/passwd",
            raw_entry("/etc/passwd", E::Regular, "", b"root"),
        ),
        ("link", raw_entry("link", E::Symlink, "/etc/shadow", b"")),
        ("hard", raw_entry("hard", E::Link, "ok.txt", b"")),
        ("dev/null", raw_entry("dev/null", E::Char, "", b"")),
        ("dev/sda", raw_entry("dev/sda", E::Block, "", b"")),
        ("fifo", raw_entry("fifo", E::Fifo, "", b"")),
    ];
    for (i, (entry, hostile)) in cases.into_iter().enumerate() {
        let before = stored(&s);
        let body = create_body(
            &format!("hostile/a{i}"),
            "1.0.0",
            &b64(&archive_with(hostile)),
        );
        let (status, _, v) = post(&c, &s.base_url, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{entry}: {v}");
        assert_eq!(v["error"], "invalid_artifact", "{entry}: {v}");
        let message = v["message"].as_str().unwrap_or_default();
        assert!(message.contains(entry), "{entry}: {message}");
        assert_eq!(stored(&s), before, "{entry}: nothing is stored");
    }
    assert_eq!(catalog(&c, &s).await["repositories"], serde_json::json!([]));
    // A clean archive with the same first entry is accepted.
    let clean = archive_with(Vec::new());
    let (status, _, v) = post(
        &c,
        &s.base_url,
        create_body("hostile/ok", "1.0.0", &b64(&clean)),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(v["checksum"], common::sha256(&clean));
}

// ---- the real binary, for its peak RSS ------------------------------------------------

/// The `bpf-registry` binary on 127.0.0.1 over a fresh data dir; killed
/// when dropped.
struct Proc {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    data: tempfile::TempDir,
}

impl Proc {
    async fn start(env: &[(&str, &str)]) -> Proc {
        let data = tempfile::tempdir().expect("tempdir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let log = data.path().join("server.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new(BIN);
        cmd.env_clear()
            .env("BPF_REGISTRY_HTTP_ADDR", addr.to_string())
            .env("BPF_REGISTRY_DATA_DIR", data.path().join("store"))
            .env("BPF_REGISTRY_LOG_LEVEL", "WARN")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log file"))
            .stderr(log_file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start bpf-registry");
        let mut p = Proc {
            child,
            addr,
            log,
            data,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = reqwest::get(p.url("/healthz"))
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if ok {
                return p;
            }
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("the server exited ({status}): {}", p.log());
            }
            assert!(Instant::now() < deadline, "not ready: {}", p.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A `/proc/<pid>/status` field, in MiB.
    fn status_mib(&self, field: &str) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("/proc status");
        let kib: u64 = status
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{field} in {status}"));
        kib as f64 / 1024.0
    }

    /// Files the store holds outside internal (`.`) names.
    fn blob_count(&self) -> usize {
        std::fs::read_dir(self.data.path().join("store/blobs/sha256"))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Posts one 64 MiB create to a fresh binary; its baseline and peak RSS.
async fn peak_of_one_create(what: &str, payload: Vec<u8>) -> (f64, f64) {
    let p = Proc::start(&[]).await;
    let body = create_body("mem/one", "1.0.0", &b64(&payload));
    drop(payload);
    let c = reqwest::Client::new();
    // Warm up the paths a create takes (threads, allocator arenas).
    let (status, _, v) = post(
        &c,
        &p.base(),
        create_body("mem/warm", "1.0.0", &b64(b"warm")),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let baseline = p.status_mib("VmRSS:");
    let body_mib = body.len() as f64 / MIB as f64;
    let (status, _, v) = post(&c, &p.base(), body).await;
    assert_eq!(status, StatusCode::CREATED, "{v} {}", p.log());
    let peak = p.status_mib("VmHWM:");
    eprintln!(
        "MEASURE one 64 MiB create ({what}): body {body_mib:.1} MiB; server RSS {baseline:.1} MiB before, peak {peak:.1} MiB ({:.2}x payload)",
        peak / 64.0
    );
    (baseline, peak)
}

#[tokio::test]
async fn one_64_mib_create_peaks_under_three_times_its_payload() {
    let (_, peak) = peak_of_one_create("random", pseudo_random(PAYLOAD, 1)).await;
    assert!(peak < 3.0 * 64.0, "peak RSS {peak:.1} MiB");
}

#[tokio::test]
async fn one_64_mib_elf_create_peaks_under_three_times_its_payload() {
    let (_, peak) = peak_of_one_create("ELF", elf_payload(PAYLOAD)).await;
    assert!(peak < 3.0 * 64.0, "peak RSS {peak:.1} MiB");
}

#[tokio::test]
async fn one_64_mib_prepacked_create_peaks_under_three_times_its_payload() {
    // A tar.zst of an incompressible 63 MiB ELF object: stored as is, its
    // ELF read out for inspection.
    let elf = elf_payload(63 << 20);
    let mut builder = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(elf.len() as u64);
    h.set_mode(0o644);
    builder
        .append_data(&mut h, "prog.o", &elf[..])
        .expect("tar");
    let tar = builder.into_inner().expect("tar");
    drop(elf);
    let packed = zstd::encode_all(&tar[..], 1).expect("zstd");
    drop(tar);
    assert!(packed.len() <= PAYLOAD, "{}", packed.len());
    let (_, peak) = peak_of_one_create("pre-packed tar.zst", packed).await;
    assert!(peak < 3.0 * 64.0, "peak RSS {peak:.1} MiB");
}

/// A body of a shared base64 text, streamed with its length declared.
fn streamed_body(name: &str, data_b64: &Bytes) -> (reqwest::Body, u64) {
    let head = Bytes::from(format!(
        r#"{{"name":"{name}","version":"1.0.0","type":"map","architecture":"x86_64","data":""#
    ));
    let tail = Bytes::from_static(b"\"}");
    let len = (head.len() + data_b64.len() + tail.len()) as u64;
    // In 1 MiB pieces, as a client would send it.
    let mut parts = vec![head];
    let mut at = 0;
    while at < data_b64.len() {
        let end = (at + (1 << 20)).min(data_b64.len());
        parts.push(data_b64.slice(at..end));
        at = end;
    }
    parts.push(tail);
    let stream = futures_util::stream::iter(parts.into_iter().map(Ok::<_, std::io::Error>));
    (reqwest::Body::wrap_stream(stream), len)
}

#[tokio::test]
async fn six_concurrent_64_mib_creates_stay_within_the_memory_budget() {
    const BUDGET_MIB: u64 = 256; // the default
                                 // A long wait bound: this test is about memory, not about refusals
                                 // (two run at a time; the last ones wait for four to finish).
    let p = Proc::start(&[("BPF_REGISTRY_CREATE_MEMORY_WAIT", "300s")]).await;
    let data = Bytes::from(b64(&pseudo_random(PAYLOAD, 3)));
    let c = reqwest::Client::new();
    let started = Instant::now();
    let creates: Vec<_> = (0..6)
        .map(|i| {
            let (body, len) = streamed_body(&format!("mem/six{i}"), &data);
            let c = c.clone();
            let url = p.url("/artifacts");
            tokio::spawn(async move {
                let r = c
                    .post(url)
                    .header("content-type", "application/json")
                    .header("content-length", len)
                    .timeout(REQUEST_GUARD)
                    .body(body)
                    .send()
                    .await
                    .expect("send");
                let status = r.status();
                (status, r.text().await.unwrap_or_default())
            })
        })
        .collect();
    for t in creates {
        let (status, text) = t.await.expect("create task");
        assert_eq!(status, StatusCode::CREATED, "{text}");
    }
    let peak = p.status_mib("VmHWM:");
    eprintln!(
        "MEASURE six concurrent 64 MiB creates: {} ms, server peak RSS {peak:.1} MiB (budget {BUDGET_MIB} MiB)",
        started.elapsed().as_millis()
    );
    // The budget bounds what the creates hold; the rest of the process
    // (binary, runtime, buffers of the other requests) is well under 64 MiB.
    assert!(
        peak < (BUDGET_MIB + 64) as f64,
        "peak RSS {peak:.1} MiB with a {BUDGET_MIB} MiB budget"
    );
}

#[tokio::test]
async fn a_create_that_cannot_get_memory_in_time_is_503_with_retry_after() {
    // A 1 MiB cap and a budget one such create fills: a create whose body
    // stalls holds it, and the next one waits one second, then is refused.
    let p = Proc::start(&[
        ("BPF_REGISTRY_MAX_ARTIFACT_BYTES", "1048576"),
        ("BPF_REGISTRY_CREATE_MEMORY_BUDGET", "1048576"),
        ("BPF_REGISTRY_CREATE_MEMORY_WAIT", "1s"),
    ])
    .await;
    let c = reqwest::Client::new();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let head = Bytes::from_static(
        br#"{"name":"busy/slow","version":"1.0.0","type":"map","architecture":"x86_64","data":"QUJD"#,
    );
    let len = head.len() + 2;
    let stalled = futures_util::stream::once(async move { Ok::<_, std::io::Error>(head) }).chain(
        futures_util::stream::once(async move {
            let _ = rx.await;
            Ok(Bytes::from_static(b"\"}"))
        }),
    );
    let slow = {
        let c = c.clone();
        let url = p.url("/artifacts");
        tokio::spawn(async move {
            c.post(url)
                .header("content-type", "application/json")
                .header("content-length", len)
                .timeout(REQUEST_GUARD)
                .body(reqwest::Body::wrap_stream(stalled))
                .send()
                .await
                .map(|r| r.status())
        })
    };
    // Let the slow create take the budget.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let blobs = p.blob_count();
    let started = Instant::now();
    let (status, headers, v) = post(&c, &p.base(), create_body("busy/next", "1.0.0", "QUJD")).await;
    eprintln!("MEASURE refusal after {} ms", started.elapsed().as_millis());
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(v["error"], "server_busy", "{v}");
    let retry: u64 = headers
        .get("retry-after")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse().ok())
        .unwrap_or_else(|| panic!("Retry-After in {headers:?}"));
    assert!(retry >= 1, "{retry}");
    assert_eq!(p.blob_count(), blobs, "nothing stored");
    // Once the first create finishes, the budget is free again.
    let _ = tx.send(());
    let first = slow.await.expect("slow task").expect("slow create");
    assert_eq!(first, StatusCode::CREATED);
    let (status, _, v) = post(&c, &p.base(), create_body("busy/next", "1.0.0", "QUJD")).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
}

#[tokio::test]
async fn leftover_spool_files_are_removed_at_start_up() {
    let s = TestServer::start().await;
    let spool = s.data_dir().join(".spool");
    assert!(spool.is_dir(), "the spool folder is made at start-up");
    std::fs::write(spool.join(".spool-leftover"), b"from a crash").expect("write");
    let s = s.restart().await;
    let spool = s.data_dir().join(".spool");
    assert_eq!(std::fs::read_dir(&spool).expect("spool").count(), 0);
    // The spool is internal: it never shows as a repository.
    let c = common::client();
    assert_eq!(catalog(&c, &s).await["repositories"], serde_json::json!([]));
}

#[tokio::test]
async fn a_version_held_by_a_plain_image_is_409_before_the_payload_is_decoded() {
    let s = TestServer::start().await;
    let c = common::client();
    let config = s.push_empty_config(&c, "plain/app").await;
    let layer = s.push_blob(&c, "plain/app", b"layer").await;
    let m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": common::OCI_MANIFEST,
        "config": config,
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": 5}],
    });
    let m = serde_json::to_vec(&m).expect("json");
    s.put_manifest_ok(&c, "plain/app", "1.0.0", common::OCI_MANIFEST, &m)
        .await;
    let before = stored(&s);
    // Decoding first would answer 400 `invalid_base64`, or 413 for the bomb.
    let bomb = b64(&zstd_bomb(64 << 30));
    for data in ["!!!!", bomb.as_str()] {
        let (status, _, v) = post(&c, &s.base_url, create_body("plain/app", "1.0.0", data)).await;
        assert_eq!(status, StatusCode::CONFLICT, "{v}");
        assert_eq!(v["error"], "version_exists", "{v}");
    }
    assert_eq!(stored(&s), before);
}

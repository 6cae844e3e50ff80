//! Chunked uploads across a `kill -9` of the real binary: an acknowledged
//! PATCH's bytes survive it (the restarted server reports at least the
//! acknowledged offset, the upload resumes and its digest is checked from
//! the bytes on disk), a chunk cut off mid-body is not counted, and a
//! wrong digest is still refused after the restart.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{pseudo_random, sha256};
use reqwest::StatusCode;

const BIN: &str = env!("CARGO_BIN_EXE_bpf-registry");

/// The binary on 127.0.0.1 over `data`; SIGKILLed when dropped.
struct Proc {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Proc {
    async fn start(data: &Path) -> Proc {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let log = data.join(format!("server-{port}.log"));
        let log_file = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new(BIN);
        cmd.env_clear()
            .env("BPF_REGISTRY_HTTP_ADDR", addr.to_string())
            .env("BPF_REGISTRY_DATA_DIR", data.join("store"))
            .env("BPF_REGISTRY_LOG_LEVEL", "WARN")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log file"))
            .stderr(log_file);
        let mut p = Proc {
            child: cmd.spawn().expect("start bpf-registry"),
            addr,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
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

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `kill -9`, and the exit reaped.
    fn kill9(mut self) {
        let _ = self.child.kill(); // SIGKILL on Unix
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn range_of(r: &reqwest::Response) -> Option<String> {
    r.headers()
        .get("range")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn location_of(r: &reqwest::Response) -> String {
    r.headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .expect("a Location")
        .to_string()
}

async fn patch(
    c: &reqwest::Client,
    p: &Proc,
    loc: &str,
    at: usize,
    chunk: &[u8],
) -> reqwest::Response {
    let r = c
        .patch(p.url(loc))
        .header("content-type", "application/octet-stream")
        .header("content-range", format!("{at}-{}", at + chunk.len() - 1))
        .body(chunk.to_vec())
        .send()
        .await
        .expect("PATCH");
    assert_eq!(r.status(), StatusCode::ACCEPTED, "PATCH at {at}");
    assert_eq!(range_of(&r), Some(format!("0-{}", at + chunk.len() - 1)));
    r
}

/// Starts an upload of `data` in `chunk`-byte pieces, acknowledges the
/// first `acked` pieces, then begins the next one and sends only half its
/// body. Returns the upload's location and the acknowledged offset.
async fn upload_then_cut(p: &Proc, data: &[u8], chunk: usize, acked: usize) -> (String, usize) {
    let c = reqwest::Client::new();
    let r = c
        .post(p.url("/v2/crash/chunked/blobs/uploads/"))
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let mut loc = location_of(&r);
    let mut off = 0;
    for _ in 0..acked {
        let r = patch(&c, p, &loc, off, &data[off..off + chunk]).await;
        loc = location_of(&r);
        off += chunk;
    }
    // The next chunk is cut off: headers and half its body, then silence.
    let mut s = std::net::TcpStream::connect(p.addr).expect("connect");
    let head = format!(
        "PATCH {loc} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/octet-stream\r\n\
         Content-Range: {off}-{}\r\nContent-Length: {chunk}\r\n\r\n",
        p.addr,
        off + chunk - 1
    );
    s.write_all(head.as_bytes()).expect("send headers");
    s.write_all(&data[off..off + chunk / 2])
        .expect("send half a chunk");
    s.flush().expect("flush");
    // Let the server take (and write) what it was sent.
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::mem::forget(s); // the connection dies with the server
    (loc, off)
}

/// Resumes after the restart: the status, the rest of the chunks, the PUT.
async fn resume(
    p: &Proc,
    loc: &str,
    data: &[u8],
    chunk: usize,
    acked_to: usize,
    digest: &str,
) -> reqwest::Response {
    let c = reqwest::Client::new();
    let st = c.get(p.url(loc)).send().await.expect("GET upload");
    assert_eq!(st.status(), StatusCode::NO_CONTENT, "{}", p.log());
    // Exactly the acknowledged bytes: the half chunk was never acknowledged.
    assert_eq!(range_of(&st), Some(format!("0-{}", acked_to - 1)));
    let mut loc = location_of(&st);
    let mut off = acked_to;
    while off < data.len() {
        let end = (off + chunk).min(data.len());
        let r = patch(&c, p, &loc, off, &data[off..end]).await;
        loc = location_of(&r);
        off = end;
    }
    let sep = if loc.contains('?') { '&' } else { '?' };
    c.put(p.url(&format!("{loc}{sep}digest={digest}")))
        .send()
        .await
        .expect("PUT")
}

#[tokio::test]
async fn acknowledged_chunks_survive_a_kill_9_and_the_upload_resumes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let chunk = 1024 * 1024 + 3;
    let data = pseudo_random(5 * chunk + 11, 77);
    let digest = sha256(&data);
    let p = Proc::start(dir.path()).await;
    let (loc, acked_to) = upload_then_cut(&p, &data, chunk, 3).await;
    p.kill9();

    let p = Proc::start(dir.path()).await;
    let r = resume(&p, &loc, &data, chunk, acked_to, &digest).await;
    assert_eq!(r.status(), StatusCode::CREATED, "{}", p.log());
    let got = reqwest::get(p.url(&format!("/v2/crash/chunked/blobs/{digest}")))
        .await
        .expect("GET blob");
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(sha256(&got.bytes().await.expect("blob bytes")), digest);
}

#[tokio::test]
async fn a_wrong_digest_is_refused_after_a_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let chunk = 512 * 1024 + 1;
    let data = pseudo_random(3 * chunk, 78);
    let wrong = sha256(b"not these bytes");
    let p = Proc::start(dir.path()).await;
    let (loc, acked_to) = upload_then_cut(&p, &data, chunk, 2).await;
    p.kill9();

    let p = Proc::start(dir.path()).await;
    let r = resume(&p, &loc, &data, chunk, acked_to, &wrong).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body = r.text().await.expect("error body");
    assert!(body.contains("DIGEST_INVALID"), "{body}");
    let right = sha256(&data);
    let head = reqwest::Client::new()
        .head(p.url(&format!("/v2/crash/chunked/blobs/{right}")))
        .send()
        .await
        .expect("HEAD blob");
    assert_eq!(head.status(), StatusCode::NOT_FOUND, "nothing was stored");
}

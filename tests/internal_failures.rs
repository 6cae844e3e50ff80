//! An internal failure under a running server (the store broken beneath
//! it) is a 500 in the route's dialect: a fixed message naming the request
//! id, no internal detail (no path, no OS error), and the detail logged
//! under that request id. Tests run as root, so the fault is one root
//! cannot read past: a blob file replaced by a symbolic link to itself
//! (every open or stat fails with ELOOP).

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use base64::Engine as _;
use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Everything the server logs in this test binary.
fn log() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::ERROR)
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .try_init();
        buf
    })
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The log lines that name `request_id`.
fn logged_under(request_id: &str) -> Vec<String> {
    let text = String::from_utf8_lossy(&log().lock().unwrap()).into_owned();
    text.lines()
        .filter(|l| l.contains(&format!("request_id={request_id}")))
        .map(str::to_string)
        .collect()
}

/// Replaces the stored blob `digest` by a link to itself: every stat or
/// open of it fails with ELOOP, whoever the server runs as.
fn break_blob(s: &TestServer, digest: &str) {
    let file = s.data_dir().join("blobs/sha256").join(hex_of(digest));
    assert!(file.is_file(), "{} is stored", file.display());
    std::fs::remove_file(&file).unwrap();
    std::os::unix::fs::symlink(&file, &file).unwrap();
}

/// The cause was logged under the request id: the failing path and the
/// OS error.
fn assert_logged(request_id: &str, digest: &str) {
    let lines = logged_under(request_id);
    assert!(
        lines.iter().any(|l| l.contains("internal failure")
            && l.contains(hex_of(digest))
            && l.contains("symbolic links")),
        "the cause is logged under the request id: {lines:?}"
    );
}

/// The body says nothing of the store: no path, no OS error.
fn assert_no_detail(s: &TestServer, digest: &str, body: &str) {
    for leak in [
        "blobs/",
        hex_of(digest),
        "symbolic",
        "os error",
        &s.data_dir().display().to_string(),
    ] {
        assert!(!body.contains(leak), "the answer leaks {leak:?}: {body}");
    }
}

#[tokio::test]
async fn an_unreadable_blob_is_a_500_without_detail_and_logged_with_the_request_id() {
    if !common::engines::fs_blob_store_or_skip(
        "an_unreadable_blob_is_a_500_without_detail_and_logged_with_the_request_id",
    ) {
        return;
    }
    log();
    let s = TestServer::start().await;
    let c = client();
    let data = b"a blob the store will fail to read";
    let digest = s.push_blob(&c, "team/app", data).await;
    break_blob(&s, &digest);

    let r = c
        .get(s.url(&format!("/v2/team/app/blobs/{digest}")))
        .header("x-request-id", "broken-blob-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(header(&r, "x-request-id").as_deref(), Some("broken-blob-1"));
    let body = r.text().await.unwrap();
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["errors"][0]["code"], "UNKNOWN", "{body}");
    let message = v["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("broken-blob-1"), "{body}");
    assert_no_detail(&s, &digest, &body);

    assert_logged("broken-blob-1", &digest);
}

#[tokio::test]
async fn an_unreadable_rest_binary_is_a_500_without_detail_and_logged_with_the_request_id() {
    if !common::engines::fs_blob_store_or_skip(
        "an_unreadable_rest_binary_is_a_500_without_detail_and_logged_with_the_request_id",
    ) {
        return;
    }
    log();
    let s = TestServer::start().await;
    let c = client();
    let b64 = base64::engine::general_purpose::STANDARD.encode(b"program bytes");
    let r = c
        .post(s.url("/artifacts"))
        .header("content-type", "application/json")
        .json(&json!({
            "name": "team/tool",
            "version": "1.0.0",
            "type": "program",
            "architecture": "x86_64",
            "data": b64,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let binary = s.url(&format!("/artifacts/{id}/binary"));
    let r = c.get(&binary).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let etag = header(&r, "etag").unwrap();
    let layer = etag.trim_matches('"').to_string();
    break_blob(&s, &layer);

    let r = c
        .get(&binary)
        .header("x-request-id", "broken-binary-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body = r.text().await.unwrap();
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"], "internal_error", "{body}");
    assert!(
        v["message"]
            .as_str()
            .unwrap_or_default()
            .contains("broken-binary-1"),
        "{body}"
    );
    assert_no_detail(&s, &layer, &body);
    assert_logged("broken-binary-1", &layer);
}

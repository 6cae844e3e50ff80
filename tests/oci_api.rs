//! The OCI distribution API over raw HTTP (reqwest, and a raw socket for
//! paths reqwest would normalise), against a real server on 127.0.0.1:0.
//! Each test names one behaviour; every error asserts the spec's JSON
//! envelope and its code.

#![allow(clippy::cloned_ref_to_slice_refs, clippy::too_many_arguments)]

mod common;

use std::collections::HashSet;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

// ---- uploads -----------------------------------------------------------------

#[tokio::test]
async fn chunk_out_of_order_is_416() {
    let s = TestServer::start().await;
    let c = client();
    let data = pseudo_random(3000, 1);
    let loc = s.start_upload(&c, "bpf/chunks").await;

    let r = c
        .patch(s.abs(&loc))
        .header("content-type", "application/octet-stream")
        .header("content-range", "0-999")
        .header("content-length", "1000")
        .body(data[..1000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&r, "range").as_deref(), Some("0-999"));
    let loc = location(&r);

    // Skips bytes 1000..1999.
    let r = c
        .patch(s.abs(&loc))
        .header("content-type", "application/octet-stream")
        .header("content-range", "2000-2999")
        .header("content-length", "1000")
        .body(data[2000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&r, "range").as_deref(),
        Some("0-999"),
        "416 must report the current progress"
    );
    assert!(
        header(&r, "location").is_some(),
        "416 should carry the upload Location"
    );
    assert_oci_error(r, StatusCode::RANGE_NOT_SATISFIABLE, "BLOB_UPLOAD_INVALID").await;

    // Re-sending an already-acknowledged range is out of order as well.
    let r = c
        .patch(s.abs(&loc))
        .header("content-range", "0-999")
        .header("content-length", "1000")
        .body(data[..1000].to_vec())
        .send()
        .await
        .unwrap();
    assert_oci_error(r, StatusCode::RANGE_NOT_SATISFIABLE, "BLOB_UPLOAD_INVALID").await;

    // The upload is intact: continue from the reported offset and finish.
    let r = c
        .patch(s.abs(&loc))
        .header("content-range", "1000-2999")
        .header("content-length", "2000")
        .body(data[1000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&r, "range").as_deref(), Some("0-2999"));
    let digest = sha256(&data);
    let r = c
        .put(s.abs(&with_query(&location(&r), &format!("digest={digest}"))))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let got = c
        .get(s.url(&format!("/v2/bpf/chunks/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(got.bytes().await.unwrap().as_ref(), data.as_slice());
}

#[tokio::test]
async fn upload_status_reports_range() {
    let s = TestServer::start().await;
    let c = client();
    let data = pseudo_random(5000, 2);
    let loc = s.start_upload(&c, "bpf/status").await;
    let mut sent = 0usize;
    for part in data.chunks(1234) {
        let r = c
            .patch(s.abs(&loc))
            .header(
                "content-range",
                format!("{}-{}", sent, sent + part.len() - 1),
            )
            .header("content-length", part.len().to_string())
            .body(part.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        sent += part.len();
        let st = c.get(s.abs(&loc)).send().await.unwrap();
        assert_eq!(st.status(), StatusCode::NO_CONTENT);
        assert_eq!(
            header(&st, "range").as_deref(),
            Some(format!("0-{}", sent - 1).as_str())
        );
        let st_loc = location(&st);
        assert!(
            st_loc.contains("/v2/bpf/status/blobs/uploads/"),
            "Location {st_loc}"
        );
    }
    // A chunk without Content-Range (streamed) is appended at the offset.
    let extra = pseudo_random(100, 22);
    let r = c
        .patch(s.abs(&loc))
        .body(extra.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&r, "range").as_deref(), Some("0-5099"));
    let st = c.get(s.abs(&loc)).send().await.unwrap();
    assert_eq!(st.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&st, "range").as_deref(), Some("0-5099"));
    let mut all = data.clone();
    all.extend_from_slice(&extra);
    let digest = sha256(&all);
    let r = c
        .put(s.abs(&with_query(&location(&st), &format!("digest={digest}"))))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    // Once closed, the session has no status any more.
    let r = c.get(s.abs(&loc)).send().await.unwrap();
    assert_oci_error(r, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
    let loc = s.start_upload(&c, "bpf/status").await;

    // Status of an unknown upload id.
    let r = c
        .get(s.url("/v2/bpf/status/blobs/uploads/0b5f3c2e-8f5e-4c1a-9a53-3d5c1c6d2a10"))
        .send()
        .await
        .unwrap();
    assert_oci_error(r, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;

    // The session belongs to its repository.
    let id = loc.rsplit('/').next().unwrap().split('?').next().unwrap();
    let r = c
        .get(s.url(&format!("/v2/bpf/other/blobs/uploads/{id}")))
        .send()
        .await
        .unwrap();
    assert_oci_error(r, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
}

#[tokio::test]
async fn chunked_upload_survives_restart() {
    let s = TestServer::start().await;
    let data = pseudo_random(3 * 1024 * 1024 + 17, 3);
    let half = 2 * 1024 * 1024 + 5;
    let loc = {
        let c = client();
        let loc = s.start_upload(&c, "bpf/restart").await;
        let r = c
            .patch(s.abs(&loc))
            .header("content-range", format!("0-{}", half - 1))
            .header("content-length", half.to_string())
            .body(data[..half].to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        assert_eq!(header(&r, "range"), Some(format!("0-{}", half - 1)));
        location(&r)
    };
    assert!(
        !loc.starts_with("http"),
        "expected a path Location, got {loc} (absolute locations break on restart)"
    );

    let s = s.restart().await;
    let c = client();
    let st = c.get(s.abs(&loc)).send().await.unwrap();
    assert_eq!(
        st.status(),
        StatusCode::NO_CONTENT,
        "upload session lost across restart"
    );
    assert_eq!(header(&st, "range"), Some(format!("0-{}", half - 1)));
    let loc = location(&st);

    let r = c
        .patch(s.abs(&loc))
        .header("content-range", format!("{}-{}", half, data.len() - 1))
        .header("content-length", (data.len() - half).to_string())
        .body(data[half..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&r, "range"), Some(format!("0-{}", data.len() - 1)));
    let digest = sha256(&data);
    let r = c
        .put(s.abs(&with_query(&location(&r), &format!("digest={digest}"))))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        header(&r, "docker-content-digest").as_deref(),
        Some(digest.as_str())
    );

    let got = c
        .get(s.url(&format!("/v2/bpf/restart/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    let body = got.bytes().await.unwrap();
    assert_eq!(body.len(), data.len());
    assert!(
        body.as_ref() == data.as_slice(),
        "blob bytes differ after restart"
    );
    assert!(
        s.files_under("_uploads").is_empty(),
        "upload folder left behind"
    );
}

#[tokio::test]
async fn wrong_digest_is_rejected_and_nothing_visible() {
    let s = TestServer::start().await;
    let c = client();
    let data = pseudo_random(10_000, 4);
    let actual = sha256(&data);
    let wrong = sha256(b"something else entirely");

    // POST + PATCH + PUT with a digest that does not match.
    let loc = s.start_upload(&c, "bpf/wrong").await;
    let r = c
        .patch(s.abs(&loc))
        .header("content-range", format!("0-{}", data.len() - 1))
        .header("content-length", data.len().to_string())
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let loc = location(&r);
    let r = c
        .put(s.abs(&with_query(&loc, &format!("digest={wrong}"))))
        .send()
        .await
        .unwrap();
    assert_oci_error(r, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;

    // Monolithic POST ?digest= with a wrong digest.
    let r = c
        .post(s.url(&format!("/v2/bpf/wrong/blobs/uploads/?digest={wrong}")))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_oci_error(r, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;

    for d in [&wrong, &actual] {
        let r = c
            .head(s.url(&format!("/v2/bpf/wrong/blobs/{d}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "HEAD {d}");
        let r = c
            .get(s.url(&format!("/v2/bpf/wrong/blobs/{d}")))
            .send()
            .await
            .unwrap();
        assert_oci_error(r, StatusCode::NOT_FOUND, "BLOB_UNKNOWN").await;
    }
    let blobs = s.files_under("blobs");
    for d in [&wrong, &actual] {
        assert!(
            !blobs.iter().any(|f| f.contains(hex_of(d))),
            "a blob file for {d} exists: {blobs:?}"
        );
    }
    assert!(
        blobs.is_empty(),
        "no blob should be stored at all: {blobs:?}"
    );
    let uploads = s.files_under("_uploads");
    assert!(uploads.is_empty(), "_uploads not empty: {uploads:?}");
    // The failed session is over.
    let r = c.get(s.abs(&loc)).send().await.unwrap();
    assert_oci_error(r, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
}

#[tokio::test]
async fn cancel_upload_then_404() {
    let s = TestServer::start().await;
    let c = client();
    let loc = s.start_upload(&c, "bpf/cancel").await;
    let r = c
        .patch(s.abs(&loc))
        .header("content-range", "0-9")
        .header("content-length", "10")
        .body(vec![7u8; 10])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let loc = location(&r);

    let r = c.delete(s.abs(&loc)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);

    let r = c.get(s.abs(&loc)).send().await.unwrap();
    assert_oci_error(r, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
    let r = c
        .patch(s.abs(&loc))
        .header("content-range", "10-19")
        .header("content-length", "10")
        .body(vec![7u8; 10])
        .send()
        .await
        .unwrap();
    assert_oci_error(r, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
    let digest = sha256(&[7u8; 10]);
    let r = c
        .put(s.abs(&with_query(&loc, &format!("digest={digest}"))))
        .send()
        .await
        .unwrap();
    assert_oci_error(r, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
    let r = c.delete(s.abs(&loc)).send().await.unwrap();
    assert_oci_error(r, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
    assert!(s.files_under("_uploads").is_empty());
    assert!(s.files_under("blobs").is_empty());
}

#[tokio::test]
async fn cross_repo_mount_201_and_fallback_202() {
    let s = TestServer::start().await;
    let c = client();
    let data = pseudo_random(4096, 5);
    let digest = s.push_blob(&c, "bpf/source", &data).await;

    // Mount from a repository that has the blob.
    let r = c
        .post(s.url(&format!(
            "/v2/bpf/target/blobs/uploads/?mount={digest}&from=bpf/source"
        )))
        .header("content-length", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(location(&r), format!("/v2/bpf/target/blobs/{digest}"));
    assert_eq!(
        header(&r, "docker-content-digest").as_deref(),
        Some(digest.as_str())
    );
    let got = c
        .get(s.url(&format!("/v2/bpf/target/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(got.bytes().await.unwrap().as_ref(), data.as_slice());

    // The source does not have the blob (it exists, but elsewhere): no
    // mount, an upload session is opened instead.
    let r = c
        .post(s.url(&format!(
            "/v2/bpf/third/blobs/uploads/?mount={digest}&from=bpf/unrelated"
        )))
        .header("content-length", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let loc = location(&r);
    assert!(
        loc.contains("/v2/bpf/third/blobs/uploads/"),
        "Location {loc}"
    );
    let r = c
        .head(s.url(&format!("/v2/bpf/third/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::NOT_FOUND,
        "a failed mount must not link the blob"
    );

    // An unknown digest: 202 and the session can be used to upload it.
    let other = pseudo_random(100, 55);
    let od = sha256(&other);
    let r = c
        .post(s.url(&format!(
            "/v2/bpf/third/blobs/uploads/?mount={od}&from=bpf/source"
        )))
        .header("content-length", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let loc = location(&r);
    let r = c
        .put(s.abs(&with_query(&loc, &format!("digest={od}"))))
        .body(other.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let got = c
        .get(s.url(&format!("/v2/bpf/third/blobs/{od}")))
        .send()
        .await
        .unwrap();
    assert_eq!(got.bytes().await.unwrap().as_ref(), other.as_slice());
}

/// Blobs over the verify-on-read size are served from mapped windows of
/// 1 MiB: whole, and by ranges that start and end off page and window
/// boundaries, over HTTP/1.1 and HTTP/2.
#[tokio::test]
async fn a_large_blob_is_served_whole_and_by_ranges_across_mapping_windows() {
    let s = TestServer::start().await;
    let c = client();
    let len = 3 * 1024 * 1024 + 123;
    let data = pseudo_random(len, 17);
    let digest = s.push_blob(&c, "bpf/large", &data).await;
    let url = s.url(&format!("/v2/bpf/large/blobs/{digest}"));
    let whole = c.get(&url).send().await.unwrap();
    assert_eq!(whole.status(), StatusCode::OK);
    assert_eq!(header(&whole, "content-length"), Some(len.to_string()));
    assert!(whole.bytes().await.unwrap().as_ref() == data.as_slice());
    let h2 = tokio::process::Command::new("curl")
        .args(["-sS", "--http2-prior-knowledge", "--max-time", "20"])
        .arg(&url)
        .output()
        .await
        .expect("curl");
    assert!(
        h2.status.success(),
        "{}",
        String::from_utf8_lossy(&h2.stderr)
    );
    assert!(h2.stdout == data, "the HTTP/2 body differs");
    let mib = 1024 * 1024;
    for (start, end) in [
        (0, 0),
        (1, 4097),
        (4095, 4096),
        (mib - 1, mib),
        (mib - 7, 2 * mib + 9),
        (2 * mib + 4093, len - 1),
        (len - 1, len - 1),
    ] {
        let r = c
            .get(&url)
            .header("range", format!("bytes={start}-{end}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT, "{start}-{end}");
        assert_eq!(
            header(&r, "content-range"),
            Some(format!("bytes {start}-{end}/{len}"))
        );
        let got = r.bytes().await.unwrap();
        assert!(got.as_ref() == &data[start..=end], "{start}-{end}");
    }
}

/// On a remote blob store (S3) a large blob pushed or pulled once is kept
/// in the server's local cache (`.blob-cache` in the data dir) and served
/// from it; a cached copy is never served to a repository the blob was
/// unlinked from (reachability is decided before the cache is asked).
#[tokio::test]
async fn on_a_remote_store_a_pulled_blob_is_cached_locally_and_unlinking_still_hides_it() {
    if common::engines::blob_store_is_fs() {
        eprintln!("skipped: the blob cache is for remote stores (BPF_TEST_BLOB_STORE=s3)");
        return;
    }
    let s = TestServer::start().await;
    let c = client();
    let data = pseudo_random(2 * 1024 * 1024 + 5, 19);
    let digest = s.push_blob(&c, "bpf/cached", &data).await;
    let cache = s.data_dir().join(".blob-cache");
    let cached = cache.join(hex_of(&digest));
    assert!(cached.is_file(), "the push kept its copy in the cache");
    // A chunked push is kept too, from the copies of its PATCHes.
    let chunked = pseudo_random(3 * 1024 * 1024 + 7, 20);
    let chunked_digest = s
        .push_blob_chunked(&c, "bpf/cached", &chunked, 1024 * 1024)
        .await;
    let kept = cache.join(hex_of(&chunked_digest));
    assert!(
        std::fs::read(&kept).unwrap() == chunked,
        "the kept copy is the blob"
    );
    // The cache's copy is removed behind the server's back: the pull
    // fills it again from the bucket.
    std::fs::remove_file(&cached).unwrap();
    let url = s.url(&format!("/v2/bpf/cached/blobs/{digest}"));
    for _ in 0..2 {
        let r = c.get(&url).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert!(r.bytes().await.unwrap().as_ref() == data.as_slice());
        assert!(cached.is_file(), "the pulled blob is in the cache");
    }
    let r = c
        .get(&url)
        .header("range", "bytes=1048570-1048580")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert!(r.bytes().await.unwrap().as_ref() == &data[1048570..=1048580]);
    let del = c.delete(&url).send().await.unwrap();
    assert_eq!(del.status(), StatusCode::ACCEPTED);
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

/// A large blob's file cut short behind the server's back (disk damage)
/// while it is being pulled over plain HTTP: the pull ends early with an
/// error, never with bytes from past the end, and the server goes on
/// serving. (The TLS case, where a mapped page past the end would stop the
/// process, is in `tests/connections.rs`.) The cut is far ahead of the
/// client: the server is at most the socket buffers and a few windows ahead.
#[tokio::test]
async fn a_large_blob_cut_short_while_pulled_breaks_its_pull_not_the_server() {
    if !common::engines::fs_blob_store_or_skip("a_large_blob_cut_short_while_pulled") {
        return;
    }
    let s = TestServer::start().await;
    let c = client();
    let mib = 1024 * 1024;
    let data = pseudo_random(48 * mib, 18);
    let digest = s.push_blob(&c, "bpf/cut", &data).await;
    let file = s
        .files_under("blobs")
        .into_iter()
        .find(|f| f.ends_with(hex_of(&digest)))
        .expect("the blob's file");
    let path = s.data_dir().join("blobs").join(&file);
    let url = s.url(&format!("/v2/bpf/cut/blobs/{digest}"));
    let mut r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let first = r.chunk().await.unwrap().expect("a first chunk");
    let cut = 32 * mib + 100;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(cut as u64)
        .unwrap();
    let mut got = first.to_vec();
    let broke = loop {
        match r.chunk().await {
            Ok(Some(b)) => got.extend_from_slice(&b),
            Ok(None) => break false,
            Err(_) => break true,
        }
    };
    assert!(
        broke,
        "the body must break, not complete ({} bytes)",
        got.len()
    );
    assert!(
        got.len() < cut,
        "{} bytes served from a {cut}-byte file",
        got.len()
    );
    assert!(
        got[..] == data[..got.len()],
        "the bytes served are the blob's"
    );
    let health = c.get(s.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
}

#[tokio::test]
async fn range_get_is_206() {
    let s = TestServer::start().await;
    let c = client();
    let data = pseudo_random(100, 6);
    let digest = s.push_blob(&c, "bpf/range", &data).await;
    let url = s.url(&format!("/v2/bpf/range/blobs/{digest}"));

    let whole = c.get(&url).send().await.unwrap();
    assert_eq!(whole.status(), StatusCode::OK);
    assert_eq!(
        header(&whole, "docker-content-digest").as_deref(),
        Some(digest.as_str())
    );
    assert_eq!(header(&whole, "content-length").as_deref(), Some("100"));
    assert_eq!(whole.bytes().await.unwrap().as_ref(), data.as_slice());

    for (range, start, end) in [
        ("bytes=10-19", 10usize, 19usize),
        ("bytes=90-", 90, 99),
        ("bytes=-5", 95, 99),
        ("bytes=95-1000", 95, 99),
    ] {
        let r = c.get(&url).header("range", range).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(
            header(&r, "content-range"),
            Some(format!("bytes {start}-{end}/100")),
            "{range}"
        );
        assert_eq!(
            header(&r, "content-length"),
            Some((end - start + 1).to_string()),
            "{range}"
        );
        assert_eq!(
            r.bytes().await.unwrap().as_ref(),
            &data[start..=end],
            "{range}"
        );
    }

    let head = c.head(&url).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(header(&head, "content-length").as_deref(), Some("100"));
    assert_eq!(
        header(&head, "docker-content-digest").as_deref(),
        Some(digest.as_str())
    );
}

// ---- manifests ---------------------------------------------------------------

/// Pushes a small artifact (config + one layer) and returns the manifest
/// body for reuse by tests that build manifests themselves.
async fn base_blobs(s: &TestServer, c: &reqwest::Client, repo: &str) -> (Value, Value) {
    let config = br#"{"name":"prog","type":"program"}"#;
    let layer = pseudo_random(512, 77);
    let cd = s.push_blob(c, repo, config).await;
    let ld = s.push_blob(c, repo, &layer).await;
    (
        json!({"mediaType": BPF_CONFIG, "digest": cd, "size": config.len()}),
        json!({"mediaType": LAYER_TAR_ZSTD, "digest": ld, "size": layer.len()}),
    )
}

fn image_manifest(config: &Value, layers: &[Value], extra: Value) -> Vec<u8> {
    let mut m = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config,
        "layers": layers,
    });
    if let Some(extra) = extra.as_object() {
        for (k, v) in extra {
            m[k] = v.clone();
        }
    }
    serde_json::to_vec(&m).unwrap()
}

#[tokio::test]
async fn manifest_missing_blob_is_manifest_blob_unknown() {
    let s = TestServer::start().await;
    let c = client();
    let (config, layer) = base_blobs(&s, &c, "bpf/missing").await;
    let ghost = pseudo_random(64, 8);
    let ghost_desc = json!({"mediaType": LAYER_TAR_ZSTD, "digest": sha256(&ghost), "size": 64});
    let body = image_manifest(&config, &[layer.clone(), ghost_desc], json!({}));
    let r = s
        .put_manifest(&c, "bpf/missing", "v1", OCI_MANIFEST, &body)
        .await;
    assert_oci_error(r, StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN").await;

    // A blob that exists only in another repository does not count.
    let elsewhere = pseudo_random(64, 9);
    let ed = s.push_blob(&c, "bpf/elsewhere", &elsewhere).await;
    let body2 = image_manifest(
        &config,
        &[json!({"mediaType": LAYER_TAR_ZSTD, "digest": ed, "size": 64})],
        json!({}),
    );
    let r = s
        .put_manifest(&c, "bpf/missing", "v2", OCI_MANIFEST, &body2)
        .await;
    assert_oci_error(r, StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN").await;

    // A missing config blob.
    let bad_config = json!({"mediaType": BPF_CONFIG, "digest": sha256(b"nope"), "size": 4});
    let body3 = image_manifest(&bad_config, &[layer], json!({}));
    let r = s
        .put_manifest(&c, "bpf/missing", "v3", OCI_MANIFEST, &body3)
        .await;
    assert_oci_error(r, StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN").await;

    for (reference, b) in [("v1", &body), ("v2", &body2), ("v3", &body3)] {
        let r = c
            .get(s.url(&format!("/v2/bpf/missing/manifests/{reference}")))
            .send()
            .await
            .unwrap();
        assert_oci_error(r, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
        let r = c
            .get(s.url(&format!("/v2/bpf/missing/manifests/{}", sha256(b))))
            .send()
            .await
            .unwrap();
        assert_oci_error(r, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    }
}

/// Pads a manifest with an annotation so that its JSON is exactly `size` bytes.
fn manifest_of_size(config: &Value, layer: &Value, size: usize) -> Vec<u8> {
    let probe = image_manifest(
        config,
        &[layer.clone()],
        json!({"annotations": {"pad": ""}}),
    );
    assert!(probe.len() <= size);
    let pad = "x".repeat(size - probe.len());
    let body = image_manifest(
        config,
        &[layer.clone()],
        json!({"annotations": {"pad": pad}}),
    );
    assert_eq!(body.len(), size);
    body
}

#[tokio::test]
async fn manifest_over_4mib_is_413() {
    let s = TestServer::start().await;
    let c = client();
    let (config, layer) = base_blobs(&s, &c, "bpf/big").await;

    let over = manifest_of_size(&config, &layer, 4 * 1024 * 1024 + 1);
    let r = s
        .put_manifest(&c, "bpf/big", "over", OCI_MANIFEST, &over)
        .await;
    assert_oci_error_any(
        r,
        StatusCode::PAYLOAD_TOO_LARGE,
        &["MANIFEST_INVALID", "SIZE_INVALID"],
    )
    .await;
    let r = c
        .get(s.url("/v2/bpf/big/manifests/over"))
        .send()
        .await
        .unwrap();
    assert_oci_error(r, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;

    // Registries should accept manifests of at least 4 MiB.
    let exact = manifest_of_size(&config, &layer, 4 * 1024 * 1024);
    let digest = s
        .put_manifest_ok(&c, "bpf/big", "exact", OCI_MANIFEST, &exact)
        .await;
    let r = c
        .get(s.url("/v2/bpf/big/manifests/exact"))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "docker-content-digest"), Some(digest));
    assert!(r.bytes().await.unwrap().as_ref() == exact.as_slice());
}

#[tokio::test]
async fn manifest_mediatype_mismatch_is_400() {
    let s = TestServer::start().await;
    let c = client();
    let (config, layer) = base_blobs(&s, &c, "bpf/mt").await;
    let body = image_manifest(&config, &[layer.clone()], json!({}));
    for ct in [OCI_INDEX, DOCKER_MANIFEST] {
        let r = s.put_manifest(&c, "bpf/mt", "v1", ct, &body).await;
        assert_oci_error(r, StatusCode::BAD_REQUEST, "MANIFEST_INVALID").await;
    }
    // A body whose own mediaType is not a manifest type.
    let not_manifest = image_manifest(
        &config,
        &[layer.clone()],
        json!({"mediaType": "application/json"}),
    );
    let r = s
        .put_manifest(&c, "bpf/mt", "v1", "application/json", &not_manifest)
        .await;
    assert_oci_error(r, StatusCode::BAD_REQUEST, "MANIFEST_INVALID").await;
    // Not JSON at all.
    let r = s
        .put_manifest(&c, "bpf/mt", "v1", OCI_MANIFEST, b"{not json")
        .await;
    assert_oci_error(r, StatusCode::BAD_REQUEST, "MANIFEST_INVALID").await;
    // An image manifest without its config.
    let r = s
        .put_manifest(
            &c,
            "bpf/mt",
            "v1",
            OCI_MANIFEST,
            &serde_json::to_vec(
                &json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": [layer]}),
            )
            .unwrap(),
        )
        .await;
    assert_oci_error(r, StatusCode::BAD_REQUEST, "MANIFEST_INVALID").await;
    let r = c
        .get(s.url("/v2/bpf/mt/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_oci_error(r, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;

    // Content-Type parameters are ignored; the matching type is accepted.
    s.put_manifest_ok(
        &c,
        "bpf/mt",
        "v1",
        &format!("{OCI_MANIFEST}; charset=utf-8"),
        &body,
    )
    .await;
}

#[tokio::test]
async fn manifest_put_by_wrong_digest_is_400() {
    let s = TestServer::start().await;
    let c = client();
    let (config, layer) = base_blobs(&s, &c, "bpf/bydigest").await;
    let body = image_manifest(&config, &[layer], json!({}));
    let real = sha256(&body);
    let wrong = sha256(b"another manifest");
    let r = s
        .put_manifest(&c, "bpf/bydigest", &wrong, OCI_MANIFEST, &body)
        .await;
    assert_oci_error(r, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    for d in [&real, &wrong] {
        let r = c
            .get(s.url(&format!("/v2/bpf/bydigest/manifests/{d}")))
            .send()
            .await
            .unwrap();
        assert_oci_error(r, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    }
    // By its real digest it is accepted.
    let d = s
        .put_manifest_ok(&c, "bpf/bydigest", &real, OCI_MANIFEST, &body)
        .await;
    assert_eq!(d, real);
}

#[tokio::test]
async fn index_with_missing_child_is_rejected() {
    let s = TestServer::start().await;
    let c = client();
    let (config, layer) = base_blobs(&s, &c, "bpf/index").await;
    let child = image_manifest(&config, &[layer.clone()], json!({}));
    let child_digest = s
        .put_manifest_ok(&c, "bpf/index", "amd64", OCI_MANIFEST, &child)
        .await;
    let missing = image_manifest(
        &config,
        &[layer.clone()],
        json!({"annotations": {"x": "never pushed"}}),
    );

    let index = |children: Vec<Value>| {
        serde_json::to_vec(
            &json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children}),
        )
        .unwrap()
    };
    let good = json!({"mediaType": OCI_MANIFEST, "digest": child_digest, "size": child.len(),
                      "platform": {"architecture": "amd64", "os": "linux"}});
    let bad = json!({"mediaType": OCI_MANIFEST, "digest": sha256(&missing), "size": missing.len(),
                     "platform": {"architecture": "arm64", "os": "linux"}});
    let body = index(vec![good.clone(), bad]);
    let r = s
        .put_manifest(&c, "bpf/index", "multi", OCI_INDEX, &body)
        .await;
    assert_oci_error(r, StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN").await;
    let r = c
        .get(s.url("/v2/bpf/index/manifests/multi"))
        .send()
        .await
        .unwrap();
    assert_oci_error(r, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;

    // A child that lives only in another repository does not count either.
    let (oc, ol) = base_blobs(&s, &c, "bpf/other-index").await;
    let foreign = image_manifest(&oc, &[ol], json!({"annotations": {"foreign": "yes"}}));
    let fd = s
        .put_manifest_ok(&c, "bpf/other-index", "v1", OCI_MANIFEST, &foreign)
        .await;
    let body = index(vec![
        good.clone(),
        json!({"mediaType": OCI_MANIFEST, "digest": fd, "size": foreign.len()}),
    ]);
    let r = s
        .put_manifest(&c, "bpf/index", "multi", OCI_INDEX, &body)
        .await;
    assert_oci_error(r, StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN").await;

    // With every child present it is accepted.
    let body = index(vec![good]);
    s.put_manifest_ok(&c, "bpf/index", "multi", OCI_INDEX, &body)
        .await;
}

#[tokio::test]
async fn docker_schema2_manifest_roundtrip() {
    let s = TestServer::start().await;
    let c = client();
    let repo = "bpf/docker";
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let layer = pseudo_random(2048, 10);
    let cd = s.push_blob(&c, repo, config).await;
    let ld = s.push_blob(&c, repo, &layer).await;
    // Docker-style formatting (indentation) must be preserved byte for byte.
    let body = format!(
        "{{\n   \"schemaVersion\": 2,\n   \"mediaType\": \"{DOCKER_MANIFEST}\",\n   \"config\": {{\n      \"mediaType\": \"application/vnd.docker.container.image.v1+json\",\n      \"size\": {},\n      \"digest\": \"{cd}\"\n   }},\n   \"layers\": [\n      {{\n         \"mediaType\": \"application/vnd.docker.image.rootfs.diff.tar.gzip\",\n         \"size\": {},\n         \"digest\": \"{ld}\"\n      }}\n   ]\n}}",
        config.len(),
        layer.len()
    )
    .into_bytes();
    let digest = s
        .put_manifest_ok(&c, repo, "v1", DOCKER_MANIFEST, &body)
        .await;

    for reference in ["v1", digest.as_str()] {
        let r = c
            .get(s.url(&format!("/v2/{repo}/manifests/{reference}")))
            .header("accept", DOCKER_MANIFEST)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(header(&r, "content-type").as_deref(), Some(DOCKER_MANIFEST));
        assert_eq!(
            header(&r, "docker-content-digest").as_deref(),
            Some(digest.as_str())
        );
        assert_eq!(r.bytes().await.unwrap().as_ref(), body.as_slice());
        let h = c
            .head(s.url(&format!("/v2/{repo}/manifests/{reference}")))
            .header("accept", DOCKER_MANIFEST)
            .send()
            .await
            .unwrap();
        assert_eq!(h.status(), StatusCode::OK);
        assert_eq!(header(&h, "content-length"), Some(body.len().to_string()));
        assert_eq!(
            header(&h, "docker-content-digest").as_deref(),
            Some(digest.as_str())
        );
    }

    // A Docker manifest list over it.
    let list = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST_LIST,
        "manifests": [{"mediaType": DOCKER_MANIFEST, "digest": digest, "size": body.len(),
                       "platform": {"architecture": "amd64", "os": "linux"}}],
    }))
    .unwrap();
    let ld = s
        .put_manifest_ok(&c, repo, "list", DOCKER_MANIFEST_LIST, &list)
        .await;
    let r = c
        .get(s.url(&format!("/v2/{repo}/manifests/list")))
        .header(
            "accept",
            format!("{DOCKER_MANIFEST_LIST}, {DOCKER_MANIFEST}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        header(&r, "content-type").as_deref(),
        Some(DOCKER_MANIFEST_LIST)
    );
    assert_eq!(header(&r, "docker-content-digest"), Some(ld));
    assert_eq!(r.bytes().await.unwrap().as_ref(), list.as_slice());
}

#[tokio::test]
async fn subject_without_target_is_accepted_with_oci_subject_header() {
    let s = TestServer::start().await;
    let c = client();
    let repo = "bpf/subject";
    let empty = s.push_empty_config(&c, repo).await;
    // A subject that was never pushed (e.g. it is being mirrored later).
    let absent = pseudo_random(300, 11);
    let subject_digest = sha256(&absent);
    let body = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.signature.v1",
        "config": empty,
        "layers": [empty],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject_digest, "size": 300},
        "annotations": {"org.example.signer": "ci"},
    }))
    .unwrap();
    let r = s
        .put_manifest(&c, repo, &sha256(&body), OCI_MANIFEST, &body)
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        header(&r, "oci-subject").as_deref(),
        Some(subject_digest.as_str())
    );
    assert_eq!(header(&r, "docker-content-digest"), Some(sha256(&body)));

    let r = c
        .get(s.url(&format!("/v2/{repo}/referrers/{subject_digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    let list = v["manifests"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{v}");
    assert_eq!(list[0]["digest"], json!(sha256(&body)));
    assert_eq!(
        list[0]["artifactType"],
        json!("application/vnd.example.signature.v1")
    );
    assert_eq!(list[0]["annotations"]["org.example.signer"], json!("ci"));

    // A manifest without a subject gets no OCI-Subject header.
    let plain = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": empty, "layers": [],
    }))
    .unwrap();
    let r = s
        .put_manifest(&c, repo, "plain", OCI_MANIFEST, &plain)
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert!(header(&r, "oci-subject").is_none());
}

/// Pushes a referrer of `subject` with an optional artifactType and config
/// media type; returns `(digest, body)`.
async fn push_referrer(
    s: &TestServer,
    c: &reqwest::Client,
    repo: &str,
    subject: (&str, usize),
    artifact_type: Option<&str>,
    config_media_type: &str,
    note: &str,
    tag: Option<&str>,
) -> (String, Vec<u8>) {
    let cfg = format!("{{\"note\":\"{note}\"}}");
    let cd = s.push_blob(c, repo, cfg.as_bytes()).await;
    let mut m = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": config_media_type, "digest": cd, "size": cfg.len()},
        "layers": [],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject.0, "size": subject.1},
        "annotations": {"org.example.note": note},
    });
    if let Some(at) = artifact_type {
        m["artifactType"] = json!(at);
    }
    let body = serde_json::to_vec(&m).unwrap();
    let digest = sha256(&body);
    let reference = tag.map(str::to_string).unwrap_or_else(|| digest.clone());
    let d = s
        .put_manifest_ok(c, repo, &reference, OCI_MANIFEST, &body)
        .await;
    assert_eq!(d, digest);
    (digest, body)
}

#[tokio::test]
async fn referrers_list_and_filter() {
    let s = TestServer::start().await;
    let c = client();
    let repo = "bpf/referred";
    let (sd, sbody) = s
        .push_image(
            &c,
            repo,
            "v1",
            b"{\"k\":1}",
            &[&pseudo_random(100, 12)],
            json!({}),
        )
        .await;
    let subject = (sd.as_str(), sbody.len());
    let (sig, sig_body) = push_referrer(
        &s,
        &c,
        repo,
        subject,
        Some("application/vnd.example.signature.v1"),
        OCI_EMPTY,
        "sig",
        None,
    )
    .await;
    // No artifactType: the config media type stands in for it.
    let (sbom, sbom_body) = push_referrer(
        &s,
        &c,
        repo,
        subject,
        None,
        "application/vnd.example.sbom.config.v1+json",
        "sbom",
        Some("sbom-tag"),
    )
    .await;

    let r = c
        .get(s.url(&format!("/v2/{repo}/referrers/{sd}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "content-type").as_deref(), Some(OCI_INDEX));
    assert!(
        header(&r, "oci-filters-applied").is_none(),
        "no filter was requested"
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["schemaVersion"], json!(2));
    assert_eq!(v["mediaType"], json!(OCI_INDEX));
    let list = v["manifests"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{v}");
    let by_digest = |d: &str| {
        list.iter()
            .find(|e| e["digest"] == json!(d))
            .cloned()
            .unwrap()
    };
    let e = by_digest(&sig);
    assert_eq!(e["mediaType"], json!(OCI_MANIFEST));
    assert_eq!(e["size"], json!(sig_body.len()));
    assert_eq!(
        e["artifactType"],
        json!("application/vnd.example.signature.v1")
    );
    assert_eq!(e["annotations"]["org.example.note"], json!("sig"));
    let e = by_digest(&sbom);
    assert_eq!(e["size"], json!(sbom_body.len()));
    assert_eq!(
        e["artifactType"],
        json!("application/vnd.example.sbom.config.v1+json")
    );
    assert_eq!(e["annotations"]["org.example.note"], json!("sbom"));

    // Filtered.
    let r = c
        .get(s.url(&format!(
            "/v2/{repo}/referrers/{sd}?artifactType=application/vnd.example.signature.v1"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        header(&r, "oci-filters-applied").as_deref(),
        Some("artifactType")
    );
    let v: Value = r.json().await.unwrap();
    let list = v["manifests"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{v}");
    assert_eq!(list[0]["digest"], json!(sig));

    // A filter that matches nothing: still 200 and an empty index.
    let r = c
        .get(s.url(&format!(
            "/v2/{repo}/referrers/{sd}?artifactType=application/x-none"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        header(&r, "oci-filters-applied").as_deref(),
        Some("artifactType")
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["manifests"], json!([]));

    // Referrers are per repository.
    let r = c
        .get(s.url(&format!("/v2/bpf/unrelated/referrers/{sd}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["manifests"], json!([]));
}

#[tokio::test]
async fn referrers_of_unknown_digest_is_empty_index() {
    let s = TestServer::start().await;
    let c = client();
    let repo = "bpf/noref";
    s.push_image(&c, repo, "v1", b"{}", &[&pseudo_random(10, 13)], json!({}))
        .await;
    let unknown = sha256(b"never seen");
    let r = c
        .get(s.url(&format!("/v2/{repo}/referrers/{unknown}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "content-type").as_deref(), Some(OCI_INDEX));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["schemaVersion"], json!(2));
    assert_eq!(v["mediaType"], json!(OCI_INDEX));
    assert_eq!(v["manifests"], json!([]));

    // An invalid digest is a 400, not a 404.
    let r = c
        .get(s.url(&format!("/v2/{repo}/referrers/sha256:1234")))
        .send()
        .await
        .unwrap();
    assert_oci_error(r, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
}

// ---- listings ----------------------------------------------------------------

#[tokio::test]
async fn tags_list_pagination_link_header() {
    let s = TestServer::start().await;
    let c = client();
    let repo = "bpf/tags";
    let (config, layer) = base_blobs(&s, &c, repo).await;
    let body = image_manifest(&config, &[layer], json!({}));
    let tags = ["v1", "v2", "latest", "stable", "beta"];
    for t in tags {
        s.put_manifest_ok(&c, repo, t, OCI_MANIFEST, &body).await;
    }
    let mut sorted: Vec<&str> = tags.to_vec();
    sorted.sort();

    // Unpaginated.
    let r = c
        .get(s.url(&format!("/v2/{repo}/tags/list")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(header(&r, "link").is_none());
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["name"], json!(repo));
    assert_eq!(v["tags"], json!(sorted));

    // Follow Link headers two at a time.
    let mut url = s.url(&format!("/v2/{repo}/tags/list?n=2"));
    let mut seen: Vec<String> = Vec::new();
    let mut pages = 0;
    loop {
        let r = c.get(&url).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let next = next_link(&r);
        let v: Value = r.json().await.unwrap();
        let page: Vec<String> = serde_json::from_value(v["tags"].clone()).unwrap();
        pages += 1;
        match next {
            Some(n) => {
                assert_eq!(page.len(), 2, "a page followed by a Link must be full");
                assert!(n.starts_with(&format!("/v2/{repo}/tags/list?")), "Link {n}");
                assert!(n.contains("n=2"), "Link {n}");
                assert!(
                    n.contains(&format!("last={}", page.last().unwrap())),
                    "Link {n}"
                );
                seen.extend(page);
                url = s.abs(&n);
            }
            None => {
                assert!(page.len() <= 2);
                seen.extend(page);
                break;
            }
        }
        assert!(pages <= 10, "pagination does not terminate");
    }
    assert_eq!(seen, sorted);
    assert_eq!(pages, 3);

    // `last` without `n`.
    let r = c
        .get(s.url(&format!("/v2/{repo}/tags/list?last=stable")))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["tags"], json!(["v1", "v2"]));

    // n=0: an empty list and no Link.
    let r = c
        .get(s.url(&format!("/v2/{repo}/tags/list?n=0")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        header(&r, "link").is_none(),
        "n=0 must not carry a Link header"
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["tags"], json!([]));

    // An unknown repository.
    let r = c
        .get(s.url("/v2/bpf/nothing-here/tags/list"))
        .send()
        .await
        .unwrap();
    assert_oci_error(r, StatusCode::NOT_FOUND, "NAME_UNKNOWN").await;
}

#[tokio::test]
async fn catalog_pagination() {
    let s = TestServer::start().await;
    let c = client();
    let repos = [
        "team",
        "team/tools",
        "alpha",
        "beta/one",
        "beta/two",
        "delta/x/y",
        "gamma",
    ];
    for r in repos {
        s.push_image(&c, r, "v1", b"{}", &[r.as_bytes()], json!({}))
            .await;
    }
    let mut sorted: Vec<&str> = repos.to_vec();
    sorted.sort();

    let r = c.get(s.url("/v2/_catalog")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["repositories"],
        json!(sorted),
        "intermediate folders are not repositories"
    );

    let mut url = s.url("/v2/_catalog?n=3");
    let mut seen: Vec<String> = Vec::new();
    let mut pages = 0;
    loop {
        let r = c.get(&url).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let next = next_link(&r);
        let v: Value = r.json().await.unwrap();
        let page: Vec<String> = serde_json::from_value(v["repositories"].clone()).unwrap();
        pages += 1;
        let done = next.is_none();
        if let Some(n) = next {
            assert_eq!(page.len(), 3);
            assert!(n.starts_with("/v2/_catalog?"), "Link {n}");
            url = s.abs(&n);
        }
        seen.extend(page);
        if done {
            break;
        }
        assert!(pages <= 10, "pagination does not terminate");
    }
    assert_eq!(seen, sorted);
    assert_eq!(pages, 3);

    let r = c
        .get(s.url("/v2/_catalog?n=2&last=beta/two"))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["repositories"], json!(["delta/x/y", "gamma"]));
}

// ---- deletion ----------------------------------------------------------------

#[tokio::test]
async fn delete_tag_keeps_manifest() {
    let s = TestServer::start().await;
    let c = client();
    let repo = "bpf/deltag";
    let (digest, body) = s
        .push_image(&c, repo, "v1", b"{}", &[&pseudo_random(50, 14)], json!({}))
        .await;
    s.put_manifest_ok(&c, repo, "stable", OCI_MANIFEST, &body)
        .await;

    let r = c
        .delete(s.url(&format!("/v2/{repo}/manifests/stable")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);

    let r = c
        .get(s.url(&format!("/v2/{repo}/manifests/stable")))
        .send()
        .await
        .unwrap();
    assert_oci_error(r, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    for reference in [digest.as_str(), "v1"] {
        let r = c
            .get(s.url(&format!("/v2/{repo}/manifests/{reference}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{reference}");
        assert_eq!(r.bytes().await.unwrap().as_ref(), body.as_slice());
    }
    let v: Value = c
        .get(s.url(&format!("/v2/{repo}/tags/list")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["tags"], json!(["v1"]));

    // Deleting it again: the tag is unknown.
    let r = c
        .delete(s.url(&format!("/v2/{repo}/manifests/stable")))
        .send()
        .await
        .unwrap();
    assert_oci_error(r, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
}

/// What a reference resolves to is read (and, on the embedded store,
/// cached) per repository: each write is seen by the next read of its own
/// repository, and by no other repository's reads.
#[tokio::test]
async fn each_read_of_a_reference_sees_the_last_write_of_its_repository_and_no_other() {
    let s = TestServer::start().await;
    let c = client();
    let get = |repo: &str, reference: &str| {
        let url = s.url(&format!("/v2/{repo}/manifests/{reference}"));
        let c = c.clone();
        async move {
            let r = c
                .get(url)
                .header("accept", OCI_MANIFEST)
                .send()
                .await
                .unwrap();
            let status = r.status();
            (status, header(&r, "docker-content-digest"))
        }
    };
    let (a, a_body) = s
        .push_image(
            &c,
            "team/one",
            "t",
            b"{}",
            &[&pseudo_random(40, 1)],
            json!({}),
        )
        .await;
    let (b, b_body) = s
        .push_image(
            &c,
            "team/one",
            "other",
            b"{}",
            &[&pseudo_random(40, 2)],
            json!({}),
        )
        .await;
    let (same, _) = s
        .push_image(
            &c,
            "team/two",
            "t",
            b"{}",
            &[&pseudo_random(40, 1)],
            json!({}),
        )
        .await;
    assert_eq!(same, a);
    // Every lookup below is read twice: once to fill a cache, once from it.
    for _ in 0..2 {
        assert_eq!(
            get("team/one", "t").await,
            (StatusCode::OK, Some(a.clone()))
        );
        assert_eq!(
            get("team/two", "t").await,
            (StatusCode::OK, Some(a.clone()))
        );
        assert_eq!(get("team/one", "new").await.0, StatusCode::NOT_FOUND);
        assert_eq!(get("team/two", &b).await.0, StatusCode::NOT_FOUND);
    }
    // A tag moved in one repository: only that one follows.
    s.put_manifest_ok(&c, "team/one", "t", OCI_MANIFEST, &b_body)
        .await;
    for _ in 0..2 {
        assert_eq!(
            get("team/one", "t").await,
            (StatusCode::OK, Some(b.clone()))
        );
        assert_eq!(
            get("team/two", "t").await,
            (StatusCode::OK, Some(a.clone()))
        );
    }
    // A reference that was unknown, then pushed.
    s.put_manifest_ok(&c, "team/one", "new", OCI_MANIFEST, &a_body)
        .await;
    let (same, _) = s
        .push_image(
            &c,
            "team/two",
            &b,
            b"{}",
            &[&pseudo_random(40, 2)],
            json!({}),
        )
        .await;
    assert_eq!(same, b);
    assert_eq!(
        get("team/one", "new").await,
        (StatusCode::OK, Some(a.clone()))
    );
    assert_eq!(get("team/two", &b).await, (StatusCode::OK, Some(b.clone())));
    // A tag deleted in one repository.
    let r = c
        .delete(s.url("/v2/team/two/manifests/t"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    for _ in 0..2 {
        assert_eq!(get("team/two", "t").await.0, StatusCode::NOT_FOUND);
        assert_eq!(
            get("team/one", "t").await,
            (StatusCode::OK, Some(b.clone()))
        );
    }
    // A manifest deleted by digest: its digest and its tags are gone there.
    assert_eq!(get("team/one", &a).await.0, StatusCode::OK);
    let r = c
        .delete(s.url(&format!("/v2/team/one/manifests/{a}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    for _ in 0..2 {
        assert_eq!(get("team/one", &a).await.0, StatusCode::NOT_FOUND);
        assert_eq!(get("team/one", "new").await.0, StatusCode::NOT_FOUND);
        assert_eq!(get("team/two", &a).await, (StatusCode::OK, Some(a.clone())));
    }
    // HEAD answers the same as GET after the writes.
    let r = c
        .head(s.url("/v2/team/one/manifests/t"))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "docker-content-digest"), Some(b.clone()));
    // And a restart (nothing cached) answers the same.
    let s = s.restart().await;
    let r = c
        .get(s.url("/v2/team/one/manifests/t"))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "docker-content-digest"), Some(b));
    let r = c
        .get(s.url("/v2/team/two/manifests/t"))
        .send()
        .await
        .unwrap();
    assert_oci_error(r, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
}

#[tokio::test]
async fn delete_manifest_removes_tags_and_referrer() {
    let s = TestServer::start().await;
    let c = client();
    let repo = "bpf/delman";
    let (sd, sbody) = s
        .push_image(&c, repo, "v1", b"{}", &[&pseudo_random(40, 15)], json!({}))
        .await;
    s.put_manifest_ok(&c, repo, "latest", OCI_MANIFEST, &sbody)
        .await;
    let (rd, _) = push_referrer(
        &s,
        &c,
        repo,
        (&sd, sbody.len()),
        Some("application/vnd.example.signature.v1"),
        OCI_EMPTY,
        "sig",
        Some("sig"),
    )
    .await;

    // Delete the referrer: its tag and its referrers entry go with it.
    let r = c
        .delete(s.url(&format!("/v2/{repo}/manifests/{rd}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = c
        .get(s.url(&format!("/v2/{repo}/manifests/{rd}")))
        .send()
        .await
        .unwrap();
    assert_oci_error(r, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    let r = c
        .get(s.url(&format!("/v2/{repo}/manifests/sig")))
        .send()
        .await
        .unwrap();
    assert_oci_error(r, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    let v: Value = c
        .get(s.url(&format!("/v2/{repo}/referrers/{sd}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["manifests"], json!([]), "deleted referrer still listed");

    // Delete the subject: both of its tags go.
    let r = c
        .delete(s.url(&format!("/v2/{repo}/manifests/{sd}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    for reference in ["v1", "latest", sd.as_str()] {
        let r = c
            .get(s.url(&format!("/v2/{repo}/manifests/{reference}")))
            .send()
            .await
            .unwrap();
        assert_oci_error(r, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    }
    let v: Value = c
        .get(s.url(&format!("/v2/{repo}/tags/list")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["tags"], json!([]));
    let r = c
        .delete(s.url(&format!("/v2/{repo}/manifests/{sd}")))
        .send()
        .await
        .unwrap();
    assert_oci_error(r, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
}

// ---- malformed requests ------------------------------------------------------

#[tokio::test]
async fn malformed_digest_in_url_is_400_json() {
    let s = TestServer::start().await;
    let c = client();
    s.push_image(&c, "bpf/md", "v1", b"{}", &[b"layer"], json!({}))
        .await;
    let bad = [
        "sha256:xyz",
        "sha256:1234",
        "sha256:",
        "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855aa",
        "nonsense:",
        ":abc",
        "md5:d41d8cd98f00b204e9800998ecf8427e",
    ];
    for d in bad {
        for (method, path) in [
            (Method::GET, format!("/v2/bpf/md/blobs/{d}")),
            (Method::HEAD, format!("/v2/bpf/md/blobs/{d}")),
            (Method::DELETE, format!("/v2/bpf/md/blobs/{d}")),
            (Method::GET, format!("/v2/bpf/md/manifests/{d}")),
            (Method::DELETE, format!("/v2/bpf/md/manifests/{d}")),
            (Method::GET, format!("/v2/bpf/md/referrers/{d}")),
            (
                Method::POST,
                format!("/v2/bpf/md/blobs/uploads/?digest={d}"),
            ),
            (
                Method::POST,
                format!("/v2/bpf/md/blobs/uploads/?mount={d}&from=bpf/other"),
            ),
        ] {
            let r = send(&c, method.clone(), &s.url(&path), &[]).await;
            let status = r.status();
            assert!(
                status != StatusCode::INTERNAL_SERVER_ERROR,
                "{method} {path}: 500"
            );
            if method == Method::HEAD {
                assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {path}");
            } else {
                assert_oci_error(r, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
            }
        }
    }
    // The closing PUT of an upload: a malformed or missing digest.
    let loc = s.start_upload(&c, "bpf/md").await;
    for q in ["digest=sha256:xyz", "digest=", ""] {
        let url = if q.is_empty() {
            s.abs(&loc)
        } else {
            s.abs(&with_query(&loc, q))
        };
        let r = c.put(url).body(b"abc".to_vec()).send().await.unwrap();
        assert_oci_error(r, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    }
    // Raw, percent-encoded and odd bytes.
    for path in [
        "/v2/bpf/md/blobs/sha256:%zz",
        "/v2/bpf/md/blobs/sha256%3Aabc",
        "/v2/bpf/md/manifests/sha256:%ff%fe",
    ] {
        let r = raw_request(s.addr, "GET", path, &[], b"").await;
        assert!((400..500).contains(&r.status), "{path}: {}", r.status);
        check_envelope(
            path,
            r.header("content-type").unwrap_or(""),
            &r.body,
            &["DIGEST_INVALID", "NAME_INVALID", "MANIFEST_INVALID"],
        );
    }
}

#[tokio::test]
async fn path_tricks_are_4xx() {
    let s = TestServer::start().await;
    let c = client();
    s.push_image(&c, "bpf/safe", "v1", b"{}", &[b"layer"], json!({}))
        .await;
    let d = sha256(b"layer");
    let cases: Vec<(&str, String)> = vec![
        ("GET", "/v2/../etc/tags/list".into()),
        ("GET", "/v2/bpf/../../etc/tags/list".into()),
        ("GET", "/v2/bpf/safe/../safe/tags/list".into()),
        ("GET", "/v2/%2e%2e/tags/list".into()),
        ("GET", "/v2/%2E%2E/%2e%2e/manifests/v1".into()),
        ("GET", "/v2/bpf%2f..%2f..%2fetc/tags/list".into()),
        ("GET", format!("/v2/bpf/./safe/blobs/{d}")),
        ("GET", "/v2/bpf%00/tags/list".into()),
        ("GET", "/v2/bpf/safe%00/manifests/v1".into()),
        ("GET", "/v2/bpf/safe/manifests/v1%00".into()),
        ("GET", "/v2/_uploads/tags/list".into()),
        ("GET", "/v2/bpf/_uploads/tags/list".into()),
        ("GET", "/v2/bpf/_tags/manifests/v1".into()),
        ("GET", "/v2/bpf/safe/_manifests/tags/list".into()),
        ("POST", "/v2/_uploads/blobs/uploads/".into()),
        ("POST", "/v2/bpf/_layers/blobs/uploads/".into()),
        ("PUT", "/v2/bpf/_referrers/manifests/v1".into()),
        ("GET", "/v2/bpf/safe/blobs/uploads/..%2f..%2fblobs".into()),
        (
            "GET",
            "/v2/bpf/safe/blobs/uploads/../../../etc/passwd".into(),
        ),
        ("PATCH", "/v2/bpf/safe/blobs/uploads/%2e%2e".into()),
        ("GET", "/v2/bpf/safe/manifests/..".into()),
        ("GET", "/v2/bpf/safe/manifests/%2e%2e".into()),
        ("PUT", "/v2/bpf/safe/manifests/..%2f..%2fv1".into()),
    ];
    for (method, path) in &cases {
        let r = raw_request(s.addr, method, path, &[("Content-Type", OCI_MANIFEST)], b"").await;
        assert!(
            (400..500).contains(&r.status),
            "{method} {path}: expected 4xx, got {} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
        if path.starts_with("/v2/") {
            check_envelope(
                &format!("{method} {path}"),
                r.header("content-type").unwrap_or(""),
                &r.body,
                &[
                    "NAME_INVALID",
                    "NAME_UNKNOWN",
                    "MANIFEST_INVALID",
                    "MANIFEST_UNKNOWN",
                    "BLOB_UPLOAD_UNKNOWN",
                    "BLOB_UNKNOWN",
                    "DIGEST_INVALID",
                ],
            );
        }
    }
    // The name-level tricks are NAME_INVALID specifically.
    for path in [
        "/v2/../etc/tags/list",
        "/v2/%2e%2e/tags/list",
        "/v2/bpf%00/tags/list",
        "/v2/_uploads/tags/list",
        "/v2/bpf/_uploads/tags/list",
        "/v2/bpf%2f..%2f..%2fetc/tags/list",
    ] {
        let r = raw_request(s.addr, "GET", path, &[], b"").await;
        assert_eq!(r.status, 400, "{path}");
        check_envelope(
            path,
            r.header("content-type").unwrap_or(""),
            &r.body,
            &["NAME_INVALID"],
        );
    }
    // Nothing escaped the store: no stray file next to the data dir and the
    // real repository is unharmed.
    let parent = s.data_dir().parent().unwrap();
    let mut names: Vec<String> = std::fs::read_dir(parent)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, vec!["data".to_string()]);
    let r = c
        .get(s.url("/v2/bpf/safe/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn invalid_name_is_name_invalid() {
    let s = TestServer::start().await;
    let c = client();
    let long = ["a"; 128].join("/"); // 255 chars: the longest valid name
    assert_eq!(long.len(), 255);
    let too_long = format!("{long}/b");
    let bad = [
        "UPPER",
        "bpf/Prog",
        "bpf-",
        "-bpf",
        "bpf//prog",
        "bpf/prog/",
        "a..b",
        "a___b",
        "a.-b",
        "bpf prog",
        "bpf%20prog",
        too_long.as_str(),
    ];
    for name in bad {
        for (method, path) in [
            (Method::GET, format!("/v2/{name}/tags/list")),
            (Method::GET, format!("/v2/{name}/manifests/v1")),
            (Method::PUT, format!("/v2/{name}/manifests/v1")),
            (Method::POST, format!("/v2/{name}/blobs/uploads/")),
            (Method::GET, format!("/v2/{name}/blobs/{}", sha256(b"x"))),
        ] {
            let r = send(&c, method.clone(), &s.url(&path), &[]).await;
            let r_status = r.status();
            assert_ne!(
                r_status,
                StatusCode::INTERNAL_SERVER_ERROR,
                "{method} {path}"
            );
            assert_oci_error(r, StatusCode::BAD_REQUEST, "NAME_INVALID").await;
        }
    }
    // A mount source with an invalid name.
    let r = c
        .post(s.url(&format!(
            "/v2/bpf/ok/blobs/uploads/?mount={}&from=NOT_VALID",
            sha256(b"x")
        )))
        .send()
        .await
        .unwrap();
    assert_oci_error(r, StatusCode::BAD_REQUEST, "NAME_INVALID").await;

    // The longest valid name works end to end.
    s.push_image(&c, &long, "v1", b"{}", &[b"l"], json!({}))
        .await;
    let r = c
        .get(s.url(&format!("/v2/{long}/tags/list")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn unknown_manifest_404() {
    let s = TestServer::start().await;
    let c = client();
    s.push_image(&c, "bpf/known", "v1", b"{}", &[b"x"], json!({}))
        .await;
    let unknown_digest = sha256(b"not a manifest here");
    for (repo, reference) in [
        ("bpf/known", "v2"),
        ("bpf/known", unknown_digest.as_str()),
        ("bpf/unknown-repo", "v1"),
    ] {
        let url = s.url(&format!("/v2/{repo}/manifests/{reference}"));
        let r = c.get(&url).send().await.unwrap();
        assert_oci_error_any(
            r,
            StatusCode::NOT_FOUND,
            if repo == "bpf/known" {
                &["MANIFEST_UNKNOWN"]
            } else {
                &["MANIFEST_UNKNOWN", "NAME_UNKNOWN"]
            },
        )
        .await;
        let r = c.head(&url).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "HEAD {url}");
        assert!(
            r.bytes().await.unwrap().is_empty(),
            "HEAD must not carry a body"
        );
    }
    // A blob digest is not a manifest.
    let blob = sha256(b"x");
    let r = c
        .get(s.url(&format!("/v2/bpf/known/manifests/{blob}")))
        .send()
        .await
        .unwrap();
    assert_oci_error(r, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
}

// ---- concurrency and storage -------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_tag_pushes_last_write_wins_nothing_torn() {
    let s = TestServer::start().await;
    let c = client();
    let repo = "bpf/race";
    let (config, layer) = base_blobs(&s, &c, repo).await;
    let n = 24;
    let bodies: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            image_manifest(
                &config,
                &[layer.clone()],
                json!({"annotations": {"writer": i.to_string(), "pad": "p".repeat(i * 997)}}),
            )
        })
        .collect();
    let digests: HashSet<String> = bodies.iter().map(|b| sha256(b)).collect();
    let mut tasks = Vec::new();
    for b in bodies.clone() {
        let (c, url) = (c.clone(), s.url(&format!("/v2/{repo}/manifests/latest")));
        tasks.push(tokio::spawn(async move {
            let r = c
                .put(url)
                .header("content-type", OCI_MANIFEST)
                .body(b.clone())
                .send()
                .await
                .unwrap();
            (r.status(), header(&r, "docker-content-digest"), sha256(&b))
        }));
    }
    for t in tasks {
        let (status, got, want) = t.await.unwrap();
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(got, Some(want));
    }
    let r = c
        .get(s.url(&format!("/v2/{repo}/manifests/latest")))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let d = header(&r, "docker-content-digest").unwrap();
    let body = r.bytes().await.unwrap();
    assert!(
        digests.contains(&d),
        "the tag points at a digest nobody pushed: {d}"
    );
    assert_eq!(
        sha256(&body),
        d,
        "served bytes do not hash to the served digest"
    );
    // Every version is still reachable by digest, intact.
    for b in &bodies {
        let r = c
            .get(s.url(&format!("/v2/{repo}/manifests/{}", sha256(b))))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert!(r.bytes().await.unwrap().as_ref() == b.as_slice());
    }
    // Exactly one tag row, naming one of the pushed digests.
    let repo_name = bpf_registry::oci::RepoName::parse(repo).unwrap();
    let tags = s.metadata().await.tag_map(&repo_name).await.unwrap();
    assert_eq!(tags.len(), 1);
    assert_eq!(tags[0].0.to_string(), "latest");
    assert_eq!(tags[0].1.to_string(), d);
    let v: Value = c
        .get(s.url(&format!("/v2/{repo}/tags/list")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["tags"], json!(["latest"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_same_blob_uploads() {
    let s = std::sync::Arc::new(TestServer::start().await);
    let c = client();
    let data = std::sync::Arc::new(pseudo_random(1024 * 1024 + 333, 16));
    let digest = sha256(&data);
    let mut tasks = Vec::new();
    for i in 0..8usize {
        let (s, c, data) = (s.clone(), c.clone(), data.clone());
        tasks.push(tokio::spawn(async move {
            match i % 3 {
                0 => s.push_blob(&c, "bpf/same", &data).await,
                1 => s.push_blob_post_put(&c, "bpf/same", &data).await,
                _ => s.push_blob_chunked(&c, "bpf/same", &data, 256 * 1024).await,
            }
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), digest);
    }
    let r = c
        .get(s.url(&format!("/v2/bpf/same/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body = r.bytes().await.unwrap();
    assert!(body.as_ref() == data.as_slice(), "blob content differs");
    if !engines::fs_blob_store_or_skip("concurrent_same_blob_uploads: its file checks") {
        return;
    }
    assert_eq!(
        s.files_under("blobs"),
        vec![format!("sha256/{}", hex_of(&digest))]
    );
    assert!(
        s.files_under("_uploads").is_empty(),
        "{:?}",
        s.files_under("_uploads")
    );
}

#[tokio::test]
async fn identical_content_stored_once() {
    if !common::engines::fs_blob_store_or_skip("identical_content_stored_once") {
        return;
    }
    let s = TestServer::start().await;
    let c = client();
    let data = pseudo_random(20_000, 17);
    let d1 = s.push_blob(&c, "bpf/one", &data).await;
    let d2 = s.push_blob_chunked(&c, "bpf/two", &data, 7000).await;
    assert_eq!(d1, d2);
    assert_eq!(
        s.files_under("blobs"),
        vec![format!("sha256/{}", hex_of(&d1))]
    );

    // The same manifest (and config) in both repositories: stored once too.
    let (m1, body) = s
        .push_image(&c, "bpf/one", "v1", b"{\"c\":1}", &[&data], json!({}))
        .await;
    s.push_blob_post_put(&c, "bpf/two", b"{\"c\":1}").await;
    let m2 = s
        .put_manifest_ok(&c, "bpf/two", "v1", OCI_MANIFEST, &body)
        .await;
    assert_eq!(m1, m2);
    let files = s.files_under("blobs");
    assert_eq!(
        files.len(),
        3,
        "blob, config and manifest once each: {files:?}"
    );
    for d in [&d1, &m1, &sha256(b"{\"c\":1}")] {
        assert!(
            files.contains(&format!("sha256/{}", hex_of(d))),
            "{d} missing in {files:?}"
        );
    }
    // Both repositories serve it.
    for repo in ["bpf/one", "bpf/two"] {
        let r = c
            .get(s.url(&format!("/v2/{repo}/blobs/{d1}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert!(r.bytes().await.unwrap().as_ref() == data.as_slice());
    }
    // Unlinking from one repository leaves the other intact.
    let r = c
        .delete(s.url(&format!("/v2/bpf/one/blobs/{d1}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = c
        .head(s.url(&format!("/v2/bpf/one/blobs/{d1}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = c
        .get(s.url(&format!("/v2/bpf/two/blobs/{d1}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn accept_header_negotiation() {
    let s = TestServer::start().await;
    let c = client();
    let repo = "bpf/negotiate";
    let (child, child_body) = s
        .push_image(&c, repo, "amd64", b"{}", &[b"layer"], json!({}))
        .await;
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": child, "size": child_body.len(),
                       "platform": {"architecture": "amd64", "os": "linux"}}],
    }))
    .unwrap();
    let idx = s.put_manifest_ok(&c, repo, "v1", OCI_INDEX, &index).await;
    let url = s.url(&format!("/v2/{repo}/manifests/v1"));

    // Only the image manifest type is acceptable: the index is not served.
    let r = c
        .get(&url)
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_oci_error(r, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    let r = c
        .head(&url)
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    for accept in [
        OCI_INDEX.to_string(),
        format!("{OCI_MANIFEST}, {OCI_INDEX}"),
        format!("{OCI_MANIFEST};q=0.9, {OCI_INDEX};q=0.5"),
        "*/*".to_string(),
    ] {
        let r = c.get(&url).header("accept", &accept).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "Accept: {accept}");
        assert_eq!(header(&r, "content-type").as_deref(), Some(OCI_INDEX));
        assert_eq!(header(&r, "docker-content-digest"), Some(idx.clone()));
        assert_eq!(r.bytes().await.unwrap().as_ref(), index.as_slice());
    }
    // Several Accept headers are combined.
    let r = c
        .get(&url)
        .header("accept", OCI_MANIFEST)
        .header("accept", OCI_INDEX)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // No Accept at all: served as stored.
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "content-type").as_deref(), Some(OCI_INDEX));

    // The image manifest is served for an image-manifest Accept.
    let r = c
        .get(s.url(&format!("/v2/{repo}/manifests/amd64")))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "content-type").as_deref(), Some(OCI_MANIFEST));
}

// ---- misc --------------------------------------------------------------------

#[tokio::test]
async fn healthz_ok() {
    let s = TestServer::start().await;
    let c = client();
    let r = c.get(s.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(header(&r, "content-type")
        .unwrap_or_default()
        .starts_with("application/json"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], json!("ok"));
    assert_eq!(v["data_dir_writable"], json!(true));

    let r = c.get(s.url("/v2/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        header(&r, "docker-distribution-api-version").as_deref(),
        Some("registry/2.0")
    );
}

#[tokio::test]
async fn every_response_has_request_id() {
    let s = TestServer::start().await;
    let c = client();
    let (digest, _) = s
        .push_image(&c, "bpf/ids", "v1", b"{}", &[b"x"], json!({}))
        .await;
    let requests: Vec<(Method, String)> = vec![
        (Method::GET, "/healthz".into()),
        (Method::GET, "/v2/".into()),
        (Method::GET, "/v2/_catalog".into()),
        (Method::GET, "/v2/bpf/ids/tags/list".into()),
        (Method::GET, "/v2/bpf/ids/manifests/v1".into()),
        (Method::HEAD, format!("/v2/bpf/ids/manifests/{digest}")),
        (Method::GET, "/v2/bpf/ids/manifests/nope".into()),
        (Method::GET, "/v2/bpf/ids/blobs/sha256:bad".into()),
        (Method::GET, "/v2/BAD/tags/list".into()),
        (Method::POST, "/v2/bpf/ids/manifests/v1".into()),
        (Method::GET, "/v2/bpf/ids/unknown-endpoint".into()),
        (Method::GET, "/no/such/route".into()),
        (Method::POST, "/v2/bpf/ids/blobs/uploads/".into()),
    ];
    let mut ids = HashSet::new();
    for (method, path) in &requests {
        let r = send(&c, method.clone(), &s.url(path), &[]).await;
        let id = header(&r, "x-request-id")
            .unwrap_or_else(|| panic!("{method} {path}: no X-Request-Id"));
        assert!(!id.is_empty(), "{method} {path}");
        assert!(
            ids.insert(id.clone()),
            "{method} {path}: request id {id} reused"
        );
    }
    // A well-formed client id is echoed back.
    let r = send(
        &c,
        Method::GET,
        &s.url("/v2/"),
        &[("x-request-id", "trace-abc-123")],
    )
    .await;
    assert_eq!(header(&r, "x-request-id").as_deref(), Some("trace-abc-123"));
    let r = send(
        &c,
        Method::GET,
        &s.url("/v2/nope/manifests/x"),
        &[("x-request-id", "trace-err-1")],
    )
    .await;
    assert_eq!(header(&r, "x-request-id").as_deref(), Some("trace-err-1"));
    // Also on raw, malformed paths.
    let r = raw_request(s.addr, "GET", "/v2/%2e%2e/tags/list", &[], b"").await;
    assert!(r.header("x-request-id").is_some_and(|v| !v.is_empty()));
}

// ---- further spec checks -----------------------------------------------------

#[tokio::test]
async fn pagination_invalid_n_is_400() {
    let s = TestServer::start().await;
    let c = client();
    s.push_image(&c, "bpf/pages", "v1", b"{}", &[b"x"], json!({}))
        .await;
    // A malformed query parameter on an allowed method is a bad request,
    // never 405 Method Not Allowed.
    for path in [
        "/v2/bpf/pages/tags/list?n=abc",
        "/v2/bpf/pages/tags/list?n=-1",
        "/v2/_catalog?n=x",
        "/v2/_catalog?n=1.5",
    ] {
        let r = c.get(s.url(path)).send().await.unwrap();
        assert_oci_error_any(
            r,
            StatusCode::BAD_REQUEST,
            &["UNSUPPORTED", "PAGINATION_NUMBER_INVALID", "SIZE_INVALID"],
        )
        .await;
    }
}

#[tokio::test]
async fn unsatisfiable_blob_range_is_416_with_content_range() {
    let s = TestServer::start().await;
    let c = client();
    let data = pseudo_random(100, 30);
    let digest = s.push_blob(&c, "bpf/range416", &data).await;
    for range in ["bytes=100-", "bytes=200-300", "bytes=100-100"] {
        let r = c
            .get(s.url(&format!("/v2/bpf/range416/blobs/{digest}")))
            .header("range", range)
            .send()
            .await
            .unwrap();
        // RFC 9110 §15.5.17: a 416 to a byte-range request SHOULD carry
        // `Content-Range: bytes */<complete length>`.
        assert_eq!(
            header(&r, "content-range").as_deref(),
            Some("bytes */100"),
            "{range}: 416 without the unsatisfied-range Content-Range"
        );
        assert_oci_error(r, StatusCode::RANGE_NOT_SATISFIABLE, "BLOB_UPLOAD_INVALID").await;
    }
}

#[tokio::test]
async fn final_chunk_in_put_out_of_order_is_416() {
    let s = TestServer::start().await;
    let c = client();
    let loc = s.start_upload(&c, "bpf/putrange").await;
    let r = c
        .patch(s.abs(&loc))
        .header("content-range", "0-4")
        .header("content-length", "5")
        .body(b"hello".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let loc = location(&r);

    // The closing PUT carries its final chunk with a Content-Range that
    // skips bytes 5..6: chunks must be in order, so this is a 416 and the
    // session stays usable.
    let digest = sha256(b"helloworld");
    let r = c
        .put(s.abs(&with_query(&loc, &format!("digest={digest}"))))
        .header("content-range", "7-11")
        .header("content-length", "5")
        .body(b"world".to_vec())
        .send()
        .await
        .unwrap();
    assert_oci_error(r, StatusCode::RANGE_NOT_SATISFIABLE, "BLOB_UPLOAD_INVALID").await;
    let st = c.get(s.abs(&loc)).send().await.unwrap();
    assert_eq!(
        st.status(),
        StatusCode::NO_CONTENT,
        "the session must survive a 416"
    );
    assert_eq!(header(&st, "range").as_deref(), Some("0-4"));

    // With the right range the PUT completes the blob.
    let r = c
        .put(s.abs(&with_query(&location(&st), &format!("digest={digest}"))))
        .header("content-range", "5-9")
        .header("content-length", "5")
        .body(b"world".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let got = c
        .get(s.url(&format!("/v2/bpf/putrange/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(got.bytes().await.unwrap().as_ref(), b"helloworld");
}

#[tokio::test]
async fn upload_session_cap_is_429() {
    let s = TestServer::start_with_env(&[("BPF_REGISTRY_MAX_UPLOAD_SESSIONS", "2")]).await;
    let c = client();
    let a = s.start_upload(&c, "bpf/cap").await;
    let _b = s.start_upload(&c, "bpf/cap").await;
    let r = c
        .post(s.url("/v2/bpf/cap/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_oci_error(r, StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS").await;
    // Ending a session frees a slot.
    let r = c.delete(s.abs(&a)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let c2 = s.start_upload(&c, "bpf/cap").await;
    // A finished session frees its slot too.
    let d = sha256(b"done");
    let r = c
        .put(s.abs(&with_query(&c2, &format!("digest={d}"))))
        .body(b"done".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    s.start_upload(&c, "bpf/cap").await;
}

#[tokio::test]
async fn torn_chunk_after_crash_is_discarded() {
    if !common::engines::fs_blob_store_or_skip("torn_chunk_after_crash_is_discarded") {
        return;
    }
    let s = TestServer::start().await;
    let data = pseudo_random(200_000, 31);
    let loc = {
        let c = client();
        let loc = s.start_upload(&c, "bpf/torn").await;
        let r = c
            .patch(s.abs(&loc))
            .header("content-range", "0-99999")
            .header("content-length", "100000")
            .body(data[..100_000].to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        location(&r)
    };
    let id = loc
        .rsplit('/')
        .next()
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .to_string();
    // A crash mid-chunk leaves unacknowledged bytes after the offset.
    let s = s
        .restart_after(|dir| {
            use std::io::Write;
            let path = dir.join("_uploads").join(&id).join("data");
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
            f.write_all(&[0xAB; 4321]).unwrap();
        })
        .await;
    let c = client();
    let st = c.get(s.abs(&loc)).send().await.unwrap();
    assert_eq!(st.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        header(&st, "range").as_deref(),
        Some("0-99999"),
        "only acknowledged bytes count"
    );
    let r = c
        .patch(s.abs(&location(&st)))
        .header("content-range", "100000-199999")
        .header("content-length", "100000")
        .body(data[100_000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let digest = sha256(&data);
    let r = c
        .put(s.abs(&with_query(&location(&r), &format!("digest={digest}"))))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let got = c
        .get(s.url(&format!("/v2/bpf/torn/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert!(
        got.bytes().await.unwrap().as_ref() == data.as_slice(),
        "torn bytes leaked into the blob"
    );
}

#[tokio::test]
async fn content_range_whose_length_overflows_is_rejected_not_a_panic() {
    let s = TestServer::start().await;
    let c = client();
    let loc = s.start_upload(&c, "bpf/overflow").await;
    for method in [reqwest::Method::PATCH, reqwest::Method::PUT] {
        let url = if method == reqwest::Method::PUT {
            format!("{}?digest={}", s.abs(&loc), sha256(b"x"))
        } else {
            s.abs(&loc)
        };
        let r = c
            .request(method.clone(), url)
            .header("content-type", "application/octet-stream")
            .header("content-range", format!("0-{}", u64::MAX))
            .body(b"x".to_vec())
            .send()
            .await
            .unwrap();
        assert_oci_error(r, StatusCode::RANGE_NOT_SATISFIABLE, "BLOB_UPLOAD_INVALID").await;
    }
    // The session is untouched: still at offset 0.
    let r = c.get(s.abs(&loc)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&r, "range").as_deref(), Some("0-0"));
}

// ---- OCI details of issue 11 -------------------------------------------------

#[tokio::test]
async fn lookups_of_an_invalid_tag_are_404_manifest_unknown_and_put_stays_400() {
    let s = TestServer::start().await;
    let c = client();
    s.push_image(&c, "bpf/ref", "v1", b"{}", &[b"l"], json!({}))
        .await;
    // The conformance suite's "nonexistent manifest" reference.
    for repo in ["bpf/ref", "bpf/none"] {
        for reference in [".INVALID_MANIFEST_NAME", "-x", "a%2Bb", "x%21y"] {
            let url = s.url(&format!("/v2/{repo}/manifests/{reference}"));
            let r = c.get(&url).send().await.unwrap();
            assert_oci_error(r, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
            let r = c.head(&url).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::NOT_FOUND, "HEAD {url}");
            let r = c.delete(&url).send().await.unwrap();
            assert_oci_error(r, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
        }
    }
    let r = s
        .put_manifest(&c, "bpf/ref", ".INVALID_MANIFEST_NAME", OCI_MANIFEST, b"{}")
        .await;
    assert_oci_error(r, StatusCode::BAD_REQUEST, "MANIFEST_INVALID").await;
    // The valid tag is untouched.
    let r = c
        .get(s.url("/v2/bpf/ref/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn mount_without_from_finds_the_blob_in_another_repository() {
    let s = TestServer::start().await;
    let c = client();
    let data = pseudo_random(500, 80);
    let d = s.push_blob(&c, "bpf/holder", &data).await;
    let r = c
        .post(s.url(&format!("/v2/bpf/auto/blobs/uploads/?mount={d}")))
        .header("content-length", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(location(&r), format!("/v2/bpf/auto/blobs/{d}"));
    assert_eq!(
        header(&r, "docker-content-digest").as_deref(),
        Some(d.as_str())
    );
    let got = c
        .get(s.url(&format!("/v2/bpf/auto/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(got.bytes().await.unwrap().as_ref(), data.as_slice());
    // A digest no repository holds: an upload session.
    let r = c
        .post(s.url(&format!(
            "/v2/bpf/auto/blobs/uploads/?mount={}",
            sha256(b"nowhere")
        )))
        .header("content-length", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert!(location(&r).starts_with("/v2/bpf/auto/blobs/uploads/"));
}

#[tokio::test]
async fn with_automatic_mount_off_a_mount_without_from_is_a_session() {
    let s = TestServer::start_with_env(&[("BPF_REGISTRY_AUTOMATIC_MOUNT", "off")]).await;
    let c = client();
    let d = s.push_blob(&c, "bpf/holder", &pseudo_random(500, 81)).await;
    let r = c
        .post(s.url(&format!("/v2/bpf/manual/blobs/uploads/?mount={d}")))
        .header("content-length", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert!(location(&r).starts_with("/v2/bpf/manual/blobs/uploads/"));
    let got = c
        .head(s.url(&format!("/v2/bpf/manual/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), StatusCode::NOT_FOUND, "nothing was mounted");
    // An explicit `from` still mounts.
    let r = c
        .post(s.url(&format!(
            "/v2/bpf/manual/blobs/uploads/?mount={d}&from=bpf/holder"
        )))
        .header("content-length", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn accept_with_q_zero_excludes_that_type() {
    let s = TestServer::start().await;
    let c = client();
    let repo = "bpf/qzero";
    let (child, child_body) = s
        .push_image(&c, repo, "amd64", b"{}", &[b"layer"], json!({}))
        .await;
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": child, "size": child_body.len(),
                       "platform": {"architecture": "amd64", "os": "linux"}}],
    }))
    .unwrap();
    s.put_manifest_ok(&c, repo, "v1", OCI_INDEX, &index).await;
    let index_url = s.url(&format!("/v2/{repo}/manifests/v1"));
    let image_url = s.url(&format!("/v2/{repo}/manifests/amd64"));
    for accept in [
        format!("{OCI_INDEX};q=0"),
        format!("{OCI_INDEX};q=0, */*"),
        format!("{OCI_MANIFEST}, {OCI_INDEX}; q=0.0"),
        format!("application/*;q=0, {OCI_MANIFEST}"),
    ] {
        let r = c
            .get(&index_url)
            .header("accept", &accept)
            .send()
            .await
            .unwrap();
        assert_oci_error(r, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    }
    // The excluded type is only that type.
    let r = c
        .get(&image_url)
        .header("accept", format!("{OCI_INDEX};q=0, */*"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "content-type").as_deref(), Some(OCI_MANIFEST));
    let r = c
        .get(&index_url)
        .header("accept", format!("{OCI_INDEX};q=0.1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn an_invalid_or_foreign_range_is_ignored_and_the_whole_blob_served() {
    let s = TestServer::start().await;
    let c = client();
    let data = pseudo_random(100, 81);
    let digest = s.push_blob(&c, "bpf/ranges", &data).await;
    let url = s.url(&format!("/v2/bpf/ranges/blobs/{digest}"));
    // RFC 9110 §14.2: an invalid range (last before first), an unknown
    // unit and (here) several ranges are ignored: 200 with the whole blob.
    for range in ["bytes=5-3", "items=0-1", "bytes=0-1,3-4"] {
        let r = c.get(&url).header("range", range).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "Range: {range}");
        assert!(header(&r, "content-range").is_none(), "Range: {range}");
        assert_eq!(r.bytes().await.unwrap().as_ref(), data.as_slice());
    }
    // Not a ranges-specifier at all: still refused.
    let r = c
        .get(&url)
        .header("range", "bytes=abc")
        .send()
        .await
        .unwrap();
    assert_oci_error(r, StatusCode::RANGE_NOT_SATISFIABLE, "BLOB_UPLOAD_INVALID").await;
    // The REST binary download reads Range the same way.
    let body = json!({
        "name": "bpf/rangetool",
        "version": "1.0.0",
        "type": "program",
        "architecture": "x86_64",
        "data": "dGVzdCBkYXRh",
    });
    let r = c
        .post(s.url("/artifacts"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let whole = c
        .get(s.url(&format!("/artifacts/{id}/binary")))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let r = c
        .get(s.url(&format!("/artifacts/{id}/binary")))
        .header("range", "bytes=5-3")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap(), whole);
}

/// On a store that keeps each chunk as an object (S3) the registry
/// advertises `OCI-Chunk-Min-Length`, and still accepts smaller chunks from
/// clients that ignore it; the filesystem store needs no minimum.
#[tokio::test]
async fn the_chunk_minimum_is_advertised_where_the_store_needs_one_and_smaller_chunks_work() {
    let s = TestServer::start().await;
    let c = client();
    let r = c
        .post(s.url("/v2/min/chunk/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::ACCEPTED);
    let advertised = header(&r, "oci-chunk-min-length");
    if common::engines::blob_store_is_fs() {
        assert_eq!(advertised, None);
    } else {
        assert_eq!(advertised.as_deref(), Some("5242880"));
    }
    let data = pseudo_random(100_000, 5);
    let digest = s.push_blob_chunked(&c, "min/chunk", &data, 7_000).await;
    let got = c
        .get(s.url(&format!("/v2/min/chunk/blobs/{digest}")))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(got.as_ref(), data.as_slice());
}

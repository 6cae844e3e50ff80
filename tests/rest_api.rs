//! The REST facade of the original service (`/artifacts...`) against a real
//! server on 127.0.0.1:0: the seed README's examples, every field of the
//! artifact JSON, idempotency and immutability of versions, multi-arch
//! versions as OCI image indexes, eBPF awareness on objects compiled here
//! with clang, host associations as OCI referrers, restarts, listing,
//! deletion, OCI-pushed artifacts seen through REST, and bad inputs (each a
//! 4xx JSON error that stores nothing).

mod common;

use std::collections::{BTreeSet, HashSet};
use std::io::Read as _;
use std::process::Command;

use base64::Engine as _;
use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

const HOST_ASSOCIATION: &str = "application/vnd.aegisflux.bpf.host-association.v1";
const HOST_ID_ANNOTATION: &str = "io.aegisflux.bpf.host-id";

// ---- helpers -------------------------------------------------------------------

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// The seed README's `POST /artifacts` curl example, as the JSON it sends.
/// The seed README's example body exactly as its curl command sends it,
/// shell comment included (`# Base64 encoded data` sits inside the quoted
/// `-d` argument, so curl sends it).
fn seed_example_body() -> &'static str {
    r#"{
    "name": "security_monitor",
    "version": "1.0.0",
    "description": "Security monitoring eBPF program",
    "type": "program",
    "architecture": "x86_64",
    "kernel_version": "5.4.0",
    "data": "dGVzdCBkYXRh"  # Base64 encoded data
  }"#
}

/// A create body with every required field.
fn body(name: &str, version: &str, arch: &str, data: &[u8]) -> Value {
    json!({
        "name": name,
        "version": version,
        "description": format!("{name} {version} for {arch}"),
        "type": "program",
        "architecture": arch,
        "kernel_version": "5.15.0",
        "data": b64(data),
    })
}

async fn post_raw(
    s: &TestServer,
    c: &reqwest::Client,
    content_type: Option<&str>,
    raw: Vec<u8>,
) -> reqwest::Response {
    let mut rb = c.post(s.url("/artifacts")).body(raw);
    if let Some(ct) = content_type {
        rb = rb.header("content-type", ct);
    }
    rb.send().await.expect("send POST /artifacts")
}

async fn post(s: &TestServer, c: &reqwest::Client, body: &Value) -> reqwest::Response {
    post_raw(
        s,
        c,
        Some("application/json"),
        serde_json::to_vec(body).expect("json"),
    )
    .await
}

/// Reads a response as JSON after asserting its status.
async fn json_of(r: reqwest::Response, status: StatusCode) -> Value {
    let got = r.status();
    let url = r.url().to_string();
    let text = r.text().await.expect("body");
    assert_eq!(got, status, "{url}: expected {status}, got {got}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{url}: body is not JSON ({e}): {text}"))
}

/// POSTs an artifact and asserts 201; returns the artifact JSON.
async fn create(s: &TestServer, c: &reqwest::Client, body: &Value) -> Value {
    json_of(post(s, c, body).await, StatusCode::CREATED).await
}

async fn get_json(c: &reqwest::Client, url: &str) -> Value {
    json_of(c.get(url).send().await.expect("send GET"), StatusCode::OK).await
}

async fn get_bytes(c: &reqwest::Client, url: &str) -> Vec<u8> {
    let r = c.get(url).send().await.expect("send GET");
    assert_eq!(r.status(), StatusCode::OK, "GET {url}");
    r.bytes().await.expect("body").to_vec()
}

fn id_of(artifact: &Value) -> String {
    artifact["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id in {artifact}"))
        .to_string()
}

fn ids(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("not an array: {list}"))
        .iter()
        .map(id_of)
        .collect()
}

fn id_set(list: &Value) -> BTreeSet<String> {
    ids(list).into_iter().collect()
}

/// Asserts a REST error: the status, a JSON content type and the
/// `{"error": code, "message": "..."}` body. Returns the body.
async fn assert_rest_error(r: reqwest::Response, status: StatusCode, code: &str) -> Value {
    let got = r.status();
    let url = r.url().to_string();
    let ct = header(&r, "content-type").unwrap_or_default();
    let text = r.text().await.expect("body");
    assert_eq!(got, status, "{url}: expected {status}, got {got}: {text}");
    assert!(
        ct.starts_with("application/json"),
        "{url}: error Content-Type is {ct:?}: {text}"
    );
    let v: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{url}: error body is not JSON ({e}): {text}"));
    assert_eq!(v["error"], code, "{url}: error code in {v}");
    assert!(
        v["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{url}: no message in {v}"
    );
    v
}

/// Asserts the registry holds nothing: no artifact listed, an empty
/// catalog, and no blob or repository file written.
async fn assert_nothing_stored(s: &TestServer, c: &reqwest::Client) {
    let list = get_json(c, &s.url("/artifacts")).await;
    assert_eq!(
        list["artifacts"],
        json!([]),
        "GET /artifacts after a rejected request"
    );
    let catalog = get_json(c, &s.url("/v2/_catalog")).await;
    assert_eq!(
        catalog["repositories"],
        json!([]),
        "catalog after a rejected request"
    );
    assert_eq!(
        s.files_under("blobs"),
        Vec::<String>::new(),
        "blobs after a rejected request"
    );
    assert_eq!(
        s.files_under("repositories"),
        Vec::<String>::new(),
        "repository links after a rejected request"
    );
}

/// The entries (path, bytes) of a zstd-compressed tar.
fn untar_zstd(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let decoder = zstd::stream::read::Decoder::new(bytes).expect("a zstd stream");
    let mut archive = tar::Archive::new(decoder);
    archive
        .entries()
        .expect("a tar inside the zstd stream")
        .map(|e| {
            let mut e = e.expect("a tar entry");
            let path = e.path().expect("entry path").to_string_lossy().into_owned();
            let mut data = Vec::new();
            e.read_to_end(&mut data).expect("entry data");
            (path, data)
        })
        .collect()
}

/// A zstd-compressed tar of some files (built here, not by the registry).
fn tar_zstd(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o600);
        h.set_mtime(1_700_000_000);
        h.set_entry_type(tar::EntryType::Regular);
        builder
            .append_data(&mut h, name, *data)
            .expect("tar append");
    }
    let tar = builder.into_inner().expect("tar finish");
    zstd::encode_all(&tar[..], 19).expect("zstd")
}

async fn manifest(
    c: &reqwest::Client,
    s: &TestServer,
    repo: &str,
    reference: &str,
) -> reqwest::Response {
    c.get(s.url(&format!("/v2/{repo}/manifests/{reference}")))
        .header("accept", format!("{OCI_INDEX}, {OCI_MANIFEST}"))
        .send()
        .await
        .expect("send GET manifest")
}

async fn for_host(c: &reqwest::Client, s: &TestServer, host: &str) -> Value {
    let v = get_json(c, &s.url(&format!("/artifacts/for-host/{host}"))).await;
    assert_eq!(v["host_id"], host, "for-host answer names the host: {v}");
    v
}

/// Compiles C source with clang; the eBPF tests fail (not skip) without it.
fn clang(source: &str, args: &[&str]) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("temp dir");
    let src = dir.path().join("x.c");
    let obj = dir.path().join("x.o");
    std::fs::write(&src, source).expect("write x.c");
    let include = format!("-I/usr/include/{}-linux-gnu", std::env::consts::ARCH);
    let out = Command::new("clang")
        .args(args)
        .arg("-c")
        .arg(&src)
        .arg("-o")
        .arg(&obj)
        .arg(&include)
        .output()
        .unwrap_or_else(|e| {
            panic!("clang is required for the eBPF tests (apt-get install clang libbpf-dev): {e}")
        });
    assert!(
        out.status.success(),
        "clang {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(&obj).expect("read x.o")
}

const BPF_PROGRAMS: &str = r#"
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 128);
    __type(key, __u32);
    __type(value, __u64);
} pkt_count SEC(".maps");

SEC("xdp")
int xdp_pass_all(struct xdp_md *ctx)
{
    __u32 key = ctx->ingress_ifindex;
    __u64 one = 1, *val = bpf_map_lookup_elem(&pkt_count, &key);
    if (val)
        __sync_fetch_and_add(val, 1);
    else
        bpf_map_update_elem(&pkt_count, &key, &one, BPF_ANY);
    return XDP_PASS;
}

SEC("kprobe/do_unlinkat")
int trace_unlink(void *ctx)
{
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
"#;

const BPF_MAPS_ONLY: &str = r#"
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 16);
    __type(key, __u32);
    __type(value, __u64);
} shared_counters SEC(".maps");

char LICENSE[] SEC("license") = "GPL";
"#;

const HOST_C: &str = r#"
int add(int a, int b) { return a + b; }
"#;

fn bpf_object(source: &str) -> Vec<u8> {
    clang(source, &["-O2", "-g", "-target", "bpf"])
}

// ---- the seed README ------------------------------------------------------------

#[tokio::test]
async fn seed_curl_examples_work_verbatim() {
    let s = TestServer::start().await;
    let c = client();

    // curl -X POST http://localhost:8084/artifacts -H "Content-Type: application/json" -d '{...}'
    let r = post_raw(
        &s,
        &c,
        Some("application/json"),
        seed_example_body().as_bytes().to_vec(),
    )
    .await;
    let created = json_of(r, StatusCode::CREATED).await;
    let id = id_of(&created);
    assert!(
        id.starts_with("sha256:") && id.len() == 71,
        "id is a manifest digest: {id}"
    );
    assert_eq!(created["name"], "security_monitor");
    assert_eq!(created["version"], "1.0.0");
    assert_eq!(created["description"], "Security monitoring eBPF program");
    assert_eq!(created["type"], "program");
    assert_eq!(created["architecture"], "x86_64");
    assert_eq!(created["kernel_version"], "5.4.0");
    assert_eq!(
        created["ebpf"],
        Value::Null,
        "plain text is not an eBPF object"
    );

    // curl http://localhost:8084/artifacts/<id>
    let got = get_json(&c, &s.url(&format!("/artifacts/{id}"))).await;
    assert_eq!(
        got, created,
        "GET /artifacts/{{id}} answers the created artifact"
    );

    // curl -O http://localhost:8084/artifacts/<id>/binary
    let r = c
        .get(s.url(&format!("/artifacts/{id}/binary")))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        header(&r, "content-type").as_deref(),
        Some(LAYER_TAR_ZSTD),
        "binary Content-Type"
    );
    assert_eq!(
        header(&r, "content-disposition").as_deref(),
        Some("attachment; filename=\"security_monitor-1.0.0.tar.zst\"")
    );
    let etag = header(&r, "etag").expect("binary has an ETag");
    let content_length: usize = header(&r, "content-length")
        .expect("binary has a Content-Length")
        .parse()
        .expect("numeric Content-Length");
    let bin = r.bytes().await.expect("body").to_vec();
    assert_eq!(content_length, bin.len(), "Content-Length matches the body");
    assert_eq!(
        etag.trim_matches('"'),
        sha256(&bin),
        "ETag is the digest of the binary"
    );
    assert_eq!(created["checksum"], sha256(&bin));
    assert_eq!(
        untar_zstd(&bin),
        vec![("security_monitor.bin".to_string(), b"test data".to_vec())],
        "the tar.zst holds the decoded data as security_monitor.bin"
    );

    // A conditional GET with the ETag is answered 304 without a body.
    let r = c
        .get(s.url(&format!("/artifacts/{id}/binary")))
        .header("if-none-match", &etag)
        .send()
        .await
        .expect("send");
    assert_eq!(
        r.status(),
        StatusCode::NOT_MODIFIED,
        "If-None-Match: {etag}"
    );
    assert!(r.bytes().await.expect("body").is_empty(), "304 has no body");

    // A range request is answered 206 with that slice.
    let end = bin.len().min(10) - 1;
    let r = c
        .get(s.url(&format!("/artifacts/{id}/binary")))
        .header("range", format!("bytes=0-{end}"))
        .send()
        .await
        .expect("send");
    assert_eq!(
        r.status(),
        StatusCode::PARTIAL_CONTENT,
        "Range: bytes=0-{end}"
    );
    assert_eq!(
        header(&r, "content-range"),
        Some(format!("bytes 0-{end}/{}", bin.len()))
    );
    assert_eq!(
        r.bytes().await.expect("body").to_vec(),
        bin[..=end].to_vec()
    );

    // A range past the end is 416 and says the file's length.
    let r = c
        .get(s.url(&format!("/artifacts/{id}/binary")))
        .header("range", format!("bytes={}-", bin.len()))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        header(&r, "content-range"),
        Some(format!("bytes */{}", bin.len()))
    );

    // The health check of the seed.
    let r = c.get(s.url("/healthz")).send().await.expect("send");
    assert_eq!(r.status(), StatusCode::OK, "GET /healthz");
}

// ---- the artifact JSON ------------------------------------------------------------

#[tokio::test]
async fn every_field_round_trips() {
    let s = TestServer::start().await;
    let c = client();
    let payload = pseudo_random(5000, 7);
    let mut req = body("net/flow_tracer", "2.3.4-rc.1", "x86_64", &payload);
    req["description"] = json!("Traces flows; \"quoted\" and ünïcode");
    req["type"] = json!("tracepoint");
    req["kernel_version"] = json!("6.1.0-18-amd64");
    req["metadata"] = json!({
        "author": "example@company.com",
        "license": "GPL-2.0",
        "nested": {"list": [1, 2, {"deep": true}], "null": null},
        "number": 42.5
    });
    req["tags"] = json!(["security", "monitoring", "net"]);

    let r = post(&s, &c, &req).await;
    assert_eq!(r.status(), StatusCode::CREATED, "first POST");
    let loc = header(&r, "location").expect("201 has a Location");
    let a = json_of(r, StatusCode::CREATED).await;
    let id = id_of(&a);
    assert_eq!(
        loc,
        format!("/artifacts/{id}"),
        "Location names the artifact"
    );

    assert_eq!(a["name"], "net/flow_tracer");
    assert_eq!(a["version"], "2.3.4-rc.1");
    assert_eq!(a["description"], req["description"]);
    assert_eq!(a["type"], "tracepoint");
    assert_eq!(a["architecture"], "x86_64");
    assert_eq!(a["kernel_version"], "6.1.0-18-amd64");
    assert_eq!(
        a["metadata"], req["metadata"],
        "metadata object round-trips"
    );
    assert_eq!(a["tags"], req["tags"], "tags round-trip in order");
    assert_eq!(a["hosts"], json!([]));
    assert_eq!(a["ebpf"], Value::Null);
    let created_at = a["created_at"].as_str().expect("created_at is a string");
    time::OffsetDateTime::parse(created_at, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("created_at {created_at:?} is not RFC 3339: {e}"));

    let bin = get_bytes(&c, &s.url(&format!("/artifacts/{id}/binary"))).await;
    assert_eq!(a["size"], bin.len(), "size is the tar.zst length");
    assert_eq!(
        a["checksum"],
        sha256(&bin),
        "checksum is the sha256 of the tar.zst"
    );
    assert_eq!(
        untar_zstd(&bin),
        vec![("flow_tracer.bin".to_string(), payload)],
        "non-ELF payload is packed as <last name component>.bin"
    );

    let oci = &a["oci"];
    assert_eq!(oci["repository"], "net/flow_tracer");
    assert_eq!(oci["reference"], "2.3.4-rc.1");
    assert_eq!(oci["manifest_digest"], id.as_str());
    assert_eq!(oci["layer_digest"], a["checksum"]);
    assert_eq!(oci["media_type"], LAYER_TAR_ZSTD);

    // Same shape on GET, in the listing, and from the OCI side.
    assert_eq!(get_json(&c, &s.url(&format!("/artifacts/{id}"))).await, a);
    let list = get_json(&c, &s.url("/artifacts")).await;
    assert_eq!(list["artifacts"], json!([a.clone()]));

    let r = manifest(&c, &s, "net/flow_tracer", "2.3.4-rc.1").await;
    assert_eq!(r.status(), StatusCode::OK, "the version is a tag");
    assert_eq!(
        header(&r, "docker-content-digest").as_deref(),
        Some(id.as_str())
    );
    let raw = r.bytes().await.expect("body");
    assert_eq!(
        sha256(&raw),
        id,
        "the id is the digest of the manifest bytes"
    );
    let m: Value = serde_json::from_slice(&raw).expect("manifest JSON");
    assert_eq!(m["mediaType"], OCI_MANIFEST);
    assert_eq!(m["artifactType"], BPF_ARTIFACT_TYPE);
    assert_eq!(m["config"]["mediaType"], BPF_CONFIG);
    assert_eq!(m["layers"][0]["mediaType"], LAYER_TAR_ZSTD);
    assert_eq!(m["layers"][0]["digest"], a["checksum"]);
    assert_eq!(
        m["layers"][0]["annotations"]["org.opencontainers.image.title"],
        "net_flow_tracer-2.3.4-rc.1.tar.zst"
    );
    let ann = &m["annotations"];
    assert_eq!(ann["org.opencontainers.image.title"], "net/flow_tracer");
    assert_eq!(ann["org.opencontainers.image.version"], "2.3.4-rc.1");
    assert_eq!(
        ann["org.opencontainers.image.description"],
        req["description"]
    );
    assert_eq!(ann["org.opencontainers.image.created"], created_at);
    assert_eq!(ann["org.opencontainers.image.licenses"], "GPL-2.0");
    assert_eq!(
        ann["org.opencontainers.image.authors"],
        "example@company.com"
    );
    assert_eq!(ann["io.aegisflux.bpf.type"], "tracepoint");
    assert_eq!(ann["io.aegisflux.bpf.architecture"], "x86_64");
    assert_eq!(ann["io.aegisflux.bpf.kernel-version"], "6.1.0-18-amd64");
}

// ---- versions ------------------------------------------------------------------

#[tokio::test]
async fn reposting_identical_content_is_200_with_the_same_artifact() {
    let s = TestServer::start().await;
    let c = client();
    let req = body("idem", "1.0.0", "x86_64", b"same bytes");
    let first = create(&s, &c, &req).await;

    let r = post(&s, &c, &req).await;
    assert_eq!(
        header(&r, "location"),
        Some(format!("/artifacts/{}", id_of(&first)))
    );
    let again = json_of(r, StatusCode::OK).await;
    assert_eq!(
        again, first,
        "the replay answers the existing artifact unchanged"
    );
    let list = get_json(&c, &s.url("/artifacts")).await;
    assert_eq!(
        ids(&list["artifacts"]),
        vec![id_of(&first)],
        "still one artifact"
    );
}

#[tokio::test]
async fn different_content_for_an_existing_version_is_409_version_exists() {
    let s = TestServer::start().await;
    let c = client();
    let first = create(&s, &c, &body("immutable", "1.0.0", "x86_64", b"original")).await;

    let r = post(&s, &c, &body("immutable", "1.0.0", "x86_64", b"changed")).await;
    assert_rest_error(r, StatusCode::CONFLICT, "version_exists").await;

    // The version still names the original.
    let r = manifest(&c, &s, "immutable", "1.0.0").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "docker-content-digest"), Some(id_of(&first)));
    let bin = get_bytes(&c, &s.url(&format!("/artifacts/{}/binary", id_of(&first)))).await;
    assert_eq!(untar_zstd(&bin)[0].1, b"original".to_vec());
    let list = get_json(&c, &s.url("/artifacts")).await;
    assert_eq!(ids(&list["artifacts"]), vec![id_of(&first)]);
}

#[tokio::test]
async fn second_architecture_makes_the_version_an_image_index() {
    let s = TestServer::start().await;
    let c = client();
    let amd = create(&s, &c, &body("multi", "1.0.0", "x86_64", b"amd64 build")).await;
    let r = post(&s, &c, &body("multi", "1.0.0", "aarch64", b"arm64 build")).await;
    let arm = json_of(r, StatusCode::CREATED).await;
    assert_ne!(id_of(&amd), id_of(&arm));
    assert_eq!(arm["architecture"], "aarch64");

    let r = c
        .get(s.url("/v2/multi/manifests/1.0.0"))
        .header("accept", OCI_INDEX)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "content-type").as_deref(), Some(OCI_INDEX));
    let index: Value = r.json().await.expect("index JSON");
    assert_eq!(index["mediaType"], OCI_INDEX);
    let manifests = index["manifests"].as_array().expect("manifests");
    assert_eq!(manifests.len(), 2, "one manifest per platform: {index}");
    let by_arch: BTreeSet<(String, String)> = manifests
        .iter()
        .map(|m| {
            assert_eq!(m["mediaType"], OCI_MANIFEST);
            (
                m["platform"]["architecture"]
                    .as_str()
                    .expect("platform.architecture")
                    .to_string(),
                m["digest"].as_str().expect("digest").to_string(),
            )
        })
        .collect();
    assert_eq!(
        by_arch,
        BTreeSet::from([
            ("amd64".to_string(), id_of(&amd)),
            ("arm64".to_string(), id_of(&arm))
        ])
    );

    // Both artifacts stay reachable; the replays are still idempotent.
    for a in [&amd, &arm] {
        assert_eq!(
            &get_json(&c, &s.url(&format!("/artifacts/{}", id_of(a)))).await,
            a
        );
    }
    let again = json_of(
        post(&s, &c, &body("multi", "1.0.0", "x86_64", b"amd64 build")).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(id_of(&again), id_of(&amd));
    let again = json_of(
        post(&s, &c, &body("multi", "1.0.0", "aarch64", b"arm64 build")).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(id_of(&again), id_of(&arm));
    let r = post(
        &s,
        &c,
        &body("multi", "1.0.0", "aarch64", b"other arm64 build"),
    )
    .await;
    assert_rest_error(r, StatusCode::CONFLICT, "version_exists").await;
}

#[tokio::test]
async fn a_payload_that_already_is_tar_zstd_is_stored_as_is() {
    let s = TestServer::start().await;
    let c = client();
    let packed = tar_zstd(&[
        ("prog/probe.bin", b"probe bytes"),
        ("prog/README", b"two files, packed by the caller"),
    ]);
    let a = create(&s, &c, &body("prepacked", "0.1.0", "x86_64", &packed)).await;
    let bin = get_bytes(&c, &s.url(&format!("/artifacts/{}/binary", id_of(&a)))).await;
    assert_eq!(
        bin, packed,
        "the binary is the posted tar.zst, byte for byte"
    );
    assert_eq!(a["checksum"], sha256(&packed));
    assert_eq!(a["size"], packed.len());
}

// ---- eBPF awareness --------------------------------------------------------------

#[tokio::test]
async fn ebpf_object_facts_are_recorded_and_packed_as_dot_o() {
    let obj = bpf_object(BPF_PROGRAMS);
    let s = TestServer::start().await;
    let c = client();
    let mut req = body("xdp_guard", "1.0.0", "x86_64", &obj);
    req["metadata"] = json!({"author": "ops@example.com"});
    let a = create(&s, &c, &req).await;

    let e = &a["ebpf"];
    assert_eq!(e["endianness"], "little", "ebpf: {e}");
    let programs: BTreeSet<(String, String)> = e["programs"]
        .as_array()
        .unwrap_or_else(|| panic!("ebpf.programs: {e}"))
        .iter()
        .map(|p| {
            (
                p["section"].as_str().expect("section").to_string(),
                p["program_type"]
                    .as_str()
                    .expect("program_type")
                    .to_string(),
            )
        })
        .collect();
    assert_eq!(
        programs,
        BTreeSet::from([
            ("xdp".to_string(), "xdp".to_string()),
            ("kprobe/do_unlinkat".to_string(), "kprobe".to_string()),
        ]),
        "program sections with their types: {e}"
    );
    let xdp = e["programs"]
        .as_array()
        .expect("programs")
        .iter()
        .find(|p| p["section"] == "xdp")
        .expect("the xdp section");
    assert_eq!(xdp["functions"], json!(["xdp_pass_all"]));
    assert_eq!(e["maps"], json!(["pkt_count"]), "maps: {e}");
    assert_eq!(e["license"], "GPL");
    assert_eq!(e["btf"], true, "compiled with -g: .BTF present");
    assert_eq!(e["btf_ext"], true, "compiled with -g: .BTF.ext present");

    let bin = get_bytes(&c, &s.url(&format!("/artifacts/{}/binary", id_of(&a)))).await;
    assert_eq!(
        untar_zstd(&bin),
        vec![("xdp_guard.o".to_string(), obj)],
        "an ELF payload is packed as <name>.o"
    );

    // The license from the object becomes the manifest's licenses annotation.
    let m: Value = manifest(&c, &s, "xdp_guard", "1.0.0")
        .await
        .json()
        .await
        .expect("manifest");
    assert_eq!(m["annotations"]["org.opencontainers.image.licenses"], "GPL");
}

#[tokio::test]
async fn non_bpf_elf_declared_as_program_is_400_invalid_ebpf() {
    let obj = clang(HOST_C, &["-O2"]);
    assert_eq!(&obj[..4], b"\x7fELF", "clang produced an ELF object");
    let s = TestServer::start().await;
    let c = client();
    let r = post(&s, &c, &body("host_object", "1.0.0", "x86_64", &obj)).await;
    let e = assert_rest_error(r, StatusCode::BAD_REQUEST, "invalid_ebpf").await;
    assert!(
        e["message"].as_str().unwrap_or_default().contains("247"),
        "the message says an eBPF object (e_machine 247) was expected: {e}"
    );
    assert_nothing_stored(&s, &c).await;
}

#[tokio::test]
async fn big_endian_bpf_object_declared_x86_64_is_400_invalid_ebpf() {
    let obj = clang(BPF_PROGRAMS, &["-O2", "-g", "-target", "bpfeb"]);
    assert_eq!(obj[5], 2, "clang -target bpfeb produced a big-endian ELF");
    let s = TestServer::start().await;
    let c = client();
    let r = post(&s, &c, &body("be_object", "1.0.0", "x86_64", &obj)).await;
    let e = assert_rest_error(r, StatusCode::BAD_REQUEST, "invalid_ebpf").await;
    assert!(
        e["message"].as_str().unwrap_or_default().contains("endian"),
        "the message names the byte-order mismatch: {e}"
    );
    assert_nothing_stored(&s, &c).await;
}

#[tokio::test]
async fn maps_only_object_is_rejected_as_program_and_accepted_as_map() {
    let obj = bpf_object(BPF_MAPS_ONLY);
    let s = TestServer::start().await;
    let c = client();
    let r = post(&s, &c, &body("shared_maps", "1.0.0", "x86_64", &obj)).await;
    let e = assert_rest_error(r, StatusCode::BAD_REQUEST, "invalid_ebpf").await;
    assert!(
        e["message"]
            .as_str()
            .unwrap_or_default()
            .contains("program"),
        "the message says there is no program section: {e}"
    );
    assert_nothing_stored(&s, &c).await;

    let mut req = body("shared_maps", "1.0.0", "x86_64", &obj);
    req["type"] = json!("map");
    let a = create(&s, &c, &req).await;
    assert_eq!(a["type"], "map");
    assert_eq!(a["ebpf"]["programs"], json!([]));
    assert_eq!(a["ebpf"]["maps"], json!(["shared_counters"]));
    assert_eq!(a["ebpf"]["license"], "GPL");
}

// ---- host associations --------------------------------------------------------------

#[tokio::test]
async fn host_association_add_replay_list_and_remove() {
    let s = TestServer::start().await;
    let c = client();
    let a = create(&s, &c, &body("assoc", "1.0.0", "x86_64", b"assoc")).await;
    let id = id_of(&a);
    let hosts_url = s.url(&format!("/artifacts/{id}/hosts"));

    let r = c
        .post(&hosts_url)
        .json(&json!({"host_id": "node-1.example.com"}))
        .send()
        .await
        .expect("send");
    let v = json_of(r, StatusCode::CREATED).await;
    assert_eq!(v["hosts"], json!(["node-1.example.com"]), "{v}");
    let r = c
        .post(&hosts_url)
        .json(&json!({"host_id": "node-1.example.com"}))
        .send()
        .await
        .expect("send");
    let v = json_of(r, StatusCode::OK).await;
    assert_eq!(
        v["hosts"],
        json!(["node-1.example.com"]),
        "the replay adds nothing: {v}"
    );

    let v = get_json(&c, &hosts_url).await;
    assert_eq!(v["hosts"], json!(["node-1.example.com"]));
    let got = get_json(&c, &s.url(&format!("/artifacts/{id}"))).await;
    assert_eq!(got["hosts"], json!(["node-1.example.com"]));
    let fh = for_host(&c, &s, "node-1.example.com").await;
    assert_eq!(
        fh["artifacts"],
        json!([got]),
        "for-host lists the artifact JSON"
    );

    let r = c
        .delete(s.url(&format!("/artifacts/{id}/hosts/node-1.example.com")))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let fh = for_host(&c, &s, "node-1.example.com").await;
    assert_eq!(fh["artifacts"], json!([]));
    assert_eq!(get_json(&c, &hosts_url).await["hosts"], json!([]));
    let r = c
        .delete(s.url(&format!("/artifacts/{id}/hosts/node-1.example.com")))
        .send()
        .await
        .expect("send");
    assert_rest_error(r, StatusCode::NOT_FOUND, "not_found").await;
}

#[tokio::test]
async fn hosts_in_the_create_body_are_associated() {
    let s = TestServer::start().await;
    let c = client();
    let mut req = body("preassoc", "1.0.0", "x86_64", b"with hosts");
    req["hosts"] = json!(["node-b", "node-a:1"]);
    let a = create(&s, &c, &req).await;
    let got: BTreeSet<String> = serde_json::from_value(a["hosts"].clone()).expect("hosts array");
    assert_eq!(
        got,
        BTreeSet::from(["node-a:1".to_string(), "node-b".to_string()])
    );
    for host in ["node-a:1", "node-b"] {
        assert_eq!(
            ids(&for_host(&c, &s, host).await["artifacts"]),
            vec![id_of(&a)]
        );
    }
}

#[tokio::test]
async fn unknown_host_has_an_empty_list() {
    let s = TestServer::start().await;
    let c = client();
    create(&s, &c, &body("lonely", "1.0.0", "x86_64", b"x")).await;
    let fh = for_host(&c, &s, "never-seen-host").await;
    assert_eq!(fh["artifacts"], json!([]));
}

#[tokio::test]
async fn invalid_host_id_is_400() {
    let s = TestServer::start().await;
    let c = client();
    let a = create(&s, &c, &body("hostcheck", "1.0.0", "x86_64", b"x")).await;
    let id = id_of(&a);

    let r = c
        .get(s.url("/artifacts/for-host/bad%20host"))
        .send()
        .await
        .expect("send");
    assert_rest_error(r, StatusCode::BAD_REQUEST, "invalid_host_id").await;
    let long = "h".repeat(254);
    let r = c
        .get(s.url(&format!("/artifacts/for-host/{long}")))
        .send()
        .await
        .expect("send");
    assert_rest_error(r, StatusCode::BAD_REQUEST, "invalid_host_id").await;

    for bad in ["", "has space", "slash/y", "semi;colon"] {
        let r = c
            .post(s.url(&format!("/artifacts/{id}/hosts")))
            .json(&json!({ "host_id": bad }))
            .send()
            .await
            .expect("send");
        assert_rest_error(r, StatusCode::BAD_REQUEST, "invalid_host_id").await;
    }
    let mut req = body("hostcheck2", "1.0.0", "x86_64", b"y");
    req["hosts"] = json!(["ok-host", "not ok"]);
    let r = post(&s, &c, &req).await;
    assert_rest_error(r, StatusCode::BAD_REQUEST, "invalid_host_id").await;
    let r = c
        .get(s.url("/artifacts?name=hostcheck2"))
        .send()
        .await
        .expect("send");
    assert_eq!(
        json_of(r, StatusCode::OK).await["artifacts"],
        json!([]),
        "nothing stored"
    );
    assert_eq!(
        get_json(&c, &s.url(&format!("/artifacts/{id}/hosts"))).await["hosts"],
        json!([])
    );
}

#[tokio::test]
async fn host_association_is_an_oci_referrer() {
    let s = TestServer::start().await;
    let c = client();
    let a = create(&s, &c, &body("referred", "1.0.0", "x86_64", b"x")).await;
    let id = id_of(&a);
    let r = c
        .post(s.url(&format!("/artifacts/{id}/hosts")))
        .json(&json!({"host_id": "edge-7"}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::CREATED);

    let r = c
        .get(s.url(&format!("/v2/referred/referrers/{id}")))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "content-type").as_deref(), Some(OCI_INDEX));
    let idx: Value = r.json().await.expect("referrers index");
    let refs = idx["manifests"].as_array().expect("manifests");
    assert_eq!(refs.len(), 1, "one referrer: {idx}");
    assert_eq!(refs[0]["artifactType"], HOST_ASSOCIATION);
    assert_eq!(refs[0]["annotations"][HOST_ID_ANNOTATION], "edge-7");

    // The referrer manifest itself is what the design describes.
    let digest = refs[0]["digest"].as_str().expect("digest");
    let m: Value = manifest(&c, &s, "referred", digest)
        .await
        .json()
        .await
        .expect("manifest");
    assert_eq!(m["artifactType"], HOST_ASSOCIATION);
    assert_eq!(m["subject"]["digest"], id.as_str());
    assert_eq!(m["config"]["mediaType"], OCI_EMPTY);
    assert_eq!(m["config"]["size"], 2);
    assert_eq!(m["annotations"][HOST_ID_ANNOTATION], "edge-7");
}

// ---- restart ------------------------------------------------------------------------

#[tokio::test]
async fn restart_keeps_artifacts_associations_and_for_host_answers() {
    let s = TestServer::start().await;
    let c = client();
    let mut req = body("persist", "1.0.0", "x86_64", b"amd64");
    req["hosts"] = json!(["node-1", "node-2"]);
    req["metadata"] = json!({"k": "v"});
    req["tags"] = json!(["keep"]);
    let amd = create(&s, &c, &req).await;
    let arm = create(&s, &c, &body("persist", "1.0.0", "aarch64", b"arm64")).await;
    let other = create(&s, &c, &body("persist_other", "0.1.0", "x86_64", b"other")).await;
    let r = c
        .post(s.url(&format!("/artifacts/{}/hosts", id_of(&other))))
        .json(&json!({"host_id": "node-2"}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::CREATED);

    let all = [id_of(&amd), id_of(&arm), id_of(&other)];
    let mut before = Vec::new();
    for id in &all {
        before.push((
            get_json(&c, &s.url(&format!("/artifacts/{id}"))).await,
            get_bytes(&c, &s.url(&format!("/artifacts/{id}/binary"))).await,
        ));
    }
    let list_before = get_json(&c, &s.url("/artifacts")).await;
    let node1_before = for_host(&c, &s, "node-1").await;
    let node2_before = for_host(&c, &s, "node-2").await;
    assert_eq!(
        id_set(&node2_before["artifacts"]),
        BTreeSet::from([id_of(&amd), id_of(&other)])
    );

    let s = s.restart().await;
    for (id, (json_before, bin_before)) in all.iter().zip(&before) {
        assert_eq!(
            &get_json(&c, &s.url(&format!("/artifacts/{id}"))).await,
            json_before
        );
        assert_eq!(
            &get_bytes(&c, &s.url(&format!("/artifacts/{id}/binary"))).await,
            bin_before
        );
    }
    assert_eq!(get_json(&c, &s.url("/artifacts")).await, list_before);
    assert_eq!(for_host(&c, &s, "node-1").await, node1_before);
    assert_eq!(for_host(&c, &s, "node-2").await, node2_before);
    assert_eq!(
        get_json(&c, &s.url(&format!("/artifacts/{}/hosts", id_of(&amd)))).await["hosts"],
        json!(["node-1", "node-2"])
    );

    // Versions are still known: a replay is 200, other bytes are 409.
    let again = json_of(post(&s, &c, &req).await, StatusCode::OK).await;
    assert_eq!(id_of(&again), id_of(&amd));
    let r = post(&s, &c, &body("persist", "1.0.0", "aarch64", b"changed")).await;
    assert_rest_error(r, StatusCode::CONFLICT, "version_exists").await;
}

// ---- listing ------------------------------------------------------------------------

struct Fixture {
    /// alpha 1.0.0 x86_64 program [security] host node-a
    alpha1_amd: String,
    /// alpha 1.0.0 aarch64 program [security]
    alpha1_arm: String,
    /// alpha 2.0.0 x86_64 program [monitoring]
    alpha2: String,
    /// beta 1.0.0 x86_64 map [security, monitoring] host node-a
    beta: String,
    /// gamma 0.1.0 x86_64 tracepoint kernel 6.1.0
    gamma: String,
    /// delta 1.0.0 and 1.1.0 x86_64 program
    delta10: String,
    delta11: String,
}

async fn listing_fixture(s: &TestServer, c: &reqwest::Client) -> Fixture {
    let make = |name: &str, version: &str, arch: &str, kind: &str, tags: Value, hosts: Value| {
        let mut b = body(
            name,
            version,
            arch,
            format!("{name}/{version}/{arch}").as_bytes(),
        );
        b["type"] = json!(kind);
        b["tags"] = tags;
        b["hosts"] = hosts;
        b
    };
    let mut gamma = make(
        "gamma",
        "0.1.0",
        "x86_64",
        "tracepoint",
        json!([]),
        json!([]),
    );
    gamma["kernel_version"] = json!("6.1.0");
    Fixture {
        alpha1_amd: id_of(
            &create(
                s,
                c,
                &make(
                    "alpha",
                    "1.0.0",
                    "x86_64",
                    "program",
                    json!(["security"]),
                    json!(["node-a"]),
                ),
            )
            .await,
        ),
        alpha1_arm: id_of(
            &create(
                s,
                c,
                &make(
                    "alpha",
                    "1.0.0",
                    "aarch64",
                    "program",
                    json!(["security"]),
                    json!([]),
                ),
            )
            .await,
        ),
        alpha2: id_of(
            &create(
                s,
                c,
                &make(
                    "alpha",
                    "2.0.0",
                    "x86_64",
                    "program",
                    json!(["monitoring"]),
                    json!([]),
                ),
            )
            .await,
        ),
        beta: id_of(
            &create(
                s,
                c,
                &make(
                    "beta",
                    "1.0.0",
                    "x86_64",
                    "map",
                    json!(["security", "monitoring"]),
                    json!(["node-a"]),
                ),
            )
            .await,
        ),
        gamma: id_of(&create(s, c, &gamma).await),
        delta10: id_of(
            &create(
                s,
                c,
                &make("delta", "1.0.0", "x86_64", "program", json!([]), json!([])),
            )
            .await,
        ),
        delta11: id_of(
            &create(
                s,
                c,
                &make("delta", "1.1.0", "x86_64", "program", json!([]), json!([])),
            )
            .await,
        ),
    }
}

/// Query pairs of `GET /artifacts`.
type Query<'a> = Vec<(&'a str, &'a str)>;

async fn list(c: &reqwest::Client, s: &TestServer, query: &[(&str, &str)]) -> Value {
    let r = c
        .get(s.url("/artifacts"))
        .query(query)
        .send()
        .await
        .expect("send");
    json_of(r, StatusCode::OK).await
}

#[tokio::test]
async fn listing_filters_by_each_field() {
    let s = TestServer::start().await;
    let c = client();
    let f = listing_fixture(&s, &c).await;
    let set = |v: &[&String]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();

    let all = list(&c, &s, &[]).await;
    assert_eq!(
        id_set(&all["artifacts"]),
        set(&[
            &f.alpha1_amd,
            &f.alpha1_arm,
            &f.alpha2,
            &f.beta,
            &f.gamma,
            &f.delta10,
            &f.delta11
        ])
    );
    assert_eq!(
        all["next_cursor"],
        Value::Null,
        "everything fits the default page"
    );

    let cases: Vec<(Query, BTreeSet<String>)> = vec![
        (
            vec![("name", "alpha")],
            set(&[&f.alpha1_amd, &f.alpha1_arm, &f.alpha2]),
        ),
        (
            vec![("version", "1.0.0")],
            set(&[&f.alpha1_amd, &f.alpha1_arm, &f.beta, &f.delta10]),
        ),
        (vec![("type", "map")], set(&[&f.beta])),
        (vec![("type", "tracepoint")], set(&[&f.gamma])),
        (vec![("architecture", "aarch64")], set(&[&f.alpha1_arm])),
        (vec![("kernel_version", "6.1.0")], set(&[&f.gamma])),
        (
            vec![("tag", "security")],
            set(&[&f.alpha1_amd, &f.alpha1_arm, &f.beta]),
        ),
        (vec![("tag", "monitoring")], set(&[&f.alpha2, &f.beta])),
        (vec![("host", "node-a")], set(&[&f.alpha1_amd, &f.beta])),
        (
            vec![("name", "alpha"), ("architecture", "x86_64")],
            set(&[&f.alpha1_amd, &f.alpha2]),
        ),
        (
            vec![
                ("name", "alpha"),
                ("version", "1.0.0"),
                ("tag", "security"),
                ("host", "node-a"),
            ],
            set(&[&f.alpha1_amd]),
        ),
        (vec![("name", "nothing-here")], BTreeSet::new()),
        (vec![("host", "unknown-host")], BTreeSet::new()),
    ];
    for (q, want) in cases {
        let v = list(&c, &s, &q).await;
        assert_eq!(id_set(&v["artifacts"]), want, "GET /artifacts?{q:?}");
        for a in v["artifacts"].as_array().expect("artifacts") {
            assert_eq!(
                &get_json(&c, &s.url(&format!("/artifacts/{}", id_of(a)))).await,
                a
            );
        }
    }
}

/// Follows `next_cursor` from the first page to the last.
async fn walk(
    c: &reqwest::Client,
    s: &TestServer,
    limit: &str,
    filter: &[(&str, &str)],
) -> Vec<String> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut q: Vec<(&str, &str)> = filter.to_vec();
        q.push(("limit", limit));
        if let Some(cur) = &cursor {
            q.push(("cursor", cur));
        }
        let v = list(c, s, &q).await;
        let page = ids(&v["artifacts"]);
        assert!(
            page.len() <= limit.parse().expect("limit"),
            "page over the limit: {v}"
        );
        pages += 1;
        assert!(pages <= 100, "pagination does not end");
        out.extend(page);
        match v["next_cursor"].as_str() {
            Some(next) => {
                assert!(!next.is_empty(), "empty next_cursor");
                cursor = Some(next.to_string());
            }
            None => {
                assert_eq!(
                    v["next_cursor"],
                    Value::Null,
                    "next_cursor is a string or null"
                );
                return out;
            }
        }
    }
}

#[tokio::test]
async fn listing_pagination_walks_every_item_once_in_a_stable_order() {
    let s = TestServer::start().await;
    let c = client();
    listing_fixture(&s, &c).await;

    let full = ids(&list(&c, &s, &[("limit", "1000")]).await["artifacts"]);
    assert_eq!(full.len(), 7);
    assert_eq!(
        full.iter().collect::<HashSet<_>>().len(),
        7,
        "no duplicates"
    );
    assert_eq!(
        ids(&list(&c, &s, &[]).await["artifacts"]),
        full,
        "the order is stable"
    );

    for limit in ["1", "2", "3", "6", "7"] {
        assert_eq!(
            walk(&c, &s, limit, &[]).await,
            full,
            "walk with limit={limit}"
        );
    }
    let alpha: Vec<String> = ids(&list(&c, &s, &[("name", "alpha")]).await["artifacts"]);
    assert_eq!(alpha.len(), 3);
    assert_eq!(
        walk(&c, &s, "1", &[("name", "alpha")]).await,
        alpha,
        "a filtered walk"
    );

    let last = list(&c, &s, &[("limit", "7")]).await;
    assert_eq!(
        last["next_cursor"],
        Value::Null,
        "no cursor when the page holds the rest"
    );
}

#[tokio::test]
async fn listing_limit_out_of_range_is_400() {
    let s = TestServer::start().await;
    let c = client();
    create(&s, &c, &body("limits", "1.0.0", "x86_64", b"x")).await;
    for limit in ["0", "1001", "-1", "ten"] {
        let r = c
            .get(s.url("/artifacts"))
            .query(&[("limit", limit)])
            .send()
            .await
            .expect("send");
        assert_rest_error(r, StatusCode::BAD_REQUEST, "invalid_request").await;
    }
    let r = c
        .get(s.url("/artifacts"))
        .query(&[("cursor", "%%%not-a-cursor")])
        .send()
        .await
        .expect("send");
    assert_rest_error(r, StatusCode::BAD_REQUEST, "invalid_request").await;
    for limit in ["1", "1000"] {
        let v = list(&c, &s, &[("limit", limit)]).await;
        assert_eq!(
            v["artifacts"].as_array().map(Vec::len),
            Some(1),
            "limit={limit}"
        );
    }
}

// ---- deletion ------------------------------------------------------------------------

#[tokio::test]
async fn delete_removes_the_artifact_its_tag_and_its_associations() {
    let s = TestServer::start().await;
    let c = client();
    let mut req = body("doomed", "1.0.0", "x86_64", b"bye");
    req["hosts"] = json!(["node-9"]);
    let a = create(&s, &c, &req).await;
    let keep = create(&s, &c, &body("doomed", "1.1.0", "x86_64", b"stay")).await;
    let id = id_of(&a);

    let r = c
        .delete(s.url(&format!("/artifacts/{id}")))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);

    let r = c
        .get(s.url(&format!("/artifacts/{id}")))
        .send()
        .await
        .expect("send");
    assert_rest_error(r, StatusCode::NOT_FOUND, "not_found").await;
    let r = c
        .get(s.url(&format!("/artifacts/{id}/binary")))
        .send()
        .await
        .expect("send");
    assert_rest_error(r, StatusCode::NOT_FOUND, "not_found").await;
    let r = manifest(&c, &s, "doomed", "1.0.0").await;
    assert_oci_error(r, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    let r = manifest(&c, &s, "doomed", &id).await;
    assert_oci_error(r, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    assert_eq!(for_host(&c, &s, "node-9").await["artifacts"], json!([]));
    let refs = get_json(&c, &s.url(&format!("/v2/doomed/referrers/{id}"))).await;
    assert_eq!(
        refs["manifests"],
        json!([]),
        "the association referrer is gone too"
    );
    assert_eq!(
        ids(&list(&c, &s, &[]).await["artifacts"]),
        vec![id_of(&keep)]
    );

    let r = c
        .delete(s.url(&format!("/artifacts/{id}")))
        .send()
        .await
        .expect("send");
    assert_rest_error(r, StatusCode::NOT_FOUND, "not_found").await;
    // The other version is untouched.
    let r = manifest(&c, &s, "doomed", "1.1.0").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "docker-content-digest"), Some(id_of(&keep)));
}

#[tokio::test]
async fn deleting_one_architecture_keeps_the_other_reachable_by_tag() {
    let s = TestServer::start().await;
    let c = client();
    let amd = create(&s, &c, &body("twoarch", "1.0.0", "x86_64", b"amd")).await;
    let arm = create(&s, &c, &body("twoarch", "1.0.0", "aarch64", b"arm")).await;

    let r = c
        .delete(s.url(&format!("/artifacts/{}", id_of(&amd))))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = c
        .get(s.url(&format!("/artifacts/{}", id_of(&amd))))
        .send()
        .await
        .expect("send");
    assert_rest_error(r, StatusCode::NOT_FOUND, "not_found").await;
    assert_eq!(
        get_json(&c, &s.url(&format!("/artifacts/{}", id_of(&arm)))).await,
        arm
    );

    let r = manifest(&c, &s, "twoarch", "1.0.0").await;
    assert_eq!(r.status(), StatusCode::OK, "the tag still resolves");
    let tagged_digest = header(&r, "docker-content-digest").expect("digest");
    let m: Value = r.json().await.expect("manifest JSON");
    if m["mediaType"] == OCI_INDEX {
        let refs: Vec<&str> = m["manifests"]
            .as_array()
            .expect("manifests")
            .iter()
            .map(|d| d["digest"].as_str().expect("digest"))
            .collect();
        assert_eq!(
            refs,
            vec![id_of(&arm).as_str()],
            "the index holds only arm64 now: {m}"
        );
        assert_eq!(m["manifests"][0]["platform"]["architecture"], "arm64");
    } else {
        assert_eq!(
            tagged_digest,
            id_of(&arm),
            "the tag points to the arm64 manifest"
        );
    }
    let bin = get_bytes(&c, &s.url(&format!("/artifacts/{}/binary", id_of(&arm)))).await;
    assert_eq!(untar_zstd(&bin)[0].1, b"arm".to_vec());
}

// ---- artifacts pushed through OCI ------------------------------------------------------

#[tokio::test]
async fn oci_pushed_artifact_shows_up_in_rest() {
    let s = TestServer::start().await;
    let c = client();
    let layer = tar_zstd(&[("probe.o", b"not really an object")]);
    let config = serde_json::to_vec(&json!({
        "name": "team/oci-pushed",
        "version": "3.1.0",
        "description": "pushed with an OCI client",
        "type": "map",
        "architecture": "aarch64",
        "kernel_version": "6.6.0",
        "metadata": {"pushed_by": "oras"},
        "tags": ["oci"],
        "created_at": "2024-05-01T12:00:00Z"
    }))
    .expect("json");
    let (digest, _) = s
        .push_image(
            &c,
            "team/oci-pushed",
            "3.1.0",
            &config,
            &[&layer],
            json!({"artifactType": BPF_ARTIFACT_TYPE}),
        )
        .await;

    let a = get_json(&c, &s.url(&format!("/artifacts/{digest}"))).await;
    assert_eq!(a["id"], digest.as_str());
    assert_eq!(a["name"], "team/oci-pushed");
    assert_eq!(a["version"], "3.1.0");
    assert_eq!(a["type"], "map");
    assert_eq!(a["architecture"], "aarch64");
    assert_eq!(a["kernel_version"], "6.6.0");
    assert_eq!(a["metadata"], json!({"pushed_by": "oras"}));
    assert_eq!(a["tags"], json!(["oci"]));
    assert_eq!(a["checksum"], sha256(&layer));
    assert_eq!(a["size"], layer.len());
    assert_eq!(a["oci"]["repository"], "team/oci-pushed");
    assert_eq!(a["oci"]["manifest_digest"], digest.as_str());
    assert_eq!(
        get_bytes(&c, &s.url(&format!("/artifacts/{digest}/binary"))).await,
        layer
    );
    assert_eq!(
        ids(&list(&c, &s, &[("name", "team/oci-pushed")]).await["artifacts"]),
        vec![digest]
    );
}

#[tokio::test]
async fn plain_oci_image_is_not_an_artifact() {
    let s = TestServer::start().await;
    let c = client();
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let layer = pseudo_random(300, 3);
    let config_digest = s.push_blob(&c, "plain/image", config).await;
    let layer_digest = s.push_blob(&c, "plain/image", &layer).await;
    let m = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest, "size": layer.len()}]
    }))
    .expect("json");
    let digest = s
        .put_manifest_ok(&c, "plain/image", "latest", OCI_MANIFEST, &m)
        .await;

    let r = c
        .get(s.url(&format!("/artifacts/{digest}")))
        .send()
        .await
        .expect("send");
    assert_rest_error(r, StatusCode::NOT_FOUND, "not_found").await;
    let r = c
        .get(s.url(&format!("/artifacts/{digest}/binary")))
        .send()
        .await
        .expect("send");
    assert_rest_error(r, StatusCode::NOT_FOUND, "not_found").await;
    assert_eq!(list(&c, &s, &[]).await["artifacts"], json!([]));
}

#[tokio::test]
async fn oci_pushed_host_association_shows_in_for_host() {
    let s = TestServer::start().await;
    let c = client();
    let a = create(&s, &c, &body("oci_assoc", "1.0.0", "x86_64", b"x")).await;
    let id = id_of(&a);
    let subject_size = manifest(&c, &s, "oci_assoc", &id)
        .await
        .bytes()
        .await
        .expect("manifest")
        .len();
    let empty = s.push_empty_config(&c, "oci_assoc").await;
    let m = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": HOST_ASSOCIATION,
        "config": empty,
        "layers": [empty],
        "subject": {"mediaType": OCI_MANIFEST, "digest": id, "size": subject_size},
        "annotations": {HOST_ID_ANNOTATION: "oci-node-1"}
    }))
    .expect("json");
    let assoc = sha256(&m);
    s.put_manifest_ok(&c, "oci_assoc", &assoc, OCI_MANIFEST, &m)
        .await;

    let fh = for_host(&c, &s, "oci-node-1").await;
    assert_eq!(ids(&fh["artifacts"]), vec![id.clone()]);
    assert_eq!(fh["artifacts"][0]["hosts"], json!(["oci-node-1"]));
    assert_eq!(
        get_json(&c, &s.url(&format!("/artifacts/{id}/hosts"))).await["hosts"],
        json!(["oci-node-1"])
    );

    // Deleting the referrer through OCI removes the association.
    let r = c
        .delete(s.url(&format!("/v2/oci_assoc/manifests/{assoc}")))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(for_host(&c, &s, "oci-node-1").await["artifacts"], json!([]));
}

// ---- bad inputs: a 4xx JSON error, nothing stored -----------------------------------------

async fn assert_rejected(
    s: &TestServer,
    c: &reqwest::Client,
    req: &Value,
    status: StatusCode,
    code: &str,
) -> Value {
    let e = assert_rest_error(post(s, c, req).await, status, code).await;
    assert_nothing_stored(s, c).await;
    e
}

#[tokio::test]
async fn invalid_base64_is_400_and_stores_nothing() {
    let s = TestServer::start().await;
    let c = client();
    let mut req = body("bad_b64", "1.0.0", "x86_64", b"");
    for bad in ["not base64!!", "dGVzdCBkYXRh$", "@@@@"] {
        req["data"] = json!(bad);
        assert_rejected(&s, &c, &req, StatusCode::BAD_REQUEST, "invalid_base64").await;
    }
}

#[tokio::test]
async fn missing_name_is_400_and_stores_nothing() {
    let s = TestServer::start().await;
    let c = client();
    let mut req = body("x", "1.0.0", "x86_64", b"data");
    req.as_object_mut().expect("object").remove("name");
    let e = assert_rejected(&s, &c, &req, StatusCode::BAD_REQUEST, "invalid_request").await;
    assert!(
        e["message"].as_str().unwrap_or_default().contains("name"),
        "{e}"
    );
    req["name"] = json!("");
    assert_rejected(&s, &c, &req, StatusCode::BAD_REQUEST, "invalid_request").await;
}

#[tokio::test]
async fn empty_or_missing_required_fields_are_400_and_store_nothing() {
    let s = TestServer::start().await;
    let c = client();
    for field in ["version", "type", "architecture", "data"] {
        let mut req = body("fields", "1.0.0", "x86_64", b"data");
        req[field] = json!("");
        let e = assert_rejected(&s, &c, &req, StatusCode::BAD_REQUEST, "invalid_request").await;
        assert!(
            e["message"].as_str().unwrap_or_default().contains(field),
            "empty {field}: {e}"
        );
        req.as_object_mut().expect("object").remove(field);
        assert_rejected(&s, &c, &req, StatusCode::BAD_REQUEST, "invalid_request").await;
    }
}

#[tokio::test]
async fn unknown_type_is_400_and_stores_nothing() {
    let s = TestServer::start().await;
    let c = client();
    let mut req = body("typed", "1.0.0", "x86_64", b"data");
    for bad in ["rootkit", "Program", "programs"] {
        req["type"] = json!(bad);
        assert_rejected(&s, &c, &req, StatusCode::BAD_REQUEST, "invalid_request").await;
    }
}

#[tokio::test]
async fn uppercase_name_is_400_and_stores_nothing() {
    let s = TestServer::start().await;
    let c = client();
    let req = body("Security_Monitor", "1.0.0", "x86_64", b"data");
    assert_rejected(&s, &c, &req, StatusCode::BAD_REQUEST, "invalid_name").await;
}

#[tokio::test]
async fn name_with_dot_dot_is_400_and_stores_nothing() {
    let s = TestServer::start().await;
    let c = client();
    for bad in ["a..b", "../escape", "team/../etc", "team/..", ".."] {
        let req = body(bad, "1.0.0", "x86_64", b"data");
        assert_rejected(&s, &c, &req, StatusCode::BAD_REQUEST, "invalid_name").await;
    }
}

#[tokio::test]
async fn name_of_300_characters_is_400_and_stores_nothing() {
    let s = TestServer::start().await;
    let c = client();
    let req = body(&"a".repeat(300), "1.0.0", "x86_64", b"data");
    assert_rejected(&s, &c, &req, StatusCode::BAD_REQUEST, "invalid_name").await;
}

#[tokio::test]
async fn non_json_body_is_400_and_stores_nothing() {
    let s = TestServer::start().await;
    let c = client();
    // A `#` inside a string is data, not a comment: the body stays invalid.
    let hash_in_string = "{\"name\": \"a # b".to_string();
    for raw in [
        "name=security_monitor&version=1.0.0".to_string(),
        "{\"name\": \"truncated".to_string(),
        "[1, 2, 3]".to_string(),
        String::new(),
        hash_in_string,
    ] {
        let r = post_raw(&s, &c, Some("application/json"), raw.clone().into_bytes()).await;
        let e = assert_rest_error(r, StatusCode::BAD_REQUEST, "invalid_json").await;
        assert!(e["message"].is_string(), "{raw:?}: {e}");
        assert_nothing_stored(&s, &c).await;
    }
    let r = post_raw(
        &s,
        &c,
        Some("application/json"),
        vec![0xff, 0xfe, 0x00, 0x01],
    )
    .await;
    assert_rest_error(r, StatusCode::BAD_REQUEST, "invalid_json").await;
    assert_nothing_stored(&s, &c).await;
}

#[tokio::test]
async fn wrong_content_type_is_415_and_stores_nothing() {
    let s = TestServer::start().await;
    let c = client();
    for ct in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("application/xml"),
        None,
    ] {
        let r = post_raw(&s, &c, ct, seed_example_body().as_bytes().to_vec()).await;
        assert_rest_error(
            r,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        )
        .await;
        assert_nothing_stored(&s, &c).await;
    }
    // A charset parameter is still JSON.
    let r = post_raw(
        &s,
        &c,
        Some("application/json; charset=utf-8"),
        seed_example_body().as_bytes().to_vec(),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn payload_over_the_limit_is_413_and_stores_nothing() {
    let s = TestServer::start_with_env(&[("BPF_REGISTRY_MAX_ARTIFACT_BYTES", "1024")]).await;
    let c = client();
    let req = body("too_big", "1.0.0", "x86_64", &pseudo_random(1025, 5));
    let e = assert_rejected(
        &s,
        &c,
        &req,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    )
    .await;
    assert!(
        e["message"].as_str().unwrap_or_default().contains("1024"),
        "the message names the limit: {e}"
    );
    let req = body("too_big", "1.0.0", "x86_64", &pseudo_random(64 * 1024, 6));
    assert_rejected(
        &s,
        &c,
        &req,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    )
    .await;

    // A request body far over what any allowed payload needs is refused
    // while it is read.
    let req = body("too_big", "1.0.0", "x86_64", &pseudo_random(900_000, 8));
    assert_rejected(
        &s,
        &c,
        &req,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    )
    .await;

    // Exactly at the limit is fine.
    let at_limit = pseudo_random(1024, 7);
    let a = create(&s, &c, &body("too_big", "1.0.0", "x86_64", &at_limit)).await;
    let bin = get_bytes(&c, &s.url(&format!("/artifacts/{}/binary", id_of(&a)))).await;
    assert_eq!(untar_zstd(&bin)[0].1, at_limit);
}

#[tokio::test]
async fn unknown_id_is_404_not_found() {
    let s = TestServer::start().await;
    let c = client();
    let unknown = format!("sha256:{}", "0".repeat(64));
    for path in [
        format!("/artifacts/{unknown}"),
        format!("/artifacts/{unknown}/binary"),
        format!("/artifacts/{unknown}/hosts"),
    ] {
        let r = c.get(s.url(&path)).send().await.expect("send");
        assert_rest_error(r, StatusCode::NOT_FOUND, "not_found").await;
    }
    let r = c
        .delete(s.url(&format!("/artifacts/{unknown}")))
        .send()
        .await
        .expect("send");
    assert_rest_error(r, StatusCode::NOT_FOUND, "not_found").await;
    let r = c
        .post(s.url(&format!("/artifacts/{unknown}/hosts")))
        .json(&json!({"host_id": "node-1"}))
        .send()
        .await
        .expect("send");
    assert_rest_error(r, StatusCode::NOT_FOUND, "not_found").await;
    assert_nothing_stored(&s, &c).await;
}

#[tokio::test]
async fn malformed_id_is_400_invalid_id() {
    let s = TestServer::start().await;
    let c = client();
    for bad in [
        "artifact_1234567890",
        "sha256:xyz",
        "sha256:ABCDEF",
        &format!("sha256:{}", "a".repeat(63)),
    ] {
        for path in [
            format!("/artifacts/{bad}"),
            format!("/artifacts/{bad}/binary"),
            format!("/artifacts/{bad}/hosts"),
        ] {
            let r = c.get(s.url(&path)).send().await.expect("send");
            assert_rest_error(r, StatusCode::BAD_REQUEST, "invalid_id").await;
        }
        let r = c
            .delete(s.url(&format!("/artifacts/{bad}")))
            .send()
            .await
            .expect("send");
        assert_rest_error(r, StatusCode::BAD_REQUEST, "invalid_id").await;
    }
    assert_nothing_stored(&s, &c).await;
}

// ---- concurrency -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_identical_posts_create_exactly_once() {
    let s = TestServer::start().await;
    let c = client();
    let req = body("racy", "1.0.0", "x86_64", &pseudo_random(20_000, 11));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (c, url, req) = (c.clone(), s.url("/artifacts"), req.clone());
        tasks.push(tokio::spawn(async move {
            let r = c.post(url).json(&req).send().await.expect("send");
            let status = r.status();
            let v: Value = r.json().await.expect("JSON");
            (status, v)
        }));
    }
    let mut created = 0;
    let mut replayed = 0;
    let mut seen = BTreeSet::new();
    for t in tasks {
        let (status, v) = t.await.expect("task");
        match status {
            StatusCode::CREATED => created += 1,
            StatusCode::OK => replayed += 1,
            other => panic!("unexpected {other}: {v}"),
        }
        seen.insert(id_of(&v));
    }
    assert_eq!((created, replayed), (1, 7), "one 201, seven 200");
    assert_eq!(
        seen.len(),
        1,
        "every answer names the same artifact: {seen:?}"
    );
    let id = seen.into_iter().next().expect("an id");
    assert_eq!(ids(&list(&c, &s, &[]).await["artifacts"]), vec![id.clone()]);
    let r = manifest(&c, &s, "racy", "1.0.0").await;
    assert_eq!(
        header(&r, "docker-content-digest"),
        Some(id),
        "the tag names that manifest"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_conflicting_posts_let_exactly_one_content_win() {
    let s = TestServer::start().await;
    let c = client();
    let variants = [
        body("contested", "1.0.0", "x86_64", b"content A"),
        body("contested", "1.0.0", "x86_64", b"content B"),
    ];
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (c, url, req) = (c.clone(), s.url("/artifacts"), variants[i % 2].clone());
        tasks.push(tokio::spawn(async move {
            let r = c.post(url).json(&req).send().await.expect("send");
            let status = r.status();
            let v: Value = r.json().await.expect("JSON");
            (i % 2, status, v)
        }));
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.expect("task"));
    }
    let created: Vec<&(usize, StatusCode, Value)> = outcomes
        .iter()
        .filter(|o| o.1 == StatusCode::CREATED)
        .collect();
    assert_eq!(created.len(), 1, "exactly one 201: {outcomes:?}");
    let (winner, _, won) = created[0];
    for (variant, status, v) in &outcomes {
        if variant == winner {
            assert!(
                matches!(*status, StatusCode::CREATED | StatusCode::OK),
                "same content as the winner: {status} {v}"
            );
            assert_eq!(id_of(v), id_of(won));
        } else {
            assert_eq!(*status, StatusCode::CONFLICT, "other content: {v}");
            assert_eq!(v["error"], "version_exists");
        }
    }
    assert_eq!(ids(&list(&c, &s, &[]).await["artifacts"]), vec![id_of(won)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_posts_of_two_architectures_both_land_in_the_index() {
    let s = TestServer::start().await;
    let c = client();
    let mut tasks = Vec::new();
    for arch in ["x86_64", "aarch64"] {
        let (c, url, req) = (
            c.clone(),
            s.url("/artifacts"),
            body("parallel", "1.0.0", arch, arch.as_bytes()),
        );
        tasks.push(tokio::spawn(async move {
            let r = c.post(url).json(&req).send().await.expect("send");
            json_of(r, StatusCode::CREATED).await
        }));
    }
    let mut created = BTreeSet::new();
    for t in tasks {
        created.insert(id_of(&t.await.expect("task")));
    }
    let r = manifest(&c, &s, "parallel", "1.0.0").await;
    assert_eq!(r.status(), StatusCode::OK);
    let index: Value = r.json().await.expect("index");
    assert_eq!(
        index["mediaType"], OCI_INDEX,
        "two architectures make an index: {index}"
    );
    let in_index: BTreeSet<String> = index["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .map(|m| m["digest"].as_str().expect("digest").to_string())
        .collect();
    assert_eq!(in_index, created, "the index holds both manifests");
}

/// A store written with schema version 1 has no facet rows (the `tag` and
/// `kernel_version` filters are queries over them): the first start of
/// this version fills them before serving, once.
#[tokio::test]
async fn a_version_1_metadata_store_gets_its_listing_facets_at_start() {
    let mut s = TestServer::start().await;
    let c = client();
    let f = listing_fixture(&s, &c).await;
    s.stop().await;
    let url = store_env_of(s.data_dir())
        .into_iter()
        .find(|(k, _)| k == "BPF_REGISTRY_METADATA")
        .map(|(_, v)| v)
        .unwrap_or_else(|| format!("sqlite://{}/metadata.db", s.data_dir().display()));
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&url).await.expect("connect");
    for q in [
        "DELETE FROM artifact_facets",
        "DELETE FROM meta WHERE key = 'artifact_facets_filled'",
        "UPDATE meta SET value = '1' WHERE key = 'schema_version'",
    ] {
        sqlx::query(q).execute(&pool).await.expect(q);
    }
    pool.close().await;
    let s = s.restart().await;
    let set = |v: &[&String]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    let v = list(&c, &s, &[("tag", "security")]).await;
    assert_eq!(
        id_set(&v["artifacts"]),
        set(&[&f.alpha1_amd, &f.alpha1_arm, &f.beta])
    );
    let v = list(&c, &s, &[("kernel_version", "6.1.0")]).await;
    assert_eq!(id_set(&v["artifacts"]), set(&[&f.gamma]));
    let v = list(&c, &s, &[("tag", "monitoring"), ("limit", "1")]).await;
    assert_eq!(ids(&v["artifacts"]).len(), 1, "{v}");
    assert!(v["next_cursor"].is_string(), "{v}");
}

//! The fleet API (issue 13, /work/notes/fleet-api.md) against a real server
//! on 127.0.0.1:0: hosts (facts, labels, listing by label selector, paging,
//! deletion), selectors (stored as referrers; grammar and its errors; which
//! registered hosts each one matches), channel associations, artifact
//! requirements, the desired-state resolution (a table of arch × kernel ×
//! BTF × versions × channels), for-host with selector matches, strong ETags
//! with If-None-Match and `?wait=` long-polls (and the watcher cap),
//! deployments and rollout counts, channels (move, history, rollback, the
//! OCI tag they move), a restart keeping all of it, and the authorization
//! of host and operator actions.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

const SELECTOR_TYPE: &str = "application/vnd.aegisflux.bpf.host-selector.v1";
const SELECTOR_ANNOTATION: &str = "io.aegisflux.bpf.selector";
const HOST_ASSOCIATION_TYPE: &str = "application/vnd.aegisflux.bpf.host-association.v1";
const HOST_ID_ANNOTATION: &str = "io.aegisflux.bpf.host-id";
const CHANNEL_ANNOTATION: &str = "io.aegisflux.bpf.channel";
const REQUIREMENTS_ANNOTATION: &str = "io.aegisflux.bpf.requirements";

/// How long an answer the contract says is prompt may take: a liveness
/// bound against a hung server, not a measured latency.
const LIVENESS: Duration = Duration::from_secs(10);

// ---- helpers -------------------------------------------------------------------

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// Reads a response as JSON after asserting its status.
async fn json_of(r: reqwest::Response, status: StatusCode) -> Value {
    let got = r.status();
    let url = r.url().to_string();
    let text = r.text().await.expect("body");
    assert_eq!(got, status, "{url}: expected {status}, got {got}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{url}: body is not JSON ({e}): {text}"))
}

/// Asserts a REST error: the status, a JSON content type and the
/// `{"error": code, "message": "..."}` envelope with one of `codes`.
async fn assert_rest_error_any(r: reqwest::Response, status: StatusCode, codes: &[&str]) -> Value {
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
    let code = v["error"].as_str().unwrap_or_default();
    assert!(
        codes.contains(&code),
        "{url}: error code {code:?}, expected one of {codes:?}: {v}"
    );
    assert!(
        v["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{url}: no message in {v}"
    );
    v
}

async fn assert_rest_error(r: reqwest::Response, status: StatusCode, code: &str) -> Value {
    assert_rest_error_any(r, status, &[code]).await
}

/// The strong ETag the contract gives an answer: `"` + the first 32 hex
/// digits of the body's sha256 + `"`.
fn etag_for(body: &[u8]) -> String {
    format!("\"{}\"", &hex::encode(Sha256::digest(body))[..32])
}

fn is_rfc3339(v: &Value) -> bool {
    v.as_str().is_some_and(|s| {
        time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
            .is_ok_and(|t| t.offset().is_utc())
    })
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("no string {key:?} in {v}"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| {
            x.as_str()
                .unwrap_or_else(|| panic!("not a string: {x}"))
                .to_string()
        })
        .collect()
}

/// The `names` of the artifacts of a for-host answer, sorted.
fn names_of(list: &Value) -> Vec<String> {
    let mut n: Vec<String> = list
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {list}"))
        .iter()
        .map(|a| str_of(a, "name").to_string())
        .collect();
    n.sort();
    n
}

/// Host facts as the agent sends them.
fn facts(arch: &str, kernel: &str, btf: bool, labels: Value) -> Value {
    json!({
        "architecture": arch,
        "kernel_release": kernel,
        "btf": btf,
        "labels": labels,
        "agent_version": "1.4.2",
    })
}

/// A create body (`type: map`, so any payload is accepted); the payload
/// differs per name, version and architecture.
fn artifact_body(name: &str, version: &str, arch: &str) -> Value {
    json!({
        "name": name,
        "version": version,
        "description": format!("{name} {version} for {arch}"),
        "type": "map",
        "architecture": arch,
        "kernel_version": "5.15.0",
        "data": b64(format!("payload of {name} {version} {arch}").as_bytes()),
    })
}

/// One server and an anonymous client.
struct Ctx {
    s: TestServer,
    c: reqwest::Client,
}

impl Ctx {
    async fn start() -> Ctx {
        Ctx {
            s: TestServer::start().await,
            c: client(),
        }
    }

    async fn start_with_env(env: &[(&str, &str)]) -> Ctx {
        Ctx {
            s: TestServer::start_with_env(env).await,
            c: client(),
        }
    }

    async fn restart(self) -> Ctx {
        Ctx {
            s: self.s.restart().await,
            c: self.c,
        }
    }

    fn url(&self, path: &str) -> String {
        self.s.url(path)
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.c.get(self.url(path)).send().await.expect("send GET")
    }

    async fn get_ok(&self, path: &str) -> Value {
        json_of(self.get(path).await, StatusCode::OK).await
    }

    async fn put_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.c
            .put(self.url(path))
            .json(body)
            .send()
            .await
            .expect("send PUT")
    }

    async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.c
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("send POST")
    }

    async fn post_empty(&self, path: &str) -> reqwest::Response {
        self.c
            .post(self.url(path))
            .header("content-length", "0")
            .send()
            .await
            .expect("send POST")
    }

    async fn delete(&self, path: &str) -> reqwest::Response {
        self.c
            .delete(self.url(path))
            .send()
            .await
            .expect("send DELETE")
    }

    /// POST /artifacts; asserts 201; returns the artifact JSON.
    async fn create_body(&self, body: &Value) -> Value {
        json_of(
            self.post_json("/artifacts", body).await,
            StatusCode::CREATED,
        )
        .await
    }

    async fn create(&self, name: &str, version: &str, arch: &str) -> Value {
        self.create_body(&artifact_body(name, version, arch)).await
    }

    async fn create_req(
        &self,
        name: &str,
        version: &str,
        arch: &str,
        requirements: Option<Value>,
    ) -> Value {
        let mut b = artifact_body(name, version, arch);
        if let Some(r) = requirements {
            b["requirements"] = r;
        }
        self.create_body(&b).await
    }

    /// PUT /hosts/{id}; asserts 200 or 201; returns the host JSON.
    async fn register(&self, host: &str, facts: &Value) -> Value {
        let r = self.put_json(&format!("/hosts/{host}"), facts).await;
        let status = r.status();
        assert!(
            status == StatusCode::CREATED || status == StatusCode::OK,
            "PUT /hosts/{host}: {status}"
        );
        json_of(r, status).await
    }

    async fn register_simple(&self, host: &str, labels: Value) -> Value {
        self.register(host, &facts("x86_64", "5.15.0-91-generic", true, labels))
            .await
    }

    /// POST /artifacts/{id}/selectors; asserts 201 or 200; returns the
    /// selector object.
    async fn selector(&self, id: &str, selector: &str, channel: Option<&str>) -> Value {
        let mut b = json!({ "selector": selector });
        if let Some(ch) = channel {
            b["channel"] = json!(ch);
        }
        let r = self
            .post_json(&format!("/artifacts/{id}/selectors"), &b)
            .await;
        let status = r.status();
        assert!(
            status == StatusCode::CREATED || status == StatusCode::OK,
            "POST selector {selector:?} on {id}: {status}: {}",
            r.text().await.unwrap_or_default()
        );
        json_of(r, status).await
    }

    /// POST /artifacts/{id}/hosts; asserts 201 or 200.
    async fn associate(&self, id: &str, host: &str, channel: Option<&str>) {
        let mut b = json!({ "host_id": host });
        if let Some(ch) = channel {
            b["channel"] = json!(ch);
        }
        let r = self.post_json(&format!("/artifacts/{id}/hosts"), &b).await;
        let status = r.status();
        assert!(
            status == StatusCode::CREATED || status == StatusCode::OK,
            "associate {host} with {id} (channel {channel:?}): {status}: {}",
            r.text().await.unwrap_or_default()
        );
    }

    async fn put_channel(&self, name: &str, channel: &str, version: &str) -> reqwest::Response {
        self.put_json(
            &format!("/channels/{name}/{channel}"),
            &json!({ "version": version }),
        )
        .await
    }

    async fn channel_ok(&self, name: &str, channel: &str, version: &str) -> Value {
        json_of(
            self.put_channel(name, channel, version).await,
            StatusCode::OK,
        )
        .await
    }

    async fn report(&self, host: &str, id: &str, state: &str, message: &str) -> reqwest::Response {
        self.put_json(
            &format!("/hosts/{host}/deployments/{id}"),
            &json!({ "state": state, "message": message, "attach_point": "eth0/xdp" }),
        )
        .await
    }

    async fn report_ok(&self, host: &str, id: &str, state: &str, message: &str) -> Value {
        json_of(self.report(host, id, state, message).await, StatusCode::OK).await
    }

    async fn desired(&self, host: &str) -> Value {
        let v = self.get_ok(&format!("/hosts/{host}/desired")).await;
        assert_eq!(v["host_id"], host, "desired names the host: {v}");
        v
    }

    async fn for_host(&self, host: &str) -> Value {
        let v = self.get_ok(&format!("/artifacts/for-host/{host}")).await;
        assert_eq!(v["host_id"], host, "for-host names the host: {v}");
        v
    }

    /// GET with If-None-Match (and the path's own query).
    async fn get_if_none_match(&self, path: &str, etag: &str) -> reqwest::Response {
        self.c
            .get(self.url(path))
            .header("if-none-match", etag)
            .send()
            .await
            .expect("send GET")
    }

    /// GET; asserts 200 and the contract's ETag; returns (etag, body).
    async fn get_tagged(&self, path: &str) -> (String, Vec<u8>) {
        let r = self.get(path).await;
        assert_eq!(r.status(), StatusCode::OK, "GET {path}");
        let etag = header(&r, "etag").unwrap_or_else(|| panic!("GET {path}: no ETag"));
        let body = r.bytes().await.expect("body").to_vec();
        assert_eq!(
            etag,
            etag_for(&body),
            "GET {path}: the ETag is the body's sha256 (32 hex), quoted, strong"
        );
        (etag, body)
    }
}

/// The `(version, reason)` pairs of a desired answer's `excluded` entries
/// for `name`, sorted.
fn excluded_of(desired: &Value, name: &str) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = desired["excluded"]
        .as_array()
        .unwrap_or_else(|| panic!("no excluded array in {desired}"))
        .iter()
        .filter(|e| e["name"] == name)
        .map(|e| {
            (
                e["version"].as_str().unwrap_or_default().to_string(),
                str_of(e, "reason").to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

fn desired_entries<'a>(desired: &'a Value, name: &str) -> Vec<&'a Value> {
    desired["artifacts"]
        .as_array()
        .unwrap_or_else(|| panic!("no artifacts array in {desired}"))
        .iter()
        .filter(|a| a["name"] == name)
        .collect()
}

// ---- hosts -----------------------------------------------------------------------

#[tokio::test]
async fn host_put_creates_then_updates_and_get_returns_the_host_json() {
    let x = Ctx::start().await;
    let body = facts(
        "amd64",
        "5.15.0-91-generic",
        true,
        json!({"env": "prod", "role": "edge", "topology.kubernetes.io/zone": "eu-1a", "empty": ""}),
    );
    let r = x.put_json("/hosts/node-1.example.com", &body).await;
    let created = json_of(r, StatusCode::CREATED).await;
    assert_eq!(created["host_id"], "node-1.example.com");
    assert_eq!(
        created["architecture"], "x86_64",
        "amd64 is normalised: {created}"
    );
    assert_eq!(created["kernel_release"], "5.15.0-91-generic");
    assert_eq!(created["btf"], true);
    assert_eq!(created["labels"], body["labels"]);
    assert_eq!(created["agent_version"], "1.4.2");
    assert!(is_rfc3339(&created["registered_at"]), "{created}");
    assert!(is_rfc3339(&created["last_seen"]), "{created}");
    assert_eq!(
        x.get_ok("/hosts/node-1.example.com").await,
        created,
        "GET returns what PUT answered"
    );

    // An update: 200, the new facts, the first registration time kept.
    let body2 = facts("arm64", "6.1.0-13-arm64", false, json!({"env": "staging"}));
    let r = x.put_json("/hosts/node-1.example.com", &body2).await;
    let updated = json_of(r, StatusCode::OK).await;
    assert_eq!(updated["architecture"], "aarch64", "arm64 is normalised");
    assert_eq!(updated["kernel_release"], "6.1.0-13-arm64");
    assert_eq!(updated["btf"], false);
    assert_eq!(
        updated["labels"],
        json!({"env": "staging"}),
        "labels are replaced"
    );
    assert_eq!(updated["registered_at"], created["registered_at"]);
    assert!(
        str_of(&updated, "last_seen") >= str_of(&created, "last_seen"),
        "last_seen moves forward: {created} then {updated}"
    );
    assert_eq!(x.get_ok("/hosts/node-1.example.com").await, updated);

    // Only architecture and kernel_release are required.
    let r = x
        .put_json(
            "/hosts/minimal:1",
            &json!({"architecture": "x86_64", "kernel_release": "6.8.0"}),
        )
        .await;
    let minimal = json_of(r, StatusCode::CREATED).await;
    assert_eq!(minimal["host_id"], "minimal:1");
    assert_eq!(
        minimal["labels"],
        json!({}),
        "no labels is an empty object: {minimal}"
    );
}

#[tokio::test]
async fn bad_host_bodies_and_ids_are_400_and_store_nothing() {
    let x = Ctx::start().await;
    let bad_facts = [
        json!({"kernel_release": "5.15.0"}),
        json!({"architecture": "x86_64"}),
        json!({"architecture": "", "kernel_release": "5.15.0"}),
        json!({"architecture": "x86_64", "kernel_release": ""}),
        json!({"architecture": 64, "kernel_release": "5.15.0"}),
        json!({"architecture": "x86_64", "kernel_release": "5.15.0", "btf": "yes"}),
        json!({"architecture": "x86_64", "kernel_release": "5.15.0", "labels": ["env=prod"]}),
        json!([1, 2]),
    ];
    for b in &bad_facts {
        let r = x.put_json("/hosts/h1", b).await;
        let v = assert_rest_error_any(
            r,
            StatusCode::BAD_REQUEST,
            &["invalid_host", "invalid_labels", "invalid_json"],
        )
        .await;
        // A missing or empty required field is invalid_host; a field of
        // the wrong JSON type may be invalid_json, as for POST /artifacts.
        let missing_or_empty = ["architecture", "kernel_release"]
            .iter()
            .any(|k| b.get(k).is_none_or(|v| v == ""));
        if b.is_object() && missing_or_empty {
            assert_eq!(v["error"], "invalid_host", "{b}: {v}");
        } else if b.get("labels").is_none() {
            assert_ne!(v["error"], "invalid_labels", "{b}: {v}");
        }
    }
    let r =
        x.c.put(x.url("/hosts/h1"))
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .expect("send");
    assert_rest_error(r, StatusCode::BAD_REQUEST, "invalid_json").await;

    let long_name = "n".repeat(64);
    let long_value = "v".repeat(64);
    let long_prefix = format!("{}.example/name", "p".repeat(254));
    let mut too_many = serde_json::Map::new();
    for i in 0..65 {
        too_many.insert(format!("k{i}"), json!("v"));
    }
    let bad_labels = [
        json!({"bad key": "x"}),
        json!({"": "x"}),
        json!({"-leading": "x"}),
        json!({"trailing-": "x"}),
        json!({ long_name.clone(): "x" }),
        json!({"env": long_value}),
        json!({"env": "has space"}),
        json!({"env": "-dash-first"}),
        json!({"a/b/c": "x"}),
        json!({ long_prefix: "x" }),
        Value::Object(too_many),
    ];
    for labels in &bad_labels {
        let r = x
            .put_json(
                "/hosts/h1",
                &facts("x86_64", "5.15.0", true, labels.clone()),
            )
            .await;
        assert_rest_error(r, StatusCode::BAD_REQUEST, "invalid_labels").await;
    }
    // A label value of the wrong JSON type: invalid_labels, or
    // invalid_json as for any field of the wrong type.
    let r = x
        .put_json(
            "/hosts/h1",
            &facts("x86_64", "5.15.0", true, json!({"env": 5})),
        )
        .await;
    assert_rest_error_any(
        r,
        StatusCode::BAD_REQUEST,
        &["invalid_labels", "invalid_json"],
    )
    .await;
    let r = x.get("/hosts/h1").await;
    assert_rest_error(r, StatusCode::NOT_FOUND, "host_not_found").await;

    // The edges that are valid.
    let mut sixty_four = serde_json::Map::new();
    for i in 0..64 {
        sixty_four.insert(format!("k{i}"), json!("v"));
    }
    let good_labels = [
        json!({ "n".repeat(63): "v".repeat(63) }),
        json!({"example.com/role": "edge", "a_b.c-d": "A-z_0.9", "empty": ""}),
        Value::Object(sixty_four),
    ];
    for (i, labels) in good_labels.iter().enumerate() {
        let host = format!("good-{i}");
        let v = x
            .register(&host, &facts("x86_64", "5.15.0", true, labels.clone()))
            .await;
        assert_eq!(&v["labels"], labels);
    }

    for bad in ["bad%20host", "semi;colon", &"h".repeat(254)] {
        let r = x
            .put_json(
                &format!("/hosts/{bad}"),
                &facts("x86_64", "5.15.0", true, json!({})),
            )
            .await;
        assert_rest_error(r, StatusCode::BAD_REQUEST, "invalid_host_id").await;
        let r = x.get(&format!("/hosts/{bad}")).await;
        assert_rest_error(r, StatusCode::BAD_REQUEST, "invalid_host_id").await;
        let r = x.get(&format!("/hosts/{bad}/desired")).await;
        assert_rest_error(r, StatusCode::BAD_REQUEST, "invalid_host_id").await;
    }
}

#[tokio::test]
async fn host_delete_removes_facts_and_deployments_but_not_associations() {
    let x = Ctx::start().await;
    let a = x.create("del/prog", "1.0.0", "x86_64").await;
    let id = str_of(&a, "id").to_string();
    let sel = x.create("del/selected", "1.0.0", "x86_64").await;
    x.selector(str_of(&sel, "id"), "env=prod", None).await;
    x.register_simple("gone-1", json!({"env": "prod"})).await;
    x.associate(&id, "gone-1", None).await;
    x.report_ok("gone-1", &id, "loaded", "ok").await;
    assert_eq!(
        names_of(&x.for_host("gone-1").await["artifacts"]),
        ["del/prog", "del/selected"]
    );

    let r = x.delete("/hosts/gone-1").await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = x.get("/hosts/gone-1").await;
    assert_rest_error(r, StatusCode::NOT_FOUND, "host_not_found").await;
    let r = x.get("/hosts/gone-1/desired").await;
    assert_rest_error(r, StatusCode::NOT_FOUND, "host_not_found").await;
    let r = x.get("/hosts/gone-1/deployments").await;
    assert_rest_error(r, StatusCode::NOT_FOUND, "host_not_found").await;
    let r = x.delete("/hosts/gone-1").await;
    assert_rest_error(r, StatusCode::NOT_FOUND, "host_not_found").await;
    // The direct association stays (the seed's for-host is unchanged);
    // the selector no longer matches an unregistered host.
    assert_eq!(
        names_of(&x.for_host("gone-1").await["artifacts"]),
        ["del/prog"]
    );
    assert_eq!(
        strings(&x.get_ok(&format!("/artifacts/{id}/hosts")).await["hosts"]),
        ["gone-1"]
    );

    // Registered again: no deployment survived the delete.
    x.register_simple("gone-1", json!({})).await;
    let d = x.get_ok("/hosts/gone-1/deployments").await;
    assert_eq!(d["deployments"], json!([]), "{d}");
    assert_eq!(d["history"], json!([]), "{d}");
}

/// Walks `GET /hosts` with `limit` and a label selector; returns the ids.
async fn walk_hosts(x: &Ctx, limit: usize, label: Option<&str>) -> Vec<String> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..1000 {
        let mut q: Vec<(&str, String)> = vec![("limit", limit.to_string())];
        if let Some(l) = label {
            q.push(("label", l.to_string()));
        }
        if let Some(c) = &cursor {
            q.push(("cursor", c.clone()));
        }
        let r =
            x.c.get(x.url("/hosts"))
                .query(&q)
                .send()
                .await
                .expect("send");
        let v = json_of(r, StatusCode::OK).await;
        let page = v["hosts"].as_array().expect("hosts array");
        assert!(page.len() <= limit, "page over the limit: {v}");
        out.extend(page.iter().map(|h| str_of(h, "host_id").to_string()));
        match &v["next_cursor"] {
            Value::Null => return out,
            Value::String(c) => {
                assert!(!c.is_empty(), "empty next_cursor");
                cursor = Some(c.clone());
            }
            other => panic!("next_cursor is {other}"),
        }
    }
    panic!("GET /hosts paging does not end");
}

#[tokio::test]
async fn host_listing_filters_by_label_selector_and_pages_in_host_id_order() {
    let x = Ctx::start().await;
    let mut all = Vec::new();
    for i in (0..25).rev() {
        let host = format!("page-{i:02}");
        let mut labels = json!({ "env": if i % 2 == 0 { "prod" } else { "staging" } });
        if i % 5 == 0 {
            labels["canary"] = json!("true");
        }
        x.register_simple(&host, labels).await;
        all.push(host);
    }
    all.sort();

    // Default limit (100): everything on one page, by host_id.
    let v = x.get_ok("/hosts").await;
    let got: Vec<String> = v["hosts"]
        .as_array()
        .expect("hosts")
        .iter()
        .map(|h| str_of(h, "host_id").to_string())
        .collect();
    assert_eq!(got, all);
    assert_eq!(v["next_cursor"], Value::Null);
    // Each entry is the host JSON.
    assert_eq!(v["hosts"][0], x.get_ok("/hosts/page-00").await);

    for limit in [1, 7, 10, 25, 1000] {
        assert_eq!(walk_hosts(&x, limit, None).await, all, "limit {limit}");
    }
    let prod: Vec<String> = (0..25)
        .filter(|i| i % 2 == 0)
        .map(|i| format!("page-{i:02}"))
        .collect();
    assert_eq!(walk_hosts(&x, 4, Some("env=prod")).await, prod);
    let prod_not_canary: Vec<String> = (0..25)
        .filter(|i| i % 2 == 0 && i % 5 != 0)
        .map(|i| format!("page-{i:02}"))
        .collect();
    assert_eq!(
        walk_hosts(&x, 3, Some("env in (prod),!canary")).await,
        prod_not_canary
    );
    assert_eq!(
        walk_hosts(&x, 100, Some("env=nowhere")).await,
        Vec::<String>::new()
    );
    assert_eq!(walk_hosts(&x, 100, Some("")).await, all, "empty selector");

    for limit in ["0", "1001", "-1", "ten"] {
        let r =
            x.c.get(x.url("/hosts"))
                .query(&[("limit", limit)])
                .send()
                .await
                .expect("send");
        assert_rest_error(r, StatusCode::BAD_REQUEST, "invalid_request").await;
    }
    let r =
        x.c.get(x.url("/hosts"))
            .query(&[("cursor", "%%%not-a-cursor")])
            .send()
            .await
            .expect("send");
    assert_rest_error(r, StatusCode::BAD_REQUEST, "invalid_request").await;
    let r =
        x.c.get(x.url("/hosts"))
            .query(&[("label", "env in prod")])
            .send()
            .await
            .expect("send");
    assert_rest_error(r, StatusCode::BAD_REQUEST, "invalid_selector").await;
}

// ---- selectors --------------------------------------------------------------------

#[tokio::test]
async fn selectors_add_replay_list_delete_and_are_oci_referrers() {
    let x = Ctx::start().await;
    let a = x.create("sel/prog", "1.0.0", "x86_64").await;
    let id = str_of(&a, "id").to_string();
    let path = format!("/artifacts/{id}/selectors");

    let r = x
        .post_json(
            &path,
            &json!({"selector": "env=prod,role in (edge,core),!canary"}),
        )
        .await;
    let s1 = json_of(r, StatusCode::CREATED).await;
    assert_eq!(s1["selector"], "env=prod,role in (edge,core),!canary");
    assert_eq!(s1["channel"], Value::Null);
    assert_eq!(s1["artifact_id"], id.as_str());
    let sid1 = str_of(&s1, "selector_id").to_string();
    assert!(
        sid1.starts_with("sha256:") && sid1.len() == 71,
        "selector_id is a digest: {s1}"
    );
    // The same selector again: 200 with the existing one.
    let r = x
        .post_json(
            &path,
            &json!({"selector": "env=prod,role in (edge,core),!canary"}),
        )
        .await;
    assert_eq!(json_of(r, StatusCode::OK).await, s1);

    let r = x
        .post_json(&path, &json!({"selector": "", "channel": "stable"}))
        .await;
    let s2 = json_of(r, StatusCode::CREATED).await;
    assert_eq!(s2["selector"], "");
    assert_eq!(s2["channel"], "stable");
    let sid2 = str_of(&s2, "selector_id").to_string();
    assert_ne!(sid1, sid2);

    let listed = x.get_ok(&path).await;
    let mut got: Vec<Value> = listed["selectors"].as_array().expect("selectors").clone();
    got.sort_by_key(|s| s["selector_id"].as_str().unwrap_or_default().to_string());
    let mut want = vec![s1.clone(), s2.clone()];
    want.sort_by_key(|s| s["selector_id"].as_str().unwrap_or_default().to_string());
    assert_eq!(got, want);

    // Stored as referrer manifests of the artifact; selector_id = digest.
    let r = x.get(&format!("/v2/sel/prog/referrers/{id}")).await;
    let idx = json_of(r, StatusCode::OK).await;
    let refs: Vec<&Value> = idx["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .filter(|m| m["artifactType"] == SELECTOR_TYPE)
        .collect();
    assert_eq!(refs.len(), 2, "two selector referrers: {idx}");
    for (sid, s) in [(&sid1, &s1), (&sid2, &s2)] {
        let r = refs
            .iter()
            .find(|m| m["digest"] == sid.as_str())
            .unwrap_or_else(|| panic!("no referrer {sid} in {idx}"));
        assert_eq!(r["annotations"][SELECTOR_ANNOTATION], s["selector"]);
        let m =
            x.c.get(x.url(&format!("/v2/sel/prog/manifests/{sid}")))
                .header("accept", OCI_MANIFEST)
                .send()
                .await
                .expect("send");
        assert_eq!(m.status(), StatusCode::OK);
        let bytes = m.bytes().await.expect("body");
        assert_eq!(&sha256(&bytes), sid);
        let m: Value = serde_json::from_slice(&bytes).expect("manifest JSON");
        assert_eq!(m["artifactType"], SELECTOR_TYPE);
        assert_eq!(m["subject"]["digest"], id.as_str());
        assert_eq!(m["annotations"][SELECTOR_ANNOTATION], s["selector"]);
        match s["channel"].as_str() {
            Some(ch) => assert_eq!(m["annotations"][CHANNEL_ANNOTATION], ch),
            None => assert!(
                m["annotations"].get(CHANNEL_ANNOTATION).is_none(),
                "no channel annotation without a channel: {m}"
            ),
        }
    }

    let r = x.delete(&format!("{path}/{sid1}")).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = x.delete(&format!("{path}/{sid1}")).await;
    assert_rest_error(r, StatusCode::NOT_FOUND, "selector_not_found").await;
    let unknown = sha256(b"no such selector");
    let r = x.delete(&format!("{path}/{unknown}")).await;
    assert_rest_error(r, StatusCode::NOT_FOUND, "selector_not_found").await;
    assert_eq!(x.get_ok(&path).await["selectors"], json!([s2]));

    // An unknown artifact: 404 not_found.
    let r = x
        .post_json(
            &format!("/artifacts/{unknown}/selectors"),
            &json!({"selector": "env=prod"}),
        )
        .await;
    assert_rest_error(r, StatusCode::NOT_FOUND, "not_found").await;
    let r = x.get(&format!("/artifacts/{unknown}/selectors")).await;
    assert_rest_error(r, StatusCode::NOT_FOUND, "not_found").await;
}

#[tokio::test]
async fn bad_selector_syntax_is_400_invalid_selector_and_stores_nothing() {
    let x = Ctx::start().await;
    let a = x.create("badsel/prog", "1.0.0", "x86_64").await;
    let id = str_of(&a, "id").to_string();
    let path = format!("/artifacts/{id}/selectors");
    let many: Vec<String> = (0..65).map(|i| format!("k{i}=v")).collect();
    let bad: Vec<String> = vec![
        "env in prod".into(),
        "env in (a,b".into(),
        "env in ()".into(),
        "env notin ()".into(),
        "=prod".into(),
        "!env=prod".into(),
        "env=prod,".into(),
        ",env=prod".into(),
        "env=prod,,role=edge".into(),
        "env)".into(),
        "env in (a b)".into(),
        "env=pro duct".into(),
        "bad key=x".into(),
        "env=has@char".into(),
        format!("{}=x", "k".repeat(64)),
        format!("env={}", "v".repeat(64)),
        "env<5".into(),
        "!".into(),
        many.join(","),
        format!("env in ({})", vec!["v"; 2100].join(",")),
    ];
    for sel in &bad {
        let r = x.post_json(&path, &json!({ "selector": sel })).await;
        let v = assert_rest_error(r, StatusCode::BAD_REQUEST, "invalid_selector").await;
        let shown: String = sel.chars().take(60).collect();
        assert!(
            !v["message"].as_str().unwrap_or_default().is_empty(),
            "{shown}"
        );
    }
    for body in [
        json!({}),
        json!({"selector": 5}),
        json!({"selector": ["env=prod"]}),
    ] {
        let r = x.post_json(&path, &body).await;
        assert_rest_error_any(
            r,
            StatusCode::BAD_REQUEST,
            &["invalid_selector", "invalid_json", "invalid_request"],
        )
        .await;
    }
    assert_eq!(x.get_ok(&path).await["selectors"], json!([]));
    let idx = x.get_ok(&format!("/v2/badsel/prog/referrers/{id}")).await;
    assert_eq!(idx["manifests"], json!([]), "no referrer stored: {idx}");

    // The same over OCI: a selector referrer pushed with a selector that
    // does not parse, or without one, is refused, not stored and ignored.
    let config = x.s.push_empty_config(&x.c, "badsel/prog").await;
    let subject_size = oci_manifest(&x, "badsel/prog", &id).await.1.len();
    let referrer = |artifact_type: &str, annotations: Value| {
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": config,
            "layers": [],
            "subject": {"mediaType": OCI_MANIFEST, "digest": id, "size": subject_size},
            "annotations": annotations,
        }))
        .expect("json")
    };
    for annotations in [
        json!({ SELECTOR_ANNOTATION: "env in (a,b" }),
        json!({ SELECTOR_ANNOTATION: "bad key=x" }),
        json!({}),
    ] {
        let body = referrer(SELECTOR_TYPE, annotations);
        refused_referrer(&x, "badsel/prog", &body, SELECTOR_ANNOTATION).await;
    }
    assert_eq!(x.get_ok(&path).await["selectors"], json!([]));
    let idx = x.get_ok(&format!("/v2/badsel/prog/referrers/{id}")).await;
    assert_eq!(idx["manifests"], json!([]), "no referrer stored: {idx}");

    // A host-association referrer over OCI with a host id the REST API
    // refuses (or none) is refused the same way.
    for annotations in [
        json!({ HOST_ID_ANNOTATION: "bad host" }),
        json!({ HOST_ID_ANNOTATION: "" }),
        json!({ HOST_ID_ANNOTATION: "h".repeat(254) }),
        json!({}),
    ] {
        let body = referrer(HOST_ASSOCIATION_TYPE, annotations);
        refused_referrer(&x, "badsel/prog", &body, HOST_ID_ANNOTATION).await;
    }
    let idx = x.get_ok(&format!("/v2/badsel/prog/referrers/{id}")).await;
    assert_eq!(idx["manifests"], json!([]), "no referrer stored: {idx}");

    // Valid edges of the grammar.
    for good in [
        "k==v",
        "env",
        "!env",
        "a.b/c-d_e=f",
        "env notin (a,b)",
        &format!("{}=x", "k".repeat(63)),
        &(0..64)
            .map(|i| format!("k{i}=v"))
            .collect::<Vec<_>>()
            .join(","),
    ] {
        x.selector(&id, good, None).await;
    }
}

/// Pushes `body` as a manifest of `repo` and asserts the refusal: 400
/// `MANIFEST_INVALID` naming `annotation`, and nothing stored.
async fn refused_referrer(x: &Ctx, repo: &str, body: &[u8], annotation: &str) {
    let digest = sha256(body);
    let r =
        x.s.put_manifest(&x.c, repo, &digest, OCI_MANIFEST, body)
            .await;
    let shown = String::from_utf8_lossy(body).into_owned();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{shown}");
    let e: Value = r.json().await.expect("error JSON");
    assert_eq!(e["errors"][0]["code"], "MANIFEST_INVALID", "{e}");
    assert!(
        e["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains(annotation)),
        "{e}"
    );
    let r = x.get(&format!("/v2/{repo}/manifests/{digest}")).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "not stored");
}

#[tokio::test]
async fn selectors_match_registered_hosts_by_their_labels() {
    let x = Ctx::start().await;
    // m1..m5 registered; "m-unreg" is not.
    let hosts: [(&str, Value); 5] = [
        ("m1", json!({"env": "prod", "role": "edge"})),
        (
            "m2",
            json!({"env": "prod", "role": "core", "canary": "true"}),
        ),
        ("m3", json!({"env": "staging", "role": "edge"})),
        ("m4", json!({})),
        ("m5", json!({"role": "db"})),
    ];
    for (h, labels) in &hosts {
        x.register_simple(h, labels.clone()).await;
    }
    let table: &[(&str, &[&str])] = &[
        ("env=prod", &["m1", "m2"]),
        ("env==prod", &["m1", "m2"]),
        ("env!=prod", &["m3", "m4", "m5"]),
        ("role in (edge,core)", &["m1", "m2", "m3"]),
        ("role notin (edge,core)", &["m4", "m5"]),
        ("canary", &["m2"]),
        ("!canary", &["m1", "m3", "m4", "m5"]),
        ("env", &["m1", "m2", "m3"]),
        ("!env", &["m4", "m5"]),
        ("env=prod,role in (edge,core),!canary", &["m1"]),
        ("env=prod, !canary", &["m1"]),
        ("env=staging,role=db", &[]),
        ("", &["m1", "m2", "m3", "m4", "m5"]),
    ];
    for (i, (sel, _)) in table.iter().enumerate() {
        let a = x.create(&format!("match/s{i:02}"), "1.0.0", "x86_64").await;
        x.selector(str_of(&a, "id"), sel, None).await;
    }
    let unreg = x.for_host("m-unreg").await;
    assert_eq!(
        unreg["artifacts"],
        json!([]),
        "no selector matches an unregistered host"
    );
    let r = x.get("/hosts/m-unreg/desired").await;
    assert_rest_error(r, StatusCode::NOT_FOUND, "host_not_found").await;

    for (h, _) in &hosts {
        let mut want: Vec<String> = table
            .iter()
            .enumerate()
            .filter(|(_, (_, m))| m.contains(h))
            .map(|(i, _)| format!("match/s{i:02}"))
            .collect();
        want.sort();
        assert_eq!(
            names_of(&x.for_host(h).await["artifacts"]),
            want,
            "for-host {h}"
        );
        let d = x.desired(h).await;
        let mut got: Vec<String> = d["artifacts"]
            .as_array()
            .expect("artifacts")
            .iter()
            .map(|a| str_of(a, "name").to_string())
            .collect();
        assert!(
            got.windows(2).all(|w| w[0] <= w[1]),
            "desired is sorted by name: {d}"
        );
        got.sort();
        assert_eq!(got, want, "desired {h}");
        for a in d["artifacts"].as_array().expect("artifacts") {
            let via = strings(&a["via"]);
            assert_eq!(via.len(), 1, "{a}");
            assert!(via[0].starts_with("selector:sha256:"), "{a}");
        }
    }
    // GET /hosts?label= agrees with the matching.
    for (sel, matched) in table {
        let got = walk_hosts(&x, 100, Some(sel)).await;
        assert_eq!(got, *matched, "GET /hosts?label={sel}");
    }

    // New labels, new matches; a deleted host matches nothing.
    x.register_simple("m3", json!({"env": "prod", "role": "edge"}))
        .await;
    let got = names_of(&x.for_host("m3").await["artifacts"]);
    assert!(got.contains(&"match/s00".to_string()), "{got:?}");
    assert!(got.contains(&"match/s09".to_string()), "{got:?}");
    let r = x.delete("/hosts/m1").await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(x.for_host("m1").await["artifacts"], json!([]));
}

#[tokio::test]
async fn for_host_keeps_the_seed_json_and_adds_selector_matches() {
    let x = Ctx::start().await;
    let direct = x.create("fh/direct", "1.0.0", "x86_64").await;
    let both = x.create("fh/both", "1.0.0", "x86_64").await;
    let selected = x.create("fh/selected", "1.0.0", "x86_64").await;
    let other = x.create("fh/other", "1.0.0", "x86_64").await;
    x.register_simple("fh-1", json!({"env": "prod"})).await;
    x.associate(str_of(&direct, "id"), "fh-1", None).await;
    x.associate(str_of(&both, "id"), "fh-1", None).await;
    x.selector(str_of(&both, "id"), "env=prod", None).await;
    x.selector(str_of(&selected, "id"), "env", None).await;
    x.selector(str_of(&other, "id"), "env=staging", None).await;

    let fh = x.for_host("fh-1").await;
    let list = fh["artifacts"].as_array().expect("artifacts");
    assert_eq!(
        names_of(&fh["artifacts"]),
        ["fh/both", "fh/direct", "fh/selected"],
        "direct associations plus selector subjects, once each: {fh}"
    );
    // Each entry is the artifact JSON as GET /artifacts/{id} answers it
    // (its `hosts` are the direct associations only).
    for a in list {
        let got = x.get_ok(&format!("/artifacts/{}", str_of(a, "id"))).await;
        assert_eq!(a, &got);
    }
    let sel_entry = list
        .iter()
        .find(|a| a["name"] == "fh/selected")
        .expect("selected");
    assert_eq!(sel_entry["hosts"], json!([]));
    // An unregistered host with a direct association: the seed answer.
    x.associate(str_of(&direct, "id"), "fh-unregistered", None)
        .await;
    assert_eq!(
        names_of(&x.for_host("fh-unregistered").await["artifacts"]),
        ["fh/direct"]
    );
}

/// Each `for-host` entry is cached per repository counter: a write to the
/// artifact's repository that does not touch the host (another host
/// associated, the artifact deleted) is in the host's next answer.
#[tokio::test]
async fn for_host_entries_follow_writes_that_do_not_touch_the_host() {
    let x = Ctx::start().await;
    let a = x.create("fhc/prog", "1.0.0", "x86_64").await;
    let id = str_of(&a, "id");
    x.associate(id, "fhc-1", None).await;
    let before = x.for_host("fhc-1").await;
    assert_eq!(
        before["artifacts"][0]["hosts"],
        json!(["fhc-1"]),
        "{before}"
    );
    assert_eq!(x.for_host("fhc-1").await, before, "the same answer again");
    x.associate(id, "fhc-2", None).await;
    let after = x.for_host("fhc-1").await;
    assert_eq!(
        after["artifacts"][0]["hosts"],
        json!(["fhc-1", "fhc-2"]),
        "{after}"
    );
    assert_eq!(
        after["artifacts"][0],
        x.get_ok(&format!("/artifacts/{id}")).await
    );
    let d = x.delete(&format!("/artifacts/{id}")).await;
    assert_eq!(d.status(), StatusCode::NO_CONTENT);
    assert_eq!(x.for_host("fhc-1").await["artifacts"], json!([]));
}

// ---- channel associations and channels ----------------------------------------

#[tokio::test]
async fn channel_association_follows_the_channel_tag() {
    let x = Ctx::start().await;
    let v1 = x.create("chan/prog", "1.0.0", "x86_64").await;
    let v2 = x.create("chan/prog", "2.0.0", "x86_64").await;
    x.register_simple("ch-1", json!({"env": "prod"})).await;
    x.register_simple("ch-2", json!({"tier": "gold"})).await;
    x.associate(str_of(&v2, "id"), "ch-1", Some("stable")).await;

    // The association is a referrer with the channel annotation.
    let idx = x
        .get_ok(&format!("/v2/chan/prog/referrers/{}", str_of(&v2, "id")))
        .await;
    let assoc: Vec<&Value> = idx["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .filter(|m| m["annotations"][CHANNEL_ANNOTATION] == "stable")
        .collect();
    assert_eq!(assoc.len(), 1, "{idx}");

    // Not set yet: excluded.
    let d = x.desired("ch-1").await;
    assert!(desired_entries(&d, "chan/prog").is_empty(), "{d}");
    assert_eq!(
        excluded_of(&d, "chan/prog")
            .into_iter()
            .map(|(_, r)| r)
            .collect::<Vec<_>>(),
        ["channel stable not set"],
        "{d}"
    );

    x.channel_ok("chan/prog", "stable", "1.0.0").await;
    let d = x.desired("ch-1").await;
    let e = desired_entries(&d, "chan/prog");
    assert_eq!(e.len(), 1, "{d}");
    assert_eq!(
        e[0]["version"], "1.0.0",
        "the channel's, not the newest: {d}"
    );
    assert_eq!(e[0]["id"], v1["id"]);
    assert_eq!(e[0]["channel"], "stable");
    assert!(
        strings(&e[0]["via"]).contains(&"channel:stable".to_string()),
        "{d}"
    );
    assert_eq!(excluded_of(&d, "chan/prog"), Vec::<(String, String)>::new());

    x.channel_ok("chan/prog", "stable", "2.0.0").await;
    let d = x.desired("ch-1").await;
    assert_eq!(desired_entries(&d, "chan/prog")[0]["version"], "2.0.0");

    // A selector with a channel follows it too.
    x.channel_ok("chan/prog", "gold", "1.0.0").await;
    x.selector(str_of(&v2, "id"), "tier=gold", Some("gold"))
        .await;
    let d = x.desired("ch-2").await;
    let e = desired_entries(&d, "chan/prog");
    assert_eq!(e.len(), 1, "{d}");
    assert_eq!(e[0]["version"], "1.0.0");
    assert_eq!(e[0]["channel"], "gold");
    assert!(
        strings(&e[0]["via"])
            .iter()
            .any(|v| v.starts_with("selector:sha256:")),
        "{d}"
    );

    // Without a channel the association is the seed's.
    let plain = x.create("chan/plain", "1.0.0", "x86_64").await;
    x.associate(str_of(&plain, "id"), "ch-1", None).await;
    let fh = x.for_host("ch-1").await;
    assert!(
        names_of(&fh["artifacts"]).contains(&"chan/plain".to_string()),
        "{fh}"
    );
    let d = x.desired("ch-1").await;
    let e = desired_entries(&d, "chan/plain");
    assert_eq!(strings(&e[0]["via"]), ["direct"]);
    assert_eq!(e[0]["channel"], Value::Null);
}

/// GET /v2/<name>/manifests/<reference>: (digest, bytes).
async fn oci_manifest(x: &Ctx, name: &str, reference: &str) -> (String, Vec<u8>) {
    let r =
        x.c.get(x.url(&format!("/v2/{name}/manifests/{reference}")))
            .header("accept", format!("{OCI_INDEX}, {OCI_MANIFEST}"))
            .send()
            .await
            .expect("send");
    assert_eq!(r.status(), StatusCode::OK, "manifest {name}:{reference}");
    let d = header(&r, "docker-content-digest").expect("digest header");
    (d, r.bytes().await.expect("body").to_vec())
}

#[tokio::test]
async fn channels_move_keep_history_roll_back_and_move_the_oci_tag() {
    let x = Ctx::start().await;
    let mut ids = Vec::new();
    for v in ["1.0.0", "2.0.0", "3.0.0"] {
        ids.push(str_of(&x.create("team/prog", v, "x86_64").await, "id").to_string());
    }
    let r = x.get("/channels/team/prog/stable").await;
    assert_rest_error(r, StatusCode::NOT_FOUND, "channel_not_found").await;

    let c1 = x.channel_ok("team/prog", "stable", "1.0.0").await;
    assert_eq!(c1["name"], "team/prog");
    assert_eq!(c1["channel"], "stable");
    assert_eq!(c1["version"], "1.0.0");
    assert_eq!(c1["id"], ids[0].as_str());
    let h = c1["history"].as_array().expect("history");
    assert_eq!(h.len(), 1, "{c1}");
    assert_eq!(h[0]["version"], "1.0.0");
    assert_eq!(h[0]["id"], ids[0].as_str());
    assert_eq!(h[0]["action"], "move");
    assert!(is_rfc3339(&h[0]["at"]), "{c1}");
    assert!(h[0].get("by").is_some(), "history names who: {c1}");
    assert_eq!(x.get_ok("/channels/team/prog/stable").await, c1);

    // The OCI tag follows: oras pulling :stable gets the version.
    assert_eq!(
        oci_manifest(&x, "team/prog", "stable").await,
        oci_manifest(&x, "team/prog", "1.0.0").await
    );
    x.channel_ok("team/prog", "stable", "2.0.0").await;
    let c3 = x.channel_ok("team/prog", "stable", "3.0.0").await;
    assert_eq!(
        oci_manifest(&x, "team/prog", "stable").await,
        oci_manifest(&x, "team/prog", "3.0.0").await
    );
    let versions: Vec<&str> = c3["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|e| e["version"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(versions, ["3.0.0", "2.0.0", "1.0.0"], "newest first: {c3}");
    let tags = x.get_ok("/v2/team/prog/tags/list").await;
    assert!(
        strings(&tags["tags"]).contains(&"stable".to_string()),
        "{tags}"
    );

    // Rollbacks pop moves like a stack.
    let r = x.post_empty("/channels/team/prog/stable/rollback").await;
    let b1 = json_of(r, StatusCode::OK).await;
    assert_eq!(b1["version"], "2.0.0");
    assert_eq!(b1["id"], ids[1].as_str());
    assert_eq!(b1["history"][0]["action"], "rollback");
    assert_eq!(b1["history"][0]["version"], "2.0.0");
    assert_eq!(
        oci_manifest(&x, "team/prog", "stable").await,
        oci_manifest(&x, "team/prog", "2.0.0").await
    );
    let r = x.post_empty("/channels/team/prog/stable/rollback").await;
    assert_eq!(json_of(r, StatusCode::OK).await["version"], "1.0.0");
    let r = x.post_empty("/channels/team/prog/stable/rollback").await;
    assert_rest_error(r, StatusCode::CONFLICT, "no_previous_version").await;
    assert_eq!(
        x.get_ok("/channels/team/prog/stable").await["version"],
        "1.0.0",
        "a refused rollback changes nothing"
    );
    x.channel_ok("team/prog", "stable", "3.0.0").await;
    let r = x.post_empty("/channels/team/prog/stable/rollback").await;
    assert_eq!(json_of(r, StatusCode::OK).await["version"], "1.0.0");

    // Errors.
    let r = x.put_channel("team/prog", "stable", "9.9.9").await;
    assert_rest_error(r, StatusCode::NOT_FOUND, "version_not_found").await;
    let r = x.put_channel("team/prog", "2.0.0", "1.0.0").await;
    assert_rest_error(r, StatusCode::CONFLICT, "channel_is_version").await;
    for bad in [".hidden", "bad%20tag", &"t".repeat(129)] {
        let r = x.put_channel("team/prog", bad, "1.0.0").await;
        assert_rest_error(r, StatusCode::BAD_REQUEST, "invalid_request").await;
    }
    let r = x.get("/channels/team/prog/beta").await;
    assert_rest_error(r, StatusCode::NOT_FOUND, "channel_not_found").await;
    // A version named like a channel of the repository.
    let r = x
        .post_json(
            "/artifacts",
            &artifact_body("team/prog", "stable", "x86_64"),
        )
        .await;
    assert_rest_error(r, StatusCode::CONFLICT, "channel_is_version").await;
    assert_eq!(
        oci_manifest(&x, "team/prog", "stable").await,
        oci_manifest(&x, "team/prog", "1.0.0").await,
        "the refused create did not move the tag"
    );
}

#[tokio::test]
async fn a_channel_on_a_multi_arch_version_points_at_its_index() {
    let x = Ctx::start().await;
    x.create("multi/prog", "1.0.0", "x86_64").await;
    let arm = x.create("multi/prog", "1.0.0", "aarch64").await;
    let c = x.channel_ok("multi/prog", "stable", "1.0.0").await;
    let (index_digest, _) = oci_manifest(&x, "multi/prog", "1.0.0").await;
    assert_eq!(c["id"], index_digest.as_str());
    assert_eq!(
        oci_manifest(&x, "multi/prog", "stable").await.0,
        index_digest
    );
    x.register("arm-1", &facts("aarch64", "6.1.0", true, json!({})))
        .await;
    x.associate(str_of(&arm, "id"), "arm-1", Some("stable"))
        .await;
    let d = x.desired("arm-1").await;
    let e = desired_entries(&d, "multi/prog");
    assert_eq!(e.len(), 1, "{d}");
    assert_eq!(e[0]["id"], arm["id"], "the host's platform of the index");
    assert_eq!(e[0]["architecture"], "aarch64");
}

// ---- requirements -------------------------------------------------------------------

#[tokio::test]
async fn requirements_are_stored_returned_and_validated() {
    let x = Ctx::start().await;
    let req = json!({"min_kernel": "5.8", "max_kernel": "6.99", "btf": "required"});
    let a = x
        .create_req("req/prog", "1.0.0", "x86_64", Some(req.clone()))
        .await;
    assert_eq!(a["requirements"], req, "{a}");
    assert_eq!(
        x.get_ok(&format!("/artifacts/{}", str_of(&a, "id"))).await["requirements"],
        req
    );
    let plain = x.create("req/plain", "1.0.0", "x86_64").await;
    assert!(
        plain.get("requirements").is_none_or(Value::is_null),
        "no requirements: absent or null: {plain}"
    );

    // In the manifest annotation (compact JSON) and in the config.
    let (_, bytes) = oci_manifest(&x, "req/prog", "1.0.0").await;
    let m: Value = serde_json::from_slice(&bytes).expect("manifest");
    let ann = m["annotations"][REQUIREMENTS_ANNOTATION]
        .as_str()
        .unwrap_or_else(|| panic!("no {REQUIREMENTS_ANNOTATION} annotation: {m}"));
    assert!(!ann.contains(' '), "compact JSON: {ann:?}");
    assert_eq!(serde_json::from_str::<Value>(ann).expect("JSON"), req);
    let config = x
        .get(&format!(
            "/v2/req/prog/blobs/{}",
            str_of(&m["config"], "digest")
        ))
        .await;
    let config: Value = json_of(config, StatusCode::OK).await;
    assert_eq!(config["requirements"], req, "{config}");

    let partial = x
        .create_req(
            "req/partial",
            "1.0.0",
            "x86_64",
            Some(json!({"min_kernel": "5"})),
        )
        .await;
    assert_eq!(partial["requirements"]["min_kernel"], "5");

    let bad = [
        json!({"min_kernel": "5.8", "gpu": true}),
        json!({"min_kernel": "5.x"}),
        json!({"min_kernel": "5.8.1.2"}),
        json!({"min_kernel": ""}),
        json!({"max_kernel": "v6"}),
        json!({"min_kernel": 5}),
        json!({"btf": "maybe"}),
        json!({"btf": true}),
        json!("min_kernel=5.8"),
    ];
    for (i, r) in bad.iter().enumerate() {
        let mut b = artifact_body("req/bad", &format!("1.0.{i}"), "x86_64");
        b["requirements"] = r.clone();
        let resp = x.post_json("/artifacts", &b).await;
        assert_rest_error(resp, StatusCode::BAD_REQUEST, "invalid_requirements").await;
    }
    let r = x.get("/artifacts?name=req/bad").await;
    assert_eq!(json_of(r, StatusCode::OK).await["artifacts"], json!([]));
}

/// An eBPF object with a CO-RE relocation (clang, as tests/rest_api.rs:
/// fails without it).
fn core_object() -> Vec<u8> {
    let dir = tempfile::tempdir().expect("temp dir");
    let src = dir.path().join("core.c");
    let obj = dir.path().join("core.o");
    std::fs::write(
        &src,
        r#"
struct task_struct { int pid; } __attribute__((preserve_access_index));
__attribute__((section("kprobe/do_exit"), used))
int on_exit(struct task_struct *t) { return t->pid; }
char LICENSE[] __attribute__((section("license"), used)) = "GPL";
"#,
    )
    .expect("write core.c");
    let out = std::process::Command::new("clang")
        .args(["-O2", "-g", "-target", "bpf", "-c"])
        .arg(&src)
        .arg("-o")
        .arg(&obj)
        .output()
        .unwrap_or_else(|e| {
            panic!("clang is required for the CO-RE test (apt-get install clang): {e}")
        });
    assert!(
        out.status.success(),
        "clang failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(Path::new(&obj)).expect("read core.o")
}

#[tokio::test]
async fn a_core_object_requires_btf_unless_declared_and_optional_is_refused() {
    let x = Ctx::start().await;
    let obj = core_object();
    let mut b = artifact_body("core/prog", "1.0.0", "x86_64");
    b["type"] = json!("program");
    b["data"] = json!(b64(&obj));
    let a = x.create_body(&b).await;
    assert_eq!(a["requirements"]["btf"], "required", "{a}");

    let mut b2 = b.clone();
    b2["version"] = json!("1.0.1");
    b2["requirements"] = json!({"btf": "optional"});
    let r = x.post_json("/artifacts", &b2).await;
    assert_rest_error(r, StatusCode::BAD_REQUEST, "invalid_requirements").await;

    let mut b3 = b.clone();
    b3["version"] = json!("1.0.2");
    b3["requirements"] = json!({"min_kernel": "5.8"});
    let a3 = x.create_body(&b3).await;
    assert_eq!(a3["requirements"]["btf"], "required", "{a3}");
    assert_eq!(a3["requirements"]["min_kernel"], "5.8", "{a3}");
}

// ---- resolution table -----------------------------------------------------------

#[derive(Clone, Copy)]
enum Assign {
    Direct,
    Selector,
    Channel(&'static str),
}

struct Row {
    what: &'static str,
    /// (architecture, kernel_release, btf)
    host: (&'static str, &'static str, bool),
    /// One POST each, oldest first: (version, architecture, requirements JSON).
    versions: &'static [(&'static str, &'static str, Option<&'static str>)],
    assign: Assign,
    /// (channel, version) set with PUT /channels.
    channel: Option<(&'static str, &'static str)>,
    /// The chosen (version, architecture), if any.
    want: Option<(&'static str, &'static str)>,
    /// (version, reason); version "" = not checked.
    excluded: &'static [(&'static str, &'static str)],
}

const X86: &str = "x86_64";
const ARM: &str = "aarch64";
const K515: (&str, &str, bool) = (X86, "5.15.0-91-generic", true);

const ROWS: &[Row] = &[
    Row {
        what: "the newest version with the host's platform",
        host: K515,
        versions: &[("1.0.0", X86, None), ("1.1.0", X86, None)],
        assign: Assign::Direct,
        channel: None,
        want: Some(("1.1.0", X86)),
        excluded: &[],
    },
    Row {
        what: "a newer version without the host's platform is excluded",
        host: K515,
        versions: &[("1.0.0", X86, None), ("1.1.0", ARM, None)],
        assign: Assign::Direct,
        channel: None,
        want: Some(("1.0.0", X86)),
        excluded: &[("1.1.0", "no x86_64 platform")],
    },
    Row {
        what: "an aarch64 host takes its platform of a multi-arch version",
        host: (ARM, "6.1.0-13-arm64", true),
        versions: &[("1.0.0", X86, None), ("1.0.0", ARM, None)],
        assign: Assign::Direct,
        channel: None,
        want: Some(("1.0.0", ARM)),
        excluded: &[],
    },
    Row {
        what: "an amd64 host is x86_64",
        host: ("amd64", "5.15.0", true),
        versions: &[("2.0.0", ARM, None), ("2.0.0", X86, None)],
        assign: Assign::Direct,
        channel: None,
        want: Some(("2.0.0", X86)),
        excluded: &[],
    },
    Row {
        what: "the aarch64 reason names aarch64",
        host: (ARM, "5.10.0", true),
        versions: &[
            ("1.0.0", X86, None),
            ("1.0.0", ARM, None),
            ("2.0.0", X86, None),
        ],
        assign: Assign::Direct,
        channel: None,
        want: Some(("1.0.0", ARM)),
        excluded: &[("2.0.0", "no aarch64 platform")],
    },
    Row {
        what: "min_kernel above the host's kernel; an older rejected version is not listed",
        host: (X86, "5.4.0-100-generic", true),
        versions: &[
            ("0.9.0", X86, Some(r#"{"min_kernel":"6.0"}"#)),
            ("1.0.0", X86, None),
            ("2.0.0", X86, Some(r#"{"min_kernel":"5.8"}"#)),
        ],
        assign: Assign::Direct,
        channel: None,
        want: Some(("1.0.0", X86)),
        excluded: &[("2.0.0", "kernel 5.4.0 < min_kernel 5.8")],
    },
    Row {
        what: "min_kernel equal to the host's kernel (missing components are 0)",
        host: (X86, "5.8.0-1-aws", true),
        versions: &[("1.0.0", X86, Some(r#"{"min_kernel":"5.8"}"#))],
        assign: Assign::Direct,
        channel: None,
        want: Some(("1.0.0", X86)),
        excluded: &[],
    },
    Row {
        what: "min_kernel by patch level",
        host: (X86, "5.15.0", true),
        versions: &[
            ("1.0.0", X86, None),
            ("1.1.0", X86, Some(r#"{"min_kernel":"5.15.1"}"#)),
        ],
        assign: Assign::Direct,
        channel: None,
        want: Some(("1.0.0", X86)),
        excluded: &[("1.1.0", "kernel 5.15.0 < min_kernel 5.15.1")],
    },
    Row {
        what: "max_kernel below the host's kernel",
        host: (X86, "7.0.0", true),
        versions: &[
            ("1.0.0", X86, None),
            ("1.5.0", X86, Some(r#"{"max_kernel":"6.99"}"#)),
        ],
        assign: Assign::Direct,
        channel: None,
        want: Some(("1.0.0", X86)),
        excluded: &[("1.5.0", "kernel 7.0.0 > max_kernel 6.99")],
    },
    Row {
        what: "max_kernel 6.99 admits 6.99.x",
        host: (X86, "6.99.5-custom", true),
        versions: &[
            ("1.0.0", X86, None),
            ("1.5.0", X86, Some(r#"{"max_kernel":"6.99"}"#)),
        ],
        assign: Assign::Direct,
        channel: None,
        want: Some(("1.5.0", X86)),
        excluded: &[],
    },
    Row {
        what: "max_kernel 6.1 refuses 6.2",
        host: (X86, "6.2.0-39-generic", true),
        versions: &[
            ("1.0.0", X86, None),
            (
                "1.1.0",
                X86,
                Some(r#"{"min_kernel":"5.8","max_kernel":"6.1"}"#),
            ),
        ],
        assign: Assign::Direct,
        channel: None,
        want: Some(("1.0.0", X86)),
        excluded: &[("1.1.0", "kernel 6.2.0 > max_kernel 6.1")],
    },
    Row {
        what: "btf required on a host without BTF",
        host: (X86, "5.15.0", false),
        versions: &[
            ("1.0.0", X86, None),
            ("2.0.0", X86, Some(r#"{"btf":"required"}"#)),
        ],
        assign: Assign::Direct,
        channel: None,
        want: Some(("1.0.0", X86)),
        excluded: &[("2.0.0", "btf required")],
    },
    Row {
        what: "btf required on a host with BTF",
        host: (X86, "5.15.0", true),
        versions: &[
            ("1.0.0", X86, None),
            ("2.0.0", X86, Some(r#"{"btf":"required"}"#)),
        ],
        assign: Assign::Direct,
        channel: None,
        want: Some(("2.0.0", X86)),
        excluded: &[],
    },
    Row {
        what: "btf optional on a host without BTF",
        host: (X86, "5.15.0", false),
        versions: &[("1.0.0", X86, Some(r#"{"btf":"optional"}"#))],
        assign: Assign::Direct,
        channel: None,
        want: Some(("1.0.0", X86)),
        excluded: &[],
    },
    Row {
        what: "every version rejected",
        host: (X86, "4.19.0", false),
        versions: &[
            ("1.0.0", ARM, None),
            ("2.0.0", X86, Some(r#"{"min_kernel":"5.0"}"#)),
            ("3.0.0", X86, Some(r#"{"btf":"required"}"#)),
        ],
        assign: Assign::Direct,
        channel: None,
        want: None,
        excluded: &[
            ("1.0.0", "no x86_64 platform"),
            ("2.0.0", "kernel 4.19.0 < min_kernel 5.0"),
            ("3.0.0", "btf required"),
        ],
    },
    Row {
        what: "semver order, not string order",
        host: K515,
        versions: &[("1.10.0", X86, None), ("1.9.0", X86, None)],
        assign: Assign::Direct,
        channel: None,
        want: Some(("1.10.0", X86)),
        excluded: &[],
    },
    Row {
        what: "a pre-release sorts below its release",
        host: K515,
        versions: &[("1.0.0", X86, None), ("1.0.0-rc.1", X86, None)],
        assign: Assign::Direct,
        channel: None,
        want: Some(("1.0.0", X86)),
        excluded: &[],
    },
    Row {
        what: "non-semver versions compare byte-wise",
        host: K515,
        versions: &[("build-9", X86, None), ("build-10", X86, None)],
        assign: Assign::Direct,
        channel: None,
        want: Some(("build-9", X86)),
        excluded: &[],
    },
    Row {
        what: "semver against non-semver compares byte-wise",
        host: K515,
        versions: &[("edge", X86, None), ("1.0.0", X86, None)],
        assign: Assign::Direct,
        channel: None,
        want: Some(("edge", X86)),
        excluded: &[],
    },
    Row {
        what: "a selector-assigned name resolves like a direct one",
        host: K515,
        versions: &[
            ("1.0.0", X86, None),
            ("1.2.0", X86, None),
            ("1.3.0", ARM, None),
        ],
        assign: Assign::Selector,
        channel: None,
        want: Some(("1.2.0", X86)),
        excluded: &[("1.3.0", "no x86_64 platform")],
    },
    Row {
        what: "a channel gives its version, not the newest",
        host: K515,
        versions: &[("1.0.0", X86, None), ("2.0.0", X86, None)],
        assign: Assign::Channel("stable"),
        channel: Some(("stable", "1.0.0")),
        want: Some(("1.0.0", X86)),
        excluded: &[],
    },
    Row {
        what: "a channel that is not set",
        host: K515,
        versions: &[("1.0.0", X86, None)],
        assign: Assign::Channel("beta"),
        channel: None,
        want: None,
        excluded: &[("", "channel beta not set")],
    },
    Row {
        what: "a channel's version without the host's platform",
        host: K515,
        versions: &[("1.0.0", X86, None), ("2.0.0", ARM, None)],
        assign: Assign::Channel("stable"),
        channel: Some(("stable", "2.0.0")),
        want: None,
        excluded: &[("2.0.0", "no x86_64 platform")],
    },
    Row {
        what: "a channel's version over max_kernel",
        host: (X86, "7.0.0", true),
        versions: &[("1.0.0", X86, Some(r#"{"max_kernel":"6.99"}"#))],
        assign: Assign::Channel("stable"),
        channel: Some(("stable", "1.0.0")),
        want: None,
        excluded: &[("1.0.0", "kernel 7.0.0 > max_kernel 6.99")],
    },
    Row {
        what: "a channel on a multi-arch version gives the host's platform",
        host: (ARM, "6.6.0", true),
        versions: &[
            ("1.0.0", X86, None),
            ("1.0.0", ARM, None),
            ("2.0.0", ARM, None),
        ],
        assign: Assign::Channel("stable"),
        channel: Some(("stable", "1.0.0")),
        want: Some(("1.0.0", ARM)),
        excluded: &[],
    },
];

#[tokio::test]
async fn desired_resolution_table() {
    let x = Ctx::start().await;
    let mut failures = Vec::new();
    for (n, row) in ROWS.iter().enumerate() {
        let name = format!("res/row-{n:02}");
        let host = format!("res-host-{n:02}");
        let (arch, kernel, btf) = row.host;
        x.register(
            &host,
            &facts(arch, kernel, btf, json!({ "row": n.to_string() })),
        )
        .await;
        // (version, arch) -> id
        let mut ids: Vec<((&str, &str), String)> = Vec::new();
        for (version, varch, req) in row.versions {
            let req = req.map(|r| serde_json::from_str::<Value>(r).expect("requirements JSON"));
            let a = x.create_req(&name, version, varch, req).await;
            ids.push(((*version, *varch), str_of(&a, "id").to_string()));
        }
        let any_id = ids[0].1.clone();
        let mut selector_id = None;
        match row.assign {
            Assign::Direct => x.associate(&any_id, &host, None).await,
            Assign::Channel(ch) => x.associate(&any_id, &host, Some(ch)).await,
            Assign::Selector => {
                let s = x.selector(&any_id, &format!("row={n}"), None).await;
                selector_id = Some(str_of(&s, "selector_id").to_string());
            }
        }
        if let Some((ch, version)) = row.channel {
            x.channel_ok(&name, ch, version).await;
        }

        let d = x.desired(&host).await;
        let entries = desired_entries(&d, &name);
        let id_of = |v: &str, a: &str| {
            ids.iter()
                .find(|((vv, aa), _)| *vv == v && *aa == a)
                .map(|(_, id)| id.clone())
        };
        let mut problems = Vec::new();
        match row.want {
            None => {
                if !entries.is_empty() {
                    problems.push(format!("expected no artifact, got {entries:?}"));
                }
            }
            Some((version, warch)) => {
                if entries.len() != 1 {
                    problems.push(format!("expected one artifact, got {entries:?}"));
                } else {
                    let e = entries[0];
                    if e["version"] != version || e["architecture"] != warch {
                        problems.push(format!("expected {version} {warch}, got {e}"));
                    }
                    if e["id"].as_str() != id_of(version, warch).as_deref() {
                        problems.push(format!("id of {version} {warch}: got {e}"));
                    }
                    let via: Vec<String> = e["via"]
                        .as_array()
                        .map(|v| {
                            v.iter()
                                .filter_map(Value::as_str)
                                .map(str::to_string)
                                .collect()
                        })
                        .unwrap_or_default();
                    let want_via = match row.assign {
                        Assign::Direct => vec!["direct".to_string()],
                        Assign::Selector => {
                            vec![format!(
                                "selector:{}",
                                selector_id.clone().unwrap_or_default()
                            )]
                        }
                        Assign::Channel(ch) => vec![format!("channel:{ch}")],
                    };
                    if via != want_via {
                        problems.push(format!("via {via:?}, expected {want_via:?}"));
                    }
                    let want_channel = match row.assign {
                        Assign::Channel(ch) => json!(ch),
                        _ => Value::Null,
                    };
                    if e["channel"] != want_channel {
                        problems.push(format!("channel {}, expected {want_channel}", e["channel"]));
                    }
                }
            }
        }
        let got_ex = excluded_of(&d, &name);
        let mut want_ex: Vec<(String, String)> = row
            .excluded
            .iter()
            .map(|(v, r)| (v.to_string(), r.to_string()))
            .collect();
        want_ex.sort();
        let matches = got_ex.len() == want_ex.len()
            && got_ex
                .iter()
                .zip(&want_ex)
                .all(|(g, w)| g.1 == w.1 && (w.0.is_empty() || g.0 == w.0));
        if !matches {
            problems.push(format!("excluded {got_ex:?}, expected {want_ex:?}"));
        }
        // Excluded single-platform versions passed over for a requirement
        // name their manifest (the no-platform case has its own test).
        for e in d["excluded"].as_array().into_iter().flatten() {
            let reason = e["reason"].as_str().unwrap_or_default();
            if e["name"] != name.as_str() || reason.ends_with(" platform") {
                continue;
            }
            let v = e["version"].as_str().unwrap_or_default();
            let arches: Vec<&str> = row
                .versions
                .iter()
                .filter(|(vv, _, _)| *vv == v)
                .map(|(_, a, _)| *a)
                .collect();
            if let [only] = arches[..] {
                if e["id"].as_str() != id_of(v, only).as_deref() || e["architecture"] != only {
                    problems.push(format!(
                        "excluded entry {e}: expected id and architecture of {v} {only}"
                    ));
                }
            }
        }
        if !problems.is_empty() {
            failures.push(format!(
                "row {n} ({}): {}\n    answer: {d}",
                row.what,
                problems.join("; ")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        ROWS.len(),
        failures.join("\n")
    );
}

/// The contract's example: an excluded version without the host's
/// platform still names the manifest it has (`"id":"sha256:..",
/// "architecture":"aarch64","reason":"no x86_64 platform"`).
#[tokio::test]
async fn an_excluded_version_without_the_hosts_platform_names_its_manifest() {
    let x = Ctx::start().await;
    let v1 = x.create("noplat/prog", "1.0.0", "x86_64").await;
    let v2 = x.create("noplat/prog", "1.3.0", "aarch64").await;
    x.register_simple("noplat-1", json!({})).await;
    x.associate(str_of(&v1, "id"), "noplat-1", None).await;
    let d = x.desired("noplat-1").await;
    let ex: Vec<&Value> = d["excluded"]
        .as_array()
        .expect("excluded")
        .iter()
        .filter(|e| e["name"] == "noplat/prog")
        .collect();
    assert_eq!(ex.len(), 1, "{d}");
    assert_eq!(ex[0]["version"], "1.3.0");
    assert_eq!(ex[0]["reason"], "no x86_64 platform");
    assert_eq!(ex[0]["id"], v2["id"], "{d}");
    assert_eq!(ex[0]["architecture"], "aarch64", "{d}");
}

#[tokio::test]
async fn desired_is_sorted_by_name_and_lists_at_most_ten_exclusions_per_name() {
    let x = Ctx::start().await;
    x.register_simple("many-1", json!({})).await;
    let base = x.create("zz/many", "1.0.0", "x86_64").await;
    for i in 1..=12 {
        x.create("zz/many", &format!("1.{i}.0"), "aarch64").await;
    }
    let other = x.create("aa/first", "1.0.0", "x86_64").await;
    x.associate(str_of(&base, "id"), "many-1", None).await;
    x.associate(str_of(&other, "id"), "many-1", None).await;
    let d = x.desired("many-1").await;
    let names: Vec<&str> = d["artifacts"]
        .as_array()
        .expect("artifacts")
        .iter()
        .map(|a| a["name"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(names, ["aa/first", "zz/many"], "{d}");
    assert_eq!(desired_entries(&d, "zz/many")[0]["version"], "1.0.0");
    let ex = excluded_of(&d, "zz/many");
    assert_eq!(ex.len(), 10, "at most 10 per name: {d}");
    assert!(ex.iter().all(|(_, r)| r == "no x86_64 platform"), "{d}");
    let newer: BTreeSet<String> = (1..=12).map(|i| format!("1.{i}.0")).collect();
    assert!(ex.iter().all(|(v, _)| newer.contains(v)), "{d}");
}

// ---- ETag, If-None-Match, long polls ----------------------------------------------

#[tokio::test]
async fn for_host_and_desired_have_strong_etags_and_answer_304() {
    let x = Ctx::start().await;
    let a = x.create("etag/prog", "1.0.0", "x86_64").await;
    x.register_simple("etag-1", json!({"env": "prod"})).await;
    x.associate(str_of(&a, "id"), "etag-1", None).await;
    for path in ["/artifacts/for-host/etag-1", "/hosts/etag-1/desired"] {
        let (etag, body) = x.get_tagged(path).await;
        let (again, body2) = x.get_tagged(path).await;
        assert_eq!((&etag, &body), (&again, &body2), "{path}: stable answer");

        let r = x.get_if_none_match(path, &etag).await;
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED, "{path}");
        assert_eq!(header(&r, "etag").as_deref(), Some(etag.as_str()));
        assert!(r.bytes().await.expect("body").is_empty(), "304 has no body");
        // A list with the current tag matches too.
        let r = x
            .get_if_none_match(path, &format!("\"0123\", {etag}"))
            .await;
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED, "{path}: list");
        let r = x.get_if_none_match(path, "\"not-the-etag\"").await;
        assert_eq!(r.status(), StatusCode::OK, "{path}: other tag");
        assert_eq!(r.bytes().await.expect("body").to_vec(), body);
    }

    // A change, a new tag; the old one no longer matches.
    let (fh_before, _) = x.get_tagged("/artifacts/for-host/etag-1").await;
    let (d_before, _) = x.get_tagged("/hosts/etag-1/desired").await;
    let b = x.create("etag/second", "1.0.0", "x86_64").await;
    x.selector(str_of(&b, "id"), "env=prod", None).await;
    let (fh_after, _) = x.get_tagged("/artifacts/for-host/etag-1").await;
    let (d_after, _) = x.get_tagged("/hosts/etag-1/desired").await;
    assert_ne!(fh_before, fh_after);
    assert_ne!(d_before, d_after);
    let r = x
        .get_if_none_match("/hosts/etag-1/desired", &d_before)
        .await;
    assert_eq!(r.status(), StatusCode::OK);
}

/// Spawns a long-poll GET on its own client (its own connection).
fn spawn_waiter(
    url: String,
    etag: String,
) -> tokio::task::JoinHandle<(StatusCode, Option<String>, Vec<u8>, Duration)> {
    tokio::spawn(async move {
        let c = client();
        let t = Instant::now();
        let r = c
            .get(&url)
            .header("if-none-match", &etag)
            .send()
            .await
            .expect("send waiter");
        let status = r.status();
        let tag = header(&r, "etag");
        let body = r.bytes().await.expect("body").to_vec();
        (status, tag, body, t.elapsed())
    })
}

async fn join_waiter(
    h: tokio::task::JoinHandle<(StatusCode, Option<String>, Vec<u8>, Duration)>,
) -> (StatusCode, Option<String>, Vec<u8>, Duration) {
    tokio::time::timeout(LIVENESS, h)
        .await
        .expect("the waiter got no answer within the liveness bound")
        .expect("waiter task")
}

#[tokio::test]
async fn a_held_desired_waiter_gets_the_new_answer_after_a_write() {
    let x = Ctx::start().await;
    let v1 = x.create("poll/prog", "1.0.0", "x86_64").await;
    x.register_simple("poll-1", json!({})).await;
    x.associate(str_of(&v1, "id"), "poll-1", None).await;
    let (etag, _) = x.get_tagged("/hosts/poll-1/desired").await;
    let waiter = spawn_waiter(x.url("/hosts/poll-1/desired?wait=30s"), etag.clone());
    // Give it time to be held (if it is not yet, it sees the new answer
    // at once: the same outcome).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiter.is_finished(),
        "the waiter answered without a change"
    );
    let t = Instant::now();
    let v2 = x.create("poll/prog", "1.1.0", "x86_64").await; // another connection
    let (status, tag, body, _) = join_waiter(waiter).await;
    assert!(t.elapsed() < LIVENESS);
    assert_eq!(status, StatusCode::OK);
    let v: Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(desired_entries(&v, "poll/prog")[0]["id"], v2["id"], "{v}");
    assert_eq!(tag.as_deref(), Some(etag_for(&body).as_str()));
    assert_ne!(tag.as_deref(), Some(etag.as_str()));
}

#[tokio::test]
async fn a_held_for_host_waiter_gets_the_new_answer_after_a_write() {
    let x = Ctx::start().await;
    let a = x.create("pollfh/prog", "1.0.0", "x86_64").await;
    let b = x.create("pollfh/other", "1.0.0", "x86_64").await;
    x.associate(str_of(&a, "id"), "pollfh-1", None).await;
    let (etag, _) = x.get_tagged("/artifacts/for-host/pollfh-1").await;
    let waiter = spawn_waiter(x.url("/artifacts/for-host/pollfh-1?wait=30s"), etag.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiter.is_finished(),
        "the waiter answered without a change"
    );
    x.associate(str_of(&b, "id"), "pollfh-1", None).await;
    let (status, tag, body, _) = join_waiter(waiter).await;
    assert_eq!(status, StatusCode::OK);
    let v: Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(names_of(&v["artifacts"]), ["pollfh/other", "pollfh/prog"]);
    assert_eq!(tag.as_deref(), Some(etag_for(&body).as_str()));
}

/// Holds a desired waiter on `host`, runs `write`, and asserts the waiter
/// got a new answer (200, a new ETag) within the liveness bound.
async fn assert_wakes<F, Fut>(x: &Ctx, host: &str, what: &str, write: F) -> Value
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let path = format!("/hosts/{host}/desired");
    let (etag, _) = x.get_tagged(&path).await;
    let waiter = spawn_waiter(x.url(&format!("{path}?wait=30s")), etag.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiter.is_finished(), "{what}: answered before the write");
    write().await;
    let (status, tag, body, _) = join_waiter(waiter).await;
    assert_eq!(status, StatusCode::OK, "{what} did not wake the waiter");
    assert_ne!(tag.as_deref(), Some(etag.as_str()), "{what}");
    serde_json::from_slice(&body).expect("JSON")
}

#[tokio::test]
async fn every_kind_of_write_wakes_a_desired_waiter() {
    let x = Ctx::start().await;
    let a = x.create("wake/prog", "1.0.0", "x86_64").await;
    let id = str_of(&a, "id").to_string();
    let b = x.create("wake/selected", "1.0.0", "x86_64").await;
    x.create("wake/chan", "1.0.0", "aarch64").await;
    let c = x.create("wake/chan", "2.0.0", "aarch64").await;
    x.register_simple("wake-1", json!({"env": "prod"})).await;

    assert_wakes(&x, "wake-1", "a direct association", || {
        x.associate(&id, "wake-1", None)
    })
    .await;
    assert_wakes(&x, "wake-1", "a selector", || async {
        x.selector(str_of(&b, "id"), "env=prod", None).await;
    })
    .await;
    assert_wakes(&x, "wake-1", "new host facts", || async {
        x.register(
            "wake-1",
            &facts("aarch64", "5.15.0", true, json!({"env": "prod"})),
        )
        .await;
    })
    .await;
    assert_wakes(&x, "wake-1", "a channel association", || {
        x.associate(str_of(&c, "id"), "wake-1", Some("stable"))
    })
    .await;
    let v = assert_wakes(&x, "wake-1", "a channel move", || async {
        x.channel_ok("wake/chan", "stable", "1.0.0").await;
    })
    .await;
    assert_eq!(desired_entries(&v, "wake/chan")[0]["version"], "1.0.0");
    assert_wakes(&x, "wake-1", "a new version", || async {
        x.create("wake/selected", "1.1.0", "aarch64").await;
    })
    .await;
    assert_wakes(&x, "wake-1", "a removed selector", || async {
        let list = x
            .get_ok(&format!("/artifacts/{}/selectors", str_of(&b, "id")))
            .await;
        let sid = str_of(&list["selectors"][0], "selector_id").to_string();
        let r = x
            .delete(&format!("/artifacts/{}/selectors/{sid}", str_of(&b, "id")))
            .await;
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
    })
    .await;
}

#[tokio::test]
async fn a_waiter_with_no_change_gets_304_when_the_wait_is_up() {
    let x = Ctx::start().await;
    x.register_simple("idle-1", json!({})).await;
    for path in ["/hosts/idle-1/desired", "/artifacts/for-host/idle-1"] {
        let (etag, _) = x.get_tagged(path).await;
        let t = Instant::now();
        let r = x.get_if_none_match(&format!("{path}?wait=1s"), &etag).await;
        let took = t.elapsed();
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED, "{path}");
        assert_eq!(header(&r, "etag").as_deref(), Some(etag.as_str()));
        assert!(
            took >= Duration::from_millis(900),
            "{path}: held only {took:?}"
        );
        assert!(took < LIVENESS, "{path}: {took:?}");
    }
}

#[tokio::test]
async fn wait_without_a_matching_etag_answers_at_once_and_bad_waits_are_400() {
    let x = Ctx::start().await;
    x.register_simple("w-1", json!({})).await;
    for path in ["/hosts/w-1/desired", "/artifacts/for-host/w-1"] {
        for wait in ["30s", "30", "500ms", "1m", "60s"] {
            let t = Instant::now();
            let r = x.get(&format!("{path}?wait={wait}")).await;
            assert_eq!(r.status(), StatusCode::OK, "{path}?wait={wait}");
            let r = x
                .get_if_none_match(&format!("{path}?wait={wait}"), "\"stale\"")
                .await;
            assert_eq!(r.status(), StatusCode::OK, "{path}?wait={wait} stale tag");
            assert!(t.elapsed() < LIVENESS, "{path}?wait={wait} was held");
        }
        for wait in ["61s", "61", "2m", "60001ms", "abc", "-1", "1h", "", "5x"] {
            let r = x.get(&format!("{path}?wait={wait}")).await;
            assert_rest_error(r, StatusCode::BAD_REQUEST, "invalid_wait").await;
        }
    }
}

#[tokio::test]
async fn desired_of_an_unknown_host_is_404_host_not_found() {
    let x = Ctx::start().await;
    for path in [
        "/hosts/nobody/desired",
        "/hosts/nobody/desired?wait=5s",
        "/hosts/nobody",
        "/hosts/nobody/deployments",
    ] {
        let r = x.get(path).await;
        assert_rest_error(r, StatusCode::NOT_FOUND, "host_not_found").await;
    }
    let a = x.create("nobody/prog", "1.0.0", "x86_64").await;
    let r = x.report("nobody", str_of(&a, "id"), "loaded", "").await;
    assert_rest_error(r, StatusCode::NOT_FOUND, "host_not_found").await;
}

#[tokio::test]
async fn a_watcher_over_the_cap_is_429_too_many_watchers() {
    let x = Ctx::start_with_env(&[("BPF_REGISTRY_MAX_WATCHERS", "2")]).await;
    x.register_simple("cap-1", json!({})).await;
    let (etag, _) = x.get_tagged("/hosts/cap-1/desired").await;
    let url = x.url("/hosts/cap-1/desired?wait=30s");
    // Three at once: exactly one is refused, two are held.
    let waiters: Vec<_> = (0..3)
        .map(|_| spawn_waiter(url.clone(), etag.clone()))
        .collect();
    let deadline = Instant::now() + LIVENESS;
    while waiters.iter().all(|w| !w.is_finished()) {
        assert!(
            Instant::now() < deadline,
            "no waiter of three was refused with the cap at 2"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut held = Vec::new();
    for w in waiters {
        if w.is_finished() {
            let (status, _, body, _) = w.await.expect("waiter");
            assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
            let v: Value = serde_json::from_slice(&body).expect("JSON error");
            assert_eq!(v["error"], "too_many_watchers", "{v}");
        } else {
            held.push(w);
        }
    }
    assert_eq!(held.len(), 2, "one refused, two held");
    // Two are held: a fourth is refused at once.
    let r = x
        .get_if_none_match("/hosts/cap-1/desired?wait=30s", &etag)
        .await;
    assert_rest_error(r, StatusCode::TOO_MANY_REQUESTS, "too_many_watchers").await;
    // Plain reads are not watchers.
    assert_eq!(x.get("/hosts/cap-1/desired").await.status(), StatusCode::OK);
    let r = x.get_if_none_match("/hosts/cap-1/desired", &etag).await;
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);

    // A change of the answer releases them (labels alone are not in it);
    // their places are free again.
    let a = x.create("cap/prog", "1.0.0", "x86_64").await;
    x.associate(str_of(&a, "id"), "cap-1", None).await;
    for w in held {
        let (status, _, _, _) = join_waiter(w).await;
        assert_eq!(status, StatusCode::OK);
    }
    let (etag, _) = x.get_tagged("/hosts/cap-1/desired").await;
    let r = x
        .get_if_none_match("/hosts/cap-1/desired?wait=1s", &etag)
        .await;
    assert_eq!(
        r.status(),
        StatusCode::NOT_MODIFIED,
        "room for a waiter again"
    );
}

/// One HTTP/1.1 response read off a raw connection: status, headers
/// (lowercased names) and body (by `content-length`).
async fn read_raw_response(
    r: &mut tokio::io::BufReader<tokio::net::TcpStream>,
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _};
    let mut line = String::new();
    r.read_line(&mut line).await.expect("status line");
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).await.expect("header line");
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':').expect("header");
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let len = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .map(|(_, v)| v.parse::<usize>().expect("length"))
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).await.expect("body");
    (status, headers, body)
}

fn raw_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// A long-poll on a plain HTTP/1.1 connection is parked by the front; the
/// connection goes on after its answer: a request pipelined behind it is
/// answered after it, in order, and a request the front does not serve
/// (handed to hyper with the bytes already read) works on it too.
#[tokio::test]
async fn a_parked_long_poll_answers_in_order_and_its_connection_goes_on() {
    use tokio::io::AsyncWriteExt as _;
    let x = Ctx::start().await;
    let v1 = x.create("park/prog", "1.0.0", "x86_64").await;
    x.register_simple("park-1", json!({})).await;
    x.associate(str_of(&v1, "id"), "park-1", None).await;
    let tcp = tokio::net::TcpStream::connect(x.s.addr)
        .await
        .expect("connect");
    let mut conn = tokio::io::BufReader::new(tcp);
    let prime = "GET /hosts/park-1/desired HTTP/1.1\r\nHost: t\r\n\r\n";
    conn.get_mut().write_all(prime.as_bytes()).await.unwrap();
    let (status, headers, body) = read_raw_response(&mut conn).await;
    assert_eq!(status, 200);
    let etag = raw_header(&headers, "etag").expect("etag").to_string();
    assert_eq!(etag, etag_for(&body));
    assert_eq!(
        raw_header(&headers, "content-type"),
        Some("application/json")
    );
    assert!(
        raw_header(&headers, "x-request-id").is_some(),
        "{headers:?}"
    );
    // The long-poll and a request behind it, in one write.
    let pipelined = format!(
        "GET /hosts/park-1/desired?wait=30s HTTP/1.1\r\nHost: t\r\nIf-None-Match: {etag}\r\n\r\n\
         GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
    );
    conn.get_mut()
        .write_all(pipelined.as_bytes())
        .await
        .unwrap();
    let early =
        tokio::time::timeout(Duration::from_millis(400), read_raw_response(&mut conn)).await;
    assert!(early.is_err(), "answered before any change");
    let v2 = x.create("park/prog", "1.1.0", "x86_64").await; // another connection
    let (status, headers, body) = tokio::time::timeout(LIVENESS, read_raw_response(&mut conn))
        .await
        .expect("the parked long-poll got no answer after the write");
    assert_eq!(status, 200);
    assert_ne!(raw_header(&headers, "etag"), Some(etag.as_str()));
    let v: Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(desired_entries(&v, "park/prog")[0]["id"], v2["id"], "{v}");
    let (status, _, _) = read_raw_response(&mut conn).await;
    assert_eq!(status, 200, "the pipelined request after the long-poll");
    // Not the front's: hyper serves it on the same connection.
    let other = "GET /hosts/park-1 HTTP/1.1\r\nHost: t\r\n\r\n";
    conn.get_mut().write_all(other.as_bytes()).await.unwrap();
    let (status, _, body) = read_raw_response(&mut conn).await;
    assert_eq!(status, 200);
    let host: Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(host["host_id"], "park-1");
    // And a watchable read after that is hyper's too, with the same answer.
    conn.get_mut().write_all(prime.as_bytes()).await.unwrap();
    let (status, headers, _) = read_raw_response(&mut conn).await;
    assert_eq!(status, 200);
    assert_ne!(raw_header(&headers, "etag"), Some(etag.as_str()));
}

/// A parked long-poll whose client goes away frees its watcher place, and
/// one whose time runs out answers 304 with its ETag; `Connection: close`
/// closes after the answer.
#[tokio::test]
async fn a_parked_long_poll_frees_its_place_when_the_client_leaves() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let x = Ctx::start_with_env(&[("BPF_REGISTRY_MAX_WATCHERS", "1")]).await;
    x.register_simple("leave-1", json!({})).await;
    let (etag, _) = x.get_tagged("/hosts/leave-1/desired").await;
    let wait = |secs: u32, extra: &str| {
        format!(
            "GET /hosts/leave-1/desired?wait={secs}s HTTP/1.1\r\nHost: t\r\nIf-None-Match: {etag}\r\n{extra}\r\n"
        )
    };
    let mut first = tokio::net::TcpStream::connect(x.s.addr)
        .await
        .expect("connect");
    first.write_all(wait(30, "").as_bytes()).await.unwrap();
    // Held: the only place is taken.
    let deadline = Instant::now() + LIVENESS;
    loop {
        let r = x
            .get_if_none_match("/hosts/leave-1/desired?wait=1s", &etag)
            .await;
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the first long-poll was never held"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(first);
    // Its place comes back once the server sees the close.
    let deadline = Instant::now() + LIVENESS;
    loop {
        let r = x
            .get_if_none_match("/hosts/leave-1/desired?wait=1ms", &etag)
            .await;
        if r.status() == StatusCode::NOT_MODIFIED {
            break;
        }
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(
            Instant::now() < deadline,
            "the place of a client that left was kept"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Time runs out: 304 with the ETag, and the close asked for.
    let tcp = tokio::net::TcpStream::connect(x.s.addr)
        .await
        .expect("connect");
    let mut conn = tokio::io::BufReader::new(tcp);
    conn.get_mut()
        .write_all(wait(1, "Connection: close\r\n").as_bytes())
        .await
        .unwrap();
    let (status, headers, body) = tokio::time::timeout(LIVENESS, read_raw_response(&mut conn))
        .await
        .expect("no 304 at the end of the wait");
    assert_eq!(status, 304);
    assert_eq!(raw_header(&headers, "etag"), Some(etag.as_str()));
    assert_eq!(raw_header(&headers, "connection"), Some("close"));
    assert!(body.is_empty());
    let mut rest = Vec::new();
    let n = tokio::time::timeout(LIVENESS, conn.read_to_end(&mut rest))
        .await
        .expect("the connection was not closed")
        .unwrap_or(0);
    assert_eq!(n, 0, "bytes after a closing answer");
}

/// The default watcher cap (10,000+) is above the request cap (1,024):
/// held waiters must not take request slots, or the watcher cap could
/// never be reached. (An interpretation of the contract; see the report.)
#[tokio::test]
async fn held_waiters_do_not_count_against_max_concurrent_requests() {
    let x = Ctx::start_with_env(&[("BPF_REGISTRY_MAX_CONCURRENT_REQUESTS", "4")]).await;
    x.register_simple("many-w", json!({})).await;
    let (etag, _) = x.get_tagged("/hosts/many-w/desired").await;
    let waiters: Vec<_> = (0..8)
        .map(|_| spawn_waiter(x.url("/hosts/many-w/desired?wait=30s"), etag.clone()))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..8 {
        assert_eq!(x.get("/hosts/many-w").await.status(), StatusCode::OK);
    }
    let a = x.create("many/prog", "1.0.0", "x86_64").await;
    x.associate(str_of(&a, "id"), "many-w", None).await;
    for w in waiters {
        let (status, _, body, _) = join_waiter(w).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "a held waiter was refused: {}",
            String::from_utf8_lossy(&body)
        );
    }
}

// ---- deployments and rollout -------------------------------------------------------

#[tokio::test]
async fn deployments_last_report_wins_and_history_is_bounded_newest_first() {
    let x = Ctx::start().await;
    let a = x.create("dep/prog", "1.2.0", "x86_64").await;
    let b = x.create("dep/other", "0.1.0", "x86_64").await;
    let (ida, idb) = (str_of(&a, "id").to_string(), str_of(&b, "id").to_string());
    x.register_simple("dep-1", json!({})).await;

    let d = x.report_ok("dep-1", &ida, "loaded", "attached").await;
    assert_eq!(d["host_id"], "dep-1");
    assert_eq!(d["artifact_id"], ida.as_str());
    assert_eq!(d["state"], "loaded");
    assert_eq!(d["message"], "attached");
    assert_eq!(d["attach_point"], "eth0/xdp");
    assert!(is_rfc3339(&d["reported_at"]), "{d}");
    let f = x
        .report_ok("dep-1", &ida, "failed", "verifier said no")
        .await;
    x.report_ok("dep-1", &idb, "unloaded", "").await;

    let all = x.get_ok("/hosts/dep-1/deployments").await;
    assert_eq!(all["host_id"], "dep-1");
    let current = all["deployments"].as_array().expect("deployments");
    assert_eq!(current.len(), 2, "one per artifact: {all}");
    let cur_a = current
        .iter()
        .find(|c| c["artifact_id"] == ida.as_str())
        .expect("dep/prog");
    assert_eq!(cur_a, &f, "the last report wins");
    let h: Vec<&str> = all["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|e| e["state"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(h, ["unloaded", "failed", "loaded"], "newest first: {all}");

    for i in 0..105 {
        x.report_ok("dep-1", &ida, "loaded", &format!("r{i}")).await;
    }
    let all = x.get_ok("/hosts/dep-1/deployments").await;
    let hist = all["history"].as_array().expect("history");
    assert_eq!(hist.len(), 100, "the last 100 reports");
    let msgs: Vec<&str> = hist
        .iter()
        .map(|e| e["message"].as_str().unwrap_or_default())
        .collect();
    let want: Vec<String> = (5..105).rev().map(|i| format!("r{i}")).collect();
    assert_eq!(msgs, want, "newest first");
    let times: Vec<&str> = hist
        .iter()
        .map(|e| e["reported_at"].as_str().unwrap_or_default())
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");

    // ?repository= names the copy.
    let r =
        x.c.put(x.url(&format!("/hosts/dep-1/deployments/{ida}")))
            .query(&[("repository", "dep/prog")])
            .json(&json!({"state": "loaded"}))
            .send()
            .await
            .expect("send");
    assert_eq!(
        json_of(r, StatusCode::OK).await["artifact_id"],
        ida.as_str()
    );
    let r =
        x.c.put(x.url(&format!("/hosts/dep-1/deployments/{ida}")))
            .query(&[("repository", "dep/other")])
            .json(&json!({"state": "loaded"}))
            .send()
            .await
            .expect("send");
    assert_rest_error(r, StatusCode::NOT_FOUND, "not_found").await;
}

/// The contract's deployment JSON names the artifact's repository and
/// version: `{"host_id","artifact_id","name","version","state",...}`.
#[tokio::test]
async fn the_deployment_json_names_the_artifact_and_its_version() {
    let x = Ctx::start().await;
    let a = x.create("depname/prog", "1.2.0", "x86_64").await;
    let id = str_of(&a, "id").to_string();
    x.register_simple("depname-1", json!({})).await;
    let d = x.report_ok("depname-1", &id, "loaded", "").await;
    let listed = x.get_ok("/hosts/depname-1/deployments").await;
    for (what, v) in [
        ("PUT answer", &d),
        ("current", &listed["deployments"][0]),
        ("history", &listed["history"][0]),
    ] {
        assert_eq!(v["name"], "depname/prog", "{what}: {v}");
        assert_eq!(v["version"], "1.2.0", "{what}: {v}");
    }
}

#[tokio::test]
async fn bad_deployment_reports_are_refused() {
    let x = Ctx::start().await;
    let a = x.create("badrep/prog", "1.0.0", "x86_64").await;
    let id = str_of(&a, "id").to_string();
    x.register_simple("rep-1", json!({})).await;
    let unknown = sha256(b"no such artifact");
    let r = x.report("rep-1", &unknown, "loaded", "").await;
    assert_rest_error(r, StatusCode::NOT_FOUND, "not_found").await;
    let r = x.report("rep-unregistered", &id, "loaded", "").await;
    assert_rest_error(r, StatusCode::NOT_FOUND, "host_not_found").await;
    let r = x.report("rep-1", "not-a-digest", "loaded", "").await;
    assert_rest_error(r, StatusCode::BAD_REQUEST, "invalid_id").await;
    let path = format!("/hosts/rep-1/deployments/{id}");
    for body in [
        json!({"state": "running"}),
        json!({}),
        json!({"state": "loaded", "message": "m".repeat(1025)}),
        json!({"state": "loaded", "attach_point": "a".repeat(257)}),
        json!({"state": 1}),
    ] {
        let r = x.put_json(&path, &body).await;
        assert_rest_error_any(
            r,
            StatusCode::BAD_REQUEST,
            &["invalid_request", "invalid_json"],
        )
        .await;
    }
    let d = x.get_ok("/hosts/rep-1/deployments").await;
    assert_eq!(d["deployments"], json!([]), "nothing stored: {d}");
    // The edges are accepted.
    let ok = x
        .put_json(
            &path,
            &json!({"state": "loaded", "message": "m".repeat(1024), "attach_point": "a".repeat(256)}),
        )
        .await;
    assert_eq!(ok.status(), StatusCode::OK);
}

/// Concurrent reports share a write transaction, which checks their
/// hosts: in any mix of registered and unknown hosts, each report is
/// answered for itself (200 with its JSON, or 404 `host_not_found`) and
/// only the registered hosts' are stored. A host deleted earlier is
/// unknown again: its report is 404 and stores nothing.
#[tokio::test]
async fn concurrent_reports_for_registered_and_unknown_hosts_each_get_their_answer() {
    let x = Ctx::start().await;
    let a = x.create("mix/prog", "2.0.0", "x86_64").await;
    let id = str_of(&a, "id").to_string();
    for i in 0..8 {
        x.register_simple(&format!("mix-{i}"), json!({})).await;
    }
    let reports = (0..64).map(|n| {
        // Hosts mix-0..7 are registered, mix-8..15 are not.
        let host = format!("mix-{}", n % 16);
        let (x, id) = (&x, &id);
        async move {
            let r = x.report(&host, id, "loaded", &format!("r{n}")).await;
            (host, n, r)
        }
    });
    for (host, n, r) in futures_util::future::join_all(reports).await {
        let registered = n % 16 < 8;
        if registered {
            let d = json_of(r, StatusCode::OK).await;
            assert_eq!(d["host_id"], host.as_str(), "{d}");
            assert_eq!(d["message"], format!("r{n}"), "{d}");
            assert_eq!(d["version"], "2.0.0", "{d}");
        } else {
            assert_rest_error(r, StatusCode::NOT_FOUND, "host_not_found").await;
        }
    }
    for i in 0..8 {
        let d = x.get_ok(&format!("/hosts/mix-{i}/deployments")).await;
        assert_eq!(d["history"].as_array().map(Vec::len), Some(4), "{d}");
    }
    for i in 8..16 {
        // Registered now: nothing was stored for them before.
        x.register_simple(&format!("mix-{i}"), json!({})).await;
        let d = x.get_ok(&format!("/hosts/mix-{i}/deployments")).await;
        assert_eq!(d["deployments"], json!([]), "{d}");
        assert_eq!(d["history"], json!([]), "{d}");
    }

    // Deleted, then reported on: 404, and nothing survives to a new
    // registration.
    x.report_ok("mix-0", &id, "loaded", "before").await;
    assert_eq!(
        x.delete("/hosts/mix-0").await.status(),
        StatusCode::NO_CONTENT
    );
    let r = x.report("mix-0", &id, "failed", "after").await;
    assert_rest_error(r, StatusCode::NOT_FOUND, "host_not_found").await;
    x.register_simple("mix-0", json!({})).await;
    let d = x.get_ok("/hosts/mix-0/deployments").await;
    assert_eq!(d["deployments"], json!([]), "{d}");
    assert_eq!(d["history"], json!([]), "{d}");
}

/// Puts the manifest `id` of `from` into `to` through OCI (its blobs
/// mounted): a second copy of the artifact.
async fn copy_by_oci(x: &Ctx, from: &str, id: &str, to: &str) {
    let (_, bytes) = oci_manifest(x, from, id).await;
    let m: Value = serde_json::from_slice(&bytes).expect("manifest JSON");
    let blobs = std::iter::once(&m["config"]).chain(m["layers"].as_array().expect("layers"));
    for b in blobs {
        let d = str_of(b, "digest");
        let r =
            x.c.post(x.url(&format!("/v2/{to}/blobs/uploads/?mount={d}&from={from}")))
                .send()
                .await
                .expect("send mount");
        assert_eq!(r.status(), StatusCode::CREATED, "mount {d}");
    }
    x.s.put_manifest_ok(&x.c, to, id, OCI_MANIFEST, &bytes)
        .await;
}

/// What a report's id resolves to follows each manifest write at once
/// (the copies an id means are kept in process between writes): a copy in
/// a second repository, the first one deleted, then the second, then the
/// artifact created again.
#[tokio::test]
async fn a_report_resolves_its_id_as_of_the_last_write() {
    let x = Ctx::start().await;
    let id = str_of(&x.create("res/first", "1.0.0", "x86_64").await, "id").to_string();
    x.register_simple("res-1", json!({})).await;
    let d = x.report_ok("res-1", &id, "loaded", "").await;
    assert_eq!(d["repository"], "res/first", "{d}");
    let (_, manifest) = oci_manifest(&x, "res/first", &id).await;
    let m: Value = serde_json::from_slice(&manifest).expect("manifest JSON");
    let mut blobs = Vec::new();
    for b in std::iter::once(&m["config"]).chain(m["layers"].as_array().expect("layers")) {
        let d = str_of(b, "digest").to_string();
        let r =
            x.c.get(x.url(&format!("/v2/res/first/blobs/{d}")))
                .send()
                .await
                .expect("send");
        assert_eq!(r.status(), StatusCode::OK, "blob {d}");
        blobs.push((d, r.bytes().await.expect("blob").to_vec()));
    }

    copy_by_oci(&x, "res/first", &id, "res/second").await;
    let r = x
        .delete(&format!("/artifacts/{id}?repository=res/first"))
        .await;
    assert!(r.status().is_success(), "delete: {}", r.status());
    let d = x.report_ok("res-1", &id, "loaded", "").await;
    assert_eq!(d["repository"], "res/second", "the remaining copy: {d}");

    let r = x.delete(&format!("/artifacts/{id}")).await;
    assert!(r.status().is_success(), "delete: {}", r.status());
    let r = x.report("res-1", &id, "loaded", "").await;
    assert_rest_error(r, StatusCode::NOT_FOUND, "not_found").await;

    // The same manifest pushed again (through OCI, its blobs first): the
    // same id, found again.
    for (d, data) in &blobs {
        assert_eq!(&x.s.push_blob(&x.c, "res/first", data).await, d);
    }
    x.s.put_manifest_ok(&x.c, "res/first", &id, OCI_MANIFEST, &manifest)
        .await;
    let d = x.report_ok("res-1", &id, "failed", "").await;
    assert_eq!(d["repository"], "res/first", "{d}");
    assert_eq!(d["version"], "1.0.0", "{d}");
}

#[tokio::test]
async fn rollout_counts_desired_loaded_failed_and_pending_hosts() {
    let x = Ctx::start().await;
    let v1 = x.create("roll/prog", "1.0.0", "x86_64").await;
    let id1 = str_of(&v1, "id").to_string();
    for i in 1..=4 {
        x.register_simple(&format!("roll-{i}"), json!({"tier": "web"}))
            .await;
    }
    x.register_simple("roll-5", json!({"tier": "db"})).await;
    x.register_simple("roll-6", json!({"tier": "db"})).await;
    x.selector(&id1, "tier=web", None).await;
    x.report_ok("roll-1", &id1, "failed", "first try").await;
    x.report_ok("roll-1", &id1, "loaded", "").await;
    x.report_ok("roll-2", &id1, "failed", "verifier").await;
    x.report_ok("roll-3", &id1, "unloaded", "").await;
    // roll-4 never reports; roll-5 and roll-6 are not desired but report.
    x.report_ok("roll-5", &id1, "loaded", "by hand").await;
    x.report_ok("roll-6", &id1, "unloaded", "taken off").await;

    let r = x.get_ok(&format!("/artifacts/{id1}/rollout")).await;
    assert_eq!(r["artifact_id"], id1.as_str());
    assert_eq!(r["desired"], 4, "{r}");
    assert_eq!(r["failed"], 1, "{r}");
    assert_eq!(
        r["pending"], 2,
        "roll-3 (unloaded) and roll-4 (no report): {r}"
    );
    assert_eq!(r["unloaded"], 1, "roll-6 (not desired): {r}");
    assert_eq!(
        r["loaded"], 2,
        "roll-1, and roll-5 which is not desired: {r}"
    );
    let hosts = r["hosts"].as_array().expect("hosts");
    let got: Vec<(String, bool, String, bool)> = hosts
        .iter()
        .map(|h| {
            (
                str_of(h, "host_id").to_string(),
                h["desired"].as_bool().expect("desired bool"),
                str_of(h, "state").to_string(),
                h["reported_at"].is_null(),
            )
        })
        .collect();
    let want: Vec<(String, bool, String, bool)> = [
        ("roll-1", true, "loaded", false),
        ("roll-2", true, "failed", false),
        // Desired and reported unloaded: pending (it should load it).
        ("roll-3", true, "pending", false),
        ("roll-4", true, "pending", true),
        ("roll-5", false, "loaded", false),
        ("roll-6", false, "unloaded", false),
    ]
    .iter()
    .map(|(h, d, s, n)| (h.to_string(), *d, s.to_string(), *n))
    .collect();
    assert_eq!(got, want, "{r}");
    assert_eq!(r["next_cursor"], Value::Null);

    // Paging walks the same hosts.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let mut q = vec![("limit", "2".to_string())];
        if let Some(c) = &cursor {
            q.push(("cursor", c.clone()));
        }
        let resp =
            x.c.get(x.url(&format!("/artifacts/{id1}/rollout")))
                .query(&q)
                .send()
                .await
                .expect("send");
        let page = json_of(resp, StatusCode::OK).await;
        assert_eq!(page["desired"], 4, "counts are over all hosts: {page}");
        let hs = page["hosts"].as_array().expect("hosts");
        assert!(hs.len() <= 2);
        seen.extend(hs.iter().map(|h| str_of(h, "host_id").to_string()));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(
        seen,
        ["roll-1", "roll-2", "roll-3", "roll-4", "roll-5", "roll-6"]
    );

    // A newer version takes the desired hosts.
    let v2 = x.create("roll/prog", "1.1.0", "x86_64").await;
    let id2 = str_of(&v2, "id").to_string();
    let r1 = x.get_ok(&format!("/artifacts/{id1}/rollout")).await;
    assert_eq!(r1["desired"], 0, "{r1}");
    assert_eq!(r1["pending"], 0, "{r1}");
    assert_eq!(r1["unloaded"], 2, "roll-3 is no longer desired: {r1}");
    let still: Vec<&str> = r1["hosts"]
        .as_array()
        .expect("hosts")
        .iter()
        .map(|h| h["host_id"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        still,
        ["roll-1", "roll-2", "roll-3", "roll-5", "roll-6"],
        "reporters: {r1}"
    );
    let r2 = x.get_ok(&format!("/artifacts/{id2}/rollout")).await;
    assert_eq!(r2["desired"], 4, "{r2}");
    assert_eq!(r2["pending"], 4, "{r2}");
    assert_eq!(r2["loaded"], 0, "{r2}");
    let unknown = sha256(b"none");
    let r = x.get(&format!("/artifacts/{unknown}/rollout")).await;
    assert_rest_error(r, StatusCode::NOT_FOUND, "not_found").await;
}

// ---- restart ------------------------------------------------------------------------

#[tokio::test]
async fn hosts_selectors_deployments_and_channels_survive_a_restart() {
    let x = Ctx::start().await;
    let v1 = x.create("keep/prog", "1.0.0", "x86_64").await;
    let v2 = x.create("keep/prog", "2.0.0", "x86_64").await;
    let other = x.create("keep/other", "1.0.0", "x86_64").await;
    let (id1, id2) = (str_of(&v1, "id").to_string(), str_of(&v2, "id").to_string());
    x.register(
        "keep-1",
        &facts("x86_64", "5.15.0", true, json!({"env": "prod"})),
    )
    .await;
    x.register(
        "keep-2",
        &facts("aarch64", "6.1.0", false, json!({"env": "staging"})),
    )
    .await;
    x.selector(str_of(&other, "id"), "env=prod", None).await;
    x.selector(&id1, "env in (prod,staging)", Some("stable"))
        .await;
    x.associate(&id2, "keep-2", None).await;
    x.channel_ok("keep/prog", "stable", "2.0.0").await;
    x.channel_ok("keep/prog", "stable", "1.0.0").await;
    x.report_ok("keep-1", &id1, "loaded", "ok").await;
    x.report_ok("keep-1", &id1, "failed", "later").await;

    let paths = [
        "/hosts".to_string(),
        "/hosts/keep-1".to_string(),
        "/hosts/keep-2".to_string(),
        "/hosts/keep-1/desired".to_string(),
        "/hosts/keep-2/desired".to_string(),
        "/artifacts/for-host/keep-1".to_string(),
        "/artifacts/for-host/keep-2".to_string(),
        "/hosts/keep-1/deployments".to_string(),
        format!("/artifacts/{id1}/selectors"),
        format!("/artifacts/{}/selectors", str_of(&other, "id")),
        format!("/artifacts/{id1}/rollout"),
        "/channels/keep/prog/stable".to_string(),
    ];
    let mut before = Vec::new();
    for p in &paths {
        before.push(x.get_ok(p).await);
    }
    let (etag_before, _) = x.get_tagged("/hosts/keep-1/desired").await;
    let stable_before = oci_manifest(&x, "keep/prog", "stable").await;

    let x = x.restart().await;
    for (p, b) in paths.iter().zip(&before) {
        assert_eq!(&x.get_ok(p).await, b, "{p} after the restart");
    }
    let (etag_after, _) = x.get_tagged("/hosts/keep-1/desired").await;
    assert_eq!(etag_before, etag_after, "the same answer, the same ETag");
    assert_eq!(oci_manifest(&x, "keep/prog", "stable").await, stable_before);
    // The rollback stack survived too.
    let r = x.post_empty("/channels/keep/prog/stable/rollback").await;
    assert_eq!(json_of(r, StatusCode::OK).await["version"], "2.0.0");
    let r = x.post_empty("/channels/keep/prog/stable/rollback").await;
    assert_rest_error(r, StatusCode::CONFLICT, "no_previous_version").await;
}

// ---- authorization ------------------------------------------------------------------

const FLEET_POLICY: &str = r#"
[[grant]]
users = ["agent-*"]
hosts = ["{user}"]
actions = ["report"]

[[grant]]
users = ["agent-*"]
repositories = ["fleet/**"]
actions = ["pull"]

[[grant]]
users = ["operator"]
repositories = ["fleet/**"]
actions = ["pull"]

[[grant]]
users = ["operator"]
hosts = ["*"]
actions = ["read"]

[[grant]]
users = ["admin"]
repositories = ["**"]
actions = ["pull", "push", "delete"]

[[grant]]
users = ["admin"]
hosts = ["**"]
actions = ["report", "read", "delete"]
"#;

const AUTH_USERS: [&str; 4] = ["agent-a", "agent-b", "operator", "admin"];

fn password(user: &str) -> String {
    format!("{user}-Pa55word")
}

fn basic(user: &str) -> reqwest::Client {
    let b = b64(format!("{user}:{}", password(user)).as_bytes());
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

/// A server with htpasswd users (and the policy, if any); the files live
/// in the returned temp dir.
async fn auth_server(policy: Option<&str>) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut text = String::new();
    for u in AUTH_USERS {
        let h = bcrypt::hash(password(u), 4).expect("bcrypt");
        text.push_str(&format!("{u}:{}\n", h.replacen("$2b$", "$2y$", 1)));
    }
    let htpasswd = dir.path().join("htpasswd");
    std::fs::write(&htpasswd, text).expect("write htpasswd");
    let key = bpf_registry::auth::TokenKey::generate().expect("key");
    let key_path = dir.path().join("token.pem");
    std::fs::write(&key_path, key.to_pem().expect("pem")).expect("write key");
    let policy_path = dir.path().join("policy.toml");
    let (htpasswd, key_path, policy_path) = (
        htpasswd.to_string_lossy().into_owned(),
        key_path.to_string_lossy().into_owned(),
        policy_path.to_string_lossy().into_owned(),
    );
    let mut env: Vec<(&str, &str)> = vec![
        ("BPF_REGISTRY_AUTH_HTPASSWD", &htpasswd),
        ("BPF_REGISTRY_TOKEN_KEY", &key_path),
    ];
    if let Some(p) = policy {
        std::fs::write(&policy_path, p).expect("write policy");
        env.push(("BPF_REGISTRY_AUTH_POLICY", &policy_path));
    }
    (TestServer::start_with_env(&env).await, dir)
}

async fn status_of(rb: reqwest::RequestBuilder) -> StatusCode {
    rb.send().await.expect("send").status()
}

async fn denied(rb: reqwest::RequestBuilder, what: &str) {
    let r = rb.send().await.expect("send");
    let status = r.status();
    let text = r.text().await.unwrap_or_default();
    assert_eq!(status, StatusCode::FORBIDDEN, "{what}: {text}");
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{what}: {text}"));
    assert_eq!(v["error"], "denied", "{what}: {v}");
}

async fn unauthorized(rb: reqwest::RequestBuilder, what: &str) {
    let r = rb.send().await.expect("send");
    let status = r.status();
    let text = r.text().await.unwrap_or_default();
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {text}");
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{what}: {text}"));
    assert_eq!(v["error"], "unauthorized", "{what}: {v}");
}

#[tokio::test]
async fn agents_report_only_for_their_own_host() {
    let (s, _dir) = auth_server(Some(FLEET_POLICY)).await;
    let (a, admin) = (basic("agent-a"), basic("admin"));
    let host_facts = facts("x86_64", "5.15.0", true, json!({"env": "prod"}));
    let create = |c: &reqwest::Client, name: &str| {
        c.post(s.url("/artifacts"))
            .json(&artifact_body(name, "1.0.0", "x86_64"))
    };
    let r = create(&admin, "fleet/prog").send().await.expect("send");
    let prog = json_of(r, StatusCode::CREATED).await;
    let id = str_of(&prog, "id").to_string();
    let r = create(&admin, "secret/prog").send().await.expect("send");
    let secret = json_of(r, StatusCode::CREATED).await;
    // agent-b exists (registered by the admin).
    let r = admin
        .put(s.url("/hosts/agent-b"))
        .json(&host_facts)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::CREATED);
    let b_before = json_of(
        admin
            .get(s.url("/hosts/agent-b"))
            .send()
            .await
            .expect("send"),
        StatusCode::OK,
    )
    .await;

    // Its own host: register, report, read.
    let r = a
        .put(s.url("/hosts/agent-a"))
        .json(&host_facts)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::CREATED);
    for aid in [&id, str_of(&secret, "id")] {
        let r = admin
            .post(s.url(&format!("/artifacts/{aid}/hosts")))
            .json(&json!({"host_id": "agent-a"}))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let r = a
        .put(s.url(&format!("/hosts/agent-a/deployments/{id}")))
        .json(&json!({"state": "loaded"}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::OK);
    let d = json_of(
        a.get(s.url("/hosts/agent-a/desired"))
            .send()
            .await
            .expect("send"),
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        names_of(&d["artifacts"]),
        ["fleet/prog"],
        "only what the caller may pull: {d}"
    );
    let fh = json_of(
        a.get(s.url("/artifacts/for-host/agent-a"))
            .send()
            .await
            .expect("send"),
        StatusCode::OK,
    )
    .await;
    assert_eq!(names_of(&fh["artifacts"]), ["fleet/prog"]);
    let admin_view = json_of(
        admin
            .get(s.url("/hosts/agent-a/desired"))
            .send()
            .await
            .expect("send"),
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        names_of(&admin_view["artifacts"]),
        ["fleet/prog", "secret/prog"]
    );
    for path in ["/hosts/agent-a", "/hosts/agent-a/deployments"] {
        assert_eq!(
            status_of(a.get(s.url(path))).await,
            StatusCode::OK,
            "{path}"
        );
    }
    // GET /hosts lists only what the caller may read.
    let list = json_of(
        a.get(s.url("/hosts")).send().await.expect("send"),
        StatusCode::OK,
    )
    .await;
    let listed: Vec<&str> = list["hosts"]
        .as_array()
        .expect("hosts")
        .iter()
        .map(|h| h["host_id"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(listed, ["agent-a"], "{list}");

    // Another agent's host: 403 denied, nothing changed.
    denied(
        a.put(s.url("/hosts/agent-b"))
            .json(&facts("aarch64", "6.1.0", false, json!({}))),
        "PUT /hosts/agent-b",
    )
    .await;
    denied(
        a.put(s.url(&format!("/hosts/agent-b/deployments/{id}")))
            .json(&json!({"state": "failed"})),
        "PUT agent-b's deployment",
    )
    .await;
    denied(
        a.get(s.url("/hosts/agent-b/desired")),
        "GET agent-b's desired",
    )
    .await;
    denied(a.get(s.url("/hosts/agent-b")), "GET /hosts/agent-b").await;
    denied(
        a.delete(s.url("/hosts/agent-a")),
        "DELETE its own host (no delete action)",
    )
    .await;
    let b_after = json_of(
        admin
            .get(s.url("/hosts/agent-b"))
            .send()
            .await
            .expect("send"),
        StatusCode::OK,
    )
    .await;
    assert_eq!(b_after, b_before, "a refused PUT changed agent-b");
    let b_deps = json_of(
        admin
            .get(s.url("/hosts/agent-b/deployments"))
            .send()
            .await
            .expect("send"),
        StatusCode::OK,
    )
    .await;
    assert_eq!(b_deps["deployments"], json!([]));
}

#[tokio::test]
async fn operators_need_push_for_selectors_and_channels() {
    let (s, _dir) = auth_server(Some(FLEET_POLICY)).await;
    let (op, admin) = (basic("operator"), basic("admin"));
    let r = admin
        .post(s.url("/artifacts"))
        .json(&artifact_body("fleet/ops", "1.0.0", "x86_64"))
        .send()
        .await
        .expect("send");
    let id = str_of(&json_of(r, StatusCode::CREATED).await, "id").to_string();
    let r = admin
        .put(s.url("/channels/fleet/ops/stable"))
        .json(&json!({"version": "1.0.0"}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::OK);
    let r = admin
        .post(s.url(&format!("/artifacts/{id}/selectors")))
        .json(&json!({"selector": "env=prod"}))
        .send()
        .await
        .expect("send");
    let sel = json_of(r, StatusCode::CREATED).await;

    denied(
        op.post(s.url(&format!("/artifacts/{id}/selectors")))
            .json(&json!({"selector": "env=staging"})),
        "POST selector without push",
    )
    .await;
    denied(
        op.delete(s.url(&format!(
            "/artifacts/{id}/selectors/{}",
            str_of(&sel, "selector_id")
        ))),
        "DELETE selector without push",
    )
    .await;
    denied(
        op.put(s.url("/channels/fleet/ops/stable"))
            .json(&json!({"version": "1.0.0"})),
        "PUT channel without push",
    )
    .await;
    denied(
        op.post(s.url("/channels/fleet/ops/stable/rollback"))
            .header("content-length", "0"),
        "rollback without push",
    )
    .await;
    denied(
        op.post(s.url(&format!("/artifacts/{id}/hosts")))
            .json(&json!({"host_id": "h1", "channel": "stable"})),
        "channel association without push",
    )
    .await;
    // pull is enough to read.
    for path in [
        format!("/artifacts/{id}/selectors"),
        "/channels/fleet/ops/stable".to_string(),
        format!("/artifacts/{id}/rollout"),
    ] {
        assert_eq!(
            status_of(op.get(s.url(&path))).await,
            StatusCode::OK,
            "{path}"
        );
    }
    let listed = json_of(
        op.get(s.url(&format!("/artifacts/{id}/selectors")))
            .send()
            .await
            .expect("send"),
        StatusCode::OK,
    )
    .await;
    assert_eq!(listed["selectors"], json!([sel]), "nothing changed");

    // Anonymous: 401 everywhere.
    let anon = client();
    unauthorized(
        anon.put(s.url("/hosts/agent-a"))
            .json(&facts("x86_64", "5.15.0", true, json!({}))),
        "anonymous PUT host",
    )
    .await;
    unauthorized(
        anon.get(s.url("/hosts/agent-a/desired")),
        "anonymous desired",
    )
    .await;
    unauthorized(anon.get(s.url("/hosts")), "anonymous GET /hosts").await;
    unauthorized(
        anon.post(s.url(&format!("/artifacts/{id}/selectors")))
            .json(&json!({"selector": "x"})),
        "anonymous POST selector",
    )
    .await;
    unauthorized(
        anon.put(s.url("/channels/fleet/ops/stable"))
            .json(&json!({"version": "1.0.0"})),
        "anonymous PUT channel",
    )
    .await;
    unauthorized(
        anon.put(s.url(&format!("/hosts/agent-a/deployments/{id}")))
            .json(&json!({"state": "loaded"})),
        "anonymous report",
    )
    .await;
}

#[tokio::test]
async fn without_a_policy_every_authenticated_user_may_do_every_host_action() {
    let (s, _dir) = auth_server(None).await;
    let a = basic("agent-a");
    let r = a
        .put(s.url("/hosts/agent-b"))
        .json(&facts("x86_64", "5.15.0", true, json!({})))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        status_of(a.get(s.url("/hosts/agent-b/desired"))).await,
        StatusCode::OK
    );
    assert_eq!(
        status_of(a.delete(s.url("/hosts/agent-b"))).await,
        StatusCode::NO_CONTENT
    );
    unauthorized(client().get(s.url("/hosts")), "anonymous GET /hosts").await;
}

/// A rollout lists only the hosts the caller may read (its counts are over
/// every host and name none): agent-a, which may pull the artifact and
/// read only its own host, sees itself; the admin sees both.
#[tokio::test]
async fn a_rollout_lists_only_the_hosts_the_caller_may_read() {
    let (s, _dir) = auth_server(Some(FLEET_POLICY)).await;
    let (a, admin) = (basic("agent-a"), basic("admin"));
    let r = admin
        .post(s.url("/artifacts"))
        .json(&artifact_body("fleet/rolled", "1.0.0", "x86_64"))
        .send()
        .await
        .expect("send");
    let id = str_of(&json_of(r, StatusCode::CREATED).await, "id").to_string();
    for h in ["agent-a", "agent-b"] {
        let r = admin
            .put(s.url(&format!("/hosts/{h}")))
            .json(&facts("x86_64", "6.1.0", true, json!({"env": "prod"})))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let r = admin
        .post(s.url(&format!("/artifacts/{id}/selectors")))
        .json(&json!({"selector": "env=prod"}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::CREATED);
    let hosts_of = |v: &Value| -> Vec<String> {
        v["hosts"]
            .as_array()
            .expect("hosts")
            .iter()
            .map(|h| h["host_id"].as_str().expect("host_id").to_string())
            .collect()
    };
    let url = s.url(&format!("/artifacts/{id}/rollout"));
    let mine = json_of(a.get(&url).send().await.expect("send"), StatusCode::OK).await;
    assert_eq!(mine["desired"], 2, "{mine}");
    assert_eq!(hosts_of(&mine), vec!["agent-a"], "{mine}");
    let all = json_of(admin.get(&url).send().await.expect("send"), StatusCode::OK).await;
    assert_eq!(hosts_of(&all), vec!["agent-a", "agent-b"], "{all}");
}

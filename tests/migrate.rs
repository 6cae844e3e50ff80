//! `bpf-registry migrate`: a store written on the embedded engines (fs +
//! SQLite) with OCI pushes (images, an index, a referrer), REST artifacts
//! with host associations and signatures (a local Ed25519 key), tags and an
//! upload in progress is copied to other engines, and a server started on
//! the target answers every read exactly as the source did (catalog, tags,
//! manifest bytes and types, blobs, referrers, `/artifacts`, `/for-host`,
//! `verify`); `scrub` on the target finds it sound. Also: a second run is a
//! no-op, a `kill -9` at any moment is resumed by the next run, a target
//! holding another store is refused, and so is a source in use or a blob
//! whose bytes do not match its digest.
//!
//! Targets: SQLite + a new data dir always; with `BPF_TEST_POSTGRES`, a
//! fresh PostgreSQL database (sharing the source's blobs, and with a new
//! data dir); with `BPF_TEST_S3_URL` too, PostgreSQL + a fresh S3 prefix.
//! Without PostgreSQL its targets are skipped with a message, except under
//! `CI=true`, where that fails.

mod common;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{client, pseudo_random, TestServer, OCI_INDEX, OCI_MANIFEST};
use serde_json::{json, Value};

const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// PostgreSQL for the tests, or `None` after saying why it is skipped
/// (a failure under `CI=true`).
fn postgres_or_skip(test: &str) -> Option<String> {
    if common::engines::postgres_base_url().is_some() {
        return Some(common::engines::new_postgres_database());
    }
    let msg = format!("{test}: BPF_TEST_POSTGRES is not set: the PostgreSQL targets did not run");
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{msg}");
    }
    eprintln!("SKIPPED: {msg}");
    None
}

/// A fresh PostgreSQL database when there is one, else a fresh SQLite
/// file in `dir` (as the `--metadata` value and the server's variable).
fn fresh_metadata(dir: &Path) -> (String, String) {
    match common::engines::postgres_base_url() {
        Some(_) => {
            let url = common::engines::new_postgres_database();
            (url.clone(), url)
        }
        None => (
            format!("sqlite:{}", dir.join("metadata.db").display()),
            "sqlite".into(),
        ),
    }
}

/// An Ed25519 signing key file (PKCS#8 PEM, mode 0600) in `dir`.
fn signing_key(dir: &Path) -> PathBuf {
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    use std::os::unix::fs::PermissionsExt;
    let bytes: [u8; 32] = pseudo_random(32, 77).try_into().expect("32");
    let pem = ed25519_dalek::SigningKey::from_bytes(&bytes)
        .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .expect("pem")
        .to_string();
    let p = dir.join("signing.pem");
    std::fs::write(&p, pem).expect("write key");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    p
}

/// The variables of a store: data dir, metadata, blob store (and the
/// signing key, so the servers on both sides verify alike).
#[derive(Clone, Debug)]
struct Store {
    data_dir: PathBuf,
    metadata: String,
    blob_store: String,
    key: PathBuf,
}

impl Store {
    fn env(&self) -> Vec<(String, String)> {
        vec![
            (
                "BPF_REGISTRY_DATA_DIR".into(),
                self.data_dir.display().to_string(),
            ),
            ("BPF_REGISTRY_METADATA".into(), self.metadata.clone()),
            ("BPF_REGISTRY_BLOB_STORE".into(), self.blob_store.clone()),
            ("BPF_REGISTRY_SIGNER".into(), "key".into()),
            (
                "BPF_REGISTRY_SIGNING_KEY".into(),
                self.key.display().to_string(),
            ),
            ("BPF_REGISTRY_GC_INTERVAL".into(), "0".into()),
        ]
    }

    async fn start(&self) -> TestServer {
        let env = self.env();
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        TestServer::start_with_env(&pairs).await
    }
}

/// Runs the binary with `args` on `store`'s configuration only; returns
/// (exit code, stdout, stderr). Bounded: a hung command fails the test.
fn run(store: &Store, args: &[&str]) -> (i32, String, String) {
    let mut child = command(store, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start bpf-registry");
    let deadline = Instant::now() + Duration::from_secs(300);
    while child.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "bpf-registry {args:?} hung");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn command(store: &Store, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bpf-registry"));
    cmd.args(args).env_clear().stdin(Stdio::null());
    cmd.envs(store.env());
    cmd.env("BPF_REGISTRY_LOG_LEVEL", "INFO");
    for var in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
        if let Ok(v) = std::env::var(var) {
            cmd.env(var, v);
        }
    }
    cmd
}

/// `migrate --json` of `source` to `target`; the report.
fn migrate_ok(source: &Store, target_args: &[&str]) -> Value {
    let mut args = vec!["migrate", "--json"];
    args.extend_from_slice(target_args);
    let (code, out, err) = run(source, &args);
    assert_eq!(code, 0, "migrate {target_args:?} failed:\n{out}\n{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("report is not JSON ({e}): {out}"))
}

fn scrub_ok(store: &Store) {
    let (code, out, err) = run(store, &["scrub"]);
    assert_eq!(code, 0, "scrub of the target failed:\n{out}\n{err}");
    assert!(out.contains("scrub: OK"), "{out}");
}

/// `table -> (source_rows, written, target_rows)` of a report.
fn tables(report: &Value) -> BTreeMap<String, (u64, u64, u64)> {
    report["tables"]
        .as_array()
        .expect("tables")
        .iter()
        .map(|t| {
            (
                t["table"].as_str().expect("name").to_string(),
                (
                    t["source_rows"].as_u64().expect("n"),
                    t["written"].as_u64().expect("n"),
                    t["target_rows"].as_u64().expect("n"),
                ),
            )
        })
        .collect()
}

// ---- the source store ---------------------------------------------------------

fn artifact(name: &str, version: &str, arch: &str, seed: u64, hosts: &[&str]) -> Value {
    json!({
        "name": name,
        "version": version,
        "type": "program",
        "architecture": arch,
        "kernel_version": "5.15.0",
        "description": format!("{name} {version}"),
        "data": b64(&pseudo_random(400, seed)),
        "hosts": hosts,
        "tags": ["stable", format!("v{version}")],
    })
}

async fn create(s: &TestServer, body: &Value) -> String {
    let r = client()
        .post(s.url("/artifacts"))
        .json(body)
        .send()
        .await
        .expect("send");
    let status = r.status();
    let v: Value = r.json().await.expect("json");
    assert_eq!(status, 201, "{v}");
    assert!(v["signature"].is_object(), "signed at create: {v}");
    v["id"].as_str().expect("id").to_string()
}

/// OCI pushes (two images, an index of both, a referrer of the first),
/// `images` more images with `layers` layers each (distinct blobs), REST
/// artifacts with hosts (signed as created), one more host through
/// `POST /hosts`, and an upload left in progress (its URL returned).
async fn fill(s: &TestServer, images: usize, layers: usize) -> String {
    let c = client();
    let repo = "oci/app";
    let (v1, b1) = s
        .push_image(
            &c,
            repo,
            "v1",
            b"{\"os\":\"linux\"}",
            &[b"layer one", b"layer two"],
            json!({}),
        )
        .await;
    let (v2, b2) = s
        .push_image(
            &c,
            repo,
            "v2",
            b"{\"os\":\"linux\",\"v\":2}",
            &[b"layer three"],
            json!({}),
        )
        .await;
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": v1, "size": b1.len(),
             "platform": {"architecture": "amd64", "os": "linux"}},
            {"mediaType": OCI_MANIFEST, "digest": v2, "size": b2.len(),
             "platform": {"architecture": "arm64", "os": "linux"}},
        ],
    });
    s.put_manifest_ok(
        &c,
        repo,
        "multi",
        OCI_INDEX,
        &serde_json::to_vec(&index).expect("json"),
    )
    .await;
    let empty = s.push_empty_config(&c, repo).await;
    let sbom = s.push_blob(&c, repo, b"an sbom").await;
    let referrer = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.sbom.v1",
        "config": empty,
        "layers": [{"mediaType": "application/json", "digest": sbom, "size": 7}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": v1, "size": b1.len()},
        "annotations": {"org.example.kind": "sbom"},
    });
    let body = serde_json::to_vec(&referrer).expect("json");
    let digest = common::sha256(&body);
    s.put_manifest_ok(&c, repo, &digest, OCI_MANIFEST, &body)
        .await;
    for i in 0..images {
        let blobs: Vec<Vec<u8>> = (0..layers)
            .map(|l| pseudo_random(4096, (i * 1000 + l) as u64 + 1))
            .collect();
        let refs: Vec<&[u8]> = blobs.iter().map(Vec::as_slice).collect();
        let config = format!("{{\"image\":{i}}}");
        s.push_image(
            &c,
            "oci/many",
            &format!("t{i}"),
            config.as_bytes(),
            &refs,
            json!({}),
        )
        .await;
    }
    let a = create(
        s,
        &artifact("fleet/xdp", "1.0.0", "x86_64", 1, &["node-a", "node-b"]),
    )
    .await;
    create(
        s,
        &artifact("fleet/xdp", "1.0.0", "aarch64", 2, &["node-a"]),
    )
    .await;
    create(s, &artifact("fleet/tc", "2.1.0", "x86_64", 3, &[])).await;
    let r = c
        .post(s.url(&format!("/artifacts/{a}/hosts")))
        .json(&json!({"host_id": "node-c"}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 201);
    fill_fleet(s, &a).await;
    s.start_upload(&c, repo).await
}

/// Fleet rows of every kind: registered hosts, a selector, a channel
/// (moved twice, rolled back once), a host following it, and reports.
async fn fill_fleet(s: &TestServer, a: &str) {
    let c = client();
    let ok = |r: reqwest::Response, want: u16| {
        assert_eq!(r.status().as_u16(), want, "{}", r.url());
    };
    for (h, env) in [("node-a", "prod"), ("node-b", "prod"), ("node-c", "lab")] {
        let body = json!({"architecture": "x86_64", "kernel_release": "6.1.0-13-amd64",
                          "btf": true, "labels": {"env": env}});
        ok(
            c.put(s.url(&format!("/hosts/{h}")))
                .json(&body)
                .send()
                .await
                .expect("send"),
            201,
        );
    }
    let sel = json!({"selector": "env=prod"});
    ok(
        c.post(s.url(&format!("/artifacts/{a}/selectors")))
            .json(&sel)
            .send()
            .await
            .expect("send"),
        201,
    );
    let tc = create(s, &artifact("fleet/xdp", "1.1.0", "x86_64", 4, &[])).await;
    for v in ["1.0.0", "1.1.0"] {
        let r = c
            .put(s.url("/channels/fleet/xdp/live"))
            .json(&json!({"version": v}))
            .send();
        ok(r.await.expect("send"), 200);
    }
    ok(
        c.post(s.url("/channels/fleet/xdp/live/rollback"))
            .send()
            .await
            .expect("send"),
        200,
    );
    let follow = json!({"host_id": "node-d", "channel": "live"});
    ok(
        c.post(s.url(&format!("/artifacts/{tc}/hosts")))
            .json(&follow)
            .send()
            .await
            .expect("send"),
        201,
    );
    for (h, state) in [
        ("node-a", "loaded"),
        ("node-b", "failed"),
        ("node-a", "loaded"),
    ] {
        let r = c
            .put(s.url(&format!("/hosts/{h}/deployments/{a}?repository=fleet/xdp")))
            .json(&json!({"state": state, "attach_point": "eth0/xdp"}))
            .send();
        ok(r.await.expect("send"), 200);
    }
}

/// A source store written by a running server, stopped; what it served.
struct Source {
    store: Store,
    seen: BTreeMap<String, Answer>,
    /// The URL path of the upload session left in progress.
    upload: String,
}

async fn source(dir: &Path, images: usize, layers: usize) -> Source {
    let store = Store {
        data_dir: dir.join("source"),
        metadata: "sqlite".into(),
        blob_store: "fs".into(),
        key: signing_key(dir),
    };
    let mut s = store.start().await;
    let upload = fill(&s, images, layers).await;
    let upload = upload
        .strip_prefix(&s.base_url)
        .unwrap_or(&upload)
        .to_string();
    assert_eq!(get(&s, &upload, None).await.status, 204, "{upload}");
    let seen = snapshot(&s).await;
    s.stop().await;
    Source {
        store,
        seen,
        upload,
    }
}

// ---- what a server answers ----------------------------------------------------

#[derive(Debug, PartialEq, Eq)]
struct Answer {
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

async fn get(s: &TestServer, path: &str, accept: Option<&str>) -> Answer {
    let mut req = client().get(s.url(path));
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    let r = req.send().await.expect("send");
    Answer {
        status: r.status().as_u16(),
        content_type: common::header(&r, "content-type").unwrap_or_default(),
        body: r.bytes().await.expect("body").to_vec(),
    }
}

fn json_of(a: &Answer) -> Value {
    serde_json::from_slice(&a.body).unwrap_or(Value::Null)
}

/// Every answer a client can reach from the catalog and `/artifacts`:
/// tags, manifests by tag and digest (bytes, type), every blob they name,
/// referrers (recursively), each artifact with its hosts, signatures and
/// verification, and `/for-host` of every host.
async fn snapshot(s: &TestServer) -> BTreeMap<String, Answer> {
    let mut out = BTreeMap::new();
    let catalog = get(s, "/v2/_catalog?n=1000", None).await;
    let repos: Vec<String> =
        serde_json::from_value(json_of(&catalog)["repositories"].clone()).expect("catalog");
    out.insert("/v2/_catalog".to_string(), catalog);
    for repo in &repos {
        let tags_path = format!("/v2/{repo}/tags/list?n=1000");
        let tags = get(s, &tags_path, None).await;
        let names: Vec<String> =
            serde_json::from_value(json_of(&tags)["tags"].clone()).unwrap_or_default();
        out.insert(tags_path, tags);
        let mut queue: VecDeque<String> = VecDeque::new();
        for tag in names {
            let path = format!("/v2/{repo}/manifests/{tag}");
            let m = get(s, &path, Some(MANIFEST_ACCEPT)).await;
            queue.push_back(common::sha256(&m.body));
            out.insert(path, m);
        }
        let mut seen = BTreeSet::new();
        while let Some(d) = queue.pop_front() {
            if !seen.insert(d.clone()) {
                continue;
            }
            let path = format!("/v2/{repo}/manifests/{d}");
            let m = get(s, &path, Some(MANIFEST_ACCEPT)).await;
            let v = json_of(&m);
            out.insert(path, m);
            let mut blobs: Vec<String> = Vec::new();
            if let Some(cfg) = v["config"]["digest"].as_str() {
                blobs.push(cfg.to_string());
            }
            for l in v["layers"].as_array().into_iter().flatten() {
                blobs.extend(l["digest"].as_str().map(str::to_string));
            }
            for b in blobs {
                let path = format!("/v2/{repo}/blobs/{b}");
                out.insert(path.clone(), get(s, &path, None).await);
            }
            for child in v["manifests"].as_array().into_iter().flatten() {
                queue.extend(child["digest"].as_str().map(str::to_string));
            }
            let path = format!("/v2/{repo}/referrers/{d}");
            let referrers = get(s, &path, None).await;
            for r in json_of(&referrers)["manifests"]
                .as_array()
                .into_iter()
                .flatten()
            {
                queue.extend(r["digest"].as_str().map(str::to_string));
            }
            out.insert(path, referrers);
        }
    }
    let list = get(s, "/artifacts?limit=1000", None).await;
    let ids: Vec<String> = json_of(&list)["artifacts"]
        .as_array()
        .expect("artifacts")
        .iter()
        .map(|a| a["id"].as_str().expect("id").to_string())
        .collect();
    out.insert("/artifacts".to_string(), list);
    // The filters answered from their own rows (facets, hosts).
    for filter in ["tag=stable", "kernel_version=5.15.0", "host=node-a"] {
        let path = format!("/artifacts?{filter}&limit=1000");
        let a = get(s, &path, None).await;
        let n = json_of(&a)["artifacts"].as_array().map_or(0, Vec::len);
        assert!(n > 0, "{path}: nothing listed");
        out.insert(path, a);
    }
    let mut hosts = BTreeSet::new();
    for id in ids {
        for sub in ["", "/hosts", "/signatures", "/verify"] {
            let path = format!("/artifacts/{id}{sub}");
            let a = get(s, &path, None).await;
            if sub == "/hosts" {
                for h in json_of(&a)["hosts"].as_array().into_iter().flatten() {
                    hosts.extend(h.as_str().map(str::to_string));
                }
            }
            if sub == "/verify" {
                assert_eq!(json_of(&a)["verified"], true, "{path}");
            }
            out.insert(path, a);
        }
    }
    for h in hosts {
        let path = format!("/artifacts/for-host/{h}");
        out.insert(path.clone(), get(s, &path, None).await);
    }
    // The fleet's views (rows of their own and derived ones).
    for h in ["node-a", "node-b", "node-c"] {
        for sub in ["", "/desired", "/deployments"] {
            let path = format!("/hosts/{h}{sub}");
            out.insert(path.clone(), get(s, &path, None).await);
        }
    }
    for path in ["/hosts", "/channels/fleet/xdp/live"] {
        out.insert(path.to_string(), get(s, path, None).await);
    }
    out
}

/// The target answers every read exactly as the source did, and does not
/// know the paths of `gone` (404).
async fn assert_serves_the_same(
    target: &Store,
    source_seen: &BTreeMap<String, Answer>,
    gone: &[&str],
) {
    let mut s = target.start().await;
    let seen = snapshot(&s).await;
    for path in gone {
        assert_eq!(
            get(&s, path, None).await.status,
            404,
            "{path} on {target:?}"
        );
    }
    s.stop().await;
    let paths: Vec<&String> = source_seen.keys().collect();
    assert_eq!(paths, seen.keys().collect::<Vec<_>>(), "the same reads");
    for (path, want) in source_seen {
        assert_eq!(want.status, 200, "source {path}");
        assert_eq!(Some(want), seen.get(path), "{path} on {target:?}");
    }
}

// ---- tests --------------------------------------------------------------------

#[tokio::test]
async fn every_target_serves_what_the_source_served_and_scrubs_clean() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Source {
        store: src,
        seen,
        upload,
    } = source(dir.path(), 3, 3).await;
    // Not vacuous: images, index, referrer, blobs, artifacts, hosts.
    assert!(seen.len() > 60, "{} reads", seen.len());
    assert!(seen.contains_key("/artifacts/for-host/node-c"));
    let mut targets: Vec<(Store, Vec<String>)> = Vec::new();
    let sqlite_dir = dir.path().join("to-sqlite");
    targets.push((
        Store {
            data_dir: sqlite_dir.clone(),
            metadata: "sqlite".into(),
            blob_store: "fs".into(),
            key: src.key.clone(),
        },
        vec![
            format!(
                "--metadata=sqlite:{}",
                sqlite_dir.join("metadata.db").display()
            ),
            format!("--blob-store=fs:{}", sqlite_dir.display()),
        ],
    ));
    if let Some(db) = postgres_or_skip("every_target_serves_what_the_source_served") {
        // Only the rows move: the target shares the source's blobs.
        targets.push((
            Store {
                metadata: db.clone(),
                ..src.clone()
            },
            vec!["--metadata".into(), db],
        ));
        let db = common::engines::new_postgres_database();
        let fs_dir = dir.path().join("to-postgres");
        targets.push((
            Store {
                data_dir: fs_dir.clone(),
                metadata: db.clone(),
                blob_store: "fs".into(),
                key: src.key.clone(),
            },
            vec![
                "--metadata".into(),
                db,
                "--blob-store".into(),
                format!("fs:{}", fs_dir.display()),
            ],
        ));
        if std::env::var("BPF_TEST_S3_URL").is_ok() {
            let db = common::engines::new_postgres_database();
            let s3 = common::engines::new_s3_prefix();
            targets.push((
                Store {
                    data_dir: dir.path().join("to-s3"),
                    metadata: db.clone(),
                    blob_store: s3.clone(),
                    key: src.key.clone(),
                },
                vec!["--metadata".into(), db, "--blob-store".into(), s3],
            ));
        } else {
            eprintln!("SKIPPED: BPF_TEST_S3_URL is not set: the S3 target did not run");
        }
    }
    for (target, args) in &targets {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let report = migrate_ok(&src, &args);
        assert_eq!(report["resumed"], false, "{report}");
        assert_eq!(report["upload_sessions_not_copied"], 1, "{report}");
        let shared = target.data_dir == src.data_dir;
        assert_eq!(report["blobs_copied_between_stores"], !shared, "{report}");
        if !shared {
            // 3 + 3 + 2 + 3x(1+3) OCI blobs and the REST-built ones.
            assert!(
                report["blobs"]["copied"].as_u64().expect("n") > 20,
                "{report}"
            );
            assert_eq!(report["blobs"]["skipped"], 0, "{report}");
        }
        for (table, (read, written, in_target)) in tables(&report) {
            if table != "meta" {
                assert!(read > 0, "{table}: no rows in the source: {report}");
                assert_eq!((written, in_target), (read, read), "{table}: {report}");
            }
        }
        // The upload in progress was not copied.
        assert_serves_the_same(target, &seen, &[&upload]).await;
        scrub_ok(target);
    }
    // The human summary names what was copied and what was not.
    let (code, out, _) = run(
        &src,
        &[
            "migrate",
            &format!(
                "--metadata=sqlite:{}",
                sqlite_dir.join("metadata.db").display()
            ),
            &format!("--blob-store=fs:{}", sqlite_dir.display()),
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("resumed a copy of store"), "{out}");
    assert!(out.contains("skipped (already in the target)"), "{out}");
    assert!(
        out.contains("1 upload sessions in progress not copied"),
        "{out}"
    );
}

#[tokio::test]
async fn a_second_run_is_a_no_op_and_other_stores_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Source {
        store: src, seen, ..
    } = source(dir.path(), 1, 2).await;
    let target_dir = dir.path().join("target");
    let (flag, var) = fresh_metadata(&target_dir);
    let blob_flag = format!("fs:{}", target_dir.display());
    let target = Store {
        data_dir: target_dir.clone(),
        metadata: var,
        blob_store: "fs".into(),
        key: src.key.clone(),
    };
    let args = [
        "--metadata",
        flag.as_str(),
        "--blob-store",
        blob_flag.as_str(),
    ];
    let first = migrate_ok(&src, &args);
    let second = migrate_ok(&src, &args);
    assert_eq!(second["resumed"], true, "{second}");
    assert_eq!(second["blobs"]["copied"], 0, "{second}");
    assert_eq!(
        second["blobs"]["skipped"], first["blobs"]["copied"],
        "{second}"
    );
    let before = tables(&first);
    for (table, (read, written, in_target)) in tables(&second) {
        assert_eq!(written, 0, "{table}: the rerun rewrote rows: {second}");
        if table == "meta" {
            // Counted before the first run recorded `migrated_at`.
            continue;
        }
        let (read_before, _, in_target_before) = before[&table];
        assert_eq!(
            (read, in_target),
            (read_before, in_target_before),
            "{table}"
        );
    }
    assert_serves_the_same(&target, &seen, &[]).await;

    // A second copy into a PostgreSQL target while one runs: refused.
    if flag.starts_with("postgres") {
        use sqlx::Connection;
        let mut running = sqlx::postgres::PgConnection::connect(&flag)
            .await
            .expect("connect");
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(bpf_registry::registry::migrate::TARGET_LOCK)
            .execute(&mut running)
            .await
            .expect("lock");
        let (code, _, err) = run(&src, &["migrate", "--metadata", &flag]);
        assert_eq!(code, 2, "{err}");
        assert!(
            err.contains("another `bpf-registry migrate` is copying"),
            "{err}"
        );
        running.close().await.expect("close");
        migrate_ok(&src, &args);
    }

    // Another store onto this target: refused, exit 2, nothing changed.
    let other_dir = tempfile::tempdir().expect("tempdir");
    let other = source(other_dir.path(), 0, 0).await.store;
    let (code, out, err) = run(
        &other,
        &["migrate", "--metadata", &flag, "--blob-store", &blob_flag],
    );
    assert_eq!(code, 2, "{out}\n{err}");
    assert!(err.contains("holds a copy of another store"), "{err}");
    assert_serves_the_same(&target, &seen, &[]).await;

    // A database a server wrote itself (no copy): refused too.
    let used_dir = dir.path().join("used");
    let (used_flag, used_var) = fresh_metadata(&used_dir);
    let used = Store {
        data_dir: used_dir.clone(),
        metadata: used_var,
        blob_store: "fs".into(),
        key: src.key.clone(),
    };
    let mut s = used.start().await;
    s.push_blob(&client(), "someone/else", b"their blob").await;
    s.stop().await;
    let used_blobs = format!("fs:{}", used_dir.display());
    let (code, _, err) = run(
        &src,
        &[
            "migrate",
            "--metadata",
            &used_flag,
            "--blob-store",
            &used_blobs,
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("already holds another store"), "{err}");

    // The source itself as the target: refused.
    let own = format!("sqlite:{}", src.data_dir.join("metadata.db").display());
    let (code, _, err) = run(&src, &["migrate", "--metadata", &own]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is the source itself"), "{err}");

    // Beside a server running on the source: refused, with the reason.
    let mut s = src.start().await;
    let (code, _, err) = run(
        &src,
        &["migrate", "--metadata", &flag, "--blob-store", &blob_flag],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("is in use by a running bpf-registry server"),
        "{err}"
    );
    s.stop().await;

    // Usage errors are exit 2 too.
    let (code, _, err) = run(&src, &["migrate", "--metadata", "mysql://x"]);
    assert_eq!(code, 2, "{err}");
}

/// Starts `migrate` and kills it (SIGKILL) as soon as a line of its log
/// matches `on_line` or `on_poll` (polled every 2 ms) holds; `false` if it
/// finished first.
fn migrate_killed_when(
    source: &Store,
    args: &[&str],
    on_line: impl Fn(&str) -> bool + Send + 'static,
    on_poll: impl Fn() -> bool,
) -> bool {
    use std::os::unix::process::ExitStatusExt;
    let mut full = vec!["migrate"];
    full.extend_from_slice(args);
    let mut child = command(source, &full)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start migrate");
    let pid = child.id() as libc::pid_t;
    let stderr = child.stderr.take().expect("stderr");
    // The reader kills at once (no hop to this thread): the moment is the
    // line's, not a poll's.
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if on_line(&line) {
                // SAFETY: signals our own child, not yet reaped (the
                // reaper below waits for this thread first).
                unsafe { libc::kill(pid, libc::SIGKILL) };
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if reader.is_finished() {
            break;
        }
        if on_poll() {
            let _ = child.kill();
            break;
        }
        assert!(Instant::now() < deadline, "migrate hung");
        std::thread::sleep(Duration::from_millis(2));
    }
    let status = child.wait().expect("wait");
    let _ = reader.join();
    status.signal() == Some(libc::SIGKILL)
}

#[tokio::test]
async fn a_kill_at_any_moment_is_resumed_by_the_next_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    // 40 images of 8 layers: 320 distinct 4 KiB blobs, each copy fsynced.
    let Source {
        store: src, seen, ..
    } = source(dir.path(), 40, 8).await;
    let target_dir = dir.path().join("target");
    let (flag, var) = fresh_metadata(&target_dir);
    let blob_flag = format!("fs:{}", target_dir.display());
    let target = Store {
        data_dir: target_dir.clone(),
        metadata: var,
        blob_store: "fs".into(),
        key: src.key.clone(),
    };
    let args = [
        "--metadata",
        flag.as_str(),
        "--blob-store",
        blob_flag.as_str(),
        "--batch-rows",
        "3",
    ];
    // Mid-blobs (the copy logs every table it starts; blobs come first),
    // then at the start of each of several tables: earlier tables
    // committed, the table at hand cut between two batches.
    let blobs_dir = target_dir.join("blobs/sha256");
    let count_blobs = || {
        std::fs::read_dir(&blobs_dir)
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let mut kills = 0;
    if migrate_killed_when(&src, &args, |_| false, || count_blobs() >= 100) {
        kills += 1;
    }
    let landed = count_blobs();
    assert!(
        landed < 330,
        "the kill came after the blob copy ({landed} blobs)"
    );
    for table in ["manifests", "artifacts", "tags", "meta"] {
        let needle = format!("table=\"{table}\"");
        let on_line = move |l: &str| l.contains("copying rows") && l.contains(&needle);
        if migrate_killed_when(&src, &args, on_line, || false) {
            kills += 1;
        }
    }
    eprintln!("migrate killed {kills} times ({landed} blobs had landed at the first kill)");
    assert!(kills >= 4, "the runs were not interrupted ({kills} kills)");
    let last = migrate_ok(&src, &args);
    assert_eq!(last["resumed"], true, "{last}");
    // The same result as one uninterrupted copy into a fresh target.
    let fresh_dir = dir.path().join("fresh");
    let (fresh_flag, _) = fresh_metadata(&fresh_dir);
    let fresh_blobs = format!("fs:{}", fresh_dir.display());
    let fresh = migrate_ok(
        &src,
        &["--metadata", &fresh_flag, "--blob-store", &fresh_blobs],
    );
    let total = fresh["blobs"]["copied"].as_u64().expect("n");
    assert!(total > 320, "{fresh}");
    assert_eq!(
        last["blobs"]["copied"].as_u64().expect("n")
            + last["blobs"]["skipped"].as_u64().expect("n"),
        total
    );
    let in_target = |r: &Value| -> BTreeMap<String, u64> {
        tables(r)
            .into_iter()
            .filter(|(t, _)| t != "meta")
            .map(|(t, (_, _, n))| (t, n))
            .collect()
    };
    assert_eq!(in_target(&last), in_target(&fresh), "rows per table");
    let files = std::fs::read_dir(&blobs_dir).expect("blobs").count() as u64;
    assert_eq!(files, total, "no stray or missing blob files");
    assert_serves_the_same(&target, &seen, &[]).await;
    scrub_ok(&target);
}

#[tokio::test]
async fn a_blob_that_does_not_match_its_digest_is_not_copied_and_no_row_is() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = source(dir.path(), 1, 1).await.store;
    let layer = common::sha256(b"layer three");
    let file = src
        .data_dir
        .join("blobs/sha256")
        .join(common::hex_of(&layer));
    std::fs::write(&file, b"layer thre3").expect("corrupt a blob");
    let target_dir = dir.path().join("target");
    let (flag, var) = fresh_metadata(&target_dir);
    let blob_flag = format!("fs:{}", target_dir.display());
    let (code, out, err) = run(
        &src,
        &["migrate", "--metadata", &flag, "--blob-store", &blob_flag],
    );
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        err.contains(&format!("blob {layer} holds 11 bytes hashing to")),
        "{err}"
    );
    assert!(err.contains("no rows were copied"), "{err}");
    assert!(!target_dir
        .join("blobs/sha256")
        .join(common::hex_of(&layer))
        .exists());
    let target = Store {
        data_dir: target_dir,
        metadata: var,
        blob_store: "fs".into(),
        key: src.key.clone(),
    };
    let s = target.start().await;
    let catalog = json_of(&get(&s, "/v2/_catalog", None).await);
    assert_eq!(catalog["repositories"], json!([]), "{catalog}");
}

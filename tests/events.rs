//! Events: CloudEvents 1.0 delivered to a webhook (a receiver inside the
//! test on 127.0.0.1:0) for every change type, signed with HMAC-SHA256,
//! retried with the same id, never slowing a push, and kept across a
//! restart by the outbox. Run on fs + SQLite and with
//! `BPF_TEST_METADATA=postgres`.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode as AxumStatus};
use base64::Engine as _;
use common::{client, pseudo_random, TestServer, OCI_MANIFEST};
use reqwest::StatusCode;
use serde_json::{json, Value};

const SECRET: &str = "test-secret-0123456789";
/// A liveness bound, not a measurement: a delivery that takes longer is lost.
const WAIT: Duration = Duration::from_secs(30);

/// What the receiver does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Accept,
    /// 503 to everything (the receiver is "down").
    Refuse,
    /// 500 the first time an id arrives, 200 after.
    FailFirst,
    /// Never answers.
    Hang,
    /// 200 after 300 ms (deliveries overlap other replicas' polls).
    Slow,
}

#[derive(Debug, Clone)]
struct Delivery {
    content_type: String,
    signature: String,
    body: Vec<u8>,
    event: Value,
    /// The status the receiver answered (0: it hung).
    status: u16,
}

impl Delivery {
    fn id(&self) -> &str {
        self.event["id"].as_str().unwrap_or("")
    }
}

#[derive(Default)]
struct Inbox {
    mode: Option<Mode>,
    got: Vec<Delivery>,
}

#[derive(Clone)]
struct Receiver {
    url: String,
    inbox: Arc<Mutex<Inbox>>,
}

async fn receive(
    State(inbox): State<Arc<Mutex<Inbox>>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> AxumStatus {
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let event: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (status, mode) = {
        let mut inbox = inbox.lock().expect("inbox");
        let mode = inbox.mode.unwrap_or(Mode::Accept);
        let id = event["id"].as_str().unwrap_or("").to_string();
        let seen = inbox.got.iter().any(|d| d.id() == id);
        let status = match mode {
            Mode::Accept | Mode::Slow => 200,
            Mode::Refuse => 503,
            Mode::FailFirst if !seen => 500,
            Mode::FailFirst => 200,
            Mode::Hang => 0,
        };
        inbox.got.push(Delivery {
            content_type: header("content-type"),
            signature: header("x-registry-signature"),
            body: body.to_vec(),
            event,
            status,
        });
        (status, mode)
    };
    match mode {
        Mode::Hang => std::future::pending::<()>().await,
        Mode::Slow => tokio::time::sleep(Duration::from_millis(300)).await,
        _ => {}
    }
    AxumStatus::from_u16(status).unwrap_or(AxumStatus::INTERNAL_SERVER_ERROR)
}

impl Receiver {
    async fn start(mode: Mode) -> Receiver {
        let inbox = Arc::new(Mutex::new(Inbox {
            mode: Some(mode),
            got: Vec::new(),
        }));
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(inbox.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the receiver");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            url: format!("http://{addr}/hook"),
            inbox,
        }
    }

    fn set_mode(&self, mode: Mode) {
        self.inbox.lock().expect("inbox").mode = Some(mode);
    }

    fn got(&self) -> Vec<Delivery> {
        self.inbox.lock().expect("inbox").got.clone()
    }

    /// Waits (bounded) until `done` holds for what arrived.
    async fn wait_for(&self, what: &str, done: impl Fn(&[Delivery]) -> bool) -> Vec<Delivery> {
        let start = Instant::now();
        loop {
            let got = self.got();
            if done(&got) {
                return got;
            }
            if start.elapsed() > WAIT {
                let types: Vec<String> = got
                    .iter()
                    .map(|d| format!("{} {} {}", d.status, d.event["type"], d.event["subject"]))
                    .collect();
                panic!("{what}: not delivered within {WAIT:?}; got {types:#?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn env<'a>(receiver: &'a Receiver, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut v = vec![
        ("BPF_REGISTRY_EVENTS_WEBHOOK", receiver.url.as_str()),
        ("BPF_REGISTRY_EVENTS_SECRET", SECRET),
        ("BPF_REGISTRY_GC_INTERVAL", "0"),
    ];
    v.extend_from_slice(extra);
    v
}

/// The HMAC-SHA256 a receiver computes over the exact body.
fn expected_signature(body: &[u8]) -> String {
    use aws_lc_rs::hmac;
    let key = hmac::Key::new(hmac::HMAC_SHA256, SECRET.as_bytes());
    format!("sha256={}", hex::encode(hmac::sign(&key, body).as_ref()))
}

/// A plain image (empty config, one octet-stream layer) under `tag`.
async fn push_plain(s: &TestServer, repo: &str, tag: &str, seed: u64) -> String {
    let c = client();
    let config = s.push_empty_config(&c, repo).await;
    let layer = pseudo_random(64, seed);
    let layer_digest = s.push_blob(&c, repo, &layer).await;
    let body = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config,
        "layers": [{"mediaType": "application/octet-stream", "digest": layer_digest, "size": layer.len()}],
    }))
    .expect("json");
    s.put_manifest_ok(&c, repo, tag, OCI_MANIFEST, &body).await
}

fn of_type<'a>(got: &'a [Delivery], kind: &str) -> Vec<&'a Delivery> {
    let full = format!("dev.aegisflux.registry.{kind}");
    let mut seen = std::collections::BTreeSet::new();
    got.iter()
        .filter(|d| d.event["type"] == full.as_str() && seen.insert(d.id().to_string()))
        .collect()
}

fn p256_key_file(dir: &std::path::Path) -> std::path::PathBuf {
    use p256::pkcs8::{EncodePrivateKey, LineEnding};
    let sk = p256::SecretKey::from_slice(&pseudo_random(32, 77)).expect("scalar");
    let pem = sk.to_pkcs8_pem(LineEnding::LF).expect("pem").to_string();
    let path = dir.join("signing.pem");
    std::fs::write(&path, pem).expect("write key");
    std::fs::set_permissions(
        &path,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600),
    )
    .expect("chmod");
    path
}

fn check_cloudevent(d: &Delivery) {
    assert_eq!(
        d.content_type, "application/cloudevents+json",
        "{:?}",
        d.event
    );
    assert_eq!(d.signature, expected_signature(&d.body), "{:?}", d.event);
    let e = &d.event;
    assert_eq!(e["specversion"], "1.0", "{e}");
    assert_eq!(e["datacontenttype"], "application/json", "{e}");
    let id = e["id"].as_str().expect("id");
    assert!(uuid_like(id), "{e}");
    let repo = e["data"]["repository"].as_str().expect("data.repository");
    assert_eq!(e["source"], format!("/v2/{repo}"), "{e}");
    assert!(
        e["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("dev.aegisflux.registry.")),
        "{e}"
    );
    assert!(e["subject"].as_str().is_some_and(|s| !s.is_empty()), "{e}");
    let time = e["time"].as_str().expect("time");
    time::OffsetDateTime::parse(time, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|err| panic!("time {time:?} is not RFC 3339: {err}"));
    assert!(e["data"].is_object(), "{e}");
}

fn uuid_like(s: &str) -> bool {
    s.len() == 36 && s.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}

#[tokio::test]
async fn every_change_type_arrives_once_as_a_signed_cloudevent() {
    let receiver = Receiver::start(Mode::Accept).await;
    let keys = tempfile::tempdir().expect("tempdir");
    let key = p256_key_file(keys.path());
    let key = key.to_str().expect("utf8");
    let s = TestServer::start_with_env(&env(
        &receiver,
        &[
            ("BPF_REGISTRY_SIGNER", "key"),
            ("BPF_REGISTRY_SIGNING_KEY", key),
        ],
    ))
    .await;
    let c = client();

    // OCI: two pushes under one tag, the tag deleted, a manifest deleted.
    let repo = "ev/app";
    let first = push_plain(&s, repo, "v1", 1).await;
    let second = push_plain(&s, repo, "v1", 2).await;
    // The same bytes under the same tag again change nothing: no event.
    push_plain(&s, repo, "v1", 2).await;
    let r = c
        .delete(s.url(&format!("/v2/{repo}/manifests/v1")))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = c
        .delete(s.url(&format!("/v2/{repo}/manifests/{first}")))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::ACCEPTED);

    // REST: an artifact created (signed) with a host, another host added,
    // the first removed, the artifact deleted.
    let data = base64::engine::general_purpose::STANDARD.encode(pseudo_random(300, 9));
    let r = c
        .post(s.url("/artifacts"))
        .json(
            &json!({"name": "ev-rest", "version": "1.0.0", "type": "map",
                      "architecture": "x86_64", "data": data, "hosts": ["h1"]}),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::CREATED);
    let a: Value = r.json().await.expect("json");
    let id = a["id"].as_str().expect("id").to_string();
    let artifact_digest = a["oci"]["manifest_digest"]
        .as_str()
        .expect("digest")
        .to_string();
    assert!(a["signature"].is_object(), "signed: {a}");
    let r = c
        .post(s.url(&format!("/artifacts/{id}/hosts")))
        .json(&json!({"host_id": "h2"}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = c
        .delete(s.url(&format!("/artifacts/{id}/hosts/h1")))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = c
        .delete(s.url(&format!("/artifacts/{id}")))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    // The last change: once its event is in, every earlier one was sent.
    let sentinel = push_plain(&s, "ev/sentinel", "last", 3).await;

    let got = receiver
        .wait_for("the sentinel push", |got| {
            got.iter().any(|d| {
                d.event["type"] == "dev.aegisflux.registry.manifest.pushed"
                    && d.event["subject"] == sentinel.as_str()
            })
        })
        .await;
    for d in &got {
        check_cloudevent(d);
    }
    // One id is one body: a retry would resend the same bytes.
    let mut bodies: BTreeMap<&str, &[u8]> = BTreeMap::new();
    for d in &got {
        let prev = bodies.insert(d.id(), &d.body);
        assert!(prev.is_none_or(|b| b == d.body.as_slice()), "{}", d.id());
    }

    let in_repo = |kind: &str, r: &str| -> Vec<Value> {
        of_type(&got, kind)
            .into_iter()
            .filter(|d| d.event["data"]["repository"] == r)
            .map(|d| d.event.clone())
            .collect()
    };
    let pushed = in_repo("manifest.pushed", repo);
    let pushed_digests: Vec<&str> = pushed
        .iter()
        .filter_map(|e| e["subject"].as_str())
        .collect();
    assert_eq!(
        pushed_digests,
        [first.as_str(), second.as_str()],
        "{pushed:#?}"
    );
    assert_eq!(pushed[0]["data"]["tag"], "v1");
    assert_eq!(pushed[0]["data"]["mediaType"], OCI_MANIFEST);
    let moved = in_repo("tag.moved", repo);
    assert_eq!(moved.len(), 2, "{moved:#?}");
    assert_eq!(moved[0]["subject"], "v1");
    assert_eq!(moved[0]["data"]["digest"], first.as_str());
    assert_eq!(moved[0]["data"]["previous"], Value::Null);
    assert_eq!(moved[1]["data"]["digest"], second.as_str());
    assert_eq!(moved[1]["data"]["previous"], first.as_str());
    let tag_deleted = in_repo("tag.deleted", repo);
    assert_eq!(tag_deleted.len(), 1, "{tag_deleted:#?}");
    assert_eq!(tag_deleted[0]["data"]["digest"], second.as_str());
    let deleted = in_repo("manifest.deleted", repo);
    assert_eq!(deleted.len(), 1, "{deleted:#?}");
    assert_eq!(deleted[0]["subject"], first.as_str());

    let rest = "ev-rest";
    let created = in_repo("artifact.created", rest);
    assert_eq!(created.len(), 1, "{created:#?}");
    assert_eq!(created[0]["subject"], artifact_digest.as_str());
    assert_eq!(created[0]["data"]["name"], "ev-rest");
    assert_eq!(created[0]["data"]["version"], "1.0.0");
    assert_eq!(created[0]["data"]["architecture"], "x86_64");
    let added = in_repo("association.added", rest);
    let hosts: Vec<&str> = added
        .iter()
        .filter_map(|e| e["data"]["host"].as_str())
        .collect();
    assert_eq!(hosts, ["h1", "h2"], "{added:#?}");
    assert!(added
        .iter()
        .all(|e| e["data"]["artifact"] == artifact_digest.as_str()));
    let removed = in_repo("association.removed", rest);
    let hosts: Vec<&str> = removed
        .iter()
        .filter_map(|e| e["data"]["host"].as_str())
        .collect();
    // h1 by its DELETE, h2 with the artifact.
    assert_eq!(hosts, ["h1", "h2"], "{removed:#?}");
    let signed = in_repo("signature.stored", rest);
    assert_eq!(signed.len(), 1, "{signed:#?}");
    assert_eq!(signed[0]["data"]["artifact"], artifact_digest.as_str());
    assert!(signed[0]["data"]["keyId"]
        .as_str()
        .is_some_and(|k| k.starts_with("key:")));
    let gone = in_repo("artifact.deleted", rest);
    assert_eq!(gone.len(), 1, "{gone:#?}");
    assert_eq!(gone[0]["subject"], artifact_digest.as_str());

    // The metrics count them.
    let metrics = c
        .get(s.url("/metrics"))
        .send()
        .await
        .expect("send")
        .text()
        .await
        .expect("text");
    let delivered = metric(&metrics, "registry_events_delivered_total");
    assert!(delivered >= got.len() as f64, "{delivered} < {}", got.len());
    assert!(metrics.contains("registry_events_pending"), "{metrics}");
    assert!(
        metrics.contains("registry_events_failed_total"),
        "{metrics}"
    );
}

fn metric(exposition: &str, name: &str) -> f64 {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {name} in {exposition}"))
}

#[tokio::test]
async fn a_refused_delivery_is_retried_with_the_same_id_and_bytes() {
    let receiver = Receiver::start(Mode::FailFirst).await;
    let s = TestServer::start_with_env(&env(&receiver, &[])).await;
    let digest = push_plain(&s, "ev/retry", "t", 4).await;
    let got = receiver
        .wait_for("the retried push event", |got| {
            got.iter()
                .any(|d| d.status == 200 && d.event["subject"] == digest.as_str())
        })
        .await;
    let attempts: Vec<&Delivery> = got
        .iter()
        .filter(|d| d.event["subject"] == digest.as_str())
        .collect();
    assert!(attempts.len() >= 2, "{attempts:#?}");
    assert_eq!(attempts[0].status, 500);
    let last = attempts.last().expect("one");
    assert_eq!(last.status, 200);
    assert_eq!(attempts[0].id(), last.id(), "a retry keeps the event id");
    assert_eq!(attempts[0].body, last.body, "a retry sends the same bytes");
    assert_eq!(attempts[0].signature, last.signature);
    let metrics = client()
        .get(s.url("/metrics"))
        .send()
        .await
        .expect("send")
        .text()
        .await
        .expect("text");
    assert!(metric(&metrics, "registry_events_failed_total") >= 1.0);
}

#[tokio::test]
async fn a_receiver_that_hangs_slows_no_push_and_holds_a_bounded_batch() {
    let receiver = Receiver::start(Mode::Hang).await;
    let s = TestServer::start_with_env(&env(&receiver, &[("BPF_REGISTRY_EVENTS_TIMEOUT", "120s")]))
        .await;
    push_plain(&s, "ev/hang", "first", 10).await;
    // The deliverer is now stuck in a request that never ends.
    receiver
        .wait_for("the first hanging request", |got| !got.is_empty())
        .await;
    let started = Instant::now();
    for i in 0..40u64 {
        let one = Instant::now();
        push_plain(&s, "ev/hang", &format!("t{i}"), 100 + i).await;
        // A generous liveness bound: a push waiting on the receiver would
        // wait 120 s.
        assert!(
            one.elapsed() < Duration::from_secs(20),
            "push {i} took {:?} while the receiver hangs",
            one.elapsed()
        );
    }
    let took = started.elapsed();
    let in_flight = receiver.got().len();
    assert!(
        in_flight <= 32,
        "{in_flight} requests in flight to a hanging receiver: the batch is 32"
    );
    assert!(
        receiver.got().iter().all(|d| d.status == 0),
        "the receiver never answered"
    );
    eprintln!("40 pushes in {took:?} with a hanging receiver ({in_flight} requests held)");
}

#[tokio::test]
async fn pending_events_survive_a_restart_and_are_delivered_after_it() {
    let receiver = Receiver::start(Mode::Refuse).await;
    // A short timeout: a PostgreSQL lease cut by the stop ends within WAIT.
    let s =
        TestServer::start_with_env(&env(&receiver, &[("BPF_REGISTRY_EVENTS_TIMEOUT", "2s")])).await;
    let digest = push_plain(&s, "ev/restart", "t", 20).await;
    let refused = receiver
        .wait_for("a refused attempt", |got| {
            got.iter().any(|d| d.event["subject"] == digest.as_str())
        })
        .await;
    let id = refused
        .iter()
        .find(|d| d.event["subject"] == digest.as_str())
        .map(|d| d.id().to_string())
        .expect("id");
    assert!(refused.iter().all(|d| d.status == 503));
    let s = s
        .restart_after(|_| {
            // Back up while no server runs: only the restarted one can
            // deliver.
            receiver.set_mode(Mode::Accept);
        })
        .await;
    let got = receiver
        .wait_for("the event after the restart", |got| {
            got.iter().any(|d| d.status == 200 && d.id() == id)
        })
        .await;
    let delivered: Vec<&Delivery> = got.iter().filter(|d| d.status == 200).collect();
    assert!(delivered.iter().any(|d| d.id() == id));
    drop(s);
}

#[tokio::test]
async fn without_a_webhook_nothing_is_written_to_the_outbox() {
    let s = TestServer::start().await;
    push_plain(&s, "ev/none", "t", 30).await;
    let meta = s.metadata().await;
    assert_eq!(meta.events_pending().await.expect("count"), 0);
    assert_eq!(meta.events_written().await.expect("count"), 0);
}

#[tokio::test]
async fn a_webhook_that_is_not_http_stops_the_start_up() {
    let bad = bpf_registry::config::Config::from_lookup(|k| match k {
        "BPF_REGISTRY_EVENTS_WEBHOOK" => Some("http://127.0.0.1:9/ok,file:///etc/passwd".into()),
        "BPF_REGISTRY_EVENTS_SECRET" => Some(SECRET.into()),
        _ => None,
    })
    .expect_err("refused");
    assert_eq!(bad.var, "BPF_REGISTRY_EVENTS_WEBHOOK");
    assert!(bad.message.contains("http"), "{}", bad.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_on_one_postgres_deliver_each_event_once() {
    if common::engines::postgres_base_url().is_none() {
        let msg = "BPF_TEST_POSTGRES is not set: the replica event test did not run";
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{msg}");
        }
        eprintln!("SKIPPED: {msg}");
        return;
    }
    let receiver = Receiver::start(Mode::Slow).await;
    let db = common::engines::new_postgres_database();
    let shared = tempfile::tempdir().expect("tempdir");
    let data = shared.path().join("data");
    let data = data.to_string_lossy().into_owned();
    let mut extra: Vec<(&str, &str)> = vec![("BPF_REGISTRY_METADATA", db.as_str())];
    let blob_store = common::engines::fresh_server_env()
        .into_iter()
        .find(|(k, _)| k == "BPF_REGISTRY_BLOB_STORE");
    match &blob_store {
        Some((_, v)) => extra.push(("BPF_REGISTRY_BLOB_STORE", v.as_str())),
        None => extra.push(("BPF_REGISTRY_DATA_DIR", data.as_str())),
    }
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(TestServer::start_with_env(&env(&receiver, &extra)).await);
    }
    let mut digests = Vec::new();
    for i in 0..30u64 {
        let s = &replicas[i as usize % 3];
        digests.push(push_plain(s, "ev/replicas", &format!("t{i}"), 200 + i).await);
    }
    // Every change's two events (manifest pushed, tag moved) arrive...
    receiver
        .wait_for("the events of 30 pushes on 3 replicas", |got| {
            of_type(got, "manifest.pushed").len() == 30 && of_type(got, "tag.moved").len() == 30
        })
        .await;
    // ...and once all are marked delivered, no replica sends one again.
    let meta = replicas[0].metadata().await;
    let start = Instant::now();
    while meta.events_pending().await.expect("count") > 0 {
        assert!(start.elapsed() < WAIT, "deliveries never marked done");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = receiver.got();
    let mut per_id: BTreeMap<&str, usize> = BTreeMap::new();
    for d in &got {
        *per_id.entry(d.id()).or_default() += 1;
    }
    let twice: Vec<_> = per_id.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    assert_eq!(per_id.len(), 60);
    let pushed: Vec<&str> = of_type(&got, "manifest.pushed")
        .iter()
        .filter_map(|d| d.event["subject"].as_str())
        .collect();
    for d in &digests {
        assert!(pushed.contains(&d.as_str()), "{d}");
    }
}

/// A channel move and its rollback each arrive as `channel.moved` (with
/// the version, the manifest, the one before and the action) and as the
/// `tag.moved` of the OCI tag the channel is; a refused rollback has none.
#[tokio::test]
async fn channel_moves_and_rollbacks_arrive_as_channel_and_tag_events() {
    let receiver = Receiver::start(Mode::Accept).await;
    let s = TestServer::start_with_env(&env(&receiver, &[])).await;
    let c = client();
    let mut digests = Vec::new();
    for v in ["1.0.0", "2.0.0"] {
        let data = base64::engine::general_purpose::STANDARD.encode(format!("prog {v}"));
        let r = c
            .post(s.url("/artifacts"))
            .json(&json!({"name": "ev/chan", "version": v, "type": "map",
                          "architecture": "x86_64", "data": data}))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), StatusCode::CREATED);
        let a: Value = r.json().await.expect("json");
        digests.push(
            a["oci"]["manifest_digest"]
                .as_str()
                .expect("digest")
                .to_string(),
        );
    }
    for v in ["1.0.0", "2.0.0"] {
        let r = c
            .put(s.url("/channels/ev/chan/stable"))
            .json(&json!({ "version": v }))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), StatusCode::OK);
    }
    let rollback = s.url("/channels/ev/chan/stable/rollback");
    let r = c.post(&rollback).send().await.expect("send");
    assert_eq!(r.status(), StatusCode::OK);
    let r = c.post(&rollback).send().await.expect("send");
    assert_eq!(r.status(), StatusCode::CONFLICT, "nothing before 1.0.0");
    let got = receiver
        .wait_for("three channel moves", |got| {
            of_type(got, "channel.moved").len() >= 3
        })
        .await;
    let moves: Vec<&Value> = of_type(&got, "channel.moved")
        .into_iter()
        .map(|d| &d.event)
        .collect();
    assert_eq!(moves.len(), 3, "{moves:#?}");
    let seen: Vec<(&str, &str, &Value)> = moves
        .iter()
        .map(|e| {
            (
                e["data"]["version"].as_str().unwrap_or_default(),
                e["data"]["action"].as_str().unwrap_or_default(),
                &e["data"]["previous"],
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("1.0.0", "move", &Value::Null),
            ("2.0.0", "move", &json!(digests[0])),
            ("1.0.0", "rollback", &json!(digests[1])),
        ]
    );
    for e in &moves {
        assert_eq!(e["subject"], "stable");
        assert_eq!(e["data"]["repository"], "ev/chan");
        assert_eq!(e["data"]["channel"], "stable");
    }
    assert_eq!(moves[2]["data"]["digest"], digests[0].as_str());
    let tag_moves: Vec<&Value> = of_type(&got, "tag.moved")
        .into_iter()
        .map(|d| &d.event)
        .filter(|e| e["subject"] == "stable")
        .collect();
    let targets: Vec<&Value> = tag_moves.iter().map(|e| &e["data"]["digest"]).collect();
    assert_eq!(
        targets,
        [&json!(digests[0]), &json!(digests[1]), &json!(digests[0])],
        "{tag_moves:#?}"
    );
}

#[tokio::test]
async fn a_refused_change_has_no_event() {
    let receiver = Receiver::start(Mode::Accept).await;
    let s = TestServer::start_with_env(&env(&receiver, &[])).await;
    let c = client();
    let repo = "ev/refused";
    let config = s.push_empty_config(&c, repo).await;
    // References a blob the repository does not have: refused, nothing
    // stored, so nothing to report.
    let missing = common::sha256(b"never uploaded");
    let body = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config,
        "layers": [{"mediaType": "application/octet-stream", "digest": missing, "size": 14}],
    }))
    .expect("json");
    let r = s.put_manifest(&c, repo, "bad", OCI_MANIFEST, &body).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let refused = common::sha256(&body);
    // Deleting what is not there changes nothing either.
    let r = c
        .delete(s.url(&format!("/v2/{repo}/manifests/{refused}")))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let sentinel = push_plain(&s, repo, "ok", 40).await;
    let got = receiver
        .wait_for("the sentinel push", |got| {
            got.iter().any(|d| d.event["subject"] == sentinel.as_str())
        })
        .await;
    let about_refused: Vec<&Value> = got
        .iter()
        .map(|d| &d.event)
        .filter(|e| e["subject"] == refused.as_str() || e["subject"] == "bad")
        .collect();
    assert!(about_refused.is_empty(), "{about_refused:#?}");
    let kinds: Vec<&str> = got
        .iter()
        .filter_map(|d| d.event["type"].as_str())
        .collect();
    assert_eq!(
        kinds,
        [
            "dev.aegisflux.registry.manifest.pushed",
            "dev.aegisflux.registry.tag.moved"
        ]
    );
}

#[tokio::test]
async fn a_delivery_cut_by_a_stop_is_sent_again_after_the_restart() {
    let receiver = Receiver::start(Mode::Hang).await;
    // A lease (timeout + 10 s) longer than WAIT: only a lease ended at the
    // stop (PostgreSQL) or voided at the start (SQLite) lets the restarted
    // server send the event again in time.
    let s = TestServer::start_with_env(&env(&receiver, &[("BPF_REGISTRY_EVENTS_TIMEOUT", "120s")]))
        .await;
    let digest = push_plain(&s, "ev/cut", "t", 50).await;
    let hung = receiver
        .wait_for("the hanging delivery", |got| {
            got.iter().any(|d| d.event["subject"] == digest.as_str())
        })
        .await;
    let id = hung
        .iter()
        .find(|d| d.event["subject"] == digest.as_str())
        .map(|d| d.id().to_string())
        .expect("id");
    let s = s.restart_after(|_| receiver.set_mode(Mode::Accept)).await;
    receiver
        .wait_for("the cut delivery, again", |got| {
            got.iter().any(|d| d.status == 200 && d.id() == id)
        })
        .await;
    drop(s);
}

//! The web console at `/ui/` against a real server: its pages show what
//! was pushed (eBPF facts, hosts, pull commands, tags and referrers),
//! tenant-written text is escaped, every answer carries the strict CSP,
//! and with authentication on the console asks for the API's credentials
//! and shows a user nothing of a repository they may not pull, neither in
//! lists nor by URL.

mod common;

use std::process::Command;

use base64::Engine as _;
use common::attacker::{password, write_htpasswd, ATTACKER_POLICY, ATTACKER_USERS};
use common::{header, TestServer};
use reqwest::StatusCode;
use serde_json::{json, Value};

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

const XSS: &str = "<script>alert(1)</script>";
const XSS_ESCAPED: &str = "&lt;script&gt;alert(1)&lt;/script&gt;";

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

/// An eBPF object compiled with clang (the test fails without clang).
fn bpf_object() -> Vec<u8> {
    let dir = tempfile::tempdir().expect("temp dir");
    let src = dir.path().join("x.c");
    let obj = dir.path().join("x.o");
    std::fs::write(&src, BPF_PROGRAMS).expect("write x.c");
    let include = format!("-I/usr/include/{}-linux-gnu", std::env::consts::ARCH);
    let out = Command::new("clang")
        .args(["-O2", "-g", "-target", "bpf", "-c"])
        .arg(&src)
        .arg("-o")
        .arg(&obj)
        .arg(&include)
        .output()
        .expect("clang is required (apt-get install clang libbpf-dev)");
    assert!(
        out.status.success(),
        "clang: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(&obj).expect("read x.o")
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

async fn create(c: &reqwest::Client, s: &TestServer, body: Value) -> Value {
    let r = c
        .post(s.url("/artifacts"))
        .json(&body)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::CREATED, "create {body}");
    r.json().await.expect("json")
}

async fn add_host(c: &reqwest::Client, s: &TestServer, id: &str, repo: &str, host: &str) {
    let r = c
        .post(s.url(&format!("/artifacts/{id}/hosts?repository={repo}")))
        .json(&json!({ "host_id": host }))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::CREATED, "associate {host}");
}

/// A page: its status, headers and body.
struct Page {
    status: StatusCode,
    csp: Option<String>,
    nosniff: Option<String>,
    challenge: Option<String>,
    content_type: Option<String>,
    body: String,
}

async fn page(c: &reqwest::Client, s: &TestServer, path: &str) -> Page {
    let r = c.get(s.url(path)).send().await.expect("send");
    Page {
        status: r.status(),
        csp: header(&r, "content-security-policy"),
        nosniff: header(&r, "x-content-type-options"),
        challenge: header(&r, "www-authenticate"),
        content_type: header(&r, "content-type"),
        body: r.text().await.expect("body"),
    }
}

async fn ok_page(c: &reqwest::Client, s: &TestServer, path: &str) -> String {
    let p = page(c, s, path).await;
    assert_eq!(p.status, StatusCode::OK, "{path}: {}", p.body);
    assert_eq!(
        p.content_type.as_deref(),
        Some("text/html; charset=utf-8"),
        "{path}"
    );
    p.body
}

fn assert_has(body: &str, needles: &[&str], what: &str) {
    for n in needles {
        assert!(
            body.contains(n),
            "{what}: {n:?} missing from the page:\n{body}"
        );
    }
}

fn assert_lacks(body: &str, needles: &[&str], what: &str) {
    for n in needles {
        assert!(!body.contains(n), "{what}: {n:?} is on the page:\n{body}");
    }
}

#[tokio::test]
async fn console_pages_show_pushed_artifacts_with_ebpf_facts_hosts_and_pull_commands() {
    let s = TestServer::start().await;
    let c = reqwest::Client::new();
    let prog = create(
        &c,
        &s,
        json!({"name": "net/xdp-counter", "version": "1.2.0", "type": "program",
               "architecture": "x86_64", "description": "counts packets",
               "tags": ["stable"], "data": b64(&bpf_object())}),
    )
    .await;
    let id = prog["id"].as_str().expect("id").to_string();
    add_host(&c, &s, &id, "net/xdp-counter", "edge-node-7").await;
    let arm = create(
        &c,
        &s,
        json!({"name": "net/xdp-counter", "version": "1.2.0", "type": "program",
               "architecture": "aarch64", "data": b64(b"not an object")}),
    )
    .await;
    create(
        &c,
        &s,
        json!({"name": "ops/shared-map", "version": "0.1.0", "type": "map",
               "architecture": "x86_64", "data": b64(b"map payload")}),
    )
    .await;

    let index = ok_page(&c, &s, "/ui/").await;
    assert_has(
        &index,
        &[
            "net/xdp-counter",
            "ops/shared-map",
            "1.2.0",
            "0.1.0",
            "stable",
            &format!("/ui/artifacts/{id}?repository=net%2Fxdp-counter"),
            "/ui/repositories/net/xdp-counter",
        ],
        "index",
    );

    let art = ok_page(
        &c,
        &s,
        &format!("/ui/artifacts/{id}?repository=net/xdp-counter"),
    )
    .await;
    let authority = s.addr.to_string();
    assert_has(
        &art,
        &[
            "counts packets",
            "xdp_pass_all",
            "kprobe/do_unlinkat",
            "kprobe",
            "pkt_count",
            "GPL",
            "edge-node-7",
            "/ui/hosts/edge-node-7",
            // the other platform of the version
            "aarch64",
            &arm["id"].as_str().expect("id")[7..19],
            &format!("oras pull --plain-http {authority}/net/xdp-counter:1.2.0"),
            &format!(
                "curl -fLOJ 'http://{authority}/artifacts/{id}/binary?repository=net%2Fxdp-counter'"
            ),
            "unsigned",
        ],
        "artifact page",
    );
    // The same page without ?repository= (the first copy).
    let first = ok_page(&c, &s, &format!("/ui/artifacts/{id}")).await;
    assert_has(&first, &["xdp_pass_all"], "artifact page by id");

    let host = ok_page(&c, &s, "/ui/hosts/edge-node-7").await;
    assert_has(
        &host,
        &["net/xdp-counter", "1.2.0", &id[7..19]],
        "host page",
    );
    assert_lacks(&host, &["ops/shared-map"], "host page");
    assert_has(&host, &["Not registered"], "an unregistered host");
    assert_lacks(&host, &["Deployments"], "an unregistered host");

    // Registered, with a report: its facts, labels and deployments, the
    // agent's free text escaped.
    let r = c
        .put(s.url("/hosts/edge-node-7"))
        .json(
            &json!({"architecture": "x86_64", "kernel_release": "5.15.0-91-generic",
                      "btf": true, "labels": {"env": "prod", "role": "edge"},
                      "agent_version": "1.4.2"}),
        )
        .send()
        .await
        .expect("register");
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = c
        .put(s.url(&format!("/hosts/edge-node-7/deployments/{id}")))
        .json(&json!({"state": "failed", "attach_point": "eth0/xdp", "message": XSS}))
        .send()
        .await
        .expect("report");
    assert_eq!(r.status(), StatusCode::OK);
    let host = ok_page(&c, &s, "/ui/hosts/edge-node-7").await;
    assert_has(
        &host,
        &[
            "5.15.0-91-generic",
            "x86_64",
            "1.4.2",
            "env=prod",
            "role=edge",
            "Deployments",
            "eth0/xdp",
            "state-failed",
            XSS_ESCAPED,
            "net/xdp-counter",
        ],
        "a registered host's page",
    );
    assert_lacks(&host, &[XSS, "Not registered"], "a registered host's page");

    let repo = ok_page(&c, &s, "/ui/repositories/net/xdp-counter").await;
    assert_has(
        &repo,
        &[
            "1.2.0",
            "x86_64",
            "aarch64",
            // the host association is a referrer of the artifact
            "application/vnd.aegisflux.bpf.host-association",
            "edge-node-7",
        ],
        "repository page",
    );
    assert_lacks(&repo, &["ops/shared-map"], "repository page");
}

#[tokio::test]
async fn filters_search_and_paging_narrow_the_list() {
    let s = TestServer::start().await;
    let c = reqwest::Client::new();
    for (name, kind, arch, tags) in [
        ("team/alpha", "program", "x86_64", vec!["prod"]),
        ("team/beta", "map", "aarch64", vec!["dev"]),
        ("other/gamma", "tracepoint", "x86_64", vec!["prod"]),
    ] {
        create(
            &c,
            &s,
            json!({"name": name, "version": "1.0.0", "type": kind, "architecture": arch,
                   "tags": tags, "data": b64(name.as_bytes())}),
        )
        .await;
    }
    let rows = |body: &str| -> Vec<String> {
        let mut v: Vec<String> = body
            .split("data-name=\"")
            .skip(1)
            .filter_map(|s| s.split('"').next())
            .map(str::to_string)
            .collect();
        v.sort();
        v
    };
    let all = ok_page(&c, &s, "/ui/").await;
    assert_eq!(rows(&all), ["other/gamma", "team/alpha", "team/beta"]);
    for (q, want) in [
        ("type=map", vec!["team/beta"]),
        ("architecture=x86_64", vec!["other/gamma", "team/alpha"]),
        ("tag=prod", vec!["other/gamma", "team/alpha"]),
        ("repository=team%2Falpha", vec!["team/alpha"]),
        ("q=team", vec!["team/alpha", "team/beta"]),
        ("q=TEAM&type=program", vec!["team/alpha"]),
        ("q=nothing-matches", vec![]),
        // empty form fields are no filter
        (
            "q=&type=&architecture=&repository=&tag=",
            vec!["other/gamma", "team/alpha", "team/beta"],
        ),
    ] {
        let body = ok_page(&c, &s, &format!("/ui/?{q}")).await;
        assert_eq!(rows(&body), want, "{q}");
    }
    // The search narrows the repositories list too.
    let body = ok_page(&c, &s, "/ui/?q=gamma").await;
    assert_lacks(&body, &["/ui/repositories/team/"], "repositories searched");

    // Paging: one artifact a page, following the "next" links.
    let mut seen = Vec::new();
    let mut path = "/ui/?limit=1".to_string();
    for _ in 0..10 {
        let body = ok_page(&c, &s, &path).await;
        seen.extend(rows(&body));
        let Some(next) = body
            .split("class=\"next\" href=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
        else {
            break;
        };
        path = next.replace("&amp;", "&");
    }
    seen.sort();
    assert_eq!(seen, ["other/gamma", "team/alpha", "team/beta"]);
}

#[tokio::test]
async fn tenant_written_text_is_escaped_on_every_page() {
    let s = TestServer::start().await;
    let c = reqwest::Client::new();
    let a = create(
        &c,
        &s,
        json!({"name": "tenant/evil", "version": "1.0.0", "type": "program",
               "architecture": "x86_64", "description": XSS, "kernel_version": XSS,
               "tags": [XSS, "\"><img src=x onerror=alert(2)>"],
               "metadata": {XSS: XSS, "annotation": "\"'><svg onload=alert(3)>"},
               "data": b64(b"payload")}),
    )
    .await;
    let id = a["id"].as_str().expect("id");
    let pages = [
        "/ui/".to_string(),
        format!("/ui/artifacts/{id}"),
        "/ui/repositories/tenant/evil".to_string(),
        // reflected input: the search text and the filters
        format!(
            "/ui/?q={}&tag={}",
            urlenc(XSS),
            urlenc("\"><script>alert(4)</script>")
        ),
        format!("/ui/?architecture={}", urlenc(XSS)),
    ];
    // Reflected in error pages: a bad id, an unknown path.
    for (p, decoded) in [
        (format!("/ui/artifacts/{}", urlenc(XSS)), true),
        (format!("/ui/hosts/{}", urlenc(XSS)), true),
        // (an unknown path is named as it was sent, percent-encoded)
        (format!("/ui/{}", urlenc(XSS)), false),
    ] {
        let e = page(&c, &s, &p).await;
        assert!(e.status.is_client_error(), "{p}: {}", e.status);
        assert_lacks(&e.body, &[XSS], &p);
        if decoded {
            assert_has(&e.body, &[XSS_ESCAPED], &p);
        }
    }
    for p in &pages {
        let body = ok_page(&c, &s, p).await;
        // Escaped text may read `onerror=`; no element or attribute of it
        // may exist.
        assert_lacks(&body, &[XSS, "<img", "<svg", "<script>alert(4)"], p);
        // The only script is the console's own file.
        assert_eq!(
            body.matches("<script").count(),
            1,
            "{p}: one <script> element:\n{body}"
        );
        assert_has(&body, &["<script src=\"/ui/static/console.js\""], p);
        assert_lacks(&body, &[" style=", "<style"], p);
    }
    let art = ok_page(&c, &s, &format!("/ui/artifacts/{id}")).await;
    assert_has(
        &art,
        &[XSS_ESCAPED, "&lt;img src=x onerror=alert(2)&gt;"],
        "artifact",
    );
    let searched = ok_page(&c, &s, &format!("/ui/?q={}", urlenc(XSS))).await;
    assert_has(
        &searched,
        &[&format!("value=\"{XSS_ESCAPED}\"")],
        "search box",
    );
}

fn urlenc(s: &str) -> String {
    serde_urlencoded::to_string([("v", s)]).expect("encode")[2..].to_string()
}

#[tokio::test]
async fn every_console_answer_carries_the_strict_security_headers() {
    let s = TestServer::start().await;
    let c = reqwest::Client::new();
    for (path, status) in [
        ("/ui/", StatusCode::OK),
        ("/ui/static/console.js", StatusCode::OK),
        ("/ui/static/console.css", StatusCode::OK),
        ("/ui/static/favicon.svg", StatusCode::OK),
        ("/ui/artifacts/not-a-digest", StatusCode::BAD_REQUEST),
        ("/ui/nope", StatusCode::NOT_FOUND),
    ] {
        let p = page(&c, &s, path).await;
        assert_eq!(p.status, status, "{path}: {}", p.body);
        assert_eq!(p.csp.as_deref(), Some(CSP), "{path}");
        assert_eq!(p.nosniff.as_deref(), Some("nosniff"), "{path}");
    }
    let js = page(&c, &s, "/ui/static/console.js").await;
    assert_eq!(
        js.content_type.as_deref(),
        Some("text/javascript; charset=utf-8")
    );
    let r = c.get(s.url("/ui")).send().await.expect("send");
    assert_eq!(r.url().path(), "/ui/", "/ui redirects to /ui/");
    let r = c.head(s.url("/ui/")).send().await.expect("send");
    assert_eq!(r.status(), StatusCode::OK, "HEAD /ui/");
    assert_eq!(header(&r, "content-security-policy").as_deref(), Some(CSP));
    assert_eq!(header(&r, "cache-control").as_deref(), Some("no-store"));
}

#[tokio::test]
async fn errors_are_html_pages_with_the_machine_readable_code() {
    let s = TestServer::start().await;
    let c = reqwest::Client::new();
    let unknown = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
    for (path, status, code) in [
        (
            "/ui/artifacts/not-a-digest".to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_id",
        ),
        (
            format!("/ui/artifacts/{unknown}"),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "/ui/repositories/no/such".to_string(),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "/ui/repositories/Bad".to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_name",
        ),
        (
            "/ui/hosts/bad%20host".to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_host_id",
        ),
        (
            "/ui/?limit=0".to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/ui/?q=a&q=b".to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/ui/no-such-page".to_string(),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
    ] {
        let p = page(&c, &s, &path).await;
        assert_eq!(p.status, status, "{path}: {}", p.body);
        assert_eq!(
            p.content_type.as_deref(),
            Some("text/html; charset=utf-8"),
            "{path}"
        );
        assert_has(
            &p.body,
            &[&format!("<code class=\"error-code\">{code}</code>")],
            &path,
        );
    }
    let r = c.post(s.url("/ui/")).send().await.expect("send");
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(header(&r, "allow").as_deref(), Some("GET, HEAD"));
    let body = r.text().await.expect("body");
    assert_has(&body, &["method_not_allowed"], "POST /ui/");
}

/// A server with the attacker policy: `mallory` may pull `bpf/**` and
/// `sandbox/mallory/**`, `admin` everything.
async fn with_auth() -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let htpasswd = dir.path().join("htpasswd");
    write_htpasswd(&htpasswd, &ATTACKER_USERS, 4);
    let policy = dir.path().join("policy.toml");
    // admin may also register, report for and read every host (for the
    // host page's facts and deployments); mallory no host.
    let text = format!(
        "{ATTACKER_POLICY}\n[[grant]]\nusers = [\"admin\"]\nhosts = [\"**\"]\nactions = [\"read\", \"report\"]\n"
    );
    std::fs::write(&policy, text).expect("write policy");
    let (h, p) = (
        htpasswd.to_string_lossy().into_owned(),
        policy.to_string_lossy().into_owned(),
    );
    let s = TestServer::start_with_env(&[
        ("BPF_REGISTRY_AUTH_HTPASSWD", &h),
        ("BPF_REGISTRY_AUTH_POLICY", &p),
    ])
    .await;
    (s, dir)
}

fn basic(user: &str, pw: &str) -> reqwest::Client {
    let mut h = reqwest::header::HeaderMap::new();
    let v = format!("Basic {}", b64(format!("{user}:{pw}").as_bytes()));
    h.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_str(&v).expect("header"),
    );
    reqwest::Client::builder()
        .default_headers(h)
        .build()
        .expect("client")
}

#[tokio::test]
async fn without_credentials_the_console_asks_for_the_api_credentials() {
    let (s, _dir) = with_auth().await;
    let anon = reqwest::Client::new();
    let wrong = basic("mallory", "wrong-password");
    for c in [&anon, &wrong] {
        for path in ["/ui/", "/ui/repositories/bpf/x", "/ui/hosts/h1"] {
            let p = page(c, &s, path).await;
            assert_eq!(p.status, StatusCode::UNAUTHORIZED, "{path}: {}", p.body);
            assert_eq!(
                p.challenge.as_deref(),
                Some("Basic realm=\"bpf-registry\""),
                "{path}"
            );
            assert_eq!(p.csp.as_deref(), Some(CSP), "{path}");
            assert_has(&p.body, &["unauthorized"], path);
        }
    }
    // The embedded files hold no data and load without credentials.
    assert_eq!(
        page(&anon, &s, "/ui/static/console.css").await.status,
        StatusCode::OK
    );
    let admin = basic("admin", &password("admin"));
    let body = ok_page(&admin, &s, "/ui/").await;
    assert_has(&body, &["Signed in as", "admin"], "signed in");
    assert_lacks(
        &body,
        &[&password("admin"), "Authorization", "Basic "],
        "no secret rendered",
    );
}

#[tokio::test]
async fn a_user_sees_nothing_of_a_repository_they_may_not_pull() {
    let (s, _dir) = with_auth().await;
    let admin = basic("admin", &password("admin"));
    let mallory = basic("mallory", &password("mallory"));
    let mut ids = Vec::new();
    for name in ["bpf/visible", "secret/hidden", "sandbox/mallory/own"] {
        let a = create(
            &admin,
            &s,
            json!({"name": name, "version": "1.0.0", "type": "map", "architecture": "x86_64",
                   "tags": ["shared-tag"], "data": b64(name.as_bytes())}),
        )
        .await;
        let id = a["id"].as_str().expect("id").to_string();
        add_host(&admin, &s, &id, name, "shared-host").await;
        ids.push(id);
    }
    let r = admin
        .put(s.url("/hosts/shared-host"))
        .json(&json!({"architecture": "x86_64", "kernel_release": "6.1.0", "labels": {}}))
        .send()
        .await
        .expect("register");
    assert_eq!(r.status(), StatusCode::CREATED);
    for id in &ids {
        let r = admin
            .put(s.url(&format!("/hosts/shared-host/deployments/{id}")))
            .json(&json!({"state": "loaded"}))
            .send()
            .await
            .expect("report");
        assert_eq!(r.status(), StatusCode::OK);
    }
    let all = ok_page(&admin, &s, "/ui/hosts/shared-host").await;
    assert_has(&all, &["6.1.0", "secret/hidden", "state-loaded"], "admin");
    // The console shows a host's facts to whom the REST API does.
    let rest = mallory
        .get(s.url("/hosts/shared-host"))
        .send()
        .await
        .expect("GET host");
    let mine = ok_page(&mallory, &s, "/ui/hosts/shared-host").await;
    if rest.status() == StatusCode::OK {
        assert_has(
            &mine,
            &["6.1.0", "bpf/visible"],
            "mallory may read the host",
        );
    } else {
        assert_lacks(
            &mine,
            &["6.1.0", "Deployments", "Not registered"],
            "a host mallory may not read",
        );
    }
    // Another hidden artifact, asked for with its repository named.
    let copy = create(
        &admin,
        &s,
        json!({"name": "secret/copy", "version": "1.0.0", "type": "map", "architecture": "x86_64",
               "data": b64(b"bpf/visible")}),
    )
    .await;

    let admin_index = ok_page(&admin, &s, "/ui/").await;
    assert_has(
        &admin_index,
        &["secret/hidden", "bpf/visible"],
        "admin sees all",
    );

    for path in [
        "/ui/".to_string(),
        "/ui/?tag=shared-tag".to_string(),
        "/ui/?q=secret".to_string(),
        "/ui/hosts/shared-host".to_string(),
        format!("/ui/artifacts/{}", ids[0]),
        "/ui/repositories/bpf/visible".to_string(),
    ] {
        let body = ok_page(&mallory, &s, &path).await;
        assert_lacks(&body, &["secret/", &ids[1][7..19]], &path);
    }
    let index = ok_page(&mallory, &s, "/ui/").await;
    assert_has(
        &index,
        &["bpf/visible", "sandbox/mallory/own"],
        "mallory's own",
    );
    let own = ok_page(&mallory, &s, &format!("/ui/artifacts/{}", ids[0])).await;
    assert_has(&own, &["curl -fLOJ -u 'mallory' "], "curl names the user");

    // By URL: exactly what an unknown id or repository gets (404
    // not_found, the same page but for the name asked for).
    let hidden = &ids[1];
    let copy_id = copy["id"].as_str().expect("id");
    let unknown = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
    let unknown_page = page(&mallory, &s, &format!("/ui/artifacts/{unknown}")).await;
    let no_repo_page = page(&mallory, &s, "/ui/repositories/secret/does-not-exist").await;
    for (path, asked, like, like_asked) in [
        (
            format!("/ui/artifacts/{hidden}"),
            hidden.as_str(),
            &unknown_page,
            unknown,
        ),
        (
            format!("/ui/artifacts/{hidden}?repository=secret/hidden"),
            hidden.as_str(),
            &unknown_page,
            unknown,
        ),
        (
            format!("/ui/artifacts/{copy_id}?repository=secret/copy"),
            copy_id,
            &unknown_page,
            unknown,
        ),
        (
            "/ui/repositories/secret/hidden".to_string(),
            "secret/hidden",
            &no_repo_page,
            "secret/does-not-exist",
        ),
    ] {
        let p = page(&mallory, &s, &path).await;
        assert_eq!(p.status, StatusCode::NOT_FOUND, "{path}: {}", p.body);
        assert_eq!(like.status, StatusCode::NOT_FOUND, "{path}");
        assert_has(&p.body, &["not_found"], &path);
        assert_eq!(
            p.body.replace(asked, "NAME"),
            like.body.replace(like_asked, "NAME"),
            "{path} answers like an unknown one"
        );
        // The REST read it mirrors answers 404 too.
        if let Some(rest) = path.strip_prefix("/ui") {
            if rest.starts_with("/artifacts/") {
                let r = mallory.get(s.url(rest)).send().await.expect("send");
                assert_eq!(r.status(), StatusCode::NOT_FOUND, "REST {rest}");
            }
        }
    }
}

#[tokio::test]
async fn a_signed_artifact_shows_its_verified_signature_and_key() {
    use p256::pkcs8::{EncodePrivateKey, LineEnding};
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let sk = p256::SecretKey::from_slice(&common::pseudo_random(32, 7)).expect("scalar");
    let key = dir.path().join("signing.pem");
    std::fs::write(
        &key,
        sk.to_pkcs8_pem(LineEnding::LF).expect("pem").as_bytes(),
    )
    .expect("write key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let key = key.to_string_lossy().into_owned();
    let s = TestServer::start_with_env(&[
        ("BPF_REGISTRY_SIGNER", "key"),
        ("BPF_REGISTRY_SIGNING_KEY", &key),
    ])
    .await;
    let c = reqwest::Client::new();
    let a = create(
        &c,
        &s,
        json!({"name": "signed/prog", "version": "1.0.0", "type": "program",
               "architecture": "x86_64", "data": b64(b"signed payload")}),
    )
    .await;
    let key_id = a["signature"]["key_id"]
        .as_str()
        .expect("signed")
        .to_string();
    let id = a["id"].as_str().expect("id");
    let art = ok_page(&c, &s, &format!("/ui/artifacts/{id}")).await;
    assert_has(
        &art,
        &[
            "signed, verified",
            &key_id,
            "ecdsa-p256-sha256",
            "/signing/public-key",
        ],
        "signed artifact",
    );
    let index = ok_page(&c, &s, "/ui/").await;
    assert_has(&index, &["<span class=\"ok\">signed</span>"], "index");
}

#[tokio::test]
async fn a_bearer_token_sees_only_what_its_user_may_pull() {
    let (s, _dir) = with_auth().await;
    let admin = basic("admin", &password("admin"));
    let mut ids = Vec::new();
    for name in ["bpf/visible", "secret/hidden"] {
        let a = create(
            &admin,
            &s,
            json!({"name": name, "version": "1.0.0", "type": "map", "architecture": "x86_64",
                   "data": b64(name.as_bytes())}),
        )
        .await;
        ids.push(a["id"].as_str().expect("id").to_string());
    }
    let r = reqwest::Client::new()
        .get(s.url("/token"))
        .basic_auth("mallory", Some(password("mallory")))
        .query(&[
            ("service", "bpf-registry"),
            ("scope", "repository:bpf/visible:pull"),
        ])
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::OK);
    let token: Value = r.json().await.expect("json");
    let token = token["token"].as_str().expect("token");
    let mut h = reqwest::header::HeaderMap::new();
    h.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).expect("header"),
    );
    let c = reqwest::Client::builder()
        .default_headers(h)
        .build()
        .expect("client");
    let index = ok_page(&c, &s, "/ui/").await;
    assert_has(&index, &["bpf/visible", "Signed in as"], "token index");
    assert_lacks(&index, &["secret/", &ids[1][7..19], token], "token index");
    let own = ok_page(&c, &s, &format!("/ui/artifacts/{}", ids[0])).await;
    assert_lacks(&own, &[token], "no token rendered");
    let p = page(&c, &s, &format!("/ui/artifacts/{}", ids[1])).await;
    assert_eq!(p.status, StatusCode::NOT_FOUND, "{}", p.body);
}

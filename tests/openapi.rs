//! `GET /openapi.json` on a real server: served as JSON, valid OpenAPI 3.1
//! by `openapi-spec-validator` (the Python tool, from the conformance
//! venv), public when authentication is on, and every path it documents
//! besides the REST route table is one the server answers.
//! (`src/http/openapi/tests.rs` checks the document against the route
//! and error tables; `conformance/schemathesis.sh` fuzzes the server
//! with it.)

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::TestServer;
use reqwest::StatusCode;
use serde_json::Value;

async fn fetch_document(server: &TestServer) -> (Value, Vec<u8>) {
    let r = reqwest::get(server.url("/openapi.json")).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        common::header(&r, "content-type").as_deref(),
        Some("application/json")
    );
    let bytes = r.bytes().await.unwrap().to_vec();
    (serde_json::from_slice(&bytes).unwrap(), bytes)
}

/// The conformance venv's `openapi-spec-validator`; `None` (the check
/// skipped, said so) when it is not installed, except under `CI=true`,
/// where a missing tool is a failure.
fn validator() -> Option<PathBuf> {
    let venv = std::env::var_os("BPF_VENV")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/bpf-registry-venv"))
        })?;
    let tool = venv.join("bin/openapi-spec-validator");
    if tool.is_file() {
        return Some(tool);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{} is missing: run conformance/install-deps.sh",
        tool.display()
    );
    eprintln!(
        "SKIP: {} missing (conformance/install-deps.sh installs it)",
        tool.display()
    );
    None
}

fn validate(tool: &Path, document: &[u8]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, document).unwrap();
    let out = Command::new(tool).arg(&file).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn the_served_document_is_valid_openapi_3_1() {
    let server = TestServer::start().await;
    let (doc, bytes) = fetch_document(&server).await;
    assert_eq!(doc["openapi"], "3.1.0");
    let Some(tool) = validator() else {
        return;
    };
    let (ok, text) = validate(&tool, &bytes);
    assert!(ok, "openapi-spec-validator refused the document: {text}");
    // The check can fail: the same document with an operation whose
    // response refers to a schema that does not exist is refused.
    let mut broken = doc.clone();
    broken["paths"]["/healthz"]["get"]["responses"]["200"]["content"]["application/json"]
        ["schema"] = serde_json::json!({"$ref": "#/components/schemas/NoSuchSchema"});
    let (ok, text) = validate(&tool, &serde_json::to_vec(&broken).unwrap());
    assert!(!ok, "a dangling $ref passed the validator: {text}");
}

#[tokio::test]
async fn the_document_needs_no_credentials_when_authentication_is_on() {
    let dir = tempfile::tempdir().unwrap();
    let hash = bcrypt::hash("alice-Pa55word", 4).unwrap();
    let htpasswd = dir.path().join("htpasswd");
    std::fs::write(&htpasswd, format!("alice:{hash}\n")).unwrap();
    let htpasswd = htpasswd.to_string_lossy().into_owned();
    let secured =
        TestServer::start_with_env(&[("BPF_REGISTRY_AUTH_HTPASSWD", htpasswd.as_str())]).await;
    // Authentication is on: an anonymous list is refused.
    let r = reqwest::get(secured.url("/artifacts")).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // The document is not: the same bytes as without authentication.
    let (_, with_auth) = fetch_document(&secured).await;
    let open = TestServer::start().await;
    let (_, without) = fetch_document(&open).await;
    assert_eq!(
        with_auth, without,
        "the document does not depend on the caller"
    );
}

#[tokio::test]
async fn every_documented_path_besides_the_rest_table_is_served() {
    let server = TestServer::start().await;
    let (doc, _) = fetch_document(&server).await;
    let schemas = &doc["components"]["schemas"];
    // /healthz: the Health schema's fields and status enum.
    let r = reqwest::get(server.url("/healthz")).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let h: Value = r.json().await.unwrap();
    let required = schemas["Health"]["required"].as_array().unwrap();
    for f in required {
        assert!(h.get(f.as_str().unwrap()).is_some(), "{f} in {h}");
    }
    assert!(schemas["HealthStatus"]["enum"]
        .as_array()
        .unwrap()
        .contains(&h["status"]));
    // /token with authentication off: 404 in the OCI envelope, with a code
    // of the documented enum.
    let r = reqwest::get(server.url("/token")).await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let e: Value = r.json().await.unwrap();
    let codes = schemas["OciError"]["properties"]["errors"]["items"]["properties"]["code"]["enum"]
        .as_array()
        .unwrap();
    assert!(codes.contains(&e["errors"][0]["code"]), "{e}");
    assert!(doc["paths"]["/token"]["get"]["responses"]["404"].is_object());
}

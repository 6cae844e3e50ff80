//! Artifact requirements (`POST /artifacts` `requirements`) against a real
//! server on 127.0.0.1:0: stored and returned, present as the manifest
//! annotation `io.aegisflux.bpf.requirements`, invalid ones refused with
//! `invalid_requirements` and nothing stored, and an eBPF object with CO-RE
//! relocations (a hand-built ELF, so no toolchain is needed) getting
//! `btf: required`.

mod common;

use base64::Engine as _;
use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

const REQUIREMENTS_ANNOTATION: &str = "io.aegisflux.bpf.requirements";

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// A `.BTF.ext` section: the 32-byte header with this `core_relo_len`,
/// then room for the sections it points at.
fn btf_ext(core_relo_len: u32) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&0xEB9Fu16.to_le_bytes());
    h.push(1); // version
    h.push(0); // flags
    h.extend_from_slice(&32u32.to_le_bytes()); // hdr_len
    for v in [0u32, 16, 16, 0, 16, core_relo_len] {
        h.extend_from_slice(&v.to_le_bytes());
    }
    h.extend_from_slice(&[0; 64]);
    h
}

/// A little-endian ELF64 eBPF relocatable with an `xdp` program section,
/// `.BTF` and the given `.BTF.ext`.
fn bpf_object(btf_ext: &[u8]) -> Vec<u8> {
    const SHT_PROGBITS: u32 = 1;
    const SHT_STRTAB: u32 = 3;
    const AX: u64 = 0x2 | 0x4;
    let sections: [(&str, u32, u64, Vec<u8>); 3] = [
        ("xdp", SHT_PROGBITS, AX, vec![0x95, 0, 0, 0, 0, 0, 0, 0]), // exit
        (".BTF", SHT_PROGBITS, 0, vec![0; 24]),
        (".BTF.ext", SHT_PROGBITS, 0, btf_ext.to_vec()),
    ];
    let mut shstrtab = vec![0u8];
    let mut names = Vec::new();
    for name in sections.iter().map(|s| s.0).chain([".shstrtab"]) {
        names.push(shstrtab.len() as u32);
        shstrtab.extend_from_slice(name.as_bytes());
        shstrtab.push(0);
    }
    let mut out = vec![0u8; 64];
    // (name, type, flags, offset, size)
    let mut headers = vec![(0u32, 0u32, 0u64, 0u64, 0u64)];
    for ((_, ty, flags, data), name) in sections.iter().zip(&names) {
        headers.push((*name, *ty, *flags, out.len() as u64, data.len() as u64));
        out.extend_from_slice(data);
    }
    headers.push((
        names[3],
        SHT_STRTAB,
        0,
        out.len() as u64,
        shstrtab.len() as u64,
    ));
    out.extend_from_slice(&shstrtab);
    while !out.len().is_multiple_of(8) {
        out.push(0);
    }
    let shoff = out.len() as u64;
    for (name, ty, flags, offset, size) in &headers {
        out.extend_from_slice(&name.to_le_bytes());
        out.extend_from_slice(&ty.to_le_bytes());
        out.extend_from_slice(&flags.to_le_bytes());
        out.extend_from_slice(&0u64.to_le_bytes()); // addr
        out.extend_from_slice(&offset.to_le_bytes());
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes()); // link
        out.extend_from_slice(&0u32.to_le_bytes()); // info
        out.extend_from_slice(&8u64.to_le_bytes()); // addralign
        out.extend_from_slice(&0u64.to_le_bytes()); // entsize
    }
    let mut ehdr = Vec::new();
    ehdr.extend_from_slice(b"\x7fELF");
    ehdr.extend_from_slice(&[2, 1, 1]); // ELFCLASS64, ELFDATA2LSB, EV_CURRENT
    ehdr.resize(16, 0);
    ehdr.extend_from_slice(&1u16.to_le_bytes()); // ET_REL
    ehdr.extend_from_slice(&247u16.to_le_bytes()); // EM_BPF
    ehdr.extend_from_slice(&1u32.to_le_bytes());
    ehdr.extend_from_slice(&0u64.to_le_bytes()); // entry
    ehdr.extend_from_slice(&0u64.to_le_bytes()); // phoff
    ehdr.extend_from_slice(&shoff.to_le_bytes());
    ehdr.extend_from_slice(&0u32.to_le_bytes()); // flags
    ehdr.extend_from_slice(&64u16.to_le_bytes()); // ehsize
    ehdr.extend_from_slice(&0u16.to_le_bytes()); // phentsize
    ehdr.extend_from_slice(&0u16.to_le_bytes()); // phnum
    ehdr.extend_from_slice(&64u16.to_le_bytes()); // shentsize
    ehdr.extend_from_slice(&(headers.len() as u16).to_le_bytes());
    ehdr.extend_from_slice(&((headers.len() - 1) as u16).to_le_bytes()); // shstrndx
    out[..64].copy_from_slice(&ehdr);
    out
}

fn body(name: &str, version: &str, data: &[u8], requirements: Option<Value>) -> Value {
    let mut b = json!({
        "name": name,
        "version": version,
        "type": "program",
        "architecture": "x86_64",
        "data": b64(data),
    });
    if let Some(r) = requirements {
        b["requirements"] = r;
    }
    b
}

async fn post(s: &TestServer, c: &reqwest::Client, body: &Value) -> reqwest::Response {
    c.post(s.url("/artifacts"))
        .json(body)
        .send()
        .await
        .expect("send POST /artifacts")
}

async fn json_of(r: reqwest::Response, status: StatusCode) -> Value {
    let got = r.status();
    let url = r.url().to_string();
    let text = r.text().await.expect("body");
    assert_eq!(got, status, "{url}: expected {status}, got {got}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{url}: not JSON ({e}): {text}"))
}

async fn get_json(c: &reqwest::Client, url: &str) -> Value {
    json_of(c.get(url).send().await.expect("send GET"), StatusCode::OK).await
}

/// The artifact manifest of `repo:reference` through the OCI API.
async fn manifest(s: &TestServer, c: &reqwest::Client, repo: &str, reference: &str) -> Value {
    let r = c
        .get(s.url(&format!("/v2/{repo}/manifests/{reference}")))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .expect("send GET manifest");
    json_of(r, StatusCode::OK).await
}

#[tokio::test]
async fn declared_requirements_are_stored_returned_and_annotated() {
    let mut s = TestServer::start().await;
    let c = reqwest::Client::new();
    let declared = json!({"min_kernel": "5.8", "max_kernel": "6.99", "btf": "optional"});
    let created = json_of(
        post(
            &s,
            &c,
            &body("req/plain", "1.0.0", b"not an ELF", Some(declared.clone())),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(created["requirements"], declared, "{created}");
    let id = created["id"].as_str().expect("id").to_string();
    let got = get_json(&c, &s.url(&format!("/artifacts/{id}"))).await;
    assert_eq!(got["requirements"], declared, "{got}");

    let m = manifest(&s, &c, "req/plain", "1.0.0").await;
    let annotation = m["annotations"][REQUIREMENTS_ANNOTATION]
        .as_str()
        .unwrap_or_else(|| panic!("no requirements annotation in {m}"));
    assert_eq!(
        annotation, r#"{"min_kernel":"5.8","max_kernel":"6.99","btf":"optional"}"#,
        "compact JSON"
    );

    // Without requirements: no field, no annotation.
    let none = json_of(
        post(&s, &c, &body("req/none", "1.0.0", b"plain bytes", None)).await,
        StatusCode::CREATED,
    )
    .await;
    assert!(none.get("requirements").is_none(), "{none}");
    let m = manifest(&s, &c, "req/none", "1.0.0").await;
    assert!(
        m["annotations"].get(REQUIREMENTS_ANNOTATION).is_none(),
        "{m}"
    );
    s.stop().await;
}

#[tokio::test]
async fn invalid_requirements_are_400_and_store_nothing() {
    let mut s = TestServer::start().await;
    let c = reqwest::Client::new();
    for bad in [
        json!({"min_kernel": "5.8", "gpu": "required"}),
        json!({"min_kernel": "5.8.x"}),
        json!({"max_kernel": "5.8.0.1"}),
        json!({"min_kernel": "6.1", "max_kernel": "5.15"}),
        json!({"btf": "maybe"}),
        json!("5.8"),
    ] {
        let r = post(
            &s,
            &c,
            &body("req/bad", "1.0.0", b"plain bytes", Some(bad.clone())),
        )
        .await;
        let v = json_of(r, StatusCode::BAD_REQUEST).await;
        assert_eq!(v["error"], "invalid_requirements", "{bad}: {v}");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    }
    // The CO-RE rule: `optional` on an object that needs BTF.
    let r = post(
        &s,
        &c,
        &body(
            "req/bad",
            "1.0.0",
            &bpf_object(&btf_ext(28)),
            Some(json!({"btf": "optional"})),
        ),
    )
    .await;
    let v = json_of(r, StatusCode::BAD_REQUEST).await;
    assert_eq!(v["error"], "invalid_requirements", "{v}");
    let list = get_json(&c, &s.url("/artifacts")).await;
    assert_eq!(list["artifacts"], json!([]), "nothing stored: {list}");
    let catalog = get_json(&c, &s.url("/v2/_catalog")).await;
    assert_eq!(
        catalog["repositories"],
        json!([]),
        "nothing stored: {catalog}"
    );
    s.stop().await;
}

#[tokio::test]
async fn an_object_with_core_relocations_requires_btf() {
    let mut s = TestServer::start().await;
    let c = reqwest::Client::new();
    let core = json_of(
        post(
            &s,
            &c,
            &body("req/core", "1.0.0", &bpf_object(&btf_ext(28)), None),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(core["ebpf"]["core_relocations"], true, "{core}");
    assert_eq!(core["requirements"], json!({"btf": "required"}), "{core}");
    let m = manifest(&s, &c, "req/core", "1.0.0").await;
    assert_eq!(
        m["annotations"][REQUIREMENTS_ANNOTATION],
        r#"{"btf":"required"}"#
    );

    // Declared bounds are kept, btf added.
    let with_bounds = json_of(
        post(
            &s,
            &c,
            &body(
                "req/core",
                "1.1.0",
                &bpf_object(&btf_ext(28)),
                Some(json!({"min_kernel": "5.8"})),
            ),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(
        with_bounds["requirements"],
        json!({"min_kernel": "5.8", "btf": "required"}),
        "{with_bounds}"
    );

    // `.BTF.ext` without CO-RE relocations: nothing required.
    let plain = json_of(
        post(
            &s,
            &c,
            &body("req/plain-btf", "1.0.0", &bpf_object(&btf_ext(0)), None),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(plain["ebpf"]["btf_ext"], true, "{plain}");
    assert_eq!(plain["ebpf"]["core_relocations"], false, "{plain}");
    assert!(plain.get("requirements").is_none(), "{plain}");
    s.stop().await;
}

#[tokio::test]
async fn the_openapi_document_describes_requirements() {
    let mut s = TestServer::start().await;
    let c = reqwest::Client::new();
    let doc = get_json(&c, &s.url("/openapi.json")).await;
    let schemas = &doc["components"]["schemas"];
    let r = &schemas["Requirements"]["properties"];
    for field in ["min_kernel", "max_kernel", "btf"] {
        assert!(
            r[field].is_object(),
            "{field} in {}",
            schemas["Requirements"]
        );
    }
    let text = doc.to_string();
    assert!(
        text.contains("#/components/schemas/Requirements"),
        "referenced"
    );
    assert!(
        schemas["BtfRequirement"].is_object(),
        "{}",
        schemas["BtfRequirement"]
    );
    s.stop().await;
}

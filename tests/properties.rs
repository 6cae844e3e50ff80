//! Property tests of everything that parses untrusted input: digests,
//! repository names, tags and references; the `/v2` path and query
//! parser; manifest validation; the REST JSON decoder (through a real
//! server); the tar.zst packer, the archive walk and the payload decoder;
//! the ELF inspector. Each must never panic,
//! accept what the grammar allows and refuse the rest.

mod common;

use base64::Engine as _;
use bpf_registry::artifacts::pack::{ArchiveLimits, ArchiveVerdict};
use bpf_registry::artifacts::payload::{prepare_payload, PayloadLimits};
use bpf_registry::artifacts::{elf, pack};
use bpf_registry::http::endpoint::{self, Endpoint};
use bpf_registry::oci::{Digest, ParsedManifest, Reference, RepoName, Tag};
use proptest::prelude::*;
use serde_json::json;

/// Budgets of the archive properties: small, so a budget can be crossed.
const ARCHIVE_LIMITS: ArchiveLimits = ArchiveLimits {
    max_unpacked_bytes: 1 << 20,
    max_entries: 100,
};

/// A payload through the one decoder of `POST /artifacts` `data`.
fn prepare(
    payload: &[u8],
) -> Result<
    bpf_registry::artifacts::payload::PreparedPayload,
    bpf_registry::artifacts::payload::PayloadError,
> {
    let spool = tempfile::tempdir().expect("spool");
    let text = base64::engine::general_purpose::STANDARD.encode(payload);
    prepare_payload(
        bytes::Bytes::from(text),
        "team/prog",
        &PayloadLimits::for_artifact_cap(1 << 20),
        spool.path(),
    )
}

/// A name component of the OCI grammar: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn component() -> impl Strategy<Value = String> {
    "[a-z0-9]{1,8}((\\.|_|__|-{1,3})[a-z0-9]{1,8}){0,3}"
}

fn repo_name() -> impl Strategy<Value = String> {
    prop::collection::vec(component(), 1..5).prop_map(|c| c.join("/"))
}

fn tag() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}"
}

fn hex64() -> impl Strategy<Value = String> {
    "[0-9a-f]{64}"
}

/// Checks a name against the spec grammar by hand (no regex engine).
fn grammar_ok(name: &str) -> bool {
    if name.is_empty() || name.len() > 255 {
        return false;
    }
    name.split('/').all(|c| {
        let b = c.as_bytes();
        if b.is_empty() || !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric()
        {
            return false;
        }
        if b.iter().any(|x| x.is_ascii_uppercase()) {
            return false;
        }
        let mut i = 0;
        while i < b.len() {
            if b[i].is_ascii_lowercase() || b[i].is_ascii_digit() {
                i += 1;
                continue;
            }
            // a separator run: ".", "_", "__" or "-+", between alphanumerics
            let start = i;
            while i < b.len() && !(b[i].is_ascii_lowercase() || b[i].is_ascii_digit()) {
                i += 1;
            }
            let sep = &c[start..i];
            let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
            if !ok {
                return false;
            }
        }
        true
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn digests_round_trip(hex in hex64()) {
        let s = format!("sha256:{hex}");
        let d = Digest::parse(&s).expect("valid digest");
        prop_assert_eq!(d.to_string(), s);
        prop_assert_eq!(d.hex(), hex.as_str());
        prop_assert_eq!(Digest::from_hex(&hex), Some(d));
    }

    #[test]
    fn digest_parser_never_panics(s in ".{0,100}") {
        if let Ok(d) = Digest::parse(&s) {
            prop_assert_eq!(d.to_string(), s);
        }
    }

    #[test]
    fn wrong_digests_are_refused(hex in "[0-9a-fA-F]{0,70}", alg in "(sha256|sha512|SHA256|md5|)") {
        let s = format!("{alg}:{hex}");
        let valid = alg == "sha256" && hex.len() == 64 && hex.bytes().all(|b| !b.is_ascii_uppercase());
        prop_assert_eq!(Digest::parse(&s).is_ok(), valid, "{}", s);
    }

    #[test]
    fn grammar_names_are_accepted(name in repo_name()) {
        prop_assume!(name.len() <= 255);
        let n = RepoName::parse(&name).expect("grammar name");
        prop_assert_eq!(n.as_str(), name.as_str());
    }

    #[test]
    fn accepted_names_follow_the_grammar(s in "[a-zA-Z0-9._/%-]{0,40}") {
        prop_assert_eq!(RepoName::parse(&s).is_ok(), grammar_ok(&s), "{:?}", s);
    }

    #[test]
    fn name_parser_never_panics(s in "\\PC{0,300}") {
        if let Ok(n) = RepoName::parse(&s) {
            prop_assert!(grammar_ok(n.as_str()));
            prop_assert!(!n.as_str().contains(".."));
        }
    }

    #[test]
    fn tags_and_references(t in tag(), junk in "\\PC{0,140}") {
        prop_assert!(Tag::parse(&t).is_ok());
        prop_assert!(matches!(Reference::parse(&t), Ok(Reference::Tag(_))));
        if let Ok(parsed) = Tag::parse(&junk) {
            prop_assert!(parsed.as_str().len() <= 128);
            prop_assert!(!parsed.as_str().starts_with(['.', '-']));
        }
        let _ = Reference::parse(&junk);
    }

    #[test]
    fn v2_paths_parse_into_the_right_endpoint(name in repo_name(), t in tag(), hex in hex64()) {
        prop_assume!(name.len() <= 255);
        let get = axum::http::Method::GET;
        let e = endpoint::parse(&get, &format!("/v2/{name}/manifests/{t}"), None).expect("manifest path");
        let is_manifest = matches!(e, Endpoint::GetManifest { name: ref n, .. } if n.as_str() == name);
        prop_assert!(is_manifest);
        let e = endpoint::parse(&get, &format!("/v2/{name}/blobs/sha256:{hex}"), None).expect("blob path");
        let is_blob = matches!(e, Endpoint::GetBlob { ref digest, .. } if digest.hex() == hex);
        prop_assert!(is_blob);
        let e = endpoint::parse(&get, &format!("/v2/{name}/tags/list"), None).expect("tags path");
        let is_tags = matches!(e, Endpoint::ListTags { .. });
        prop_assert!(is_tags);
        let e = endpoint::parse(&axum::http::Method::POST, &format!("/v2/{name}/blobs/uploads/"), None);
        let is_start = matches!(e, Ok(Endpoint::StartUpload { .. }));
        prop_assert!(is_start);
    }

    #[test]
    fn v2_path_parser_never_panics(
        path in "/v2(/[a-zA-Z0-9._%:-]{0,12}){0,8}/?",
        method in prop::sample::select(vec!["GET", "HEAD", "PUT", "POST", "PATCH", "DELETE", "OPTIONS"]),
    ) {
        let m = axum::http::Method::from_bytes(method.as_bytes()).expect("method");
        if let Ok(e) = endpoint::parse(&m, &path, None) {
            // Whatever parsed names a valid repository (or none).
            if let Some(n) = e.repository() {
                prop_assert!(grammar_ok(n.as_str()));
            }
        }
    }

    #[test]
    fn v2_query_parser_never_panics(
        query in "[a-zA-Z0-9=&%+:/._-]{0,80}",
        path in prop::sample::select(vec![
            "/v2/_catalog",
            "/v2/a/tags/list",
            "/v2/a/blobs/uploads/",
            "/v2/a/referrers/sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "/v2/a/blobs/uploads/0b5f3c2e-8f5e-4c1a-9a53-3d5c1c6d2a10",
        ]),
        method in prop::sample::select(vec!["GET", "POST", "PUT", "PATCH"]),
    ) {
        let m = axum::http::Method::from_bytes(method.as_bytes()).expect("method");
        match endpoint::parse(&m, path, Some(&query)) {
            // Whatever parsed carries validated values only.
            Ok(Endpoint::StartUpload { mount: Some(mount), .. }) => {
                if let Some(from) = mount.from {
                    prop_assert!(grammar_ok(from.as_str()));
                }
            }
            Ok(_) => {}
            // A refused query is a client error, never a server error.
            Err(e) => prop_assert!(e.code.status().is_client_error(), "{:?}", e),
        }
    }

    #[test]
    fn a_repeated_query_parameter_is_always_refused(
        key in "[a-zA-Z]{1,8}",
        a in "[a-z0-9:/]{0,20}",
        b in "[a-z0-9:/]{0,20}",
        path in prop::sample::select(vec![
            "/v2/",
            "/v2/_catalog",
            "/v2/a/tags/list",
            "/v2/a/manifests/v1",
            "/v2/a/blobs/uploads/",
        ]),
    ) {
        // However the second occurrence is spelled: percent-encoding its
        // first letter still names the same parameter.
        let first = key.as_bytes()[0];
        let spelled = format!("%{first:02X}{}", &key[1..]);
        for q in [format!("{key}={a}&{key}={b}"), format!("{key}={a}&{spelled}={b}")] {
            let method = if path.ends_with("uploads/") { axum::http::Method::POST } else { axum::http::Method::GET };
            let r = endpoint::parse(&method, path, Some(&q));
            prop_assert!(r.is_err(), "{} ?{} parsed", path, q);
            let e = r.unwrap_err();
            prop_assert_eq!(e.code.status().as_u16(), 400, "{:?}", e);
        }
    }

    #[test]
    fn mount_parameters_round_trip_through_percent_encoding(name in repo_name(), hex in hex64()) {
        prop_assume!(name.len() <= 255);
        let enc = |s: &str| percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string();
        let d = format!("sha256:{hex}");
        let q = format!("mount={}&from={}", enc(&d), enc(&name));
        let e = endpoint::parse(&axum::http::Method::POST, "/v2/t/blobs/uploads/", Some(&q)).expect("mount");
        let ok = matches!(
            e,
            Endpoint::StartUpload { mount: Some(ref m), .. }
                if m.digest.to_string() == d && m.from.as_ref().map(|f| f.as_str()) == Some(name.as_str())
        );
        prop_assert!(ok, "{:?}", e);
    }

    #[test]
    fn manifest_parser_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let _ = ParsedManifest::parse(&bytes, None);
        let _ = ParsedManifest::parse(&bytes, Some("application/vnd.oci.image.manifest.v1+json"));
    }

    #[test]
    fn generated_manifests_validate(
        layers in prop::collection::vec((hex64(), 0u64..1_000_000), 0..5),
        config in hex64(),
        with_subject in any::<bool>(),
        schema in prop::sample::select(vec![1i64, 2, 3]),
        drop_config in any::<bool>(),
    ) {
        let mut m = json!({
            "schemaVersion": schema,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": format!("sha256:{config}"), "size": 2},
            "layers": layers.iter().map(|(h, s)| json!({"mediaType": "application/octet-stream", "digest": format!("sha256:{h}"), "size": s})).collect::<Vec<_>>(),
        });
        if with_subject {
            m["subject"] = json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": format!("sha256:{config}"), "size": 10});
        }
        if drop_config {
            m.as_object_mut().expect("object").remove("config");
        }
        let bytes = serde_json::to_vec(&m).expect("json");
        let parsed = ParsedManifest::parse(&bytes, None);
        prop_assert_eq!(parsed.is_ok(), schema == 2 && !drop_config, "{:?}", parsed.err());
        if let Ok(p) = parsed {
            prop_assert_eq!(p.layers.len(), layers.len());
            prop_assert_eq!(p.blob_references().count(), layers.len() + 1);
            prop_assert_eq!(p.subject.is_some(), with_subject);
        }
    }

    #[test]
    fn rest_json_decoder_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = serde_json::from_slice::<bpf_registry::artifacts::model::CreateRequest>(&bytes);
    }

    #[test]
    fn packer_round_trips(entry in "[a-z][a-z0-9_-]{0,20}\\.(o|bin)", payload in prop::collection::vec(any::<u8>(), 0..5000)) {
        let packed = pack::pack_tar_zstd(&entry, &payload).expect("pack");
        let verdict = pack::inspect_tar_zstd(&packed[..], ARCHIVE_LIMITS);
        prop_assert!(matches!(verdict, Ok(ArchiveVerdict::Archive { members: 1, .. })), "{:?}", verdict);
        let mut tar = tar::Archive::new(zstd::Decoder::new(&packed[..]).expect("zstd"));
        let mut entries = tar.entries().expect("entries");
        let mut first = entries.next().expect("one entry").expect("entry");
        prop_assert_eq!(first.path().expect("path").to_string_lossy().into_owned(), entry);
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut first, &mut out).expect("read");
        prop_assert_eq!(out, payload);
    }

    #[test]
    fn archive_inspection_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..2000)) {
        let _ = pack::inspect_tar_zstd(&bytes[..], ARCHIVE_LIMITS);
        let mut zstd_magic = vec![0x28, 0xb5, 0x2f, 0xfd];
        zstd_magic.extend_from_slice(&bytes);
        let _ = pack::inspect_tar_zstd(&zstd_magic[..], ARCHIVE_LIMITS);
        // A valid zstd stream of noise: the tar walk itself sees garbage.
        let framed = zstd::encode_all(&bytes[..], 1).expect("zstd");
        let _ = pack::inspect_tar_zstd(&framed[..], ARCHIVE_LIMITS);
        for payload in [&bytes[..], &zstd_magic[..], &framed[..]] {
            let _ = prepare(payload);
        }
    }

    #[test]
    fn clean_archives_are_kept_byte_for_byte(
        files in prop::collection::vec(("[a-z]{1,8}(/[a-z]{1,8}){0,2}", prop::collection::vec(any::<u8>(), 0..3000)), 1..5),
    ) {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, data) in &files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            builder.append_data(&mut h, path, &data[..]).expect("tar");
        }
        let archive = zstd::encode_all(&builder.into_inner().expect("tar")[..], 3).expect("zstd");
        let prepared = prepare(&archive).expect("a clean archive is accepted");
        prop_assert!(prepared.prepacked);
        prop_assert_eq!(prepared.layer.digest().to_string(), common::sha256(&archive));
        let mut layer = Vec::new();
        std::io::Read::read_to_end(&mut prepared.layer.into_reader().expect("reader"), &mut layer).expect("read");
        prop_assert_eq!(layer, archive);
    }

    #[test]
    fn any_non_archive_payload_is_packed_and_unpacks_to_itself(payload in prop::collection::vec(any::<u8>(), 1..5000)) {
        let prepared = prepare(&payload).expect("prepare");
        prop_assert!(!prepared.prepacked);
        prop_assert_eq!(prepared.payload_size, payload.len() as u64);
        let mut layer = Vec::new();
        std::io::Read::read_to_end(&mut prepared.layer.into_reader().expect("reader"), &mut layer).expect("read");
        let mut tar = tar::Archive::new(zstd::Decoder::new(&layer[..]).expect("zstd"));
        let mut first = tar.entries().expect("entries").next().expect("one entry").expect("entry");
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut first, &mut out).expect("read");
        prop_assert_eq!(out, payload);
    }

    #[test]
    fn elf_inspector_never_panics(
        bytes in prop::collection::vec(any::<u8>(), 0..3000),
        class in prop::sample::select(vec![1u8, 2]),
        data in prop::sample::select(vec![1u8, 2]),
    ) {
        let _ = elf::sniff(&bytes);
        let _ = elf::inspect(&bytes);
        // An ELF header that says eBPF, then noise: the section walk runs.
        let mut obj = vec![0x7f, b'E', b'L', b'F', class, data, 1, 0];
        obj.extend_from_slice(&[0u8; 8]);
        let machine: [u8; 2] = if data == 1 { 247u16.to_le_bytes() } else { 247u16.to_be_bytes() };
        obj.extend_from_slice(&[1, 0]);
        obj.extend_from_slice(&machine);
        obj.extend_from_slice(&bytes);
        let _ = elf::sniff(&obj);
        let _ = elf::inspect(&obj);
    }
}

/// The whole REST decoder (JSON, fields, base64, ELF) behind a real
/// server: arbitrary bodies get a 2xx or a 4xx JSON error, never a 5xx.
#[test]
fn rest_create_answers_every_body_without_a_5xx() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let server = rt.block_on(common::TestServer::start());
    let client = reqwest::Client::new();
    let url = server.url("/artifacts");
    let field = prop_oneof![
        Just(json!(null)),
        any::<i64>().prop_map(|n| json!(n)),
        "\\PC{0,20}".prop_map(|s| json!(s)),
        Just(json!("program")),
        Just(json!("x86_64")),
        Just(json!("dGVzdCBkYXRh")),
        Just(json!(["a", 1])),
        Just(json!({"k": "v"})),
    ];
    let body = prop::collection::btree_map(
        prop::sample::select(vec![
            "name",
            "version",
            "type",
            "architecture",
            "data",
            "hosts",
            "tags",
            "metadata",
            "kernel_version",
            "description",
            "other",
        ]),
        field,
        0..10,
    );
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 128,
        ..ProptestConfig::default()
    });
    runner
        .run(&body, |fields| {
            let v = serde_json::Value::Object(
                fields
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            );
            let (status, answer) = rt.block_on(async {
                let r = client.post(&url).json(&v).send().await.expect("send");
                let status = r.status();
                (
                    status,
                    r.json::<serde_json::Value>().await.unwrap_or_default(),
                )
            });
            prop_assert!(
                !status.is_server_error(),
                "{} for {}: {}",
                status,
                v,
                answer
            );
            if status.is_client_error() {
                prop_assert!(answer["error"].is_string(), "{}", answer);
            }
            Ok(())
        })
        .expect("property");
    // Raw bytes too, not only JSON objects.
    let raw = prop::collection::vec(any::<u8>(), 0..200);
    runner
        .run(&raw, |bytes| {
            let status = rt.block_on(async {
                client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(bytes)
                    .send()
                    .await
                    .expect("send")
                    .status()
            });
            prop_assert!(status.is_client_error(), "{}", status);
            Ok(())
        })
        .expect("property");
    drop(server);
}

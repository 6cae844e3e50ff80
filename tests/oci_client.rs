//! Interop with the `oci-client` crate (what bpfman uses) against a real
//! server on 127.0.0.1:0: push and pull eBPF artifacts, chunked and
//! monolithic blob pushes, tags, digests, nested names, mounts, referrers
//! and image indexes.

mod common;

use std::collections::BTreeMap;

use bytes::Bytes;
use common::*;
use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{
    ImageIndexEntry, OciDescriptor, OciImageIndex, OciImageManifest, OciManifest,
};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

fn oci_client(monolithic: bool, max_concurrent_upload: usize) -> Client {
    Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        use_monolithic_push: monolithic,
        max_concurrent_upload,
        platform_resolver: Some(Box::new(oci_client::client::linux_amd64_resolver)),
        ..Default::default()
    })
}

fn reference(s: &TestServer, repo_and_tag: &str) -> Reference {
    format!("{}/{}", s.registry(), repo_and_tag)
        .parse()
        .unwrap_or_else(|e| panic!("bad reference {repo_and_tag}: {e}"))
}

/// The manifest digest at the end of a pushed manifest URL.
fn digest_from_url(url: &str) -> String {
    let d = url.rsplit('/').next().unwrap().to_string();
    assert!(
        d.starts_with("sha256:"),
        "manifest URL without a digest: {url}"
    );
    d
}

struct Artifact {
    config: Config,
    layers: Vec<ImageLayer>,
    manifest: OciImageManifest,
}

/// A bpf artifact the way the registry's REST facade lays it out: a bpf
/// config, one tar+zstd layer with a title annotation, manifest annotations
/// and an artifactType.
fn bpf_artifact(name: &str, version: &str, payload: Vec<u8>) -> Artifact {
    let config = Config::new(
        serde_json::to_vec(&serde_json::json!({
            "name": name, "version": version, "type": "program", "architecture": "x86_64",
        }))
        .unwrap(),
        BPF_CONFIG.to_string(),
        None,
    );
    let mut layer_ann = BTreeMap::new();
    layer_ann.insert(
        "org.opencontainers.image.title".to_string(),
        format!("{name}-{version}.tar.zst"),
    );
    let layers = vec![ImageLayer::new(
        payload,
        LAYER_TAR_ZSTD.to_string(),
        Some(layer_ann),
    )];
    let mut ann = BTreeMap::new();
    ann.insert(
        "org.opencontainers.image.title".to_string(),
        name.to_string(),
    );
    ann.insert(
        "org.opencontainers.image.version".to_string(),
        version.to_string(),
    );
    ann.insert("io.aegisflux.bpf.type".to_string(), "program".to_string());
    let mut manifest = OciImageManifest::build(&layers, &config, Some(ann));
    manifest.media_type = Some(OCI_MANIFEST.to_string());
    manifest.artifact_type = Some(BPF_ARTIFACT_TYPE.to_string());
    Artifact {
        config,
        layers,
        manifest,
    }
}

async fn push_artifact(client: &Client, r: &Reference, a: &Artifact) -> String {
    let resp = client
        .push(
            r,
            &a.layers,
            a.config.clone(),
            &RegistryAuth::Anonymous,
            Some(a.manifest.clone()),
        )
        .await
        .unwrap_or_else(|e| panic!("push {r}: {e}"));
    digest_from_url(&resp.manifest_url)
}

#[tokio::test]
async fn push_and_pull_bpf_artifact_roundtrip() {
    let s = TestServer::start().await;
    let client = oci_client(false, 4);
    let r = reference(&s, "bpf/prog:v1");
    let payload = pseudo_random(64 * 1024, 100);
    let a = bpf_artifact("prog", "v1", payload.clone());
    let digest = push_artifact(&client, &r, &a).await;

    let img = client
        .pull(&r, &RegistryAuth::Anonymous, vec![LAYER_TAR_ZSTD])
        .await
        .expect("pull");
    assert_eq!(img.digest.as_deref(), Some(digest.as_str()));
    assert_eq!(img.layers.len(), 1);
    assert_eq!(img.layers[0].data.as_ref(), payload.as_slice());
    assert_eq!(img.layers[0].media_type, LAYER_TAR_ZSTD);
    assert_eq!(
        img.layers[0]
            .annotations
            .as_ref()
            .and_then(|a| a.get("org.opencontainers.image.title"))
            .map(String::as_str),
        Some("prog-v1.tar.zst")
    );
    assert_eq!(img.config.data, a.config.data);
    assert_eq!(img.config.media_type, BPF_CONFIG);
    let m = img.manifest.expect("manifest");
    assert_eq!(m.artifact_type.as_deref(), Some(BPF_ARTIFACT_TYPE));
    assert_eq!(m.annotations, a.manifest.annotations);

    // pull_manifest / fetch_manifest_digest / raw agree with the push.
    let (pm, pd) = client
        .pull_manifest(&r, &RegistryAuth::Anonymous)
        .await
        .expect("pull_manifest");
    assert_eq!(pd, digest);
    match pm {
        OciManifest::Image(im) => {
            assert_eq!(im.layers.len(), 1);
            assert_eq!(im.layers[0].digest, sha256(&payload));
            assert_eq!(im.config.media_type, BPF_CONFIG);
        }
        other => panic!("expected an image manifest, got {other}"),
    }
    let fd = client
        .fetch_manifest_digest(&r, &RegistryAuth::Anonymous)
        .await
        .expect("fetch_manifest_digest");
    assert_eq!(fd, digest);
    let (raw, rd) = client
        .pull_manifest_raw(&r, &RegistryAuth::Anonymous, &[OCI_MANIFEST])
        .await
        .expect("pull_manifest_raw");
    assert_eq!(rd, digest);
    assert_eq!(sha256(&raw), digest);
    let (im, id) = client
        .pull_image_manifest(&r, &RegistryAuth::Anonymous)
        .await
        .expect("pull_image_manifest");
    assert_eq!(id, digest);
    assert_eq!(im.artifact_type.as_deref(), Some(BPF_ARTIFACT_TYPE));

    assert!(client.blob_exists(&r, &sha256(&payload)).await.unwrap());
    assert!(!client.blob_exists(&r, &sha256(b"absent")).await.unwrap());

    // An unknown tag surfaces the registry's MANIFEST_UNKNOWN.
    let missing = reference(&s, "bpf/prog:v404");
    let err = client
        .pull_manifest(&missing, &RegistryAuth::Anonymous)
        .await
        .expect_err("unknown tag");
    match err {
        OciDistributionError::RegistryError { envelope, .. } => {
            assert_eq!(envelope.errors[0].code, OciErrorCode::ManifestUnknown)
        }
        other => panic!("expected a registry error, got {other:?}"),
    }
}

#[tokio::test]
async fn pull_by_digest() {
    let s = TestServer::start().await;
    let client = oci_client(false, 4);
    let r = reference(&s, "bpf/bydigest:v1");
    let payload = pseudo_random(10_000, 101);
    let a = bpf_artifact("bydigest", "v1", payload.clone());
    let digest = push_artifact(&client, &r, &a).await;

    let by_digest = reference(&s, &format!("bpf/bydigest@{digest}"));
    let img = client
        .pull(&by_digest, &RegistryAuth::Anonymous, vec![LAYER_TAR_ZSTD])
        .await
        .expect("pull by digest");
    assert_eq!(img.digest.as_deref(), Some(digest.as_str()));
    assert_eq!(img.layers[0].data.as_ref(), payload.as_slice());
    assert_eq!(
        client
            .fetch_manifest_digest(&by_digest, &RegistryAuth::Anonymous)
            .await
            .unwrap(),
        digest
    );
    // A tag@digest reference resolves by digest.
    let both = reference(&s, &format!("bpf/bydigest:v1@{digest}"));
    let (_, d) = client
        .pull_manifest(&both, &RegistryAuth::Anonymous)
        .await
        .unwrap();
    assert_eq!(d, digest);
}

#[tokio::test]
async fn chunked_blob_push() {
    let s = TestServer::start().await;
    let client = oci_client(false, 4);
    let r = reference(&s, "bpf/chunked:v1");

    // push_blob_stream always uses PATCH chunks (one per stream item, no
    // monolithic fallback): three chunks here.
    let parts: Vec<Vec<u8>> = (0..3)
        .map(|i| pseudo_random(300 * 1024 + i, 200 + i as u64))
        .collect();
    let whole: Vec<u8> = parts.concat();
    let digest = sha256(&whole);
    let items: Vec<oci_client::errors::Result<Bytes>> =
        parts.iter().map(|p| Ok(Bytes::from(p.clone()))).collect();
    let url = client
        .push_blob_stream(&r, futures_util::stream::iter(items), &digest, None)
        .await
        .expect("push_blob_stream (chunked)");
    assert!(
        url.ends_with(&format!("/v2/bpf/chunked/blobs/{digest}")),
        "{url}"
    );
    let mut out = Vec::new();
    client
        .pull_blob(&r, digest.as_str(), &mut out)
        .await
        .expect("pull_blob");
    assert!(out == whole, "chunked blob differs");

    // push_blob_stream_chunked computes the digest itself.
    let parts2: Vec<Vec<u8>> = (0..4).map(|i| pseudo_random(50_000, 300 + i)).collect();
    let whole2 = parts2.concat();
    let items: Vec<oci_client::errors::Result<Bytes>> =
        parts2.iter().map(|p| Ok(Bytes::from(p.clone()))).collect();
    let resp = client
        .push_blob_stream_chunked(&r, futures_util::stream::iter(items))
        .await
        .expect("push_blob_stream_chunked");
    assert_eq!(resp.blob_digest, sha256(&whole2));
    assert_eq!(resp.size, whole2.len() as u64);
    let mut out = Vec::new();
    client
        .pull_blob(&r, resp.blob_digest.as_str(), &mut out)
        .await
        .expect("pull_blob");
    assert!(out == whole2);

    // push_blob of more than the client's 4 MiB chunk size: several PATCHes.
    let big = pseudo_random(9 * 1024 * 1024 + 7, 400);
    let big_digest = sha256(&big);
    client
        .push_blob(&r, big.clone(), &big_digest)
        .await
        .expect("push_blob");
    let mut stream = client
        .pull_blob_stream(&r, big_digest.as_str())
        .await
        .expect("pull_blob_stream");
    assert_eq!(stream.content_length, Some(big.len() as u64));
    let mut got = Vec::with_capacity(big.len());
    while let Some(chunk) = stream.next().await {
        got.extend_from_slice(&chunk.expect("chunk"));
    }
    assert!(got == big, "9 MiB blob differs");

    // A ranged pull from an offset.
    match client
        .pull_blob_stream_partial(&r, big_digest.as_str(), 1000, Some(500))
        .await
        .expect("partial pull")
    {
        oci_client::client::BlobResponse::Partial(mut st) => {
            let mut got = Vec::new();
            while let Some(chunk) = st.next().await {
                got.extend_from_slice(&chunk.expect("chunk"));
            }
            assert_eq!(got.as_slice(), &big[1000..1500]);
        }
        oci_client::client::BlobResponse::Full(_) => panic!("expected a 206 partial response"),
    }

    // No upload session is left behind.
    assert!(
        s.files_under("_uploads").is_empty(),
        "{:?}",
        s.files_under("_uploads")
    );
}

#[tokio::test]
async fn monolithic_push_and_concurrent_layers() {
    let s = TestServer::start().await;
    for (monolithic, repo) in [(true, "bpf/mono"), (false, "bpf/multi")] {
        let client = oci_client(monolithic, 4);
        let r = reference(&s, &format!("{repo}:v1"));
        let layers: Vec<ImageLayer> = (0..6)
            .map(|i| {
                ImageLayer::new(
                    pseudo_random(20_000 + i * 1000, 500 + i as u64),
                    LAYER_TAR_ZSTD.to_string(),
                    None,
                )
            })
            .collect();
        let config = Config::new(b"{\"k\":\"v\"}".to_vec(), BPF_CONFIG.to_string(), None);
        let resp = client
            .push(&r, &layers, config.clone(), &RegistryAuth::Anonymous, None)
            .await
            .unwrap_or_else(|e| panic!("push (monolithic={monolithic}): {e}"));
        let digest = digest_from_url(&resp.manifest_url);
        let img = client
            .pull(&r, &RegistryAuth::Anonymous, vec![LAYER_TAR_ZSTD])
            .await
            .expect("pull");
        assert_eq!(img.digest.as_deref(), Some(digest.as_str()));
        assert_eq!(img.layers.len(), layers.len());
        // The manifest keeps the layer order...
        let m = img.manifest.as_ref().expect("manifest");
        let want_order: Vec<String> = layers.iter().map(|l| l.sha256_digest()).collect();
        let got_order: Vec<String> = m.layers.iter().map(|d| d.digest.clone()).collect();
        assert_eq!(got_order, want_order, "layer order in the manifest");
        // ...and every layer comes back intact (the client downloads them
        // concurrently, so `img.layers` is in completion order).
        let mut got: Vec<String> = img.layers.iter().map(|l| sha256(&l.data)).collect();
        let mut want = want_order.clone();
        got.sort();
        want.sort();
        assert_eq!(got, want, "layer bytes");
        assert_eq!(img.config.data, config.data);
    }
}

#[tokio::test]
async fn list_tags() {
    let s = TestServer::start().await;
    let client = oci_client(false, 4);
    let tags = ["v1", "v2", "stable", "latest", "v1.0.1"];
    for t in tags {
        let r = reference(&s, &format!("bpf/tagged:{t}"));
        let a = bpf_artifact("tagged", t, pseudo_random(100, 600));
        push_artifact(&client, &r, &a).await;
    }
    let r = reference(&s, "bpf/tagged:v1");
    let mut sorted = tags.to_vec();
    sorted.sort();
    let all = client
        .list_tags(&r, &RegistryAuth::Anonymous, None, None)
        .await
        .expect("list_tags");
    assert_eq!(all.name, "bpf/tagged");
    assert_eq!(all.tags, sorted);
    let page = client
        .list_tags(&r, &RegistryAuth::Anonymous, Some(2), None)
        .await
        .expect("list_tags n=2");
    assert_eq!(page.tags, sorted[..2]);
    let page = client
        .list_tags(&r, &RegistryAuth::Anonymous, Some(2), Some(sorted[1]))
        .await
        .expect("list_tags n=2 last");
    assert_eq!(page.tags, sorted[2..4]);
    let page = client
        .list_tags(&r, &RegistryAuth::Anonymous, Some(10), Some(sorted[3]))
        .await
        .expect("list_tags last page");
    assert_eq!(page.tags, sorted[4..]);

    // Same bytes under several tags: one digest.
    let mut digests = std::collections::HashSet::new();
    for t in ["v1", "v2"] {
        let d = client
            .fetch_manifest_digest(
                &reference(&s, &format!("bpf/tagged:{t}")),
                &RegistryAuth::Anonymous,
            )
            .await
            .unwrap();
        digests.insert(d);
    }
    assert_eq!(
        digests.len(),
        2,
        "different versions have different manifests"
    );
}

#[tokio::test]
async fn nested_repository_name() {
    let s = TestServer::start().await;
    let client = oci_client(false, 4);
    let repo = "aegisflux/bpf/programs/xdp-filter";
    let r = reference(&s, &format!("{repo}:v1"));
    assert_eq!(r.repository(), repo);
    let payload = pseudo_random(4096, 700);
    let a = bpf_artifact("xdp-filter", "v1", payload.clone());
    let digest = push_artifact(&client, &r, &a).await;

    let img = client
        .pull(&r, &RegistryAuth::Anonymous, vec![LAYER_TAR_ZSTD])
        .await
        .expect("pull nested");
    assert_eq!(img.digest.as_deref(), Some(digest.as_str()));
    assert_eq!(img.layers[0].data.as_ref(), payload.as_slice());
    let tags = client
        .list_tags(&r, &RegistryAuth::Anonymous, None, None)
        .await
        .unwrap();
    assert_eq!(tags.name, repo);
    assert_eq!(tags.tags, vec!["v1".to_string()]);

    // A parent repository coexists with the nested one.
    let parent = reference(&s, "aegisflux/bpf:v1");
    push_artifact(
        &client,
        &parent,
        &bpf_artifact("bpf", "v1", pseudo_random(10, 701)),
    )
    .await;
    let cat = client
        .catalog(&r, &RegistryAuth::Anonymous, None, None)
        .await
        .expect("catalog");
    assert_eq!(
        cat.repositories,
        vec!["aegisflux/bpf".to_string(), repo.to_string()],
        "intermediate folders are not repositories"
    );
    let page = client
        .catalog(&r, &RegistryAuth::Anonymous, Some(1), Some("aegisflux/bpf"))
        .await
        .unwrap();
    assert_eq!(page.repositories, vec![repo.to_string()]);
}

#[tokio::test]
async fn mount_blob_across_repositories() {
    let s = TestServer::start().await;
    let client = oci_client(false, 4);
    let src = reference(&s, "bpf/source:v1");
    let payload = pseudo_random(8192, 800);
    let a = bpf_artifact("source", "v1", payload.clone());
    push_artifact(&client, &src, &a).await;
    let dst = reference(&s, "bpf/mirror:v1");
    let layer_digest = sha256(&payload);
    assert!(!client.blob_exists(&dst, &layer_digest).await.unwrap());
    client
        .mount_blob(&dst, &src, &layer_digest)
        .await
        .expect("mount_blob");
    client
        .mount_blob(&dst, &src, &a.config.sha256_digest())
        .await
        .expect("mount config");
    assert!(client.blob_exists(&dst, &layer_digest).await.unwrap());
    // With the blobs mounted, the manifest can be pushed without re-uploading.
    let url = client
        .push_manifest(&dst, &OciManifest::Image(a.manifest.clone()))
        .await
        .expect("push_manifest after mount");
    let img = client
        .pull(&dst, &RegistryAuth::Anonymous, vec![LAYER_TAR_ZSTD])
        .await
        .unwrap();
    assert_eq!(img.digest, Some(digest_from_url(&url)));
    assert_eq!(img.layers[0].data.as_ref(), payload.as_slice());

    // A mount the source cannot satisfy is refused by the client (202, not 201).
    let err = client
        .mount_blob(&dst, &src, &sha256(b"not in source"))
        .await
        .expect_err("mount of an absent blob");
    assert!(
        matches!(err, OciDistributionError::SpecViolationError(_)),
        "expected the 202 fallback, got {err:?}"
    );
}

#[tokio::test]
async fn referrers_via_oci_client() {
    let s = TestServer::start().await;
    let client = oci_client(false, 4);
    let r = reference(&s, "bpf/signed:v1");
    let a = bpf_artifact("signed", "v1", pseudo_random(1000, 900));
    let subject_digest = push_artifact(&client, &r, &a).await;
    let subject_size = {
        let (raw, _) = client
            .pull_manifest_raw(&r, &RegistryAuth::Anonymous, &[OCI_MANIFEST])
            .await
            .unwrap();
        raw.len() as i64
    };

    // A host association referrer: empty config and layer, annotation.
    let empty = Bytes::from_static(b"{}");
    let empty_digest = sha256(&empty);
    client
        .push_blob(&r, empty.clone(), &empty_digest)
        .await
        .unwrap();
    let empty_desc = OciDescriptor {
        media_type: OCI_EMPTY.to_string(),
        digest: empty_digest.clone(),
        size: 2,
        ..Default::default()
    };
    let mut ann = BTreeMap::new();
    ann.insert("io.aegisflux.bpf.host-id".to_string(), "host-7".to_string());
    let referrer = OciImageManifest {
        media_type: Some(OCI_MANIFEST.to_string()),
        config: empty_desc.clone(),
        layers: vec![empty_desc],
        subject: Some(OciDescriptor {
            media_type: OCI_MANIFEST.to_string(),
            digest: subject_digest.clone(),
            size: subject_size,
            ..Default::default()
        }),
        artifact_type: Some("application/vnd.aegisflux.bpf.host-association.v1".to_string()),
        annotations: Some(ann),
        ..Default::default()
    };
    let rref = reference(&s, "bpf/signed:host-7");
    let url = client
        .push_manifest(&rref, &OciManifest::Image(referrer))
        .await
        .expect("push referrer");
    let referrer_digest = digest_from_url(&url);

    let subject_ref = reference(&s, &format!("bpf/signed@{subject_digest}"));
    let idx = client
        .pull_referrers(&subject_ref, None)
        .await
        .expect("pull_referrers");
    assert_eq!(idx.manifests.len(), 1);
    let e = &idx.manifests[0];
    assert_eq!(e.digest, referrer_digest);
    assert_eq!(
        e.artifact_type.as_deref(),
        Some("application/vnd.aegisflux.bpf.host-association.v1")
    );
    assert_eq!(
        e.annotations
            .as_ref()
            .and_then(|a| a.get("io.aegisflux.bpf.host-id"))
            .map(String::as_str),
        Some("host-7")
    );
    let filtered = client
        .pull_referrers(&subject_ref, Some("application/vnd.example.other"))
        .await
        .expect("pull_referrers filtered");
    assert!(filtered.manifests.is_empty());
    let filtered = client
        .pull_referrers(
            &subject_ref,
            Some("application/vnd.aegisflux.bpf.host-association.v1"),
        )
        .await
        .expect("pull_referrers filtered");
    assert_eq!(filtered.manifests.len(), 1);
}

#[tokio::test]
async fn image_index_platform_resolution() {
    let s = TestServer::start().await;
    let client = oci_client(false, 4);
    let mut entries = Vec::new();
    let mut by_arch = BTreeMap::new();
    for arch in ["amd64", "arm64"] {
        let r = reference(&s, &format!("bpf/multiarch:v1-{arch}"));
        let payload = pseudo_random(2000, if arch == "amd64" { 1 } else { 2 });
        let a = bpf_artifact("multiarch", "v1", payload.clone());
        let d = push_artifact(&client, &r, &a).await;
        let (raw, _) = client
            .pull_manifest_raw(&r, &RegistryAuth::Anonymous, &[OCI_MANIFEST])
            .await
            .unwrap();
        let entry: ImageIndexEntry = serde_json::from_value(serde_json::json!({
            "mediaType": OCI_MANIFEST,
            "digest": d,
            "size": raw.len(),
            "platform": {"architecture": arch, "os": "linux"},
        }))
        .unwrap();
        entries.push(entry);
        by_arch.insert(arch, (d, payload));
    }
    let index = OciImageIndex {
        schema_version: 2,
        media_type: Some(OCI_INDEX.to_string()),
        manifests: entries,
        artifact_type: None,
        annotations: None,
    };
    let r = reference(&s, "bpf/multiarch:v1");
    let url = client
        .push_manifest_list(&r, &RegistryAuth::Anonymous, index)
        .await
        .expect("push_manifest_list");
    let index_digest = digest_from_url(&url);

    let (m, d) = client
        .pull_manifest(&r, &RegistryAuth::Anonymous)
        .await
        .unwrap();
    assert_eq!(d, index_digest);
    match m {
        OciManifest::ImageIndex(i) => assert_eq!(i.manifests.len(), 2),
        other => panic!("expected an index, got {other}"),
    }
    let (im, d, list) = client
        .pull_image_manifest_and_list_digest(&r, &RegistryAuth::Anonymous)
        .await
        .expect("resolve platform");
    assert_eq!(d, by_arch["amd64"].0);
    assert_eq!(list, Some(index_digest.clone()));
    assert_eq!(im.layers[0].digest, sha256(&by_arch["amd64"].1));
    let img = client
        .pull(&r, &RegistryAuth::Anonymous, vec![LAYER_TAR_ZSTD])
        .await
        .expect("pull through the index");
    assert_eq!(img.layers[0].data.as_ref(), by_arch["amd64"].1.as_slice());

    // Asking only for image manifests does not get the index.
    let err = client
        .pull_manifest_raw(&r, &RegistryAuth::Anonymous, &[OCI_MANIFEST])
        .await
        .expect_err("index served for an image-manifest-only Accept");
    match err {
        OciDistributionError::RegistryError { envelope, .. } => {
            assert_eq!(envelope.errors[0].code, OciErrorCode::ManifestUnknown)
        }
        other => panic!("expected a registry error, got {other:?}"),
    }
}

//! Manifest PUT checks and media types: an index child descriptor must
//! state the child's real size; a manifest without a `mediaType` field is
//! served with the Content-Type it was pushed with (Docker schema 2 and
//! manifest lists), per repository and across restarts.

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::json;

const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

#[tokio::test]
async fn an_index_child_with_the_wrong_size_is_refused() {
    let s = TestServer::start().await;
    let c = client();
    let repo = "bpf/index";
    let (child, body) = s
        .push_image(&c, repo, "child", b"{}", &[b"child layer"], json!({}))
        .await;
    let index = |size: usize| {
        serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": OCI_INDEX,
            "manifests": [{"mediaType": OCI_MANIFEST, "digest": child, "size": size}],
        }))
        .expect("json")
    };
    for wrong in [body.len() + 1, body.len() - 1, 0] {
        let bad = index(wrong);
        let r = s.put_manifest(&c, repo, "v1", OCI_INDEX, &bad).await;
        let e = assert_oci_error(r, StatusCode::BAD_REQUEST, "MANIFEST_INVALID").await;
        assert!(
            e.to_string().contains(&child),
            "the error names the child: {e}"
        );
        let r = c
            .get(s.url(&format!("/v2/{repo}/manifests/{}", sha256(&bad))))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "nothing stored");
    }
    let r = c
        .get(s.url(&format!("/v2/{repo}/manifests/v1")))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "no tag written");
    s.put_manifest_ok(&c, repo, "v1", OCI_INDEX, &index(body.len()))
        .await;
}

async fn get_manifest(
    s: &TestServer,
    c: &reqwest::Client,
    repo: &str,
    reference: &str,
    accept: Option<&str>,
) -> (StatusCode, Option<String>, Vec<u8>) {
    let mut rb = c.get(s.url(&format!("/v2/{repo}/manifests/{reference}")));
    if let Some(a) = accept {
        rb = rb.header("accept", a);
    }
    let r = rb.send().await.expect("get");
    let ct = header(&r, "content-type");
    (r.status(), ct, r.bytes().await.expect("body").to_vec())
}

/// What every read of the docker manifests of the test must see.
async fn check_docker_reads(
    s: &TestServer,
    c: &reqwest::Client,
    (repo, other): (&str, &str),
    body: &[u8],
    list: &[u8],
    digest: &str,
) {
    for reference in ["v1", digest] {
        let (st, ct, got) = get_manifest(s, c, repo, reference, Some(DOCKER_MANIFEST)).await;
        assert_eq!(st, StatusCode::OK, "Accept: docker v2 for {reference}");
        assert_eq!(ct.as_deref(), Some(DOCKER_MANIFEST));
        assert_eq!(got, body);
        let (st, ct, _) = get_manifest(s, c, repo, reference, None).await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(ct.as_deref(), Some(DOCKER_MANIFEST), "no Accept");
        let (st, _, _) = get_manifest(s, c, repo, reference, Some(OCI_MANIFEST)).await;
        assert_ne!(
            st,
            StatusCode::OK,
            "an OCI-only client is not served docker"
        );
    }
    let r = c
        .head(s.url(&format!("/v2/{repo}/manifests/v1")))
        .header("accept", DOCKER_MANIFEST)
        .send()
        .await
        .expect("head");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "content-type").as_deref(), Some(DOCKER_MANIFEST));
    let (st, ct, got) = get_manifest(s, c, repo, "list", Some(DOCKER_MANIFEST_LIST)).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(ct.as_deref(), Some(DOCKER_MANIFEST_LIST));
    assert_eq!(got, list);
    let (st, ct, _) = get_manifest(s, c, other, "v1", Some(OCI_MANIFEST)).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(ct.as_deref(), Some(OCI_MANIFEST), "per repository");
}

#[tokio::test]
async fn a_docker_manifest_without_media_type_keeps_its_content_type() {
    let s = TestServer::start().await;
    let c = client();
    let repo = "docker/app";
    let config = s.push_blob(&c, repo, br#"{"architecture":"amd64"}"#).await;
    let layer = s.push_blob(&c, repo, b"docker layer").await;
    // No `mediaType` field: the Content-Type of the PUT says what it is.
    let body = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "config": {"mediaType": DOCKER_CONFIG, "digest": config, "size": 24},
        "layers": [{"mediaType": DOCKER_LAYER, "digest": layer, "size": 12}],
    }))
    .expect("json");
    let digest = s
        .put_manifest_ok(&c, repo, "v1", DOCKER_MANIFEST, &body)
        .await;
    let list = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": DOCKER_MANIFEST, "digest": digest, "size": body.len(),
                       "platform": {"architecture": "amd64", "os": "linux"}}],
    }))
    .expect("json");
    s.put_manifest_ok(&c, repo, "list", DOCKER_MANIFEST_LIST, &list)
        .await;
    // The same bytes pushed as OCI into another repository are OCI there.
    let other = "oci/app";
    s.push_blob(&c, other, br#"{"architecture":"amd64"}"#).await;
    s.push_blob(&c, other, b"docker layer").await;
    s.put_manifest_ok(&c, other, "v1", OCI_MANIFEST, &body)
        .await;

    check_docker_reads(&s, &c, (repo, other), &body, &list, &digest).await;
    let s = s.restart().await;
    check_docker_reads(&s, &c, (repo, other), &body, &list, &digest).await;

    // The Content-Type must fit the shape.
    let r = s
        .put_manifest(&c, repo, "bad", DOCKER_MANIFEST_LIST, &body)
        .await;
    assert_oci_error(r, StatusCode::BAD_REQUEST, "MANIFEST_INVALID").await;
    // Deleted and pushed again as OCI: OCI from then on.
    let r = c
        .delete(s.url(&format!("/v2/{repo}/manifests/{digest}")))
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    s.put_manifest_ok(&c, repo, "v2", OCI_MANIFEST, &body).await;
    let (st, ct, _) = get_manifest(&s, &c, repo, "v2", None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(ct.as_deref(), Some(OCI_MANIFEST));
}

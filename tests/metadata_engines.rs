//! One suite, both metadata engines: every query and transaction of the
//! metadata store gives the same answers on the embedded SQLite and on
//! PostgreSQL (`BPF_TEST_POSTGRES`, started by the test command; without
//! it the PostgreSQL half is skipped with a message, and fails under
//! `CI=true`).

mod common;

use bpf_registry::metadata::{
    ArtifactFilter, DeploymentRow, DerivedRow, HostRow, ListingKey, ManifestPut, Metadata,
    MetadataConfig, PutRejected, SignatureRow, UploadRow,
};
use bpf_registry::oci::{Digest, Reference, RepoName, Tag};

fn repo(s: &str) -> RepoName {
    RepoName::parse(s).unwrap()
}
fn d(s: &str) -> Digest {
    Digest::of(s.as_bytes())
}

fn put(r: &RepoName, digest: &Digest, tag: Option<&str>) -> ManifestPut {
    ManifestPut {
        repo: r.clone(),
        digest: digest.clone(),
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        size: 100,
        subject: None,
        artifact_type: None,
        descriptor: None,
        blobs: vec![d("layer")],
        children: Vec::new(),
        tag: tag.map(|t| Tag::parse(t).unwrap()),
        derived: Vec::new(),
    }
}

async fn engines() -> Vec<(&'static str, Metadata, tempfile::TempDir)> {
    engines_with_urls()
        .await
        .into_iter()
        .map(|(engine, m, _, tmp)| (engine, m, tmp))
        .collect()
}

/// [`engines`], each with the URL a test's own connection opens.
async fn engines_with_urls() -> Vec<(&'static str, Metadata, String, tempfile::TempDir)> {
    let tmp = tempfile::tempdir().unwrap();
    let sqlite_url = format!("sqlite://{}", tmp.path().join("metadata.db").display());
    let mut out = vec![(
        "sqlite",
        Metadata::open_in_dir(tmp.path()).await.unwrap(),
        sqlite_url,
        tmp,
    )];
    match common::engines::postgres_base_url() {
        Some(_) => {
            let url = common::engines::new_postgres_database();
            let config = MetadataConfig::parse(Some(&url), std::path::Path::new("/")).unwrap();
            out.push((
                "postgres",
                Metadata::open(&config).await.unwrap(),
                url,
                tempfile::tempdir().unwrap(),
            ));
        }
        None => {
            let msg =
                "BPF_TEST_POSTGRES is not set: the PostgreSQL half of the engine suite did not run";
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{msg}");
            }
            eprintln!("SKIPPED: {msg}");
        }
    }
    out
}

async fn link(m: &Metadata, r: &RepoName, digest: &Digest) {
    assert!(m
        .link_blob(r, digest, async || Ok::<
            _,
            bpf_registry::metadata::MetadataError,
        >(true))
        .await
        .unwrap());
}

#[tokio::test]
async fn manifests_tags_and_links_answer_the_same_on_both_engines() {
    for (engine, m, _tmp) in engines().await {
        let r = repo("team/app");
        // A manifest whose blob is not linked changes nothing.
        let rejected = m
            .put_manifest(&put(&r, &d("m1"), Some("v1")))
            .await
            .unwrap();
        assert_eq!(
            rejected,
            Err(PutRejected::BlobUnknown(d("layer"))),
            "{engine}"
        );
        assert!(!m.repo_exists(&r).await.unwrap(), "{engine}");
        link(&m, &r, &d("layer")).await;
        m.put_manifest(&put(&r, &d("m1"), Some("v1")))
            .await
            .unwrap()
            .unwrap();
        m.put_manifest(&put(&r, &d("m2"), Some("v2")))
            .await
            .unwrap()
            .unwrap();
        // Moving a tag.
        m.put_manifest(&put(&r, &d("m2"), Some("v1")))
            .await
            .unwrap()
            .unwrap();
        let row = m
            .resolve(&r, &Reference::Tag(Tag::parse("v1").unwrap()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.digest, d("m2"), "{engine}");
        // Lexical, byte-wise order and pagination (upper case first).
        for t in ["B", "a", "Z_1", "b"] {
            m.put_manifest(&put(&r, &d("m1"), Some(t)))
                .await
                .unwrap()
                .unwrap();
        }
        let page = m.list_tags(&r, Some(3), None).await.unwrap();
        assert_eq!(page.items, ["B", "Z_1", "a"], "{engine}");
        assert_eq!(page.next_last.as_deref(), Some("a"), "{engine}");
        let page = m.list_tags(&r, Some(3), Some("a")).await.unwrap();
        assert_eq!(page.items, ["b", "v1", "v2"], "{engine}");
        assert_eq!(page.next_last, None, "{engine}");
        // Another repository sees none of it.
        let other = repo("sandbox/other");
        assert!(m
            .resolve(&other, &Reference::Digest(d("m1")))
            .await
            .unwrap()
            .is_none());
        assert_eq!(m.blob_holders(&d("layer")).await.unwrap(), vec![r.clone()]);
        // Deleting a manifest takes its tags, leaves the other's.
        let gone = m
            .delete_manifests(&r, &[d("m1"), d("m1"), d("nope")])
            .await
            .unwrap();
        assert_eq!(gone, vec![d("m1")], "{engine}");
        let tags: Vec<String> = m
            .tag_map(&r)
            .await
            .unwrap()
            .into_iter()
            .map(|(t, _)| t.to_string())
            .collect();
        assert_eq!(tags, ["v1", "v2"], "{engine}");
        assert_eq!(m.repositories().await.unwrap(), vec![r.clone()], "{engine}");
        assert!(m.unlink_blob(&r, &d("layer")).await.unwrap());
        assert!(!m.unlink_blob(&r, &d("layer")).await.unwrap());
    }
}

#[tokio::test]
async fn referrers_children_and_derived_rows_on_both_engines() {
    for (engine, m, _tmp) in engines().await {
        let r = repo("team/art");
        link(&m, &r, &d("layer")).await;
        let mut art = put(&r, &d("art"), Some("1.0"));
        art.derived = vec![DerivedRow::Artifact {
            name: "prog".into(),
            version: "1.0".into(),
            kind: "program".into(),
            architecture: "x86_64".into(),
            facets: vec![
                ("tag".into(), "t1".into()),
                ("kernel_version".into(), "5.15".into()),
            ],
            record: "{}".into(),
        }];
        m.put_manifest(&art).await.unwrap().unwrap();
        let by_facet = |facet: &str, value: &str| ArtifactFilter {
            facets: vec![(facet.into(), value.into())],
            ..Default::default()
        };
        let listed = m
            .list_artifacts(&by_facet("tag", "t1"), None, 10)
            .await
            .unwrap();
        assert_eq!(listed.len(), 1, "{engine}");
        assert_eq!(listed[0].0.version, "1.0", "{engine}");
        for (facet, value) in [("tag", "t2"), ("kernel_version", "t1")] {
            let listed = m
                .list_artifacts(&by_facet(facet, value), None, 10)
                .await
                .unwrap();
            assert!(listed.is_empty(), "{engine} {facet}={value}");
        }
        let after = listed_key(&m).await;
        assert!(m
            .list_artifacts(&ArtifactFilter::default(), Some(&after), 10)
            .await
            .unwrap()
            .is_empty());
        // An index whose child states the wrong size is refused whole.
        let mut index = put(&r, &d("index"), Some("idx"));
        index.blobs.clear();
        index.children = vec![(d("art"), 99)];
        assert!(matches!(
            m.put_manifest(&index).await.unwrap(),
            Err(PutRejected::ChildSize { .. })
        ));
        index.children = vec![(d("art"), 100)];
        m.put_manifest(&index).await.unwrap().unwrap();
        // A referrer with a host association and one with a signature.
        for (name, at, derived) in [
            (
                "assoc",
                "application/vnd.aegisflux.bpf.host-association.v1",
                DerivedRow::HostAssociation {
                    subject: d("art"),
                    host: "edge-1".into(),
                    channel: None,
                },
            ),
            (
                "sig",
                "application/vnd.dev.cosign.artifact.sig.v1+json",
                DerivedRow::Signature(SignatureRow {
                    digest: None,
                    subject: d("art"),
                    key_id: Some("k".into()),
                    key_version: Some(2),
                    algorithm: None,
                    created: None,
                }),
            ),
        ] {
            let mut p = put(&r, &d(name), None);
            p.subject = Some(d("art"));
            p.artifact_type = Some(at.into());
            p.descriptor = Some(format!(
                r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":100,"artifactType":"{at}"}}"#,
                d(name)
            ));
            p.derived = vec![derived];
            m.put_manifest(&p).await.unwrap().unwrap();
        }
        let all = m.referrers(&r, &d("art"), None).await.unwrap();
        assert_eq!(all.len(), 2, "{engine}");
        let only = m
            .referrers(
                &r,
                &d("art"),
                Some("application/vnd.aegisflux.bpf.host-association.v1"),
            )
            .await
            .unwrap();
        assert_eq!(only.len(), 1, "{engine}");
        assert_eq!(only[0].digest, d("assoc"), "{engine}");
        assert_eq!(
            m.hosts_of(&r, &d("art")).await.unwrap(),
            vec![("edge-1".to_string(), d("assoc"))]
        );
        assert_eq!(
            m.artifacts_for_host("edge-1").await.unwrap().len(),
            1,
            "{engine}"
        );
        assert_eq!(
            m.signatures(&r, &d("art")).await.unwrap()[0].key_version,
            Some(2)
        );
        assert_eq!(m.artifact_counts().await.unwrap(), (1, 1), "{engine}");
        // The referrers are per repository.
        assert!(m
            .referrers(&repo("other/repo"), &d("art"), None)
            .await
            .unwrap()
            .is_empty());
        // Deleting the association removes its derived row.
        m.delete_manifests(&r, &[d("assoc")]).await.unwrap();
        assert!(
            m.artifacts_for_host("edge-1").await.unwrap().is_empty(),
            "{engine}"
        );
        let marked = m.marked_digests().await.unwrap();
        assert!(
            marked.contains(&d("layer")) && marked.contains(&d("index")),
            "{engine}"
        );
    }
}

#[tokio::test]
async fn upload_offsets_move_by_compare_and_set_on_both_engines() {
    for (engine, m, _tmp) in engines().await {
        let row = UploadRow {
            id: "0b7d3c52-6e4f-4f5e-9a3c-2d1e0f9a8b7c".into(),
            repo: repo("team/up"),
            owner: Some(r#"{"user":"alice"}"#.into()),
            committed: 0,
            started_at: 1,
            updated_at: 1,
        };
        m.insert_upload(&row).await.unwrap();
        assert!(m.advance_upload(&row.id, 0, 10).await.unwrap(), "{engine}");
        // The loser of a race (same starting offset) is refused.
        assert!(!m.advance_upload(&row.id, 0, 7).await.unwrap(), "{engine}");
        assert_eq!(m.upload(&row.id).await.unwrap().unwrap().committed, 10);
        assert_eq!(m.uploads().await.unwrap().len(), 1);
        assert!(m.delete_upload(&row.id).await.unwrap());
        assert!(
            !m.advance_upload(&row.id, 10, 20).await.unwrap(),
            "{engine}"
        );
        assert!(m.upload(&row.id).await.unwrap().is_none());
    }
}

#[tokio::test]
async fn one_collector_at_a_time_on_both_engines() {
    for (engine, m, _tmp) in engines().await {
        let first = m.collector_lease().await.unwrap();
        assert!(first.is_some(), "{engine}");
        if engine == "postgres" {
            // A second replica's collector is refused while the first runs.
            assert!(m.collector_lease().await.unwrap().is_none());
            drop(first);
            // Released with its connection.
            let mut again = None;
            for _ in 0..50 {
                again = m.collector_lease().await.unwrap();
                if again.is_some() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            assert!(again.is_some(), "the lease outlived its holder");
        }
    }
}

/// The listing position of the only artifact.
async fn listed_key(m: &bpf_registry::metadata::Metadata) -> ListingKey {
    let all = m
        .list_artifacts(&ArtifactFilter::default(), None, 10)
        .await
        .unwrap();
    assert_eq!(all.len(), 1);
    all[0].0.clone()
}

/// A sweep batch commits the rows before it deletes the bytes: when the
/// deletion fails (a crash, a store error) the links are already gone, so
/// no replica can pass a manifest's link check for bytes that may be gone;
/// the bytes left are swept by the next run.
#[tokio::test]
async fn a_failed_byte_deletion_leaves_no_link_to_the_swept_blob() {
    for (engine, m, _tmp) in engines().await {
        let r = repo("team/sweep");
        let (gone, kept) = (d("swept"), d("kept"));
        link(&m, &r, &gone).await;
        link(&m, &r, &kept).await;
        let failed: Result<(Vec<(Digest, u64)>, u64), bpf_registry::metadata::MetadataError> = m
            .sweep_blobs(
                std::slice::from_ref(&gone),
                |_| true,
                async |_doomed: Vec<Digest>| {
                    Err(bpf_registry::metadata::MetadataError::Corrupt(
                        "the store refused the deletion".into(),
                    ))
                },
            )
            .await;
        assert!(failed.is_err(), "{engine}");
        let links: Vec<Digest> = m
            .blob_links()
            .await
            .unwrap()
            .into_iter()
            .map(|(_, d)| d)
            .collect();
        assert_eq!(
            links,
            vec![kept.clone()],
            "{engine}: only the kept blob is linked"
        );
    }
}

fn host_row(id: &str) -> HostRow {
    HostRow {
        host_id: id.into(),
        architecture: "x86_64".into(),
        kernel_release: "6.1.0".into(),
        btf: Some(true),
        agent_version: None,
        labels: "{}".into(),
        registered_at: 1,
        last_seen: 1,
    }
}

fn report(host: &str, digest: &str) -> DeploymentRow {
    DeploymentRow {
        host_id: host.into(),
        repo: "team/prog".into(),
        digest: digest.into(),
        state: "loaded".into(),
        message: None,
        attach_point: None,
        reported_at: 1,
    }
}

/// The artifacts a host's current reports and its history name.
async fn reported(m: &Metadata, host: &str) -> (Vec<String>, Vec<String>) {
    let current = m.deployments_of_host(host).await.unwrap();
    let history = m.deployment_history(host).await.unwrap();
    (
        current.into_iter().map(|d| d.digest).collect(),
        history.into_iter().map(|d| d.digest).collect(),
    )
}

/// A batch of reports is written only for the hosts registered when it
/// commits: each report answers for itself, the unknown hosts' reports
/// leave no row, the others of the batch are written.
#[tokio::test]
async fn a_report_batch_writes_only_the_registered_hosts_on_both_engines() {
    for (engine, m, _tmp) in engines().await {
        m.upsert_host(&host_row("h1")).await.unwrap();
        m.upsert_host(&host_row("h2")).await.unwrap();
        // The writer the server uses (on SQLite, one connection kept).
        let mut writer = m.deployment_writer();
        let batch = [
            report("h1", "a"),
            report("ghost", "a"),
            report("h2", "a"),
            report("ghost", "b"),
            report("h1", "b"),
        ];
        let written = writer.put(&batch).await.unwrap();
        assert_eq!(written, [true, false, true, false, true], "{engine}");
        let none: (Vec<String>, Vec<String>) = (vec![], vec![]);
        assert_eq!(reported(&m, "ghost").await, none, "{engine}");
        assert_eq!(
            reported(&m, "h1").await,
            (vec!["a".into(), "b".into()], vec!["b".into(), "a".into()]),
            "{engine}"
        );
        assert_eq!(
            reported(&m, "h2").await,
            (vec!["a".into()], vec!["a".into()]),
            "{engine}"
        );
        // Only unknown hosts: nothing written, every report answered.
        let written = writer
            .put(&[report("ghost", "c"), report("ghost-2", "c")])
            .await
            .unwrap();
        assert_eq!(written, [false, false], "{engine}");
        // A host deleted earlier: its report is not written, and the host
        // registered again has no deployment.
        assert!(m.delete_host("h2").await.unwrap(), "{engine}");
        let written = writer.put(&[report("h2", "c")]).await.unwrap();
        assert_eq!(written, [false], "{engine}");
        m.upsert_host(&host_row("h2")).await.unwrap();
        assert_eq!(reported(&m, "h2").await, none, "{engine}");
    }
}

/// The race a check before the write transaction had: a host deleted by a
/// transaction that is still open when a report for it starts. The report
/// waits for that transaction (SQLite's write lock; PostgreSQL's per-host
/// lock, the one `delete_host` takes) and checks the host after it, so it
/// is not written, whichever of the two gets there first.
#[tokio::test]
async fn a_report_racing_a_host_delete_is_not_written_on_both_engines() {
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    for (engine, m, url, _tmp) in engines_with_urls().await {
        m.upsert_host(&host_row("racer")).await.unwrap();
        let mut conn = sqlx::AnyConnection::connect(&url).await.unwrap();
        let mut tx = if engine == "sqlite" {
            conn.begin_with("BEGIN IMMEDIATE").await.unwrap()
        } else {
            let mut tx = conn.begin().await.unwrap();
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
                .bind("host:racer")
                .execute(&mut *tx)
                .await
                .unwrap();
            tx
        };
        for statement in [
            "DELETE FROM hosts WHERE host_id = $1",
            "DELETE FROM deployments WHERE host_id = $1",
            "DELETE FROM deployment_history WHERE host_id = $1",
        ] {
            sqlx::query(statement)
                .bind("racer")
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        // The report starts while the delete is uncommitted (the host is
        // still there for any reader outside that transaction).
        let writer = m.clone();
        let pending = tokio::spawn(async move {
            writer
                .deployment_writer()
                .put(&[report("racer", "a")])
                .await
        });
        assert!(
            m.host("racer").await.unwrap().is_some(),
            "{engine}: the delete is not committed yet"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        tx.commit().await.unwrap();
        let written = tokio::time::timeout(std::time::Duration::from_secs(30), pending)
            .await
            .expect("the report finishes once the delete commits")
            .unwrap()
            .unwrap();
        assert_eq!(written, [false], "{engine}");
        m.upsert_host(&host_row("racer")).await.unwrap();
        let none: (Vec<String>, Vec<String>) = (vec![], vec![]);
        assert_eq!(reported(&m, "racer").await, none, "{engine}");
    }
}

//! Scrub: re-hash every blob (bytes against digests) and check every row
//! of the metadata store against the bytes (rows against bytes).
//!
//! Checked: each blob hashes to its name; each tag names a manifest row of
//! its repository; each manifest row names stored, parseable bytes of the
//! size it records, whose config and layers are stored with the size its
//! descriptors state (and reachable from the repository), whose index
//! children are manifests of the repository of the size stated, and whose
//! subject is the one recorded for the referrers API; each blob link names
//! stored bytes.
//!
//! With `repair`: corrupt blobs move to `_quarantine/sha256/<hex>` (a
//! later push of the same content stores it again). Everything else is
//! reported only: deciding which tag or manifest to drop is an operator's
//! call.

use std::collections::HashSet;
use std::time::Instant;

use serde::Serialize;

use super::io::{blocking, hash_reader};
use super::{Registry, RegistryResult};
use crate::metadata::ManifestRow;
use crate::oci::{Digest, ParsedManifest, RepoName, Tag};
use crate::storage::{paths, Backend, StorageError};

/// Whole-blob reads up to this size are verified against the digest
/// before any byte is sent (manifests always are).
pub const VERIFY_ON_READ_MAX: u64 = 1024 * 1024;

/// Checks bytes read from the store against their digest; a mismatch is a
/// storage error (500 to the client, an error log line naming the blob).
pub(crate) fn verify_read(digest: &Digest, bytes: &[u8]) -> RegistryResult<()> {
    let actual = Digest::of(bytes);
    if &actual == digest {
        return Ok(());
    }
    tracing::error!(
        digest = %digest,
        actual = %actual,
        "stored content does not match its digest; refusing to serve it (run scrub)"
    );
    Err(StorageError::io(
        &paths::blob(digest),
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("stored content hashes to {actual}"),
        ),
    )
    .into())
}

/// One thing found wrong.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// A constant code, e.g. `corrupt_blob`, `tag_dangling`.
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// The object concerned (a digest, a tag).
    pub object: String,
    pub detail: String,
    /// Whether `--repair` fixed it.
    pub repaired: bool,
}

/// What a scrub checked and found.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ScrubReport {
    pub repair: bool,
    pub blobs_checked: u64,
    pub bytes_hashed: u64,
    pub repositories: u64,
    pub tags_checked: u64,
    pub manifests_checked: u64,
    /// Repository → blob rows checked against the blobs stored.
    pub blob_links_checked: u64,
    /// Manifests with a subject, checked against their referrer row.
    pub referrers_checked: u64,
    pub problems: Vec<Problem>,
    pub duration_ms: u64,
}

impl ScrubReport {
    /// Whether the store is sound.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }

    pub fn repaired(&self) -> usize {
        self.problems.iter().filter(|p| p.repaired).count()
    }

    /// One structured log line.
    pub fn log(&self) {
        tracing::info!(
            repair = self.repair,
            blobs_checked = self.blobs_checked,
            bytes_hashed = self.bytes_hashed,
            repositories = self.repositories,
            tags_checked = self.tags_checked,
            manifests_checked = self.manifests_checked,
            blob_links_checked = self.blob_links_checked,
            referrers_checked = self.referrers_checked,
            problems = self.problems.len(),
            repaired = self.repaired(),
            duration_ms = self.duration_ms,
            "scrub finished"
        );
    }
}

struct Ctx<'a> {
    b: &'a dyn Backend,
    repair: bool,
    report: ScrubReport,
}

impl Ctx<'_> {
    fn problem(
        &mut self,
        kind: &'static str,
        repo: Option<&RepoName>,
        object: impl ToString,
        detail: impl Into<String>,
        repaired: bool,
    ) {
        let p = Problem {
            kind,
            repository: repo.map(|r| r.to_string()),
            object: object.to_string(),
            detail: detail.into(),
            repaired,
        };
        tracing::warn!(
            kind = p.kind,
            repository = p.repository.as_deref().unwrap_or(""),
            object = %p.object,
            detail = %p.detail,
            repaired = p.repaired,
            "scrub problem"
        );
        self.report.problems.push(p);
    }

    /// Re-hashes every blob; returns the digests of the blobs still
    /// stored (corrupt ones included unless quarantined: they are reported
    /// once, not again for every link and manifest naming them).
    fn blobs(&mut self) -> RegistryResult<HashSet<Digest>> {
        let mut stored = HashSet::new();
        for e in self.b.list(&paths::blobs_dir())? {
            if e.is_dir {
                continue;
            }
            let Some(d) = Digest::from_hex(&e.name) else {
                self.problem(
                    "stray_blob_file",
                    None,
                    &e.name,
                    "a file in blobs/sha256 whose name is not a digest",
                    false,
                );
                continue;
            };
            let path = paths::blob(&d);
            let Some(mut r) = self.b.open_read(&path, 0)? else {
                continue; // deleted since the listing
            };
            let (actual, len) =
                hash_reader(&mut r.reader).map_err(|e| StorageError::io(&path, e))?;
            self.report.blobs_checked += 1;
            self.report.bytes_hashed += len;
            if actual == d {
                stored.insert(d);
                continue;
            }
            let repaired = self.repair && self.b.rename(&path, &paths::quarantine(&d)).is_ok();
            if !repaired {
                stored.insert(d.clone());
            }
            self.problem(
                "corrupt_blob",
                None,
                &d,
                format!("content ({len} bytes) hashes to {actual}"),
                repaired,
            );
        }
        Ok(stored)
    }

    fn repo(&mut self, rows: &RepoRows, blobs: &HashSet<Digest>, max: u64) -> RegistryResult<()> {
        let repo = &rows.name;
        let manifests: std::collections::HashMap<&Digest, &ManifestRow> =
            rows.manifests.iter().map(|m| (&m.digest, m)).collect();
        let reachable: HashSet<&Digest> = rows
            .blob_links
            .iter()
            .chain(manifests.keys().copied())
            .collect();
        for (tag, d) in &rows.tags {
            self.report.tags_checked += 1;
            if !manifests.contains_key(d) {
                self.problem(
                    "tag_dangling",
                    Some(repo),
                    tag,
                    format!("names {d}, which is not a manifest of the repository"),
                    false,
                );
            }
        }
        for d in &rows.blob_links {
            self.report.blob_links_checked += 1;
            if !blobs.contains(d) {
                self.problem(
                    "blob_link_dangling",
                    Some(repo),
                    d,
                    "linked blob is not stored",
                    false,
                );
            }
        }
        for row in &rows.manifests {
            self.report.manifests_checked += 1;
            let d = &row.digest;
            if !blobs.contains(d) {
                self.problem(
                    "manifest_missing",
                    Some(repo),
                    d,
                    "manifest bytes are not stored",
                    false,
                );
                continue;
            }
            let Some(bytes) = self.b.read_small(&paths::blob(d), max)? else {
                self.problem(
                    "manifest_missing",
                    Some(repo),
                    d,
                    "manifest bytes are not stored",
                    false,
                );
                continue;
            };
            if bytes.len() as u64 != row.size {
                self.problem(
                    "manifest_unreadable",
                    Some(repo),
                    d,
                    format!("row says {} bytes, the blob has {}", row.size, bytes.len()),
                    false,
                );
                continue;
            }
            let m = match ParsedManifest::parse(&bytes, Some(&row.media_type)) {
                Ok(m) => m,
                Err(e) => {
                    self.problem("manifest_invalid", Some(repo), d, e.to_string(), false);
                    continue;
                }
            };
            for r in m.blob_references() {
                match self.b.size(&paths::blob(&r.digest))? {
                    None => self.problem(
                        "manifest_blob_missing",
                        Some(repo),
                        d,
                        format!("references {}, which is not stored", r.digest),
                        false,
                    ),
                    Some(size) if size != r.size => self.problem(
                        "manifest_blob_size",
                        Some(repo),
                        d,
                        format!("says {} is {} bytes, it has {size}", r.digest, r.size),
                        false,
                    ),
                    Some(_) if !reachable.contains(&r.digest) => self.problem(
                        "manifest_blob_unlinked",
                        Some(repo),
                        d,
                        format!(
                            "references {}, which is not linked into the repository",
                            r.digest
                        ),
                        false,
                    ),
                    Some(_) => {}
                }
            }
            for c in &m.manifests {
                match manifests.get(&c.digest) {
                    None => self.problem(
                        "index_child_missing",
                        Some(repo),
                        d,
                        format!("child {} is not a manifest of the repository", c.digest),
                        false,
                    ),
                    Some(child) if child.size != c.size => self.problem(
                        "index_child_size",
                        Some(repo),
                        d,
                        format!(
                            "says child {} is {} bytes, it has {}",
                            c.digest, c.size, child.size
                        ),
                        false,
                    ),
                    Some(_) => {}
                }
            }
            self.report.referrers_checked += u64::from(m.subject.is_some());
            let subject = m.subject.as_ref().map(|s| &s.digest);
            if subject != rows.subjects.get(d).and_then(|s| s.as_ref()) {
                self.problem(
                    "referrer_link_invalid",
                    Some(repo),
                    d,
                    "the subject recorded for the referrers API is not the manifest's",
                    false,
                );
            }
        }
        Ok(())
    }
}

/// What the metadata store says of one repository.
struct RepoRows {
    name: RepoName,
    tags: Vec<(Tag, Digest)>,
    manifests: Vec<ManifestRow>,
    blob_links: Vec<Digest>,
    subjects: std::collections::HashMap<Digest, Option<Digest>>,
}

impl Registry {
    /// Re-hashes every blob and checks every row against the bytes (see the
    /// module doc).
    /// With `repair`, run it only while no server uses the store.
    pub async fn scrub(&self, repair: bool) -> RegistryResult<ScrubReport> {
        let started = Instant::now();
        let repo_names = self.all_repositories().await?;
        let mut links_of: std::collections::HashMap<RepoName, Vec<Digest>> =
            std::collections::HashMap::new();
        for (repo, d) in self.meta.blob_links().await? {
            links_of.entry(repo).or_default().push(d);
        }
        let mut repos = Vec::with_capacity(repo_names.len());
        for name in repo_names {
            let graph = self.meta.repo_graph(&name).await?;
            repos.push(RepoRows {
                tags: self.meta.tag_map(&name).await?,
                manifests: self.meta.manifests_of(&name).await?,
                blob_links: links_of.remove(&name).unwrap_or_default(),
                subjects: graph
                    .manifests
                    .into_iter()
                    .map(|(d, _, s)| (d, s))
                    .collect(),
                name,
            });
        }
        let b = self.backend.clone();
        let max = self.limits.max_manifest_bytes;
        let mut report = blocking(move || {
            let mut ctx = Ctx {
                b: &*b,
                repair,
                report: ScrubReport {
                    repair,
                    repositories: repos.len() as u64,
                    ..ScrubReport::default()
                },
            };
            let blobs = ctx.blobs()?;
            for r in &repos {
                ctx.repo(r, &blobs, max)?;
            }
            Ok(ctx.report)
        })
        .await?;
        report.duration_ms = started.elapsed().as_millis() as u64;
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Reference;
    use crate::registry::Limits;
    use crate::storage::FsBackend;
    use bytes::Bytes;
    use serde_json::json;
    use std::sync::Arc;

    async fn store_image(reg: &Registry, repo: &RepoName, layer: &[u8]) -> Digest {
        let mut descs = Vec::new();
        for data in [&b"{}"[..], layer] {
            let d = Digest::of(data);
            let body = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(
                Bytes::copy_from_slice(data),
            )]);
            reg.upload_monolithic(repo, &d, None, body).await.unwrap();
            descs.push(
                json!({"mediaType": "application/octet-stream", "digest": d, "size": data.len()}),
            );
        }
        let m = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "config": descs[0], "layers": [descs[1]]});
        reg.put_manifest(
            repo,
            &Reference::parse("v1").unwrap(),
            None,
            Bytes::from(serde_json::to_vec(&m).unwrap()),
        )
        .await
        .unwrap()
        .digest
    }

    #[tokio::test]
    async fn flipped_byte_is_found_and_quarantined() {
        let dir = tempfile::tempdir().unwrap();
        let b: Arc<dyn Backend> = Arc::new(FsBackend::open(dir.path()).unwrap());
        let reg = Registry::new(
            b,
            crate::metadata::Metadata::open_in_dir(dir.path())
                .await
                .unwrap(),
            Limits::default(),
        );
        let repo = RepoName::parse("scrub/me").unwrap();
        store_image(&reg, &repo, b"precious layer bytes").await;
        let clean = reg.scrub(false).await.unwrap();
        assert!(clean.is_clean(), "{:?}", clean.problems);
        assert_eq!(clean.blobs_checked, 3);

        let layer = Digest::of(b"precious layer bytes");
        let path = dir.path().join(paths::blob(&layer).as_str());
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[3] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();

        // Readers are refused the corrupt bytes.
        assert!(reg.read_blob(&repo, &layer, None).await.is_err());

        let found = reg.scrub(false).await.unwrap();
        assert!(!found.is_clean());
        assert_eq!(found.problems[0].kind, "corrupt_blob");
        assert_eq!(found.problems[0].object, layer.to_string());
        assert!(path.exists());

        let repaired = reg.scrub(true).await.unwrap();
        assert!(repaired
            .problems
            .iter()
            .any(|p| p.kind == "corrupt_blob" && p.repaired));
        assert!(!path.exists());
        assert!(dir.path().join(paths::quarantine(&layer).as_str()).exists());

        // Now the manifest's layer is missing: still reported.
        let after = reg.scrub(false).await.unwrap();
        assert!(after
            .problems
            .iter()
            .any(|p| p.kind == "manifest_blob_missing"));
        // A new push of the same content heals the store.
        let body = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(Bytes::from_static(
            b"precious layer bytes",
        ))]);
        reg.upload_monolithic(&repo, &layer, None, body)
            .await
            .unwrap();
        assert!(reg.scrub(false).await.unwrap().is_clean());
    }

    #[tokio::test]
    async fn dangling_tag_and_corrupt_manifest_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let b: Arc<dyn Backend> = Arc::new(FsBackend::open(dir.path()).unwrap());
        let reg = Registry::new(
            b.clone(),
            crate::metadata::Metadata::open_in_dir(dir.path())
                .await
                .unwrap(),
            Limits::default(),
        );
        let repo = RepoName::parse("scrub/tags").unwrap();
        let m = store_image(&reg, &repo, b"layer").await;
        let bogus = Digest::of(b"no such manifest");
        // Damage no write makes: a tag row naming no manifest.
        sqlx::query("INSERT INTO tags (repo, tag, digest, updated_at) VALUES ($1, 'ghost', $2, 0)")
            .bind(repo.to_string())
            .bind(bogus.to_string())
            .execute(reg.metadata().pool())
            .await
            .unwrap();
        let path = dir.path().join(paths::blob(&m).as_str());
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 2;
        bytes[last] = b' ';
        std::fs::write(&path, &bytes).unwrap();
        // A corrupt manifest is never served.
        assert!(reg
            .get_manifest(&repo, &Reference::parse("v1").unwrap(), &[])
            .await
            .is_err());
        let r = reg.scrub(false).await.unwrap();
        let kinds: Vec<&str> = r.problems.iter().map(|p| p.kind).collect();
        assert!(kinds.contains(&"tag_dangling"), "{kinds:?}");
        assert!(kinds.contains(&"corrupt_blob"), "{kinds:?}");
        assert!(kinds.contains(&"manifest_invalid"), "{kinds:?}");
    }

    #[tokio::test]
    async fn an_index_stating_a_wrong_child_size_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let b: Arc<dyn Backend> = Arc::new(FsBackend::open(dir.path()).unwrap());
        let reg = Registry::new(
            b.clone(),
            crate::metadata::Metadata::open_in_dir(dir.path())
                .await
                .unwrap(),
            Limits::default(),
        );
        let repo = RepoName::parse("scrub/index").unwrap();
        let child = store_image(&reg, &repo, b"layer").await;
        // Written as an older version could: pushes refuse this now.
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": crate::oci::media::OCI_INDEX,
            "manifests": [{"mediaType": crate::oci::media::OCI_MANIFEST, "digest": child, "size": 1}],
        }))
        .unwrap();
        let d = Digest::of(&index);
        b.write_atomic(&paths::blob(&d), &index).unwrap();
        sqlx::query(
            "INSERT INTO manifests (repo, digest, media_type, size, linked_at) VALUES ($1, $2, $3, $4, 0)",
        )
        .bind(repo.to_string())
        .bind(d.to_string())
        .bind(crate::oci::media::OCI_INDEX)
        .bind(index.len() as i64)
        .execute(reg.metadata().pool())
        .await
        .unwrap();
        let r = reg.scrub(false).await.unwrap();
        let kinds: Vec<&str> = r.problems.iter().map(|p| p.kind).collect();
        assert_eq!(kinds, ["index_child_size"], "{:?}", r.problems);
    }
}

//! Scrub: re-hash every blob and check every link of the store.
//!
//! Checked: each blob hashes to its name; each tag holds a digest whose
//! manifest is linked in the repository and stored; each manifest link
//! names a stored, parseable manifest whose config and layers are stored
//! with the size its descriptors state (and linked in the repository), and
//! whose index children are linked manifests of the size stated; each
//! `_layers` link names a stored blob; each `_referrers` link names a linked manifest whose
//! `subject` is that folder, and each linked manifest with a subject has
//! its referrer link.
//!
//! With `repair`: corrupt blobs move to `_quarantine/sha256/<hex>` (a
//! later push of the same content stores it again), a missing referrer link
//! is written again, a referrer link whose manifest is gone (an invisible
//! leftover of a crash, counted but not a problem) is removed.
//! Everything else is reported only: deciding which tag or manifest to drop
//! is an operator's call.

use std::collections::HashSet;
use std::time::Instant;

use serde::Serialize;

use super::io::{blocking, hash_reader};
use super::{Registry, RegistryResult};
use crate::oci::{Descriptor, Digest, ParsedManifest, RepoName, Tag};
use crate::storage::{paths, Backend, StorageError, StorePath};

const LINK_MAX: u64 = 64 * 1024;

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
    pub layer_links_checked: u64,
    pub referrer_links_checked: u64,
    /// Referrer links whose manifest is gone (harmless leftovers of an
    /// interrupted push or delete; removed by gc or `--repair`).
    pub dangling_referrer_links: u64,
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
            layer_links_checked = self.layer_links_checked,
            referrer_links_checked = self.referrer_links_checked,
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

    fn read_link(&self, p: &StorePath) -> RegistryResult<Option<Result<Digest, String>>> {
        let Some(raw) = self.b.read_small(p, LINK_MAX)? else {
            return Ok(None);
        };
        let text = String::from_utf8_lossy(&raw).trim().to_string();
        Ok(Some(Digest::parse(&text).map_err(|_| text)))
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

    fn repo(&mut self, repo: &RepoName, blobs: &HashSet<Digest>, max: u64) -> RegistryResult<()> {
        let b = self.b;
        let linked: HashSet<Digest> = b
            .list(&paths::manifests_dir(repo))?
            .into_iter()
            .filter_map(|e| Digest::from_hex(&e.name))
            .collect();
        let layers: HashSet<Digest> = b
            .list(&paths::layers_dir(repo))?
            .into_iter()
            .filter_map(|e| Digest::from_hex(&e.name))
            .collect();

        for e in b.list(&paths::tags_dir(repo))? {
            let Ok(tag) = Tag::parse(&e.name) else {
                continue;
            };
            self.report.tags_checked += 1;
            match self.read_link(&paths::tag(repo, &tag))? {
                None => {}
                Some(Err(text)) => self.problem(
                    "tag_unreadable",
                    Some(repo),
                    &tag,
                    format!("holds {text:?}, not a digest"),
                    false,
                ),
                Some(Ok(d)) if !linked.contains(&d) || !blobs.contains(&d) => self.problem(
                    "tag_dangling",
                    Some(repo),
                    &tag,
                    format!("points to {d}, which is not a stored manifest of the repository"),
                    false,
                ),
                Some(Ok(_)) => {}
            }
        }

        for d in &layers {
            self.report.layer_links_checked += 1;
            match self.read_link(&paths::layer_link(repo, d))? {
                Some(Ok(inner)) if &inner == d => {}
                None => continue,
                _ => self.problem(
                    "layer_link_invalid",
                    Some(repo),
                    d,
                    "the link does not hold its own digest",
                    false,
                ),
            }
            if !blobs.contains(d) {
                self.problem(
                    "layer_link_dangling",
                    Some(repo),
                    d,
                    "linked blob is not stored",
                    false,
                );
            }
        }

        let mut with_subject: Vec<(Digest, Descriptor, ParsedManifest)> = Vec::new();
        for d in &linked {
            self.report.manifests_checked += 1;
            match self.read_link(&paths::manifest_link(repo, d))? {
                Some(Ok(inner)) if &inner == d => {}
                None => continue,
                _ => self.problem(
                    "manifest_link_invalid",
                    Some(repo),
                    d,
                    "the link does not hold its own digest",
                    false,
                ),
            }
            if !blobs.contains(d) {
                self.problem(
                    "manifest_missing",
                    Some(repo),
                    d,
                    "linked manifest is not stored",
                    false,
                );
                continue;
            }
            let Some(bytes) = b.read_small(&paths::blob(d), max).ok().flatten() else {
                self.problem(
                    "manifest_unreadable",
                    Some(repo),
                    d,
                    "manifest blob cannot be read (or is over the manifest cap)",
                    false,
                );
                continue;
            };
            let m = match ParsedManifest::parse(&bytes, None) {
                Ok(m) => m,
                Err(e) => {
                    self.problem("manifest_invalid", Some(repo), d, e.to_string(), false);
                    continue;
                }
            };
            for r in m.blob_references() {
                match b.size(&paths::blob(&r.digest))? {
                    _ if !blobs.contains(&r.digest) => self.problem(
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
                        format!("references {} as {} bytes; it has {size}", r.digest, r.size),
                        false,
                    ),
                    _ if !layers.contains(&r.digest) && !linked.contains(&r.digest) => self
                        .problem(
                            "manifest_blob_unlinked",
                            Some(repo),
                            d,
                            format!(
                                "references {}, which is not linked in the repository",
                                r.digest
                            ),
                            false,
                        ),
                    _ => {}
                }
            }
            for c in &m.manifests {
                if !linked.contains(&c.digest) {
                    self.problem(
                        "index_child_missing",
                        Some(repo),
                        d,
                        format!(
                            "index child {} is not a manifest of the repository",
                            c.digest
                        ),
                        false,
                    );
                } else if let Some(size) = b.size(&paths::blob(&c.digest))? {
                    // Pushes check this since this version; an older store
                    // may hold such an index.
                    if size != c.size {
                        self.problem(
                            "index_child_size",
                            Some(repo),
                            d,
                            format!(
                                "index child {} stated as {} bytes; it has {size}",
                                c.digest, c.size
                            ),
                            false,
                        );
                    }
                }
            }
            if let Some(subject) = m.subject.clone() {
                let desc = Descriptor {
                    media_type: m.media_type.clone(),
                    digest: d.clone(),
                    size: bytes.len() as u64,
                    artifact_type: m.effective_artifact_type(),
                    annotations: (!m.annotations.is_empty()).then(|| m.annotations.clone()),
                    platform: None,
                };
                with_subject.push((subject.digest, desc, m));
            }
        }

        // Referrer links: every one must name a linked manifest with that
        // subject; every linked manifest with a subject must have one.
        let mut seen: HashSet<(Digest, Digest)> = HashSet::new();
        for e in b.list(&paths::referrers_root(repo))? {
            let Some(subject) = Digest::from_hex(&e.name) else {
                continue;
            };
            for r in b.list(&paths::referrers_dir(repo, &subject))? {
                let Some(referrer) = Digest::from_hex(&r.name) else {
                    continue;
                };
                self.report.referrer_links_checked += 1;
                let path = paths::referrer_link(repo, &subject, &referrer);
                if !linked.contains(&referrer) {
                    // Left by a crash mid-push or mid-delete: readers skip
                    // it and gc removes it; not damage.
                    self.report.dangling_referrer_links += 1;
                    if self.repair {
                        b.delete(&path)?;
                    }
                    continue;
                }
                seen.insert((subject.clone(), referrer.clone()));
                let ok = b
                    .read_small(&path, LINK_MAX)?
                    .and_then(|raw| serde_json::from_slice::<Descriptor>(&raw).ok())
                    .is_some_and(|desc| desc.digest == referrer);
                let subject_ok = with_subject
                    .iter()
                    .any(|(s, desc, _)| s == &subject && desc.digest == referrer);
                if !ok || !subject_ok {
                    self.problem(
                        "referrer_link_invalid",
                        Some(repo),
                        &referrer,
                        format!("link under {subject} does not describe a referrer of it"),
                        false,
                    );
                }
            }
        }
        for (subject, desc, _) in &with_subject {
            if seen.contains(&(subject.clone(), desc.digest.clone())) {
                continue;
            }
            let path = paths::referrer_link(repo, subject, &desc.digest);
            let repaired = self.repair
                && serde_json::to_vec(desc)
                    .ok()
                    .is_some_and(|json| b.write_atomic(&path, &json).is_ok());
            self.problem(
                "referrer_link_missing",
                Some(repo),
                &desc.digest,
                format!("manifest has subject {subject} but no referrer link"),
                repaired,
            );
        }
        Ok(())
    }
}

impl Registry {
    /// Re-hashes every blob and checks every link (see the module doc).
    /// With `repair`, run it only while no server uses the store.
    pub async fn scrub(&self, repair: bool) -> RegistryResult<ScrubReport> {
        let started = Instant::now();
        let repos = self.all_repositories().await?;
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
            reg.upload_monolithic(repo, &d, body).await.unwrap();
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
        let reg = Registry::new(b, Limits::default());
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
        reg.upload_monolithic(&repo, &layer, body).await.unwrap();
        assert!(reg.scrub(false).await.unwrap().is_clean());
    }

    #[tokio::test]
    async fn dangling_tag_and_corrupt_manifest_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let b: Arc<dyn Backend> = Arc::new(FsBackend::open(dir.path()).unwrap());
        let reg = Registry::new(b.clone(), Limits::default());
        let repo = RepoName::parse("scrub/tags").unwrap();
        let m = store_image(&reg, &repo, b"layer").await;
        let bogus = Digest::of(b"no such manifest");
        b.write_atomic(
            &paths::tag(&repo, &Tag::parse("ghost").unwrap()),
            bogus.to_string().as_bytes(),
        )
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
        let reg = Registry::new(b.clone(), Limits::default());
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
        b.write_atomic(&paths::manifest_link(&repo, &d), d.to_string().as_bytes())
            .unwrap();
        let r = reg.scrub(false).await.unwrap();
        let kinds: Vec<&str> = r.problems.iter().map(|p| p.kind).collect();
        assert_eq!(kinds, ["index_child_size"], "{:?}", r.problems);
    }
}

//! Manifests, tags, referrers and the catalog. A manifest's bytes are
//! stored in the blob store first; then one metadata transaction checks
//! its references, links it into its repository (with the media type it is
//! served with there and, for a referrer, its descriptor), records the rows
//! the domain derives from it and moves its tag. A reader that sees a tag
//! can always follow it; a crash before the commit leaves only bytes that
//! nothing references, which garbage collection sweeps.
//!
//! A deletion by digest removes the manifest's tags, link, references and
//! derived rows in one transaction. Tag writes and deletions in one
//! repository are serialized by the metadata store (see `metadata`), on
//! every replica.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::io::blocking;
use super::{Registry, RegistryError, RegistryResult};
use crate::metadata::{DerivedRow, ManifestPut, ManifestRow, PutRejected};
use crate::oci::{Descriptor, Digest, ManifestKind, ParsedManifest, Reference, RepoName, Tag};
use crate::storage::paths;

/// Derives the domain's rows (artifacts, host associations, signatures)
/// from a manifest about to be stored; they are written in its
/// transaction and deleted with it. Runs on a blocking thread: it may read
/// small blobs (a config) from the store. An `Err` refuses the manifest
/// (400 `MANIFEST_INVALID` with that reason): a manifest of one of the
/// domain's types that the domain cannot use is not stored to be ignored.
pub trait ManifestDeriver: Send + Sync {
    fn derive(&self, stored: &ManifestStored) -> Result<Vec<DerivedRow>, String>;
}

/// A manifest that is being (or was just) stored.
#[derive(Debug, Clone)]
pub struct ManifestStored {
    pub repo: RepoName,
    pub digest: Digest,
    pub size: u64,
    pub manifest: ParsedManifest,
    pub tag: Option<Tag>,
}

/// A manifest as read back.
#[derive(Debug, Clone)]
pub struct ManifestRead {
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Bytes,
}

/// One page of a sorted listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub items: Vec<String>,
    /// Set when more items follow: the `last` to ask for the next page.
    pub next_last: Option<String>,
}

/// A refused manifest transaction as the registry's error.
fn rejected(r: Result<(), PutRejected>) -> RegistryResult<()> {
    match r {
        Ok(()) => Ok(()),
        Err(PutRejected::BlobUnknown(d)) => Err(RegistryError::ManifestBlobUnknown(d)),
        Err(PutRejected::ChildUnknown(d)) => Err(RegistryError::ManifestChildUnknown(d)),
        Err(PutRejected::ChildSize {
            digest,
            stated,
            actual,
        }) => Err(crate::oci::ManifestError::Invalid(format!(
            "index entry {digest} says {stated} bytes but the manifest has {actual}"
        ))
        .into()),
    }
}

/// Repository names read per catalog query.
const CATALOG_BATCH: u32 = 500;

/// Whether an `Accept` list admits a media type (RFC 9110 §12.5.1): the
/// most specific matching range decides (`type/subtype`, then `type/*`,
/// then `*/*`), and a `q=0` range makes its types not acceptable. No list
/// admits everything.
fn accepts(accept: &[String], media_type: &str) -> bool {
    if accept.is_empty() {
        return true;
    }
    let main = media_type.split('/').next().unwrap_or(media_type);
    // (specificity, acceptable) of the most specific match so far.
    let mut best: Option<(u8, bool)> = None;
    for entry in accept {
        let mut parts = entry.split(';');
        let range = parts.next().unwrap_or("").trim();
        let specificity = if range.eq_ignore_ascii_case(media_type) {
            3
        } else if range
            .strip_suffix("/*")
            .is_some_and(|m| m.eq_ignore_ascii_case(main))
        {
            2
        } else if range == "*/*" {
            1
        } else {
            continue;
        };
        let excluded = parts.any(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            k.trim().eq_ignore_ascii_case("q") && v.trim().parse::<f32>().is_ok_and(|q| q <= 0.0)
        });
        best = match best {
            Some((s, ok)) if s > specificity => Some((s, ok)),
            Some((s, ok)) if s == specificity => Some((s, ok || !excluded)),
            _ => Some((specificity, !excluded)),
        };
    }
    best.is_some_and(|(_, ok)| ok)
}

impl Registry {
    /// Stores a manifest (`PUT /v2/<name>/manifests/<reference>`).
    pub async fn put_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        content_type: Option<&str>,
        body: Bytes,
    ) -> RegistryResult<ManifestStored> {
        // Held from the reference checks to the commit: garbage collection
        // cannot take what this manifest references (see `gc`).
        let guard = self.gc_write_guard().await;
        let (stored, put) = self
            .prepare_manifest(&guard, repo, reference.clone(), content_type, body, &[])
            .await?;
        rejected(self.meta.put_manifest(&put).await?)?;
        drop(guard);
        tracing::debug!(repo = %repo, digest = %stored.digest, "manifest stored");
        Ok(stored)
    }

    /// Stores several manifests of one repository (host associations of a
    /// create) with one transaction: all of them or, if one is refused,
    /// none. Their bytes are written up to 32 at a time first.
    pub async fn put_manifests(
        &self,
        repo: &RepoName,
        manifests: Vec<(Reference, &'static str, Bytes)>,
    ) -> RegistryResult<Vec<ManifestStored>> {
        let guard = self.gc_write_guard().await;
        let mut prepared = Vec::with_capacity(manifests.len());
        let mut pending = manifests.into_iter();
        loop {
            let mut chunk = Vec::with_capacity(32);
            for (reference, ct, body) in pending.by_ref().take(32) {
                chunk.push(self.prepare_manifest(&guard, repo, reference, Some(ct), body, &[]));
            }
            if chunk.is_empty() {
                break;
            }
            prepared.extend(futures_util::future::join_all(chunk).await);
        }
        let mut stored = Vec::with_capacity(prepared.len());
        let mut puts = Vec::with_capacity(prepared.len());
        for p in prepared {
            let (s, put) = p?;
            stored.push(s);
            puts.push(put);
        }
        rejected(self.meta.put_manifests(repo, &puts).await?)?;
        drop(guard);
        Ok(stored)
    }

    /// A manifest PUT that also links `links` into `repo` in its one
    /// transaction: blobs stored by [`Registry::store_unlinked`] and
    /// pinned (`pin_for_gc`) by the caller until this returns.
    pub async fn put_manifest_linking(
        &self,
        repo: &RepoName,
        reference: &Reference,
        content_type: Option<&str>,
        body: Bytes,
        links: &[Digest],
    ) -> RegistryResult<ManifestStored> {
        let guard = self.gc_write_guard().await;
        for d in links {
            guard.note(d);
        }
        let (stored, put) = self
            .prepare_manifest(&guard, repo, reference.clone(), content_type, body, links)
            .await?;
        rejected(self.meta.put_manifests_linking(repo, links, &[put]).await?)?;
        drop(guard);
        tracing::debug!(repo = %repo, digest = %stored.digest, "manifest stored");
        Ok(stored)
    }

    /// Everything of a manifest PUT before its transaction: the checks,
    /// the bytes made durable in the blob store, the derived rows. A blob
    /// in `linking` is linked by the transaction itself: only its bytes
    /// are checked.
    async fn prepare_manifest(
        &self,
        guard: &super::gc::WriteGuard<'_>,
        repo: &RepoName,
        reference: Reference,
        content_type: Option<&str>,
        body: Bytes,
        linking: &[Digest],
    ) -> RegistryResult<(ManifestStored, ManifestPut)> {
        let size = body.len() as u64;
        if size > self.limits.max_manifest_bytes {
            return Err(RegistryError::ManifestTooLarge {
                size,
                max: self.limits.max_manifest_bytes,
            });
        }
        let manifest = ParsedManifest::parse(&body, content_type)?;
        let digest = Digest::of(&body);
        if let Reference::Digest(want) = &reference {
            if want != &digest {
                return Err(RegistryError::DigestMismatch {
                    expected: want.clone(),
                    actual: digest,
                });
            }
        }
        guard.note(&digest);
        for d in manifest
            .blob_references()
            .chain(manifest.manifests.iter())
            .chain(manifest.subject.iter())
        {
            guard.note(&d.digest);
        }
        for d in manifest.blob_references() {
            let size = if linking.contains(&d.digest) {
                let b = self.backend.clone();
                let blob = paths::blob(&d.digest);
                blocking(move || Ok(b.size(&blob)?)).await?
            } else {
                self.blob_size(repo, &d.digest).await?
            };
            match size {
                None => return Err(RegistryError::ManifestBlobUnknown(d.digest.clone())),
                Some(actual) if actual != d.size => {
                    return Err(crate::oci::ManifestError::Invalid(format!(
                        "descriptor of {} says {} bytes but the blob has {actual}",
                        d.digest, d.size
                    ))
                    .into())
                }
                Some(_) => {}
            }
        }
        let tag = match reference {
            Reference::Tag(t) => Some(t.clone()),
            Reference::Digest(_) => None,
        };
        let descriptor = match &manifest.subject {
            Some(_) => {
                let desc = Descriptor {
                    media_type: manifest.media_type.clone(),
                    digest: digest.clone(),
                    size,
                    artifact_type: manifest.effective_artifact_type(),
                    annotations: (!manifest.annotations.is_empty())
                        .then(|| manifest.annotations.clone()),
                    platform: None,
                };
                Some(
                    serde_json::to_string(&desc)
                        .map_err(|e| RegistryError::Internal(e.to_string()))?,
                )
            }
            None => None,
        };
        let stored = ManifestStored {
            repo: repo.clone(),
            digest: digest.clone(),
            size,
            manifest,
            tag,
        };
        // The bytes are durable before the transaction that makes them
        // visible; the derived rows are computed from them beside it.
        let b = self.backend.clone();
        let derivers = self.derivers();
        let (stored, derived) = blocking(move || {
            let blob = paths::blob(&stored.digest);
            if b.size(&blob)? != Some(body.len() as u64) {
                b.write_atomic(&blob, &body)?;
            }
            let mut derived: Vec<DerivedRow> = Vec::new();
            for d in derivers.iter() {
                derived.extend(d.derive(&stored).map_err(|reason| {
                    RegistryError::Manifest(crate::oci::ManifestError::Invalid(reason))
                })?);
            }
            Ok((stored, derived))
        })
        .await?;
        let m = &stored.manifest;
        let put = ManifestPut {
            repo: repo.clone(),
            digest: digest.clone(),
            media_type: m.media_type.clone(),
            size,
            subject: m.subject.as_ref().map(|s| s.digest.clone()),
            artifact_type: descriptor.as_ref().and(m.effective_artifact_type()),
            descriptor,
            blobs: m.blob_references().map(|d| d.digest.clone()).collect(),
            children: match m.kind {
                ManifestKind::Index => m
                    .manifests
                    .iter()
                    .map(|c| (c.digest.clone(), c.size))
                    .collect(),
                ManifestKind::Image => Vec::new(),
            },
            tag: stored.tag.clone(),
            derived,
        };
        Ok((stored, put))
    }

    /// Resolves a reference to the manifest digest it names in `repo`.
    pub async fn resolve(&self, repo: &RepoName, reference: &Reference) -> RegistryResult<Digest> {
        self.resolve_row(repo, reference)
            .await?
            .map(|row| row.digest)
            .ok_or_else(|| RegistryError::ManifestUnknown(reference.to_string()))
    }

    /// The manifest row a reference names in `repo`, through the
    /// resolution cache where there is one.
    async fn resolve_row(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> RegistryResult<Option<ManifestRow>> {
        let Some(cache) = &self.resolve_cache else {
            return Ok(self.meta.resolve(repo, reference).await?);
        };
        match cache.get(self.meta.changes(), repo, reference) {
            Ok(hit) => Ok(hit),
            Err(token) => {
                let row = self.meta.resolve(repo, reference).await?;
                cache.put(token, repo, reference, row.clone());
                Ok(row)
            }
        }
    }

    /// Reads a manifest (`GET/HEAD /v2/<name>/manifests/<reference>`).
    pub async fn get_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        accept: &[String],
    ) -> RegistryResult<ManifestRead> {
        let row = self
            .resolve_row(repo, reference)
            .await?
            .ok_or_else(|| RegistryError::ManifestUnknown(reference.to_string()))?;
        if !accepts(accept, &row.media_type) {
            return Err(RegistryError::NotAcceptable {
                digest: row.digest,
                media_type: row.media_type,
            });
        }
        let bytes = match self.manifest_cache.get(&row.digest) {
            Some(hit) => hit,
            None => {
                let bytes = self.manifest_bytes(&row.digest).await?;
                self.manifest_cache.put(&row.digest, &bytes);
                bytes
            }
        };
        Ok(ManifestRead {
            digest: row.digest,
            media_type: row.media_type,
            bytes,
        })
    }

    /// The stored bytes of a manifest blob.
    pub async fn manifest_bytes(&self, digest: &Digest) -> RegistryResult<Bytes> {
        let b = self.backend.clone();
        let blob = paths::blob(digest);
        let max = self.limits.max_manifest_bytes;
        let bytes = blocking(move || Ok(b.read_small(&blob, max)?))
            .await?
            .map(Bytes::from)
            .ok_or_else(|| RegistryError::ManifestUnknown(digest.to_string()))?;
        // A corrupt manifest is never served as valid.
        super::scrub::verify_read(digest, &bytes)?;
        Ok(bytes)
    }

    /// Deletes a tag (reference is a tag) or a manifest with its tags, its
    /// rows and what derives from it, in one transaction (reference is a
    /// digest).
    pub async fn delete_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> RegistryResult<()> {
        match reference {
            Reference::Tag(t) => {
                if !self.meta.delete_tag(repo, t).await? {
                    return Err(RegistryError::ManifestUnknown(t.to_string()));
                }
                Ok(())
            }
            Reference::Digest(d) => {
                let deleted = self.delete_manifests(repo, std::slice::from_ref(d)).await?;
                if deleted.is_empty() {
                    return Err(RegistryError::ManifestUnknown(d.to_string()));
                }
                Ok(())
            }
        }
    }

    /// Deletes manifests by digest with their tags, references and derived
    /// rows, in one transaction; returns the digests that were linked (and
    /// are now gone), in the order given. A digest not linked into `repo`
    /// is skipped.
    pub async fn delete_manifests(
        &self,
        repo: &RepoName,
        digests: &[Digest],
    ) -> RegistryResult<Vec<Digest>> {
        if digests.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self.meta.delete_manifests(repo, digests).await?)
    }

    /// Whether a repository exists (anything was linked into it).
    pub async fn repo_exists(&self, repo: &RepoName) -> RegistryResult<bool> {
        Ok(self.meta.repo_exists(repo).await?)
    }

    /// Tags of a repository, sorted, one page.
    pub async fn list_tags(
        &self,
        repo: &RepoName,
        n: Option<usize>,
        last: Option<&str>,
    ) -> RegistryResult<Page> {
        if !self.repo_exists(repo).await? {
            return Err(RegistryError::NameUnknown(repo.clone()));
        }
        let page = self.meta.list_tags(repo, n, last).await?;
        Ok(Page {
            items: page.items,
            next_last: page.next_last,
        })
    }

    /// Tags of a repository and the digest each points to.
    pub async fn tag_map(&self, repo: &RepoName) -> RegistryResult<BTreeMap<Tag, Digest>> {
        Ok(self.meta.tag_map(repo).await?.into_iter().collect())
    }

    /// Referrers of `subject` in `repo`, optionally filtered by artifactType.
    pub async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> RegistryResult<Vec<Descriptor>> {
        Ok(self.meta.referrers(repo, subject, artifact_type).await?)
    }

    /// The repository names `visible` admits, sorted, one page
    /// (`GET /v2/_catalog`).
    pub async fn catalog(
        &self,
        n: Option<usize>,
        last: Option<&str>,
        visible: impl Fn(&RepoName) -> bool,
    ) -> RegistryResult<Page> {
        // Filtered before paginating: pages, `last` and the next page's
        // marker only ever range over names the caller may see. Read in
        // keyset batches, so a page costs what it shows (plus the hidden
        // names skipped), not the whole catalog.
        let want = n.map(|n| n.saturating_add(1));
        let mut items: Vec<String> = Vec::new();
        let mut after = last.map(str::to_string);
        'batches: loop {
            let batch = self
                .meta
                .repositories_after(after.as_deref(), CATALOG_BATCH)
                .await?;
            let len = batch.len();
            for r in batch {
                after = Some(r.to_string());
                if visible(&r) {
                    items.push(r.to_string());
                    if want.is_some_and(|w| items.len() >= w) {
                        break 'batches;
                    }
                }
            }
            if len < CATALOG_BATCH as usize {
                break;
            }
        }
        let next_last = match n {
            Some(n) if items.len() > n => {
                items.truncate(n);
                items.last().cloned()
            }
            _ => None,
        };
        Ok(Page { items, next_last })
    }

    /// Every repository, sorted.
    pub async fn all_repositories(&self) -> RegistryResult<Vec<RepoName>> {
        Ok(self.meta.repositories().await?)
    }

    /// Digests of every manifest linked into `repo`.
    pub async fn manifest_digests(&self, repo: &RepoName) -> RegistryResult<Vec<Digest>> {
        Ok(self
            .meta
            .manifests_of(repo)
            .await?
            .into_iter()
            .map(|m| m.digest)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::media;

    #[test]
    fn accept_negotiation() {
        assert!(accepts(&[], media::OCI_INDEX));
        assert!(accepts(&["*/*".into()], media::OCI_INDEX));
        assert!(!accepts(&[media::OCI_MANIFEST.into()], media::OCI_INDEX));
        assert!(accepts(
            &[format!("{}; q=0.5", media::OCI_INDEX)],
            media::OCI_INDEX
        ));
        assert!(accepts(&["application/*".into()], media::OCI_INDEX));
        // q=0: not acceptable, whatever else is listed less specifically.
        for zero in ["q=0", "q=0.0", "Q=0.000", " q = 0 "] {
            let excluded = format!("{};{zero}", media::OCI_INDEX);
            assert!(
                !accepts(std::slice::from_ref(&excluded), media::OCI_INDEX),
                "{zero}"
            );
            assert!(
                !accepts(&[excluded.clone(), "*/*".into()], media::OCI_INDEX),
                "{zero}"
            );
            assert!(accepts(&[excluded, "*/*".into()], media::OCI_MANIFEST));
        }
        assert!(!accepts(&["*/*;q=0".into()], media::OCI_INDEX));
        assert!(accepts(
            &["*/*;q=0".into(), format!("{};q=0.1", media::OCI_INDEX)],
            media::OCI_INDEX
        ));
        assert!(!accepts(
            &["application/*;q=0".into(), "*/*".into()],
            media::OCI_INDEX
        ));
    }
}

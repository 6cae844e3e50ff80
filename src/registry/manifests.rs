//! Manifests, tags, referrers and the catalog. A manifest is stored as a
//! blob, then (if it has a `subject`) linked as a referrer, then (if its
//! body has no `mediaType`) its pushed Content-Type is recorded, then it is
//! linked into its repository, then tagged: a reader that sees a tag can
//! always follow it, and a linked manifest always has its referrer link and
//! media type. Deletion runs the other way (tags, repository link, media
//! type, referrer link). A crash in between leaves at most a referrer link
//! or media type record without its manifest, which readers skip and
//! garbage collection removes.
//!
//! Tag writes and deletions by digest in one repository are serialized (a
//! striped lock per repository), so a delete can never miss a tag written
//! while it runs (a tag never names an unlinked manifest) nor remove a tag
//! that was just moved to another manifest. Per repository, not per
//! digest: a tag moved from the deleted digest to another one is a write
//! under the other digest.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::io::blocking;
use super::media_types::{self, StoredType};
use super::{Registry, RegistryError, RegistryResult};
use crate::oci::{Descriptor, Digest, ManifestKind, ParsedManifest, Reference, RepoName, Tag};
use crate::storage::{paths, Backend, Entry, StorePath};

const LINK_MAX: u64 = 64 * 1024;

/// Told about every manifest stored or deleted, after the store changed.
pub trait ManifestListener: Send + Sync {
    fn manifest_stored(&self, event: &ManifestStored);
    fn manifest_deleted(&self, repo: &RepoName, digest: &Digest, manifest: Option<&ParsedManifest>);
}

/// A manifest that was just stored.
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

fn paginate(mut all: Vec<String>, n: Option<usize>, last: Option<&str>) -> Page {
    all.sort();
    all.dedup();
    let start = match last {
        Some(l) => all.partition_point(|x| x.as_str() <= l),
        None => 0,
    };
    let rest = all.get(start..).unwrap_or_default();
    match n {
        Some(n) if rest.len() > n => {
            let items: Vec<String> = rest.iter().take(n).cloned().collect();
            let next_last = items.last().cloned();
            Page { items, next_last }
        }
        _ => Page {
            items: rest.to_vec(),
            next_last: None,
        },
    }
}

fn read_digest_file(b: &dyn Backend, p: &StorePath) -> RegistryResult<Option<Digest>> {
    let Some(raw) = b.read_small(p, LINK_MAX)? else {
        return Ok(None);
    };
    let text = String::from_utf8_lossy(&raw);
    // A link that does not parse is damage scrub reports; readers treat it
    // as absent rather than failing every request.
    Ok(Digest::parse(text.trim()).ok())
}

/// Resolves a tag or digest to a manifest digest linked into `repo`.
fn resolve_blocking(
    b: &dyn Backend,
    repo: &RepoName,
    reference: &Reference,
) -> RegistryResult<Option<Digest>> {
    let digest = match reference {
        Reference::Digest(d) => d.clone(),
        Reference::Tag(t) => match read_digest_file(b, &paths::tag(repo, t))? {
            Some(d) => d,
            None => return Ok(None),
        },
    };
    Ok(b.size(&paths::manifest_link(repo, &digest))?
        .map(|_| digest))
}

/// The store side of [`Registry::delete_manifests`]: the linked manifests
/// among `wanted` (each with its parsed body, when it still reads and
/// verifies), after their tags, links and records are durably gone.
fn delete_manifests_blocking(
    b: &dyn Backend,
    repo: &RepoName,
    wanted: &[Digest],
    max_manifest_bytes: u64,
) -> RegistryResult<Vec<(Digest, Option<ParsedManifest>)>> {
    let mut linked: Vec<(Digest, Option<ParsedManifest>)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for d in wanted {
        if !seen.insert(d) || b.size(&paths::manifest_link(repo, d))?.is_none() {
            continue;
        }
        // A body that is missing or damaged is no reason to keep the link;
        // only its referrer link cannot be found then (scrub and gc see it).
        let parsed = match b.read_small(&paths::blob(d), max_manifest_bytes) {
            Ok(Some(bytes)) if super::scrub::verify_read(d, &bytes).is_ok() => {
                ParsedManifest::parse(&bytes, None).ok()
            }
            _ => None,
        };
        linked.push((d.clone(), parsed));
    }
    if linked.is_empty() {
        return Ok(linked);
    }
    let gone: std::collections::HashSet<&Digest> = linked.iter().map(|(d, _)| d).collect();
    // Tags first: a tag must never point at a missing manifest.
    let mut tags = Vec::new();
    for e in b.list(&paths::tags_dir(repo))? {
        let Ok(tag) = Tag::parse(&e.name) else {
            continue;
        };
        let tp = paths::tag(repo, &tag);
        if read_digest_file(b, &tp)?.is_some_and(|d| gone.contains(&d)) {
            tags.push(tp);
        }
    }
    b.delete_many(&tags)?;
    let links: Vec<StorePath> = linked
        .iter()
        .map(|(d, _)| paths::manifest_link(repo, d))
        .collect();
    b.delete_many(&links)?;
    let mut records = Vec::with_capacity(linked.len() * 2);
    for (d, parsed) in &linked {
        records.push(paths::media_type_record(repo, d));
        if let Some(subject) = parsed.as_ref().and_then(|m| m.subject.as_ref()) {
            records.push(paths::referrer_link(repo, &subject.digest, d));
        }
    }
    b.delete_many(&records)?;
    Ok(linked)
}

/// Checks that every child of an index is a manifest linked into `repo`
/// whose stored size is the one its descriptor states.
fn check_index_children(
    b: &dyn Backend,
    repo: &RepoName,
    children: &[Descriptor],
) -> RegistryResult<()> {
    for child in children {
        let linked = b
            .size(&paths::manifest_link(repo, &child.digest))?
            .is_some();
        let stored = b.size(&paths::blob(&child.digest))?;
        match stored {
            Some(actual) if linked => {
                if actual != child.size {
                    return Err(crate::oci::ManifestError::Invalid(format!(
                        "index entry {} says {} bytes but the manifest has {actual}",
                        child.digest, child.size
                    ))
                    .into());
                }
            }
            _ => return Err(RegistryError::ManifestChildUnknown(child.digest.clone())),
        }
    }
    Ok(())
}

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
        let size = body.len() as u64;
        if size > self.limits.max_manifest_bytes {
            return Err(RegistryError::ManifestTooLarge {
                size,
                max: self.limits.max_manifest_bytes,
            });
        }
        let manifest = ParsedManifest::parse(&body, content_type)?;
        let digest = Digest::of(&body);
        if let Reference::Digest(want) = reference {
            if want != &digest {
                return Err(RegistryError::DigestMismatch {
                    expected: want.clone(),
                    actual: digest,
                });
            }
        }
        // Held from the reference checks to the last link: garbage
        // collection cannot take what this manifest references (see `gc`).
        let guard = self.gc_write_guard().await;
        guard.note(&digest);
        for d in manifest
            .blob_references()
            .chain(manifest.manifests.iter())
            .chain(manifest.subject.iter())
        {
            guard.note(&d.digest);
        }
        for d in manifest.blob_references() {
            match self.blob_size(repo, &d.digest).await? {
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
        if manifest.kind == ManifestKind::Index {
            let (b, repo2, children) = (
                self.backend.clone(),
                repo.clone(),
                manifest.manifests.clone(),
            );
            blocking(move || check_index_children(&*b, &repo2, &children)).await?;
        }
        let tag = match reference {
            Reference::Tag(t) => Some(t.clone()),
            Reference::Digest(_) => None,
        };
        // A tag write holds the repository's lock to its end, so a delete
        // by digest there runs wholly before or after it (module doc).
        let repo_lock = match tag {
            Some(_) => Some(self.repo_locks.lock(repo).await),
            None => None,
        };
        let referrer_link = match &manifest.subject {
            Some(subject) => {
                let desc = Descriptor {
                    media_type: manifest.media_type.clone(),
                    digest: digest.clone(),
                    size,
                    artifact_type: manifest.effective_artifact_type(),
                    annotations: (!manifest.annotations.is_empty())
                        .then(|| manifest.annotations.clone()),
                    platform: None,
                };
                let json = serde_json::to_vec(&desc)
                    .map_err(|e| RegistryError::Internal(e.to_string()))?;
                Some((paths::referrer_link(repo, &subject.digest, &digest), json))
            }
            None => None,
        };
        let media_type_record = media_types::Record::for_put(repo, &digest, &manifest);
        let b = self.backend.clone();
        let (blob, link) = (paths::blob(&digest), paths::manifest_link(repo, &digest));
        let tag_path = tag.as_ref().map(|t| paths::tag(repo, t));
        let digest_text = digest.to_string().into_bytes();
        blocking(move || {
            if b.size(&blob)? != Some(body.len() as u64) {
                b.write_atomic(&blob, &body)?;
            }
            if let Some((path, json)) = referrer_link {
                b.write_atomic(&path, &json)?;
            }
            if let Some(record) = media_type_record {
                record.write(&*b)?;
            }
            if b.size(&link)?.is_none() {
                b.write_atomic(&link, &digest_text)?;
            }
            if let Some(tp) = tag_path {
                b.write_atomic(&tp, &digest_text)?;
            }
            Ok(())
        })
        .await?;
        drop(repo_lock);
        drop(guard);
        tracing::debug!(repo = %repo, digest = %digest, "manifest stored");
        let stored = ManifestStored {
            repo: repo.clone(),
            digest,
            size,
            manifest,
            tag,
        };
        for l in self.listeners() {
            l.manifest_stored(&stored);
        }
        Ok(stored)
    }

    /// Resolves a reference to the manifest digest it names in `repo`
    /// (one trip to the blocking pool: tag file, then repository link).
    pub async fn resolve(&self, repo: &RepoName, reference: &Reference) -> RegistryResult<Digest> {
        let b = self.backend.clone();
        let (repo2, reference2) = (repo.clone(), reference.clone());
        blocking(move || resolve_blocking(&*b, &repo2, &reference2))
            .await?
            .ok_or_else(|| RegistryError::ManifestUnknown(reference.to_string()))
    }

    /// Reads a manifest (`GET/HEAD /v2/<name>/manifests/<reference>`).
    pub async fn get_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        accept: &[String],
    ) -> RegistryResult<ManifestRead> {
        let digest = self.resolve(repo, reference).await?;
        let (stored_type, bytes) = match self.manifest_cache.get(&digest) {
            Some(hit) => hit,
            None => {
                let bytes = self.manifest_bytes(&digest).await?;
                let stored_type = StoredType::of(&bytes);
                self.manifest_cache.put(&digest, &stored_type, &bytes);
                (stored_type, bytes)
            }
        };
        let media_type = match stored_type {
            StoredType::Declared(mt) => mt,
            StoredType::Undeclared { inferred } => {
                let (b, repo2, d2) = (self.backend.clone(), repo.clone(), digest.clone());
                blocking(move || media_types::recorded(&*b, &repo2, &d2, inferred))
                    .await?
                    .unwrap_or_else(|| inferred.to_string())
            }
        };
        if !accepts(accept, &media_type) {
            return Err(RegistryError::NotAcceptable { digest, media_type });
        }
        Ok(ManifestRead {
            digest,
            media_type,
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

    /// Deletes a tag (reference is a tag) or a manifest with its tags and
    /// its referrer link (reference is a digest).
    pub async fn delete_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> RegistryResult<()> {
        match reference {
            Reference::Tag(t) => {
                let b = self.backend.clone();
                let p = paths::tag(repo, t);
                if !blocking(move || Ok(b.delete(&p)?)).await? {
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

    /// Deletes manifests by digest with their tags, media type records and
    /// referrer links, under one hold of the repository's lock and with one
    /// scan of its tags; returns the digests that were linked (and are now
    /// gone), in the order given. A digest not linked into `repo` is
    /// skipped. Each step (tags, then repository links, then the records
    /// and referrer links) is durable before the next starts, so a crash
    /// leaves no tag naming an unlinked manifest; listeners are told per
    /// digest once the store has changed.
    pub async fn delete_manifests(
        &self,
        repo: &RepoName,
        digests: &[Digest],
    ) -> RegistryResult<Vec<Digest>> {
        if digests.is_empty() {
            return Ok(Vec::new());
        }
        // No tag PUT of this repository runs until the links are gone.
        let repo_lock = self.repo_locks.lock(repo).await;
        let b = self.backend.clone();
        let (repo2, wanted) = (repo.clone(), digests.to_vec());
        let max = self.limits.max_manifest_bytes;
        let deleted =
            blocking(move || delete_manifests_blocking(&*b, &repo2, &wanted, max)).await?;
        drop(repo_lock);
        for (digest, parsed) in &deleted {
            for l in self.listeners() {
                l.manifest_deleted(repo, digest, parsed.as_ref());
            }
        }
        Ok(deleted.into_iter().map(|(d, _)| d).collect())
    }

    /// Whether a repository exists (has anything linked or tagged).
    pub async fn repo_exists(&self, repo: &RepoName) -> RegistryResult<bool> {
        let b = self.backend.clone();
        let dir = paths::repo_dir(repo);
        blocking(move || {
            Ok(b.list(&dir)?
                .iter()
                .any(|e| e.is_dir && e.name.starts_with('_')))
        })
        .await
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
        let b = self.backend.clone();
        let dir = paths::tags_dir(repo);
        let names: Vec<String> = blocking(move || {
            Ok(b.list(&dir)?
                .into_iter()
                .filter(|e| !e.is_dir && Tag::parse(&e.name).is_ok())
                .map(|e| e.name)
                .collect())
        })
        .await?;
        Ok(paginate(names, n, last))
    }

    /// Tags of a repository and the digest each points to.
    pub async fn tag_map(&self, repo: &RepoName) -> RegistryResult<BTreeMap<Tag, Digest>> {
        let b = self.backend.clone();
        let repo = repo.clone();
        blocking(move || {
            let mut out = BTreeMap::new();
            for e in b.list(&paths::tags_dir(&repo))? {
                let Ok(tag) = Tag::parse(&e.name) else {
                    continue;
                };
                if let Some(d) = read_digest_file(&*b, &paths::tag(&repo, &tag))? {
                    out.insert(tag, d);
                }
            }
            Ok(out)
        })
        .await
    }

    /// Referrers of `subject` in `repo`, optionally filtered by artifactType.
    pub async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> RegistryResult<Vec<Descriptor>> {
        let b = self.backend.clone();
        let (repo, subject) = (repo.clone(), subject.clone());
        let mut list: Vec<Descriptor> = blocking(move || {
            let mut out = Vec::new();
            for e in b.list(&paths::referrers_dir(&repo, &subject))? {
                let Some(referrer) = Digest::from_hex(&e.name) else {
                    continue;
                };
                // A link whose manifest is gone (crash mid-delete) is skipped.
                if b.size(&paths::manifest_link(&repo, &referrer))?.is_none() {
                    continue;
                }
                let Some(raw) =
                    b.read_small(&paths::referrer_link(&repo, &subject, &referrer), LINK_MAX)?
                else {
                    continue;
                };
                if let Ok(desc) = serde_json::from_slice::<Descriptor>(&raw) {
                    out.push(desc);
                }
            }
            Ok(out)
        })
        .await?;
        if let Some(at) = artifact_type {
            list.retain(|d| d.artifact_type.as_deref() == Some(at));
        }
        list.sort_by(|a, b| a.digest.cmp(&b.digest));
        Ok(list)
    }

    /// The repository names `visible` admits, sorted, one page
    /// (`GET /v2/_catalog`).
    pub async fn catalog(
        &self,
        n: Option<usize>,
        last: Option<&str>,
        visible: impl Fn(&RepoName) -> bool,
    ) -> RegistryResult<Page> {
        let names = self.all_repositories().await?;
        // Filtered before paginating: pages, `last` and the next page's
        // marker only ever range over names the caller may see.
        Ok(paginate(
            names
                .into_iter()
                .filter(|r| visible(r))
                .map(|r| r.to_string())
                .collect(),
            n,
            last,
        ))
    }

    /// Every repository in the store (walks `repositories/`).
    pub async fn all_repositories(&self) -> RegistryResult<Vec<RepoName>> {
        let b = self.backend.clone();
        blocking(move || {
            let mut out = Vec::new();
            let mut stack: Vec<Vec<String>> = vec![Vec::new()];
            while let Some(components) = stack.pop() {
                let entries: Vec<Entry> = b.list(&paths::repositories_child(&components))?;
                if !components.is_empty()
                    && entries.iter().any(|e| e.is_dir && e.name.starts_with('_'))
                {
                    if let Ok(name) = RepoName::parse(&components.join("/")) {
                        out.push(name);
                    }
                }
                for e in entries
                    .into_iter()
                    .filter(|e| e.is_dir && !e.name.starts_with('_'))
                {
                    let mut next = components.clone();
                    next.push(e.name);
                    stack.push(next);
                }
            }
            out.sort();
            Ok(out)
        })
        .await
    }

    /// Digests of every manifest linked into `repo`.
    pub async fn manifest_digests(&self, repo: &RepoName) -> RegistryResult<Vec<Digest>> {
        let b = self.backend.clone();
        let dir = paths::manifests_dir(repo);
        blocking(move || {
            Ok(b.list(&dir)?
                .into_iter()
                .filter_map(|e| Digest::from_hex(&e.name))
                .collect())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::media;

    #[test]
    fn pagination() {
        let all: Vec<String> = ["c", "a", "b", "d"].iter().map(|s| s.to_string()).collect();
        let p = paginate(all.clone(), Some(2), None);
        assert_eq!(p.items, ["a", "b"]);
        assert_eq!(p.next_last.as_deref(), Some("b"));
        let p = paginate(all.clone(), Some(2), Some("b"));
        assert_eq!(p.items, ["c", "d"]);
        assert_eq!(p.next_last, None);
        assert!(paginate(all.clone(), Some(0), None).items.is_empty());
        assert_eq!(paginate(all, None, Some("bb")).items, ["c", "d"]);
    }

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

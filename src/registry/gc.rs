//! Garbage collection: mark everything reachable, sweep the rest.
//!
//! **Mark.** Per repository: every manifest linked in `_manifests` is kept
//! (with `delete_untagged`, only those reachable from a tag through index
//! children and referrers, plus any linked less than the grace period ago;
//! the other manifests are unlinked first). A kept manifest keeps its own
//! blob, its config and layers, and its index children.
//!
//! **Sweep.** Blobs not marked and older than the grace period (by
//! modification time) are deleted, after the `_layers` links naming them.
//! `_layers` links whose blob is gone and `_referrers` links whose
//! manifest is no longer linked are removed. Upload sessions untouched for
//! the upload TTL, and temporary files of interrupted writes, are purged:
//! this version's (internal names, `.tmp-...`) and the previous version's
//! only where no client name can take their form (`storage::paths`); so a
//! repository or tag that merely looks like a temp file is never touched.
//!
//! **Safety while pushes run.** The mark reads a snapshot that is stale by
//! the time the sweep runs: a push may, meanwhile, make an unmarked blob
//! referenced (a manifest naming a blob that was uploaded long ago, or a
//! re-upload of content already stored, which is not rewritten). Two
//! mechanisms close that window:
//!
//! 1. A registry-wide read/write lock (`Coordinator::lock`). Every write
//!    that makes a blob or manifest reachable (blob commit, mount, small
//!    blob, manifest PUT, from its existence checks to its last link) holds
//!    it shared; the collector takes it exclusive once to switch itself
//!    "active", and again for each batch of deletions. While the collector
//!    is active, writers record every digest they touch or reference in a
//!    protected set; each deletion re-checks, under the exclusive lock,
//!    that its digest is not protected and (for blobs) still old enough.
//!    So a write either finished before the collector became active (and
//!    the mark saw it) or its digests are protected.
//! 2. A re-upload of an existing blob (or a mount) "touches" it, so the
//!    grace period counts from the last upload, not the first: a client
//!    that uploaded a blob has the whole grace period to push the manifest
//!    that references it, even between collections.
//!
//! A lock rather than "re-check the links before deleting": links alone do
//! not show a blob that a client has just uploaded and is about to
//! reference, and re-reading every manifest before each deletion would
//! cost a second mark. The exclusive sections are short (a batch of
//! deletions), so pushes pause for milliseconds, not for the whole mark.
//!
//! Across processes, the `gc` command takes the data folder's lock file
//! exclusively, as a running server does, so it never runs beside a
//! server; the server runs the same collector online instead.
//!
//! If any kept manifest cannot be read or parsed, the blob sweep is skipped
//! (its references are unknown) and the report says so: run `scrub`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::io::blocking;
use super::{Registry, RegistryResult};
use crate::oci::{Digest, ParsedManifest, RepoName, Tag};
use crate::storage::{paths, Backend, StorePath};

/// Deletions done per exclusive section.
const BATCH: usize = 64;
const LINK_MAX: u64 = 64 * 1024;

/// What a collection does.
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Report what would be deleted, delete nothing.
    pub dry_run: bool,
    /// Also unlink manifests no tag reaches (directly, as an index child,
    /// or as a referrer of a live manifest).
    pub delete_untagged: bool,
    /// Unreferenced blobs (and, with `delete_untagged`, untagged manifest
    /// links) younger than this are kept.
    pub grace: Duration,
    /// Upload sessions untouched this long are purged.
    pub upload_ttl: Duration,
    /// Temporary files of interrupted writes this old are removed (0 when
    /// no server can be writing).
    pub temp_min_age: Duration,
}

/// What a collection found and did (or, in a dry run, would do).
#[derive(Debug, Default, Clone, Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    pub repositories: u64,
    pub manifests_kept: u64,
    pub manifests_deleted: u64,
    pub blobs_total: u64,
    pub blobs_marked: u64,
    pub blobs_deleted: u64,
    pub bytes_freed: u64,
    /// Unreferenced blobs kept because they are younger than the grace.
    pub blobs_young: u64,
    /// Candidates kept because a push referenced them during the run.
    pub protected: u64,
    pub layer_links_removed: u64,
    pub referrer_links_removed: u64,
    pub uploads_purged: u64,
    pub temp_files_removed: u64,
    /// Kept manifests that could not be read or parsed; when non-zero the
    /// blob sweep was skipped.
    pub unreadable_manifests: u64,
    pub duration_ms: u64,
}

impl GcReport {
    /// One structured log line.
    pub fn log(&self) {
        tracing::info!(
            dry_run = self.dry_run,
            repositories = self.repositories,
            manifests_kept = self.manifests_kept,
            manifests_deleted = self.manifests_deleted,
            blobs_total = self.blobs_total,
            blobs_marked = self.blobs_marked,
            blobs_deleted = self.blobs_deleted,
            bytes_freed = self.bytes_freed,
            blobs_young = self.blobs_young,
            protected = self.protected,
            layer_links_removed = self.layer_links_removed,
            referrer_links_removed = self.referrer_links_removed,
            uploads_purged = self.uploads_purged,
            temp_files_removed = self.temp_files_removed,
            unreadable_manifests = self.unreadable_manifests,
            duration_ms = self.duration_ms,
            "garbage collection finished"
        );
        if self.unreadable_manifests > 0 {
            tracing::warn!(
                unreadable_manifests = self.unreadable_manifests,
                "blob sweep skipped: some kept manifests cannot be read; run scrub"
            );
        }
    }
}

/// Coordination between writers and the collector (see the module doc).
#[derive(Default)]
pub struct Coordinator {
    lock: tokio::sync::RwLock<()>,
    active: AtomicBool,
    protect: Mutex<HashSet<Digest>>,
    /// Digests a multi-step write holds until its manifest references them
    /// (with a count: two writes may pin one digest).
    pinned: Mutex<HashMap<Digest, usize>>,
    /// One collection at a time.
    running: tokio::sync::Mutex<()>,
}

/// Keeps digests from garbage collection until dropped (see
/// `Registry::pin_for_gc`).
pub struct GcPin<'a> {
    coordinator: &'a Coordinator,
    digests: Vec<Digest>,
}

impl Drop for GcPin<'_> {
    fn drop(&mut self) {
        if let Ok(mut p) = self.coordinator.pinned.lock() {
            for d in &self.digests {
                if let Some(n) = p.get_mut(d) {
                    *n -= 1;
                    if *n == 0 {
                        p.remove(d);
                    }
                }
            }
        }
    }
}

/// Held by a write that makes blobs or manifests reachable.
pub struct WriteGuard<'a> {
    coordinator: &'a Coordinator,
    _shared: tokio::sync::RwLockReadGuard<'a, ()>,
}

impl WriteGuard<'_> {
    /// Records that this write touches or references `digest`.
    pub fn note(&self, digest: &Digest) {
        if self.coordinator.active.load(Ordering::SeqCst) {
            if let Ok(mut p) = self.coordinator.protect.lock() {
                p.insert(digest.clone());
            }
        }
    }
}

impl Coordinator {
    /// Digests no deletion may take right now (read under the exclusive
    /// lock).
    fn protected(&self) -> HashSet<Digest> {
        let mut set = self.protect.lock().map(|p| p.clone()).unwrap_or_default();
        if let Ok(p) = self.pinned.lock() {
            set.extend(p.keys().cloned());
        }
        set
    }
}

/// Everything the mark needs from one repository.
struct RepoSnap {
    name: RepoName,
    tags: Vec<(Tag, Digest)>,
    manifests: HashSet<Digest>,
    layers: Vec<Digest>,
    /// (subject, referrer)
    referrers: Vec<(Digest, Digest)>,
    /// Manifests with a media type record (`paths::media_type_record`).
    media_types: Vec<Digest>,
}

fn read_link(b: &dyn Backend, p: &StorePath) -> RegistryResult<Option<Digest>> {
    let Some(raw) = b.read_small(p, LINK_MAX)? else {
        return Ok(None);
    };
    Ok(Digest::parse(String::from_utf8_lossy(&raw).trim()).ok())
}

fn snapshot_repo(b: &dyn Backend, name: RepoName) -> RegistryResult<RepoSnap> {
    let mut tags = Vec::new();
    for e in b.list(&paths::tags_dir(&name))? {
        let Ok(tag) = Tag::parse(&e.name) else {
            continue;
        };
        if let Some(d) = read_link(b, &paths::tag(&name, &tag))? {
            tags.push((tag, d));
        }
    }
    let hexes = |dir: StorePath| -> RegistryResult<Vec<Digest>> {
        Ok(b.list(&dir)?
            .into_iter()
            .filter(|e| !e.is_dir)
            .filter_map(|e| Digest::from_hex(&e.name))
            .collect())
    };
    let manifests = hexes(paths::manifests_dir(&name))?.into_iter().collect();
    let layers = hexes(paths::layers_dir(&name))?;
    let media_types = hexes(paths::media_types_dir(&name))?;
    let mut referrers = Vec::new();
    for e in b.list(&paths::referrers_root(&name))? {
        let Some(subject) = Digest::from_hex(&e.name) else {
            continue;
        };
        for r in hexes(paths::referrers_dir(&name, &subject))? {
            referrers.push((subject.clone(), r));
        }
    }
    Ok(RepoSnap {
        name,
        tags,
        manifests,
        layers,
        referrers,
        media_types,
    })
}

/// Reads and parses a manifest blob; `None` if missing or unparseable.
fn load_manifest(b: &dyn Backend, d: &Digest, max: u64) -> Option<ParsedManifest> {
    let bytes = b.read_small(&paths::blob(d), max).ok()??;
    ParsedManifest::parse(&bytes, None).ok()
}

fn age_secs(b: &dyn Backend, p: &StorePath) -> RegistryResult<Option<u64>> {
    Ok(b.age_secs(p)?)
}

/// The result of the mark phase.
struct Marked {
    snaps: Vec<RepoSnap>,
    parsed: HashMap<Digest, Option<ParsedManifest>>,
    /// Manifests to unlink, per repository (empty without delete_untagged).
    untagged: Vec<(RepoName, Digest)>,
}

fn mark(
    b: &dyn Backend,
    repos: Vec<RepoName>,
    opts: &GcOptions,
    max_manifest: u64,
) -> RegistryResult<Marked> {
    let grace = opts.grace.as_secs();
    let mut snaps = Vec::with_capacity(repos.len());
    for r in repos {
        snaps.push(snapshot_repo(b, r)?);
    }
    let mut parsed: HashMap<Digest, Option<ParsedManifest>> = HashMap::new();
    for s in &snaps {
        for d in s.manifests.iter() {
            if !parsed.contains_key(d) {
                parsed.insert(d.clone(), load_manifest(b, d, max_manifest));
            }
        }
    }
    let mut untagged = Vec::new();
    if opts.delete_untagged {
        for s in &snaps {
            let mut by_subject: HashMap<&Digest, Vec<&Digest>> = HashMap::new();
            for (subject, r) in &s.referrers {
                by_subject.entry(subject).or_default().push(r);
            }
            // Seeds: tag targets, and manifests linked within the grace
            // period (an index's children are pushed before the index).
            let mut live: HashSet<Digest> = HashSet::new();
            let mut queue: Vec<Digest> = Vec::new();
            for (_, d) in &s.tags {
                queue.push(d.clone());
            }
            for d in &s.manifests {
                let age = age_secs(b, &paths::manifest_link(&s.name, d))?;
                if age.is_some_and(|a| a < grace) {
                    queue.push(d.clone());
                }
            }
            while let Some(d) = queue.pop() {
                if !s.manifests.contains(&d) || !live.insert(d.clone()) {
                    continue;
                }
                if let Some(Some(m)) = parsed.get(&d) {
                    queue.extend(m.manifests.iter().map(|c| c.digest.clone()));
                }
                if let Some(rs) = by_subject.get(&d) {
                    queue.extend(rs.iter().map(|r| (*r).clone()));
                }
            }
            for d in &s.manifests {
                if !live.contains(d) {
                    untagged.push((s.name.clone(), d.clone()));
                }
            }
        }
    }
    Ok(Marked {
        snaps,
        parsed,
        untagged,
    })
}

impl Registry {
    /// Takes the collector's lock shared for a write that makes blobs or
    /// manifests reachable; hold it from the existence checks to the last
    /// link written, and `note` every digest involved.
    pub(crate) async fn gc_write_guard(&self) -> WriteGuard<'_> {
        let shared = self.gc.lock.read().await;
        WriteGuard {
            coordinator: &self.gc,
            _shared: shared,
        }
    }

    /// Keeps `digests` from garbage collection while the returned guard
    /// lives: for a service that stores blobs and then, in a later step,
    /// the manifest that references them (the REST facade), so even a zero
    /// grace period cannot take them in between. Take it before storing
    /// the blobs.
    pub fn pin_for_gc(&self, digests: Vec<Digest>) -> GcPin<'_> {
        if let Ok(mut p) = self.gc.pinned.lock() {
            for d in &digests {
                *p.entry(d.clone()).or_insert(0) += 1;
            }
        }
        GcPin {
            coordinator: &self.gc,
            digests,
        }
    }

    /// Runs one garbage collection (see the module doc).
    pub async fn gc(&self, opts: &GcOptions) -> RegistryResult<GcReport> {
        let _one = self.gc.running.lock().await;
        {
            let _x = self.gc.lock.write().await;
            if let Ok(mut p) = self.gc.protect.lock() {
                p.clear();
            }
            self.gc.active.store(true, Ordering::SeqCst);
        }
        let result = self.collect(opts).await;
        {
            let _x = self.gc.lock.write().await;
            self.gc.active.store(false, Ordering::SeqCst);
            if let Ok(mut p) = self.gc.protect.lock() {
                p.clear();
            }
        }
        result
    }

    async fn collect(&self, opts: &GcOptions) -> RegistryResult<GcReport> {
        let started = Instant::now();
        let mut report = GcReport {
            dry_run: opts.dry_run,
            ..GcReport::default()
        };
        let grace = opts.grace.as_secs();
        let repos = self.all_repositories().await?;
        report.repositories = repos.len() as u64;
        let b = self.backend.clone();
        let o = opts.clone();
        let max_manifest = self.limits.max_manifest_bytes;
        let marked = Arc::new(blocking(move || mark(&*b, repos, &o, max_manifest)).await?);

        // Unlink untagged manifests, in exclusive batches.
        let mut deleted: HashSet<(RepoName, Digest)> = HashSet::new();
        for batch in marked.untagged.chunks(BATCH) {
            let batch = batch.to_vec();
            let done = if opts.dry_run {
                batch
            } else {
                let _x = self.gc.lock.write().await;
                let protected = self.gc.protected();
                let b = self.backend.clone();
                let m = marked.clone();
                let (done, skipped) = blocking(move || {
                    let mut done = Vec::new();
                    let mut skipped = 0u64;
                    for (repo, d) in batch {
                        let link = paths::manifest_link(&repo, &d);
                        let young = age_secs(&*b, &link)?.is_some_and(|a| a < grace);
                        if protected.contains(&d) || young {
                            skipped += 1;
                            continue;
                        }
                        // The repository link first (see `manifests`).
                        b.delete(&link)?;
                        b.delete(&paths::media_type_record(&repo, &d))?;
                        if let Some(Some(pm)) = m.parsed.get(&d) {
                            if let Some(subject) = &pm.subject {
                                b.delete(&paths::referrer_link(&repo, &subject.digest, &d))?;
                            }
                        }
                        done.push((repo, d));
                    }
                    Ok((done, skipped))
                })
                .await?;
                report.protected += skipped;
                done
            };
            for (repo, d) in done {
                if !opts.dry_run {
                    let pm = marked.parsed.get(&d).and_then(|p| p.as_ref());
                    for l in self.listeners() {
                        l.manifest_deleted(&repo, &d, pm);
                    }
                    tracing::debug!(repo = %repo, digest = %d, "untagged manifest deleted");
                }
                deleted.insert((repo, d));
            }
        }
        report.manifests_deleted = deleted.len() as u64;

        // Mark blobs from the kept manifests.
        let mut live: HashSet<Digest> = HashSet::new();
        let mut layer_links: HashMap<Digest, Vec<RepoName>> = HashMap::new();
        let mut kept_links: HashSet<(RepoName, Digest)> = HashSet::new();
        for s in &marked.snaps {
            for d in &s.layers {
                layer_links
                    .entry(d.clone())
                    .or_default()
                    .push(s.name.clone());
            }
            for d in &s.manifests {
                let key = (s.name.clone(), d.clone());
                if deleted.contains(&key) {
                    continue;
                }
                kept_links.insert(key);
                report.manifests_kept += 1;
                live.insert(d.clone());
                match marked.parsed.get(d) {
                    Some(Some(m)) => {
                        for r in m.blob_references() {
                            live.insert(r.digest.clone());
                        }
                        for c in &m.manifests {
                            live.insert(c.digest.clone());
                        }
                    }
                    _ => report.unreadable_manifests += 1,
                }
            }
        }
        report.blobs_marked = live.len() as u64;

        // Candidates: unmarked blobs past the grace period.
        let b = self.backend.clone();
        let live = Arc::new(live);
        let l2 = live.clone();
        let (total, young, candidates) = blocking(move || {
            let mut total = 0u64;
            let mut young = 0u64;
            let mut out = Vec::new();
            for e in b.list(&paths::blobs_dir())? {
                let Some(d) = Digest::from_hex(&e.name) else {
                    continue;
                };
                total += 1;
                if l2.contains(&d) {
                    continue;
                }
                match b.age_secs(&paths::blob(&d))? {
                    Some(a) if a >= grace => out.push(d),
                    Some(_) => young += 1,
                    None => {}
                }
            }
            Ok((total, young, out))
        })
        .await?;
        report.blobs_total = total;
        report.blobs_young = young;

        if report.unreadable_manifests == 0 {
            for batch in candidates.chunks(BATCH) {
                let batch = batch.to_vec();
                let links: Vec<Vec<RepoName>> = batch
                    .iter()
                    .map(|d| layer_links.get(d).cloned().unwrap_or_default())
                    .collect();
                let _x = if opts.dry_run {
                    None
                } else {
                    Some(self.gc.lock.write().await)
                };
                let protected = self.gc.protected();
                let b = self.backend.clone();
                let dry = opts.dry_run;
                let (n, bytes, nlinks, skipped) = blocking(move || {
                    let (mut n, mut bytes, mut nlinks, mut skipped) = (0u64, 0u64, 0u64, 0u64);
                    for (d, repos) in batch.into_iter().zip(links) {
                        let blob = paths::blob(&d);
                        // Re-check under the exclusive lock: a push may have
                        // referenced or re-uploaded it since the mark.
                        let Some(age) = age_secs(&*b, &blob)? else {
                            continue;
                        };
                        if protected.contains(&d) || age < grace {
                            skipped += 1;
                            continue;
                        }
                        let size = b.size(&blob)?.unwrap_or(0);
                        if !dry {
                            // Links first: a crash between leaves an
                            // unreferenced blob, never a dangling link.
                            for repo in &repos {
                                if b.delete(&paths::layer_link(repo, &d))? {
                                    nlinks += 1;
                                }
                            }
                            b.delete(&blob)?;
                        } else {
                            nlinks += repos.len() as u64;
                        }
                        n += 1;
                        bytes += size;
                    }
                    Ok((n, bytes, nlinks, skipped))
                })
                .await?;
                report.blobs_deleted += n;
                report.bytes_freed += bytes;
                report.layer_links_removed += nlinks;
                report.protected += skipped;
            }
        }

        // Dangling links: `_layers` whose blob is gone (not just swept),
        // `_referrers` and media type records whose manifest is no longer
        // linked.
        let swept: HashSet<Digest> = if report.unreadable_manifests == 0 {
            candidates.into_iter().collect()
        } else {
            HashSet::new()
        };
        let mut layer_checks = Vec::new();
        let mut referrer_checks = Vec::new();
        let mut media_type_checks = Vec::new();
        for s in &marked.snaps {
            for d in &s.layers {
                // Swept blobs lost their links with them.
                if !swept.contains(d) {
                    layer_checks.push(LinkCheck {
                        digest: d.clone(),
                        target: paths::blob(d),
                        link: paths::layer_link(&s.name, d),
                    });
                }
            }
            for (subject, r) in &s.referrers {
                if !kept_links.contains(&(s.name.clone(), r.clone())) {
                    referrer_checks.push(LinkCheck {
                        digest: r.clone(),
                        target: paths::manifest_link(&s.name, r),
                        link: paths::referrer_link(&s.name, subject, r),
                    });
                }
            }
            for d in &s.media_types {
                if !kept_links.contains(&(s.name.clone(), d.clone())) {
                    media_type_checks.push(LinkCheck {
                        digest: d.clone(),
                        target: paths::manifest_link(&s.name, d),
                        link: paths::media_type_record(&s.name, d),
                    });
                }
            }
        }
        report.layer_links_removed += self.remove_dangling(layer_checks, opts.dry_run).await?;
        report.referrer_links_removed +=
            self.remove_dangling(referrer_checks, opts.dry_run).await?;
        // Not reported: an invisible leftover of a crash mid-delete.
        self.remove_dangling(media_type_checks, opts.dry_run)
            .await?;

        if !opts.dry_run {
            report.uploads_purged = self.purge_uploads(opts.upload_ttl.as_secs()).await? as u64;
            let b = self.backend.clone();
            let min_age = opts.temp_min_age.as_secs();
            let (n, _) = blocking(move || Ok(b.remove_stale_temps(min_age)?)).await?;
            report.temp_files_removed = n;
        }
        report.duration_ms = started.elapsed().as_millis() as u64;
        Ok(report)
    }
}

/// A link to remove when what it points to (`target`) is gone, unless
/// `digest` is protected by a write in flight.
#[derive(Clone)]
struct LinkCheck {
    digest: Digest,
    target: StorePath,
    link: StorePath,
}

impl Registry {
    /// Removes dangling links in batches, each under the exclusive GC lock
    /// (none for a dry run, which only counts). Returns how many.
    async fn remove_dangling(&self, checks: Vec<LinkCheck>, dry_run: bool) -> RegistryResult<u64> {
        let mut removed = 0u64;
        for batch in checks.chunks(BATCH * 4) {
            let batch = batch.to_vec();
            let _exclusive = if dry_run {
                None
            } else {
                Some(self.gc.lock.write().await)
            };
            let protected = self.gc.protected();
            let b = self.backend.clone();
            removed += blocking(move || {
                let mut n = 0u64;
                for c in batch {
                    if protected.contains(&c.digest) || b.size(&c.target)?.is_some() {
                        continue;
                    }
                    if dry_run || b.delete(&c.link)? {
                        n += 1;
                    }
                }
                Ok(n)
            })
            .await?;
        }
        Ok(removed)
    }
}

/// Runs the collector every `interval` until the task is aborted; each
/// report goes to `on_report` (the metrics) after it is logged.
pub fn spawn_collector(
    registry: Arc<Registry>,
    interval: Duration,
    opts: GcOptions,
    on_report: impl Fn(&GcReport) + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match registry.gc(&opts).await {
                Ok(report) => {
                    report.log();
                    on_report(&report);
                }
                Err(e) => tracing::error!(error = %e, "garbage collection failed"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Reference;
    use crate::registry::Limits;
    use crate::storage::FsBackend;
    use bytes::Bytes;
    use serde_json::json;

    const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    const INDEX: &str = "application/vnd.oci.image.index.v1+json";

    fn setup() -> (tempfile::TempDir, Registry) {
        let dir = tempfile::tempdir().unwrap();
        let b: Arc<dyn Backend> = Arc::new(FsBackend::open(dir.path()).unwrap());
        (dir, Registry::new(b, Limits::default()))
    }

    fn opts(grace_secs: u64) -> GcOptions {
        GcOptions {
            dry_run: false,
            delete_untagged: false,
            grace: Duration::from_secs(grace_secs),
            upload_ttl: Duration::from_secs(86400),
            temp_min_age: Duration::from_secs(86400),
        }
    }

    async fn blob(reg: &Registry, repo: &RepoName, data: &[u8]) -> serde_json::Value {
        let d = Digest::of(data);
        let body =
            futures_util::stream::iter(vec![Ok::<_, std::io::Error>(Bytes::copy_from_slice(data))]);
        reg.upload_monolithic(repo, &d, body).await.unwrap();
        json!({"mediaType": "application/octet-stream", "digest": d, "size": data.len()})
    }

    async fn manifest(
        reg: &Registry,
        repo: &RepoName,
        reference: &str,
        m: serde_json::Value,
    ) -> Digest {
        let bytes = serde_json::to_vec(&m).unwrap();
        let r = Reference::parse(reference).unwrap();
        reg.put_manifest(repo, &r, None, Bytes::from(bytes))
            .await
            .unwrap()
            .digest
    }

    async fn image(reg: &Registry, repo: &RepoName, reference: &str, layer: &[u8]) -> Digest {
        let config = blob(reg, repo, b"{}").await;
        let layer = blob(reg, repo, layer).await;
        manifest(
            reg,
            repo,
            reference,
            json!({"schemaVersion": 2, "mediaType": MANIFEST, "config": config, "layers": [layer]}),
        )
        .await
    }

    fn exists(reg: &Registry, d: &Digest) -> bool {
        reg.backend().size(&paths::blob(d)).unwrap().is_some()
    }

    fn age(dir: &std::path::Path, d: &Digest, secs: u64) {
        let p = dir.join(paths::blob(d).as_str());
        let f = std::fs::File::open(p).unwrap();
        f.set_modified(std::time::SystemTime::now() - Duration::from_secs(secs))
            .unwrap();
    }

    #[tokio::test]
    async fn sweeps_only_unreferenced_blobs_past_grace() {
        let (_dir, reg) = setup();
        let repo = RepoName::parse("gc/a").unwrap();
        let kept = image(&reg, &repo, "v1", b"kept layer").await;
        let gone = image(&reg, &repo, "v2", b"gone layer!").await;
        blob(&reg, &repo, b"orphan").await;
        reg.delete_manifest(&repo, &Reference::Digest(gone.clone()))
            .await
            .unwrap();

        // A grace of an hour keeps everything.
        let r = reg.gc(&opts(3600)).await.unwrap();
        assert_eq!((r.blobs_deleted, r.blobs_young), (0, 3));

        let mut dry = opts(0);
        dry.dry_run = true;
        let r = reg.gc(&dry).await.unwrap();
        assert_eq!(r.blobs_deleted, 3);
        assert!(exists(&reg, &gone) && exists(&reg, &Digest::of(b"orphan")));

        let r = reg.gc(&opts(0)).await.unwrap();
        // The deleted manifest, its own layer, the orphan; not the shared config.
        assert_eq!(r.blobs_deleted, 3);
        assert!(r.bytes_freed > b"gone layer!orphan".len() as u64);
        assert!(!exists(&reg, &gone));
        assert!(!exists(&reg, &Digest::of(b"gone layer!")));
        assert!(!exists(&reg, &Digest::of(b"orphan")));
        assert!(exists(&reg, &kept) && exists(&reg, &Digest::of(b"kept layer")));
        assert!(exists(&reg, &Digest::of(b"{}")));
        // Their layer links went with them.
        assert_eq!(r.layer_links_removed, 2);
        let m = reg
            .get_manifest(&repo, &Reference::parse("v1").unwrap(), &[])
            .await
            .unwrap();
        assert_eq!(m.digest, kept);
        // Nothing left to do.
        let r = reg.gc(&opts(0)).await.unwrap();
        assert_eq!((r.blobs_deleted, r.bytes_freed), (0, 0));
    }

    #[tokio::test]
    async fn bytes_freed_counts_every_deleted_blob() {
        let (_dir, reg) = setup();
        let repo = RepoName::parse("gc/bytes").unwrap();
        blob(&reg, &repo, &[1u8; 1000]).await;
        blob(&reg, &repo, &[2u8; 234]).await;
        let r = reg.gc(&opts(0)).await.unwrap();
        assert_eq!((r.blobs_deleted, r.bytes_freed), (2, 1234));
    }

    #[tokio::test]
    async fn a_reupload_restarts_the_grace_period() {
        let (dir, reg) = setup();
        let repo = RepoName::parse("gc/reupload").unwrap();
        blob(&reg, &repo, b"old content").await;
        let d = Digest::of(b"old content");
        age(dir.path(), &d, 7200);
        // Uploaded again (deduplicated, not rewritten) just now...
        blob(&reg, &repo, b"old content").await;
        let r = reg.gc(&opts(3600)).await.unwrap();
        assert_eq!(r.blobs_deleted, 0);
        assert!(exists(&reg, &d));
        // ...so a manifest pushed within the grace period finds it.
        age(dir.path(), &d, 7200);
        let r = reg.gc(&opts(3600)).await.unwrap();
        assert_eq!(r.blobs_deleted, 1);
    }

    #[tokio::test]
    async fn delete_untagged_keeps_what_tags_reach() {
        let (dir, reg) = setup();
        let repo = RepoName::parse("gc/untagged").unwrap();
        let a = image(&reg, &repo, "tmp-a", b"arch a").await;
        let b2 = image(&reg, &repo, "tmp-b", b"arch b").await;
        let desc = |d: &Digest| {
            let len = reg.backend().size(&paths::blob(d)).unwrap().unwrap();
            json!({"mediaType": MANIFEST, "digest": d, "size": len})
        };
        let index = manifest(
            &reg,
            &repo,
            "v1",
            json!({"schemaVersion": 2, "mediaType": INDEX, "manifests": [desc(&a), desc(&b2)]}),
        )
        .await;
        // Children reachable only through the tagged index.
        for t in ["tmp-a", "tmp-b"] {
            reg.delete_manifest(&repo, &Reference::parse(t).unwrap())
                .await
                .unwrap();
        }
        let config = blob(&reg, &repo, b"{}").await;
        let sig_json = json!({"schemaVersion": 2, "mediaType": MANIFEST, "config": config,
                              "layers": [], "subject": desc(&index)});
        let sig_digest = Digest::of(&serde_json::to_vec(&sig_json).unwrap());
        let sig = manifest(&reg, &repo, &sig_digest.to_string(), sig_json).await;
        let loose = image(&reg, &repo, "loose", b"untagged layer").await;
        reg.delete_manifest(&repo, &Reference::parse("loose").unwrap())
            .await
            .unwrap();
        let _ = dir;

        let mut o = opts(0);
        o.delete_untagged = true;
        let r = reg.gc(&o).await.unwrap();
        assert_eq!(r.manifests_deleted, 1, "{r:?}");
        for d in [&index, &a, &b2, &sig] {
            assert!(
                reg.resolve(&repo, &Reference::Digest(d.clone()))
                    .await
                    .is_ok(),
                "{d} kept"
            );
        }
        assert!(reg
            .resolve(&repo, &Reference::Digest(loose.clone()))
            .await
            .is_err());
        assert!(!exists(&reg, &loose));
        assert!(!exists(&reg, &Digest::of(b"untagged layer")));
        let refs = reg.referrers(&repo, &index, None).await.unwrap();
        assert_eq!(refs.len(), 1);
    }

    #[tokio::test]
    async fn media_type_records_go_with_their_manifest() {
        let (dir, reg) = setup();
        let repo = RepoName::parse("gc/docker").unwrap();
        let config = blob(&reg, &repo, b"{}").await;
        let body = serde_json::to_vec(&json!({"schemaVersion": 2, "config": config, "layers": []}))
            .unwrap();
        let docker = crate::oci::media::DOCKER_MANIFEST;
        let d = reg
            .put_manifest(
                &repo,
                &Reference::parse("v1").unwrap(),
                Some(docker),
                Bytes::from(body),
            )
            .await
            .unwrap()
            .digest;
        let record = dir
            .path()
            .join(paths::media_type_record(&repo, &d).as_str());
        assert_eq!(std::fs::read(&record).unwrap(), docker.as_bytes());
        let m = reg
            .get_manifest(&repo, &Reference::Digest(d.clone()), &[])
            .await
            .unwrap();
        assert_eq!(m.media_type, docker);
        // Untagged, then collected: the record goes with the link.
        reg.delete_manifest(&repo, &Reference::parse("v1").unwrap())
            .await
            .unwrap();
        let mut o = opts(0);
        o.delete_untagged = true;
        assert_eq!(reg.gc(&o).await.unwrap().manifests_deleted, 1);
        assert!(!record.exists());
        // A record left by a crash mid-delete is removed too.
        std::fs::write(&record, docker).unwrap();
        reg.gc(&opts(0)).await.unwrap();
        assert!(!record.exists());
    }

    #[tokio::test]
    async fn unreadable_manifest_stops_the_sweep() {
        let (dir, reg) = setup();
        let repo = RepoName::parse("gc/damaged").unwrap();
        let m = image(&reg, &repo, "v1", b"layer").await;
        blob(&reg, &repo, b"orphan").await;
        std::fs::write(dir.path().join(paths::blob(&m).as_str()), b"not json").unwrap();
        let r = reg.gc(&opts(0)).await.unwrap();
        assert_eq!(r.unreadable_manifests, 1);
        assert_eq!(r.blobs_deleted, 0);
        assert!(exists(&reg, &Digest::of(b"layer")));
    }

    #[tokio::test]
    async fn stale_uploads_and_temp_files_are_purged() {
        let (dir, reg) = setup();
        let repo = RepoName::parse("gc/uploads").unwrap();
        reg.start_upload(&repo, &crate::registry::Principal::user("gc"))
            .await
            .unwrap();
        // A temp file of this version, one of the previous version, and a
        // name no writer made (kept: not known to be a temp file).
        let new = dir.path().join(paths::temp_name("crashed"));
        std::fs::write(&new, b"partial").unwrap();
        let blobs = dir.path().join(paths::blobs_dir().as_str());
        std::fs::create_dir_all(&blobs).unwrap();
        let old = blobs.join(format!(
            "{}.tmp-0123456789abcdef0123456789abcdef",
            Digest::of(b"x").hex()
        ));
        std::fs::write(&old, b"partial").unwrap();
        std::fs::write(dir.path().join("blobs.tmp-crashed"), b"?").unwrap();
        let mut o = opts(0);
        o.upload_ttl = Duration::ZERO;
        o.temp_min_age = Duration::ZERO;
        let r = reg.gc(&o).await.unwrap();
        assert_eq!((r.uploads_purged, r.temp_files_removed), (1, 2));
        assert!(!new.exists() && !old.exists());
        assert!(dir.path().join("blobs.tmp-crashed").exists());
    }
}

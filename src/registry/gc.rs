//! Garbage collection: mark everything the metadata rows reference, sweep
//! the blobs nothing references.
//!
//! **Mark.** Every manifest row is kept (with `delete_untagged`, only
//! those reachable from a tag through index children and referrers, plus
//! any linked less than the grace period ago; the other manifests are
//! deleted first, with their rows). The mark is one query: every digest a
//! manifest row names or references (`manifest_refs`: config, layers,
//! index children).
//!
//! **Sweep.** Blobs of the blob store not marked and older than the grace
//! period (file modification time; S3 `LastModified`) are deleted in
//! batches. Each batch is one exclusive section (PostgreSQL: the
//! collector's advisory lock, which every write transaction takes shared;
//! SQLite: `BEGIN IMMEDIATE` inside this process's exclusive lock): it
//! re-checks every candidate against the rows, deletes its blob links and
//! commits, then deletes the bytes (rows first: a crash in between leaves
//! bytes no row names, swept next time, never a link to missing bytes).
//! So a manifest PUT (whose transaction re-checks that its blobs
//! are linked) either committed before the batch, and the re-check keeps
//! the blob, or commits after it and is refused with `MANIFEST_BLOB_UNKNOWN`;
//! never a committed manifest naming deleted bytes. Blob links whose bytes
//! are gone, upload sessions untouched for the upload TTL and temporary
//! files of interrupted writes are purged too.
//!
//! **Writes in flight.** Bytes stored but not yet named by a committed row
//! (a blob uploaded a moment ago for a manifest not pushed yet, a REST
//! create between its blobs and its manifest) are protected by the grace
//! period on every replica. Within one process, also by
//! `Coordinator`: while the collector runs, writers record the digests
//! they touch in a protected set, and the REST facade pins its blobs
//! (`pin_for_gc`), so even a zero grace cannot take them; across replicas
//! only the grace period does (keep it well above the slowest push).
//!
//! **One collector.** The server runs it every `BPF_REGISTRY_GC_INTERVAL`;
//! with several replicas the first to take the collector lease
//! (PostgreSQL session advisory lock) runs and the others skip that round.
//! The `gc` command takes the data folder's lock exclusively, so on SQLite
//! it never runs beside a server.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::io::blocking;
use super::{Registry, RegistryResult};
use crate::metadata::gc::RepoGraph;
use crate::metadata::unix_now;
use crate::oci::{Digest, RepoName};
use crate::storage::paths;

/// Deletions done per exclusive section.
const BATCH: usize = 64;

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
    /// Repository → blob rows removed (their blob is deleted or gone).
    pub blob_links_removed: u64,
    pub uploads_purged: u64,
    pub temp_files_removed: u64,
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
            blob_links_removed = self.blob_links_removed,
            uploads_purged = self.uploads_purged,
            temp_files_removed = self.temp_files_removed,
            duration_ms = self.duration_ms,
            "garbage collection finished"
        );
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

/// Manifests of one repository no tag reaches (directly, through index
/// children, or as referrers of a reached manifest) and linked at least
/// `grace` ago.
fn untagged_of(g: &RepoGraph, now: i64, grace: i64) -> Vec<Digest> {
    let linked: HashMap<&Digest, i64> = g.manifests.iter().map(|(d, at, _)| (d, *at)).collect();
    let mut referrers: HashMap<&Digest, Vec<&Digest>> = HashMap::new();
    for (d, _, subject) in &g.manifests {
        if let Some(s) = subject {
            referrers.entry(s).or_default().push(d);
        }
    }
    let mut children: HashMap<&Digest, Vec<&Digest>> = HashMap::new();
    for (m, t) in &g.refs {
        if linked.contains_key(t) {
            children.entry(m).or_default().push(t);
        }
    }
    // Seeds: tag targets, and manifests linked within the grace period
    // (an index's children are pushed before the index).
    let mut queue: Vec<&Digest> = g.tagged.iter().collect();
    queue.extend(
        g.manifests
            .iter()
            .filter(|(_, at, _)| now.saturating_sub(*at) < grace)
            .map(|(d, _, _)| d),
    );
    let mut live: HashSet<&Digest> = HashSet::new();
    while let Some(d) = queue.pop() {
        if !linked.contains_key(d) || !live.insert(d) {
            continue;
        }
        queue.extend(children.get(d).into_iter().flatten().copied());
        queue.extend(referrers.get(d).into_iter().flatten().copied());
    }
    g.manifests
        .iter()
        .map(|(d, _, _)| d)
        .filter(|d| !live.contains(d))
        .cloned()
        .collect()
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
        // One collector at a time across replicas; the others skip.
        let Some(_lease) = self.meta.collector_lease().await? else {
            tracing::info!("garbage collection skipped: another replica is collecting");
            return Ok(report);
        };
        let grace = opts.grace.as_secs();
        let grace_i = i64::try_from(grace).unwrap_or(i64::MAX);
        let repos = self.all_repositories().await?;
        report.repositories = repos.len() as u64;

        if opts.delete_untagged {
            for repo in &repos {
                let graph = self.meta.repo_graph(repo).await?;
                let untagged = untagged_of(&graph, unix_now(), grace_i);
                for batch in untagged.chunks(BATCH) {
                    if opts.dry_run {
                        report.manifests_deleted += batch.len() as u64;
                        continue;
                    }
                    let _x = self.gc.lock.write().await;
                    let protected = self.gc.protected();
                    let doomed: Vec<Digest> = batch
                        .iter()
                        .filter(|d| !protected.contains(*d))
                        .cloned()
                        .collect();
                    report.protected += (batch.len() - doomed.len()) as u64;
                    let gone = self.meta.delete_manifests(repo, &doomed).await?;
                    for d in &gone {
                        tracing::debug!(repo = %repo, digest = %d, "untagged manifest deleted");
                    }
                    report.manifests_deleted += gone.len() as u64;
                }
            }
        }

        // Mark: what the rows name and reference. The sweep re-checks each
        // candidate against the rows in its exclusive section.
        let live = self.meta.marked_digests().await?;
        report.blobs_marked = live.len() as u64;
        report.manifests_kept = self.meta.manifest_count().await?;
        if opts.dry_run {
            report.manifests_kept = report
                .manifests_kept
                .saturating_sub(report.manifests_deleted);
        }

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

        let links = self.meta.blob_links().await?;
        // Links per digest, counted once (not a scan of every link per
        // candidate).
        let mut links_of: HashMap<&Digest, u64> = HashMap::new();
        for (_, d) in &links {
            *links_of.entry(d).or_default() += 1;
        }
        for batch in candidates.chunks(BATCH) {
            if opts.dry_run {
                for d in batch {
                    report.blobs_deleted += 1;
                    report.blob_links_removed += links_of.get(d).copied().unwrap_or(0);
                    let b = self.backend.clone();
                    let p = paths::blob(d);
                    report.bytes_freed += blocking(move || Ok(b.size(&p)?)).await?.unwrap_or(0);
                }
                continue;
            }
            let _x = self.gc.lock.write().await;
            let protected = self.gc.protected();
            // Ages read now, under the exclusive lock: a re-upload since the
            // mark restarted the grace period.
            let b = self.backend.clone();
            let batch_owned = batch.to_vec();
            let ages: HashMap<Digest, Option<u64>> = blocking(move || {
                let mut out = HashMap::new();
                for d in batch_owned {
                    let age = b.age_secs(&paths::blob(&d))?;
                    out.insert(d, age);
                }
                Ok(out)
            })
            .await?;
            let still = |d: &Digest| {
                !protected.contains(d) && ages.get(d).copied().flatten().is_some_and(|a| a >= grace)
            };
            let b = self.backend.clone();
            let (deleted, skipped) = self
                .meta
                .sweep_blobs(batch, still, async move |doomed: Vec<Digest>| {
                    blocking(move || {
                        let mut sizes = Vec::with_capacity(doomed.len());
                        for d in &doomed {
                            sizes.push(b.size(&paths::blob(d))?.unwrap_or(0));
                        }
                        // One call for the batch: the filesystem syncs the
                        // blob folder once, S3 sends one DeleteObjects,
                        // so writers wait for one batch, not 64 fsyncs.
                        let blobs: Vec<_> = doomed.iter().map(paths::blob).collect();
                        b.delete_many(&blobs)?;
                        Ok(doomed.into_iter().zip(sizes).collect())
                    })
                    .await
                })
                .await?;
            report.protected += skipped;
            for (d, size) in &deleted {
                report.blobs_deleted += 1;
                report.bytes_freed += size;
                report.blob_links_removed += links_of.get(d).copied().unwrap_or(0);
            }
        }

        // Links whose blob is gone (lost, or swept by an older version).
        let swept: HashSet<&Digest> = candidates.iter().collect();
        let b = self.backend.clone();
        let unswept: Vec<(RepoName, Digest)> = links
            .iter()
            .filter(|(_, d)| !swept.contains(d))
            .cloned()
            .collect();
        let dangling: Vec<(RepoName, Digest)> = blocking(move || {
            let mut out = Vec::new();
            for (repo, d) in unswept {
                if b.size(&paths::blob(&d))?.is_none() {
                    out.push((repo, d));
                }
            }
            Ok(out)
        })
        .await?;
        if !dangling.is_empty() {
            if opts.dry_run {
                report.blob_links_removed += dangling.len() as u64;
            } else {
                let _x = self.gc.lock.write().await;
                let protected = self.gc.protected();
                let doomed: Vec<(RepoName, Digest)> = dangling
                    .into_iter()
                    .filter(|(_, d)| !protected.contains(d))
                    .collect();
                report.blob_links_removed += self.meta.remove_blob_links(&doomed).await?;
            }
        }

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

    async fn setup() -> (tempfile::TempDir, Registry) {
        let dir = tempfile::tempdir().unwrap();
        let b: Arc<dyn crate::storage::Backend> = Arc::new(FsBackend::open(dir.path()).unwrap());
        let meta = crate::metadata::Metadata::open_in_dir(dir.path())
            .await
            .unwrap();
        (dir, Registry::new(b, meta, Limits::default()))
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
        reg.upload_monolithic(repo, &d, None, body).await.unwrap();
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
        let (_dir, reg) = setup().await;
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
        assert_eq!(r.blob_links_removed, 2);
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
        let (_dir, reg) = setup().await;
        let repo = RepoName::parse("gc/bytes").unwrap();
        blob(&reg, &repo, &[1u8; 1000]).await;
        blob(&reg, &repo, &[2u8; 234]).await;
        let r = reg.gc(&opts(0)).await.unwrap();
        assert_eq!((r.blobs_deleted, r.bytes_freed), (2, 1234));
    }

    #[tokio::test]
    async fn a_reupload_restarts_the_grace_period() {
        let (dir, reg) = setup().await;
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
        let (dir, reg) = setup().await;
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
    async fn the_served_media_type_goes_with_its_manifest() {
        let (_dir, reg) = setup().await;
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
        let by_digest = Reference::Digest(d.clone());
        let m = reg.get_manifest(&repo, &by_digest, &[]).await.unwrap();
        assert_eq!(m.media_type, docker);
        // Untagged, then collected: the row (and its type) goes.
        reg.delete_manifest(&repo, &Reference::parse("v1").unwrap())
            .await
            .unwrap();
        let mut o = opts(0);
        o.delete_untagged = true;
        assert_eq!(reg.gc(&o).await.unwrap().manifests_deleted, 1);
        assert!(reg.get_manifest(&repo, &by_digest, &[]).await.is_err());
    }

    #[tokio::test]
    async fn damaged_manifest_bytes_do_not_free_what_it_references() {
        let (dir, reg) = setup().await;
        let repo = RepoName::parse("gc/damaged").unwrap();
        let m = image(&reg, &repo, "v1", b"layer").await;
        blob(&reg, &repo, b"orphan").await;
        // The references are rows, not a parse of the bytes: damage to the
        // bytes (scrub's business) cannot make its layers look unused.
        std::fs::write(dir.path().join(paths::blob(&m).as_str()), b"not json").unwrap();
        let r = reg.gc(&opts(0)).await.unwrap();
        assert_eq!(r.blobs_deleted, 1);
        assert!(exists(&reg, &Digest::of(b"layer")));
        assert!(exists(&reg, &Digest::of(b"{}")));
        assert!(!exists(&reg, &Digest::of(b"orphan")));
    }

    #[tokio::test]
    async fn stale_uploads_and_temp_files_are_purged() {
        let (dir, reg) = setup().await;
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

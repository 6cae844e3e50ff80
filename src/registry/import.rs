//! The first start on a data directory written by the previous version:
//! its metadata was a link tree (`repositories/<name>/_tags`, `_manifests`,
//! `_layers`, `_media_types`, `_referrers`, and `_uploads/<id>/state`).
//! The import turns it into rows through the same services a client's
//! pushes use (so the derived rows are the ones a push makes), then marks
//! the store imported.
//!
//! Resumable and idempotent: every step is an upsert, so a `kill -9` at
//! any moment and a restart redo what was not committed and finish; the
//! mark is written last. Nothing is deleted: the link tree stays on disk
//! (ignored from then on) until an operator removes it.

use std::collections::{HashMap, HashSet};

use serde::Deserialize;

use super::io::blocking;
use super::upload_table::Principal;
use super::{Registry, RegistryError, RegistryResult};
use crate::metadata::{schema, unix_now, UploadRow};
use crate::oci::{Digest, ManifestKind, ParsedManifest, Reference, RepoName, Tag};
use crate::storage::{paths, Backend, StorePath, UploadId};

/// The `meta` key recording a finished import.
const IMPORTED: &str = "link_tree_imported";
const LINK_MAX: u64 = 64 * 1024;

/// What an import did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ImportReport {
    pub repositories: usize,
    pub manifests: usize,
    pub blobs: usize,
    pub tags: usize,
    pub uploads: usize,
    /// Manifests that could not be imported (damage `scrub` reports).
    pub skipped: usize,
}

/// One repository of the link tree.
struct LegacyRepo {
    name: RepoName,
    layers: Vec<Digest>,
    /// (digest, link age in seconds, recorded media type)
    manifests: Vec<(Digest, Option<u64>, Option<String>)>,
    tags: Vec<(Tag, Digest)>,
}

#[derive(Deserialize)]
struct LegacyUploadState {
    repository: String,
    offset: u64,
    started_at: u64,
    #[serde(default)]
    owner: Option<Principal>,
}

fn read_digest(b: &dyn Backend, p: &StorePath) -> RegistryResult<Option<Digest>> {
    let Some(raw) = b.read_small(p, LINK_MAX)? else {
        return Ok(None);
    };
    Ok(Digest::parse(String::from_utf8_lossy(&raw).trim()).ok())
}

fn hexes(b: &dyn Backend, dir: &StorePath) -> RegistryResult<Vec<Digest>> {
    let mut out: Vec<Digest> = b
        .list(dir)?
        .into_iter()
        .filter(|e| !e.is_dir)
        .filter_map(|e| Digest::from_hex(&e.name))
        .collect();
    out.sort();
    Ok(out)
}

/// Every repository of the link tree with what it links (blocking).
fn read_tree(b: &dyn Backend) -> RegistryResult<Vec<LegacyRepo>> {
    let mut out = Vec::new();
    let mut stack: Vec<Vec<String>> = vec![Vec::new()];
    while let Some(components) = stack.pop() {
        let entries = b.list(&paths::repositories_child(&components))?;
        let is_repo =
            !components.is_empty() && entries.iter().any(|e| e.is_dir && e.name.starts_with('_'));
        for e in entries
            .iter()
            .filter(|e| e.is_dir && !e.name.starts_with('_'))
        {
            let mut next = components.clone();
            next.push(e.name.clone());
            stack.push(next);
        }
        if !is_repo {
            continue;
        }
        let Ok(name) = RepoName::parse(&components.join("/")) else {
            continue;
        };
        let layers = hexes(b, &paths::layers_dir(&name))?;
        let mut manifests = Vec::new();
        for d in hexes(b, &paths::manifests_dir(&name))? {
            let age = b.age_secs(&paths::manifest_link(&name, &d))?;
            let media_type = b
                .read_small(&paths::media_type_record(&name, &d), 256)?
                .map(|raw| String::from_utf8_lossy(&raw).trim().to_string());
            manifests.push((d, age, media_type));
        }
        let mut tags = Vec::new();
        for e in b.list(&paths::tags_dir(&name))? {
            let Ok(tag) = Tag::parse(&e.name) else {
                continue;
            };
            if let Some(d) = read_digest(b, &paths::tag(&name, &tag))? {
                tags.push((tag, d));
            }
        }
        tags.sort();
        out.push(LegacyRepo {
            name,
            layers,
            manifests,
            tags,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Upload sessions of the previous version (blocking).
fn read_uploads(b: &dyn Backend) -> RegistryResult<Vec<UploadRow>> {
    let mut out = Vec::new();
    for e in b.list(&paths::uploads_dir())? {
        let Some(id) = UploadId::parse(&e.name) else {
            continue;
        };
        let Some(raw) = b.read_small(&paths::upload_state(&id), LINK_MAX)? else {
            continue;
        };
        let Ok(state) = serde_json::from_slice::<LegacyUploadState>(&raw) else {
            continue;
        };
        let Ok(repo) = RepoName::parse(&state.repository) else {
            continue;
        };
        let updated = b
            .age_secs(&paths::upload_state(&id))?
            .map_or(unix_now(), |age| unix_now().saturating_sub(age as i64));
        out.push(UploadRow {
            id: id.as_str().to_string(),
            repo,
            owner: state.owner.and_then(|o| serde_json::to_string(&o).ok()),
            committed: state.offset,
            started_at: state.started_at as i64,
            updated_at: updated,
        });
    }
    Ok(out)
}

/// Imports the link tree unless this store has been imported already.
pub async fn import_link_tree(registry: &Registry) -> RegistryResult<ImportReport> {
    let meta = registry.metadata();
    if schema::meta_value(meta, IMPORTED).await?.is_some() {
        return Ok(ImportReport::default());
    }
    let b = registry.backend().clone();
    let (tree, uploads) = blocking(move || Ok((read_tree(&*b)?, read_uploads(&*b)?))).await?;
    let mut report = ImportReport::default();
    for repo in &tree {
        report.repositories += 1;
        import_repo(registry, repo, &mut report).await?;
    }
    for row in &uploads {
        meta.import_upload(row).await?;
        report.uploads += 1;
    }
    schema::set_meta_value(meta, IMPORTED, &unix_now().to_string()).await?;
    if report != ImportReport::default() {
        tracing::info!(
            repositories = report.repositories,
            manifests = report.manifests,
            blobs = report.blobs,
            tags = report.tags,
            uploads = report.uploads,
            skipped = report.skipped,
            "link tree of the previous version imported"
        );
    }
    Ok(report)
}

async fn import_repo(
    registry: &Registry,
    repo: &LegacyRepo,
    report: &mut ImportReport,
) -> RegistryResult<()> {
    let meta = registry.metadata();
    for d in &repo.layers {
        // A link whose blob is gone stays out (the old GC removed those).
        match registry.link_blob(&repo.name, d).await {
            Ok(()) => report.blobs += 1,
            Err(RegistryError::BlobUnknown(_)) => {}
            Err(e) => return Err(e),
        }
    }
    // Looked up per manifest: by digest, not by scanning the lists.
    let in_repo: HashSet<&Digest> = repo.manifests.iter().map(|(d, _, _)| d).collect();
    let mut tags_of: HashMap<&Digest, Vec<&Tag>> = HashMap::new();
    for (tag, d) in &repo.tags {
        tags_of.entry(d).or_default().push(tag);
    }
    // Children before their index: images first, then indexes until no
    // more can be imported (an index of indexes takes another round).
    let mut pending: Vec<&(Digest, Option<u64>, Option<String>)> = repo.manifests.iter().collect();
    let mut done: HashSet<Digest> = HashSet::new();
    loop {
        let mut progressed = false;
        let mut retry = Vec::new();
        for entry in pending {
            let (d, age, media_type) = entry;
            let bytes = match registry.manifest_bytes(d).await {
                Ok(bytes) => bytes,
                Err(e) => {
                    tracing::warn!(repo = %repo.name, digest = %d, error = %e, "manifest not imported");
                    report.skipped += 1;
                    continue;
                }
            };
            let Ok(parsed) = ParsedManifest::parse(&bytes, media_type.as_deref()) else {
                report.skipped += 1;
                continue;
            };
            if parsed.kind == ManifestKind::Index
                && parsed.manifests.iter().any(|c| !done.contains(&c.digest))
                && parsed.manifests.iter().any(|c| in_repo.contains(&c.digest))
            {
                retry.push(entry);
                continue;
            }
            // Its first tag with this put, the others below.
            let tags = tags_of.get(d).map(Vec::as_slice).unwrap_or_default();
            let reference = tags.first().map_or(Reference::Digest(d.clone()), |t| {
                Reference::Tag((*t).clone())
            });
            match registry
                .put_manifest(&repo.name, &reference, media_type.as_deref(), bytes.clone())
                .await
            {
                Ok(_) => {}
                Err(e @ RegistryError::Storage(_)) | Err(e @ RegistryError::Metadata(_)) => {
                    return Err(e)
                }
                Err(e) => {
                    tracing::warn!(repo = %repo.name, digest = %d, error = %e, "manifest not imported");
                    report.skipped += 1;
                    continue;
                }
            }
            for tag in tags.iter().skip(1) {
                registry
                    .put_manifest(
                        &repo.name,
                        &Reference::Tag((*tag).clone()),
                        media_type.as_deref(),
                        bytes.clone(),
                    )
                    .await?;
            }
            report.tags += tags.len();
            if let Some(age) = age {
                meta.set_linked_at(&repo.name, d, unix_now().saturating_sub(*age as i64))
                    .await?;
            }
            done.insert(d.clone());
            report.manifests += 1;
            progressed = true;
        }
        if retry.is_empty() || !progressed {
            report.skipped += retry.len();
            break;
        }
        pending = retry;
    }
    Ok(())
}

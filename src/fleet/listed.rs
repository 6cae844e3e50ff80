//! The entries of the seed's `GET /artifacts/for-host/{host_id}`: each
//! artifact's JSON, serialized once and kept per repository counter
//! (`metadata::changes`), so a request whose counters are unchanged reads
//! no artifact rows, and the body is the cached entries joined.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use crate::artifacts::{ArtifactError, ArtifactKey, ArtifactService};
use crate::oci::{Digest, RepoName};

/// Entries, and bytes of JSON, kept before the cache is emptied (bounds,
/// not targets: an entry is about 750 bytes, 100,000 of them 75 MB).
const MAX_ENTRIES: usize = 200_000;
const MAX_BYTES: usize = 256 << 20;

/// One artifact as `for-host` lists it.
#[derive(Debug)]
pub struct Listed {
    /// The listing order: repository, version, architecture, id.
    sort: (String, String, String, String),
    /// The artifact JSON, compact (what `serde_json::to_vec` writes).
    json: Vec<u8>,
}

/// Per repository, per digest: the repository counter the entry was read
/// at, and the entry (`None`: no such artifact at that counter); with the
/// entries and bytes of JSON held.
#[derive(Default)]
struct Entries {
    map: HashMap<RepoName, HashMap<Digest, Slot>>,
    len: usize,
    bytes: usize,
}

type Slot = (i64, Option<Arc<Listed>>);

fn size(e: &Option<Arc<Listed>>) -> usize {
    e.as_ref().map_or(0, |l| l.json.len())
}

#[derive(Default)]
pub struct ListedCache {
    entries: Mutex<Entries>,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ListedCache {
    /// The entries of `keys` (each with its repository's counter, read
    /// before this call), sorted in the listing order, each once; the
    /// ones missing or stale are read in one batch.
    pub async fn entries(
        &self,
        artifacts: &ArtifactService,
        keys: &[(&RepoName, &Digest, i64)],
    ) -> Result<Vec<Arc<Listed>>, ArtifactError> {
        let mut seen = HashSet::with_capacity(keys.len());
        let mut out = Vec::with_capacity(keys.len());
        let mut missing: Vec<(ArtifactKey, i64)> = Vec::new();
        {
            let cache = locked(&self.entries);
            for &(repo, digest, seq) in keys {
                if !seen.insert((repo, digest)) {
                    continue;
                }
                match cache.map.get(repo).and_then(|m| m.get(digest)) {
                    Some((s, e)) if *s == seq => out.extend(e.iter().cloned()),
                    _ => missing.push((
                        ArtifactKey {
                            repo: repo.clone(),
                            digest: digest.clone(),
                        },
                        seq,
                    )),
                }
            }
        }
        if !missing.is_empty() {
            let wanted: Vec<ArtifactKey> = missing.iter().map(|(k, _)| k.clone()).collect();
            let mut found: HashMap<(RepoName, Digest), Arc<Listed>> = HashMap::new();
            for (rec, json) in artifacts.entries_of(&wanted).await? {
                let bytes = serde_json::to_vec(&json)
                    .map_err(|e| ArtifactError::Internal(e.to_string()))?;
                let listed = Arc::new(Listed {
                    sort: (
                        rec.repo.to_string(),
                        rec.config.version.clone(),
                        rec.config.architecture.clone(),
                        rec.id.to_string(),
                    ),
                    json: bytes,
                });
                found.insert((rec.repo.clone(), rec.id.clone()), listed);
            }
            let mut cache = locked(&self.entries);
            let adding: usize = found.values().map(|l| l.json.len()).sum();
            if cache.len + missing.len() > MAX_ENTRIES || cache.bytes + adding > MAX_BYTES {
                *cache = Entries::default();
            }
            for (k, seq) in missing {
                let entry = found.remove(&(k.repo.clone(), k.digest.clone()));
                out.extend(entry.iter().cloned());
                let added = size(&entry);
                let cache = &mut *cache;
                let slot = cache.map.entry(k.repo).or_default();
                match slot.get(&k.digest) {
                    // A newer entry another request stored stays.
                    Some((s, _)) if *s > seq => {}
                    _ => {
                        cache.bytes += added;
                        match slot.insert(k.digest, (seq, entry)) {
                            Some((_, old)) => cache.bytes -= size(&old),
                            None => cache.len += 1,
                        }
                    }
                }
            }
        }
        out.sort_by(|a, b| a.sort.cmp(&b.sort));
        Ok(out)
    }
}

/// The body of `for-host`: `{"host_id":…,"artifacts":[…]}`, byte for byte
/// what `serde_json::to_vec` writes for the seed's struct.
pub fn body(host: &str, entries: &[Arc<Listed>]) -> Result<Vec<u8>, ArtifactError> {
    let len: usize = entries.iter().map(|e| e.json.len() + 1).sum();
    let mut out = Vec::with_capacity(len + host.len() + 32);
    out.extend_from_slice(b"{\"host_id\":");
    serde_json::to_writer(&mut out, host).map_err(|e| ArtifactError::Internal(e.to_string()))?;
    out.extend_from_slice(b",\"artifacts\":[");
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&e.json);
    }
    out.extend_from_slice(b"]}");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize)]
    struct ForHost<'a> {
        host_id: &'a str,
        artifacts: &'a [serde_json::Value],
    }

    fn listed(v: &serde_json::Value) -> Arc<Listed> {
        Arc::new(Listed {
            sort: Default::default(),
            json: serde_json::to_vec(v).unwrap(),
        })
    }

    #[test]
    fn the_body_is_what_serde_writes_for_the_seed_struct() {
        let a = serde_json::json!({"id": "sha256:1", "name": "x/y", "hosts": ["h\"1"], "n": null});
        let b = serde_json::json!({"id": "sha256:2", "metadata": {"k": "ü\n"}});
        for (host, arts) in [
            ("node-1", vec![]),
            ("node-\"2\"", vec![a.clone()]),
            ("h", vec![a, b]),
        ] {
            let want = serde_json::to_vec(&ForHost {
                host_id: host,
                artifacts: &arts,
            })
            .unwrap();
            let entries: Vec<Arc<Listed>> = arts.iter().map(listed).collect();
            assert_eq!(body(host, &entries).unwrap(), want);
        }
    }
}

//! What one host is assigned, read through caches that the change
//! counters (`metadata::changes`) validate: a host's facts and direct
//! associations, every selector, and each repository's versions and
//! channels. A request validates against the committed counters (one
//! query), so it sees every acknowledged write on any replica; a woken
//! long-poll waiter trusts the counters its feed delivered, so a write
//! that wakes ten thousand waiters costs one load per changed repository,
//! not one per waiter.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

use super::hosts::labels_of;
use super::requirements::Requirements;
use super::resolve::{
    normalize_arch, resolve, Assignment, Candidate, Desired, DesiredArtifact, Excluded, HostFacts,
    NameCandidates,
};
use super::selector::Selector;
use crate::metadata::changes::{host_scope, repo_of_scope, repo_scope, SELECTORS};
use crate::metadata::{DirectRow, HostRow, Metadata, MetadataResult, SelectorRow};
use crate::oci::{Digest, RepoName};

/// Entries kept per cache before it is emptied (a bound, not a target).
const MAX_ENTRIES: usize = 200_000;

/// Which counters a read validates its caches against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// The committed counters (from SQL, or from the feed where it holds
    /// them all: SQLite): what a request sees.
    Committed,
    /// The counters this process's feed delivered, where it has them: what
    /// a woken waiter sees (its wake-up came from those counters).
    Delivered,
}

/// A host as resolution sees it.
#[derive(Debug)]
pub struct HostEntry {
    /// `None`: not registered (the seed's `for-host` still works).
    pub row: Option<HostRow>,
    pub labels: BTreeMap<String, String>,
    /// The direct associations, built once per change of the host.
    pub direct: Vec<Arc<Assigned>>,
    /// What a name's resolution depends on of this host (see `Memo`).
    facts_key: String,
    /// What the selectors assign to this host (its labels match), with the
    /// selectors' counter it was matched at: a wake-up of many waiters
    /// does not match every selector against every host again.
    matched: Mutex<Option<Matched>>,
}

/// A host's selector assignments, at the selectors' counter.
type Matched = (i64, Arc<[Arc<Assigned>]>);

impl HostEntry {
    /// The assignments of `selectors` (read at counter `seq`) whose
    /// selector this host's labels match, in their order.
    fn matches(&self, seq: i64, selectors: &[LiveSelector]) -> Arc<[Arc<Assigned>]> {
        if let Some((at, m)) = locked(&self.matched).as_ref() {
            if *at == seq {
                return m.clone();
            }
        }
        let m: Arc<[Arc<Assigned>]> = selectors
            .iter()
            .filter(|s| s.selector.matches(&self.labels))
            .map(|s| s.assigned.clone())
            .collect();
        *locked(&self.matched) = Some((seq, m.clone()));
        m
    }
}

/// One assignment with the artifact that made it.
#[derive(Debug)]
pub struct Assigned {
    pub assignment: Assignment,
    pub repo: RepoName,
    pub subject: Digest,
}

impl Assigned {
    /// `None` for a row whose repository or digest no longer parses.
    fn of(repo: &str, subject: &str, via: String, channel: Option<String>) -> Option<Arc<Self>> {
        Some(Arc::new(Assigned {
            repo: RepoName::parse(repo).ok()?,
            subject: Digest::parse(subject).ok()?,
            assignment: Assignment {
                name: repo.to_string(),
                via,
                channel,
            },
        }))
    }
}

/// A stored selector that parses.
#[derive(Debug)]
pub struct LiveSelector {
    pub row: SelectorRow,
    pub selector: Selector,
    /// What it assigns to the hosts it matches.
    pub assigned: Arc<Assigned>,
}

/// Every selector, with the counter it was read at.
type Selectors = (i64, Arc<Vec<LiveSelector>>);

/// One repository's versions, loaded once per change of the repository.
type RepoCell = Arc<OnceCell<Arc<NameCandidates>>>;

/// Everything one host's answers are made of, with the counters read.
pub struct Snapshot {
    pub host: Arc<HostEntry>,
    /// Each assignment with the artifact that made it (shared with the
    /// caches: a snapshot allocates none).
    pub assignments: Vec<Arc<Assigned>>,
    /// Each assigned name's versions, with the counter they were read at.
    pub candidates: HashMap<String, (i64, Arc<NameCandidates>)>,
    /// The scopes this answer depends on, at the counters it was read at.
    pub watched: Vec<(String, i64)>,
}

pub struct FleetView {
    meta: Metadata,
    /// Resolutions ([`Memo`]): hosts alike share them, so a write that
    /// wakes every waiter resolves each name once per kind of host.
    resolved: Mutex<Memo>,
    hosts: Mutex<HashMap<String, (i64, Arc<HostEntry>)>>,
    selectors: Mutex<Option<Selectors>>,
    repos: Mutex<HashMap<String, (i64, RepoCell)>>,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl FleetView {
    pub fn new(meta: Metadata) -> Self {
        FleetView {
            meta,
            resolved: Mutex::new(Memo::default()),
            hosts: Mutex::new(HashMap::new()),
            selectors: Mutex::new(None),
            repos: Mutex::new(HashMap::new()),
        }
    }

    /// The counters of `scopes` as `fresh` says, in their order.
    async fn counters(&self, scopes: &[String], fresh: Freshness) -> MetadataResult<Vec<i64>> {
        let feed = self.meta.changes();
        let mut out = vec![0; scopes.len()];
        let mut missing = Vec::new();
        for (i, s) in scopes.iter().enumerate() {
            // Committed counters come from the feed only where it holds
            // them all (SQLite), else from SQL.
            let seq = match fresh {
                Freshness::Delivered => feed.known(s),
                Freshness::Committed => feed.committed(s),
            };
            match seq {
                Some(seq) => out[i] = seq,
                None => missing.push(i),
            }
        }
        if !missing.is_empty() {
            let wanted: Vec<String> = missing.iter().map(|i| scopes[*i].clone()).collect();
            let read = self.meta.change_seqs(&wanted).await?;
            for i in missing {
                out[i] = read.get(&scopes[i]).copied().unwrap_or(0);
            }
        }
        Ok(out)
    }

    async fn host_entry(&self, host: &str, seq: i64) -> MetadataResult<Arc<HostEntry>> {
        if let Some((s, e)) = locked(&self.hosts).get(host) {
            if *s == seq {
                return Ok(e.clone());
            }
        }
        let row = self.meta.host(host).await?;
        let direct = self
            .meta
            .host_direct(host)
            .await?
            .into_iter()
            .filter_map(|d: DirectRow| {
                let via = match &d.channel {
                    Some(c) => format!("channel:{c}"),
                    None => "direct".to_string(),
                };
                Assigned::of(&d.repo, &d.subject, via, d.channel)
            })
            .collect();
        let labels = row.as_ref().map(labels_of).unwrap_or_default();
        let facts_key = match &row {
            Some(r) => format!("{}\n{}\n{:?}", r.architecture, r.kernel_release, r.btf),
            None => String::new(),
        };
        let entry = Arc::new(HostEntry {
            row,
            labels,
            direct,
            facts_key,
            matched: Mutex::new(None),
        });
        let mut cache = locked(&self.hosts);
        if cache.len() >= MAX_ENTRIES {
            cache.clear();
        }
        // A newer entry another request stored stays.
        let keep = cache.get(host).is_some_and(|(s, _)| *s > seq);
        if !keep {
            cache.insert(host.to_string(), (seq, entry.clone()));
        }
        Ok(entry)
    }

    async fn all_selectors(&self, seq: i64) -> MetadataResult<Arc<Vec<LiveSelector>>> {
        if let Some((s, v)) = locked(&self.selectors).as_ref() {
            if *s == seq {
                return Ok(v.clone());
            }
        }
        let rows = self.meta.all_selectors().await?;
        let live: Vec<LiveSelector> = rows
            .into_iter()
            .filter_map(|row| {
                // One pushed by an OCI client with a bad annotation: ignored.
                let selector = Selector::parse(&row.selector).ok()?;
                let via = format!("selector:{}", row.digest);
                let assigned = Assigned::of(&row.repo, &row.subject, via, row.channel.clone())?;
                Some(LiveSelector {
                    row,
                    selector,
                    assigned,
                })
            })
            .collect();
        let live = Arc::new(live);
        let mut cache = locked(&self.selectors);
        if cache.as_ref().is_none_or(|(s, _)| *s <= seq) {
            *cache = Some((seq, live.clone()));
        }
        Ok(live)
    }

    async fn candidates(&self, repo: &str, seq: i64) -> MetadataResult<Arc<NameCandidates>> {
        let cell = {
            let mut cache = locked(&self.repos);
            match cache.get(repo) {
                Some((s, cell)) if *s == seq => cell.clone(),
                // An older request must not evict a newer entry.
                Some((s, _)) if *s > seq => Arc::new(OnceCell::new()),
                _ => {
                    if cache.len() >= MAX_ENTRIES {
                        cache.clear();
                    }
                    let cell: RepoCell = Arc::new(OnceCell::new());
                    cache.insert(repo.to_string(), (seq, cell.clone()));
                    cell
                }
            }
        };
        let got = cell
            .get_or_try_init(|| async { self.load_candidates(repo).await.map(Arc::new) })
            .await?;
        Ok(got.clone())
    }

    /// A repository's versions (with requirements) and channels: a
    /// channel is any tag that is not a version, mapped to the version
    /// whose tag (or whose platform manifest) it points at.
    async fn load_candidates(&self, repo: &str) -> MetadataResult<NameCandidates> {
        let rows = self.meta.versions_of(repo).await?;
        let mut versions = Vec::with_capacity(rows.len());
        for r in rows {
            let Ok(id) = Digest::parse(&r.digest) else {
                continue;
            };
            versions.push(Candidate {
                version: r.version,
                id,
                architecture: normalize_arch(&r.architecture),
                requirements: requirements_of(&r.record),
            });
        }
        let mut channels = BTreeMap::new();
        if let Ok(name) = RepoName::parse(repo) {
            let tags = self.meta.tag_map(&name).await?;
            let versions_named: std::collections::HashSet<&str> =
                versions.iter().map(|c| c.version.as_str()).collect();
            // What each digest is, by the version tag naming it (else by
            // the platform manifest it is): one pass over the tags.
            let mut version_of: HashMap<String, String> = versions
                .iter()
                .map(|c| (c.id.to_string(), c.version.clone()))
                .collect();
            for (t, d) in &tags {
                if versions_named.contains(t.as_str()) {
                    version_of.insert(d.to_string(), t.to_string());
                }
            }
            for (tag, digest) in &tags {
                if versions_named.contains(tag.as_str()) {
                    continue;
                }
                if let Some(v) = version_of.get(&digest.to_string()) {
                    channels.insert(tag.to_string(), v.clone());
                }
            }
        }
        Ok(NameCandidates { versions, channels })
    }

    /// What `host` is assigned, restricted to repositories `visible` lets
    /// the caller read.
    pub async fn snapshot(
        &self,
        host: &str,
        visible: &(dyn Fn(&RepoName) -> bool + Sync),
        fresh: Freshness,
    ) -> MetadataResult<Snapshot> {
        let mut snap = self.assigned(host, visible, fresh).await?;
        // `watched` is the host, the selectors, then each name in order.
        let mut candidates = HashMap::with_capacity(snap.watched.len());
        for (scope, seq) in &snap.watched {
            let Some(name) = repo_of_scope(scope) else {
                continue;
            };
            candidates.insert(name.to_string(), (*seq, self.candidates(name, *seq).await?));
        }
        snap.candidates = candidates;
        Ok(snap)
    }

    /// A [`Snapshot`] without the versions of the names (`candidates` is
    /// empty): what the seed's `for-host` needs.
    pub async fn assigned(
        &self,
        host: &str,
        visible: &(dyn Fn(&RepoName) -> bool + Sync),
        fresh: Freshness,
    ) -> MetadataResult<Snapshot> {
        let first = [host_scope(host), SELECTORS.to_string()];
        // The host and the selectors cached: their counters and those of
        // the names they assign in one query, kept when the first two
        // are still the cached ones (else read again, as below).
        if let Some((entry_seq, entry, selectors)) = self.cached_assignment(host) {
            let (assignments, scopes) = assignments_of(&entry, selectors.as_ref(), visible);
            let mut wanted = Vec::with_capacity(2 + scopes.len());
            wanted.extend(first.iter().cloned());
            wanted.extend(scopes.iter().cloned());
            let c = self.counters(&wanted, fresh).await?;
            let selectors_current =
                entry.row.is_none() || selectors.as_ref().is_some_and(|(seq, _)| *seq == c[1]);
            if c[0] == entry_seq && selectors_current {
                return Ok(Snapshot {
                    host: entry,
                    assignments,
                    candidates: HashMap::new(),
                    watched: wanted.into_iter().zip(c).collect(),
                });
            }
        }
        let c = self.counters(&first, fresh).await?;
        let (host_seq, sel_seq) = (c[0], c[1]);
        let entry = self.host_entry(host, host_seq).await?;
        // Only a registered host has labels to match.
        let selectors = match entry.row {
            Some(_) => Some((sel_seq, self.all_selectors(sel_seq).await?)),
            None => None,
        };
        let (assignments, scopes) = assignments_of(&entry, selectors.as_ref(), visible);
        let c2 = self.counters(&scopes, fresh).await?;
        let [host_scope_name, selectors_scope] = first;
        let mut watched = Vec::with_capacity(2 + scopes.len());
        watched.push((host_scope_name, host_seq));
        watched.push((selectors_scope, sel_seq));
        watched.extend(scopes.into_iter().zip(c2));
        Ok(Snapshot {
            host: entry,
            assignments,
            candidates: HashMap::new(),
            watched,
        })
    }

    /// The cached entry of `host` with its counter, and the cached
    /// selectors (if any), whatever their counters.
    fn cached_assignment(&self, host: &str) -> Option<(i64, Arc<HostEntry>, Option<Selectors>)> {
        let (seq, entry) = locked(&self.hosts).get(host).cloned()?;
        let selectors = locked(&self.selectors).clone();
        if entry.row.is_some() && selectors.is_none() {
            return None;
        }
        Some((seq, entry, selectors))
    }
}

/// What `entry` is assigned (its direct associations, and the subjects of
/// the `selectors` its labels match), restricted to what `visible` lets
/// the caller read; with the scopes of the names, sorted.
fn assignments_of(
    entry: &HostEntry,
    selectors: Option<&Selectors>,
    visible: &(dyn Fn(&RepoName) -> bool + Sync),
) -> (Vec<Arc<Assigned>>, Vec<String>) {
    let mut assignments: Vec<Arc<Assigned>> = entry
        .direct
        .iter()
        .filter(|a| visible(&a.repo))
        .cloned()
        .collect();
    if let (Some(_), Some((seq, list))) = (&entry.row, selectors) {
        for a in entry.matches(*seq, list).iter() {
            if visible(&a.repo) {
                assignments.push(a.clone());
            }
        }
    }
    let mut names: Vec<&str> = assignments
        .iter()
        .map(|a| a.assignment.name.as_str())
        .collect();
    names.sort_unstable();
    names.dedup();
    let scopes = names.iter().map(|n| repo_scope(n)).collect();
    (assignments, scopes)
}

impl FleetView {
    /// The desired set of a host with `facts` from a snapshot: each name
    /// resolved once per (repository counter, facts, channel) and kept,
    /// its `via` filled in for this host. A memo hit allocates nothing
    /// but the answer's two lists (a wake-up of many waiters is mostly
    /// hits).
    pub fn resolve<'s>(&self, facts: &HostFacts, snap: &'s Snapshot) -> Resolved<'s> {
        let mut assigned: Vec<&'s Assignment> =
            snap.assignments.iter().map(|a| &a.assignment).collect();
        assigned.sort_unstable_by(|a, b| a.name.cmp(&b.name).then_with(|| a.via.cmp(&b.via)));
        let mut out = Resolved {
            names: Vec::new(),
            vias: Vec::with_capacity(assigned.len()),
        };
        let mut channel_facts = String::new();
        for group in assigned.chunk_by(|a, b| a.name == b.name) {
            let Some(name) = group.first().map(|a| a.name.as_str()) else {
                continue;
            };
            let Some((seq, candidates)) = snap.candidates.get(name) else {
                continue;
            };
            let channel = group.iter().filter_map(|a| a.channel.as_deref()).min();
            let facts_key = match channel {
                Some(c) => {
                    channel_facts.clear();
                    channel_facts.push_str(&snap.host.facts_key);
                    channel_facts.push('\n');
                    channel_facts.push_str(c);
                    channel_facts.as_str()
                }
                None => snap.host.facts_key.as_str(),
            };
            let cached = locked(&self.resolved)
                .by_facts
                .get(facts_key)
                .and_then(|names| names.get(name))
                .filter(|(at, _)| at == seq)
                .map(|(_, d)| d.clone());
            let one = match cached {
                Some(d) => d,
                None => {
                    // Resolved with one assignment: `via` is this host's.
                    let probe = [Assignment {
                        name: name.to_string(),
                        via: String::new(),
                        channel: channel.map(str::to_string),
                    }];
                    let d = Arc::new(resolve(facts, &probe, &|n| {
                        (n == name).then(|| candidates.clone())
                    }));
                    self.remember(facts_key, name, *seq, &d);
                    d
                }
            };
            let from = out.vias.len();
            for a in group {
                // Sorted by `via` within the name: duplicates are adjacent.
                let last = out.vias.get(from..).and_then(<[_]>::last);
                if last != Some(&a.via.as_str()) {
                    out.vias.push(a.via.as_str());
                }
            }
            out.names.push((one, from..out.vias.len()));
        }
        out
    }

    /// Keeps the resolution of `name` for hosts of `facts_key`, at the
    /// repository counter `seq` (replacing an older one).
    fn remember(&self, facts_key: &str, name: &str, seq: i64, d: &Arc<Desired>) {
        let mut memo = locked(&self.resolved);
        if memo.entries >= MAX_ENTRIES {
            *memo = Memo::default();
        }
        let names = match memo.by_facts.get_mut(facts_key) {
            Some(names) => names,
            None => memo.by_facts.entry(facts_key.to_string()).or_default(),
        };
        let added = names.insert(name.to_string(), (seq, d.clone())).is_none();
        if added {
            memo.entries += 1;
        }
    }
}

/// Resolutions by the facts a name's resolution depends on (with the
/// channel it follows) and then by name, each at the repository counter
/// it was made at: looked up by `&str`, so a hit allocates nothing.
#[derive(Default)]
struct Memo {
    by_facts: HashMap<String, HashMap<String, (i64, Arc<Desired>)>>,
    entries: usize,
}

/// A host's desired set as shared per-name resolutions, each with this
/// host's `via` (borrowed from its snapshot): serialized without copying
/// them.
#[derive(Default)]
pub struct Resolved<'s> {
    /// Each name's resolution and the range of `vias` that are its.
    names: Vec<(Arc<Desired>, std::ops::Range<usize>)>,
    vias: Vec<&'s str>,
}

impl<'s> Resolved<'s> {
    /// The chosen artifacts (each with this host's `via`).
    pub fn artifacts(&self) -> impl Iterator<Item = (&DesiredArtifact, &[&'s str])> {
        self.names.iter().flat_map(|(d, via)| {
            let via = self.vias.get(via.clone()).unwrap_or_default();
            d.artifacts.iter().map(move |a| (a, via))
        })
    }

    /// The excluded entries.
    pub fn excluded(&self) -> impl Iterator<Item = &Excluded> {
        self.names.iter().flat_map(|(d, _)| d.excluded.iter())
    }
}

/// The requirements in an artifact row's record (`config.requirements`).
fn requirements_of(record: &str) -> Option<Requirements> {
    let v: serde_json::Value = serde_json::from_str(record).ok()?;
    let r = v.get("config")?.get("requirements")?;
    if r.is_null() {
        return None;
    }
    serde_json::from_value(r.clone()).ok()
}

//! The fleet service: registered hosts, what each should run (`desired`,
//! and the seed's `for-host` with selector matches), watching both, the
//! deployment reports agents send and the rollout of an artifact, and
//! channels with their history and rollback. HTTP-free: the REST layer
//! parses, authorizes and maps errors.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use super::hosts::{facts_of, HostBody, HostJson, HostList};
use super::selector::Selector;
use super::view::{FleetView, Freshness, Resolved, Snapshot};
use super::watch::{watch, Answer, Outcome, Parking, Watchers};
use crate::artifacts::model::ArtifactRecord;
use crate::artifacts::{ArtifactError, ArtifactKey, ArtifactService, FleetRefusal, HostId};
use crate::metadata::{unix_now, DeploymentRow, Metadata, MoveRefused};
use crate::oci::{RepoName, Tag};
use crate::registry::RegistryError;

pub use super::hosts::rfc3339;
use super::wire::{move_json, DesiredBody};
pub use super::wire::{
    ChannelBody, ChannelJson, ChannelMoveJson, DeploymentBody, DeploymentJson, DeploymentsJson,
    DesiredJson, RolloutHost, RolloutJson, SelectorJson, STATES,
};

/// Hosts per `GET /hosts` page at most (and by default 100).
pub const MAX_HOST_PAGE: usize = 1000;

/// Whether a repository may be read by the caller.
pub type Visible<'a> = &'a (dyn Fn(&RepoName) -> bool + Sync);

fn meta_err(e: crate::metadata::MetadataError) -> ArtifactError {
    ArtifactError::Registry(RegistryError::from(e))
}

fn host_not_found(host: &str) -> ArtifactError {
    ArtifactError::fleet(
        FleetRefusal::HostNotFound,
        format!("host {host} is not registered (PUT /hosts/{host} first)"),
    )
}

pub struct FleetService {
    meta: Metadata,
    artifacts: Arc<ArtifactService>,
    view: FleetView,
    /// The entries of `for-host`, per repository counter.
    listed: super::listed::ListedCache,
    watchers: Watchers,
    reports: super::reports::ReportWriter,
}

impl FleetService {
    pub fn new(artifacts: Arc<ArtifactService>, max_watchers: usize) -> Self {
        let meta = artifacts.index().metadata().clone();
        FleetService {
            view: FleetView::new(meta.clone()),
            listed: Default::default(),
            reports: super::reports::ReportWriter::start(meta.clone()),
            meta,
            artifacts,
            watchers: Watchers::new(max_watchers),
        }
    }

    /// `PUT /hosts/{host_id}`: 201 when new.
    pub async fn put_host(
        &self,
        host: &HostId,
        body: HostBody,
    ) -> Result<(HostJson, bool), ArtifactError> {
        let now = unix_now();
        let mut row = body.into_row(host, now)?;
        if let Some(old) = self.meta.host(host.as_str()).await.map_err(meta_err)? {
            row.registered_at = old.registered_at;
        }
        let created = self.meta.upsert_host(&row).await.map_err(meta_err)?;
        Ok((HostJson::from(&row), created))
    }

    /// `GET /hosts/{host_id}`.
    pub async fn host(&self, host: &HostId) -> Result<HostJson, ArtifactError> {
        match self.meta.host(host.as_str()).await.map_err(meta_err)? {
            Some(row) => Ok(HostJson::from(&row)),
            None => Err(host_not_found(host.as_str())),
        }
    }

    /// `GET /hosts`: the hosts matching `selector` that `may_read`
    /// admits, by id after `cursor` (read in batches, filtered before
    /// paging).
    pub async fn hosts(
        &self,
        selector: Option<&Selector>,
        limit: usize,
        cursor: Option<&str>,
        may_read: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<HostList, ArtifactError> {
        let limit = limit.clamp(1, MAX_HOST_PAGE);
        let mut hosts = Vec::new();
        let mut after = cursor.map(str::to_string);
        let mut more = false;
        'batches: loop {
            let rows = self
                .meta
                .hosts_after(after.as_deref(), 500)
                .await
                .map_err(meta_err)?;
            let n = rows.len();
            for row in rows {
                after = Some(row.host_id.clone());
                if !may_read(&row.host_id) {
                    continue;
                }
                if let Some(s) = selector {
                    if !s.matches(&super::hosts::labels_of(&row)) {
                        continue;
                    }
                }
                if hosts.len() == limit {
                    more = true;
                    break 'batches;
                }
                hosts.push(HostJson::from(&row));
            }
            if n < 500 {
                break;
            }
        }
        let next_cursor = if more {
            hosts.last().map(|h: &HostJson| h.host_id.clone())
        } else {
            None
        };
        Ok(HostList { hosts, next_cursor })
    }

    /// `DELETE /hosts/{host_id}`.
    pub async fn delete_host(&self, host: &HostId) -> Result<(), ArtifactError> {
        if self
            .meta
            .delete_host(host.as_str())
            .await
            .map_err(meta_err)?
        {
            Ok(())
        } else {
            Err(host_not_found(host.as_str()))
        }
    }

    fn desired_of<'s>(&self, snap: &'s Snapshot) -> Resolved<'s> {
        match snap.host.row.as_ref().map(facts_of) {
            Some(f) => self.view.resolve(&f, snap),
            None => Resolved::default(),
        }
    }

    async fn desired_answer(
        &self,
        host: &HostId,
        visible: Visible<'_>,
        fresh: Freshness,
    ) -> Result<Answer, ArtifactError> {
        let snap = self
            .view
            .snapshot(host.as_str(), visible, fresh)
            .await
            .map_err(meta_err)?;
        if snap.host.row.is_none() {
            return Err(host_not_found(host.as_str()));
        }
        let resolved = self.desired_of(&snap);
        let body = super::watch::exact_json(&DesiredBody {
            host_id: host.as_str(),
            resolved: &resolved,
        })?;
        Ok(Answer::new(body, snap.watched))
    }

    async fn for_host_answer(
        &self,
        host: &HostId,
        visible: Visible<'_>,
        fresh: Freshness,
    ) -> Result<Answer, ArtifactError> {
        // The direct associations and the selector matches (visible
        // ones), each repository watched at the counter its entries are
        // validated against: an artifact's row, hosts and signatures
        // change only with a write to its repository.
        let snap = self
            .view
            .assigned(host.as_str(), visible, fresh)
            .await
            .map_err(meta_err)?;
        let seqs: HashMap<&str, i64> = snap
            .watched
            .iter()
            .filter_map(|(s, q)| Some((crate::metadata::changes::repo_of_scope(s)?, *q)))
            .collect();
        let keys: Vec<(&RepoName, &crate::oci::Digest, i64)> = snap
            .assignments
            .iter()
            .map(|a| {
                let seq = seqs.get(a.assignment.name.as_str()).copied().unwrap_or(0);
                (&a.repo, &a.subject, seq)
            })
            .collect();
        let entries = self.listed.entries(&self.artifacts, &keys).await?;
        // The seed's JSON, unchanged.
        let body = super::listed::body(host.as_str(), &entries)?;
        Ok(Answer::new(body, snap.watched))
    }

    /// `GET /hosts/{host_id}/desired` with `If-None-Match` and `?wait=`.
    pub async fn watch_desired(
        &self,
        host: &HostId,
        visible: Visible<'_>,
        if_none_match: Option<&str>,
        wait: Option<Duration>,
        parking: Option<&Parking>,
    ) -> Result<Outcome, ArtifactError> {
        watch(
            self.meta.changes(),
            &self.watchers,
            if_none_match,
            wait,
            parking,
            |fresh| self.desired_answer(host, visible, fresh),
        )
        .await
    }

    /// `GET /artifacts/for-host/{host_id}` with `If-None-Match` and
    /// `?wait=`.
    pub async fn watch_for_host(
        &self,
        host: &HostId,
        visible: Visible<'_>,
        if_none_match: Option<&str>,
        wait: Option<Duration>,
        parking: Option<&Parking>,
    ) -> Result<Outcome, ArtifactError> {
        watch(
            self.meta.changes(),
            &self.watchers,
            if_none_match,
            wait,
            parking,
            |fresh| self.for_host_answer(host, visible, fresh),
        )
        .await
    }

    /// `PUT /hosts/{host_id}/deployments/{artifact_id}`: the host must be
    /// registered and the artifact exist (the caller resolved `copy`, the
    /// record the answer's version comes from). The host is checked in the
    /// report's write transaction (`reports`), so a report is never
    /// written for a host deleted before it commits; no other read is made
    /// per request.
    pub async fn report(
        &self,
        host: &HostId,
        copy: &ArtifactRecord,
        body: DeploymentBody,
    ) -> Result<DeploymentJson, ArtifactError> {
        let invalid = |m: String| ArtifactError::InvalidRequest(m);
        let state = body
            .state
            .ok_or_else(|| invalid("state is required".into()))?;
        if !STATES.contains(&state.as_str()) {
            return Err(invalid(format!(
                "invalid state {:?}: one of loaded, failed, unloaded",
                state.chars().take(40).collect::<String>()
            )));
        }
        let bounded = |name: &str, v: Option<String>, max: usize| match v {
            Some(s) if s.len() > max => Err(invalid(format!("{name} is over {max} bytes"))),
            v => Ok(v),
        };
        let message = bounded("message", body.message, 1024)?;
        let attach_point = bounded("attach_point", body.attach_point, 256)?;
        let row = DeploymentRow {
            host_id: host.to_string(),
            repo: copy.repo.to_string(),
            digest: copy.id.to_string(),
            state,
            message,
            attach_point,
            reported_at: unix_now(),
        };
        let mut json = DeploymentJson::from(&row);
        let written = self.reports.write(row).await.map_err(|f| {
            if f.storage_full {
                // ENOSPC: answered 507 like any full store.
                meta_err(crate::metadata::MetadataError::Sql(sqlx::Error::Io(
                    std::io::Error::from_raw_os_error(28),
                )))
            } else {
                ArtifactError::Internal(f.message)
            }
        })?;
        if written == super::reports::Written::HostNotFound {
            return Err(host_not_found(host.as_str()));
        }
        json.version = Some(copy.config.version.clone());
        Ok(json)
    }

    /// Reports as JSON, each with its artifact's version (one lookup per
    /// distinct artifact).
    async fn with_versions(
        &self,
        rows: &[&DeploymentRow],
    ) -> Result<Vec<DeploymentJson>, ArtifactError> {
        let mut versions: std::collections::HashMap<(String, String), Option<String>> =
            std::collections::HashMap::new();
        let mut out = Vec::with_capacity(rows.len());
        for d in rows {
            let k = (d.repo.clone(), d.digest.clone());
            if !versions.contains_key(&k) {
                let v = match (
                    RepoName::parse(&d.repo),
                    crate::oci::Digest::parse(&d.digest),
                ) {
                    (Ok(repo), Ok(digest)) => self
                        .artifacts
                        .record_of(&ArtifactKey { repo, digest })
                        .await?
                        .map(|r| r.config.version.clone()),
                    _ => None,
                };
                versions.insert(k.clone(), v);
            }
            let mut json = DeploymentJson::from(*d);
            json.version = versions.get(&k).cloned().flatten();
            out.push(json);
        }
        Ok(out)
    }

    /// `GET /hosts/{host_id}/deployments`.
    pub async fn deployments(
        &self,
        host: &HostId,
        visible: Visible<'_>,
    ) -> Result<DeploymentsJson, ArtifactError> {
        if self
            .meta
            .host(host.as_str())
            .await
            .map_err(meta_err)?
            .is_none()
        {
            return Err(host_not_found(host.as_str()));
        }
        let shown = |d: &&DeploymentRow| RepoName::parse(&d.repo).is_ok_and(|r| visible(&r));
        let current = self
            .meta
            .deployments_of_host(host.as_str())
            .await
            .map_err(meta_err)?;
        let history = self
            .meta
            .deployment_history(host.as_str())
            .await
            .map_err(meta_err)?;
        let current: Vec<&DeploymentRow> = current.iter().filter(shown).collect();
        let history: Vec<&DeploymentRow> = history.iter().filter(shown).collect();
        Ok(DeploymentsJson {
            host_id: host.to_string(),
            deployments: self.with_versions(&current).await?,
            history: self.with_versions(&history).await?,
        })
    }

    /// `GET /artifacts/{id}/rollout`: resolution over every registered
    /// host (read through the caches at the counters delivered here) and
    /// the reports for the artifact; the hosts listed by id after
    /// `cursor`, at most `limit`.
    /// `may_read_host` picks the hosts listed (the counts are over every
    /// host: they name none).
    pub async fn rollout(
        &self,
        key: &ArtifactKey,
        limit: usize,
        cursor: Option<&str>,
        may_read_host: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<RolloutJson, ArtifactError> {
        let id = key.digest.to_string();
        let all = |_: &RepoName| true;
        let mut desired_hosts = std::collections::BTreeSet::new();
        let mut after: Option<String> = None;
        loop {
            let rows = self
                .meta
                .hosts_after(after.as_deref(), 500)
                .await
                .map_err(meta_err)?;
            let n = rows.len();
            for row in rows {
                after = Some(row.host_id.clone());
                let snap = self
                    .view
                    .snapshot(&row.host_id, &all, Freshness::Delivered)
                    .await
                    .map_err(meta_err)?;
                if !snap
                    .assignments
                    .iter()
                    .any(|a| a.assignment.name == key.repo.as_str())
                {
                    continue;
                }
                let d = self.desired_of(&snap);
                if d.artifacts()
                    .any(|(a, _)| a.id == id && a.name == key.repo.as_str())
                {
                    desired_hosts.insert(row.host_id.clone());
                }
            }
            if n < 500 {
                break;
            }
        }
        let reports: BTreeMap<String, DeploymentRow> = self
            .meta
            .deployments_of_artifact(key.repo.as_str(), &id)
            .await
            .map_err(meta_err)?
            .into_iter()
            .map(|d| (d.host_id.clone(), d))
            .collect();
        let mut counts = [0u64; 4]; // loaded, failed, pending, unloaded
        let mut hosts = Vec::new();
        let names: std::collections::BTreeSet<&String> =
            desired_hosts.iter().chain(reports.keys()).collect();
        for h in &names {
            let desired = desired_hosts.contains(*h);
            let report = reports.get(*h);
            let state = match report.map(|r| r.state.as_str()) {
                Some("loaded") => "loaded",
                Some("failed") => "failed",
                Some("unloaded") if !desired => "unloaded",
                _ if desired => "pending",
                _ => "unloaded",
            };
            if desired || state != "pending" {
                let i = match state {
                    "loaded" => 0,
                    "failed" => 1,
                    "pending" => 2,
                    _ => 3,
                };
                counts[i] += 1;
            }
            if !may_read_host(h) {
                continue;
            }
            hosts.push(RolloutHost {
                host_id: (*h).clone(),
                desired,
                state: state.to_string(),
                reported_at: report.map(|r| rfc3339(r.reported_at)),
            });
        }
        let limit = limit.clamp(1, MAX_HOST_PAGE);
        let start: Vec<RolloutHost> = hosts
            .into_iter()
            .filter(|h| cursor.is_none_or(|c| h.host_id.as_str() > c))
            .collect();
        let more = start.len() > limit;
        let page: Vec<RolloutHost> = start.into_iter().take(limit).collect();
        let next_cursor = if more {
            page.last().map(|h| h.host_id.clone())
        } else {
            None
        };
        Ok(RolloutJson {
            artifact_id: id,
            repository: key.repo.to_string(),
            desired: desired_hosts.len() as u64,
            loaded: counts[0],
            failed: counts[1],
            pending: counts[2],
            unloaded: counts[3],
            hosts: page,
            next_cursor,
        })
    }

    async fn channel_json(
        &self,
        repo: &RepoName,
        channel: &Tag,
    ) -> Result<ChannelJson, ArtifactError> {
        let tags = self.meta.tag_map(repo).await.map_err(meta_err)?;
        let Some(digest) = tags
            .iter()
            .find(|(t, _)| t == channel)
            .map(|(_, d)| d.clone())
        else {
            return Err(ArtifactError::fleet(
                FleetRefusal::ChannelNotFound,
                format!("{repo} has no channel {channel}"),
            ));
        };
        let versions = self
            .meta
            .version_names(repo.as_str())
            .await
            .map_err(meta_err)?;
        let version = tags
            .iter()
            .find(|(t, d)| *d == digest && versions.contains(t.as_str()))
            .map(|(t, _)| t.to_string());
        let history = self
            .meta
            .channel_moves(repo.as_str(), channel.as_str())
            .await
            .map_err(meta_err)?
            .iter()
            .map(move_json)
            .collect();
        Ok(ChannelJson {
            name: repo.to_string(),
            channel: channel.to_string(),
            version,
            id: digest.to_string(),
            history,
        })
    }

    /// `GET /channels/{name}/{channel}`.
    pub async fn channel(
        &self,
        repo: &RepoName,
        channel: &Tag,
    ) -> Result<ChannelJson, ArtifactError> {
        self.channel_json(repo, channel).await
    }

    /// `PUT /channels/{name}/{channel}`: the channel's tag to what the
    /// version's tag points at.
    pub async fn set_channel(
        &self,
        repo: &RepoName,
        channel: &Tag,
        version: &str,
        by: Option<&str>,
    ) -> Result<ChannelJson, ArtifactError> {
        // The artifacts' hold: a create checks under it that its version
        // is no channel, so a version and a channel of one name never
        // both pass their checks.
        let _held = self.artifacts.hold(repo).await?;
        let versions = self
            .meta
            .version_names(repo.as_str())
            .await
            .map_err(meta_err)?;
        if versions.contains(channel.as_str()) {
            return Err(ArtifactError::fleet(
                FleetRefusal::ChannelIsVersion,
                format!("{channel} is a version of {repo}; a channel cannot replace it"),
            ));
        }
        let tags = self.meta.tag_map(repo).await.map_err(meta_err)?;
        let target = tags
            .iter()
            .find(|(t, _)| t.as_str() == version && versions.contains(version))
            .map(|(_, d)| d.clone());
        let Some(digest) = target else {
            return Err(ArtifactError::fleet(
                FleetRefusal::VersionNotFound,
                format!(
                    "{repo} has no version {:?}",
                    version.chars().take(130).collect::<String>()
                ),
            ));
        };
        let digest = digest.to_string();
        match self
            .meta
            .move_channel(
                repo.as_str(),
                channel.as_str(),
                Some((version, &digest)),
                by,
            )
            .await
            .map_err(meta_err)?
        {
            Ok(_) => self.channel_json(repo, channel).await,
            Err(_) => Err(ArtifactError::fleet(
                FleetRefusal::VersionNotFound,
                format!("{repo} has no version {version}"),
            )),
        }
    }

    /// `POST /channels/{name}/{channel}/rollback`.
    pub async fn rollback(
        &self,
        repo: &RepoName,
        channel: &Tag,
        by: Option<&str>,
    ) -> Result<ChannelJson, ArtifactError> {
        let _held = self.artifacts.hold(repo).await?;
        let moved = self
            .meta
            .move_channel(repo.as_str(), channel.as_str(), None, by)
            .await
            .map_err(meta_err)?;
        match moved {
            Ok(_) => self.channel_json(repo, channel).await,
            Err(MoveRefused::NoPrevious) => {
                if self
                    .meta
                    .is_channel(repo.as_str(), channel.as_str())
                    .await
                    .map_err(meta_err)?
                {
                    Err(ArtifactError::fleet(
                        FleetRefusal::NoPreviousVersion,
                        format!(
                            "channel {channel} of {repo} has no earlier version to roll back to"
                        ),
                    ))
                } else {
                    Err(ArtifactError::fleet(
                        FleetRefusal::ChannelNotFound,
                        format!("{repo} has no channel {channel}"),
                    ))
                }
            }
            Err(MoveRefused::UnknownManifest) => Err(ArtifactError::fleet(
                FleetRefusal::VersionNotFound,
                format!("the previous version of channel {channel} of {repo} is gone"),
            )),
        }
    }
}

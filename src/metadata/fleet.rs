//! The fleet's own rows: registered hosts (facts and labels), deployment
//! reports with a bounded history per host, and channel moves; plus the
//! queries resolution is made of (a host's direct associations, every
//! selector, a repository's artifact versions). Selectors and channel
//! associations themselves are derived from referrer manifests (see
//! `derived`), so they mirror with the artifact.

use crate::metadata::WriteTx;
use sqlx::Row;

use super::changes::{host_scope, repo_scope, Scopes};
use super::{unix_now, Metadata, MetadataResult};

/// The fleet tables (applied with the rest of the schema).
pub(super) const STATEMENTS: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS hosts (
        host_id {key} PRIMARY KEY,
        architecture TEXT NOT NULL,
        kernel_release TEXT NOT NULL,
        btf BIGINT,
        agent_version TEXT,
        labels TEXT NOT NULL,
        registered_at BIGINT NOT NULL,
        last_seen BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS deployments (
        host_id {key} NOT NULL,
        repo {key} NOT NULL,
        digest {key} NOT NULL,
        state TEXT NOT NULL,
        message TEXT,
        attach_point TEXT,
        reported_at BIGINT NOT NULL,
        PRIMARY KEY (host_id, repo, digest))",
    "CREATE INDEX IF NOT EXISTS deployments_by_artifact ON deployments (repo, digest)",
    "CREATE TABLE IF NOT EXISTS deployment_history (
        host_id {key} NOT NULL,
        seq BIGINT NOT NULL,
        repo {key} NOT NULL,
        digest {key} NOT NULL,
        state TEXT NOT NULL,
        message TEXT,
        attach_point TEXT,
        reported_at BIGINT NOT NULL,
        PRIMARY KEY (host_id, seq))",
    "CREATE TABLE IF NOT EXISTS channel_moves (
        repo {key} NOT NULL,
        channel {key} NOT NULL,
        seq BIGINT NOT NULL,
        version TEXT NOT NULL,
        digest {key} NOT NULL,
        action TEXT NOT NULL,
        undone BIGINT NOT NULL,
        moved_at BIGINT NOT NULL,
        moved_by TEXT,
        PRIMARY KEY (repo, channel, seq))",
    "CREATE TABLE IF NOT EXISTS host_selectors (
        repo {key} NOT NULL,
        digest {key} NOT NULL,
        subject {key} NOT NULL,
        selector TEXT NOT NULL,
        channel TEXT,
        PRIMARY KEY (repo, digest))",
    "CREATE INDEX IF NOT EXISTS host_selectors_by_subject ON host_selectors (repo, subject)",
    "CREATE TABLE IF NOT EXISTS association_channels (
        repo {key} NOT NULL,
        digest {key} NOT NULL,
        channel TEXT NOT NULL,
        PRIMARY KEY (repo, digest))",
    "CREATE TABLE IF NOT EXISTS fleet_changes (
        scope {key} PRIMARY KEY,
        seq BIGINT NOT NULL)",
];

/// Deployment reports kept per host (newest first when read).
pub const HISTORY_PER_HOST: i64 = 100;

/// Channel moves kept per channel.
pub const MOVES_PER_CHANNEL: i64 = 100;

/// A registered host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRow {
    pub host_id: String,
    pub architecture: String,
    pub kernel_release: String,
    pub btf: Option<bool>,
    pub agent_version: Option<String>,
    /// The labels as a JSON object.
    pub labels: String,
    pub registered_at: i64,
    pub last_seen: i64,
}

/// A selector referrer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectorRow {
    pub repo: String,
    pub digest: String,
    pub subject: String,
    pub selector: String,
    pub channel: Option<String>,
}

/// A direct association of a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectRow {
    pub repo: String,
    pub subject: String,
    pub channel: Option<String>,
}

/// One version row of a repository's artifacts.
#[derive(Debug, Clone)]
pub struct VersionRow {
    pub digest: String,
    pub version: String,
    pub architecture: String,
    pub record: String,
}

/// A deployment report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentRow {
    pub host_id: String,
    pub repo: String,
    pub digest: String,
    pub state: String,
    pub message: Option<String>,
    pub attach_point: Option<String>,
    pub reported_at: i64,
}

/// A channel move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelMove {
    pub seq: i64,
    pub version: String,
    pub digest: String,
    pub action: String,
    pub undone: bool,
    pub moved_at: i64,
    pub moved_by: Option<String>,
}

/// Why a channel move was not made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MoveRefused {
    /// The manifest is not in the repository.
    UnknownManifest,
    /// A rollback with no earlier move to go back to.
    NoPrevious,
}

const HOST_COLUMNS: &str =
    "host_id, architecture, kernel_release, btf, agent_version, labels, registered_at, last_seen";

fn host_row(r: &sqlx::any::AnyRow) -> MetadataResult<HostRow> {
    Ok(HostRow {
        host_id: r.try_get(0)?,
        architecture: r.try_get(1)?,
        kernel_release: r.try_get(2)?,
        btf: r.try_get::<Option<i64>, _>(3)?.map(|b| b != 0),
        agent_version: r.try_get(4)?,
        labels: r.try_get(5)?,
        registered_at: r.try_get(6)?,
        last_seen: r.try_get(7)?,
    })
}

const DEPLOYMENT_COLUMNS: &str = "host_id, repo, digest, state, message, attach_point, reported_at";

fn deployment_row(r: &sqlx::any::AnyRow) -> MetadataResult<DeploymentRow> {
    Ok(DeploymentRow {
        host_id: r.try_get(0)?,
        repo: r.try_get(1)?,
        digest: r.try_get(2)?,
        state: r.try_get(3)?,
        message: r.try_get(4)?,
        attach_point: r.try_get(5)?,
        reported_at: r.try_get(6)?,
    })
}

impl Metadata {
    /// Registers or updates a host (its `registered_at` kept); `true` when
    /// it was new.
    pub async fn upsert_host(&self, h: &HostRow) -> MetadataResult<bool> {
        let mut tx = self.begin_repo_write(&host_scope(&h.host_id)).await?;
        let existed = sqlx::query("SELECT 1 FROM hosts WHERE host_id = $1")
            .bind(h.host_id.clone())
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
        sqlx::query(
            "INSERT INTO hosts
               (host_id, architecture, kernel_release, btf, agent_version, labels,
                registered_at, last_seen)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (host_id) DO UPDATE SET
               architecture = excluded.architecture, kernel_release = excluded.kernel_release,
               btf = excluded.btf, agent_version = excluded.agent_version,
               labels = excluded.labels, last_seen = excluded.last_seen",
        )
        .bind(h.host_id.clone())
        .bind(h.architecture.clone())
        .bind(h.kernel_release.clone())
        .bind(h.btf.map(i64::from))
        .bind(h.agent_version.clone())
        .bind(h.labels.clone())
        .bind(h.registered_at)
        .bind(h.last_seen)
        .execute(&mut *tx)
        .await?;
        let mut scopes = Scopes::default();
        scopes.add(host_scope(&h.host_id));
        self.commit_with_changes(tx, &scopes).await?;
        Ok(!existed)
    }

    /// A registered host.
    pub async fn host(&self, host_id: &str) -> MetadataResult<Option<HostRow>> {
        let sql = format!("SELECT {HOST_COLUMNS} FROM hosts WHERE host_id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(host_id.to_string())
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(host_row).transpose()
    }

    /// Up to `limit` hosts after `after`, by host id (byte-wise).
    pub async fn hosts_after(
        &self,
        after: Option<&str>,
        limit: i64,
    ) -> MetadataResult<Vec<HostRow>> {
        let sql = format!(
            "SELECT {HOST_COLUMNS} FROM hosts WHERE host_id > $1 ORDER BY host_id LIMIT $2"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(after.unwrap_or("").to_string())
            .bind(limit)
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(host_row).collect()
    }

    /// Deletes a host with its reports; `false` if it was not registered.
    pub async fn delete_host(&self, host_id: &str) -> MetadataResult<bool> {
        let mut tx = self.begin_repo_write(&host_scope(host_id)).await?;
        let gone = sqlx::query("DELETE FROM hosts WHERE host_id = $1")
            .bind(host_id.to_string())
            .execute(&mut *tx)
            .await?
            .rows_affected()
            > 0;
        for statement in [
            "DELETE FROM deployments WHERE host_id = $1",
            "DELETE FROM deployment_history WHERE host_id = $1",
        ] {
            sqlx::query(statement)
                .bind(host_id.to_string())
                .execute(&mut *tx)
                .await?;
        }
        let mut scopes = Scopes::default();
        scopes.add(host_scope(host_id));
        self.commit_with_changes(tx, &scopes).await?;
        Ok(gone)
    }

    /// The direct associations of a host (any repository), with the
    /// channel each follows.
    pub async fn host_direct(&self, host_id: &str) -> MetadataResult<Vec<DirectRow>> {
        let rows = sqlx::query(
            "SELECT h.repo, h.subject, c.channel FROM host_associations h
             LEFT JOIN association_channels c ON c.repo = h.repo AND c.digest = h.digest
             WHERE h.host = $1 ORDER BY h.repo, h.subject",
        )
        .bind(host_id.to_string())
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(DirectRow {
                    repo: r.try_get(0)?,
                    subject: r.try_get(1)?,
                    channel: r.try_get(2)?,
                })
            })
            .collect()
    }

    fn selector_rows(rows: &[sqlx::any::AnyRow]) -> MetadataResult<Vec<SelectorRow>> {
        rows.iter()
            .map(|r| {
                Ok(SelectorRow {
                    repo: r.try_get(0)?,
                    digest: r.try_get(1)?,
                    subject: r.try_get(2)?,
                    selector: r.try_get(3)?,
                    channel: r.try_get(4)?,
                })
            })
            .collect()
    }

    /// Every selector of every repository.
    pub async fn all_selectors(&self) -> MetadataResult<Vec<SelectorRow>> {
        let rows = sqlx::query(
            "SELECT repo, digest, subject, selector, channel FROM host_selectors
             ORDER BY repo, digest",
        )
        .fetch_all(self.pool())
        .await?;
        Self::selector_rows(&rows)
    }

    /// The selectors of one artifact.
    pub async fn selectors_of(
        &self,
        repo: &str,
        subject: &str,
    ) -> MetadataResult<Vec<SelectorRow>> {
        let rows = sqlx::query(
            "SELECT repo, digest, subject, selector, channel FROM host_selectors
             WHERE repo = $1 AND subject = $2 ORDER BY digest",
        )
        .bind(repo.to_string())
        .bind(subject.to_string())
        .fetch_all(self.pool())
        .await?;
        Self::selector_rows(&rows)
    }

    /// Every artifact version row of a repository.
    pub async fn versions_of(&self, repo: &str) -> MetadataResult<Vec<VersionRow>> {
        let rows = sqlx::query(
            "SELECT digest, version, architecture, record FROM artifacts WHERE repo = $1",
        )
        .bind(repo.to_string())
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(VersionRow {
                    digest: r.try_get(0)?,
                    version: r.try_get(1)?,
                    architecture: r.try_get(2)?,
                    record: r.try_get(3)?,
                })
            })
            .collect()
    }

    /// The versions a repository's artifacts have.
    pub async fn version_names(
        &self,
        repo: &str,
    ) -> MetadataResult<std::collections::HashSet<String>> {
        let rows = sqlx::query("SELECT DISTINCT version FROM artifacts WHERE repo = $1")
            .bind(repo.to_string())
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }

    /// The current reports of a host, by repository and digest.
    pub async fn deployments_of_host(&self, host_id: &str) -> MetadataResult<Vec<DeploymentRow>> {
        let sql = format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE host_id = $1 ORDER BY repo, digest"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(host_id.to_string())
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(deployment_row).collect()
    }

    /// The recent reports of a host, newest first.
    pub async fn deployment_history(&self, host_id: &str) -> MetadataResult<Vec<DeploymentRow>> {
        let sql = format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployment_history WHERE host_id = $1
             ORDER BY seq DESC LIMIT $2"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(host_id.to_string())
            .bind(HISTORY_PER_HOST)
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(deployment_row).collect()
    }

    /// Every current report for one artifact, by host.
    pub async fn deployments_of_artifact(
        &self,
        repo: &str,
        digest: &str,
    ) -> MetadataResult<Vec<DeploymentRow>> {
        let sql = format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE repo = $1 AND digest = $2
             ORDER BY host_id"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(repo.to_string())
            .bind(digest.to_string())
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(deployment_row).collect()
    }

    /// The moves of a channel, newest first (at most
    /// [`MOVES_PER_CHANNEL`]).
    pub async fn channel_moves(
        &self,
        repo: &str,
        channel: &str,
    ) -> MetadataResult<Vec<ChannelMove>> {
        let rows = sqlx::query(
            "SELECT seq, version, digest, action, undone, moved_at, moved_by FROM channel_moves
             WHERE repo = $1 AND channel = $2 ORDER BY seq DESC LIMIT $3",
        )
        .bind(repo.to_string())
        .bind(channel.to_string())
        .bind(MOVES_PER_CHANNEL)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ChannelMove {
                    seq: r.try_get(0)?,
                    version: r.try_get(1)?,
                    digest: r.try_get(2)?,
                    action: r.try_get(3)?,
                    undone: r.try_get::<i64, _>(4)? != 0,
                    moved_at: r.try_get(5)?,
                    moved_by: r.try_get(6)?,
                })
            })
            .collect()
    }

    /// Whether any move of `channel` was ever recorded in `repo`.
    pub async fn is_channel(&self, repo: &str, channel: &str) -> MetadataResult<bool> {
        Ok(
            sqlx::query("SELECT 1 FROM channel_moves WHERE repo = $1 AND channel = $2 LIMIT 1")
                .bind(repo.to_string())
                .bind(channel.to_string())
                .fetch_optional(self.pool())
                .await?
                .is_some(),
        )
    }

    /// Moves a channel: the tag `channel` of `repo` to `digest` (a
    /// manifest of the repository) and its history, in one transaction.
    /// `rollback` instead pops the current move and goes to the one
    /// before it (`version`/`digest` are then ignored). Returns the move
    /// made.
    pub async fn move_channel(
        &self,
        repo: &str,
        channel: &str,
        target: Option<(&str, &str)>,
        by: Option<&str>,
    ) -> MetadataResult<Result<ChannelMove, MoveRefused>> {
        let mut tx = self.begin_repo_write(repo).await?;
        let (version, digest, action) = match target {
            Some((v, d)) => (v.to_string(), d.to_string(), "move"),
            None => {
                let live = live_moves(&mut tx, repo, channel).await?;
                let (Some(current), Some(previous)) = (live.first(), live.get(1)) else {
                    return Ok(Err(MoveRefused::NoPrevious));
                };
                sqlx::query(
                    "UPDATE channel_moves SET undone = 1
                     WHERE repo = $1 AND channel = $2 AND seq = $3",
                )
                .bind(repo.to_string())
                .bind(channel.to_string())
                .bind(current.0)
                .execute(&mut *tx)
                .await?;
                (previous.1.clone(), previous.2.clone(), "rollback")
            }
        };
        let known = sqlx::query("SELECT 1 FROM manifests WHERE repo = $1 AND digest = $2")
            .bind(repo.to_string())
            .bind(digest.clone())
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
        if !known {
            return Ok(Err(MoveRefused::UnknownManifest));
        }
        let seq: i64 = sqlx::query(
            "SELECT COALESCE(MAX(seq), 0) + 1 FROM channel_moves WHERE repo = $1 AND channel = $2",
        )
        .bind(repo.to_string())
        .bind(channel.to_string())
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
        if let Some(o) = &self.outbox {
            let event = super::outbox::ChannelMoveEvent {
                repo,
                channel,
                version: &version,
                digest: &digest,
                action,
                seq,
                by,
            };
            super::outbox::record_channel_move(&mut tx, o, &event).await?;
        }
        let now = unix_now();
        sqlx::query(
            "INSERT INTO tags (repo, tag, digest, updated_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (repo, tag) DO UPDATE
             SET digest = excluded.digest, updated_at = excluded.updated_at",
        )
        .bind(repo.to_string())
        .bind(channel.to_string())
        .bind(digest.clone())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        // A rollback is history, not a step to roll back to.
        let undone = i64::from(action == "rollback");
        sqlx::query(
            "INSERT INTO channel_moves
               (repo, channel, seq, version, digest, action, undone, moved_at, moved_by)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(repo.to_string())
        .bind(channel.to_string())
        .bind(seq)
        .bind(version.clone())
        .bind(digest.clone())
        .bind(action.to_string())
        .bind(undone)
        .bind(now)
        .bind(by.map(str::to_string))
        .execute(&mut *tx)
        .await?;
        // The live stack is never trimmed; only undone entries age out.
        sqlx::query(
            "DELETE FROM channel_moves WHERE repo = $1 AND channel = $2 AND undone = 1
               AND seq <= $3",
        )
        .bind(repo.to_string())
        .bind(channel.to_string())
        .bind(seq - MOVES_PER_CHANNEL)
        .execute(&mut *tx)
        .await?;
        let mut scopes = Scopes::default();
        scopes.add(repo_scope(repo));
        self.commit_with_changes(tx, &scopes).await?;
        Ok(Ok(ChannelMove {
            seq,
            version,
            digest,
            action: action.to_string(),
            undone: undone != 0,
            moved_at: now,
            moved_by: by.map(str::to_string),
        }))
    }
}

/// The moves of a channel not undone, newest first: the stack a rollback
/// pops (seq, version, digest).
async fn live_moves(
    tx: &mut WriteTx<'_>,
    repo: &str,
    channel: &str,
) -> MetadataResult<Vec<(i64, String, String)>> {
    let rows = sqlx::query(
        "SELECT seq, version, digest FROM channel_moves
         WHERE repo = $1 AND channel = $2 AND undone = 0 ORDER BY seq DESC LIMIT 2",
    )
    .bind(repo.to_string())
    .bind(channel.to_string())
    .fetch_all(&mut **tx)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
        .collect()
}

impl Metadata {
    /// The channel a host association manifest follows, if any.
    pub async fn association_channel(
        &self,
        repo: &str,
        digest: &str,
    ) -> MetadataResult<Option<String>> {
        let row =
            sqlx::query("SELECT channel FROM association_channels WHERE repo = $1 AND digest = $2")
                .bind(repo.to_string())
                .bind(digest.to_string())
                .fetch_optional(self.pool())
                .await?;
        Ok(match row {
            Some(r) => Some(r.try_get(0)?),
            None => None,
        })
    }
}

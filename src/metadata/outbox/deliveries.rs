//! The deliverer's side of the outbox: claiming due deliveries under a
//! lease (`FOR UPDATE SKIP LOCKED` on PostgreSQL, so replicas never send
//! the same row at once), recording outcomes, counting and pruning.

use sqlx::Row;

use crate::metadata::{unix_now, Engine, Metadata, MetadataResult};

/// An event claimed for one delivery attempt to one webhook.
#[derive(Debug, Clone)]
pub struct ClaimedEvent {
    pub seq: i64,
    pub id: String,
    /// The exact bytes to send (and sign).
    pub body: String,
    /// Failed attempts before this one.
    pub attempts: u32,
}

/// How one delivery attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// The webhook answered 2xx.
    Delivered,
    /// Anything else: retried from `next_at_ms` (Unix ms) on.
    Failed { next_at_ms: i64, error: String },
}

/// What pruning removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Delivery rows delivered before the retention cut.
    pub delivered: u64,
    /// Delivery rows still undelivered when their event passed the
    /// maximum age (given up).
    pub abandoned: u64,
}

impl Metadata {
    /// Claims up to `limit` deliveries due to `webhook`, oldest first, for
    /// `lease_ms` in the name of `owner` (one deliverer set): until then no
    /// other deliverer (of any replica) claims them. On PostgreSQL rows
    /// another replica is claiming are skipped, not waited for.
    pub async fn claim_events(
        &self,
        owner: &str,
        webhook: &str,
        limit: u32,
        now_ms: i64,
        lease_ms: i64,
    ) -> MetadataResult<Vec<ClaimedEvent>> {
        let lock = match self.engine {
            Engine::Sqlite => "",
            Engine::Postgres => "FOR UPDATE OF d SKIP LOCKED",
        };
        // Most polls find nothing due: a read says so without the write
        // lock (the embedded store's only writer slot, which pushes need).
        let due = sqlx::query(
            "SELECT 1 FROM event_deliveries WHERE webhook = $1 AND delivered_at IS NULL
               AND next_at <= $2 AND lease_until <= $2 LIMIT 1",
        )
        .bind(webhook.to_string())
        .bind(now_ms)
        .fetch_optional(self.pool())
        .await?;
        if due.is_none() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin_write().await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT d.seq, o.id, o.body, d.attempts FROM event_deliveries d
             JOIN event_outbox o ON o.seq = d.seq
             WHERE d.webhook = $1 AND d.delivered_at IS NULL AND d.next_at <= $2
               AND d.lease_until <= $2
             ORDER BY d.seq LIMIT $3 {lock}"
        )))
        .bind(webhook.to_string())
        .bind(now_ms)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        let mut claimed = Vec::with_capacity(rows.len());
        for r in rows {
            let seq: i64 = r.try_get(0)?;
            sqlx::query(
                "UPDATE event_deliveries SET lease_until = $1, lease_owner = $4
                 WHERE seq = $2 AND webhook = $3",
            )
            .bind(now_ms.saturating_add(lease_ms))
            .bind(seq)
            .bind(webhook.to_string())
            .bind(owner.to_string())
            .execute(&mut *tx)
            .await?;
            claimed.push(ClaimedEvent {
                seq,
                id: r.try_get(1)?,
                body: r.try_get(2)?,
                attempts: u32::try_from(r.try_get::<i64, _>(3)?).unwrap_or(u32::MAX),
            });
        }
        tx.commit().await?;
        Ok(claimed)
    }

    /// Ends the leases of `owner` (a deliverer set that stopped: its rows
    /// are due again at once, for any replica), or every lease (`None`: the
    /// one process of the embedded store at start-up, so the leases of a
    /// run that died mid-delivery end now, not when they expire).
    pub async fn release_event_leases(&self, owner: Option<&str>) -> MetadataResult<()> {
        sqlx::query(
            "UPDATE event_deliveries SET lease_until = 0
             WHERE delivered_at IS NULL AND ($1 = '' OR lease_owner = $1)",
        )
        .bind(owner.unwrap_or("").to_string())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Records the outcomes of one batch of attempts to `webhook`, in one
    /// transaction (one commit per batch, not per event: the deliverer
    /// takes the embedded store's write lock from pushes as little as
    /// it can).
    pub async fn record_deliveries(
        &self,
        webhook: &str,
        outcomes: &[(i64, DeliveryOutcome)],
    ) -> MetadataResult<()> {
        if outcomes.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        for (seq, outcome) in outcomes {
            let q = match outcome {
                DeliveryOutcome::Delivered => sqlx::query(
                    "UPDATE event_deliveries
                     SET delivered_at = $1, lease_until = 0, attempts = attempts + 1,
                         last_error = NULL
                     WHERE seq = $2 AND webhook = $3",
                )
                .bind(unix_now())
                .bind(*seq)
                .bind(webhook.to_string()),
                DeliveryOutcome::Failed { next_at_ms, error } => sqlx::query(
                    "UPDATE event_deliveries
                     SET attempts = attempts + 1, next_at = $1, lease_until = 0,
                         last_error = $4
                     WHERE seq = $2 AND webhook = $3",
                )
                .bind(*next_at_ms)
                .bind(*seq)
                .bind(webhook.to_string())
                .bind(error.chars().take(500).collect::<String>()),
            };
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Deliveries not done yet (every webhook, every replica's).
    pub async fn events_pending(&self) -> MetadataResult<u64> {
        let n: i64 =
            sqlx::query("SELECT COUNT(*) FROM event_deliveries WHERE delivered_at IS NULL")
                .fetch_one(self.pool())
                .await?
                .try_get(0)?;
        Ok(n.max(0) as u64)
    }

    /// Events in the outbox (delivered or not, until pruned).
    pub async fn events_written(&self) -> MetadataResult<u64> {
        let n: i64 = sqlx::query("SELECT COUNT(*) FROM event_outbox")
            .fetch_one(self.pool())
            .await?
            .try_get(0)?;
        Ok(n.max(0) as u64)
    }

    /// Deletes delivery rows delivered before `delivered_before` and those
    /// of events created before `abandon_before` (Unix seconds), then the
    /// events no delivery row refers to.
    pub async fn prune_events(
        &self,
        delivered_before: i64,
        abandon_before: i64,
    ) -> MetadataResult<Pruned> {
        let mut tx = self.begin_write().await?;
        let delivered = sqlx::query(
            "DELETE FROM event_deliveries WHERE delivered_at IS NOT NULL AND delivered_at < $1",
        )
        .bind(delivered_before)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let abandoned = sqlx::query(
            "DELETE FROM event_deliveries WHERE delivered_at IS NULL
               AND seq IN (SELECT seq FROM event_outbox WHERE created_at < $1)",
        )
        .bind(abandon_before)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query(
            "DELETE FROM event_outbox WHERE NOT EXISTS
               (SELECT 1 FROM event_deliveries d WHERE d.seq = event_outbox.seq)",
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Pruned {
            delivered,
            abandoned,
        })
    }
}

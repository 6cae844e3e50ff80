//! The deliverer: one task per webhook claims due deliveries from the
//! outbox (a bounded batch, leased so that no other replica sends them at
//! the same time), POSTs each with a timeout, and marks it delivered or
//! schedules its retry; one more task prunes and updates the pending
//! gauge. Nothing here runs on a request's path: a slow or dead receiver
//! only keeps its own task waiting, never a push (which only writes rows),
//! and no lock is held across an HTTP call.

use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::hmac;

use super::{loggable, EventsConfig};
use crate::metadata::{ClaimedEvent, DeliveryOutcome, Engine, Metadata};
use crate::metrics::Metrics;

/// The header carrying `sha256=<hex HMAC-SHA256 of the body>`.
pub const SIGNATURE_HEADER: &str = "X-Registry-Signature";
/// The structured-mode content type of CloudEvents over HTTP.
const CONTENT_TYPE: &str = "application/cloudevents+json";
/// Deliveries claimed (and sent concurrently) per webhook at once.
const BATCH: u32 = 32;
/// How often a deliverer looks for due rows when nothing woke it (rows
/// another replica wrote, retries coming due).
const POLL: Duration = Duration::from_secs(1);
/// The first retry waits about this long; each next one twice as long...
const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// ...up to this.
const BACKOFF_CAP: Duration = Duration::from_secs(300);
/// How much longer than the timeout a claim is leased.
const LEASE_MARGIN: Duration = Duration::from_secs(10);
/// How often delivered rows are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// How often the pending gauge is read from the store.
const GAUGE_EVERY: Duration = Duration::from_secs(5);

/// `sha256=<hex>`: the HMAC-SHA256 of `body` under `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    format!("sha256={}", hex::encode(hmac::sign(&key, body).as_ref()))
}

/// The wait before the retry that follows `failures` failed attempts
/// (1 or more): `BACKOFF_BASE * 2^(failures-1)`, capped at `BACKOFF_CAP`,
/// then scaled by a factor in [0.5, 1) from `jitter` (in [0, 1)), so that
/// the retries of many events (and replicas) spread out.
pub fn backoff(failures: u32, jitter: f64) -> Duration {
    let exp = failures.saturating_sub(1).min(20);
    let full = BACKOFF_BASE.saturating_mul(1u32 << exp).min(BACKOFF_CAP);
    full.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

fn jitter() -> f64 {
    // 53 random bits as a fraction in [0, 1).
    (uuid::Uuid::new_v4().as_u128() >> 75) as f64 / (1u64 << 53) as f64
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The deliverer tasks of one server; aborted on drop (their leases then
/// run out), or stopped by [`Deliverers::stop`] (their leases end at once).
pub struct Deliverers {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    meta: Metadata,
    /// Names this set's leases.
    owner: String,
}

impl Deliverers {
    /// Stops every task, then ends this set's leases: what was in flight is
    /// due again at once (for another replica, or the next start), and is
    /// sent again with the same id.
    pub async fn stop(mut self) {
        let tasks = std::mem::take(&mut self.tasks);
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
        if let Err(e) = self.meta.release_event_leases(Some(&self.owner)).await {
            tracing::warn!(error = %e, "cannot release the event leases at shutdown");
        }
    }
}

impl Drop for Deliverers {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Starts the deliverers (the server does; the maintenance commands only
/// write rows). `meta` must have its outbox on.
pub fn spawn(
    meta: Metadata,
    config: &EventsConfig,
    metrics: Option<Arc<Metrics>>,
) -> Result<Deliverers, String> {
    let client = vault_http::Client::builder()
        .connect_timeout(config.timeout.min(Duration::from_secs(5)))
        .timeout(config.timeout)
        // A redirect is a failure: the operator configured this URL.
        .redirect(vault_http::redirect::Policy::none())
        .user_agent(concat!("bpf-registry/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot build the webhook HTTP client: {e}"))?;
    let secret: Arc<[u8]> = Arc::from(config.secret.expose().as_bytes());
    // A lease outlives the batch's attempts (all sent at once, each within
    // the timeout), so a live deliverer's rows are not taken over; a dead
    // one's come back after it.
    let lease_ms = (config.timeout + LEASE_MARGIN).as_millis() as i64;
    let owner = uuid::Uuid::new_v4().to_string();
    let mut tasks = Vec::with_capacity(config.webhooks.len() + 1);
    tasks.push(tokio::spawn(housekeeping(
        meta.clone(),
        config.clone(),
        metrics.clone(),
    )));
    for url in &config.webhooks {
        let d = Webhook {
            owner: owner.clone(),
            meta: meta.clone(),
            client: client.clone(),
            url: url.clone(),
            secret: secret.clone(),
            lease_ms,
            metrics: metrics.clone(),
        };
        tasks.push(tokio::spawn(d.run()));
    }
    Ok(Deliverers { tasks, meta, owner })
}

/// The deliverer of one webhook.
struct Webhook {
    owner: String,
    meta: Metadata,
    client: vault_http::Client,
    url: String,
    secret: Arc<[u8]>,
    lease_ms: i64,
    metrics: Option<Arc<Metrics>>,
}

impl Webhook {
    async fn run(self) {
        let Some(mut written) = self.meta.outbox().map(|o| o.subscribe()) else {
            return;
        };
        loop {
            let full = match self
                .meta
                .claim_events(&self.owner, &self.url, BATCH, now_ms(), self.lease_ms)
                .await
            {
                Ok(batch) => {
                    let full = batch.len() == BATCH as usize;
                    self.deliver(batch).await;
                    full
                }
                Err(e) => {
                    tracing::warn!(webhook = %loggable(&self.url), error = %e, "cannot claim events");
                    false
                }
            };
            if !full {
                tokio::select! {
                    changed = written.changed() => {
                        if changed.is_err() {
                            tokio::time::sleep(POLL).await;
                        }
                    }
                    _ = tokio::time::sleep(POLL) => {}
                }
            }
        }
    }

    /// Sends a claimed batch concurrently and records each outcome.
    async fn deliver(&self, batch: Vec<ClaimedEvent>) {
        if batch.is_empty() {
            return;
        }
        let sent = futures_util::future::join_all(batch.iter().map(|e| self.post(e))).await;
        let mut outcomes = Vec::with_capacity(batch.len());
        for (event, outcome) in batch.iter().zip(sent) {
            match outcome {
                Ok(()) => {
                    if let Some(m) = &self.metrics {
                        m.event_delivered();
                    }
                    outcomes.push((event.seq, DeliveryOutcome::Delivered));
                }
                Err(error) => {
                    if let Some(m) = &self.metrics {
                        m.event_failed();
                    }
                    let failures = event.attempts.saturating_add(1);
                    let wait = backoff(failures, jitter());
                    tracing::warn!(
                        webhook = %loggable(&self.url),
                        event = %event.id,
                        attempt = failures,
                        retry_in_ms = wait.as_millis() as u64,
                        %error,
                        "event delivery failed"
                    );
                    let next_at_ms = now_ms().saturating_add(wait.as_millis() as i64);
                    outcomes.push((event.seq, DeliveryOutcome::Failed { next_at_ms, error }));
                }
            }
        }
        if let Err(e) = self.meta.record_deliveries(&self.url, &outcomes).await {
            // The leases run out and the events are sent again: at least once.
            tracing::warn!(webhook = %loggable(&self.url), error = %e, "cannot record delivery outcomes");
        }
    }

    async fn post(&self, event: &ClaimedEvent) -> Result<(), String> {
        let body = event.body.clone().into_bytes();
        let response = self
            .client
            .post(&self.url)
            .header("content-type", CONTENT_TYPE)
            .header(SIGNATURE_HEADER, signature(&self.secret, &body))
            .body(body)
            .send()
            .await
            .map_err(|e| describe(&e.without_url()))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("the receiver answered HTTP {}", status.as_u16()))
        }
    }
}

/// An error with its causes (reqwest's own message is only the outermost
/// one: "error sending request").
fn describe(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// Prunes delivered and given-up rows and keeps the pending gauge.
async fn housekeeping(meta: Metadata, config: EventsConfig, metrics: Option<Arc<Metrics>>) {
    if meta.engine() == Engine::Sqlite {
        // One process owns the embedded store: leases of a run that died
        // mid-delivery are void now.
        if let Err(e) = meta.release_event_leases(None).await {
            tracing::warn!(error = %e, "cannot release the event leases of the previous run");
        }
    }
    let mut last_prune: Option<tokio::time::Instant> = None;
    loop {
        if last_prune.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
            last_prune = Some(tokio::time::Instant::now());
            let now = crate::metadata::unix_now();
            let cut = |d: Duration| now.saturating_sub(d.as_secs() as i64);
            match meta
                .prune_events(cut(config.retention), cut(config.max_age))
                .await
            {
                Ok(p) if p.abandoned > 0 => tracing::warn!(
                    abandoned = p.abandoned,
                    pruned = p.delivered,
                    "events undelivered past BPF_REGISTRY_EVENTS_MAX_AGE were given up"
                ),
                Ok(p) => tracing::debug!(pruned = p.delivered, "delivered events pruned"),
                Err(e) => tracing::warn!(error = %e, "cannot prune the event outbox"),
            }
        }
        if let Some(m) = &metrics {
            match meta.events_pending().await {
                Ok(n) => m.set_events_pending(n),
                Err(e) => tracing::debug!(error = %e, "cannot count pending events"),
            }
        }
        tokio::time::sleep(GAUGE_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_within_its_jitter() {
        assert_eq!(backoff(1, 0.0), Duration::from_millis(500));
        assert!(backoff(1, 0.999) < Duration::from_secs(1));
        assert_eq!(backoff(2, 0.0), Duration::from_secs(1));
        assert_eq!(backoff(4, 0.0), Duration::from_secs(4));
        assert_eq!(backoff(30, 0.0), Duration::from_secs(150));
        assert!(backoff(u32::MAX, 0.999) < BACKOFF_CAP);
        for _ in 0..100 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j), "{j}");
        }
    }

    #[test]
    fn signature_is_the_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}

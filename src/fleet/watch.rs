//! Long-poll watching of a host's answers: strong ETags over the answer
//! bytes, and a wait that holds a request until the answer changes or its
//! time is up. A waiter is one small future on the change feed's watch
//! channel (no task or thread of its own): a publish wakes every waiter,
//! each checks its few scopes against the counters delivered, and only
//! those whose scopes moved recompute their answer.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sha2::{Digest as _, Sha256};

use crate::artifacts::{ArtifactError, FleetRefusal};
use crate::metadata::ChangeFeed;

use super::view::Freshness;

/// The longest `?wait=`.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// An answer with its strong ETag (quoted) and the scopes it depends on.
pub struct Answer {
    pub body: Vec<u8>,
    pub etag: String,
    pub watched: Vec<(String, i64)>,
}

/// `value` as compact JSON in a buffer of exactly its size: serialized
/// into this thread's scratch buffer first, so a wake-up of many waiters
/// does not grow each body through a chain of reallocations.
pub fn exact_json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, ArtifactError> {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    /// A scratch buffer larger than this is not kept after a call.
    const KEEP: usize = 256 * 1024;
    SCRATCH.with(|cell| {
        let Ok(mut buf) = cell.try_borrow_mut() else {
            return serde_json::to_vec(value).map_err(|e| ArtifactError::Internal(e.to_string()));
        };
        buf.clear();
        let written = serde_json::to_writer(&mut *buf, value)
            .map_err(|e| ArtifactError::Internal(e.to_string()));
        let out = written.map(|()| buf.as_slice().to_vec());
        if buf.capacity() > KEEP {
            *buf = Vec::new();
        }
        out
    })
}

impl Answer {
    pub fn new(body: Vec<u8>, watched: Vec<(String, i64)>) -> Self {
        let etag = format!("\"{}\"", &hex::encode(Sha256::digest(&body))[..32]);
        Answer {
            body,
            etag,
            watched,
        }
    }
}

/// What a waiter holds of the answer it matched.
struct Held {
    etag: String,
    watched: Vec<(String, i64)>,
}

/// How a watched request ends.
pub enum Outcome {
    /// The answer (it differs from the client's ETag, or no ETag was
    /// given).
    Changed(Answer),
    /// Still the client's version: 304.
    NotModified { etag: String },
}

/// Parses `?wait=`: `30`, `30s`, `500ms`, `1m`; at most [`MAX_WAIT`].
pub fn parse_wait(s: &str) -> Result<Duration, ArtifactError> {
    let bad = || {
        ArtifactError::fleet(
            FleetRefusal::InvalidWait,
            format!(
                "invalid wait {:?}: a duration such as 30s, 500ms or 1m, at most 60s",
                s.chars().take(40).collect::<String>()
            ),
        )
    };
    let (number, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    if number.is_empty() || number.len() > 9 {
        return Err(bad());
    }
    let n: u64 = number.parse().map_err(|_| bad())?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        _ => return Err(bad()),
    };
    if d > MAX_WAIT {
        return Err(bad());
    }
    Ok(d)
}

/// Whether an `If-None-Match` value names `etag` (a list, `*`, or weak
/// forms compare by their opaque tag).
pub fn none_match(header: &str, etag: &str) -> bool {
    header
        .split(',')
        .map(str::trim)
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
}

/// The cap on held waiters.
pub struct Watchers {
    cap: usize,
    held: AtomicUsize,
}

/// A held place; freed on drop.
pub struct WatchSlot<'a>(&'a Watchers);

impl Drop for WatchSlot<'_> {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Watchers {
    pub fn new(cap: usize) -> Self {
        Watchers {
            cap,
            held: AtomicUsize::new(0),
        }
    }

    /// A place, or 429 `too_many_watchers`.
    pub fn enter(&self) -> Result<WatchSlot<'_>, ArtifactError> {
        let prev = self.held.fetch_add(1, Ordering::AcqRel);
        if prev >= self.cap {
            self.held.fetch_sub(1, Ordering::AcqRel);
            return Err(ArtifactError::fleet(
                FleetRefusal::TooManyWatchers,
                format!(
                    "{} long-poll waiters are held, the most this server holds; retry later",
                    self.cap
                ),
            ));
        }
        Ok(WatchSlot(self))
    }

    /// Waiters held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }
}

/// Answers at once, or (when the client's `If-None-Match` names the
/// current answer and `wait` is set) holds until `compute` gives another
/// answer or `wait` is over. `compute` is called with the freshness to
/// read at: committed for the first answer, the delivered counters after a
/// wake-up.
pub async fn watch<F, Fut>(
    feed: &ChangeFeed,
    watchers: &Watchers,
    if_none_match: Option<&str>,
    wait: Option<Duration>,
    mut compute: F,
) -> Result<Outcome, ArtifactError>
where
    F: FnMut(Freshness) -> Fut,
    Fut: Future<Output = Result<Answer, ArtifactError>>,
{
    let deadline = wait.map(|w| tokio::time::Instant::now() + w);
    let mut fresh = Freshness::Committed;
    // Held from the start: long-polls do not count against the
    // concurrent-request cap (see `http::limits`), this cap bounds them.
    let _slot = match wait {
        Some(_) => Some(watchers.enter()?),
        None => None,
    };
    loop {
        // Subscribed before reading: a change committed after the read
        // is a publish this receiver sees.
        let mut rx = feed.subscribe();
        rx.borrow_and_update();
        let epoch = feed.epoch();
        // Boxed: a held waiter keeps only the answer, not the space of
        // the computation's future.
        let answer = Box::pin(compute(fresh)).await?;
        let matches = if_none_match.is_some_and(|h| none_match(h, &answer.etag));
        if !matches {
            return Ok(Outcome::Changed(answer));
        }
        let Some(deadline) = deadline else {
            return Ok(Outcome::NotModified { etag: answer.etag });
        };
        // A held waiter keeps what it compares, not the answer's body
        // (a wake-up recomputes it anyway).
        let Answer { etag, watched, .. } = answer;
        let answer = Held { etag, watched };
        loop {
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() {
                        return Ok(Outcome::NotModified { etag: answer.etag });
                    }
                    if feed.epoch() != epoch {
                        fresh = Freshness::Committed;
                        break;
                    }
                    let moved = answer.watched.iter().any(|(scope, seq)| {
                        feed.known(scope).is_some_and(|k| k > *seq)
                    });
                    if moved {
                        fresh = Freshness::Delivered;
                        break;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    return Ok(Outcome::NotModified { etag: answer.etag });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_json_is_what_to_vec_writes_in_a_buffer_of_its_size() {
        let v = serde_json::json!({"a": [1, 2, "x\"y"], "b": null});
        for _ in 0..2 {
            let out = exact_json(&v).unwrap();
            assert_eq!(out, serde_json::to_vec(&v).unwrap());
            assert_eq!(out.capacity(), out.len());
        }
        let big = "z".repeat(300 * 1024);
        assert_eq!(exact_json(&big).unwrap(), serde_json::to_vec(&big).unwrap());
    }

    #[test]
    fn waits_parse_and_are_bounded() {
        assert_eq!(parse_wait("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_wait("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_wait("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_wait("1m").unwrap(), Duration::from_secs(60));
        for bad in ["61s", "2m", "", "s", "-1", "1h", "10x", "99999999999"] {
            assert!(parse_wait(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn if_none_match_lists_and_weak_tags() {
        assert!(none_match("\"a\"", "\"a\""));
        assert!(none_match("\"b\", W/\"a\"", "\"a\""));
        assert!(none_match("*", "\"a\""));
        assert!(!none_match("\"b\"", "\"a\""));
    }

    #[test]
    fn the_cap_refuses_beyond_it_and_frees_on_drop() {
        let w = Watchers::new(1);
        let a = w.enter().unwrap();
        assert!(w.enter().is_err());
        drop(a);
        assert!(w.enter().is_ok());
    }
}

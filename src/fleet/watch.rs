//! Long-poll watching of a host's answers: strong ETags over the answer
//! bytes, and a wait that holds a request until the answer changes or its
//! time is up. A waiter is one small future on the change feed's watch
//! channel (no task or thread of its own): a publish wakes every waiter,
//! each checks its few scopes against the counters delivered, and only
//! those whose scopes moved recompute their answer.
//!
//! A request may also be *parked* instead of held ([`Parking`]): the
//! handler then leaves what it would wait on ([`Parked`]) for the caller
//! and returns at once; the caller (the plain HTTP/1.1 front in
//! `http::limits`) waits on it with nothing but the socket and re-runs the
//! request when it wakes.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
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
    /// Still the client's version, and the wait is left in the request's
    /// [`Parking`] for its caller.
    Parked,
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

/// The cap on held waiters (held in place or parked).
pub struct Watchers {
    cap: usize,
    held: Arc<AtomicUsize>,
}

/// A held place; freed on drop.
pub struct WatchSlot(Arc<AtomicUsize>);

impl Drop for WatchSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Watchers {
    pub fn new(cap: usize) -> Self {
        Watchers {
            cap,
            held: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// A place, or 429 `too_many_watchers`.
    pub fn enter(&self) -> Result<WatchSlot, ArtifactError> {
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
        Ok(WatchSlot(self.held.clone()))
    }

    /// Waiters held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }
}

/// Where a parked request's wait and its resumption are handed between
/// the handler and the caller that holds the connection. One per request;
/// every run of the request gets the same one.
#[derive(Clone, Default)]
pub struct Parking(Arc<Mutex<ParkingState>>);

#[derive(Default)]
struct ParkingState {
    /// Left by the handler: what to wait on.
    parked: Option<Parked>,
    /// Left by the caller for the next run: how the wait went.
    resume: Option<Resume>,
}

/// How the next run of a parked request goes on.
struct Resume {
    deadline: tokio::time::Instant,
    slot: WatchSlot,
    /// Computed with the delivered counters (woken by them), else the
    /// committed ones.
    fresh: Freshness,
    /// The wait is over (its time, or the server stops): answer as is.
    over: bool,
}

/// A wait left by the handler: the answer's ETag and scopes, the feed's
/// receiver (subscribed before that answer was read) and the place held.
pub struct Parked {
    feed: Arc<ChangeFeed>,
    rx: tokio::sync::watch::Receiver<u64>,
    epoch: u64,
    held: Held,
    deadline: tokio::time::Instant,
    slot: WatchSlot,
}

/// How a parked wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// A scope the answer depends on moved: run the request again.
    Moved,
    /// The wait's time is over: run it once more to answer.
    Over,
}

impl Parking {
    fn lock(&self) -> std::sync::MutexGuard<'_, ParkingState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The wait the last run left, if it parked.
    pub fn take_parked(&self) -> Option<Parked> {
        self.lock().parked.take()
    }

    /// Makes the next run go on from `parked` after `wake`, or (with
    /// `over`) answer at once whatever it finds.
    pub fn resume(&self, parked: Parked, wake: Wake) {
        let fresh = match wake {
            Wake::Moved if parked.feed.epoch() == parked.epoch => Freshness::Delivered,
            _ => Freshness::Committed,
        };
        self.lock().resume = Some(Resume {
            deadline: parked.deadline,
            slot: parked.slot,
            fresh,
            over: wake == Wake::Over,
        });
    }
}

impl Parked {
    /// Waits until a scope of the answer moves (or the feed is reset) or
    /// the wait's time is over.
    pub async fn wait(&mut self) -> Wake {
        loop {
            tokio::select! {
                changed = self.rx.changed() => {
                    if changed.is_err() {
                        return Wake::Over;
                    }
                    if self.feed.epoch() != self.epoch || moved(&self.feed, &self.held) {
                        return Wake::Moved;
                    }
                }
                _ = tokio::time::sleep_until(self.deadline) => return Wake::Over,
            }
        }
    }
}

/// Whether a scope of a held answer moved past the counter it was read at.
fn moved(feed: &ChangeFeed, held: &Held) -> bool {
    held.watched
        .iter()
        .any(|(scope, seq)| feed.known(scope).is_some_and(|k| k > *seq))
}

/// Answers at once, or (when the client's `If-None-Match` names the
/// current answer and `wait` is set) holds until `compute` gives another
/// answer or `wait` is over. `compute` is called with the freshness to
/// read at: committed for the first answer, the delivered counters after a
/// wake-up. With `parking`, the wait is left in it ([`Outcome::Parked`])
/// instead of held here, and a later run resumes it.
pub async fn watch<F, Fut>(
    feed: &Arc<ChangeFeed>,
    watchers: &Watchers,
    if_none_match: Option<&str>,
    wait: Option<Duration>,
    parking: Option<&Parking>,
    mut compute: F,
) -> Result<Outcome, ArtifactError>
where
    F: FnMut(Freshness) -> Fut,
    Fut: Future<Output = Result<Answer, ArtifactError>>,
{
    // A parked request's later runs go on with its deadline and place.
    let resume = parking.and_then(|p| p.lock().resume.take());
    let (deadline, mut fresh, mut slot, over) = match resume {
        Some(r) => (Some(r.deadline), r.fresh, Some(r.slot), r.over),
        None => (
            wait.map(|w| tokio::time::Instant::now() + w),
            Freshness::Committed,
            // Held from the start: long-polls do not count against the
            // concurrent-request cap (see `http::limits`), this cap
            // bounds them.
            match wait {
                Some(_) => Some(watchers.enter()?),
                None => None,
            },
            false,
        ),
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
        let Some(deadline) = deadline.filter(|_| !over) else {
            return Ok(Outcome::NotModified { etag: answer.etag });
        };
        // A held waiter keeps what it compares, not the answer's body
        // (a wake-up recomputes it anyway).
        let Answer { etag, watched, .. } = answer;
        let held = Held { etag, watched };
        // Only a parked wait gives its place away (to the `Parked`); a
        // wait held here keeps it until it returns.
        if let Some(parking) = parking {
            if let Some(place) = slot.take() {
                parking.lock().parked = Some(Parked {
                    feed: feed.clone(),
                    rx,
                    epoch,
                    held,
                    deadline,
                    slot: place,
                });
                return Ok(Outcome::Parked);
            }
        }
        loop {
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() {
                        return Ok(Outcome::NotModified { etag: held.etag });
                    }
                    if feed.epoch() != epoch {
                        fresh = Freshness::Committed;
                        break;
                    }
                    if moved(feed, &held) {
                        fresh = Freshness::Delivered;
                        break;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    return Ok(Outcome::NotModified { etag: held.etag });
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

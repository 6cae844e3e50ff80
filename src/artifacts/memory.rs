//! The memory budget of REST creates (`BPF_REGISTRY_CREATE_MEMORY_BUDGET`):
//! a semaphore by bytes that every `POST /artifacts` draws on before its
//! body is buffered, so all creates together hold at most the budget.
//!
//! A create reserves its declared body length (the whole body cap when
//! the length is not declared) plus [`CREATE_OVERHEAD_BYTES`]; a create
//! bigger than the whole budget takes all of it and runs alone. Once the
//! payload is decoded (the body and any ELF copy are gone), it gives back
//! all but the overhead, which it keeps while its layer streams into the
//! store. A create that cannot get its share within the wait bound
//! (`BPF_REGISTRY_CREATE_MEMORY_WAIT`) is refused with 503 `server_busy`
//! and `Retry-After`, before a byte of its body is read. Waiters are
//! served first come, first served.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::ArtifactError;

/// What a create holds besides its body: the zstd contexts (an 8 MiB
/// window at most when a pre-packed payload is read, ~3 MiB to pack), the
/// decode chunk, and the 1 MiB blocks in flight while the layer streams
/// into the store.
pub const CREATE_OVERHEAD_BYTES: u64 = 8 * 1024 * 1024;
/// Seconds a refused create is told to wait.
pub const BUSY_RETRY_AFTER_SECS: u64 = 5;
/// The semaphore counts KiB (a `u32` of them covers 4 TiB).
const UNIT: u64 = 1024;

/// The budget shared by all creates of a server.
pub struct CreateMemoryBudget {
    permits: Arc<Semaphore>,
    total_units: u32,
    total_bytes: u64,
    wait: Duration,
}

/// One create's share of the budget; given back when dropped.
#[derive(Debug)]
pub struct CreateMemory {
    permit: OwnedSemaphorePermit,
    overhead_units: u32,
}

fn units(bytes: u64) -> u64 {
    bytes.div_ceil(UNIT)
}

impl CreateMemoryBudget {
    pub fn new(total_bytes: u64, wait: Duration) -> Self {
        let total_units = u32::try_from(units(total_bytes).max(1)).unwrap_or(u32::MAX);
        CreateMemoryBudget {
            permits: Arc::new(Semaphore::new(total_units as usize)),
            total_units,
            total_bytes,
            wait,
        }
    }

    /// What a create with a body of `body_bytes` reserves (before the
    /// clamp to the whole budget).
    pub fn cost_of(body_bytes: u64) -> u64 {
        body_bytes.saturating_add(CREATE_OVERHEAD_BYTES)
    }

    /// Waits (at most the wait bound) for a create's share.
    pub async fn reserve(&self, body_bytes: u64) -> Result<CreateMemory, ArtifactError> {
        let total = u64::from(self.total_units);
        let want = units(Self::cost_of(body_bytes)).min(total);
        let overhead = units(CREATE_OVERHEAD_BYTES).min(want);
        let acquire = self
            .permits
            .clone()
            .acquire_many_owned(u32::try_from(want).unwrap_or(self.total_units));
        match tokio::time::timeout(self.wait, acquire).await {
            Ok(Ok(permit)) => Ok(CreateMemory {
                permit,
                overhead_units: u32::try_from(overhead).unwrap_or(0),
            }),
            Ok(Err(_closed)) => Err(ArtifactError::Internal(
                "the create memory budget is closed".into(),
            )),
            Err(_elapsed) => {
                tracing::warn!(
                    body_bytes,
                    budget_bytes = self.total_bytes,
                    wait_ms = self.wait.as_millis() as u64,
                    "create refused: the create memory budget stayed full"
                );
                Err(ArtifactError::ServerBusy {
                    retry_after_secs: BUSY_RETRY_AFTER_SECS,
                })
            }
        }
    }

    /// Bytes of the budget not held by any create.
    pub fn available_bytes(&self) -> u64 {
        (self.permits.available_permits() as u64).saturating_mul(UNIT)
    }
}

impl CreateMemory {
    /// Gives back all but the overhead: the payload is decoded, its body
    /// and ELF copy are freed.
    pub fn release_payload(&mut self) {
        let held = self.permit.num_permits();
        let keep = self.overhead_units as usize;
        if held > keep {
            drop(self.permit.split(held - keep));
        }
    }

    /// Bytes this create holds.
    pub fn held_bytes(&self) -> u64 {
        (self.permit.num_permits() as u64).saturating_mul(UNIT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    #[tokio::test]
    async fn creates_share_the_budget_and_give_back_the_payload_part() {
        let budget = CreateMemoryBudget::new(100 * MIB, Duration::from_millis(50));
        let mut a = budget.reserve(50 * MIB).await.unwrap();
        assert_eq!(a.held_bytes(), 50 * MIB + CREATE_OVERHEAD_BYTES);
        // 42 MiB left: a second 50 MiB create must wait, and is refused.
        let refused = budget.reserve(50 * MIB).await.unwrap_err();
        assert!(
            matches!(refused, ArtifactError::ServerBusy { retry_after_secs } if retry_after_secs > 0),
            "{refused:?}"
        );
        let wire = crate::http::error::RestError::from(refused);
        assert_eq!(
            (wire.code.status().as_u16(), wire.code.as_str()),
            (503, "server_busy")
        );
        a.release_payload();
        assert_eq!(a.held_bytes(), CREATE_OVERHEAD_BYTES);
        let b = budget.reserve(50 * MIB).await.unwrap();
        drop((a, b));
        assert_eq!(budget.available_bytes(), 100 * MIB);
    }

    #[tokio::test]
    async fn a_create_larger_than_the_budget_runs_alone() {
        let budget = CreateMemoryBudget::new(10 * MIB, Duration::from_millis(50));
        let big = budget.reserve(100 * MIB).await.unwrap();
        assert_eq!(big.held_bytes(), 10 * MIB);
        assert!(budget.reserve(1).await.is_err());
        drop(big);
        assert!(budget.reserve(1).await.is_ok());
    }

    #[tokio::test]
    async fn a_waiting_create_gets_its_share_when_one_finishes() {
        let budget = Arc::new(CreateMemoryBudget::new(20 * MIB, Duration::from_secs(5)));
        let first = budget.reserve(10 * MIB).await.unwrap();
        let waiting = {
            let budget = budget.clone();
            tokio::spawn(async move { budget.reserve(10 * MIB).await.map(|m| m.held_bytes()) })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        drop(first);
        assert_eq!(waiting.await.unwrap().unwrap(), 18 * MIB);
    }
}

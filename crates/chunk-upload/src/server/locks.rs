//! One writer per upload, with prompt takeover from a writer that stalled.
//!
//! A PATCH holds its upload's slot while it reads the body. A second PATCH finds the slot
//! taken: if the holder has received bytes recently it is refused (423), because two
//! writers would interleave bytes; if the holder has stalled for longer than the takeover
//! time (a client whose connection died without a FIN), the newcomer cancels it, waits
//! for it to commit what arrived, and proceeds. A HEAD or DELETE always stops a running
//! writer first, so the offset it reports is final rather than a moving target.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::id::UploadId;

#[derive(Debug, Default)]
pub(crate) struct Locks {
    slots: Mutex<HashMap<UploadId, Arc<Slot>>>,
}

#[derive(Debug, Default)]
struct Slot {
    state: Mutex<Option<Active>>,
    released: Notify,
}

#[derive(Debug)]
struct Active {
    token: CancellationToken,
    last_progress: Instant,
}

/// Why the slot could not be had.
#[derive(Debug)]
pub(crate) struct Busy;

/// Held by the one writer of an upload; releasing it wakes whoever waits.
#[derive(Debug)]
pub(crate) struct WriteGuard {
    locks: Arc<Locks>,
    id: UploadId,
    slot: Arc<Slot>,
    token: CancellationToken,
}

impl WriteGuard {
    /// Cancelled when another request takes over.
    pub(crate) fn interrupted(&self) -> &CancellationToken {
        &self.token
    }

    /// Records that bytes arrived, so the writer does not count as stalled.
    pub(crate) fn progress(&self) {
        if let Some(active) = lock(&self.slot.state).as_mut() {
            active.last_progress = Instant::now();
        }
    }
}

impl Drop for WriteGuard {
    fn drop(&mut self) {
        *lock(&self.slot.state) = None;
        self.slot.released.notify_waiters();

        // Forget the slot when nobody else holds it; clones are only made under the map
        // lock, so the count cannot grow behind our back.
        let mut slots = lock(&self.locks.slots);
        if Arc::strong_count(&self.slot) == 2 {
            slots.remove(&self.id);
        }
    }
}

impl Locks {
    fn slot(&self, id: &UploadId) -> Arc<Slot> {
        lock(&self.slots).entry(id.clone()).or_default().clone()
    }

    /// Takes the writer slot of `id`. With `force`, a running writer is always stopped;
    /// without, only one that has received nothing for `takeover_after`.
    pub(crate) async fn acquire(
        self: &Arc<Self>,
        id: &UploadId,
        force: bool,
        takeover_after: Duration,
        wait: Duration,
    ) -> Result<WriteGuard, Busy> {
        let now = Instant::now();
        let deadline = now
            .checked_add(wait)
            .unwrap_or(now + Duration::from_secs(86_400));
        loop {
            let slot = self.slot(id);
            let released = slot.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();

            {
                let mut state = lock(&slot.state);
                match state.as_ref() {
                    None => {
                        let token = CancellationToken::new();
                        *state = Some(Active {
                            token: token.clone(),
                            last_progress: Instant::now(),
                        });
                        drop(state);
                        return Ok(WriteGuard {
                            locks: self.clone(),
                            id: id.clone(),
                            slot: slot.clone(),
                            token,
                        });
                    }
                    Some(active) => {
                        let stalled = active.last_progress.elapsed() >= takeover_after;
                        if !force && !stalled {
                            return Err(Busy);
                        }
                        debug!(upload = %id, stalled, "stopping the current writer");
                        active.token.cancel();
                    }
                }
            }

            if tokio::time::timeout_at(deadline, released).await.is_err() {
                return Err(Busy);
            }
        }
    }

    /// Stops a running writer of `id`, if any, and waits until it has committed.
    pub(crate) async fn quiesce(
        self: &Arc<Self>,
        id: &UploadId,
        wait: Duration,
    ) -> Result<(), Busy> {
        self.acquire(id, true, Duration::ZERO, wait).await.map(drop)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The data behind these locks stays consistent even if a holder panicked.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> UploadId {
        UploadId::random()
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_writer_is_not_taken_over() {
        let locks = Arc::new(Locks::default());
        let id = id();
        let first = locks
            .acquire(&id, false, Duration::from_secs(2), Duration::from_secs(1))
            .await
            .unwrap();
        first.progress();
        assert!(
            locks
                .acquire(&id, false, Duration::from_secs(2), Duration::from_secs(1))
                .await
                .is_err()
        );
        assert!(!first.interrupted().is_cancelled());
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_writer_is_taken_over_once_it_releases() {
        let locks = Arc::new(Locks::default());
        let id = id();
        let first = locks
            .acquire(&id, false, Duration::from_secs(2), Duration::from_secs(1))
            .await
            .unwrap();
        tokio::time::advance(Duration::from_secs(3)).await;

        let token = first.interrupted().clone();
        let releaser = tokio::spawn(async move {
            token.cancelled().await;
            drop(first);
        });
        let second = locks
            .acquire(&id, false, Duration::from_secs(2), Duration::from_secs(1))
            .await;
        assert!(second.is_ok());
        releaser.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn slots_are_forgotten_when_released() {
        let locks = Arc::new(Locks::default());
        let guard = locks
            .acquire(&id(), false, Duration::ZERO, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(lock(&locks.slots).len(), 1);
        drop(guard);
        assert!(lock(&locks.slots).is_empty());
    }
}

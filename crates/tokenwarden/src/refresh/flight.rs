//! Single flight: concurrent callers for one key share one run of a task.
//!
//! The task is spawned, not polled by the first caller, so a caller that goes away (an HTTP
//! client disconnecting) never cancels a refresh half way: a rotated refresh token the
//! provider has already issued still gets committed. The spawned task removes its own entry
//! when done, so the next caller after completion starts a fresh run. Tasks are spawned on a
//! `TaskTracker` the owner passes in, so the owner can wait for them at shutdown.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use futures::FutureExt as _;
use futures::future::{BoxFuture, Shared};
use tokio_util::task::TaskTracker;

/// Deduplicates concurrent runs per key.
#[derive(Debug)]
pub struct Flights<K, T: Clone> {
    running: Mutex<HashMap<K, Shared<BoxFuture<'static, Option<T>>>>>,
    tasks: TaskTracker,
}

impl<K, T: Clone> Default for Flights<K, T> {
    /// Flights on a tracker of their own.
    fn default() -> Self {
        Self::with_tracker(TaskTracker::new())
    }
}

impl<K, T: Clone> Flights<K, T> {
    /// Flights whose tasks run on `tasks`.
    pub fn with_tracker(tasks: TaskTracker) -> Self {
        Self {
            running: Mutex::new(HashMap::new()),
            tasks,
        }
    }
}

impl<K, T> Flights<K, T>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    T: Clone + Send + Sync + 'static,
{
    /// Joins the run in flight for `key`, or spawns `task` as the new one. Returns the
    /// result and whether this caller joined an existing run. `None` if the task panicked.
    pub async fn run<F>(self: &Arc<Self>, key: K, task: impl FnOnce() -> F) -> (Option<T>, bool)
    where
        F: Future<Output = T> + Send + 'static,
    {
        let (shared, joined) = {
            let mut running = self.lock();
            if let Some(existing) = running.get(&key) {
                (existing.clone(), true)
            } else {
                let this = Arc::clone(self);
                let task = task();
                let entry_key = key.clone();
                let handle = self.tasks.spawn(async move {
                    let out = task.await;
                    this.lock().remove(&entry_key);
                    out
                });
                let shared = handle.map(Result::ok).boxed().shared();
                running.insert(key, shared.clone());
                (shared, false)
            }
        };
        let out = shared.await;
        if out.is_none() {
            // The task panicked before it could remove its entry.
            self.lock().retain(|_, f| f.peek().is_none());
        }
        (out, joined)
    }

    /// Number of runs in flight.
    pub fn in_flight(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Shared<BoxFuture<'static, Option<T>>>>> {
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_one_run() {
        let flights: Arc<Flights<&'static str, u32>> = Arc::default();
        let runs = Arc::new(AtomicU32::new(0));
        let mut handles = Vec::new();
        for _ in 0..50 {
            let flights = Arc::clone(&flights);
            let runs = Arc::clone(&runs);
            handles.push(tokio::spawn(async move {
                flights
                    .run("k", || async move {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        runs.fetch_add(1, Ordering::SeqCst) + 1
                    })
                    .await
            }));
        }
        let mut joined = 0;
        for h in handles {
            let (out, j) = h.await.expect("join");
            assert_eq!(out, Some(1));
            joined += u32::from(j);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(joined, 49);
        assert_eq!(flights.in_flight(), 0);
        // A later call runs again.
        let (out, joined) = flights.run("k", || async { 7 }).await;
        assert_eq!((out, joined), (Some(7), false));
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_leader_does_not_cancel_the_run() {
        let flights: Arc<Flights<u8, u8>> = Arc::default();
        let done = Arc::new(AtomicU32::new(0));
        let d = Arc::clone(&done);
        let leader = {
            let flights = Arc::clone(&flights);
            tokio::spawn(async move {
                flights
                    .run(1, || async move {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        d.fetch_add(1, Ordering::SeqCst);
                        5
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        leader.abort();
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            done.load(Ordering::SeqCst),
            1,
            "the task finished on its own"
        );
        assert_eq!(flights.in_flight(), 0);
    }

    #[tokio::test]
    async fn panicking_task_reports_none_and_clears() {
        let flights: Arc<Flights<u8, u8>> = Arc::default();
        let (out, _) = flights.run(1, || async { panic!("boom") }).await;
        assert_eq!(out, None);
        assert_eq!(flights.in_flight(), 0);
    }
}

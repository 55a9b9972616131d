//! The scheduler loop: claims due connections in batches (leasing them in the database, so
//! several instances share the work without overlap) and refreshes them through the same
//! single-flight path as token requests, at most `scheduler.concurrency` at a time. It sleeps
//! until the next due time, a change, or `scheduler.max_idle`. Errors are logged and backed
//! off; the loop never dies. At shutdown it lets the refreshes it started finish, within a
//! bound.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::time::Instant;

use crate::error::ErrorCode;
use crate::metrics as m;
use crate::store::Claimed;
use crate::warden::{Inner, Trigger};

/// How often the scheduler refreshes its queue-size gauges.
const QUEUE_STATS_EVERY: Duration = Duration::from_secs(5);

/// How long a stopping scheduler waits for the refreshes it started.
const SCHEDULER_DRAIN: Duration = Duration::from_secs(10);

/// How long the scheduler waits before looking again at due work it could not claim.
const IDLE_RECHECK: Duration = Duration::from_millis(250);

/// `scheduler_sleeps_until` while the scheduler loop is not sleeping: it will look at the
/// schedule anyway, so no change needs to wake it.
pub(crate) const AWAKE: i64 = i64::MIN;

/// Whether a connection now due at `next_refresh_at` should wake a scheduler that sleeps
/// until `sleeps_until` (unix seconds, or [`AWAKE`]). Refreshes elsewhere move the schedule
/// later and wake nobody; an import due now wakes everyone sleeping past it.
pub(crate) fn wakes_scheduler(next_refresh_at: Option<OffsetDateTime>, sleeps_until: i64) -> bool {
    next_refresh_at.is_some_and(|at| at.unix_timestamp() < sleeps_until)
}

impl Inner {
    /// Runs the loop until `shutdown` completes (see the module docs).
    pub(crate) async fn run_scheduler(
        self: &Arc<Self>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let config = &self.scheduler;
        let permits = Arc::new(tokio::sync::Semaphore::new(config.concurrency.max(1)));
        let claim_low_water = u32::try_from(config.concurrency / 4)
            .unwrap_or(u32::MAX)
            .max(1);
        let mut tasks = tokio::task::JoinSet::new();
        let mut shutdown = std::pin::pin!(shutdown);
        let mut stats_at: Option<Instant> = None;
        tracing::info!(instance = %self.instance_id, "refresh scheduler started");
        loop {
            while tasks.try_join_next().is_some() {}
            let now = self.clock.now();
            if stats_at.is_none_or(|at| at.elapsed() >= QUEUE_STATS_EVERY) {
                stats_at = Some(Instant::now());
                self.update_queue_gauges(now).await;
            }
            // Claim only what can start now: a claimed row is leased, and a lease held by a
            // row waiting for a permit would block other instances (and, after a crash, this
            // one) for nothing.
            // While refreshes run, wait until a quarter of the permits are free before
            // claiming again: every claim is a durable commit, and claiming one row each
            // time a refresh finishes would double the commits per refresh.
            let free = u32::try_from(permits.available_permits()).unwrap_or(u32::MAX);
            if free == 0 || (!tasks.is_empty() && free < claim_low_water) {
                tokio::select! {
                    Some(_) = tasks.join_next() => continue,
                    () = &mut shutdown => break,
                }
            }
            let limit = config.batch_size.min(free);
            let lease_until = now + self.refresh.lease_ttl;
            let claimed = match self
                .store
                .claim_due(now, limit, &self.instance_id, lease_until)
                .await
            {
                Ok(keys) => keys,
                Err(e) => {
                    tracing::error!(error = %e, "scheduler could not claim due connections");
                    tokio::select! {
                        () = tokio::time::sleep(config.max_idle.min(Duration::from_secs(5))) => continue,
                        () = &mut shutdown => break,
                    }
                }
            };
            let full_batch = claimed.len() >= limit as usize;
            for claim in claimed {
                let permit = tokio::select! {
                    p = Arc::clone(&permits).acquire_owned() => p,
                    () = &mut shutdown => { tasks.shutdown().await; return; }
                };
                let Ok(permit) = permit else { break };
                let this = Arc::clone(self);
                tasks.spawn(async move {
                    let _permit = permit;
                    this.scheduled_refresh(claim).await;
                });
            }
            if full_batch {
                continue;
            }
            let next = self.store.next_due().await.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "scheduler could not read the next due time");
                None
            });
            let sleep_for = next.map_or(config.max_idle, |at| {
                Duration::try_from(at - self.clock.now())
                    .unwrap_or(Duration::ZERO)
                    .min(config.max_idle)
            });
            // Due work that we could not claim is being refreshed (by us or another
            // instance): wait for a refresh to finish instead of polling.
            let sleep_for = if sleep_for.is_zero() {
                IDLE_RECHECK
            } else {
                sleep_for
            };
            let wake_at = self.clock.now() + sleep_for;
            self.scheduler_sleeps_until
                .store(wake_at.unix_timestamp(), Ordering::Relaxed);
            tokio::select! {
                () = tokio::time::sleep(sleep_for) => {}
                () = self.wakeup.notified() => {}
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                () = &mut shutdown => break,
            }
            self.scheduler_sleeps_until.store(AWAKE, Ordering::Relaxed);
        }
        // Let refreshes in flight finish (they may hold rotated tokens to commit, and their
        // leases would otherwise block the connection until they lapse), within a bound.
        let drain = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(SCHEDULER_DRAIN, drain).await.is_err() {
            tracing::warn!("scheduled refreshes still running at shutdown were abandoned");
        }
        tasks.shutdown().await;
        tracing::info!("refresh scheduler stopped");
    }

    async fn scheduled_refresh(self: &Arc<Self>, claim: Claimed) {
        let key = &claim.key;
        // A row the claim could not read is read again by the refresh, which reports why.
        let claimed = claim.connection.ok();
        metrics::counter!(m::AUTO_REFRESH_TOTAL, "provider" => key.provider.to_string(),
            "trigger" => "scheduled")
        .increment(1);
        let policy = self.refresh.retry;
        if let Err(e) = self
            .join_refresh(key, Trigger::Scheduled, policy, claimed)
            .await
        {
            if e.code() == ErrorCode::UnknownProvider {
                // The provider was removed from the configuration: look again much later.
                let at = self.clock.now() + self.scheduler.max_retry_delay;
                self.reschedule(key, at).await;
            }
            tracing::debug!(provider = %key.provider, account_id = %key.account_id,
                code = %e.code(), "scheduled refresh did not complete");
        }
    }

    async fn update_queue_gauges(&self, now: OffsetDateTime) {
        match self.store.queue_stats(now).await {
            Ok(stats) => {
                #[allow(clippy::cast_precision_loss)]
                for (state, n) in [
                    ("scheduled", stats.scheduled),
                    ("due", stats.due_now),
                    ("retrying", stats.retrying),
                ] {
                    metrics::gauge!(m::REFRESH_QUEUE, "state" => state).set(n as f64);
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not read refresh queue sizes"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{AWAKE, wakes_scheduler};

    #[test]
    fn only_work_due_before_the_planned_wake_up_wakes_a_sleeping_scheduler() {
        let at = |s: i64| Some(time::OffsetDateTime::from_unix_timestamp(s).expect("time"));
        // Sleeping until 1000: an import due at 990 wakes it; a refresh that moved the next
        // run to 4600 does not, nor does a deletion (no next run).
        assert!(wakes_scheduler(at(990), 1000));
        assert!(!wakes_scheduler(at(4600), 1000));
        assert!(!wakes_scheduler(at(1000), 1000));
        assert!(!wakes_scheduler(None, 1000));
        // Awake: it looks at the schedule anyway.
        assert!(!wakes_scheduler(at(0), AWAKE));
    }
}

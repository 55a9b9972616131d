//! The lease protocol: across instances sharing one database, only the holder of a
//! connection's lease calls the provider; the others wait for its result.
//!
//! The lease is a pair of columns on the connection's row (`Store::try_lease`). The holder
//! renews it every third of `refresh.lease_ttl` while it works, so the lease can stay short;
//! the commit of the refresh's result releases it in the same statement. A caller that finds
//! the lease taken watches the row (change reports where the store sends them, polling
//! otherwise) until its version moves, then answers with what the other instance stored.
//!
//! Within one process, single flight (`flight`) already keeps it to one refresh per
//! connection; this module is the second, cross-process guard.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::connection::{Connection, ConnectionKey, ConnectionStatus};
use crate::error::{Error, ErrorCode, FailureClass};
use crate::refresh::BreakerState;
use crate::refresh::errors;
use crate::refresh::policy::RetryPolicy;
use crate::warden::{Inner, RefreshOutcome, Trigger};

/// Longest a caller waits for another instance's refresh before answering
/// `TOKEN_REFRESH_ERROR` with a retry-after hint.
const MAX_WAIT_FOR_OTHER: Duration = Duration::from_secs(30);

/// How often a caller waiting for another instance's refresh looks at the database.
const LEASE_POLL: Duration = Duration::from_millis(50);

impl Inner {
    /// One refresh of one connection, run inside its single-flight slot: takes the
    /// connection's lease (a scheduled refresh already holds it from its claim), refreshes
    /// and records the result while renewing the lease, and releases it; or, when another
    /// instance holds the lease, waits for that instance's result.
    pub(crate) async fn refresh_exclusively(
        &self,
        key: &ConnectionKey,
        trigger: Trigger,
        policy: RetryPolicy,
        claimed: Option<Connection>,
    ) -> RefreshOutcome {
        let entry = self
            .providers
            .get(&key.provider)
            .ok_or_else(|| errors::unknown_provider(&key.provider))?;
        // Fail fast while the breaker is open, before touching the database.
        if let BreakerState::Open { retry_after } = entry.breaker.state()
            && !retry_after.is_zero()
        {
            if trigger == Trigger::Scheduled {
                self.reschedule(key, self.clock.now() + retry_after).await;
            }
            return Err(errors::circuit_open(key, retry_after));
        }
        let lease_ttl = self.refresh.lease_ttl;
        let deadline = Instant::now() + self.refresh.worst_case(&policy).min(MAX_WAIT_FOR_OTHER);
        let mut seen_version = None;
        loop {
            // Armed before looking, so a change reported while we look is not missed.
            let changed = self.changed.notified();
            let mut changed = std::pin::pin!(changed);
            changed.as_mut().enable();
            let now = self.clock.now();
            let leased = trigger == Trigger::Scheduled
                || self
                    .store
                    .try_lease(key, &self.instance_id, now, now + lease_ttl)
                    .await
                    .map_err(|e| errors::from_store(e, key))?;
            if leased {
                // Set when the refresh's own commit released the lease, which saves a write.
                let released = AtomicBool::new(false);
                let result = tokio::select! {
                    biased;
                    result = self.refresh_and_record(entry, key, trigger, policy, &released, claimed) => result,
                    () = self.renew_lease(key, &released) => unreachable!("the renewal loop never ends"),
                };
                if !released.load(Ordering::Relaxed)
                    && let Err(e) = self.store.release_lease(key, &self.instance_id).await
                {
                    tracing::warn!(provider = %key.provider, account_id = %key.account_id,
                        error = %e, "could not release the refresh lease; it will expire");
                }
                return result;
            }
            // Another instance is refreshing: wait for its result rather than refresh twice.
            let conn = self.load(key).await?;
            match seen_version {
                None => seen_version = Some(conn.meta.version),
                Some(v) if v != conn.meta.version => return self.outcome_of_other(conn),
                Some(_) => {}
            }
            if Instant::now() >= deadline {
                return Err(Error::new(
                    ErrorCode::TokenRefreshError,
                    "timed out waiting for another instance's refresh",
                )
                .with_retry_after(Some(Duration::from_secs(1))));
            }
            // The owner's commit is reported as a change where the store reports them;
            // polling covers the rest.
            tokio::select! {
                () = tokio::time::sleep(LEASE_POLL) => {}
                () = changed => {}
            }
        }
    }

    /// Renews `key`'s lease every third of `lease_ttl`, forever (the caller drops it), so a
    /// crashed instance holds the connection for at most `lease_ttl`. Renewal never takes a
    /// free lease: one racing the commit that released it must not hold the connection again
    /// for a whole lease.
    async fn renew_lease(&self, key: &ConnectionKey, released: &AtomicBool) {
        let lease_ttl = self.refresh.lease_ttl;
        loop {
            tokio::time::sleep(lease_ttl / 3).await;
            let until = self.clock.now() + lease_ttl;
            let renewed = self.store.renew_lease(key, &self.instance_id, until).await;
            if !matches!(renewed, Ok(true)) && !released.load(Ordering::Relaxed) {
                tracing::warn!(provider = %key.provider, account_id = %key.account_id,
                    "could not renew the refresh lease");
            }
        }
    }

    /// What a refresh finished by another instance means for this caller.
    fn outcome_of_other(&self, conn: Connection) -> RefreshOutcome {
        let meta = &conn.meta;
        if meta.status == ConnectionStatus::NeedsReconnect {
            let e = errors::needs_reconnect(&conn);
            if meta.expires_at.is_some_and(|at| at <= self.clock.now()) {
                return Err(e);
            }
            return Err(Error::new(ErrorCode::TokenRefreshError, e.message())
                .with_reconnect(true)
                .with_meta(e.meta().clone()));
        }
        if let Some(last) = &meta.last_error
            && meta.last_refreshed_at.is_none_or(|ok_at| last.at > ok_at)
        {
            let failure = Some(FailureClass::Transient);
            return Err(
                Error::new(ErrorCode::TokenRefreshError, last.message.clone())
                    .with_meta(errors::key_meta(conn.key(), failure)),
            );
        }
        self.remember(&conn);
        Ok(std::sync::Arc::new(conn))
    }
}

//! The delivery loop: fans written events out to the endpoints subscribed to them, claims due
//! deliveries (each attempt by exactly one instance: the claim is a lease), sends them with
//! bounded concurrency per endpoint, and records each answer: delivered, retried later
//! (backoff, `Retry-After`), or failed once `retry_for` has passed. An endpoint that keeps
//! failing is paused by its own breaker and is not claimed for meanwhile, so a slow or dead
//! endpoint never takes the others' turns. Provider breaker changes become events here.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::task::TaskTracker;

use crate::clock::Clock;
use crate::refresh::CircuitChange;
use crate::store::{Store, StoreError};
use crate::webhooks::delivery::{self, Attempt, Next, RetrySchedule};
use crate::webhooks::outbox::{ClaimedDelivery, DeliveryOutcome, NewEvent};
use crate::webhooks::{EndpointConfig, EventType};

/// Metric: delivery attempts by endpoint and outcome (`delivered`, `retry`, `failed`).
pub const WEBHOOK_DELIVERIES_TOTAL: &str = "tokenwarden_webhook_deliveries_total";
/// Metric: deliveries by state (`pending`, `due`, `failed`, `delivered`, `undispatched`).
pub const WEBHOOK_QUEUE: &str = "tokenwarden_webhook_queue";

/// Attempts in flight per endpoint.
const PER_ENDPOINT_CONCURRENCY: usize = 4;
/// Consecutive failed attempts that pause an endpoint, and for how long.
const ENDPOINT_BREAKER_FAILURES: u32 = 5;
const ENDPOINT_BREAKER_OPEN: Duration = Duration::from_secs(30);
/// How often the loop looks for work when nothing wakes it: events written by other
/// instances are seen within this (SPEC: out within 2 s).
const POLL: Duration = Duration::from_millis(500);
/// How often the queue gauge is recomputed.
const GAUGE_EVERY: Duration = Duration::from_secs(1);
/// Events fanned out per transaction.
const DISPATCH_BATCH: u32 = 500;
/// Deliveries claimed per round.
const CLAIM_BATCH: u32 = 64;
/// How often old events are looked for (by the worker's clock), how many go per statement,
/// and at most how many statements one look makes (the rest waits for the next look).
const PURGE_EVERY: Duration = Duration::from_secs(600);
const PURGE_BATCH: u32 = 1_000;
const PURGE_STATEMENTS: u32 = 20;

/// The webhooks' settings.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub endpoints: Vec<EndpointConfig>,
    pub schedule: RetrySchedule,
    /// How long an event and its deliveries are kept once nothing is pending (listed,
    /// retried by hand). Default 7 days.
    pub keep: Duration,
}

/// The default of [`WebhookConfig::keep`].
pub const DEFAULT_KEEP: Duration = Duration::from_secs(7 * 86_400);

/// Delivers webhook events. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Webhooks {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<dyn Store>,
    endpoints: HashMap<String, Endpoint>,
    routes: Vec<(String, BTreeSet<EventType>)>,
    schedule: RetrySchedule,
    clock: Arc<dyn Clock>,
    client: reqwest::Client,
    owner: String,
    wake: Notify,
    circuit_tx: mpsc::UnboundedSender<CircuitChange>,
    circuit_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<CircuitChange>>,
    tasks: TaskTracker,
    /// When the queue gauge was last computed (it counts every delivery: at most once a
    /// second, not once a round).
    last_gauge: Mutex<Option<std::time::Instant>>,
    keep: Duration,
    /// When old events were last looked for (the worker's clock).
    last_purge: Mutex<Option<OffsetDateTime>>,
    /// Attempts started and not yet recorded, and who waits for them to settle.
    in_flight: std::sync::atomic::AtomicUsize,
    settled: Notify,
}

#[derive(Debug)]
struct Endpoint {
    config: EndpointConfig,
    permits: Arc<Semaphore>,
    health: Mutex<Health>,
}

#[derive(Debug, Default)]
struct Health {
    failures: u32,
    paused_until: Option<OffsetDateTime>,
}

impl Webhooks {
    /// Delivery for `config.endpoints` over `store`; `owner` names this instance in leases.
    /// Turns the store's outbox on when there is at least one endpoint.
    pub fn new(
        store: Arc<dyn Store>,
        config: WebhookConfig,
        clock: Arc<dyn Clock>,
        owner: impl Into<String>,
    ) -> Result<Self, reqwest::Error> {
        store.set_outbox(!config.endpoints.is_empty());
        let routes = config
            .endpoints
            .iter()
            .map(|e| (e.name.clone(), e.events.clone()))
            .collect();
        let endpoints = config
            .endpoints
            .into_iter()
            .map(|config| {
                (
                    config.name.clone(),
                    Endpoint {
                        config,
                        permits: Arc::new(Semaphore::new(PER_ENDPOINT_CONCURRENCY)),
                        health: Mutex::new(Health::default()),
                    },
                )
            })
            .collect();
        let (circuit_tx, circuit_rx) = mpsc::unbounded_channel();
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                endpoints,
                routes,
                schedule: config.schedule,
                keep: config.keep,
                last_purge: Mutex::new(None),
                clock,
                client: delivery::client()?,
                owner: owner.into(),
                wake: Notify::new(),
                circuit_tx,
                circuit_rx: tokio::sync::Mutex::new(circuit_rx),
                tasks: TaskTracker::new(),
                last_gauge: Mutex::new(None),
                in_flight: std::sync::atomic::AtomicUsize::new(0),
                settled: Notify::new(),
            }),
        })
    }

    /// Where provider breakers report (give it to `WardenBuilder::circuit_changes`).
    pub fn circuit_changes(&self) -> mpsc::UnboundedSender<CircuitChange> {
        self.inner.circuit_tx.clone()
    }

    /// Whether any endpoint is configured.
    pub fn enabled(&self) -> bool {
        !self.inner.endpoints.is_empty()
    }

    /// The configured endpoint names.
    pub fn endpoint_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.inner.endpoints.keys().cloned().collect();
        names.sort();
        names
    }

    /// Looks for work now instead of at the next poll.
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// Queues a `webhook.test` event for one endpoint; its id, or `None` when no endpoint
    /// has that name.
    pub async fn send_test(&self, endpoint: &str) -> Result<Option<String>, StoreError> {
        if !self.inner.endpoints.contains_key(endpoint) {
            return Ok(None);
        }
        let now = self.inner.clock.now();
        let event = NewEvent::new(
            EventType::WebhookTest,
            now,
            serde_json::json!({"endpoint": endpoint}),
        )
        .only_to(endpoint);
        let id = event.id.clone();
        self.inner.store.insert_events(&[event]).await?;
        self.wake();
        Ok(Some(id))
    }

    /// Delivers until `shutdown` resolves, then waits for the attempts in flight.
    pub async fn run(&self, shutdown: impl std::future::Future<Output = ()>) {
        if !self.enabled() {
            shutdown.await;
            return;
        }
        tokio::pin!(shutdown);
        loop {
            if let Err(e) = self.round().await {
                tracing::warn!(error = %e, "webhook delivery round failed; retrying");
            }
            tokio::select! {
                () = &mut shutdown => break,
                () = self.inner.wake.notified() => {}
                () = tokio::time::sleep(POLL) => {}
            }
        }
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }

    /// One round: provider events, fan-out, claims, sends (in the background).
    pub async fn round(&self) -> Result<(), StoreError> {
        let inner = &self.inner;
        self.record_circuit_changes().await?;
        let now = inner.clock.now();
        while inner
            .store
            .dispatch_events(&inner.routes, now, DISPATCH_BATCH)
            .await?
            == u64::from(DISPATCH_BATCH)
        {}
        self.purge_old_events(now).await;
        let capacity = self.capacity(now);
        if capacity.is_empty() {
            self.update_queue_gauge(now).await;
            return Ok(());
        }
        let longest = inner
            .endpoints
            .values()
            .map(|e| e.config.timeout)
            .max()
            .unwrap_or(Duration::from_secs(10));
        // The lease outlives the attempt (its timeout) with room to record the answer.
        let lease_until = now + longest + Duration::from_secs(30);
        let claimed = inner
            .store
            .claim_deliveries(now, &inner.owner, lease_until, CLAIM_BATCH, &capacity)
            .await?;
        for delivery in claimed {
            let Some(endpoint) = inner.endpoints.get(&delivery.endpoint) else {
                // An endpoint removed from the configuration: its deliveries wait, pending,
                // until it comes back (or they are listed as such).
                continue;
            };
            let permit = match Arc::clone(&endpoint.permits).try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => continue,
            };
            let this = self.clone();
            inner
                .in_flight
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            inner.tasks.spawn(async move {
                this.deliver(delivery).await;
                drop(permit);
                // A slot is free: look for the next delivery now, not at the next poll.
                this.inner.wake.notify_one();
                if this
                    .inner
                    .in_flight
                    .fetch_sub(1, std::sync::atomic::Ordering::SeqCst)
                    == 1
                {
                    this.inner.settled.notify_waiters();
                }
            });
        }
        self.update_queue_gauge(now).await;
        Ok(())
    }

    /// Whether events wait to be fanned out or deliveries are due now (by this worker's clock).
    pub async fn has_due_work(&self) -> bool {
        let now = self.inner.clock.now();
        self.inner
            .store
            .webhook_queue_stats(now)
            .await
            .is_ok_and(|s| s.due > 0 || s.undispatched > 0)
    }

    /// Waits until every attempt started so far has been recorded (tests drive rounds with
    /// this instead of sleeping).
    pub async fn settle(&self) {
        loop {
            let settled = self.inner.settled.notified();
            if self
                .inner
                .in_flight
                .load(std::sync::atomic::Ordering::SeqCst)
                == 0
            {
                return;
            }
            settled.await;
        }
    }

    /// The endpoints to claim for, with their free attempt slots: not those whose slots are
    /// all in use, nor those paused by their breaker.
    fn capacity(&self, now: OffsetDateTime) -> Vec<(String, u32)> {
        self.inner
            .endpoints
            .iter()
            .filter(|(_, e)| {
                lock(&e.health)
                    .paused_until
                    .is_none_or(|until| until <= now)
            })
            .map(|(name, e)| {
                let free = u32::try_from(e.permits.available_permits()).unwrap_or(u32::MAX);
                (name.clone(), free)
            })
            .filter(|(_, free)| *free > 0)
            .collect()
    }

    async fn deliver(&self, delivery: ClaimedDelivery) {
        let inner = &self.inner;
        let Some(endpoint) = inner.endpoints.get(&delivery.endpoint) else {
            return;
        };
        let now = inner.clock.now();
        let answer = delivery::attempt(
            &inner.client,
            &endpoint.config,
            &delivery.event_id,
            delivery.body.as_bytes(),
            now,
        )
        .await;
        let finished_at = inner.clock.now();
        let (outcome, label) = match answer {
            Attempt::Delivered { status } => {
                *lock(&endpoint.health) = Health::default();
                (DeliveryOutcome::Delivered { status }, "delivered")
            }
            Attempt::Failed {
                status,
                retry_after,
                error,
            } => {
                {
                    let mut health = lock(&endpoint.health);
                    health.failures = health.failures.saturating_add(1);
                    if health.failures >= ENDPOINT_BREAKER_FAILURES {
                        health.paused_until = Some(finished_at + ENDPOINT_BREAKER_OPEN);
                    }
                }
                let first = delivery.first_attempt_at.unwrap_or(now);
                match inner.schedule.after_failure(
                    delivery.attempts.saturating_add(1),
                    first,
                    finished_at,
                    retry_after,
                    rand::random::<f64>(),
                ) {
                    Next::RetryAt(at) => (DeliveryOutcome::Retry { at, status, error }, "retry"),
                    Next::GiveUp => (DeliveryOutcome::Failed { status, error }, "failed"),
                }
            }
        };
        metrics::counter!(WEBHOOK_DELIVERIES_TOTAL,
            "endpoint" => delivery.endpoint.clone(), "outcome" => label)
        .increment(1);
        match inner
            .store
            .finish_delivery(&delivery.id, &inner.owner, &outcome, finished_at)
            .await
        {
            Ok(true) => {}
            Ok(false) => tracing::warn!(delivery_id = %delivery.id, endpoint = %delivery.endpoint,
                "delivery lease was lost before its answer was recorded; it will be sent again"),
            Err(e) => tracing::warn!(delivery_id = %delivery.id, error = %e,
                "could not record a delivery's answer; it will be sent again"),
        }
        tracing::debug!(delivery_id = %delivery.id, endpoint = %delivery.endpoint,
            event_type = %delivery.kind.as_str(), outcome = label, "webhook attempt");
    }

    async fn record_circuit_changes(&self) -> Result<(), StoreError> {
        let inner = &self.inner;
        let mut changes = Vec::new();
        {
            let mut rx = inner.circuit_rx.lock().await;
            while let Ok(change) = rx.try_recv() {
                changes.push(change);
            }
        }
        if changes.is_empty() {
            return Ok(());
        }
        let now = inner.clock.now();
        let events: Vec<NewEvent> = changes
            .into_iter()
            .map(|change| {
                let kind = if change.open {
                    EventType::ProviderCircuitOpened
                } else {
                    EventType::ProviderCircuitClosed
                };
                let data = serde_json::json!({
                    "provider": change.provider,
                    "state": if change.open { "open" } else { "closed" },
                });
                NewEvent::new(kind, now, data)
            })
            .collect();
        inner.store.insert_events(&events).await
    }

    /// Deletes events older than `keep` that nothing waits on, at most every
    /// [`PURGE_EVERY`]; a failure is logged and tried again at the next look.
    async fn purge_old_events(&self, now: OffsetDateTime) {
        {
            let mut last = lock(&self.inner.last_purge);
            if last.is_some_and(|at| now - at < PURGE_EVERY) {
                return;
            }
            *last = Some(now);
        }
        let before = now - self.inner.keep;
        let mut deleted = 0;
        for _ in 0..PURGE_STATEMENTS {
            match self
                .inner
                .store
                .purge_webhook_events(before, PURGE_BATCH)
                .await
            {
                Ok(n) => {
                    deleted += n;
                    if n < u64::from(PURGE_BATCH) {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "old webhook events could not be deleted");
                    break;
                }
            }
        }
        if deleted > 0 {
            tracing::info!(deleted, "old webhook events deleted with their deliveries");
        }
    }

    async fn update_queue_gauge(&self, now: OffsetDateTime) {
        {
            let mut last = lock(&self.inner.last_gauge);
            if last.is_some_and(|at| at.elapsed() < GAUGE_EVERY) {
                return;
            }
            *last = Some(std::time::Instant::now());
        }
        if let Ok(stats) = self.inner.store.webhook_queue_stats(now).await {
            for (state, value) in [
                ("pending", stats.pending),
                ("due", stats.due),
                ("failed", stats.failed),
                ("delivered", stats.delivered),
                ("undispatched", stats.undispatched),
            ] {
                #[allow(clippy::cast_precision_loss, reason = "a gauge")]
                metrics::gauge!(WEBHOOK_QUEUE, "state" => state).set(value as f64);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

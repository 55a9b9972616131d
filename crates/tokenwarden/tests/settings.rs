//! The builder refuses settings that cannot work (issue 9, finding 8): the library checks
//! what it is given instead of spinning or overflowing at run time.

mod common;

use std::time::Duration;

use tokenwarden::{BreakerConfig, RefreshConfig, SchedulerConfig, Warden};

fn build_with(
    refresh: RefreshConfig,
    breaker: BreakerConfig,
    scheduler: SchedulerConfig,
) -> Result<Warden, tokenwarden::ConfigError> {
    Warden::builder(common::memory_store())
        .refresh_config(refresh)
        .breaker_config(breaker)
        .scheduler_config(scheduler)
        .build()
}

fn refused_field(
    refresh: RefreshConfig,
    breaker: BreakerConfig,
    scheduler: SchedulerConfig,
) -> &'static str {
    match build_with(refresh, breaker, scheduler) {
        Ok(_) => panic!("settings were accepted"),
        Err(e) => e.field,
    }
}

#[tokio::test]
async fn defaults_build() {
    build_with(
        RefreshConfig::default(),
        BreakerConfig::default(),
        SchedulerConfig::default(),
    )
    .expect("the defaults are valid");
}

#[tokio::test]
async fn issue_9_zero_batch_size_is_refused_not_spun_on() {
    let scheduler = SchedulerConfig {
        batch_size: 0,
        ..SchedulerConfig::default()
    };
    let field = refused_field(
        RefreshConfig::default(),
        BreakerConfig::default(),
        scheduler,
    );
    assert_eq!(field, "scheduler.batch_size");
}

#[tokio::test]
async fn issue_9_zero_concurrency_and_idle_are_refused() {
    for (scheduler, expected) in [
        (
            SchedulerConfig {
                concurrency: 0,
                ..SchedulerConfig::default()
            },
            "scheduler.concurrency",
        ),
        (
            SchedulerConfig {
                max_idle: Duration::ZERO,
                ..SchedulerConfig::default()
            },
            "scheduler.max_idle",
        ),
        (
            SchedulerConfig {
                initial_retry_delay: Duration::ZERO,
                ..SchedulerConfig::default()
            },
            "scheduler.initial_retry_delay",
        ),
    ] {
        let field = refused_field(
            RefreshConfig::default(),
            BreakerConfig::default(),
            scheduler,
        );
        assert_eq!(field, expected);
    }
}

#[tokio::test]
async fn issue_9_zero_lease_is_refused_not_renewed_in_a_busy_loop() {
    let refresh = RefreshConfig {
        lease_ttl: Duration::ZERO,
        ..RefreshConfig::default()
    };
    let field = refused_field(
        refresh,
        BreakerConfig::default(),
        SchedulerConfig::default(),
    );
    assert_eq!(field, "refresh.lease_ttl");
}

#[tokio::test]
async fn issue_9_durations_that_would_overflow_a_deadline_are_refused() {
    let refresh = RefreshConfig {
        lease_ttl: Duration::MAX,
        ..RefreshConfig::default()
    };
    assert_eq!(
        refused_field(
            refresh,
            BreakerConfig::default(),
            SchedulerConfig::default()
        ),
        "refresh.lease_ttl"
    );
    let breaker = BreakerConfig {
        open_for: Duration::MAX,
        ..BreakerConfig::default()
    };
    assert_eq!(
        refused_field(
            RefreshConfig::default(),
            breaker,
            SchedulerConfig::default()
        ),
        "breaker.open_for"
    );
    let scheduler = SchedulerConfig {
        keepalive: Duration::MAX,
        ..SchedulerConfig::default()
    };
    assert_eq!(
        refused_field(
            RefreshConfig::default(),
            BreakerConfig::default(),
            scheduler
        ),
        "scheduler.keepalive"
    );
}

#[tokio::test]
async fn issue_9_retry_policy_is_checked() {
    let mut refresh = RefreshConfig::default();
    refresh.retry.initial_delay = Duration::from_secs(20);
    refresh.retry.max_delay = Duration::from_secs(10);
    assert_eq!(
        refused_field(
            refresh,
            BreakerConfig::default(),
            SchedulerConfig::default()
        ),
        "refresh.retry.initial_delay"
    );
    let mut refresh = RefreshConfig::default();
    refresh.retry.initial_delay = Duration::ZERO;
    assert_eq!(
        refused_field(
            refresh,
            BreakerConfig::default(),
            SchedulerConfig::default()
        ),
        "refresh.retry.initial_delay"
    );
    let breaker = BreakerConfig {
        failure_threshold: 0,
        ..BreakerConfig::default()
    };
    assert_eq!(
        refused_field(
            RefreshConfig::default(),
            breaker,
            SchedulerConfig::default()
        ),
        "breaker.failure_threshold"
    );
}

#[tokio::test]
async fn the_error_names_the_field_and_the_problem() {
    let scheduler = SchedulerConfig {
        batch_size: 0,
        ..SchedulerConfig::default()
    };
    let Err(e) = build_with(
        RefreshConfig::default(),
        BreakerConfig::default(),
        scheduler,
    ) else {
        panic!("accepted");
    };
    assert_eq!(e.to_string(), "scheduler.batch_size: must be at least 1");
}

#[tokio::test]
async fn forced_refresh_options_that_cannot_work_are_refused_by_their_name() {
    let w = build_with(
        RefreshConfig::default(),
        BreakerConfig::default(),
        SchedulerConfig::default(),
    )
    .expect("valid");
    let key = common::key("u1", "a1");
    let options = tokenwarden::RefreshOptions {
        initial_delay: Some(Duration::from_secs(20)),
        max_delay: Some(Duration::from_secs(5)),
        ..tokenwarden::RefreshOptions::default()
    };
    let err = w
        .refresh_token(&key, options)
        .await
        .expect_err("refused before any work");
    assert_eq!(err.code(), tokenwarden::ErrorCode::InvalidRequest);
    assert!(
        err.message().starts_with("initial_delay: "),
        "{}",
        err.message()
    );
}

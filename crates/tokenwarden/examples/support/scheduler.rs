//! One scheduled-refresh round, as the benchmark examples measure it (included with
//! `#[path]`; not an example itself).

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokenwarden::Warden;
use tokenwarden::store::Store;

/// Runs `warden`'s scheduler until the token endpoint's counter (`requests`) reaches `until`
/// and nothing is due, then stops it. The counter is watched first (free), and only then
/// the database (a full count, which would compete with the scheduler).
pub async fn run_until_refreshed(
    warden: &Warden,
    store: &Arc<dyn Store>,
    requests: impl Fn() -> u64,
    until: u64,
) {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let runner = {
        let warden = warden.clone();
        tokio::spawn(async move {
            warden
                .run_scheduler(async {
                    let _ = stop_rx.await;
                })
                .await;
        })
    };
    while requests() < until {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    loop {
        tokio::time::sleep(Duration::from_millis(2)).await;
        let stats = store
            .queue_stats(OffsetDateTime::now_utc())
            .await
            .expect("queue stats");
        if stats.due_now == 0 {
            break;
        }
    }
    let _ = stop_tx.send(());
    runner.await.expect("scheduler");
}

//! Group commit: refresh results that arrive while a commit is in progress share the next
//! one.
//!
//! Every finished refresh must be durable before its token is handed out, and a durable
//! commit costs an fsync (SQLite WAL with `synchronous=FULL`, PostgreSQL with
//! `synchronous_commit = on`). One at a time, the scheduler's throughput is bounded by the
//! disk's fsync rate. Here the first writer starts a committer task; writers that arrive
//! while it commits queue up and go out together in the next commit
//! ([`Store::update_batch_from`]: one statement where the keys are distinct, given each
//! row as its writer read it). There is no timer: a lone write commits at once, and batches
//! grow only as far as writes actually overlap. Each writer still gets its own answer
//! (success, `Conflict`, `NotFound`), and only after the commit that made it durable.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::oneshot;
use tokio_util::task::TaskTracker;

use crate::connection::{Connection, ConnectionMeta};
use crate::store::{Store, StoreError};
use crate::webhooks::outbox::Prior;

type Reply = oneshot::Sender<Result<ConnectionMeta, StoreError>>;

/// Batches [`Store::update`] calls that overlap in time.
#[derive(Debug)]
pub(crate) struct GroupCommit {
    store: Arc<dyn Store>,
    max_batch: usize,
    /// Where committer tasks run, so their owner can wait for them at shutdown.
    tasks: TaskTracker,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Each write with the row as its writer read it (see [`GroupCommit::update`]).
    queue: Vec<(Connection, Prior, Reply)>,
    /// Whether a committer task is running (it drains the queue before it stops).
    committing: bool,
}

impl GroupCommit {
    pub(crate) fn new(store: Arc<dyn Store>, max_batch: usize, tasks: TaskTracker) -> Arc<Self> {
        Arc::new(Self {
            store,
            max_batch: max_batch.max(1),
            tasks,
            state: Mutex::new(State::default()),
        })
    }

    /// [`Store::update`], committed together with the writes that overlap it. `was` is
    /// the row's status and failure count as the caller read it at `conn.meta.version`
    /// (batches pass it on: [`Store::update_batch_from`]).
    pub(crate) async fn update(
        self: &Arc<Self>,
        conn: &Connection,
        was: Prior,
    ) -> Result<ConnectionMeta, StoreError> {
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut state = self.lock();
            state.queue.push((conn.clone(), was, reply));
            !std::mem::replace(&mut state.committing, true)
        };
        if start {
            // A task of its own, so a caller that goes away cannot abandon the others'
            // writes halfway.
            self.tasks.spawn(Arc::clone(self).drain());
        }
        answer.await.unwrap_or_else(|_| {
            Err(StoreError::Database(
                "the commit task stopped before answering".to_owned(),
            ))
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn drain(self: Arc<Self>) {
        let mut guard = Running {
            owner: &self,
            done: false,
        };
        loop {
            let batch: Vec<_> = {
                let mut state = self.lock();
                if state.queue.is_empty() {
                    state.committing = false;
                    guard.done = true;
                    return;
                }
                let n = state.queue.len().min(self.max_batch);
                state.queue.drain(..n).collect()
            };
            let mut conns = Vec::with_capacity(batch.len());
            let mut was = Vec::with_capacity(batch.len());
            let mut replies = Vec::with_capacity(batch.len());
            for (conn, prior, reply) in batch {
                conns.push(conn);
                was.push(prior);
                replies.push(reply);
            }
            let results = self.commit(&conns, &was).await;
            for (reply, result) in replies.into_iter().zip(results) {
                // A writer that went away no longer needs its answer; the write stands.
                let _ = reply.send(result);
            }
        }
    }

    /// One batch: one durable commit, or one row at a time if that failed, so a row the
    /// database refuses cannot fail the rows batched with it.
    async fn commit(
        &self,
        conns: &[Connection],
        was: &[Prior],
    ) -> Vec<Result<ConnectionMeta, StoreError>> {
        #[allow(clippy::cast_precision_loss)] // batches are at most a few hundred rows
        metrics::histogram!(crate::metrics::COMMIT_ROWS).record(conns.len() as f64);
        if let [conn] = conns {
            return vec![self.store.update(conn).await];
        }
        match self.store.update_batch_from(conns, was).await {
            Ok(results) if results.len() == conns.len() => return results,
            Ok(_) => tracing::error!("batched update answered for the wrong number of rows"),
            Err(e) => tracing::warn!(error = %e, rows = conns.len(),
                "batched update failed; writing its rows one by one"),
        }
        let mut results = Vec::with_capacity(conns.len());
        for conn in conns {
            results.push(self.store.update(conn).await);
        }
        results
    }
}

/// Clears the committer's state if its task ends abnormally (panic, runtime shutdown), so
/// later writes start a new committer and queued writers get an error instead of waiting
/// forever.
struct Running<'a> {
    owner: &'a GroupCommit,
    done: bool,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if !self.done {
            let mut state = self.owner.lock();
            state.committing = false;
            // Dropping the replies tells their writers the commit did not happen here.
            state.queue.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::AccessToken;
    use crate::store::MemoryStore;
    use crate::store::failing_writes::FailingWrites;
    use crate::store::fixtures::{sample_connection, test_keys};

    type Recording = FailingWrites<MemoryStore>;

    /// A memory store whose first write is held until the test releases it, and which
    /// refuses every batch if asked.
    fn recording(hold_first: bool, refuse_batches: bool) -> Arc<Recording> {
        let store = FailingWrites::new(MemoryStore::new(test_keys("k1", &["k1"])));
        if hold_first {
            store.hold_next_write();
        }
        if refuse_batches {
            store.refuse_batches();
        }
        Arc::new(store)
    }

    /// Stores `n` connections and returns them as read back (current versions).
    async fn seeded(store: &Recording, n: usize) -> Vec<Connection> {
        let mut out = Vec::new();
        for i in 0..n {
            let mut conn = sample_connection("u", "tiktok", &format!("acct{i}"));
            let (meta, _) = store.put(&conn).await.expect("put");
            conn.meta = meta;
            conn.tokens.access_token = AccessToken::new(format!("new-{i}"));
            out.push(conn);
        }
        out
    }

    fn queued(commits: &GroupCommit) -> usize {
        commits.lock().queue.len()
    }

    type Writers = tokio::task::JoinSet<(usize, Result<ConnectionMeta, StoreError>)>;

    /// Starts one writer per connection: the first is held inside the (gated) store, the
    /// rest queue behind it. Returns once they all have.
    async fn held_and_queued(
        store: &Recording,
        commits: &Arc<GroupCommit>,
        conns: Vec<Connection>,
    ) -> Writers {
        let mut writers = Writers::new();
        let queued_behind = conns.len() - 1;
        for (i, conn) in conns.into_iter().enumerate() {
            let c = Arc::clone(commits);
            writers.spawn(async move { (i, c.update(&conn, Prior::of(&conn.meta)).await) });
            while store.writes().is_empty() {
                tokio::task::yield_now().await;
            }
        }
        while queued(commits) < queued_behind {
            tokio::task::yield_now().await;
        }
        writers
    }

    #[tokio::test]
    async fn writes_arriving_during_a_commit_share_the_next_one() {
        let store = recording(true, false);
        let conns = seeded(&store, 10).await;
        let commits = GroupCommit::new(store.clone(), 64, TaskTracker::new());
        // The first write is held inside the store; the other nine queue behind it.
        let mut writers = held_and_queued(&store, &commits, conns.clone()).await;
        store.release_held();
        while let Some(joined) = writers.join_next().await {
            let (i, result) = joined.expect("writer");
            let meta = result.unwrap_or_else(|e| panic!("writer {i}: {e:?}"));
            assert_eq!(meta.version, conns[i].meta.version + 1, "writer {i}");
            let stored = store.get(conns[i].key()).await.expect("get").expect("row");
            assert_eq!(
                stored.tokens.access_token.expose_secret(),
                format!("new-{i}")
            );
        }
        assert_eq!(
            store.writes(),
            vec![("update", 1), ("batch", 9)],
            "one lone commit, then one for everything that queued meanwhile"
        );
        assert!(!commits.lock().committing, "the committer stops when idle");
    }

    #[tokio::test]
    async fn batches_are_capped_and_answers_stay_per_row() {
        let store = recording(true, false);
        let conns = seeded(&store, 8).await;
        let commits = GroupCommit::new(store.clone(), 3, TaskTracker::new());
        let mut sent = conns.clone();
        sent[4].meta.version += 5; // stale: must fail alone
        let mut writers = held_and_queued(&store, &commits, sent).await;
        store.release_held();
        let mut conflicts = Vec::new();
        while let Some(joined) = writers.join_next().await {
            let (i, result) = joined.expect("writer");
            match result {
                Ok(meta) => assert_eq!(meta.version, conns[i].meta.version + 1),
                Err(StoreError::Conflict) => conflicts.push(i),
                Err(e) => panic!("writer {i}: {e:?}"),
            }
        }
        assert_eq!(conflicts, vec![4], "only the stale write conflicts");
        assert_eq!(
            store.writes(),
            vec![("update", 1), ("batch", 3), ("batch", 3), ("update", 1)],
            "at most three rows per commit; a lone leftover row is a plain update"
        );
    }

    #[tokio::test]
    async fn a_refused_batch_is_written_row_by_row() {
        let store = recording(true, true);
        let conns = seeded(&store, 4).await;
        let commits = GroupCommit::new(store.clone(), 64, TaskTracker::new());
        let mut writers = held_and_queued(&store, &commits, conns.clone()).await;
        store.release_held();
        while let Some(joined) = writers.join_next().await {
            let (i, result) = joined.expect("writer");
            let meta = result.unwrap_or_else(|e| panic!("writer {i}: {e:?}"));
            assert_eq!(meta.version, conns[i].meta.version + 1);
        }
        assert_eq!(
            store.writes(),
            vec![
                ("update", 1),
                ("batch", 3),
                ("update", 1),
                ("update", 1),
                ("update", 1)
            ]
        );
    }

    #[tokio::test]
    async fn a_lone_write_commits_at_once_and_reports_conflicts() {
        let store = recording(false, false);
        let conns = seeded(&store, 1).await;
        let commits = GroupCommit::new(store.clone(), 64, TaskTracker::new());
        let meta = commits
            .update(&conns[0], Prior::of(&conns[0].meta))
            .await
            .expect("write");
        assert_eq!(meta.version, conns[0].meta.version + 1);
        let again = commits.update(&conns[0], Prior::of(&conns[0].meta)).await;
        assert!(matches!(again, Err(StoreError::Conflict)), "{again:?}");
        let missing = sample_connection("u", "tiktok", "gone");
        let gone = commits.update(&missing, Prior::of(&missing.meta)).await;
        assert!(matches!(gone, Err(StoreError::NotFound)), "{gone:?}");
        assert_eq!(store.writes(), vec![("update", 1); 3]);
    }
}

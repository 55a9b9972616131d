//! Where the server's log lines go: a shared buffer that a thread of its own writes to
//! stdout every few milliseconds, one system call for all the lines that gathered.
//!
//! A request appends its formatted line under a short lock and moves on: no allocation per
//! line, no channel, and no wake-up of the writing thread per line (which cost a `futex`
//! call per request and, with the thread's own wake-ups, about a tenth of a cached token's
//! answer: see BENCHMARKS.md, "HTTP fast path"). The thread wakes on its own every
//! [`FLUSH_EVERY`], so a line reaches stdout within that, busy or idle. Lines are never
//! dropped: when the buffer holds [`MAX_PENDING_BYTES`], writers wait for the thread. Dropping
//! the [`LogGuard`] writes what is left before the process ends.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long a line may wait in the buffer.
pub const FLUSH_EVERY: Duration = Duration::from_millis(5);
/// How much may wait before writers block until the thread has written it.
pub const MAX_PENDING_BYTES: usize = 1024 * 1024;

#[derive(Default)]
struct State {
    pending: Vec<u8>,
    closed: bool,
    /// The thread found nothing to write and waits for a line (the only time a writer
    /// wakes it).
    idle: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when the thread has taken the pending lines (writers waiting for room) or
    /// when the guard closes the writer (the thread, to finish at once).
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock left whole lines behind: keep writing them.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A `MakeWriter` for tracing-subscriber: each line goes into the shared buffer.
#[derive(Clone)]
pub struct LogWriter {
    shared: Arc<Shared>,
}

/// Keeps the writing thread alive; dropping it writes what is buffered and stops the thread.
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Starts the thread that writes to `out`.
pub fn spawn(out: impl Write + Send + 'static) -> std::io::Result<(LogWriter, LogGuard)> {
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        changed: Condvar::new(),
    });
    let thread = {
        let shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("tokenwarden-log".to_owned())
            .spawn(move || write_loop(&shared, out))?
    };
    Ok((
        LogWriter {
            shared: Arc::clone(&shared),
        },
        LogGuard {
            shared,
            thread: Some(thread),
        },
    ))
}

fn write_loop(shared: &Shared, mut out: impl Write) {
    let mut batch = Vec::new();
    loop {
        let closed = {
            let mut state = shared.lock();
            while !state.closed && state.pending.is_empty() {
                state.idle = true;
                state = shared
                    .changed
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            state.idle = false;
            std::mem::swap(&mut batch, &mut state.pending);
            state.closed
        };
        // Writers waiting for room may go on.
        shared.changed.notify_all();
        if !batch.is_empty() {
            // Nowhere to report a failed write to stdout; the lines are lost, not the server.
            let _ = out.write_all(&batch);
            let _ = out.flush();
            batch.clear();
            // Keep a normal batch's capacity, give back an exceptional one.
            batch.shrink_to(64 * 1024);
        }
        if closed {
            let rest = std::mem::take(&mut shared.lock().pending);
            let _ = out.write_all(&rest);
            let _ = out.flush();
            return;
        }
        // Let lines gather instead of writing each as it comes.
        std::thread::sleep(FLUSH_EVERY);
    }
}

impl Write for LogWriter {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let mut state = self.shared.lock();
        while state.pending.len() >= MAX_PENDING_BYTES && !state.closed {
            state = self
                .shared
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        state.pending.extend_from_slice(line);
        if state.idle {
            state.idle = false;
            drop(state);
            self.shared.changed.notify_all();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.changed.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An output that records what reached it and how many writes it took.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<(Vec<u8>, usize)>>);

    impl Write for Recorder {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let mut inner = self.0.lock().expect("lock");
            inner.0.extend_from_slice(buf);
            inner.1 += 1;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_arrives_in_order_and_lines_are_batched() {
        let out = Recorder::default();
        let (writer, guard) = spawn(out.clone()).expect("spawn");
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let mut writer = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..2_000 {
                        writer
                            .write_all(format!("{t}:{i}\n").as_bytes())
                            .expect("write");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("writer thread");
        }
        drop(guard);
        let (bytes, writes) = out.0.lock().expect("lock").clone();
        let text = String::from_utf8(bytes).expect("utf-8");
        for t in 0..4 {
            let mine: Vec<usize> = text
                .lines()
                .filter_map(|l| l.strip_prefix(&format!("{t}:")))
                .map(|i| i.parse().expect("number"))
                .collect();
            assert_eq!(mine, (0..2_000).collect::<Vec<_>>(), "writer {t}");
        }
        assert!(
            writes < 8_000,
            "{writes} writes for 8,000 lines: not batched"
        );
    }

    #[test]
    fn a_line_reaches_the_output_while_idle() {
        let out = Recorder::default();
        let (mut writer, _guard) = spawn(out.clone()).expect("spawn");
        writer.write_all(b"one line\n").expect("write");
        // No guard drop, no further lines: the thread's own wake-up writes it.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while out.0.lock().expect("lock").0.is_empty() {
            assert!(std::time::Instant::now() < deadline, "line never written");
            std::thread::yield_now();
        }
        assert_eq!(out.0.lock().expect("lock").0, b"one line\n");
    }

    #[test]
    fn writers_wait_for_room_instead_of_dropping_lines() {
        let out = Recorder::default();
        let (writer, guard) = spawn(out.clone()).expect("spawn");
        let line = vec![b'x'; 64 * 1024];
        let mut w = writer.clone();
        // Sixteen times the cap: writers must block and resume, never drop.
        for _ in 0..(16 * MAX_PENDING_BYTES / line.len()) {
            w.write_all(&line).expect("write");
        }
        drop(guard);
        assert_eq!(out.0.lock().expect("lock").0.len(), 16 * MAX_PENDING_BYTES);
    }
}

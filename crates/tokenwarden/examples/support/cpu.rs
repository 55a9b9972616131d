//! What the benchmark examples share (included with `#[path]`; not an example itself).

/// CPU time used, read from /proc: this process's, and the whole machine's busy time (which
/// includes a PostgreSQL server's work). Linux only; zeros elsewhere.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu {
    process: f64,
    machine: f64,
}

impl Cpu {
    pub fn now() -> Self {
        // Clock ticks are 1/100 s on Linux (USER_HZ).
        const TICK: f64 = 0.01;
        let process = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|stat| {
                // Fields after the parenthesised command name; utime and stime are 14 and 15.
                let rest = stat.rsplit_once(')')?.1;
                let fields: Vec<&str> = rest.split_whitespace().collect();
                let utime: f64 = fields.get(11)?.parse().ok()?;
                let stime: f64 = fields.get(12)?.parse().ok()?;
                Some((utime + stime) * TICK)
            })
            .unwrap_or(0.0);
        let machine = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|stat| {
                let line = stat.lines().next()?;
                let ticks: Vec<f64> = line
                    .split_whitespace()
                    .skip(1)
                    .filter_map(|t| t.parse().ok())
                    .collect();
                // user nice system idle iowait irq softirq steal: busy = all but idle, iowait.
                let busy: f64 = ticks.iter().take(8).sum::<f64>()
                    - ticks.get(3).copied().unwrap_or(0.0)
                    - ticks.get(4).copied().unwrap_or(0.0);
                Some(busy * TICK)
            })
            .unwrap_or(0.0);
        Self { process, machine }
    }

    pub fn since(self) -> Self {
        let now = Self::now();
        Self {
            process: now.process - self.process,
            machine: now.machine - self.machine,
        }
    }

    pub fn per(self, n: usize) -> String {
        let n = n as f64;
        format!(
            "{:.0} µs in this process, {:.0} µs machine-wide",
            self.process / n * 1e6,
            self.machine / n * 1e6
        )
    }
}

/// Runs `work`, returning its wall time and the CPU it used.
pub async fn timed(work: impl std::future::Future<Output = ()>) -> (std::time::Duration, Cpu) {
    let started = std::time::Instant::now();
    let cpu = Cpu::now();
    work.await;
    (started.elapsed(), cpu.since())
}

//! Progress of one long reconcile, for `netlet run --once` on a terminal:
//! the dataplane advances shared counters, a ticker redraws one line.

use std::io::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Progress {
    phase: Mutex<&'static str>,
    done: AtomicUsize,
    total: AtomicUsize,
    started: Instant,
}

impl Default for Progress {
    fn default() -> Self {
        Progress { phase: Mutex::new("starting"), done: AtomicUsize::new(0), total: AtomicUsize::new(0), started: Instant::now() }
    }
}

impl Progress {
    /// Enters a phase of `total` steps (0: not counted).
    pub fn phase(&self, name: &'static str, total: usize) {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner()) = name;
        self.done.store(0, Ordering::Relaxed);
        self.total.store(total, Ordering::Relaxed);
    }

    pub fn step(&self) {
        self.done.fetch_add(1, Ordering::Relaxed);
    }

    /// The status line: `attachments  350/1000 [=====>    ]  1.2s`.
    pub fn line(&self) -> String {
        let phase = *self.phase.lock().unwrap_or_else(|e| e.into_inner());
        let (done, total) = (self.done.load(Ordering::Relaxed), self.total.load(Ordering::Relaxed));
        let elapsed = self.started.elapsed().as_secs_f64();
        if total == 0 {
            return format!("netlet: {phase}  {elapsed:.1}s");
        }
        const WIDTH: usize = 30;
        let filled = (done.min(total) * WIDTH) / total;
        format!("netlet: {phase} {done}/{total} [{}{}] {elapsed:.1}s", "=".repeat(filled), " ".repeat(WIDTH - filled))
    }

    /// Redraws the line on stderr every 100 ms until the returned guard
    /// drops (which clears it). Call only when stderr is a terminal.
    pub fn show(self: &Arc<Self>) -> ProgressDisplay {
        let progress = self.clone();
        let task = tokio::spawn(async move {
            loop {
                eprint!("\r\x1b[2K{}", progress.line());
                let _ = std::io::stderr().flush();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        ProgressDisplay { task }
    }
}

pub struct ProgressDisplay {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ProgressDisplay {
    fn drop(&mut self) {
        self.task.abort();
        eprint!("\r\x1b[2K");
        let _ = std::io::stderr().flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_shows_the_phase_and_how_far_it_got() {
        let p = Progress::default();
        assert!(p.line().starts_with("netlet: starting"));
        p.phase("attachments", 4);
        p.step();
        p.step();
        let line = p.line();
        assert!(line.starts_with("netlet: attachments 2/4 [==============="), "{line}");
        p.phase("firewall", 0);
        assert!(p.line().starts_with("netlet: firewall "));
    }
}

//! A one-line progress bar on stderr, redrawn at most ten times a second.
//!
//! Only used when stderr is a terminal (the caller checks), so scripts and
//! logs never see carriage returns.

use std::io::Write;
use std::time::{Duration, Instant};

const REDRAW_EVERY: Duration = Duration::from_millis(100);
const BAR_WIDTH: usize = 30;

/// Progress of one transfer of a known size.
#[derive(Debug)]
pub struct Progress {
    total: u64,
    start: Instant,
    last_draw: Option<Instant>,
    done: u64,
}

impl Progress {
    /// Starts the clock for a transfer of `total` bytes.
    pub fn new(total: u64) -> Self {
        Self {
            total,
            start: Instant::now(),
            last_draw: None,
            done: 0,
        }
    }

    /// Records that `done` bytes have gone; redraws when it is time.
    pub fn update(&mut self, done: u64) {
        self.done = done;
        let now = Instant::now();
        if self
            .last_draw
            .is_none_or(|last| now.duration_since(last) >= REDRAW_EVERY)
        {
            self.last_draw = Some(now);
            self.draw();
        }
    }

    /// Draws the final state and ends the line.
    pub fn done(mut self) {
        self.done = self.total;
        self.draw();
        eprintln!();
    }

    fn draw(&self) {
        let fraction = if self.total == 0 {
            1.0
        } else {
            self.done as f64 / self.total as f64
        };
        let filled = ((fraction * BAR_WIDTH as f64) as usize).min(BAR_WIDTH);
        let secs = self.start.elapsed().as_secs_f64().max(1e-9);
        let rate = self.done as f64 / secs;
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r[{}{}] {:>3.0}%  {} / {}  {}/s   ",
            "#".repeat(filled),
            " ".repeat(BAR_WIDTH - filled),
            fraction * 100.0,
            human(self.done as f64),
            human(self.total as f64),
            human(rate),
        );
        let _ = err.flush();
    }
}

/// Bytes in binary units, one decimal.
fn human(bytes: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_human_units() {
        assert_eq!(human(0.0), "0.0 B");
        assert_eq!(human(1536.0), "1.5 KiB");
        assert_eq!(human(1024.0 * 1024.0 * 1024.0), "1.0 GiB");
    }
}

//! The live view of a run: an indicatif bar on a terminal, plain lines elsewhere.
//!
//! Key decision: one status line, two renderings. [`Progress::update`] formats
//! `step 120/1000 loss 3.21 lr 3.0e-4 1,234 tok/s ETA 4m` once; on a terminal it
//! becomes the bar's message, and when stderr is not a terminal (CI, `nohup`, SLURM
//! output files) or the bar is disabled, the same line is printed every
//! [`Progress::plain_every`] steps instead, so logs show progress without carriage
//! return noise. The ETA is measured from this process's own start (not the run's),
//! so a resumed run does not count the steps it skipped as instant.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Progress display for a training run (see the module docs).
pub struct Progress {
    total_steps: u64,
    start_step: u64,
    started: Instant,
    mode: Mode,
    /// The status line of the latest update, and whether it has been printed.
    last: Mutex<Option<(u64, String, bool)>>,
}

enum Mode {
    /// An indicatif bar drawn on stderr.
    Bar(ProgressBar),
    /// Plain lines written to a sink every `every` steps.
    Plain {
        sink: Mutex<Box<dyn Write + Send>>,
        every: u64,
    },
}

impl Progress {
    /// A progress display for steps `start_step + 1 ..= total_steps`. Shows a bar when
    /// `enabled` and stderr is a terminal; otherwise prints plain lines to stderr
    /// (about twenty over the run; see [`Progress::plain_every`]).
    pub fn new(total_steps: u64, start_step: u64, enabled: bool) -> Self {
        if enabled && std::io::stderr().is_terminal() {
            let bar = ProgressBar::with_draw_target(
                Some(total_steps),
                ProgressDrawTarget::stderr_with_hz(4),
            );
            let style = ProgressStyle::with_template("{bar:30.cyan/blue} {msg}")
                .expect("static template is valid")
                .progress_chars("=> ");
            bar.set_style(style);
            bar.set_position(start_step);
            Self::with_mode(total_steps, start_step, Mode::Bar(bar))
        } else {
            Self::with_writer(total_steps, start_step, Box::new(std::io::stderr()))
        }
    }

    /// A plain-line display writing to `sink` (a log file, or a buffer in tests).
    pub fn with_writer(total_steps: u64, start_step: u64, sink: Box<dyn Write + Send>) -> Self {
        let every = (total_steps.saturating_sub(start_step) / 20).max(1);
        Self::with_mode(
            total_steps,
            start_step,
            Mode::Plain {
                sink: Mutex::new(sink),
                every,
            },
        )
    }

    fn with_mode(total_steps: u64, start_step: u64, mode: Mode) -> Self {
        Progress {
            total_steps,
            start_step,
            started: Instant::now(),
            mode,
            last: Mutex::new(None),
        }
    }

    /// Prints a plain line every `every` steps (at least 1) instead of the default
    /// (one twentieth of the remaining steps). No effect on a terminal bar.
    pub fn plain_every(mut self, every: u64) -> Self {
        if let Mode::Plain { every: e, .. } = &mut self.mode {
            *e = every.max(1);
        }
        self
    }

    /// Reports that `step` has finished with this loss, learning rate and throughput.
    pub fn update(&mut self, step: u64, loss: f64, lr: f64, tokens_per_s: f64) {
        let line = format!(
            "step {step}/{} loss {} lr {lr:.1e} {} tok/s ETA {}",
            self.total_steps,
            format_loss(loss),
            format_thousands(tokens_per_s),
            self.eta(step),
        );
        let printed = match &self.mode {
            Mode::Bar(bar) => {
                bar.set_position(step);
                bar.set_message(line.clone());
                true
            }
            Mode::Plain { sink, every } => {
                let due = step == self.start_step + 1
                    || step.is_multiple_of(*every)
                    || step >= self.total_steps;
                if due {
                    write_line(sink, &line);
                }
                due
            }
        };
        *lock(&self.last) = Some((step, line, printed));
    }

    /// Prints a message above the bar (or as a plain line), e.g. a warning or an
    /// eval result, without garbling the bar.
    pub fn println(&self, msg: &str) {
        match &self.mode {
            Mode::Bar(bar) => bar.println(msg),
            Mode::Plain { sink, .. } => write_line(sink, msg),
        }
    }

    /// Ends the display: the bar is left drawn at its last state; in plain mode the
    /// last status line is printed if it was not already, then a summary line.
    pub fn finish(&self) {
        match &self.mode {
            Mode::Bar(bar) => bar.finish(),
            Mode::Plain { sink, .. } => {
                let mut last = lock(&self.last);
                if let Some((step, line, printed)) = last.as_mut() {
                    if !*printed {
                        write_line(sink, line);
                        *printed = true;
                    }
                    let done = step.saturating_sub(self.start_step);
                    let took = format_duration(self.started.elapsed());
                    write_line(sink, &format!("done: {done} steps in {took}"));
                }
            }
        }
    }

    /// Time left, extrapolated from the steps this process has run so far.
    fn eta(&self, step: u64) -> String {
        let done = step.saturating_sub(self.start_step);
        if done == 0 {
            return "?".into();
        }
        let per_step = self.started.elapsed().as_secs_f64() / done as f64;
        let left = self.total_steps.saturating_sub(step) as f64 * per_step;
        format_duration(Duration::from_secs_f64(left))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while printing must not take the training loop down with it.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write_line(sink: &Mutex<Box<dyn Write + Send>>, line: &str) {
    let mut w = lock(sink);
    // Progress output is best effort: a closed stderr must not stop training.
    let _ = writeln!(w, "{line}").and_then(|()| w.flush());
}

/// `3.21`, or `nan`/`inf` as they are: a loss is printed with two decimals.
fn format_loss(loss: f64) -> String {
    if loss.is_finite() {
        format!("{loss:.2}")
    } else {
        format!("{loss}")
    }
}

/// `1234.7` → `1,235`: a rate rounded to an integer with thousands separators.
fn format_thousands(x: f64) -> String {
    if !x.is_finite() {
        return format!("{x}");
    }
    let digits = format!("{:.0}", x.abs());
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if x < 0.0 && digits != "0" {
        out.push('-');
    }
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `42s`, `4m`, `1h05m`: coarse on purpose (an ETA is an estimate).
fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rates_and_durations() {
        assert_eq!(format_thousands(1234.4), "1,234");
        assert_eq!(format_thousands(999.6), "1,000");
        assert_eq!(format_thousands(12.0), "12");
        assert_eq!(format_thousands(1_234_567.0), "1,234,567");
        assert_eq!(format_duration(Duration::from_secs(42)), "42s");
        assert_eq!(format_duration(Duration::from_secs(245)), "4m");
        assert_eq!(format_duration(Duration::from_secs(3900)), "1h05m");
        assert_eq!(format_loss(3.2149), "3.21");
        assert_eq!(format!("{:.1e}", 3e-4), "3.0e-4");
    }
}

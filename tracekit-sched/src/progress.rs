//! Progress of a long command (dispatch, wait): an `indicatif` bar when
//! stderr is a terminal, otherwise a log line now and then (a bar's
//! redraws would fill a log file).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often the log-line form reports.
const LOG_EVERY: Duration = Duration::from_secs(10);

pub struct Progress {
    bar: Option<ProgressBar>,
    what: &'static str,
    last_log: Option<Instant>,
    /// Off a terminal, say nothing (the command logs its own lines).
    silent_off_tty: bool,
}

impl Progress {
    /// `what` names the items counted ("tasks submitted", "tasks finished").
    pub fn new(what: &'static str, total: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] {pos}/{len} {prefix} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_prefix(what);
            bar
        });
        Progress {
            bar,
            what,
            last_log: None,
            silent_off_tty: false,
        }
    }

    /// A bar on a terminal, nothing elsewhere: for commands that already
    /// log their progress.
    pub fn bar_only(what: &'static str, total: u64) -> Progress {
        Progress {
            silent_off_tty: true,
            ..Progress::new(what, total)
        }
    }

    /// `pos` of `total` done, with a short note.
    pub fn update(&mut self, pos: u64, total: u64, note: &str) {
        match &self.bar {
            Some(bar) => {
                bar.set_length(total);
                bar.set_position(pos);
                bar.set_message(note.to_string());
            }
            None if self.silent_off_tty => {}
            None => {
                if self.last_log.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
                    self.last_log = Some(Instant::now());
                    tracing::info!("{pos}/{total} {} {note}", self.what);
                }
            }
        }
    }

    /// Ends the bar (left on screen); the log form says nothing more.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}

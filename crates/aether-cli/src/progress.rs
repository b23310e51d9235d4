//! Progress bars for transfers (put, get, export, import), drawn on stderr and only when stdout
//! is a terminal, so scripts and pipes see clean output.

use std::io::IsTerminal;

use aether_client::Progress;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress bar, or nothing when output is not for a person.
pub struct Bar {
    bar: Option<ProgressBar>,
}

impl Bar {
    /// A bar when stdout is a terminal.
    pub fn for_terminal() -> Bar {
        let bar = std::io::stdout()
            .is_terminal()
            .then(|| ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()));
        Bar { bar }
    }

    /// Removes the bar from the screen.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.finish();
    }
}

impl Progress for Bar {
    fn phase(&self, name: &str, total_bytes: Option<u64>) {
        let Some(bar) = &self.bar else {
            return;
        };
        let style = match total_bytes {
            Some(total) => {
                bar.set_length(total);
                ProgressStyle::with_template(
                    "{msg:>11} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} {eta}",
                )
                .map(|s| s.progress_chars("=> "))
            }
            None => {
                ProgressStyle::with_template("{spinner} {msg:>11} {bytes} {binary_bytes_per_sec}")
            }
        };
        if let Ok(style) = style {
            bar.set_style(style);
        }
        bar.set_position(0);
        bar.set_message(name.to_string());
    }

    fn advance(&self, bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(bytes);
        }
    }
}

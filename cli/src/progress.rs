//! A spinner per step, with the step's name and elapsed time, for anything that may take more than a second.

use indicatif::{ProgressBar, ProgressStyle};
use std::time::Duration;

pub struct Step {
    bar: ProgressBar,
    name: String,
}

impl Step {
    pub fn start(name: &str) -> Self {
        let bar = ProgressBar::new_spinner();
        bar.set_style(ProgressStyle::with_template("{spinner} {msg} ({elapsed})").expect("valid template"));
        bar.set_message(name.to_string());
        bar.enable_steady_tick(Duration::from_millis(120));
        Self { bar, name: name.to_string() }
    }

    pub fn done(self, detail: &str) {
        let elapsed = self.bar.elapsed();
        self.bar.finish_and_clear();
        let detail = if detail.is_empty() { String::new() } else { format!(": {detail}") };
        eprintln!("✓ {}{detail} ({:.1}s)", self.name, elapsed.as_secs_f64());
    }

    pub fn fail(self) {
        self.bar.finish_and_clear();
        eprintln!("✗ {}", self.name);
    }
}

/// Runs `f` under a spinner named `name`.
pub async fn step<T, F: std::future::Future<Output = anyhow::Result<T>>>(name: &str, f: F) -> anyhow::Result<T> {
    let s = Step::start(name);
    match f.await {
        Ok(v) => {
            s.done("");
            Ok(v)
        }
        Err(e) => {
            s.fail();
            Err(e)
        }
    }
}

//! A spinner per step, with the step's name and elapsed time, for anything that may take more than a second.

use indicatif::{ProgressBar, ProgressStyle};
use std::time::Duration;

pub struct Step {
    bar: ProgressBar,
    name: String,
    /// Say nothing when the step took less than a second.
    quiet_if_fast: bool,
}

impl Step {
    pub fn start(name: &str) -> Self {
        let bar = ProgressBar::new_spinner();
        bar.set_style(ProgressStyle::with_template("{spinner} {msg} ({elapsed})").expect("valid template"));
        bar.set_message(name.to_string());
        bar.enable_steady_tick(Duration::from_millis(120));
        Self { bar, name: name.to_string(), quiet_if_fast: false }
    }

    pub fn done(self, detail: &str) {
        let elapsed = self.bar.elapsed();
        self.bar.finish_and_clear();
        if self.quiet_if_fast && elapsed < Duration::from_secs(1) {
            return;
        }
        let detail = if detail.is_empty() { String::new() } else { format!(": {detail}") };
        eprintln!("✓ {}{detail} ({:.1}s)", self.name, elapsed.as_secs_f64());
    }

    pub fn fail(self) {
        self.bar.finish_and_clear();
        eprintln!("✗ {}", self.name);
    }
}

/// Runs `f` under a spinner named `name`, and says when it is done.
pub async fn step<T, F: std::future::Future<Output = anyhow::Result<T>>>(name: &str, f: F) -> anyhow::Result<T> {
    run(Step::start(name), f).await
}

/// The same, saying nothing when it took less than a second.
pub async fn quiet_step<T, F: std::future::Future<Output = anyhow::Result<T>>>(name: &str, f: F) -> anyhow::Result<T> {
    let mut s = Step::start(name);
    s.quiet_if_fast = true;
    run(s, f).await
}

async fn run<T, F: std::future::Future<Output = anyhow::Result<T>>>(s: Step, f: F) -> anyhow::Result<T> {
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

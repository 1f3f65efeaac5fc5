//! A sidecar process for the tests: the test functions, plus `abort_on_13`, which kills the whole process when it
//! meets value 13 (a sidecar crashing on one record), and `abort_on_13_slow_past_999`, which waits 1.5 s before
//! it crashes on 13 and takes 2 s for each record of value 1000 and up. `Sidecar*` helpers in `millrace_tests::dataplane` restart it
//! when it dies, as a supervisor would.
//!
//!   millrace-test-sidecar --listen 127.0.0.1:PORT

use clap::Parser;
use millrace_tests::dataplane::{runtime, Raw};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    listen: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    runtime(Default::default())
        .transform("abort_on_13", |r: Raw| {
            if r.value == 13 {
                std::process::abort();
            }
            r
        })
        // Slower on records of 1000 and up than on 13, so that a crash finds such a batch, started at about the
        // same time, half done.
        .transform("abort_on_13_slow_past_999", |r: Raw| {
            if r.value == 13 {
                std::thread::sleep(std::time::Duration::from_millis(1500));
                std::process::abort();
            }
            if r.value >= 1000 {
                std::thread::sleep(std::time::Duration::from_millis(2000));
            }
            r
        })
        .serve(&args.listen)
        .await
}

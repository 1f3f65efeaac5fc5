//! `millrace logs`: the lines user functions log (`Logger`, `cli_log`, `print`) in the sidecar `millrace dev` runs,
//! shown as `dev` shows them, with the function's name; `--function` keeps one function's, `--follow` keeps going.

use crate::dev_project::render;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    /// Only the log lines of this function (as `millrace ls` names it).
    #[arg(long, env = "MILLRACE_LOGS_FUNCTION")]
    function: Option<String>,
    /// How many of the last lines to show.
    #[arg(short = 'n', long, default_value_t = 50, env = "MILLRACE_LOGS_LINES")]
    n: usize,
    /// Keep printing lines as they come.
    #[arg(long)]
    follow: bool,
    /// The sidecar's output to read [default: the one `millrace dev` writes, ~/.millrace/dev/sidecar.log]; for a
    /// sidecar you run yourself, its stderr saved to a file.
    #[arg(long, env = "MILLRACE_LOGS_FILE")]
    file: Option<PathBuf>,
}

/// Whether a raw line is shown under the filter: with a function asked for, only its log lines.
fn wanted(line: &str, function: Option<&str>) -> bool {
    match function {
        None => !line.trim().is_empty(),
        Some(f) => serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .filter(|v| v.get("millrace_log").is_some())
            .and_then(|v| v.get("function").and_then(|x| x.as_str()).map(|x| x == f))
            .unwrap_or(false),
    }
}

/// The last `n` wanted lines of `text`, rendered.
fn last(text: &str, function: Option<&str>, n: usize) -> Vec<String> {
    let lines: Vec<&str> = text.lines().filter(|l| wanted(l, function)).collect();
    lines[lines.len().saturating_sub(n)..].iter().map(|l| render(l)).collect()
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let path = args.file.clone().unwrap_or_else(|| crate::admin::home().join("dev").join("sidecar.log"));
    let mut file = std::fs::File::open(&path).map_err(|e| {
        anyhow::anyhow!("{}: {e}: run `millrace dev` (it writes the sidecar's output there), or give --file", path.display())
    })?;
    // The tail only: the log is never cut, and may be large.
    let len = file.metadata()?.len();
    let from = len.saturating_sub(TAIL_BYTES);
    file.seek(SeekFrom::Start(from))?;
    let mut text = Vec::new();
    file.by_ref().take(len - from).read_to_end(&mut text)?;
    let text = String::from_utf8_lossy(&text);
    // Past a cut, the first line is likely partial.
    let text = if from > 0 { text.split_once('\n').map(|x| x.1).unwrap_or("") } else { &text };
    for l in last(text, args.function.as_deref(), args.n) {
        println!("{l}");
    }
    if args.follow {
        follow(&path, file, len, args.function.as_deref()).await?;
    }
    Ok(())
}

/// How much of the log's end `logs` reads for its last lines.
const TAIL_BYTES: u64 = 8 << 20;
/// A line longer than this is shown cut (following a log that never ends its line must not grow without bound).
const MAX_LINE: usize = 1 << 20;

/// Prints what is appended to the file; starts over when it is replaced or cut (a new `millrace dev`).
async fn follow(path: &Path, mut file: std::fs::File, mut at: u64, function: Option<&str>) -> anyhow::Result<()> {
    let mut partial = String::new();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        if len < at {
            file = std::fs::File::open(path)?;
            at = 0;
            partial.clear();
        }
        if len == at {
            continue;
        }
        file.seek(SeekFrom::Start(at))?;
        let mut chunk = Vec::new();
        file.by_ref().take(len - at).read_to_end(&mut chunk)?;
        at += chunk.len() as u64;
        partial.push_str(&String::from_utf8_lossy(&chunk));
        if partial.len() > MAX_LINE && !partial.contains('\n') {
            partial.truncate(partial.floor_char_boundary(MAX_LINE));
            partial.push('\n');
        }
        // Whole lines only: the rest waits for its end.
        while let Some(i) = partial.find('\n') {
            let line: String = partial.drain(..=i).collect();
            let line = line.trim_end_matches('\n');
            if wanted(line, function) {
                println!("{}", render(line));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_lines_are_shown_and_a_function_keeps_only_its_own() {
        let text = [
            r#"{"millrace_log":1,"time":"2026-12-01T07:00:00Z","level":"INFO","function":"a__b","action":"x","message":"one"}"#,
            "a print",
            r#"{"millrace_log":1,"time":"2026-12-01T07:00:01Z","level":"INFO","function":"c__d","action":"y","message":"two"}"#,
            "",
        ]
        .join("\n");
        let all = last(&text, None, 10);
        assert_eq!(all.len(), 3);
        assert!(all[0].contains("[a__b]") && all[0].contains("one") && all[1].contains("a print"));
        assert_eq!(last(&text, None, 1).len(), 1);
        let only = last(&text, Some("c__d"), 10);
        assert_eq!(only.len(), 1);
        assert!(only[0].contains("two"));
    }
}

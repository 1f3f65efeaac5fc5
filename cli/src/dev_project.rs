//! What `millrace dev` runs and watches, as `moose dev` does for a MooseStack project: without an app argument,
//! `./app/main.py` when it exists; an app inside a package belongs to its project directory (the first directory up
//! that is not a package; for `app/main.py`, the parent of `app/`), from which its imports resolve, its sidecar and
//! the SDK run, and whose Python files are watched. And how the sidecar's output is shown.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// An app and the directory it runs from.
pub struct Project {
    /// The app's file, absolute.
    pub app: PathBuf,
    /// Where its imports resolve from: the working directory of the SDK and the sidecar, and what is watched.
    pub root: PathBuf,
}

impl Project {
    /// The app given, else `./app/main.py` when it exists; None: neither (the built-in example runs).
    pub fn find(arg: Option<&Path>) -> anyhow::Result<Option<Project>> {
        let app = match arg {
            Some(a) => std::fs::canonicalize(a).map_err(|_| {
                anyhow::anyhow!("{}: no such file: give the path of your app's Python file (or run millrace dev from a project holding app/main.py)", a.display())
            })?,
            None => match std::fs::canonicalize("app/main.py") {
                Ok(found) => found,
                Err(_) => return Ok(None),
            },
        };
        anyhow::ensure!(app.is_file(), "{}: not a file: give the path of your app's Python file", app.display());
        let root = root_of(&app);
        Ok(Some(Project { app, root }))
    }

    /// The path the per-app state is named after (`dev_state::resolve` names it after the app's directory), as
    /// before projects: each app directory keeps its own state (`app/main.py`'s is `app`'s, whether given or found),
    /// and two apps in different directories of one project never plan each other's streams away.
    pub fn state_anchor(&self) -> PathBuf {
        self.app.clone()
    }
}

/// The loader's rule (sdk-python/millrace/loader.py `project_of`): up through packages (`__init__.py`), and
/// `<dir>/app/main.py` is `<dir>`'s even without `app/__init__.py`.
pub fn root_of(app: &Path) -> PathBuf {
    let parent = app.parent().unwrap_or(Path::new("/")).to_path_buf();
    let is_package = |d: &Path| {
        d.join("__init__.py").is_file() && d.parent().is_some() && d.file_name().and_then(|n| n.to_str()).is_some_and(is_identifier)
    };
    let mut dir = parent.clone();
    while is_package(&dir) {
        dir = dir.parent().expect("checked").to_path_buf();
    }
    if dir == parent && app.file_name().is_some_and(|n| n == "main.py") && parent.file_name().is_some_and(|n| n == "app") {
        return parent.parent().unwrap_or(&parent).to_path_buf();
    }
    dir
}

fn is_identifier(s: &str) -> bool {
    s.chars().next().is_some_and(|c| c == '_' || c.is_alphabetic()) && s.chars().all(|c| c == '_' || c.is_alphanumeric())
}

/// Files a watch looks at, at most: a project that big is watched in part (said once).
pub const WATCH_LIMIT: usize = 5_000;
const WATCH_DEPTH: usize = 12;

/// Modification times of the project's Python files, recursively, skipping virtualenvs (a `pyvenv.cfg`),
/// `__pycache__`, `node_modules` and dot-directories; at most WATCH_LIMIT entries visited. The bool: the limit was hit.
pub fn snapshot(root: &Path) -> (BTreeMap<PathBuf, SystemTime>, bool) {
    let mut out = BTreeMap::new();
    let mut stack = vec![(root.to_path_buf(), 0usize)];
    let mut visited = 0usize;
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.filter_map(Result::ok) {
            visited += 1;
            if visited > WATCH_LIMIT {
                return (out, true);
            }
            let path = e.path();
            let name = e.file_name();
            let name = name.to_string_lossy();
            let Ok(kind) = e.file_type() else { continue };
            if kind.is_dir() {
                let skip = name.starts_with('.') || name == "__pycache__" || name == "node_modules" || path.join("pyvenv.cfg").is_file();
                if !skip && depth < WATCH_DEPTH {
                    stack.push((path, depth + 1));
                }
            } else if name.ends_with(".py") {
                if let Some(t) = std::fs::metadata(&path).ok().and_then(|m| m.modified().ok()) {
                    out.insert(path, t);
                }
            }
        }
    }
    (out, false)
}

/// One line of the sidecar's output as `millrace dev` shows it: a `Logger`/`cli_log` line (JSON with
/// `millrace_log`) as `time level [function] action: message`, anything else (a function's `print`) as it is.
pub fn render(line: &str) -> String {
    let log = serde_json::from_str::<serde_json::Value>(line).ok().filter(|v| v.get("millrace_log").is_some());
    let Some(v) = log else { return format!("  | {line}") };
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or_default().to_string();
    let time = s("time");
    let time = time.split('T').nth(1).unwrap_or(&time).trim_end_matches('Z').to_string();
    let function = v.get("function").and_then(|f| f.as_str()).map(|f| format!(" [{f}]")).unwrap_or_default();
    format!("  | {time} {}{function} {}: {}", s("level"), s("action"), s("message"))
}

/// Whether a line of the SDK's stderr is a log line (printed by the app at import), not its error.
pub fn is_log_line(line: &str) -> bool {
    line.starts_with("{\"millrace_log\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_moose_project_runs_from_its_directory_and_a_lone_file_from_its_own() {
        let dir = std::env::temp_dir().join(format!("millrace-project-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("app/ingest")).unwrap();
        std::fs::create_dir_all(dir.join(".venv/lib")).unwrap();
        std::fs::create_dir_all(dir.join("env")).unwrap();
        for f in ["app/main.py", "app/ingest/models.py", "app/ingest/__init__.py", "lone.py", ".venv/lib/x.py", "env/y.py"] {
            std::fs::write(dir.join(f), "").unwrap();
        }
        std::fs::write(dir.join("env/pyvenv.cfg"), "").unwrap();
        // No app/__init__.py: still the project's, as moose imports `app.main`.
        assert_eq!(root_of(&dir.join("app/main.py")), dir);
        assert_eq!(root_of(&dir.join("app/ingest/models.py")), dir.join("app"));
        std::fs::write(dir.join("app/__init__.py"), "").unwrap();
        assert_eq!(root_of(&dir.join("app/ingest/models.py")), dir);
        assert_eq!(root_of(&dir.join("lone.py")), dir);
        let p = Project { app: dir.join("app/main.py"), root: dir.clone() };
        assert_eq!(p.state_anchor().parent(), Some(dir.join("app").as_path()), "the app's directory names the state, as before");
        let (files, cut) = snapshot(&dir);
        let names: Vec<String> = files.keys().map(|f| f.strip_prefix(&dir).unwrap().display().to_string()).collect();
        assert!(!cut);
        assert_eq!(names, ["app/__init__.py", "app/ingest/__init__.py", "app/ingest/models.py", "app/main.py", "lone.py"], "no virtualenv");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn log_lines_are_shown_with_their_function() {
        let line = r#"{"millrace_log": 1, "time": "2026-12-01T07:00:00.123Z", "level": "info", "message_type": "Info", "function": "a__b", "action": "SF", "message": "hi", "pid": 1}"#;
        assert_eq!(render(line), "  | 07:00:00.123 info [a__b] SF: hi");
        assert!(is_log_line(line));
        assert_eq!(render("Received Foo event:"), "  | Received Foo event:");
    }
}

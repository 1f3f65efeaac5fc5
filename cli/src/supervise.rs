//! The processes `millrace dev` starts (control plane, worker, Python sidecar), watched while it runs. One that
//! exits unexpectedly is reported in one line (which, its pid, its exit status or signal, its log) and started again
//! with the same arguments, after a backoff (0.5 s doubling to 10 s; back to 0.5 s once it has stayed up 30 s), and
//! `dev` says when it listens again. One that keeps dying (8 times within two minutes) is reported with what to do and
//! left stopped; the others keep running. Stopping (`Supervised::stop`, Ctrl-C) never restarts anything: after
//! `Supervisor::shutting_down` no process is started again.
//!
//! Each process runs in a process group of its own (with whatever it starts): what is left of a group whose leader
//! died (the sidecar's server processes, holding its port) is killed before the restart, so the new one gets the
//! same port.

use crate::admin::home;
use std::collections::VecDeque;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::process::Child;
use tokio::sync::{oneshot, watch};

/// The first wait before a restart; it doubles after each quick death, up to `BACKOFF_CAP`.
const BACKOFF_FIRST: Duration = Duration::from_millis(500);
const BACKOFF_CAP: Duration = Duration::from_secs(10);
/// A process up this long before it died is restarted after `BACKOFF_FIRST` again.
const STEADY: Duration = Duration::from_secs(30);
/// This many deaths within `LOOP_WINDOW`: it keeps dying, and is not started again. Enough that the backoff (0.5 s
/// doubling to 10 s) rides out half a minute of a dependency gone (a Postgres restarting, say) before giving up.
const LOOP_DEATHS: usize = 8;
const LOOP_WINDOW: Duration = Duration::from_secs(120);
/// How long a (re)started process may take to listen.
const READY_WITHIN: Duration = Duration::from_secs(60);
/// How long a stopped process may take to exit after SIGTERM before it is killed.
const STOP_WITHIN: Duration = Duration::from_secs(15);

/// Where a process's output is kept.
pub fn log_path(name: &str) -> PathBuf {
    home().join("dev").join(format!("{name}.log"))
}

/// Its log: `fresh` (a first start) empties it; a restart appends, so the death's cause stays above.
pub fn open_log(name: &str, fresh: bool) -> anyhow::Result<std::fs::File> {
    let path = log_path(name);
    std::fs::create_dir_all(path.parent().expect("a directory"))?;
    Ok(std::fs::OpenOptions::new().create(true).write(true).append(!fresh).truncate(fresh).open(path)?)
}

/// One line of `dev`'s output. Never println!: it panics when the output is gone.
fn say(line: &str) {
    let _ = writeln!(std::io::stdout(), "{line}");
}

/// How to run a process.
pub struct Spec {
    pub name: &'static str,
    /// Where it listens once it is up.
    pub addr: String,
    /// What the user can do when it keeps dying.
    pub advice: String,
    /// Starts it, with the same arguments each time; the argument: whether this is its first start (see `open_log`).
    /// It must put the process in a process group of its own.
    pub start: Box<dyn Fn(bool) -> anyhow::Result<Child> + Send + Sync>,
}

/// Starts processes and watches them; `shutting_down` ends every restart.
pub struct Supervisor {
    shutdown: watch::Sender<bool>,
}

/// A watched process; `stop` ends it.
pub struct Supervised {
    name: &'static str,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Supervisor {
    pub fn new() -> Self {
        Self { shutdown: watch::Sender::new(false) }
    }

    /// From now on no process is started again (everything is being stopped).
    pub fn shutting_down(&self) {
        self.shutdown.send_replace(true);
    }

    /// Starts `spec`'s process, waits until it listens (an error, with its log, if it exits first or takes over
    /// a minute), then watches it.
    pub async fn start(&self, spec: Spec) -> anyhow::Result<Supervised> {
        let mut child = (spec.start)(true)?;
        match ready(&mut child, &spec.addr).await {
            Ready::Listening => {}
            Ready::Exited(status) => anyhow::bail!("{} {}: see {}", spec.name, describe(status), log_path(spec.name).display()),
            Ready::Slow => anyhow::bail!("{} did not listen on {} within 60 s: see {}", spec.name, spec.addr, log_path(spec.name).display()),
        }
        let (stop, stopped) = oneshot::channel();
        let name = spec.name;
        let task = tokio::spawn(watch_over(Arc::new(spec), child, stopped, self.shutdown.subscribe()));
        Ok(Supervised { name, stop: Some(stop), task })
    }
}

impl Default for Supervisor {
    fn default() -> Self {
        Self::new()
    }
}

impl Supervised {
    /// Stops the process (SIGTERM to its group, SIGKILL after 15 s); it is not started again.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
        say(&format!("  stopped {}", self.name));
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        // Not stopped (an error ends `dev`): the task ends, and its child is killed with it (kill_on_drop).
        self.task.abort();
    }
}

enum Ready {
    Listening,
    Exited(ExitStatus),
    Slow,
}

/// Waits until `addr` accepts connections, the process exits, or a minute has passed.
async fn ready(child: &mut Child, addr: &str) -> Ready {
    let deadline = Instant::now() + READY_WITHIN;
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ready::Listening;
        }
        if Instant::now() >= deadline {
            return Ready::Slow;
        }
        tokio::select! {
            status = child.wait() => return status.map_or(Ready::Slow, Ready::Exited),
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

/// "exited with status 1", "was killed by signal 9 (SIGKILL)".
pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => match nix::sys::signal::Signal::try_from(sig) {
            Ok(s) => format!("was killed by signal {sig} ({})", s.as_str()),
            Err(_) => format!("was killed by signal {sig}"),
        },
        (None, None) => format!("ended ({status})"),
    }
}

fn signal_group(pid: u32, signal: nix::sys::signal::Signal) {
    // Never group 0 (a pid not known): that is this process's own group, the user's shell job with it.
    if pid > 1 {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid as i32), signal);
    }
}

/// When to start a process that died again, or that it keeps dying.
#[derive(Debug, Default)]
pub struct Deaths {
    recent: VecDeque<Instant>,
    delay: Option<Duration>,
}

#[derive(Debug, PartialEq)]
pub enum Verdict {
    RestartIn(Duration),
    /// The deaths within the window.
    KeepsDying(usize),
}

impl Deaths {
    /// It died at `now`, having been up for `up`.
    pub fn died(&mut self, now: Instant, up: Duration) -> Verdict {
        self.recent.push_back(now);
        while self.recent.front().is_some_and(|t| now.duration_since(*t) > LOOP_WINDOW) {
            self.recent.pop_front();
        }
        if self.recent.len() >= LOOP_DEATHS {
            return Verdict::KeepsDying(self.recent.len());
        }
        let delay = match self.delay {
            Some(d) if up < STEADY => (d * 2).min(BACKOFF_CAP),
            _ => BACKOFF_FIRST,
        };
        self.delay = Some(delay);
        Verdict::RestartIn(delay)
    }
}

/// The state of a watched process.
enum Now {
    Running { child: Child, pid: u32, since: Instant },
    /// Exited (or could not be started: the pid is None): why.
    Died { why: String, pid: Option<u32>, up: Duration },
}

/// Watches `spec`'s process until `stop` (it is stopped) or the shutdown (it is left to `stop`), restarting it
/// when it dies.
async fn watch_over(spec: Arc<Spec>, child: Child, mut stop: oneshot::Receiver<()>, mut shutdown: watch::Receiver<bool>) {
    let (name, log) = (spec.name, log_path(spec.name));
    let pid = child.id().unwrap_or_default();
    let mut now = Now::Running { child, pid, since: Instant::now() };
    let mut deaths = Deaths::default();
    loop {
        now = match now {
            Now::Running { mut child, pid, since } => {
                tokio::select! {
                    status = child.wait() => {
                        // What is left of its group (the sidecar's server processes) would hold its port.
                        signal_group(pid, nix::sys::signal::Signal::SIGKILL);
                        let why = status.map_or_else(|e| format!("could not be waited for ({e})"), describe);
                        Now::Died { why, pid: Some(pid), up: since.elapsed() }
                    }
                    _ = &mut stop => return terminate(child, pid).await,
                }
            }
            Now::Died { why, pid, up } => {
                if *shutdown.borrow() {
                    return;
                }
                let who = match pid {
                    Some(pid) => format!("{name} (pid {pid})"),
                    None => name.to_string(),
                };
                let delay = match deaths.died(Instant::now(), up) {
                    Verdict::RestartIn(d) => d,
                    Verdict::KeepsDying(n) => {
                        say(&format!(
                            "! {who} {why}, and keeps dying ({n} times within {} s): not restarting it; see {}; {}. The rest keeps running.",
                            LOOP_WINDOW.as_secs(),
                            log.display(),
                            spec.advice
                        ));
                        return;
                    }
                };
                say(&format!("! {who} {why}; restarting it in {} s (its log: {})", delay.as_secs_f64(), log.display()));
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = &mut stop => return,
                    _ = shutdown.wait_for(|s| *s) => return,
                }
                // Stopped while it started again: over. (A shutdown that began meanwhile: `stop` ends it.)
                let Some(next) = restart(&spec, &mut stop).await else { return };
                next
            }
        };
    }
}

/// Starts `spec` again and waits until it listens (saying so), it exits, or `stop` (None: it was terminated).
async fn restart(spec: &Spec, stop: &mut oneshot::Receiver<()>) -> Option<Now> {
    let name = spec.name;
    let mut child = match (spec.start)(false) {
        Ok(c) => c,
        Err(e) => return Some(Now::Died { why: format!("could not be started again: {e:#}"), pid: None, up: Duration::ZERO }),
    };
    let pid = child.id().unwrap_or_default();
    let since = Instant::now();
    let ready = tokio::select! {
        r = ready(&mut child, &spec.addr) => r,
        _ = &mut *stop => {
            terminate(child, pid).await;
            return None;
        }
    };
    match ready {
        Ready::Listening => say(&format!("✓ {name} is back (pid {pid}), on {}", spec.addr)),
        Ready::Exited(status) => {
            signal_group(pid, nix::sys::signal::Signal::SIGKILL);
            return Some(Now::Died { why: format!("{} right after its restart", describe(status)), pid: Some(pid), up: since.elapsed() });
        }
        Ready::Slow => say(&format!("! {name} was restarted (pid {pid}) but does not listen on {} after 60 s: see {}", spec.addr, log_path(name).display())),
    }
    Some(Now::Running { child, pid, since })
}

/// SIGTERM to the process's group, SIGKILL after `STOP_WITHIN`.
async fn terminate(mut child: Child, pid: u32) {
    signal_group(pid, nix::sys::signal::Signal::SIGTERM);
    if tokio::time::timeout(STOP_WITHIN, child.wait()).await.is_err() {
        signal_group(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = child.kill().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_back_off_reset_when_steady_and_stop_when_it_keeps_dying() {
        let mut d = Deaths::default();
        let t0 = Instant::now();
        let s = Duration::from_secs;
        assert_eq!(d.died(t0, s(1)), Verdict::RestartIn(Duration::from_millis(500)));
        assert_eq!(d.died(t0 + s(2), s(1)), Verdict::RestartIn(s(1)));
        assert_eq!(d.died(t0 + s(4), s(1)), Verdict::RestartIn(s(2)));
        // Up 30 s: the next death is restarted after the first delay again.
        assert_eq!(d.died(t0 + s(40), s(30)), Verdict::RestartIn(Duration::from_millis(500)));
        for (i, at) in [50, 55, 60].into_iter().enumerate() {
            assert!(matches!(d.died(t0 + s(at), s(1)), Verdict::RestartIn(_)), "death {}", i + 5);
        }
        // The eighth death within two minutes (t0 .. t0+70): it keeps dying.
        assert_eq!(d.died(t0 + s(70), s(1)), Verdict::KeepsDying(8));

        let mut d = Deaths::default();
        let delays: Vec<Duration> = (0..4).map(|i| match d.died(t0 + s(100 * i), s(1)) {
            Verdict::RestartIn(d) => d,
            v => panic!("{v:?}"),
        }).collect();
        assert_eq!(delays[3], s(4), "doubling, deaths far apart but each soon after its start");
        let mut capped = Deaths { recent: VecDeque::new(), delay: Some(s(8)) };
        assert_eq!(capped.died(t0, s(1)), Verdict::RestartIn(BACKOFF_CAP));
        assert_eq!(capped.died(t0 + s(100), s(1)), Verdict::RestartIn(BACKOFF_CAP));
    }

    /// A process that listens on `port` for `secs`, then exits with status 3.
    fn listener(port: u16, secs: f64) -> Spec {
        let code = format!("import socket,time\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('127.0.0.1',{port}))\ns.listen()\ntime.sleep({secs})\nraise SystemExit(3)");
        Spec {
            name: "test-listener",
            addr: format!("127.0.0.1:{port}"),
            advice: "nothing".into(),
            start: Box::new(move |_| Ok(tokio::process::Command::new("python3").args(["-c", &code]).process_group(0).kill_on_drop(true).spawn()?)),
        }
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    #[tokio::test]
    async fn a_process_that_keeps_dying_is_left_stopped_and_stop_ends_the_rest_without_restarts() {
        let supervisor = Supervisor::new();
        // Dies 0.3 s after each start: restarted after 0.5, 1, 2, 4, 8, 10 and 10 s, then (the eighth death) left
        // stopped.
        let dying = supervisor.start(listener(free_port(), 0.3)).await.unwrap();
        let steady_port = free_port();
        let steady = supervisor.start(listener(steady_port, 600.0)).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !dying.task.is_finished() {
            assert!(Instant::now() < deadline, "a process dying every 0.3 s was still restarted after 60 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(!steady.task.is_finished(), "the other keeps running");
        dying.stop().await;
        // Shutting down, then stopping: it ends within its stop time, and is not started again.
        supervisor.shutting_down();
        let started = Instant::now();
        steady.stop().await;
        assert!(started.elapsed() < STOP_WITHIN);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(tokio::net::TcpStream::connect(("127.0.0.1", steady_port)).await.is_err(), "stopped, and not started again");
    }

    #[test]
    fn exits_are_described_by_status_or_signal() {
        assert_eq!(describe(ExitStatus::from_raw(1 << 8)), "exited with status 1");
        assert_eq!(describe(ExitStatus::from_raw(9)), "was killed by signal 9 (SIGKILL)");
    }
}

//! A Tansu broker of a test's own (durable sqlite engine), for tests that stop the broker: the shared one serves
//! every other test.

use crate::WAIT;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct PrivateBroker {
    pub addr: String,
    dir: std::path::PathBuf,
    child: Option<Child>,
}

fn tansu() -> String {
    std::env::var("MILLRACE_TANSU_BIN").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_default();
        format!("{home}/.millrace/tools/tansu-0.6.0/bin/tansu")
    })
}

impl PrivateBroker {
    pub async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = std::env::temp_dir().join(format!("millrace-broker-{port}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut b = Self { addr: format!("127.0.0.1:{port}"), dir, child: None };
        b.start_again().await;
        b
    }

    /// Starts the broker (again) on the same port and storage.
    pub async fn start_again(&mut self) {
        let url = format!("tcp://{}", self.addr);
        let log = std::fs::File::create(self.dir.join("broker.log")).unwrap();
        let child = Command::new(tansu())
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url, "--storage-engine", "sqlite://broker.db"])
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start tansu (MILLRACE_TANSU_BIN)");
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        while tokio::net::TcpStream::connect(&self.addr).await.is_err() {
            assert!(Instant::now() < deadline, "the private broker did not start: see {}", self.dir.display());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Freezes the broker (SIGSTOP): connections stay open and nothing answers, as a broker that hangs.
    pub fn pause(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
    }

    pub fn resume(&self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        if let Some(c) = &self.child {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), sig);
        }
    }

    pub fn stop(&mut self) {
        self.resume();
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

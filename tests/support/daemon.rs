//! The real `approvald serve` binary as a child process, for tests of what only a process
//! shows: a SIGKILL, a restart, several instances on one database. Its stderr goes to a file
//! beside the config, shown when it fails to start.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running `approvald serve --config CONFIG`, killed (SIGKILL) when dropped.
pub struct Daemon {
    child: Child,
    pub url: String,
    log: PathBuf,
}

impl Daemon {
    /// Start on `config` (which listens at `url`), logging at `warn`.
    pub fn start(config: &Path, url: &str) -> Self {
        let log = config.with_extension("stderr.log");
        let child = Command::new(env!("CARGO_BIN_EXE_approvald"))
            .args(["serve", "--config"])
            .arg(config)
            .env("APPROVALD_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn approvald");
        Self {
            child,
            url: url.to_string(),
            log,
        }
    }

    /// What the process logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until `/healthz` answers; panic with the log if it exits or takes over 20 s.
    pub async fn ready(&mut self) {
        let http = reqwest::Client::new();
        for _ in 0..400 {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "approvald exited ({status}) before serving:\n{}",
                    self.log()
                );
            }
            if http
                .get(format!("{}/healthz", self.url))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "approvald did not become ready at {}:\n{}",
            self.url,
            self.log()
        );
    }

    /// SIGKILL, and reap it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

//! A real single-member `etcd` (Debian's `etcd-server`; `scripts/deps.sh` installs it) on free
//! loopback ports with its data in a temp dir, for the brokers of the etcd runs. It can be
//! SIGKILLed and started again on the same data and ports.

use std::fs::File;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const STARTUP_DEADLINE: Duration = Duration::from_secs(30);

pub struct Etcd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind a free port").local_addr().expect("local addr").port()
}

impl Etcd {
    /// Starts one on two free ports (picked again if another process took one meanwhile).
    pub async fn start() -> Etcd {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut etcd = Etcd { child: None, dir, client_port: 0, peer_port: 0 };
        for attempt in 1..=5 {
            etcd.client_port = free_port();
            etcd.peer_port = free_port();
            if etcd.client_port == etcd.peer_port {
                continue;
            }
            if etcd.launch().await {
                return etcd;
            }
            eprintln!("etcd did not start (attempt {attempt}); log:\n{}", etcd.log());
        }
        panic!("etcd never started; last log:\n{}", etcd.log());
    }

    /// `host:port` of its client URL.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// The `--store` value for a broker in `namespace`.
    pub fn store(&self, namespace: &str) -> String {
        format!("etcd://{}/{namespace}", self.endpoint())
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Spawns it and waits until it answers `/health`; false if it exited or never did.
    async fn launch(&mut self) -> bool {
        let log = File::options().create(true).append(true).open(self.log_path()).expect("etcd log");
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new("etcd")
            .args(["--name", "sluice-test", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .arg("--initial-cluster")
            .arg(format!("sluice-test={peer}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn();
        let child = match child {
            Ok(child) => child,
            Err(e) => panic!("cannot run etcd ({e}): install Debian's etcd-server (scripts/deps.sh does)"),
        };
        self.child = Some(child);
        let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().expect("http client");
        let deadline = Instant::now() + STARTUP_DEADLINE;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(_)) = child.try_wait() {
                    self.child = None;
                    return false;
                }
            }
            if let Ok(r) = http.get(format!("{client}/health")).send().await {
                if let Ok(v) = r.json::<serde_json::Value>().await {
                    if v["health"] == "true" {
                        return true;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.kill();
        false
    }

    /// SIGKILL, and wait until it is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same data and ports (waiting while the port is still taken).
    pub async fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + STARTUP_DEADLINE;
        while !self.launch().await {
            assert!(Instant::now() < deadline, "etcd did not come back; log:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

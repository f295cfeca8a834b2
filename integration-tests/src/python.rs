//! Python cluster clients for the tests: a virtualenv under the cargo target directory with
//! redis-py, valkey-glide and coredis ([`REQUIREMENTS`]), and `python/workload.py` (the Python
//! twin of [`crate::workload`]) run as a child process. `python/clients.py` (the client
//! compatibility rounds) runs in the same venv.

use crate::bins::bin_dir;
use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

/// The redis-py version the tests pin (pip requirement).
pub const REDIS_PY: &str = "redis==5.*";

/// Everything the venv holds (pip requirements): redis-py, and two more widely used cluster
/// clients for the compatibility suite (`tests/clients.rs`). Changing a pin rebuilds the venv.
pub const REQUIREMENTS: [&str; 3] = [REDIS_PY, "valkey-glide==2.6.0", "coredis==6.9.0"];

/// Exits 0 only if the venv holds every requirement at its pinned version.
const CHECK_REQUIREMENTS: &str = "\
import sys
from importlib.metadata import version
import redis, glide, coredis
ok = redis.__version__.startswith('5.') and version('valkey-glide') == '2.6.0' and version('coredis') == '6.9.0'
sys.exit(0 if ok else 1)
";

/// The workload script.
pub fn workload_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("python").join("workload.py")
}

/// The client compatibility rounds (`tests/clients.rs`).
pub fn clients_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("python").join("clients.py")
}

/// Runs pipelines through redis-py's cluster client and a plain one (`tests/pipeline_order.rs`).
pub fn pipelines_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("python").join("pipelines.py")
}

/// A virtualenv with [`REQUIREMENTS`] installed.
#[derive(Debug, Clone)]
pub struct PythonEnv {
    pub dir: PathBuf,
    pub python: PathBuf,
}

impl PythonEnv {
    /// `$SLUICE_PYENV`, else `<cargo target dir>/pyenv`.
    pub fn default_dir() -> Result<PathBuf> {
        if let Ok(d) = std::env::var("SLUICE_PYENV") {
            return Ok(PathBuf::from(d));
        }
        if let Ok(d) = std::env::var("CARGO_TARGET_DIR") {
            return Ok(Path::new(&d).join("pyenv"));
        }
        // bin_dir is target/<profile>: its parent is the target directory.
        let bins = bin_dir()?;
        let target = bins.parent().map(Path::to_path_buf).unwrap_or(bins);
        Ok(target.join("pyenv"))
    }

    /// The venv in [`PythonEnv::default_dir`], created if missing or broken. Blocking: it
    /// may run pip. Safe to call from several test processes at once: a new venv is built
    /// in a private directory and renamed into place.
    pub fn ensure() -> Result<PythonEnv> {
        let dir = PythonEnv::default_dir()?;
        let env = PythonEnv { python: dir.join("bin").join("python"), dir: dir.clone() };
        if env.has_requirements() {
            return Ok(env);
        }
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("remove the broken venv {}", dir.display()))?;
        }
        let parent = dir.parent().ok_or_else(|| anyhow!("{} has no parent", dir.display()))?;
        std::fs::create_dir_all(parent)?;
        let tmp = parent.join(format!("pyenv.tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let python3 = crate::bins::which("python3").ok_or_else(|| {
            anyhow!("python3 is not on PATH: install it (Debian: apt-get install python3 python3-venv)")
        })?;
        run_quiet(
            Command::new(&python3).args(["-m", "venv"]).arg(&tmp),
            "python3 -m venv (Debian needs the python3-venv package: apt-get install python3-venv)",
        )?;
        let tmp_python = tmp.join("bin").join("python");
        run_quiet(
            Command::new(&tmp_python)
                .args(["-m", "pip", "install", "--disable-pip-version-check", "--no-input", "-q"])
                .args(REQUIREMENTS),
            &format!("pip install {} into {} (needs access to PyPI)", REQUIREMENTS.join(" "), tmp.display()),
        )?;
        if std::fs::rename(&tmp, &dir).is_err() {
            // Another process won the race; use its venv.
            let _ = std::fs::remove_dir_all(&tmp);
        }
        if !env.has_requirements() {
            bail!("the venv {} lacks {} after installing them", dir.display(), REQUIREMENTS.join(" "));
        }
        Ok(env)
    }

    /// [`PythonEnv::ensure`] off the async runtime's threads.
    pub async fn ensure_async() -> Result<PythonEnv> {
        tokio::task::spawn_blocking(PythonEnv::ensure).await?
    }

    fn has_requirements(&self) -> bool {
        Command::new(&self.python)
            .args(["-c", CHECK_REQUIREMENTS])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }
}

/// Runs `cmd` with no stdin; on failure the error holds its output.
fn run_quiet(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("start {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Options of `workload.py` (see its `--help`).
#[derive(Debug, Clone)]
pub struct PyWorkloadOptions {
    pub keys: usize,
    pub writers: usize,
    pub seed: u64,
    /// Commands per second over all writers (0: unlimited).
    pub rate: u32,
    pub prefix: String,
    pub expire: bool,
    pub tolerate_client_resends: bool,
}

impl PyWorkloadOptions {
    pub fn new(keys: usize) -> PyWorkloadOptions {
        PyWorkloadOptions {
            keys,
            writers: 4,
            seed: crate::workload::seed_from_env(),
            rate: 1_000,
            prefix: "py".into(),
            expire: true,
            tolerate_client_resends: false,
        }
    }
}

/// `workload.py`'s report (one JSON line on stdout).
#[derive(Debug, Clone, Deserialize)]
pub struct PyReport {
    pub seed: u64,
    pub elapsed: f64,
    pub ops: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
    pub error_examples: Vec<String>,
    pub wrong_reads: u64,
    pub wrong_read_examples: Vec<String>,
    pub client_resends: u64,
    pub uncertain_keys: usize,
    pub max_latency_ms: f64,
    pub verify: Option<PyVerify>,
    pub verify_error: Option<String>,
}

impl PyReport {
    pub fn total_ops(&self) -> u64 {
        self.ops.values().sum()
    }

    pub fn total_errors(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// The read-back part of [`PyReport`].
#[derive(Debug, Clone, Deserialize)]
pub struct PyVerify {
    pub keys_checked: usize,
    pub mismatches: usize,
    pub ttl_mismatches: usize,
    pub examples: Vec<String>,
    pub live_keys: usize,
    pub uncertain_keys: usize,
}

/// A running `workload.py`. Dropping it kills the process.
pub struct PyWorkload {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl PyWorkload {
    /// Starts the script against `proxies` (`host:port`) and waits until it has prefilled
    /// its keys and its writers run (`ready`), at most `ready_timeout`.
    pub async fn start(
        env: &PythonEnv,
        proxies: &[String],
        opts: &PyWorkloadOptions,
        ready_timeout: Duration,
    ) -> Result<PyWorkload> {
        let mut cmd = tokio::process::Command::new(&env.python);
        cmd.arg("-u")
            .arg(workload_script())
            .args(["--nodes", &proxies.join(",")])
            .args(["--keys", &opts.keys.to_string()])
            .args(["--writers", &opts.writers.to_string()])
            .args(["--seed", &opts.seed.to_string()])
            .args(["--rate", &opts.rate.to_string()])
            .args(["--prefix", &opts.prefix]);
        if opts.expire {
            cmd.arg("--expire");
        }
        if opts.tolerate_client_resends {
            cmd.arg("--tolerate-client-resends");
        }
        eprintln!("workload.py: seed {} (replay with SLUICE_SEED={})", opts.seed, opts.seed);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {}", workload_script().display()))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout pipe"))?;
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(ready_timeout, lines.next_line())
            .await
            .map_err(|_| anyhow!("workload.py was not ready within {ready_timeout:?}"))??;
        match first.as_deref().map(str::trim) {
            Some("ready") => Ok(PyWorkload { child, lines }),
            other => bail!("workload.py did not get ready (first line {other:?}, exit {:?})", child.try_wait()),
        }
    }

    /// SIGTERM, then the report it prints after verifying (at most `timeout`).
    pub async fn stop(mut self, timeout: Duration) -> Result<PyReport> {
        if let Some(pid) = self.child.id() {
            // SAFETY: kill(2) on our own child, not reaped yet (we hold it).
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
        let read = async {
            let mut last = None;
            while let Some(line) = self.lines.next_line().await? {
                if line.trim_start().starts_with('{') {
                    last = Some(line);
                }
            }
            Ok::<_, anyhow::Error>(last)
        };
        let line = tokio::time::timeout(timeout, read)
            .await
            .map_err(|_| anyhow!("workload.py did not report within {timeout:?}"))??;
        let status = self.child.wait().await?;
        let line = line.ok_or_else(|| anyhow!("workload.py printed no report (exit {status})"))?;
        if !status.success() {
            bail!("workload.py exited with {status}");
        }
        serde_json::from_str(&line).with_context(|| format!("decode workload.py's report: {line}"))
    }
}

//! Child processes that are killed when dropped, with their output in a log file.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A running program started here (a node, the broker, a coordinator, a proxy). Dropping it kills it (SIGKILL) and reaps it.
pub struct ChildProcess {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl ChildProcess {
    /// Starts `program args…`, appending its stdout and stderr to `log`.
    pub fn spawn(name: &str, program: &Path, args: &[String], log: &Path) -> Result<ChildProcess> {
        let mut p = ChildProcess {
            name: name.to_string(),
            program: program.to_path_buf(),
            args: args.to_vec(),
            log: log.to_path_buf(),
            child: None,
        };
        p.start()?;
        Ok(p)
    }

    fn start(&mut self) -> Result<()> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("open log {}", self.log.display()))?;
        let err = out.try_clone()?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("start {} ({})", self.name, self.program.display()))?;
        self.child = Some(child);
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Whether the process is still running (not exited, not killed).
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// How it exited, once it has (`None` while it runs or after `kill`).
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGKILL, and wait for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the same program with the same arguments again (after `kill`).
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.start()
    }

    /// SIGSTOP: the process stays, but does nothing (a hung node).
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// SIGCONT after `pause`.
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    /// SIGTERM: ask it to stop.
    pub fn terminate(&self) {
        self.signal(libc::SIGTERM);
    }

    fn signal(&self, sig: libc::c_int) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill(2) with a pid we spawned and still own (not reaped yet).
            unsafe {
                libc::kill(pid as libc::pid_t, sig);
            }
        }
    }

    /// The last `lines` lines of the log, for failure reports.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- last log lines of {} ----\n{}", self.name, self.log_tail(30));
        }
        // A stopped process cannot die from SIGKILL until continued on some kernels' views;
        // continue it first so the kill is immediate.
        self.resume();
        self.kill();
    }
}

/// Starts a server that listens on a port it is given: on `port` if set (one attempt), else on
/// a free port, again on another if it exits early (the port was taken in between), five
/// times at most. `args` and `log` are made for the port; `what` names it in errors. Returns
/// once `answers(port)` says the server is up (within 10 s).
pub async fn start_listening<A, Fut>(
    what: &str,
    program: &Path,
    port: Option<u16>,
    args: impl Fn(u16) -> Vec<String>,
    log: impl Fn(u16) -> PathBuf,
    answers: A,
) -> Result<(u16, ChildProcess)>
where
    A: Fn(u16) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut last = None;
    for _ in 0..if port.is_some() { 1 } else { 5 } {
        let port = port.unwrap_or_else(crate::ports::free_port);
        let mut process = ChildProcess::spawn(&format!("{what}-{port}"), program, &args(port), &log(port))?;
        let up = crate::wait::wait_for(&format!("{what} to answer"), std::time::Duration::from_secs(10), || {
            let running = process.is_running();
            let answering = answers(port);
            async move {
                if !running {
                    anyhow::bail!("{what} exited (port {port} taken?)");
                }
                Ok(answering.await.then_some(()))
            }
        })
        .await;
        match up {
            Ok(()) => return Ok((port, process)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("{what} did not start")))
}

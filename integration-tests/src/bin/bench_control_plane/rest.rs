//! What the control plane costs at rest: CPU of a process from `/proc/<pid>/stat` (user +
//! system ticks over wall time) and the broker's request rate from its own `/metrics`
//! (`sluice_broker_api_requests_total`, every request the API answered).

use anyhow::{anyhow, Context, Result};
use std::time::{Duration, Instant};

/// CPU time (user + system) a process has used so far.
pub fn cpu_time(pid: u32) -> Result<Duration> {
    let stat =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may hold spaces: count after its end.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).ok_or_else(|| anyhow!("/proc/{pid}/stat has no ')'"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let tick = |i: usize| -> Result<u64> {
        fields.get(i).ok_or_else(|| anyhow!("/proc/{pid}/stat is short"))?.parse::<u64>().map_err(|e| anyhow!("{e}"))
    };
    let ticks = tick(11)? + tick(12)?;
    // SAFETY: sysconf only reads a constant of the running system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as u64 } else { 100 };
    Ok(Duration::from_secs_f64(ticks as f64 / hz as f64))
}

/// Requests the broker has answered so far, from its `/metrics`.
pub async fn broker_requests(broker_url: &str) -> Result<u64> {
    let text = reqwest::get(format!("{broker_url}/metrics")).await?.error_for_status()?.text().await?;
    let mut total = 0u64;
    for line in text.lines().filter(|l| l.starts_with("sluice_broker_api_requests_total{")) {
        let value = line.rsplit(' ').next().unwrap_or("0");
        total += value.parse::<f64>().map_err(|e| anyhow!("metrics line {line:?}: {e}"))? as u64;
    }
    Ok(total)
}

/// Usage of a set of processes over a window.
#[derive(Debug, Clone)]
pub struct Window {
    started: Instant,
    cpu: Vec<Duration>,
    requests: u64,
}

/// Share of one core each process used, and the broker's requests per second, over a window.
#[derive(Debug, Clone)]
pub struct Usage {
    pub cpu_percent: Vec<f64>,
    pub requests_per_sec: f64,
}

impl Window {
    pub async fn open(pids: &[u32], broker_url: &str) -> Result<Window> {
        let cpu = pids.iter().map(|p| cpu_time(*p)).collect::<Result<Vec<_>>>()?;
        Ok(Window { started: Instant::now(), cpu, requests: broker_requests(broker_url).await? })
    }

    pub async fn close(self, pids: &[u32], broker_url: &str) -> Result<Usage> {
        let requests = broker_requests(broker_url).await?;
        let cpu = pids.iter().map(|p| cpu_time(*p)).collect::<Result<Vec<_>>>()?;
        let wall = self.started.elapsed().as_secs_f64();
        let cpu_percent =
            cpu.iter().zip(&self.cpu).map(|(after, before)| 100.0 * (*after - *before).as_secs_f64() / wall).collect();
        // The two /metrics reads themselves are not the control plane's.
        let requests_per_sec = requests.saturating_sub(self.requests).saturating_sub(1) as f64 / wall;
        Ok(Usage { cpu_percent, requests_per_sec })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cpu_time_is_read() {
        assert!(cpu_time(std::process::id()).is_ok());
    }
}

//! What the coordinator last read from the broker, reused while the broker's epoch stands.
//!
//! `GET /api/v1/configs` carries every proxy's config (each with its cluster's whole view):
//! with a thousand proxies that is megabytes, and reading it every round would keep the broker
//! busy for nothing. The configs only change with the epoch, so they are read again only when
//! the epoch moved (the loop's long poll says so). Two things change without the epoch and are
//! handled here: a proxy's failed/serving state (health reports; the answers to this
//! coordinator's own reports are kept as overrides until the next read), and running
//! migrations' progress, which is read every round while any migration runs.

use sluice_common::api::{ConfigsResponse, Migration, ProxyState};
use sluice_common::model::Epoch;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// With no migration running, the migration list is read again at least this often anyway
/// (a new migration moves the epoch, so this is only a safety net).
pub const MIGRATIONS_REFRESH: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
pub struct ConfigCache {
    configs: Option<Arc<ConfigsResponse>>,
    migrations: Option<(Arc<Vec<Migration>>, Instant, Epoch)>,
    /// Proxy states this coordinator's own health reports set since the configs were read.
    states: HashMap<String, ProxyState>,
}

impl ConfigCache {
    /// The configs, if they were read at `epoch`; `None`: read them again (another epoch,
    /// older too: a broker restarted on other data goes back).
    pub fn configs_at(&self, epoch: Option<Epoch>) -> Option<Arc<ConfigsResponse>> {
        let c = self.configs.as_ref()?;
        (epoch == Some(c.epoch)).then(|| c.clone())
    }

    pub fn set_configs(&mut self, configs: ConfigsResponse) -> Arc<ConfigsResponse> {
        self.states.clear();
        let configs = Arc::new(configs);
        self.configs = Some(configs.clone());
        configs
    }

    /// The migrations, unless they must be read again: some are running (their progress moves
    /// without the epoch), the epoch moved, or they are older than [`MIGRATIONS_REFRESH`].
    pub fn migrations_at(&self, epoch: Epoch, now: Instant) -> Option<Arc<Vec<Migration>>> {
        let (list, read_at, read_epoch) = self.migrations.as_ref()?;
        let fresh = list.is_empty() && *read_epoch == epoch && now.duration_since(*read_at) < MIGRATIONS_REFRESH;
        fresh.then(|| list.clone())
    }

    pub fn set_migrations(&mut self, list: Vec<Migration>, epoch: Epoch, now: Instant) -> Arc<Vec<Migration>> {
        let list = Arc::new(list);
        self.migrations = Some((list.clone(), now, epoch));
        list
    }

    /// The state the broker shows for `address`: what this coordinator last reported, else
    /// what the configs said.
    pub fn state(&self, address: &str, read: ProxyState) -> ProxyState {
        self.states.get(address).copied().unwrap_or(read)
    }

    /// A health report the broker accepted.
    pub fn set_state(&mut self, address: &str, state: ProxyState) {
        self.states.insert(address.to_string(), state);
    }

    /// Forget everything (the broker did not answer: it may have restarted with other data).
    pub fn clear(&mut self) {
        *self = ConfigCache::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_are_reused_only_at_their_epoch() {
        let mut c = ConfigCache::default();
        assert!(c.configs_at(Some(3)).is_none());
        c.set_configs(ConfigsResponse { epoch: 3, configs: Vec::new() });
        assert!(c.configs_at(Some(3)).is_some());
        assert!(c.configs_at(Some(2)).is_none(), "the broker went back");
        assert!(c.configs_at(Some(4)).is_none(), "the epoch moved");
        assert!(c.configs_at(None).is_none(), "unknown epoch: read");
    }

    #[test]
    fn own_health_reports_override_until_the_next_read() {
        let mut c = ConfigCache::default();
        c.set_configs(ConfigsResponse { epoch: 3, configs: Vec::new() });
        c.set_state("a:1", ProxyState::Failed);
        assert_eq!(c.state("a:1", ProxyState::Serving), ProxyState::Failed);
        assert_eq!(c.state("b:1", ProxyState::Serving), ProxyState::Serving);
        c.set_configs(ConfigsResponse { epoch: 4, configs: Vec::new() });
        assert_eq!(c.state("a:1", ProxyState::Serving), ProxyState::Serving);
    }

    #[test]
    fn migrations_are_read_again_while_any_runs() {
        let mut c = ConfigCache::default();
        let t0 = Instant::now();
        assert!(c.migrations_at(3, t0).is_none());
        c.set_migrations(Vec::new(), 3, t0);
        assert!(c.migrations_at(3, t0 + Duration::from_secs(1)).is_some());
        assert!(c.migrations_at(4, t0).is_none(), "the epoch moved");
        assert!(c.migrations_at(3, t0 + MIGRATIONS_REFRESH).is_none(), "too old");
    }
}

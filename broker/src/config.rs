//! The broker's settings: command-line flags, `SLUICE_*` environment variables and an optional
//! TOML file. Precedence: flag > environment > file > default (clap gives flag over
//! environment; [`Config::resolve`] lays the file and the defaults underneath).

use crate::store::etcd::DEFAULT_TIMEOUT as DEFAULT_ETCD_TIMEOUT;
use crate::store::StoreSpec;
use clap::{Parser, ValueEnum};
use serde::{Deserialize, Deserializer};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the broker listens when nothing says otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7799";
/// Where the sled database lives when nothing says otherwise (relative to the working dir).
pub const DEFAULT_DATA_DIR: &str = "sluice-broker-data";
/// How many migrations of one scale plan run at once when nothing says otherwise.
pub const DEFAULT_SCALE_CONCURRENCY: usize = 2;
/// Default of `--max-concurrent-changes`.
pub const DEFAULT_MAX_CONCURRENT_CHANGES: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// sluice-broker: epoch-versioned cluster metadata (sled or etcd) behind the HTTP API.
#[derive(Debug, Clone, Default, Parser)]
#[command(name = "sluice-broker", version, about)]
pub struct Cli {
    /// Address to serve the HTTP API on [default: 127.0.0.1:7799]
    #[arg(long, env = "SLUICE_LISTEN", value_name = "HOST:PORT")]
    pub listen: Option<String>,

    /// Directory of the sled database [default: ./sluice-broker-data]; the same as --store sled:DIR
    #[arg(long, env = "SLUICE_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    // The doc comment is clap's help text, so its brackets stay unescaped for `--help`.
    #[allow(rustdoc::broken_intra_doc_links)]
    /// Where the metadata lives: sled:DIR (one broker) or etcd://HOST:PORT[,HOST:PORT…][/NAMESPACE]
    /// (several brokers may share it; namespace default "default") [default: sled:<--data-dir>]
    #[arg(long, env = "SLUICE_STORE", value_name = "SPEC", value_parser = |s: &str| s.parse::<StoreSpec>())]
    pub store: Option<StoreSpec>,

    /// Bearer token every mutating call (POST/PUT/DELETE) must carry [default: none, open]
    #[arg(long, env = "SLUICE_API_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,

    /// How long one etcd call may take before a change answers 503 (etcd store only) [default: 2000]
    #[arg(long, env = "SLUICE_ETCD_TIMEOUT_MS", value_name = "MS", value_parser = clap::value_parser!(u64).range(100..=60_000))]
    pub etcd_timeout_ms: Option<u64>,

    /// TOML file with any of: listen, data_dir, store, etcd_timeout_ms, api_token, log_format,
    /// scale_concurrency, max_concurrent_changes
    #[arg(long, env = "SLUICE_CONFIG", value_name = "FILE.toml")]
    pub config: Option<PathBuf>,

    /// Log line format [default: text]
    #[arg(long, env = "SLUICE_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,

    /// How many migrations of one scale plan run at once (never two sharing a proxy) [default: 2]
    #[arg(long, env = "SLUICE_SCALE_CONCURRENCY", value_name = "K", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub scale_concurrency: Option<u32>,

    /// Most mutating calls served at once; past it a call is answered 503 `busy` at once
    /// (changes are applied one at a time anyway; this bounds what waits for them) [default: 64]
    #[arg(long, env = "SLUICE_MAX_CONCURRENT_CHANGES", value_name = "N", value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub max_concurrent_changes: Option<u32>,
}

/// The TOML file: the same settings as the flags, all optional.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    #[serde(default, deserialize_with = "store_spec")]
    pub store: Option<StoreSpec>,
    pub etcd_timeout_ms: Option<u64>,
    pub api_token: Option<String>,
    pub log_format: Option<LogFormat>,
    pub scale_concurrency: Option<u32>,
    pub max_concurrent_changes: Option<u32>,
}

/// `store = "…"` in the file, checked as the flag is.
fn store_spec<'de, D: Deserializer<'de>>(d: D) -> Result<Option<StoreSpec>, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map(Some).map_err(serde::de::Error::custom)
}

/// The settings the broker runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub listen: String,
    /// Where the metadata lives (`--store`, or sled in `--data-dir`).
    pub store: StoreSpec,
    /// How long one etcd call may take (100 ms..=60 s).
    pub etcd_timeout: Duration,
    /// `None`: mutating calls are open (an empty token counts as none).
    pub api_token: Option<String>,
    pub log_format: LogFormat,
    /// How many migrations of one scale plan run at once (1..=1024).
    pub scale_concurrency: usize,
    /// Most mutating calls served at once (past it: 503).
    pub max_concurrent_changes: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config file {path}: {source}")]
    Parse { path: String, source: Box<toml::de::Error> },
    #[error("config file {path}: scale_concurrency must be between 1 and 1024, not {value}")]
    Invalid { path: String, value: u32 },
    #[error("{0}")]
    Conflict(String),
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        let file: FileConfig = toml::from_str(&text)
            .map_err(|source| ConfigError::Parse { path: path.display().to_string(), source: Box::new(source) })?;
        if let Some(value) = file.scale_concurrency.filter(|k| !(1..=1024).contains(k)) {
            return Err(ConfigError::Invalid { path: path.display().to_string(), value });
        }
        if let Some(value) = file.etcd_timeout_ms.filter(|ms| !(100..=60_000).contains(ms)) {
            return Err(ConfigError::Conflict(format!(
                "config file {}: etcd_timeout_ms must be between 100 and 60000, not {value}",
                path.display()
            )));
        }
        Ok(file)
    }
}

impl Config {
    /// Flags and environment (already merged by clap) over the file named by `--config`, over
    /// the defaults.
    pub fn resolve(cli: Cli) -> Result<Config, ConfigError> {
        let file = match &cli.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        Config::merge(cli, file)
    }

    /// The merge itself, without touching the disk. A data dir beside a `--store` that names
    /// another place is refused: which one was meant cannot be guessed.
    pub fn merge(cli: Cli, file: FileConfig) -> Result<Config, ConfigError> {
        let data_dir = cli.data_dir.or(file.data_dir);
        let store = match (cli.store.or(file.store), data_dir) {
            (None, dir) => StoreSpec::Sled(dir.unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))),
            (Some(StoreSpec::Sled(store)), Some(dir)) if store != dir => {
                return Err(ConfigError::Conflict(format!(
                    "the data dir {} and --store sled:{} name two places; give one",
                    dir.display(),
                    store.display()
                )))
            }
            (Some(StoreSpec::Etcd(etcd)), Some(dir)) => {
                return Err(ConfigError::Conflict(format!(
                    "the data dir {} is sled's, but --store names {etcd}; drop the data dir",
                    dir.display()
                )))
            }
            (Some(store), _) => store,
        };
        Ok(Config {
            listen: cli.listen.or(file.listen).unwrap_or_else(|| DEFAULT_LISTEN.to_string()),
            store,
            etcd_timeout: cli
                .etcd_timeout_ms
                .or(file.etcd_timeout_ms)
                .map_or(DEFAULT_ETCD_TIMEOUT, |ms| Duration::from_millis(ms.clamp(100, 60_000))),
            api_token: cli.api_token.or(file.api_token).filter(|t| !t.is_empty()),
            log_format: cli.log_format.or(file.log_format).unwrap_or_default(),
            scale_concurrency: cli
                .scale_concurrency
                .or(file.scale_concurrency)
                .map_or(DEFAULT_SCALE_CONCURRENCY, |k| k.clamp(1, 1024) as usize),
            max_concurrent_changes: cli
                .max_concurrent_changes
                .or(file.max_concurrent_changes)
                .map_or(DEFAULT_MAX_CONCURRENT_CHANGES, |n| n.max(1) as usize),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let c = Config::merge(Cli::default(), FileConfig::default()).unwrap();
        assert_eq!(c.listen, DEFAULT_LISTEN);
        assert_eq!(c.store, StoreSpec::Sled(PathBuf::from(DEFAULT_DATA_DIR)));
        assert_eq!(c.api_token, None);
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.scale_concurrency, DEFAULT_SCALE_CONCURRENCY);
    }

    #[test]
    fn scale_concurrency_from_flag_or_file() {
        let file: FileConfig = toml::from_str("scale_concurrency = 5").unwrap();
        let c = Config::merge(Cli::default(), file.clone()).unwrap();
        assert_eq!(c.scale_concurrency, 5);
        let cli = Cli::try_parse_from(["sluice-broker", "--scale-concurrency", "1"]).unwrap();
        assert_eq!(Config::merge(cli, file).unwrap().scale_concurrency, 1);
        assert!(Cli::try_parse_from(["sluice-broker", "--scale-concurrency", "0"]).is_err());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.toml");
        std::fs::write(&path, "scale_concurrency = 0\n").unwrap();
        assert!(matches!(FileConfig::load(&path), Err(ConfigError::Invalid { value: 0, .. })));
    }

    #[test]
    fn flags_beat_the_file_and_the_file_beats_defaults() {
        let file: FileConfig =
            toml::from_str("listen = \"0.0.0.0:1\"\ndata_dir = \"/f\"\napi_token = \"file\"\nlog_format = \"json\"\n")
                .unwrap();
        let cli = Cli::try_parse_from(["sluice-broker", "--listen", "127.0.0.1:2"]).unwrap();
        let c = Config::merge(cli, file.clone()).unwrap();
        assert_eq!(c.listen, "127.0.0.1:2");
        assert_eq!(c.store, StoreSpec::Sled(PathBuf::from("/f")));
        assert_eq!(c.api_token.as_deref(), Some("file"));
        assert_eq!(c.log_format, LogFormat::Json);

        let cli = Cli::try_parse_from(["sluice-broker", "--log-format", "text", "--api-token", "cli"]).unwrap();
        let c = Config::merge(cli, file).unwrap();
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.api_token.as_deref(), Some("cli"));
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        assert!(toml::from_str::<FileConfig>("listn = \"x\"").is_err());
    }

    #[test]
    fn an_empty_token_means_no_token() {
        let cli = Cli::try_parse_from(["sluice-broker", "--api-token", ""]).unwrap();
        assert_eq!(Config::merge(cli, FileConfig::default()).unwrap().api_token, None);
    }

    #[test]
    fn the_store_from_flag_or_file_and_never_two_places() {
        let etcd = "etcd://127.0.0.1:2379/prod";
        let cli = Cli::try_parse_from(["sluice-broker", "--store", etcd]).unwrap();
        let c = Config::merge(cli, FileConfig::default()).unwrap();
        assert_eq!(c.store, etcd.parse().unwrap());
        let file: FileConfig = toml::from_str("store = \"sled:/s\"").unwrap();
        assert_eq!(Config::merge(Cli::default(), file).unwrap().store, StoreSpec::Sled(PathBuf::from("/s")));
        // The same directory twice is fine; two places, or a data dir with etcd, are not.
        let cli = Cli::try_parse_from(["sluice-broker", "--store", "sled:/s", "--data-dir", "/s"]).unwrap();
        assert!(Config::merge(cli, FileConfig::default()).is_ok());
        let cli = Cli::try_parse_from(["sluice-broker", "--store", "sled:/s", "--data-dir", "/t"]).unwrap();
        let err = Config::merge(cli, FileConfig::default()).unwrap_err().to_string();
        assert!(err.contains("two places"), "{err}");
        let cli = Cli::try_parse_from(["sluice-broker", "--store", etcd]).unwrap();
        let file: FileConfig = toml::from_str("data_dir = \"/d\"").unwrap();
        let err = Config::merge(cli, file).unwrap_err().to_string();
        assert!(err.contains("drop the data dir"), "{err}");
        // Bad specs are refused where they are read.
        let err = Cli::try_parse_from(["sluice-broker", "--store", "etcd://nohost"]).unwrap_err().to_string();
        assert!(err.contains("missing :port"), "{err}");
        assert!(toml::from_str::<FileConfig>("store = \"/x\"").is_err());
        // The etcd timeout: 2 s unless set, within bounds.
        assert_eq!(Config::merge(Cli::default(), FileConfig::default()).unwrap().etcd_timeout, DEFAULT_ETCD_TIMEOUT);
        let cli = Cli::try_parse_from(["sluice-broker", "--etcd-timeout-ms", "5000"]).unwrap();
        assert_eq!(Config::merge(cli, FileConfig::default()).unwrap().etcd_timeout, Duration::from_secs(5));
        assert!(Cli::try_parse_from(["sluice-broker", "--etcd-timeout-ms", "10"]).is_err());
    }
}

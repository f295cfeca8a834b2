//! A `sluice-broker` process and a small HTTP client for it.

use crate::bins::binary;
use crate::ports::free_port;
use crate::process::ChildProcess;
use crate::wait::wait_for;
use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use sluice_common::api::{
    ClusterList, CreateCluster, EpochResponse, ErrorBody, FailoverRequest, ProxyList, ProxySelection,
};
use sluice_common::model::{ClusterView, Epoch};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub struct BrokerProcess {
    pub port: u16,
    pub data_dir: PathBuf,
    process: ChildProcess,
}

impl BrokerProcess {
    /// Starts a broker with its sled data in `data_dir`, on `port` or a free one, and waits
    /// until it answers.
    pub async fn start(dir: &Path, data_dir: &Path, port: Option<u16>) -> Result<BrokerProcess> {
        BrokerProcess::start_with_store(dir, data_dir, None, port).await
    }

    /// [`BrokerProcess::start`], with the metadata in `store` (the broker's `--store`, e.g. an
    /// etcd the caller runs: `etcd://127.0.0.1:2379/local`) instead of sled in `data_dir`.
    pub async fn start_with_store(
        dir: &Path,
        data_dir: &Path,
        store: Option<&str>,
        port: Option<u16>,
    ) -> Result<BrokerProcess> {
        let bin = binary("sluice-broker")?;
        let mut last = None;
        for _ in 0..if port.is_some() { 1 } else { 5 } {
            let port = port.unwrap_or_else(free_port);
            let args: Vec<String> = vec![
                "--listen".into(),
                format!("127.0.0.1:{port}"),
                if store.is_some() { "--store" } else { "--data-dir" }.into(),
                store.map_or_else(|| data_dir.display().to_string(), str::to_string),
            ];
            let log = dir.join(format!("broker-{port}.log"));
            let process = ChildProcess::spawn(&format!("broker-{port}"), &bin, &args, &log)?;
            let mut broker = BrokerProcess { port, data_dir: data_dir.to_path_buf(), process };
            match broker.wait_ready().await {
                Ok(()) => return Ok(broker),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("sluice-broker did not start")))
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let client = self.client();
        let pid_alive = self.process.is_running();
        wait_for("sluice-broker to answer", Duration::from_secs(15), || {
            let client = client.clone();
            async move {
                if !pid_alive {
                    bail!("sluice-broker exited");
                }
                Ok(client.epoch().await.ok().map(|_| ()))
            }
        })
        .await
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn client(&self) -> BrokerClient {
        BrokerClient::new(&self.url())
    }

    pub fn process(&mut self) -> &mut ChildProcess {
        &mut self.process
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts it again on the same port and data, and waits until it answers.
    pub async fn restart(&mut self) -> Result<()> {
        self.process.restart()?;
        self.wait_ready().await
    }
}

/// The broker's HTTP API, as the harness and the CLI use it.
#[derive(Clone)]
pub struct BrokerClient {
    url: String,
    base: String,
    http: reqwest::Client,
    /// Sent as `Authorization: Bearer` with every change (the broker's `--api-token`).
    token: Option<String>,
}

impl BrokerClient {
    pub fn new(url: &str) -> BrokerClient {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap_or_default();
        let url = url.trim_end_matches('/').to_string();
        BrokerClient { base: format!("{url}/api/v1"), url, http, token: None }
    }

    /// The same client, sending `token` with every change.
    pub fn with_token(mut self, token: Option<String>) -> BrokerClient {
        self.token = token.filter(|t| !t.is_empty());
        self
    }

    /// GET `path` (under /api/v1) as JSON.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.send(self.http.get(format!("{}{path}", self.base))).await
    }

    /// POST `body` to `path`, as JSON.
    pub async fn post<T: DeserializeOwned>(&self, path: &str, body: &impl serde::Serialize) -> Result<T> {
        self.send(self.authorized(self.http.post(format!("{}{path}", self.base))).json(body)).await
    }

    pub async fn delete(&self, path: &str) -> Result<serde_json::Value> {
        self.send(self.authorized(self.http.delete(format!("{}{path}", self.base)))).await
    }

    fn authorized(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    async fn send<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> Result<T> {
        let resp = req.send().await.map_err(|e| {
            let why = if e.is_connect() {
                "it does not answer (is it running?)"
            } else if e.is_timeout() {
                "it did not answer in time"
            } else {
                "the request failed"
            };
            anyhow::anyhow!("the broker at {}: {why}: {e}", self.url)
        })?;
        decode(resp).await
    }

    pub async fn epoch(&self) -> Result<Epoch> {
        Ok(self.get::<EpochResponse>("/epoch").await?.epoch)
    }

    pub async fn proxies(&self) -> Result<ProxyList> {
        self.get("/proxies").await
    }

    pub async fn clusters(&self) -> Result<Vec<String>> {
        Ok(self.get::<ClusterList>("/clusters").await?.clusters)
    }

    pub async fn cluster(&self, name: &str) -> Result<ClusterView> {
        self.get(&format!("/clusters/{name}")).await
    }

    pub async fn create_cluster(&self, name: &str, proxies: Vec<String>) -> Result<ClusterView> {
        self.create_cluster_with_replicas(name, proxies, 0).await
    }

    /// A cluster whose shards' masters are `proxies`, with `replicas` free proxies per shard.
    pub async fn create_cluster_with_replicas(
        &self,
        name: &str,
        proxies: Vec<String>,
        replicas: u64,
    ) -> Result<ClusterView> {
        let req = CreateCluster { name: name.to_string(), proxies: ProxySelection::Addresses(proxies), replicas };
        self.post("/clusters", &req).await
    }

    /// `POST /api/v1/clusters/{name}/failover`.
    pub async fn failover(&self, name: &str, req: &FailoverRequest) -> Result<ClusterView> {
        self.post(&format!("/clusters/{name}/failover"), req).await
    }

    pub async fn delete_cluster(&self, name: &str) -> Result<()> {
        self.delete(&format!("/clusters/{name}")).await.map(|_| ())
    }
}

async fn decode<T: DeserializeOwned>(resp: reqwest::Response) -> Result<T> {
    let status = resp.status();
    let text = resp.text().await.context("read the broker's answer")?;
    if !status.is_success() {
        // The API's errors are `{"error":{"code","message"}}`: say the message, not the JSON.
        match serde_json::from_str::<ErrorBody>(&text) {
            Ok(e) => bail!("broker answered {status}: {}", e.error.message),
            Err(_) => bail!("broker answered {status}: {text}"),
        }
    }
    serde_json::from_str(&text).with_context(|| format!("decode the broker's answer: {text}"))
}

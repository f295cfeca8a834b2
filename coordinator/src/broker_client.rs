//! The broker calls the coordinator makes (`docs/broker-api.md`, "Coordinator calls"), typed
//! with `sluice_common::api` so the broker and the coordinator cannot disagree on a shape.
//!
//! Errors keep apart what the loop treats differently: a broker that does not answer
//! ([`BrokerError::Unreachable`], an outage: warn once, back off) and a broker that answers
//! "no" ([`BrokerError::Refused`], where 409 and 404 are usually someone else having been
//! faster and are benign for an idempotent coordinator).

use serde::de::DeserializeOwned;
use serde::Serialize;
use sluice_common::api::{
    CommitRequest, ConfigsResponse, CoordinatorHeartbeat, CoordinatorList, EpochResponse, ErrorBody, FailoverRequest,
    HealthReport, Migration, MigrationList, ProgressReport, ProxyInfo, ProxyList, StopRequest,
};
use sluice_common::model::{ClusterView, Epoch};
use std::time::Duration;

/// How long one ordinary broker call may take. A long poll gets this on top of its wait.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);

/// The longest long poll the broker accepts (`GET /api/v1/epoch?timeout_ms=`).
pub const MAX_LONG_POLL: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("broker URL {url:?} is not usable: {why}")]
    BadUrl { url: String, why: String },
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    /// No answer: connection refused, reset, timed out. The broker is down or unreachable.
    #[error("broker did not answer {method} {path}: {detail}")]
    Unreachable { method: &'static str, path: String, detail: String },
    /// An answer with a non-2xx status: the broker is up and refused the call.
    #[error("broker refused {method} {path} with {status} {code}: {message}")]
    Refused { method: &'static str, path: String, status: u16, code: String, message: String },
    /// A 2xx answer that is not the promised JSON (a wrong URL, another server on the port).
    #[error("broker answer to {method} {path} is not what the API promises: {detail}")]
    Decode { method: &'static str, path: String, detail: String },
}

impl BrokerError {
    /// The HTTP status of a refusal.
    pub fn status(&self) -> Option<u16> {
        match self {
            BrokerError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// 409: the broker's state refuses the call (a backwards phase, a stale commit, a phase
    /// that has its own call). For a coordinator that may act twice this is normal.
    pub fn is_conflict(&self) -> bool {
        self.status() == Some(409)
    }

    /// 404: the proxy, cluster or migration named in the path is gone (deleted meanwhile).
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// Whether this looks like the broker being down rather than refusing: no answer, or a
    /// server error (e.g. storage failing).
    pub fn is_outage(&self) -> bool {
        match self {
            BrokerError::Unreachable { .. } => true,
            BrokerError::Refused { status, .. } => *status >= 500,
            _ => false,
        }
    }
}

/// An HTTP client for one broker.
#[derive(Debug, Clone)]
pub struct BrokerClient {
    /// `http://host:port`, no trailing `/`.
    base: String,
    token: Option<String>,
    http: reqwest::Client,
    timeout: Duration,
}

impl BrokerClient {
    /// A client for the broker at `base` (`http://host:port`). Nothing is sent yet.
    pub fn new(base: &str, token: Option<String>) -> Result<BrokerClient, BrokerError> {
        BrokerClient::with_timeout(base, token, DEFAULT_TIMEOUT)
    }

    pub fn with_timeout(base: &str, token: Option<String>, timeout: Duration) -> Result<BrokerClient, BrokerError> {
        let base = base.trim_end_matches('/').to_string();
        let bad = |why: &str| BrokerError::BadUrl { url: base.clone(), why: why.to_string() };
        let url = reqwest::Url::parse(&base).map_err(|e| bad(&e.to_string()))?;
        // Built without TLS (the workspace's reqwest has no TLS feature): say so up front
        // instead of failing every call.
        if url.scheme() != "http" {
            return Err(bad("only http:// URLs are supported"));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(bad("no host"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(bad("a query or fragment makes no sense in a base URL"));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(timeout)
            .build()
            .map_err(|e| BrokerError::Client(error_chain(&e)))?;
        Ok(BrokerClient { base, token: token.filter(|t| !t.is_empty()), http, timeout })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET /api/v1/epoch`.
    pub async fn epoch(&self) -> Result<Epoch, BrokerError> {
        let r: EpochResponse = self.get("/api/v1/epoch".to_string(), self.timeout).await?;
        Ok(r.epoch)
    }

    /// Long poll: answers as soon as the global epoch is above `after`, or after `wait` with
    /// the current epoch. Lets the coordinator push a change at once without polling fast.
    pub async fn wait_epoch(&self, after: Epoch, wait: Duration) -> Result<Epoch, BrokerError> {
        let wait = wait.min(MAX_LONG_POLL);
        let path = format!("/api/v1/epoch?after={after}&timeout_ms={}", wait.as_millis());
        let r: EpochResponse = self.get(path, wait + self.timeout).await?;
        Ok(r.epoch)
    }

    /// `GET /api/v1/configs`: every registered proxy and the config it must hold, at one epoch.
    pub async fn configs(&self) -> Result<ConfigsResponse, BrokerError> {
        self.get("/api/v1/configs".to_string(), self.timeout).await
    }

    /// `GET /api/v1/proxies`.
    pub async fn proxies(&self) -> Result<Vec<ProxyInfo>, BrokerError> {
        let r: ProxyList = self.get("/api/v1/proxies".to_string(), self.timeout).await?;
        Ok(r.proxies)
    }

    /// `GET /api/v1/migrations`: the migrations that have not ended, of every cluster.
    pub async fn migrations(&self) -> Result<Vec<Migration>, BrokerError> {
        let r: MigrationList = self.get("/api/v1/migrations".to_string(), self.timeout).await?;
        Ok(r.migrations)
    }

    /// `PUT /api/v1/proxies/{address}/health`. Status only: the epoch does not move.
    pub async fn set_health(&self, address: &str, report: &HealthReport) -> Result<ProxyInfo, BrokerError> {
        let path = format!("/api/v1/proxies/{}/health", segment(address));
        self.send(reqwest::Method::PUT, "PUT", path, report).await
    }

    /// `PUT /api/v1/coordinators/{id}`: this coordinator is live for `ttl`; answers the ids of
    /// the live coordinators.
    pub async fn heartbeat(&self, id: &str, ttl: Duration) -> Result<Vec<String>, BrokerError> {
        let path = format!("/api/v1/coordinators/{}", segment(id));
        let body = CoordinatorHeartbeat { ttl_ms: Some(ttl.as_millis() as u64) };
        let list: CoordinatorList = self.send(reqwest::Method::PUT, "PUT", path, &body).await?;
        Ok(list.coordinators.into_iter().map(|c| c.id).collect())
    }

    /// `DELETE /api/v1/coordinators/{id}`: this coordinator stops; the others take over now.
    pub async fn leave(&self, id: &str) -> Result<(), BrokerError> {
        let path = format!("/api/v1/coordinators/{}", segment(id));
        let _: CoordinatorList = self.send(reqwest::Method::DELETE, "DELETE", path, &()).await?;
        Ok(())
    }

    /// `POST /api/v1/clusters/{c}/migrations/{id}/progress`.
    pub async fn report_progress(
        &self,
        cluster: &str,
        id: &str,
        report: &ProgressReport,
    ) -> Result<Migration, BrokerError> {
        self.send(reqwest::Method::POST, "POST", migration_path(cluster, id, "progress"), report).await
    }

    /// `POST /api/v1/clusters/{c}/migrations/{id}/commit {"epoch"}`: idempotent on the broker;
    /// the epoch keeps a coordinator that read an old record from committing the wrong thing.
    pub async fn commit(&self, cluster: &str, id: &str, epoch: Epoch) -> Result<Migration, BrokerError> {
        let body = CommitRequest { epoch: Some(epoch) };
        self.send(reqwest::Method::POST, "POST", migration_path(cluster, id, "commit"), &body).await
    }

    /// `POST /api/v1/clusters/{c}/migrations/{id}/fail {"error"}`.
    pub async fn fail(
        &self,
        cluster: &str,
        id: &str,
        error: &str,
        source_stopped_epoch: Option<Epoch>,
    ) -> Result<Migration, BrokerError> {
        let body = StopRequest { error: Some(error.to_string()), source_stopped_epoch };
        self.send(reqwest::Method::POST, "POST", migration_path(cluster, id, "fail"), &body).await
    }

    /// `POST /api/v1/clusters/{c}/failover` conditioned on the epoch the decision was made at
    /// (`If-Match`): of two coordinators deciding the same failover, one gets 412.
    pub async fn failover(
        &self,
        cluster: &str,
        req: &FailoverRequest,
        epoch: Epoch,
    ) -> Result<ClusterView, BrokerError> {
        let path = format!("/api/v1/clusters/{}/failover", segment(cluster));
        let mut request = self
            .http
            .post(format!("{}{path}", self.base))
            .timeout(self.timeout)
            .header("If-Match", format!("\"{epoch}\""))
            .json(req);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        self.call("POST", path, request).await
    }

    async fn get<T: DeserializeOwned>(&self, path: String, timeout: Duration) -> Result<T, BrokerError> {
        let request = self.http.get(format!("{}{path}", self.base)).timeout(timeout);
        self.call("GET", path, request).await
    }

    async fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        name: &'static str,
        path: String,
        body: &B,
    ) -> Result<T, BrokerError> {
        let mut request = self.http.request(method, format!("{}{path}", self.base)).timeout(self.timeout).json(body);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        self.call(name, path, request).await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: &'static str,
        path: String,
        request: reqwest::RequestBuilder,
    ) -> Result<T, BrokerError> {
        let unreachable = |e: reqwest::Error, path: &str| BrokerError::Unreachable {
            method,
            path: path.to_string(),
            detail: error_chain(&e),
        };
        let response = request.send().await.map_err(|e| unreachable(e, &path))?;
        let status = response.status();
        // A body cut off mid-way is the broker going away: an outage, not a refusal.
        let body = response.bytes().await.map_err(|e| unreachable(e, &path))?;
        if !status.is_success() {
            let (code, message) = match serde_json::from_slice::<ErrorBody>(&body) {
                Ok(e) => (e.error.code, e.error.message),
                Err(_) => (String::new(), snippet(&body)),
            };
            return Err(BrokerError::Refused { method, path, status: status.as_u16(), code, message });
        }
        serde_json::from_slice(&body).map_err(|e| BrokerError::Decode {
            method,
            path,
            detail: format!("{e}; body starts {:?}", snippet(&body)),
        })
    }
}

fn migration_path(cluster: &str, id: &str, action: &str) -> String {
    format!("/api/v1/clusters/{}/migrations/{}/{action}", segment(cluster), segment(id))
}

/// Percent-encodes one path segment. Proxy addresses carry `:` (fine in a path) and may be
/// bracketed IPv6 (`[::1]:6001`), whose brackets are not; the broker decodes the segment.
pub fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An error and its sources in one line: reqwest's own message ("error sending request")
/// hides the cause ("connection refused") in its source chain.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// The start of a body, for error messages.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
    text.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_encoded() {
        assert_eq!(segment("127.0.0.1:6001"), "127.0.0.1:6001");
        assert_eq!(segment("[::1]:6001"), "%5B::1%5D:6001");
        assert_eq!(segment("a/b c"), "a%2Fb%20c");
        assert_eq!(migration_path("shop", "m-1", "commit"), "/api/v1/clusters/shop/migrations/m-1/commit");
    }

    #[test]
    fn base_urls_are_checked() {
        assert_eq!(
            BrokerClient::new("http://127.0.0.1:7799/", None).map(|c| c.base).ok().as_deref(),
            Some("http://127.0.0.1:7799")
        );
        assert!(BrokerClient::new("127.0.0.1:7799", None).is_err());
        assert!(BrokerClient::new("https://broker:7799", None).is_err());
        assert!(BrokerClient::new("http://broker:7799?x=1", None).is_err());
    }

    #[test]
    fn refusals_are_classified() {
        let refused = |status| BrokerError::Refused {
            method: "POST",
            path: "/x".into(),
            status,
            code: "conflict".into(),
            message: "m".into(),
        };
        assert!(refused(409).is_conflict());
        assert!(!refused(409).is_outage());
        assert!(refused(404).is_not_found());
        assert!(refused(500).is_outage());
        assert!(BrokerError::Unreachable { method: "GET", path: "/x".into(), detail: "refused".into() }.is_outage());
    }
}

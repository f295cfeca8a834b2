//! The few broker calls a proxy makes itself (besides registering): a filtered migration's
//! destination records its switch at the broker before it serves the slots, and reads the
//! record back after a restart (see `migration::filtered`); a streamed import that ended
//! before its switch is reported once its copy at the destination is deleted.

use crate::options::ProxyOptions;
use sluice_common::api::{Migration, ProgressReport};
use sluice_common::model::MigrationPhase;
use std::time::Duration;

/// How long one call may take.
const TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("this proxy has no --broker to record the switch with")]
    NoBroker,
    #[error("the broker did not answer: {0}")]
    Unreachable(String),
    #[error("the broker answered {status}: {body}")]
    Refused { status: u16, body: String },
}

pub struct Broker {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Broker {
    pub fn new(opts: &ProxyOptions) -> Result<Broker, BrokerError> {
        let base = opts.broker.as_deref().ok_or(BrokerError::NoBroker)?.trim_end_matches('/').to_string();
        let http =
            reqwest::Client::builder().timeout(TIMEOUT).build().map_err(|e| BrokerError::Unreachable(e.to_string()))?;
        Ok(Broker { http, base, token: opts.api_token.clone() })
    }

    fn url(&self, cluster: &str, id: &str, rest: &str) -> String {
        format!("{}/api/v1/clusters/{cluster}/migrations/{id}{rest}", self.base)
    }

    /// `GET …/migrations/{id}`.
    pub async fn migration(&self, cluster: &str, id: &str) -> Result<Migration, BrokerError> {
        let resp = self.http.get(self.url(cluster, id, "")).send().await;
        answer(resp).await
    }

    /// `POST …/migrations/{id}/progress {"phase": "switched"}`.
    pub async fn report_switched(&self, cluster: &str, id: &str) -> Result<Migration, BrokerError> {
        let body = ProgressReport { phase: MigrationPhase::Switched, progress: None, error: None, at: None };
        answer(self.post(cluster, id, "/progress").json(&body).send().await).await
    }

    /// `POST …/migrations/{id}/copy-deleted`.
    pub async fn report_copy_deleted(&self, cluster: &str, id: &str) -> Result<Migration, BrokerError> {
        answer(self.post(cluster, id, "/copy-deleted").send().await).await
    }

    /// A `POST` to `…/migrations/{id}{rest}`, with the API token when there is one.
    fn post(&self, cluster: &str, id: &str, rest: &str) -> reqwest::RequestBuilder {
        let req = self.http.post(self.url(cluster, id, rest));
        match &self.token {
            Some(token) => req.bearer_auth(token),
            None => req,
        }
    }
}

async fn answer(resp: Result<reqwest::Response, reqwest::Error>) -> Result<Migration, BrokerError> {
    let resp = resp.map_err(|e| BrokerError::Unreachable(e.to_string()))?;
    let status = resp.status();
    let body = resp.text().await.map_err(|e| BrokerError::Unreachable(e.to_string()))?;
    if !status.is_success() {
        return Err(BrokerError::Refused { status: status.as_u16(), body });
    }
    serde_json::from_str(&body).map_err(|e| BrokerError::Unreachable(format!("an answer that is no migration: {e}")))
}

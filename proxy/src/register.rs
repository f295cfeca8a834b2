//! Registration with the broker at start: `POST /api/v1/proxies`, retried with backoff until
//! the broker answers. The proxy serves meanwhile; the coordinator then pushes its config.

use crate::options::ProxyOptions;
use sluice_common::api::RegisterProxy;
use std::time::Duration;

/// Registers this proxy, retrying until the broker accepts. Refusals (4xx) are logged and
/// retried slowly: an operator may fix the cause (e.g. free the old address) meanwhile.
pub async fn register(opts: ProxyOptions) {
    let Some(broker) = opts.broker.clone() else { return };
    let Some(control) = opts.control_announce().map(str::to_string) else {
        tracing::error!("--broker needs --control: the coordinator reaches the proxy on its control address");
        return;
    };
    let body = RegisterProxy {
        address: opts.announce().to_string(),
        control_address: control,
        node_address: opts.node_announce().to_string(),
        // Sent only when it differs: a broker from before the field refuses unknown fields.
        peer_address: Some(opts.peer_announce()).filter(|p| *p != opts.announce()).map(str::to_string),
    };
    let url = format!("{}/api/v1/proxies", broker.trim_end_matches('/'));
    let client = match reqwest::Client::builder().timeout(Duration::from_secs(5)).build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the HTTP client to register");
            return;
        }
    };
    let mut delay = Duration::from_millis(100);
    let mut warned = false;
    loop {
        let mut req = client.post(&url).json(&body);
        if let Some(token) = &opts.api_token {
            req = req.bearer_auth(token);
        }
        match req.send().await {
            Ok(resp) if resp.status().is_success() => {
                tracing::info!(broker = %broker, proxy = %body.address, "registered with the broker");
                return;
            }
            Ok(resp) => {
                let status = resp.status();
                let text = resp.text().await.unwrap_or_default();
                tracing::error!(%status, answer = %text, "the broker refused the registration; retrying");
                delay = Duration::from_secs(5);
            }
            Err(e) => {
                if !warned {
                    tracing::warn!(broker = %broker, error = %e, "broker not reachable yet; retrying");
                    warned = true;
                }
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
        tokio::time::sleep(delay).await;
    }
}

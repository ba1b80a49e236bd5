//! A client for the running node's HTTP API: commands use it when a running node holds the
//! store (sled allows one process).

use anyhow::{Context, anyhow};

use mailsluice::config::Settings;

/// A client for the running node's HTTP API (used when it holds the store).
pub(crate) struct NodeApi {
    pub(crate) base: String,
    pub(crate) http: reqwest::Client,
}

impl NodeApi {
    pub(crate) fn new(settings: &Settings) -> NodeApi {
        NodeApi {
            base: format!("http://{}", settings.node.http_listen),
            http: reqwest::Client::new(),
        }
    }

    pub(crate) async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
    ) -> anyhow::Result<T> {
        let url = format!("{}{}", self.base, path);
        let resp = self.http.get(&url).send().await.with_context(|| {
            format!("store is locked by a running node, but its API at {url} does not answer")
        })?;
        if !resp.status().is_success() {
            return Err(anyhow!(
                "{url}: HTTP {}: {}",
                resp.status(),
                resp.text().await.unwrap_or_default()
            ));
        }
        Ok(resp.json().await?)
    }

    pub(crate) async fn get_bytes(&self, path: &str) -> anyhow::Result<Vec<u8>> {
        let url = format!("{}{}", self.base, path);
        let resp = self.http.get(&url).send().await?;
        if !resp.status().is_success() {
            return Err(anyhow!("{url}: HTTP {}", resp.status()));
        }
        Ok(resp.bytes().await?.to_vec())
    }
}

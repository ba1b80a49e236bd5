//! A client for the running node's HTTP API: commands use it when a running node holds the
//! store (sled allows one process), and `reload` always.

use std::net::SocketAddr;

use anyhow::{Context, anyhow};

use mailsluice::config::Settings;

use super::UsageError;

/// A client for the running node's HTTP API (used when it holds the store).
pub(crate) struct NodeApi {
    /// `http://host:port`, without a trailing slash.
    pub(crate) base: String,
    /// One client, so a command's requests share connections.
    pub(crate) http: reqwest::Client,
}

impl NodeApi {
    /// A client for the node that runs with `settings`; fails when that node cannot be
    /// located (see [`node_address`]).
    pub(crate) fn new(settings: &Settings) -> anyhow::Result<NodeApi> {
        Ok(NodeApi {
            base: format!("http://{}", node_address(settings)?),
            http: reqwest::Client::new(),
        })
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

/// Where the running node answers: `node.http_listen`, or, when that asks for port 0 (any
/// free port), the address the node wrote to `node.http_listen_file` when it started.
pub(crate) fn node_address(settings: &Settings) -> anyhow::Result<SocketAddr> {
    let node = &settings.node;
    if node.http_listen.port() != 0 {
        return Ok(node.http_listen);
    }
    let Some(file) = &node.http_listen_file else {
        return Err(UsageError(format!(
            "node.http_listen {} lets the node pick any port, so this command cannot find it: \
             set node.http_listen_file (the node writes the address it got there)",
            node.http_listen
        ))
        .into());
    };
    let text = std::fs::read_to_string(file).with_context(|| {
        format!(
            "node.http_listen_file {}: no running node reported its address there",
            file.display()
        )
    })?;
    text.trim().parse().with_context(|| {
        format!(
            "node.http_listen_file {}: {:?} is not an address",
            file.display(),
            text.trim()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(node: &str) -> Settings {
        mailsluice::config::load_str(&format!("[node]\n{node}\n"), &Default::default())
            .expect("config")
    }

    #[test]
    fn a_fixed_port_is_the_address() {
        let s = settings("http_listen = \"127.0.0.1:9898\"\nhttp_listen_file = \"/nonexistent\"");
        assert_eq!(node_address(&s).unwrap(), "127.0.0.1:9898".parse().unwrap());
    }

    #[test]
    fn port_0_reads_the_reported_address() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("http.addr");
        let s = settings(&format!(
            "http_listen = \"127.0.0.1:0\"\nhttp_listen_file = \"{}\"",
            file.display()
        ));
        let err = node_address(&s).unwrap_err().to_string();
        assert!(
            err.contains("no running node reported its address"),
            "{err}"
        );
        std::fs::write(&file, "127.0.0.1:41234\n").unwrap();
        assert_eq!(
            node_address(&s).unwrap(),
            "127.0.0.1:41234".parse().unwrap()
        );
    }

    #[test]
    fn port_0_without_a_file_is_a_usage_error() {
        let err = node_address(&settings("http_listen = \"127.0.0.1:0\"")).unwrap_err();
        let usage = err.downcast_ref::<UsageError>().expect("a usage error");
        assert!(usage.0.contains("node.http_listen_file"), "{}", usage.0);
    }
}

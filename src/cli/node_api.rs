//! A client for the running node's HTTP API: commands use it when a running node holds the
//! store (sled allows one process), and `reload` always.

use std::net::SocketAddr;

use anyhow::{Context, anyhow};

use mailsluice::api::credentials::read_token_file;
use mailsluice::config::Settings;
use mailsluice::secret::Secret;

use super::UsageError;

/// A client for the running node's HTTP API (used when it holds the store).
pub(crate) struct NodeApi {
    /// `http://host:port` (or `https://`), without a trailing slash.
    pub(crate) base: String,
    /// One client, so a command's requests share connections.
    http: reqwest::Client,
    /// The admin token from `node.api_token_file`, sent with every request.
    token: Secret,
}

impl NodeApi {
    /// A client for the node that runs with `settings`; fails when that node cannot be
    /// located (see [`node_address`]) or its token cannot be read.
    pub(crate) fn new(settings: &Settings) -> anyhow::Result<NodeApi> {
        let addr = node_address(settings)?;
        let token =
            read_token_file(&settings.node.api_token_file, "node.api_token_file").map_err(|e| {
                anyhow!(
                    "{e}: the running node's API needs the admin token the node writes there \
                     on its first run (run this command as the user the node runs as)"
                )
            })?;
        let mut http = reqwest::Client::builder();
        let base = match &settings.node.http_tls {
            None => format!("http://{}", SocketAddr::new(connect_ip(addr), addr.port())),
            Some(tls) => {
                // The node's own certificate is trusted as a root, beside the system's and
                // tls.extra_ca_file's: a self-signed one works.
                let pem = std::fs::read(&tls.cert_file).with_context(|| {
                    format!("node.http_tls_cert_file {}", tls.cert_file.display())
                })?;
                for cert in reqwest::Certificate::from_pem_bundle(&pem).with_context(|| {
                    format!("node.http_tls_cert_file {}", tls.cert_file.display())
                })? {
                    http = http.add_root_certificate(cert);
                }
                if let Some(extra) = &settings.tls.extra_ca_file {
                    let pem = std::fs::read(extra)
                        .with_context(|| format!("tls.extra_ca_file {}", extra.display()))?;
                    for cert in reqwest::Certificate::from_pem_bundle(&pem)
                        .with_context(|| format!("tls.extra_ca_file {}", extra.display()))?
                    {
                        http = http.add_root_certificate(cert);
                    }
                }
                let ip = connect_ip(addr);
                // A certificate names hosts, often not 127.0.0.1: the first name of
                // node.http_allowed_hosts, sent to the listening address.
                match settings
                    .node
                    .http_allowed_hosts
                    .iter()
                    .find(|h| h.parse::<std::net::IpAddr>().is_err())
                {
                    Some(name) => {
                        http = http.resolve(name, SocketAddr::new(ip, addr.port()));
                        format!("https://{name}:{}", addr.port())
                    }
                    None => format!("https://{}", SocketAddr::new(ip, addr.port())),
                }
            }
        };
        Ok(NodeApi {
            base,
            http: http.build()?,
            token: Secret::new(token),
        })
    }

    fn get(&self, url: &str) -> reqwest::RequestBuilder {
        self.http.get(url).bearer_auth(self.token.expose())
    }

    pub(crate) async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
    ) -> anyhow::Result<T> {
        let url = format!("{}{}", self.base, path);
        let resp = self.get(&url).send().await.with_context(|| {
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
        let resp = self.get(&url).send().await?;
        if !resp.status().is_success() {
            return Err(anyhow!("{url}: HTTP {}", resp.status()));
        }
        Ok(resp.bytes().await?.to_vec())
    }

    /// `POST path` with a JSON body: the status and the answer's text.
    pub(crate) async fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<(reqwest::StatusCode, String)> {
        let url = format!("{}{}", self.base, path);
        let resp = self
            .http
            .post(&url)
            .bearer_auth(self.token.expose())
            .json(body)
            .send()
            .await
            .with_context(|| format!("no running node answers at {url}"))?;
        let status = resp.status();
        Ok((status, resp.text().await.unwrap_or_default()))
    }
}

/// Where to reach a node listening on `addr`: on this machine, so a node listening on every
/// address is reached on loopback.
fn connect_ip(addr: SocketAddr) -> std::net::IpAddr {
    match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
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

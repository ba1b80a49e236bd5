//! HTTPS for the node's endpoints (`node.http_tls_cert_file` / `node.http_tls_key_file`):
//! rustls with the same minimum version as mail connections (`tls.min_version`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{HttpTls, TlsVersion};

#[derive(Debug, thiserror::Error)]
pub enum HttpTlsError {
    #[error("node.http_tls_cert_file {}: {why}", path.display())]
    Cert { path: PathBuf, why: String },
    #[error("node.http_tls_key_file {}: {why}", path.display())]
    Key { path: PathBuf, why: String },
    #[error("node.http_tls_cert_file / node.http_tls_key_file: {0}")]
    Pair(rustls::Error),
}

impl HttpTlsError {
    pub fn kind(&self) -> &'static str {
        match self {
            HttpTlsError::Cert { .. } => "cert",
            HttpTlsError::Key { .. } => "key",
            HttpTlsError::Pair(_) => "mismatch",
        }
    }
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, HttpTlsError> {
    let err = |why: String| HttpTlsError::Cert {
        path: path.to_path_buf(),
        why,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no PEM certificate found".into()));
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, HttpTlsError> {
    // The parser's error may quote what it read; a key's bytes must not reach a log.
    PrivateKeyDer::from_pem_file(path).map_err(|e| HttpTlsError::Key {
        path: path.to_path_buf(),
        why: match e {
            rustls_pki_types::pem::Error::Io(io) => io.to_string(),
            rustls_pki_types::pem::Error::NoItemsFound => {
                "no PEM private key found (PKCS#8, PKCS#1 or SEC1)".into()
            }
            _ => "not a readable PEM private key".into(),
        },
    })
}

/// The server configuration: the chain and key from the files, TLS 1.3 (and 1.2 unless
/// `min` says 1.3), HTTP/1.1 only.
pub fn server_config(tls: &HttpTls, min: TlsVersion) -> Result<rustls::ServerConfig, HttpTlsError> {
    let certs = certificates(&tls.cert_file)?;
    let key = private_key(&tls.key_file)?;
    let versions: &[&'static rustls::SupportedProtocolVersion] = match min {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(HttpTlsError::Pair)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(HttpTlsError::Pair)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &Path) -> HttpTls {
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
        let tls = HttpTls {
            cert_file: dir.join("cert.pem"),
            key_file: dir.join("key.pem"),
        };
        std::fs::write(&tls.cert_file, cert.cert.pem()).unwrap();
        std::fs::write(&tls.key_file, cert.key_pair.serialize_pem()).unwrap();
        tls
    }

    #[test]
    fn a_certificate_and_its_key_make_a_server_config() {
        let dir = tempfile::tempdir().unwrap();
        let tls = pair(dir.path());
        assert!(server_config(&tls, TlsVersion::V1_3).is_ok());
    }

    #[test]
    fn a_wrong_file_is_named_and_the_key_is_never_quoted() {
        let dir = tempfile::tempdir().unwrap();
        let tls = pair(dir.path());
        let other = pair(&{
            let d = dir.path().join("other");
            std::fs::create_dir(&d).unwrap();
            d
        });
        // Another certificate's key: refused as a pair.
        let mismatched = HttpTls {
            cert_file: tls.cert_file.clone(),
            key_file: other.key_file.clone(),
        };
        let err = server_config(&mismatched, TlsVersion::V1_2).unwrap_err();
        assert_eq!(err.kind(), "mismatch", "{err}");
        // The key file where the certificate should be, and the reverse.
        let swapped = HttpTls {
            cert_file: tls.key_file.clone(),
            key_file: tls.cert_file.clone(),
        };
        let err = server_config(&swapped, TlsVersion::V1_2).unwrap_err();
        assert_eq!(err.kind(), "cert");
        assert!(err.to_string().contains("node.http_tls_cert_file"), "{err}");
        let key_text = std::fs::read_to_string(&tls.key_file).unwrap();
        let body = key_text.lines().nth(1).unwrap();
        assert!(!err.to_string().contains(body));
        let missing = HttpTls {
            cert_file: tls.cert_file.clone(),
            key_file: dir.path().join("nope.pem"),
        };
        let err = server_config(&missing, TlsVersion::V1_2).unwrap_err();
        assert!(
            err.to_string().starts_with("node.http_tls_key_file"),
            "{err}"
        );
    }
}

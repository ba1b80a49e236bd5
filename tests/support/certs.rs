//! A throw-away certificate authority and a server certificate it signed.
//!
//! rustls (webpki) refuses a bare self-signed end-entity certificate used as its own trust
//! anchor, so tests get a real two-level chain: a CA certificate to trust, and a server
//! certificate for `localhost`, `127.0.0.1` and `127.0.0.2` signed by it. Keys are ECDSA P-256,
//! which both rustls and Dovecot's OpenSSL accept.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tempfile::TempDir;

/// Names the server certificate is valid for.
pub const SERVER_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "127.0.0.2"];

/// A CA and one server certificate, as PEM files on disk.
pub struct Ca {
    /// Owns the files when the CA was made by [`ca`]; `None` when written into a caller's dir.
    _dir: Option<TempDir>,
    /// The CA certificate: what clients trust.
    pub ca_pem: PathBuf,
    /// The server certificate (leaf only), signed by the CA.
    pub cert_pem: PathBuf,
    /// The server's private key (PKCS#8 PEM, mode 0600).
    pub key_pem: PathBuf,
    /// The CA certificate in DER, for building a rustls root store without reading files.
    pub ca_der: CertificateDer<'static>,
}

/// Makes a CA and a server certificate in a fresh temporary directory.
pub fn ca() -> Ca {
    let dir = tempfile::Builder::new()
        .prefix("mailsluice-ca-")
        .tempdir()
        .expect("create a temporary directory for the test CA");
    let mut ca = ca_in(dir.path());
    ca._dir = Some(dir);
    ca
}

/// Makes a CA and a server certificate, writing `ca.pem`, `server.pem` and `server.key` into
/// `dir` (which must exist).
pub fn ca_in(dir: &Path) -> Ca {
    let ca_key = KeyPair::generate().expect("generate the CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "mailsluice test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).expect("self-sign the CA");

    let server_key = KeyPair::generate().expect("generate the server key");
    let mut server_params =
        CertificateParams::new(SERVER_NAMES.map(String::from).to_vec()).expect("server parameters");
    server_params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    server_params.is_ca = IsCa::NoCa;
    server_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = server_params
        .signed_by(&server_key, &ca_cert, &ca_key)
        .expect("sign the server certificate");

    let ca_pem = dir.join("ca.pem");
    let cert_pem = dir.join("server.pem");
    let key_pem = dir.join("server.key");
    fs::write(&ca_pem, ca_cert.pem()).expect("write ca.pem");
    fs::write(&cert_pem, server_cert.pem()).expect("write server.pem");
    write_private(&key_pem, server_key.serialize_pem().as_bytes());

    Ca {
        _dir: None,
        ca_pem,
        cert_pem,
        key_pem,
        ca_der: ca_cert.der().clone(),
    }
}

impl Ca {
    /// A root store holding only this CA.
    pub fn root_store(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots
            .add(self.ca_der.clone())
            .expect("add the test CA to a root store");
        roots
    }

    /// A rustls client configuration (ring provider, TLS 1.2 and 1.3) trusting only this CA.
    ///
    /// The provider is explicit so the tests do not depend on which rustls crypto features the
    /// rest of the dependency graph happens to enable.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        Arc::new(
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("ring supports the default protocol versions")
                .with_root_certificates(self.root_store())
                .with_no_client_auth(),
        )
    }
}

/// The name to verify the server certificate against when connecting to 127.0.0.1.
pub fn loopback_name() -> ServerName<'static> {
    ServerName::try_from("127.0.0.1").expect("an IP address is a valid server name")
}

fn write_private(path: &Path, contents: &[u8]) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    file.write_all(contents)
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// A TLS acceptor serving the certificate chain in `cert_pem` with the key in `key_pem`
/// (the harness certificate), for the relays that stand in front of Dovecot.
pub fn tls_acceptor(cert_pem: &Path, key_pem: &Path) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_pem)
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(key_pem).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

//! The node serving HTTPS (`node.http_tls_cert_file` / `node.http_tls_key_file`): the real
//! binary, a certificate from a throw-away CA, and the CLI talking to the running node over
//! it with the admin token.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{NodeProcess, read_api_token};

const BIN: &str = env!("CARGO_BIN_EXE_mailsluice");

#[test]
fn the_api_is_served_over_https_and_the_cli_uses_it() {
    let dir = tempfile::tempdir().unwrap();
    let ca = support::certs::ca_in(dir.path());
    let listen_file = dir.path().join("http.addr");
    let config = dir.path().join("mailsluice.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\ndata_dir = \"{data}\"\nhttp_listen = \"127.0.0.1:0\"\n\
             http_listen_file = \"{listen}\"\nsecret_key_file = \"{data}/secret.key\"\n\
             http_tls_cert_file = \"{cert}\"\nhttp_tls_key_file = \"{key}\"\n\n\
             [tls]\nextra_ca_file = \"{ca}\"\n",
            data = dir.path().join("data").display(),
            listen = listen_file.display(),
            cert = ca.cert_pem.display(),
            key = ca.key_pem.display(),
            ca = ca.ca_pem.display(),
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("node.log")).unwrap();
    let mut command = Command::new(BIN);
    command
        .arg("-c")
        .arg(&config)
        .arg("run")
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(log);
    let mut node = NodeProcess::spawn(command, &listen_file).unwrap();
    let node_log = || std::fs::read_to_string(dir.path().join("node.log")).unwrap_or_default();

    let pem = std::fs::read(&ca.ca_pem).unwrap();
    let client = reqwest::blocking::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    // Ready over HTTPS (the harness's own probe speaks plain HTTP).
    let deadline = Instant::now() + Duration::from_secs(20);
    let addr = loop {
        assert!(node.exited().is_none(), "node exited:\n{}", node_log());
        let reported = std::fs::read_to_string(&listen_file).ok();
        if let Some(addr) = reported.as_deref().map(str::trim).filter(|a| !a.is_empty()) {
            let ok = client
                .get(format!("https://{addr}/readyz"))
                .send()
                .is_ok_and(|r| r.status().is_success());
            if ok {
                break addr.to_owned();
            }
        }
        assert!(Instant::now() < deadline, "not ready:\n{}", node_log());
        std::thread::sleep(Duration::from_millis(50));
    };

    // Plain HTTP on the same port gets no answer from the application.
    let plain = reqwest::blocking::Client::new()
        .get(format!("http://{addr}/healthz"))
        .timeout(Duration::from_secs(5))
        .send();
    assert!(
        plain.as_ref().map_or(true, |r| !r.status().is_success()),
        "plain HTTP was served: {plain:?}"
    );
    // The API over HTTPS still wants its token.
    let anonymous = client
        .get(format!("https://{addr}/api/sources"))
        .send()
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let token = read_api_token(&dir.path().join("data").join("api.token")).unwrap();
    let authorized = client
        .get(format!("https://{addr}/api/sources"))
        .bearer_auth(&token)
        .send()
        .unwrap();
    assert_eq!(authorized.status(), 200);

    // The CLI finds the store locked and asks the node, over HTTPS, with the admin token.
    let out = Command::new(BIN)
        .arg("-c")
        .arg(&config)
        .arg("status")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "status over https failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        node_log()
    );
    let (_, status) = node.stop(Duration::from_secs(20)).unwrap();
    assert!(status.success(), "{}", node_log());
    assert!(
        !node_log().contains(&token),
        "the admin token reached the log"
    );
}

#[test]
fn a_listener_beyond_loopback_without_tls_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mailsluice.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\ndata_dir = \"{}\"\nhttp_listen = \"0.0.0.0:0\"\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    for args in [&["check-config"][..], &["run", "--once"][..]] {
        let out = Command::new(BIN)
            .arg("-c")
            .arg(&config)
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("node.http_listen") && err.contains("http_allow_plaintext"),
            "{args:?}: {err}"
        );
    }
    assert!(!dir.path().join("data").exists(), "run started anyway");
}

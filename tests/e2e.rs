//! End to end: the real `mailsluice` binary against a real Dovecot and a real OAuth2
//! server (oidc-provider), both started per test by the harness. Every message seeded is
//! checked byte for byte (sha256) after an eml export.

mod node;
mod support;

use std::time::Duration;

use node::{Node, corpus, export_hashes, sha256};
use support::{Dovecot, DovecotOptions, Oidc, OidcOptions};

const ALICE: &str = "alice@example.test";
const ALICE_PW: &str = "alice-password";
const SCOPE: &str = "openid offline_access email mail";

fn oauth_servers(access_ttl: u64) -> (Oidc, Dovecot) {
    let oidc = Oidc::start(OidcOptions {
        access_token_ttl_secs: access_ttl,
        ..OidcOptions::default()
    });
    let dovecot = Dovecot::start(DovecotOptions {
        oidc_introspection_url: Some(oidc.introspection_url()),
        ..DovecotOptions::default()
    });
    (oidc, dovecot)
}

/// OAuth2 servers and a node with one IMAPS XOAUTH2 source `mail` signing in as `user`.
fn imap_xoauth2_node(access_ttl: u64, user: &str) -> (Oidc, Dovecot, Node) {
    let (oidc, dovecot) = oauth_servers(access_ttl);
    let body =
        provider(&oidc) + &oauth_source("mail", "imap", dovecot.imaps_port, "tls", "xoauth2", user);
    let node = Node::new(&dovecot.ca_pem, &body);
    (oidc, dovecot, node)
}

fn provider(oidc: &Oidc) -> String {
    format!(
        "[providers.local]\nkind = \"oidc\"\nissuer = \"{}\"\nclient_id = \"collector\"\n\n",
        oidc.issuer
    )
}

fn oauth_source(
    name: &str,
    protocol: &str,
    port: u16,
    security: &str,
    sasl: &str,
    user: &str,
) -> String {
    let folders = if protocol == "imap" {
        "folders = [\"INBOX\"]\n"
    } else {
        ""
    };
    format!(
        "[sources.{name}]\nprotocol = \"{protocol}\"\nhost = \"localhost\"\nport = {port}\nsecurity = \"{security}\"\nusername = \"{user}\"\nauth = \"oauth2\"\nprovider = \"local\"\nsasl = \"{sasl}\"\n{folders}poll_interval_secs = 1\n\n"
    )
}

fn password_source(name: &str, protocol: &str, port: u16, security: &str) -> String {
    let folders = if protocol == "imap" {
        "folders = [\"INBOX\"]\n"
    } else {
        ""
    };
    format!(
        "[sources.{name}]\nprotocol = \"{protocol}\"\nhost = \"localhost\"\nport = {port}\nsecurity = \"{security}\"\nusername = \"{ALICE}\"\nauth = \"password\"\npassword_env = \"ALICE_PASSWORD\"\n{folders}poll_interval_secs = 1\n\n"
    )
}

/// Gets a refresh token the way an operator would elsewhere, and imports it.
fn import_token(node: &Node, oidc: &Oidc, source: &str) -> String {
    let tokens = oidc.login_auth_code("collector", ALICE, ALICE_PW, SCOPE);
    let refresh = tokens.refresh_token.expect("refresh token");
    let file = node.file("refresh.token", &format!("{refresh}\n"));
    let out = node.cli_ok(&[
        "tokens",
        "import",
        source,
        "--refresh-token-file",
        file.to_str().unwrap(),
    ]);
    assert!(out.contains("imported"), "{out}");
    refresh
}

/// Seeds the corpus, runs the node until all is stored, stops it, exports, and checks
/// every message byte for byte. Returns the node for further checks.
fn ingest_and_verify(node: &mut Node, dovecot: &Dovecot, source: &str, tag: &str) {
    let messages = seeded(tag);
    dovecot.seed(ALICE, &messages);
    node.start();
    node.wait_stored(source, messages.len() as u64, Duration::from_secs(60));
    let s = node.wait_state(source, "healthy", Duration::from_secs(30));
    assert!(s["last_success"].is_string(), "{s}");
    node.stop();
    let out = node.dir.path().join("export");
    let printed = node.cli_ok(&[
        "messages",
        "export",
        "--format",
        "eml",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        printed.contains(&format!("exported {}", messages.len())),
        "{printed}"
    );
    let mut expected: Vec<String> = messages.iter().map(|m| sha256(m)).collect();
    expected.sort();
    assert_eq!(
        export_hashes(&out),
        expected,
        "exported bytes differ from what was seeded"
    );
    // The unparseable messages are stored raw with a mark, and nothing else is marked.
    let jsonl = node.dir.path().join("all.jsonl");
    node.cli_ok(&[
        "messages",
        "export",
        "--format",
        "jsonl",
        "--out",
        jsonl.to_str().unwrap(),
    ]);
    let text = std::fs::read_to_string(&jsonl).unwrap();
    let marked = text
        .lines()
        .filter(|l| l.contains("\"parse_error\":\""))
        .count();
    assert_eq!(
        marked, 2,
        "exactly two messages should carry a parse-error mark:\n{text}"
    );
    assert!(
        text.contains("mail-parser failed on it"),
        "the message mail-parser panics on is marked as such:\n{text}"
    );
    // A panic mail-parser raises is handled, not printed as a crash.
    let log = node.log();
    assert!(
        log.contains("mail-parser failed on it") && !log.contains("panicked at"),
        "{log}"
    );
    assert!(
        text.contains("Rechnung Üäö"),
        "decoded subject missing:\n{text}"
    );
    assert!(text.contains("data.bin"), "attachment name missing");
    // Its size is counted from the base64 body, which mail-parser does not decode.
    assert!(
        text.contains("\"size\":3000"),
        "attachment size missing:\n{text}"
    );
}

#[test]
fn imaps_xoauth2_ingests_every_message_byte_exact() {
    let (oidc, dovecot, mut node) = imap_xoauth2_node(3600, ALICE);
    let refresh = import_token(&node, &oidc, "mail");
    ingest_and_verify(&mut node, &dovecot, "mail", "x2");
    // A second run finds nothing new and stores nothing twice.
    node.start();
    node.wait_state("mail", "healthy", Duration::from_secs(30));
    node.stop();
    let out = node.cli_ok(&["messages", "list"]);
    assert_eq!(out.lines().count(), seeded("x2").len(), "{out}");
    // Secrets never reach the log, the CLI output or the store files in clear.
    let log = node.log();
    assert!(!log.contains(&refresh), "refresh token in the log");
    // Quirks the IMAP parser fixes up on purpose are not warnings (imap-codec reports one
    // for every response code a healthy Dovecot sends).
    assert!(
        !log.contains("Rectified missing"),
        "parser quirk notices in the log"
    );
    let status = node.cli_ok(&["tokens", "status"]);
    assert!(
        !status.contains(&refresh) && status.contains("stored (encrypted)"),
        "{status}"
    );
    assert_no_bytes_in_dir(&node.dir.path().join("data"), refresh.as_bytes());
    // mbox (mboxrd) export reads back to the same bytes.
    let mbox = node.dir.path().join("all.mbox");
    node.cli_ok(&[
        "messages",
        "export",
        "--format",
        "mbox",
        "--out",
        mbox.to_str().unwrap(),
    ]);
    let mut got: Vec<String> = read_mboxrd(&std::fs::read(&mbox).unwrap())
        .iter()
        .map(|m| sha256(m))
        .collect();
    got.sort();
    let mut expected: Vec<String> = seeded("x2").iter().map(|m| sha256(m)).collect();
    expected.sort();
    assert_eq!(got, expected, "mbox export does not round-trip");
}

/// What [`ingest_and_verify`] seeds: the corpus and a message mail-parser panics on.
fn seeded(tag: &str) -> Vec<Vec<u8>> {
    let mut messages = corpus::corpus(tag);
    messages.push(corpus::panics_mail_parser(tag));
    messages
}

/// Splits an mboxrd file back into messages, undoing the `>From ` quoting.
fn read_mboxrd(data: &[u8]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    for line in data.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b"From ") {
            out.push(Vec::new());
            continue;
        }
        let cur = out.last_mut().expect("mbox starts with a From line");
        let depth = line.iter().take_while(|&&b| b == b'>').count();
        if depth > 0 && line[depth..].starts_with(b"From ") {
            cur.extend_from_slice(&line[1..]);
        } else {
            cur.extend_from_slice(line);
        }
    }
    for m in &mut out {
        assert_eq!(m.pop(), Some(b'\n'), "message not followed by a blank line");
    }
    out
}

#[test]
fn imaps_oauthbearer() {
    let (oidc, dovecot) = oauth_servers(3600);
    let body = provider(&oidc)
        + &oauth_source(
            "mail",
            "imap",
            dovecot.imaps_port,
            "tls",
            "oauthbearer",
            ALICE,
        );
    let mut node = Node::new(&dovecot.ca_pem, &body);
    import_token(&node, &oidc, "mail");
    ingest_and_verify(&mut node, &dovecot, "mail", "ob");
}

#[test]
fn pop3s_xoauth2_two_step() {
    let (oidc, dovecot) = oauth_servers(3600);
    let body =
        provider(&oidc) + &oauth_source("pop", "pop3", dovecot.pop3s_port, "tls", "xoauth2", ALICE);
    let mut node = Node::new(&dovecot.ca_pem, &body);
    import_token(&node, &oidc, "pop");
    ingest_and_verify(&mut node, &dovecot, "pop", "p2");
    let log = dovecot.log();
    assert!(
        log.contains("mech=XOAUTH2") || log.contains("XOAUTH2"),
        "no XOAUTH2 login in Dovecot's log"
    );
}

#[test]
fn imap_starttls_password() {
    let dovecot = Dovecot::start(DovecotOptions::default());
    let body = password_source("mail", "imap", dovecot.imap_port, "starttls");
    let mut node = Node::new(&dovecot.ca_pem, &body);
    node.env.push(("ALICE_PASSWORD".into(), ALICE_PW.into()));
    ingest_and_verify(&mut node, &dovecot, "mail", "st");
    let logins = dovecot.wait_for_logins(1);
    assert!(!logins.is_empty(), "no login lines in Dovecot's log");
    for l in &logins {
        assert!(l.contains("TLS"), "login without TLS: {l}");
    }
    assert!(!node.log().contains(ALICE_PW), "password in the node log");
}

#[test]
fn pop3_stls_password() {
    let dovecot = Dovecot::start(DovecotOptions::default());
    let body = password_source("pop", "pop3", dovecot.pop3_port, "starttls");
    let mut node = Node::new(&dovecot.ca_pem, &body);
    node.env.push(("ALICE_PASSWORD".into(), ALICE_PW.into()));
    ingest_and_verify(&mut node, &dovecot, "pop", "ps");
    for l in dovecot.wait_for_logins(1) {
        assert!(l.contains("TLS"), "login without TLS: {l}");
    }
}

#[test]
fn tokens_expire_and_rotate_during_one_run() {
    // 4-second access tokens, 1-second margin: the token runs out several times while
    // the node keeps polling every second.
    let (oidc, dovecot, mut node) = imap_xoauth2_node(4, ALICE);
    import_token(&node, &oidc, "mail");
    oidc.reset_stats();
    node.start();
    for round in 0..4 {
        let batch = corpus::many(&format!("r{round}"), 5);
        dovecot.seed(ALICE, &batch);
        node.wait_stored("mail", 5 * (round + 1), Duration::from_secs(30));
        // The token in use runs out and the node gets (and rotates) the next one.
        wait_for_refresh(&oidc, &node);
    }
    let sources = node.sources();
    let s = Node::source(&sources, "mail");
    assert_eq!(s["state"], "healthy", "{s}");
    node.stop();
    let stats = oidc.stats();
    let ok = stats["token_requests"]["refresh_token"]["ok"]
        .as_u64()
        .unwrap_or(0);
    let err = stats["token_requests"]["refresh_token"]["error"]
        .as_u64()
        .unwrap_or(0);
    assert!(ok >= 3, "expected several refreshes, stats: {stats}");
    assert_eq!(
        err, 0,
        "a refresh failed (rotation not persisted?): {stats}"
    );
    // Refreshes happen when needed, not on every 1-second poll.
    assert!(ok <= 12, "refreshed too often: {stats}");
    let metrics = node_metrics_after_restart(&mut node);
    assert!(
        metrics.contains("mailsluice_messages_ingested_total"),
        "{metrics}"
    );
}

/// Waits until the node has made one more successful refresh than it had made so far.
fn wait_for_refresh(oidc: &Oidc, node: &Node) {
    let before = oidc.token_counts("refresh_token").0;
    node.wait("an access token refresh", Duration::from_secs(30), |_| {
        (oidc.token_counts("refresh_token").0 > before).then_some(())
    });
}

fn node_metrics_after_restart(node: &mut Node) -> String {
    node.start();
    let m = node.get("/metrics");
    node.stop();
    m
}

#[test]
fn revoked_grant_parks_the_source_without_a_retry_storm() {
    let (oidc, dovecot, mut node) = imap_xoauth2_node(2, ALICE);
    import_token(&node, &oidc, "mail");
    dovecot.seed(ALICE, &corpus::many("rv", 3));
    node.start();
    node.wait_stored("mail", 3, Duration::from_secs(30));
    oidc.revoke_user(ALICE);
    oidc.reset_stats();
    let s = node.wait_state("mail", "needs_reauth", Duration::from_secs(30));
    assert!(
        s["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("invalid_grant"),
        "{s}"
    );
    // Time passing is the test here: five more poll intervals in which a node that retried
    // a refused grant would have asked the provider again. There is no event to wait on.
    std::thread::sleep(Duration::from_secs(5));
    let stats = oidc.stats();
    let requests: u64 = ["ok", "error"]
        .iter()
        .map(|k| {
            stats["token_requests"]["refresh_token"][k]
                .as_u64()
                .unwrap_or(0)
        })
        .sum();
    assert!(
        requests <= 1,
        "refresh retried after invalid_grant: {stats}"
    );
    let metrics = node.get("/metrics");
    assert!(
        metrics.contains("mailsluice_source_state{source=\"mail\",state=\"needs_reauth\"} 1"),
        "{metrics}"
    );
    let status = node.cli_ok(&["status"]);
    assert!(status.contains("needs_reauth"), "{status}");
    // Re-authorized through the running node (the CLI finds the store locked and uses the
    // API): the source resumes without a restart and collects what arrived meanwhile.
    dovecot.seed(ALICE, &corpus::many("rv2", 2));
    import_token(&node, &oidc, "mail");
    node.wait_stored("mail", 5, Duration::from_secs(30));
    node.wait_state("mail", "healthy", Duration::from_secs(30));
    // Reading the store while the node runs also goes through the API.
    let out = node.dir.path().join("live-export");
    let printed = node.cli_ok(&[
        "messages",
        "export",
        "--format",
        "eml",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(printed.contains("exported 5"), "{printed}");
    node.stop();
}

#[test]
fn username_not_matching_the_token_is_an_auth_error_with_the_server_reply() {
    let (oidc, dovecot) = oauth_servers(3600);
    let body = provider(&oidc)
        + &oauth_source(
            "mail",
            "imap",
            dovecot.imaps_port,
            "tls",
            "xoauth2",
            "bob@example.test",
        );
    // Alice's grant, stored while the source was hers (an import under bob's name is
    // refused, as `authorize` refuses it); then the configuration names bob.
    let mut node = Node::new(
        &dovecot.ca_pem,
        &(provider(&oidc)
            + &oauth_source("mail", "imap", dovecot.imaps_port, "tls", "xoauth2", ALICE)),
    );
    import_token(&node, &oidc, "mail");
    node.rewrite_body(&body);
    node.start();
    let s = node.wait_state("mail", "degraded", Duration::from_secs(30));
    let err = s["last_error"].as_str().unwrap_or("");
    assert!(err.contains("authentication refused"), "{s}");
    // Dovecot answers a rejected token with an error challenge; it was answered (no hang)
    // and its JSON is part of the error.
    assert!(err.contains("challenge:") && err.contains("status"), "{s}");
    assert!(
        err.contains("AUTHENTICATIONFAILED") || err.contains("NO"),
        "server reply missing: {s}"
    );
    let metrics = node.get("/metrics");
    assert!(
        metrics.contains("mailsluice_errors_total{source=\"mail\",kind=\"auth\"}"),
        "{metrics}"
    );
    node.stop();
}

#[test]
fn metrics_pass_promtool_and_carry_no_secret() {
    let (oidc, dovecot, mut node) = imap_xoauth2_node(3600, ALICE);
    let refresh = import_token(&node, &oidc, "mail");
    dovecot.seed(ALICE, &corpus::corpus("pm"));
    node.start();
    node.wait_stored(
        "mail",
        corpus::corpus("pm").len() as u64,
        Duration::from_secs(60),
    );
    let metrics = node.get("/metrics");
    node.stop();
    for name in mailsluice::telemetry::CATALOG.iter().map(|d| d.name) {
        // Histograms appear once observed, the client-secret horizon and the sink
        // metrics only when configured; they are checked by promtool below and by their
        // own tests (tests/sinks_webhook.rs for the sinks).
        if name.ends_with("_seconds") && name.contains("duration")
            || name == "mailsluice_client_secret_expiry_timestamp_seconds"
            || name.starts_with("mailsluice_sink_")
        {
            continue;
        }
        assert!(
            metrics.contains(&format!("# HELP {name} ")),
            "{name} has no HELP:\n{metrics}"
        );
    }
    assert!(!metrics.contains(&refresh));
    let file = node.file("metrics.txt", &metrics);
    let out = std::process::Command::new("promtool")
        .arg("check")
        .arg("metrics")
        .stdin(std::fs::File::open(&file).unwrap())
        .output()
        .expect("promtool (Debian package prometheus) must be installed");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn assert_no_bytes_in_dir(dir: &std::path::Path, needle: &[u8]) {
    for entry in walk(dir) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle),
            "secret found in clear in {}",
            entry.display()
        );
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn no_secret_in_logs_metrics_cli_output_or_store_files_over_a_whole_run() {
    // Confidential client (client secret from the environment), 3-second access tokens so
    // several refreshes and rotations happen, a password source beside it, and the most
    // verbose logging there is.
    let (oidc, dovecot) = oauth_servers(3);
    let body = format!(
        "[providers.local]\nkind = \"oidc\"\nissuer = \"{}\"\nclient_id = \"collector-confidential\"\nclient_secret_env = \"LOCAL_CLIENT_SECRET\"\n\n",
        oidc.issuer
    ) + &oauth_source("mail", "imap", dovecot.imaps_port, "tls", "xoauth2", ALICE)
        + &password_source("pop", "pop3", dovecot.pop3s_port, "tls");
    let mut node = Node::new(&dovecot.ca_pem, &body);
    let client_secret = "collector-secret";
    node.env
        .push(("LOCAL_CLIENT_SECRET".into(), client_secret.into()));
    node.env.push(("ALICE_PASSWORD".into(), ALICE_PW.into()));
    node.env.push(("RUST_LOG".into(), "trace".into()));
    let tokens = oidc.login_auth_code("collector-confidential", ALICE, ALICE_PW, SCOPE);
    let file = node.file("rt", &tokens.refresh_token.clone().unwrap());
    let mut outputs = node.cli_ok(&[
        "tokens",
        "import",
        "mail",
        "--refresh-token-file",
        file.to_str().unwrap(),
    ]);
    std::fs::remove_file(&file).unwrap();
    dovecot.seed(ALICE, &corpus::corpus("sx"));
    node.start();
    node.wait_stored("mail", 6, Duration::from_secs(30));
    node.wait_stored("pop", 6, Duration::from_secs(30));
    dovecot.seed(ALICE, &corpus::many("sx2", 3));
    node.wait_stored("mail", 9, Duration::from_secs(30));
    wait_for_refresh(&oidc, &node); // outlive one more access token
    node.wait_stored("mail", 9, Duration::from_secs(30));
    let metrics = node.get("/metrics");
    outputs.push_str(&node.cli_ok(&["status"]));
    outputs.push_str(&node.cli_ok(&["tokens", "status"]));
    outputs.push_str(&node.get("/api/sources"));
    outputs.push_str(&node.get("/api/tokens"));
    node.stop();
    let log = node.log();
    let issued = oidc.issued_tokens();
    let (refreshes, _) = oidc.token_counts("refresh_token");
    assert!(
        refreshes >= 2,
        "expected refreshes during the run: {}",
        oidc.stats()
    );
    assert!(issued.len() >= 4, "expected several issued tokens");
    let mut secrets: Vec<String> = issued;
    secrets.push(client_secret.into());
    secrets.push(ALICE_PW.into());
    for s in &secrets {
        let short: String = s.chars().take(6).collect();
        assert!(
            !log.contains(s.as_str()),
            "secret {short}… found in the node log"
        );
        assert!(
            !metrics.contains(s.as_str()),
            "secret {short}… found in /metrics"
        );
        assert!(
            !outputs.contains(s.as_str()),
            "secret {short}… found in CLI/API output"
        );
        assert_no_bytes_in_dir(&node.dir.path().join("data"), s.as_bytes());
    }
    assert!(
        log.contains("TRACE") || log.contains("trace"),
        "trace logging was not on"
    );
}

#[test]
fn client_secret_expiry_is_warned_about_and_exported() {
    let ca = support::ca();
    let soon = (chrono::Utc::now() + chrono::Duration::days(10))
        .format("%Y-%m-%d")
        .to_string();
    let body = format!(
        "[providers.o365]\nkind = \"office365\"\ntenant = \"contoso.onmicrosoft.com\"\nclient_id = \"app\"\nclient_secret_env = \"O365_SECRET\"\nclient_secret_expires = \"{soon}\"\n\n[sources.mail]\nprotocol = \"imap\"\nhost = \"localhost\"\nport = 1\nusername = \"support@contoso.com\"\nauth = \"oauth2\"\nprovider = \"o365\"\n"
    );
    let mut node = Node::new(&ca.ca_pem, &body);
    node.env.push(("O365_SECRET".into(), "s3cr3t-value".into()));
    let status = node.cli_ok(&["tokens", "status"]);
    assert!(
        status.contains(&format!(
            "WARNING: client secret of provider o365 expires on {soon}"
        )),
        "{status}"
    );
    let offline = node.cli_ok(&["status"]);
    assert!(
        offline.contains(&format!(
            "WARNING mail: client secret of provider o365 expires on {soon}"
        )),
        "{offline}"
    );
    node.start();
    let metrics = node.get("/metrics");
    // The running node's /api/sources (what `status` reads then) carries it too.
    let sources = node.sources();
    let warnings = Node::source(&sources, "mail")["warnings"].to_string();
    assert!(
        warnings.contains("client secret of provider o365"),
        "{sources}"
    );
    let log = node.log();
    node.stop();
    assert!(
        metrics.contains("mailsluice_client_secret_expiry_timestamp_seconds{provider=\"o365\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("# HELP mailsluice_client_secret_expiry_timestamp_seconds "),
        "{metrics}"
    );
    assert!(
        log.contains("client secret of provider o365 expires"),
        "{log}"
    );
    assert!(!log.contains("s3cr3t-value") && !metrics.contains("s3cr3t-value"));
}

/// `mailsluice_tls_handshakes_total{source="mail",kind}` from the node's metrics.
fn handshakes(metrics: &str, kind: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("mailsluice_tls_handshakes_total{"))
        .filter(|l| l.contains("source=\"mail\"") && l.contains(&format!("kind=\"{kind}\"")))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

/// Polls an IMAPS mailbox every second through `sessions` sessions against a Dovecot with
/// `extra_config`; returns the node's (full, resumed) handshake counts.
fn handshakes_over_sessions(extra_config: &str, sessions: u64) -> (u64, u64) {
    let dovecot = Dovecot::start(DovecotOptions {
        extra_config: extra_config.to_string(),
        ..DovecotOptions::default()
    });
    let mut node = Node::new(
        &dovecot.ca_pem,
        &password_source("mail", "imap", dovecot.imaps_port, "tls").replace(
            "folders = [\"INBOX\"]\n",
            "folders = [\"INBOX\"]\nidle = false\n",
        ),
    );
    node.env.push(("ALICE_PASSWORD".into(), ALICE_PW.into()));
    node.start();
    node.wait("sessions", Duration::from_secs(60), |n| {
        let s = n.sources();
        let done = Node::source(&s, "mail")["sessions_ok"].as_u64()?;
        (done >= sessions).then_some(())
    });
    let metrics = node.get("/metrics");
    node.stop();
    (
        handshakes(&metrics, "full"),
        handshakes(&metrics, "resumed"),
    )
}

#[test]
fn tls_sessions_resume_when_the_server_keeps_its_ticket_key() {
    // Dovecot's high-performance login mode: one imap-login process serves every
    // connection, so the tickets it issues are good for the next session.
    let (full, resumed) = handshakes_over_sessions(
        "service imap-login {\n  service_count = 0\n  process_min_avail = 1\n}\n",
        4,
    );
    assert_eq!(
        full, 1,
        "only the first handshake is full (resumed: {resumed})"
    );
    assert!(resumed >= 3, "full {full}, resumed {resumed}");
    // Its default (a login process per connection, each with its own ticket key): every
    // handshake is full, and is counted as such.
    let (full, resumed) = handshakes_over_sessions("", 3);
    assert!(full >= 3 && resumed == 0, "full {full}, resumed {resumed}");
}

/// A client paging `/api/messages?after=ID` while several sources backfill at once sees
/// every message: ids are given in commit order, so no message commits under an id below
/// one the client has already passed.
#[test]
fn paging_by_id_during_a_parallel_backfill_misses_nothing() {
    let dovecot = Dovecot::start(DovecotOptions::default());
    let folders = ["A", "B", "C"];
    let per_folder = 300;
    let mut body = String::new();
    for f in folders {
        dovecot.seed_folder(ALICE, f, &corpus::many(&format!("page-{f}"), per_folder));
        body += &password_source(
            &format!("src{}", f.to_lowercase()),
            "imap",
            dovecot.imaps_port,
            "tls",
        )
        .replace("folders = [\"INBOX\"]", &format!("folders = [\"{f}\"]"));
    }
    let mut node = Node::new(&dovecot.ca_pem, &body);
    node.env.push(("ALICE_PASSWORD".into(), ALICE_PW.into()));
    node.start();
    let total = folders.len() * per_folder;
    let mut seen = std::collections::BTreeSet::new();
    let mut after: Option<u64> = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut pages = 0;
    while seen.len() < total {
        assert!(
            std::time::Instant::now() < deadline,
            "paging saw {} of {total} messages",
            seen.len()
        );
        let path = match after {
            Some(a) => format!("/api/messages?limit=50&after={a}"),
            None => "/api/messages?limit=50".to_string(),
        };
        let page: Vec<serde_json::Value> = serde_json::from_str(&node.get(&path)).expect("json");
        pages += 1;
        if page.is_empty() {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        for m in &page {
            let id = m["id"].as_u64().expect("every message has an id");
            assert!(after.is_none_or(|a| id > a), "page not in id order");
            seen.insert(m["sha256"].as_str().unwrap().to_string());
            after = Some(id);
        }
    }
    node.wait_stored("srca", per_folder as u64, Duration::from_secs(60));
    node.stop();
    assert_eq!(seen.len(), total);
    assert!(
        pages > 3,
        "the backfill was over before paging began ({pages} pages)"
    );
}

/// An import through the running node whose proving refresh the provider refused changes
/// nothing: the error names the provider's code, `tokens status` and `/api/sources` still
/// agree the source is healthy, and it keeps collecting with the grant it had.
#[test]
fn a_refused_import_through_the_running_node_keeps_the_source_collecting() {
    let (oidc, dovecot, mut node) = imap_xoauth2_node(3600, ALICE);
    import_token(&node, &oidc, "mail");
    dovecot.seed(ALICE, &corpus::many("ri", 2));
    node.start();
    node.wait_stored("mail", 2, Duration::from_secs(30));
    node.wait_state("mail", "healthy", Duration::from_secs(30));
    let garbage = node.file("garbage.token", "not-a-refresh-token\n");
    let out = node.cli(&[
        "tokens",
        "import",
        "mail",
        "--refresh-token-file",
        garbage.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a refused import must fail");
    assert!(stderr.contains("invalid_grant"), "{stderr}");
    assert!(
        stderr.contains("the stored grant was left unchanged"),
        "{stderr}"
    );
    let printed = node.cli_ok(&["tokens", "status"]);
    assert!(!printed.contains("NEEDS RE-AUTHORIZATION"), "{printed}");
    assert!(
        printed.contains("state:                healthy"),
        "state and grant disagree:\n{printed}"
    );
    let sources = node.sources();
    assert_eq!(Node::source(&sources, "mail")["state"], "healthy");
    dovecot.seed(ALICE, &corpus::many("ri2", 2));
    node.wait_stored("mail", 4, Duration::from_secs(30));
    node.stop();
}

/// During a backfill the backlog that `status` and `/api/sources` show is the one the
/// `backlog_messages` metric has (it was 0 in the status while the metric counted).
#[test]
fn backlog_in_status_and_metrics_agree_during_a_backfill() {
    let dovecot = Dovecot::start(DovecotOptions::default());
    let total = 3000u64;
    dovecot.seed(ALICE, &corpus::many("bl", total as usize));
    let mut node = Node::new(
        &dovecot.ca_pem,
        &password_source("mail", "imap", dovecot.imaps_port, "tls"),
    );
    node.env.push(("ALICE_PASSWORD".into(), ALICE_PW.into()));
    node.start();
    let gauge = |node: &Node| -> Option<u64> {
        node.get("/metrics")
            .lines()
            .find(|l| l.starts_with("mailsluice_backlog_messages{source=\"mail\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .map(|v| v as u64)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut seen_during = 0;
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the backfill never finished"
        );
        let before = gauge(&node);
        let sources = node.sources();
        let s = Node::source(&sources, "mail");
        let shown = s["backlog"].as_u64().unwrap();
        let after = gauge(&node);
        let stored = s["stored_total"].as_u64().unwrap();
        // One folder, listed at once: from the listing on, the backlog only falls (before it,
        // the metric and the status both read 0).
        if let (Some(before), Some(after)) = (before, after)
            && before > 0
        {
            assert!(
                before >= shown && shown >= after,
                "status shows {shown}, metric {before} then {after}"
            );
        }
        if shown > 0 && stored > 0 && stored < total {
            seen_during += 1;
            assert!(
                shown <= total - stored + 256,
                "backlog {shown} with {stored} stored"
            );
        }
        if stored == total && s["state"] == "healthy" {
            assert_eq!(shown, 0, "{s}");
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        seen_during > 0,
        "the status never showed the backlog of a running backfill"
    );
    let status = node.cli_ok(&["status"]);
    node.stop();
    assert!(status.contains("BACKLOG"), "{status}");
}

//! `mailsluice test-login`: every step printed with its result, exit 0 only when a mailbox
//! was opened, the failing step named (wrong user, TLS below 1.2), no secret printed.

mod node;
mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use node::{Node, corpus};
use support::{Dovecot, DovecotOptions, Oidc, OidcOptions};

const ALICE: &str = "alice@example.test";
const ALICE_PW: &str = "alice-password";
const SCOPE: &str = "openid offline_access email mail";

fn oauth_config(oidc: &Oidc, host_port: (&str, u16), username: &str, protocol: &str) -> String {
    format!(
        "[providers.local]\nkind = \"oidc\"\nissuer = \"{}\"\nclient_id = \"collector\"\n\n[sources.mail]\nprotocol = \"{protocol}\"\nhost = \"{}\"\nport = {}\nusername = \"{username}\"\nauth = \"oauth2\"\nprovider = \"local\"\n",
        oidc.issuer, host_port.0, host_port.1
    )
}

fn import(node: &Node, oidc: &Oidc) -> String {
    let t = oidc.login_auth_code("collector", ALICE, ALICE_PW, SCOPE);
    let refresh = t.refresh_token.unwrap();
    let f = node.file("rt", &refresh);
    node.cli_ok(&[
        "tokens",
        "import",
        "mail",
        "--refresh-token-file",
        f.to_str().unwrap(),
    ]);
    std::fs::remove_file(f).unwrap();
    refresh
}

fn run(node: &Node) -> (bool, String) {
    let out = node.cli(&["test-login", "mail"]);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn success_walks_every_step_and_prints_no_secret() {
    let oidc = Oidc::start(OidcOptions::default());
    let dovecot = Dovecot::start(DovecotOptions {
        oidc_introspection_url: Some(oidc.introspection_url()),
        ..DovecotOptions::default()
    });
    dovecot.seed(ALICE, &corpus::corpus("tl"));
    let node = Node::new(
        &dovecot.ca_pem,
        &oauth_config(&oidc, ("localhost", dovecot.imaps_port), ALICE, "imap"),
    );
    let refresh = import(&node, &oidc);
    let (ok, out) = run(&node);
    println!("{out}");
    assert!(ok, "{out}");
    for needle in [
        "[ ok ] resolve",
        "[ ok ] connect",
        "[ ok ] tls          TLSv1_3",
        "[ ok ] capabilities",
        "AUTH=XOAUTH2",
        "[ ok ] token        cached; opaque token",
        "[ ok ] sasl         XOAUTH2 as user=alice@example.test",
        "[ ok ] header       Subject: html tl",
        "result: mailbox opened",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
    let examined = format!(
        "[ ok ] mailbox      EXAMINE INBOX: {} messages",
        corpus::corpus("tl").len()
    );
    assert!(out.contains(&examined), "missing {examined:?} in:\n{out}");
    for issued in oidc.issued_tokens().iter().chain([&refresh]) {
        assert!(!out.contains(issued.as_str()), "a token was printed");
    }
}

#[test]
fn wrong_user_fails_at_sasl_with_the_server_reply() {
    let oidc = Oidc::start(OidcOptions::default());
    let dovecot = Dovecot::start(DovecotOptions {
        oidc_introspection_url: Some(oidc.introspection_url()),
        ..DovecotOptions::default()
    });
    // Alice's grant, stored while the source was hers; then the configuration names bob
    // (an import of it now would be refused, as `authorize` refuses it).
    let node = Node::new(
        &dovecot.ca_pem,
        &oauth_config(&oidc, ("localhost", dovecot.imaps_port), ALICE, "imap"),
    );
    import(&node, &oidc);
    node.rewrite_body(&oauth_config(
        &oidc,
        ("localhost", dovecot.imaps_port),
        "bob@example.test",
        "imap",
    ));
    let (ok, out) = run(&node);
    assert!(!ok, "{out}");
    assert!(
        out.contains("[FAIL] sasl         XOAUTH2 as user=bob@example.test"),
        "{out}"
    );
    assert!(out.contains("AUTHENTICATIONFAILED"), "{out}");
    assert!(out.contains("result: FAILED"), "{out}");
}

/// A mistyped import beside a working grant: refused with the provider's code, and the
/// stored grant still signs in.
#[test]
fn a_refused_import_leaves_the_grant_that_signs_in() {
    let oidc = Oidc::start(OidcOptions::default());
    let dovecot = Dovecot::start(DovecotOptions {
        oidc_introspection_url: Some(oidc.introspection_url()),
        ..DovecotOptions::default()
    });
    dovecot.seed(ALICE, &corpus::corpus("ri"));
    let node = Node::new(
        &dovecot.ca_pem,
        &oauth_config(&oidc, ("localhost", dovecot.imaps_port), ALICE, "imap"),
    );
    import(&node, &oidc);
    let garbage = node.file("garbage.token", "not-a-refresh-token\n");
    let out = node.cli(&[
        "tokens",
        "import",
        "mail",
        "--refresh-token-file",
        garbage.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a garbage token must be refused");
    assert!(stderr.contains("invalid_grant"), "{stderr}");
    assert!(
        stderr.contains("the stored grant was left unchanged"),
        "{stderr}"
    );
    let status = node.cli_ok(&["tokens", "status"]);
    assert!(!status.contains("NEEDS RE-AUTHORIZATION"), "{status}");
    assert!(
        status.contains(&format!("consented by:         {ALICE}\n")),
        "{status}"
    );
    let (ok, out) = run(&node);
    assert!(ok, "{out}");
}

#[test]
fn password_pop3_through_a_running_node() {
    let dovecot = Dovecot::start(DovecotOptions::default());
    dovecot.seed(ALICE, &corpus::corpus("tp"));
    let body = format!(
        "[sources.mail]\nprotocol = \"pop3\"\nhost = \"localhost\"\nport = {}\nsecurity = \"starttls\"\nusername = \"{ALICE}\"\nauth = \"password\"\npassword_env = \"PW\"\npoll_interval_secs = 3600\n",
        dovecot.pop3_port
    );
    let mut node = Node::new(&dovecot.ca_pem, &body);
    node.env.push(("PW".into(), ALICE_PW.into()));
    node.start();
    let seeded = corpus::corpus("tp").len();
    node.wait_stored("mail", seeded as u64, Duration::from_secs(30));
    let (ok, out) = run(&node); // the store is locked: this goes through the node's API
    node.stop();
    assert!(ok, "{out}");
    assert!(out.contains("[ ok ] connect      localhost:"), "{out}");
    assert!(out.contains("(STARTTLS)"), "{out}");
    // One CAPA line `SASL PLAIN LOGIN ...` is one capability, named once.
    let caps = out
        .lines()
        .find(|l| l.contains("] capabilities"))
        .unwrap_or_default();
    assert_eq!(caps.matches("SASL").count(), 1, "{out}");
    assert!(
        caps.contains("SASL PLAIN") || caps.contains("SASL LOGIN"),
        "{out}"
    );
    assert!(
        out.contains(&format!("[ ok ] mailbox      {seeded} messages")),
        "{out}"
    );
    assert!(!out.contains(ALICE_PW), "password printed");
}

/// `openssl s_server` on `bind`, on a port the system picks, with the CA's server
/// certificate and `args`; killed on drop.
struct SServer {
    child: std::process::Child,
    port: u16,
}

impl SServer {
    /// Starts the server and returns once it listens: s_server prints `ACCEPT host:port`
    /// (and flushes) after binding, so the port is read from there.
    fn start(ca: &support::Ca, bind: &str, args: &[&str]) -> SServer {
        let mut child = Command::new("openssl")
            .args(["s_server", "-accept", &format!("{bind}:0")])
            .args(args)
            .arg("-cert")
            .arg(&ca.cert_pem)
            .arg("-key")
            .arg(&ca.key_pem)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
        let port = lines
            .by_ref()
            .map_while(Result::ok)
            .find_map(|l| l.strip_prefix("ACCEPT ")?.rsplit(':').next()?.parse().ok())
            .expect("openssl s_server exited without saying where it listens");
        // Without -quiet it reports every connection: keep reading so it never blocks.
        std::thread::spawn(move || lines.for_each(drop));
        SServer { child, port }
    }
}

impl Drop for SServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn password_node(ca_pem: &std::path::Path, host: &str, port: u16, extra_node: &str) -> Node {
    let body = format!(
        "{extra_node}[sources.mail]\nprotocol = \"imap\"\nhost = \"{host}\"\nport = {port}\nusername = \"{ALICE}\"\nauth = \"password\"\npassword_env = \"PW\"\n"
    );
    let mut node = Node::new(ca_pem, &body);
    node.env.push(("PW".into(), ALICE_PW.into()));
    node
}

#[test]
fn server_offering_only_tls_1_1_is_refused_by_name() {
    let ca = support::ca();
    let server = SServer::start(
        &ca,
        "127.0.0.1",
        &["-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"],
    );
    let port = server.port;
    let node = password_node(&ca.ca_pem, "localhost", port, "");
    let (ok, out) = run(&node);
    println!("{out}");
    assert!(!ok, "{out}");
    assert!(out.contains("[FAIL] tls"), "{out}");
    assert!(
        out.contains(&format!("localhost:{port}")),
        "server not named: {out}"
    );
    assert!(out.contains("TLS 1.2 or newer"), "{out}");
}

#[test]
fn min_version_1_3_refuses_a_tls_1_2_only_server() {
    let ca = support::ca();
    let server = SServer::start(&ca, "127.0.0.1", &["-tls1_2"]);
    let port = server.port;
    // Accepted with the default minimum (TLS 1.2): the handshake works, the server just
    // is not IMAP (it says nothing), so only the TLS step is checked here.
    let node = password_node(&ca.ca_pem, "localhost", port, "");
    let cfg = std::fs::read_to_string(&node.config)
        .unwrap()
        .replace("read_timeout_secs = 20", "read_timeout_secs = 1");
    std::fs::write(&node.config, cfg).unwrap();
    let (_, out) = run(&node);
    assert!(!out.contains("[FAIL] tls"), "{out}");
    assert!(out.contains("no answer within 1s"), "{out}");
    let strict = password_node(&ca.ca_pem, "localhost", port, "");
    let cfg = std::fs::read_to_string(&strict.config)
        .unwrap()
        .replace("min_version = \"1.2\"", "min_version = \"1.3\"");
    std::fs::write(&strict.config, cfg).unwrap();
    let (ok, out) = run(&strict);
    assert!(!ok, "{out}");
    assert!(out.contains("[FAIL] tls"), "{out}");
    assert!(out.contains("tls.min_version"), "{out}");
}

#[test]
fn wrong_host_name_and_untrusted_certificate_are_refused_clearly() {
    let ca = support::ca();
    // The certificate names localhost, 127.0.0.1 and 127.0.0.2, not 127.0.0.3.
    let server = SServer::start(&ca, "127.0.0.3", &[]);
    let port = server.port;
    let node = password_node(&ca.ca_pem, "127.0.0.3", port, "");
    let (ok, out) = run(&node);
    assert!(!ok, "{out}");
    assert!(
        out.contains("certificate is not valid for this host name"),
        "{out}"
    );
    let other_ca = support::ca();
    let node = password_node(&other_ca.ca_pem, "127.0.0.3", port, "");
    let (ok, out) = run(&node);
    assert!(!ok, "{out}");
    assert!(out.contains("certificate not trusted"), "{out}");
}

#[test]
fn graph_audience_token_is_named_as_the_problem() {
    let oidc = Oidc::start(OidcOptions {
        jwt_access_token_audience: Some("https://graph.microsoft.com".into()),
        ..OidcOptions::default()
    });
    let dovecot = Dovecot::start(DovecotOptions {
        oidc_introspection_url: Some(oidc.introspection_url()),
        ..DovecotOptions::default()
    });
    let node = Node::new(
        &dovecot.ca_pem,
        &oauth_config(&oidc, ("localhost", dovecot.imaps_port), ALICE, "imap"),
    );
    import(&node, &oidc);
    let (ok, out) = run(&node);
    println!("{out}");
    assert!(!ok, "{out}");
    assert!(out.contains("[FAIL] token"), "{out}");
    assert!(out.contains("aud=https://graph.microsoft.com"), "{out}");
    assert!(
        out.contains(
            "problem: audience is Microsoft Graph; IMAP/POP need https://outlook.office.com"
        ),
        "{out}"
    );
    assert!(out.contains("[FAIL] sasl"), "{out}");
}

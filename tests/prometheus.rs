//! The shipped dashboards and alerting rules against a real Prometheus scraping a real node.
//!
//! Per test: oidc-provider, Dovecot (OAuth2 through introspection), a `mailsluice run` with an
//! IMAPS XOAUTH2 source `mail` (confidential client whose secret has an expiry date, 3-second
//! access tokens so refreshes keep happening) and a POP3S password source `pop`, a webhook
//! sink delivering to the harness receiver, and a Prometheus scraping the node and evaluating the generated rules every second. Every panel
//! expression of both dashboards must return data, every rule must evaluate, and
//! `MailsluiceSourceNeedsReauth` must stay quiet while the grant is good and fire once it is
//! revoked.

mod node;
mod support;

use std::time::Duration;

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

/// Every server of one test; dropped (killed) together.
struct Stack {
    prometheus: Prometheus,
    node: Node,
    oidc: Oidc,
    dovecot: Dovecot,
    /// Where the sink delivers (the sink panels need deliveries to show).
    receiver: WebhookReceiver,
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
        let receiver = WebhookReceiver::start();
        let body = format!(
            "{body}\n[sinks.hook]\nkind = \"webhook\"\nurl = \"{url}\"\nsecret_env = \"HOOK_WHSEC\"\nmax_backoff_secs = 1\n",
            url = receiver.url()
        );
        let mut node = Node::new(&dovecot.ca_pem, &body);
        node.env
            .push(("HOOK_WHSEC".into(), receiver.secrets()[0].clone()));
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
            receiver,
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
    let queries = dashboard_queries(OAUTH_SOURCE);
    assert!(queries.len() > 30, "too few panel expressions: {queries:?}");
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

    // The sink panels drew from real deliveries.
    assert!(!stack.receiver.delivered_ids().is_empty());
    assert!(stack.receiver.bad_signatures().is_empty());

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

//! Grafana dashboards and Prometheus alerting rules generated from code, so they cannot drift
//! from the metric catalog: `cargo run --example gen_dashboards` writes `dashboards/`
//! (`overview.json`, `source.json`, `alerts.yml`), and tests fail when the checked-in files
//! differ from what this module generates, name a metric or label not in [`super::CATALOG`],
//! or hold an expression that a real Prometheus scraping a real node answers with nothing.
//!
//! Rate windows are Grafana's `$__rate_interval` (at least four scrape intervals, so a rate
//! always has two samples); [`expand`] turns a dashboard expression into the PromQL Grafana
//! sends, for tests and for pasting into Prometheus.

use serde_json::{Value, json};

use super::{CATALOG, SourceState};

/// How a panel draws its series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Viz {
    /// Lines over the dashboard's time range.
    TimeSeries,
    /// The latest value of each series, large.
    Stat,
    /// The names (legends) of the series that currently exist, for series whose value is a
    /// constant 1 and whose labels are the information (`source_state == 1`, `build_info`).
    /// The query is instant.
    Names,
}

/// Colour bands of a panel: `base` below the first step, then each `(from, colour)`.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    pub base: &'static str,
    pub steps: &'static [(f64, &'static str)],
}

/// One panel: a title, PromQL expressions with legends, and how to show them.
#[derive(Debug, Clone, Copy)]
pub struct Panel {
    pub title: &'static str,
    /// The panel's info tooltip: what the numbers mean and what to do about them.
    pub description: &'static str,
    /// Grafana unit id (`s`, `ops`, `Bps`, `short`, ...).
    pub unit: &'static str,
    pub viz: Viz,
    pub thresholds: Option<Thresholds>,
    /// (expression, legend); the expression may use `$__rate_interval`, `$__range` and, in
    /// the per-source dashboard, `$source`.
    pub targets: &'static [(&'static str, &'static str)],
}

/// A titled row of panels, laid out two per line.
#[derive(Debug, Clone, Copy)]
pub struct Row {
    pub title: &'static str,
    pub panels: &'static [Panel],
}

/// Defaults the panels below override field by field.
const PANEL: Panel = Panel {
    title: "",
    description: "",
    unit: "short",
    viz: Viz::TimeSeries,
    thresholds: None,
    targets: &[],
};

const DAY: f64 = 86_400.0;

/// Alert when a refresh token has not been used for this many days: Microsoft revokes
/// refresh tokens left unused for 90 days, and the operator needs time to react.
pub const REFRESH_TOKEN_IDLE_DAYS: u64 = 80;

/// Alert when a provider's client secret expires within this many days.
pub const CLIENT_SECRET_WARN_DAYS: u64 = 14;

/// Refresh-token idle time: fine, getting close to Microsoft's 90 days, past it.
const REFRESH_IDLE_BANDS: Thresholds = Thresholds {
    base: "green",
    steps: &[
        (REFRESH_TOKEN_IDLE_DAYS as f64 * DAY, "orange"),
        (90.0 * DAY, "red"),
    ],
};

/// Time left on a credential: expired or nearly, within the alert's horizon, fine.
const SECRET_LEFT_BANDS: Thresholds = Thresholds {
    base: "red",
    steps: &[
        (0.0, "orange"),
        (CLIENT_SECRET_WARN_DAYS as f64 * DAY, "green"),
    ],
};

/// The overview dashboard: every source and provider of every node at once.
pub const OVERVIEW: &[Row] = &[
    Row {
        title: "Ingest",
        panels: &[
            Panel {
                title: "Messages ingested / s",
                description: "New messages stored per second, by source (messages already stored and seen again are not counted).",
                unit: "ops",
                targets: &[(
                    "sum by (source) (rate(mailsluice_messages_ingested_total[$__rate_interval]))",
                    "{{source}}",
                )],
                ..PANEL
            },
            Panel {
                title: "Bytes ingested / s",
                description: "Raw message bytes stored per second, by source.",
                unit: "Bps",
                targets: &[(
                    "sum by (source) (rate(mailsluice_bytes_ingested_total[$__rate_interval]))",
                    "{{source}}",
                )],
                ..PANEL
            },
            Panel {
                title: "Backlog (messages seen, not yet stored)",
                description: "Messages on the server not yet stored, as of each source's last session. A backlog that does not shrink means the source cannot keep up or its sessions fail.",
                targets: &[(
                    "max by (source) (mailsluice_backlog_messages)",
                    "{{source}}",
                )],
                ..PANEL
            },
            Panel {
                title: "Parse failures / s",
                description: "Messages mail-parser could not make sense of. They are stored raw with a parse-error mark (nothing is lost), but their parsed fields are missing.",
                unit: "ops",
                targets: &[(
                    "sum by (source) (rate(mailsluice_parse_failures_total[$__rate_interval]))",
                    "{{source}}",
                )],
                ..PANEL
            },
            Panel {
                title: "Messages skipped / s (over max_message_bytes)",
                description: "Messages left on the server unfetched because they exceed the source's max_message_bytes. Raise the limit to collect them.",
                unit: "ops",
                targets: &[(
                    "sum by (source) (rate(mailsluice_messages_skipped_total[$__rate_interval]))",
                    "{{source}}",
                )],
                ..PANEL
            },
            Panel {
                title: "UIDVALIDITY changes / s",
                description: "Folders found with a new UIDVALIDITY (recreated or restored on the server); stored messages are re-matched by Message-ID and sha256 instead of being ingested again.",
                unit: "ops",
                targets: &[(
                    "sum by (source) (rate(mailsluice_uidvalidity_changes_total[$__rate_interval]))",
                    "{{source}}",
                )],
                ..PANEL
            },
        ],
    },
    Row {
        title: "Sources",
        panels: &[
            Panel {
                title: "Source state",
                description: "Each source's current state. needs_reauth: run `mailsluice authorize SOURCE`; throttled: the server asked us to slow down; degraded: sessions fail (see Errors by kind and `mailsluice status`).",
                viz: Viz::Names,
                targets: &[("mailsluice_source_state == 1", "{{source}}: {{state}}")],
                ..PANEL
            },
            Panel {
                title: "Sources by state",
                description: "How many sources are in each state over time.",
                targets: &[("sum by (state) (mailsluice_source_state)", "{{state}}")],
                ..PANEL
            },
            Panel {
                title: "Time since last successful session",
                description: "Seconds since each source last completed a collection session. It should stay below a few poll intervals.",
                unit: "s",
                targets: &[(
                    "time() - max by (source) (mailsluice_last_success_timestamp_seconds)",
                    "{{source}}",
                )],
                ..PANEL
            },
            Panel {
                title: "Sessions / s by outcome",
                description: "IMAP/POP3 collection sessions per second, by source and outcome.",
                unit: "ops",
                targets: &[(
                    "sum by (source, outcome) (rate(mailsluice_sessions_total[$__rate_interval]))",
                    "{{source}} {{outcome}}",
                )],
                ..PANEL
            },
            Panel {
                title: "Errors / s by kind",
                description: "Errors per second by source and kind (tls, connect, auth, token, protocol, store, throttled). `mailsluice status` shows the last error's text.",
                unit: "ops",
                targets: &[(
                    "sum by (source, kind) (rate(mailsluice_errors_total[$__rate_interval]))",
                    "{{source}} {{kind}}",
                )],
                ..PANEL
            },
            Panel {
                title: "Session duration",
                description: "Duration of collection sessions, connect to logout, by source.",
                unit: "s",
                targets: &[
                    (
                        "histogram_quantile(0.5, sum by (source, le) (rate(mailsluice_session_duration_seconds_bucket[$__rate_interval])))",
                        "{{source}} p50",
                    ),
                    (
                        "histogram_quantile(0.95, sum by (source, le) (rate(mailsluice_session_duration_seconds_bucket[$__rate_interval])))",
                        "{{source}} p95",
                    ),
                ],
                ..PANEL
            },
            Panel {
                title: "TLS handshakes / s by kind",
                description: "TLS handshakes per second: full, or resumed from a session ticket the server gave before (no certificate exchange). Servers that run a process per connection, each with its own ticket key, never resume.",
                unit: "ops",
                targets: &[(
                    "sum by (kind) (rate(mailsluice_tls_handshakes_total[$__rate_interval]))",
                    "{{kind}}",
                )],
                ..PANEL
            },
        ],
    },
    Row {
        title: "Credentials",
        panels: &[
            Panel {
                title: "Access token lifetime left",
                description: "Time until each OAuth2 source's current access token expires; the node refreshes it shortly before. Negative for a source that stopped refreshing (needs_reauth, disabled).",
                unit: "s",
                targets: &[(
                    "min by (source) (mailsluice_access_token_expiry_timestamp_seconds) - time()",
                    "{{source}}",
                )],
                ..PANEL
            },
            Panel {
                title: "Refresh token idle time",
                description: "Time since each source's refresh token was last used. Microsoft revokes refresh tokens unused for 90 days; re-authorize before then if a source stopped collecting.",
                unit: "s",
                thresholds: Some(REFRESH_IDLE_BANDS),
                targets: &[(
                    "time() - max by (source) (mailsluice_refresh_token_last_used_timestamp_seconds)",
                    "{{source}}",
                )],
                ..PANEL
            },
            Panel {
                title: "Client secret lifetime left",
                description: "Time until each provider's client secret expires (providers.*.client_secret_expires). Create a new secret for the app and configure it before then.",
                unit: "s",
                viz: Viz::Stat,
                thresholds: Some(SECRET_LEFT_BANDS),
                targets: &[(
                    "min by (provider) (mailsluice_client_secret_expiry_timestamp_seconds) - time()",
                    "{{provider}}",
                )],
            },
            Panel {
                title: "Token refreshes / s",
                description: "Requests to each provider's token endpoint, by outcome.",
                unit: "ops",
                targets: &[(
                    "sum by (provider, outcome) (rate(mailsluice_token_refreshes_total[$__rate_interval]))",
                    "{{provider}} {{outcome}}",
                )],
                ..PANEL
            },
            Panel {
                title: "Token refresh latency",
                description: "Duration of token endpoint requests, by provider.",
                unit: "s",
                targets: &[
                    (
                        "histogram_quantile(0.5, sum by (provider, le) (rate(mailsluice_token_refresh_duration_seconds_bucket[$__rate_interval])))",
                        "{{provider}} p50",
                    ),
                    (
                        "histogram_quantile(0.95, sum by (provider, le) (rate(mailsluice_token_refresh_duration_seconds_bucket[$__rate_interval])))",
                        "{{provider}} p95",
                    ),
                    (
                        "histogram_quantile(0.99, sum by (provider, le) (rate(mailsluice_token_refresh_duration_seconds_bucket[$__rate_interval])))",
                        "{{provider}} p99",
                    ),
                ],
                ..PANEL
            },
        ],
    },
    Row {
        title: "Store and node",
        panels: &[
            Panel {
                title: "Store write latency",
                description: "Time to commit one message together with its source's checkpoint (flushed to disk).",
                unit: "s",
                targets: &[
                    (
                        "histogram_quantile(0.5, sum by (le) (rate(mailsluice_store_write_duration_seconds_bucket[$__rate_interval])))",
                        "p50",
                    ),
                    (
                        "histogram_quantile(0.99, sum by (le) (rate(mailsluice_store_write_duration_seconds_bucket[$__rate_interval])))",
                        "p99",
                    ),
                ],
                ..PANEL
            },
            Panel {
                title: "Build",
                description: "The version each node runs.",
                viz: Viz::Names,
                targets: &[("mailsluice_build_info", "{{instance}} {{version}}")],
                ..PANEL
            },
        ],
    },
];

/// The per-source drill-down: the same per-source series, for the sources picked in the
/// `source` variable. Every selector carries `source=~"$source"`.
pub const SOURCE: &[Row] = &[
    Row {
        title: "State",
        panels: &[
            Panel {
                title: "State",
                description: "The source's current state. needs_reauth: run `mailsluice authorize SOURCE`; throttled: the server asked us to slow down; degraded: sessions fail (see Errors by kind and `mailsluice status SOURCE`).",
                viz: Viz::Names,
                targets: &[(
                    "mailsluice_source_state{source=~\"$source\"} == 1",
                    "{{source}}: {{state}}",
                )],
                ..PANEL
            },
            Panel {
                title: "State over time",
                description: "1 while the source is in the state, by state.",
                targets: &[(
                    "sum by (state) (mailsluice_source_state{source=~\"$source\"})",
                    "{{state}}",
                )],
                ..PANEL
            },
            Panel {
                title: "Time since last successful session",
                description: "Seconds since the source last completed a collection session.",
                unit: "s",
                targets: &[(
                    "time() - max by (source) (mailsluice_last_success_timestamp_seconds{source=~\"$source\"})",
                    "{{source}}",
                )],
                ..PANEL
            },
            Panel {
                title: "Sessions / s by outcome",
                description: "IMAP/POP3 collection sessions per second, by outcome.",
                unit: "ops",
                targets: &[(
                    "sum by (source, outcome) (rate(mailsluice_sessions_total{source=~\"$source\"}[$__rate_interval]))",
                    "{{source}} {{outcome}}",
                )],
                ..PANEL
            },
            Panel {
                title: "Errors / s by kind",
                description: "Errors per second by kind (tls, connect, auth, token, protocol, store, throttled).",
                unit: "ops",
                targets: &[(
                    "sum by (source, kind) (rate(mailsluice_errors_total{source=~\"$source\"}[$__rate_interval]))",
                    "{{source}} {{kind}}",
                )],
                ..PANEL
            },
            Panel {
                title: "Session duration",
                description: "Duration of collection sessions, connect to logout.",
                unit: "s",
                targets: &[
                    (
                        "histogram_quantile(0.5, sum by (source, le) (rate(mailsluice_session_duration_seconds_bucket{source=~\"$source\"}[$__rate_interval])))",
                        "{{source}} p50",
                    ),
                    (
                        "histogram_quantile(0.95, sum by (source, le) (rate(mailsluice_session_duration_seconds_bucket{source=~\"$source\"}[$__rate_interval])))",
                        "{{source}} p95",
                    ),
                    (
                        "histogram_quantile(0.99, sum by (source, le) (rate(mailsluice_session_duration_seconds_bucket{source=~\"$source\"}[$__rate_interval])))",
                        "{{source}} p99",
                    ),
                ],
                ..PANEL
            },
        ],
    },
    Row {
        title: "Ingest",
        panels: &[
            Panel {
                title: "Messages ingested in range",
                description: "New messages stored during the dashboard's time range.",
                viz: Viz::Stat,
                targets: &[(
                    "sum by (source) (increase(mailsluice_messages_ingested_total{source=~\"$source\"}[$__range]))",
                    "{{source}}",
                )],
                ..PANEL
            },
            Panel {
                title: "Messages ingested / s",
                description: "New messages stored per second.",
                unit: "ops",
                targets: &[(
                    "sum by (source) (rate(mailsluice_messages_ingested_total{source=~\"$source\"}[$__rate_interval]))",
                    "{{source}}",
                )],
                ..PANEL
            },
            Panel {
                title: "Bytes ingested / s",
                description: "Raw message bytes stored per second.",
                unit: "Bps",
                targets: &[(
                    "sum by (source) (rate(mailsluice_bytes_ingested_total{source=~\"$source\"}[$__rate_interval]))",
                    "{{source}}",
                )],
                ..PANEL
            },
            Panel {
                title: "Backlog (messages seen, not yet stored)",
                description: "Messages on the server not yet stored, as of the last session.",
                targets: &[(
                    "max by (source) (mailsluice_backlog_messages{source=~\"$source\"})",
                    "{{source}}",
                )],
                ..PANEL
            },
            Panel {
                title: "Parse failures, skipped messages and UIDVALIDITY changes / s",
                description: "Parse failures are stored raw with a parse-error mark; skipped messages exceed max_message_bytes and stay on the server; a UIDVALIDITY change makes the node re-match stored messages by content.",
                unit: "ops",
                targets: &[
                    (
                        "sum by (source) (rate(mailsluice_parse_failures_total{source=~\"$source\"}[$__rate_interval]))",
                        "{{source}} parse failures",
                    ),
                    (
                        "sum by (source) (rate(mailsluice_messages_skipped_total{source=~\"$source\"}[$__rate_interval]))",
                        "{{source}} skipped",
                    ),
                    (
                        "sum by (source) (rate(mailsluice_uidvalidity_changes_total{source=~\"$source\"}[$__rate_interval]))",
                        "{{source}} UIDVALIDITY changes",
                    ),
                ],
                ..PANEL
            },
        ],
    },
    Row {
        title: "Credentials (OAuth2 sources)",
        panels: &[
            Panel {
                title: "Access token lifetime left",
                description: "Time until the source's current access token expires; the node refreshes it shortly before.",
                unit: "s",
                targets: &[(
                    "min by (source) (mailsluice_access_token_expiry_timestamp_seconds{source=~\"$source\"}) - time()",
                    "{{source}}",
                )],
                ..PANEL
            },
            Panel {
                title: "Refresh token idle time",
                description: "Time since the source's refresh token was last used. Microsoft revokes refresh tokens unused for 90 days.",
                unit: "s",
                thresholds: Some(REFRESH_IDLE_BANDS),
                targets: &[(
                    "time() - max by (source) (mailsluice_refresh_token_last_used_timestamp_seconds{source=~\"$source\"})",
                    "{{source}}",
                )],
                ..PANEL
            },
        ],
    },
];

const DATASOURCE: &str = "${datasource}";

fn datasource() -> Value {
    json!({"type": "prometheus", "uid": DATASOURCE})
}

fn panel_json(id: usize, p: &Panel, x: usize, y: usize) -> Value {
    let (kind, options) = match p.viz {
        Viz::TimeSeries => (
            "timeseries",
            json!({"legend": {"displayMode": "list", "placement": "bottom", "showLegend": true},
                   "tooltip": {"mode": "multi", "sort": "desc"}}),
        ),
        Viz::Stat => (
            "stat",
            json!({"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": false},
                   "textMode": "value_and_name", "colorMode": "value", "graphMode": "area"}),
        ),
        Viz::Names => (
            "stat",
            json!({"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": false},
                   "textMode": "name", "colorMode": "none", "graphMode": "none"}),
        ),
    };
    let mut defaults = json!({"unit": p.unit});
    if let Some(t) = p.thresholds {
        let mut steps = vec![json!({"color": t.base, "value": null})];
        steps.extend(t.steps.iter().map(|(v, c)| json!({"color": c, "value": v})));
        defaults["thresholds"] = json!({"mode": "absolute", "steps": steps});
        if p.viz == Viz::TimeSeries {
            defaults["custom"] = json!({"thresholdsStyle": {"mode": "line"}});
        }
    }
    let targets: Vec<Value> = p
        .targets
        .iter()
        .enumerate()
        .map(|(j, (expr, legend))| {
            json!({
                "refId": ((b'A' + j as u8) as char).to_string(),
                "expr": expr,
                "legendFormat": legend,
                "instant": p.viz == Viz::Names,
                "range": p.viz != Viz::Names,
                "datasource": datasource(),
            })
        })
        .collect();
    json!({
        "id": id,
        "type": kind,
        "title": p.title,
        "description": p.description,
        "datasource": datasource(),
        "gridPos": {"h": 8, "w": 12, "x": x, "y": y},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": options,
        "targets": targets,
    })
}

/// The Grafana JSON model of a dashboard made of `rows`, two panels per line; `variables`
/// are added to the `datasource` variable every dashboard has.
pub fn dashboard(uid: &str, title: &str, rows: &[Row], variables: Vec<Value>) -> Value {
    let mut panels = Vec::new();
    let mut y = 0;
    for row in rows {
        panels.push(json!({
            "id": panels.len() + 1,
            "type": "row",
            "title": row.title,
            "collapsed": false,
            "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
            "panels": [],
        }));
        y += 1;
        for (i, p) in row.panels.iter().enumerate() {
            panels.push(panel_json(
                panels.len() + 1,
                p,
                (i % 2) * 12,
                y + (i / 2) * 8,
            ));
        }
        y += row.panels.len().div_ceil(2) * 8;
    }
    let mut templating = vec![json!({
        "name": "datasource", "type": "datasource", "query": "prometheus",
        "label": "Data source", "current": {}
    })];
    templating.extend(variables);
    json!({
        "uid": uid,
        "title": title,
        "schemaVersion": 39,
        "version": 1,
        "editable": false,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "tags": ["mailsluice"],
        "templating": {"list": templating},
        "panels": panels,
    })
}

/// The `source` variable of the drill-down: every source any node reports, several at once.
fn source_variable() -> Value {
    let query = "label_values(mailsluice_source_state, source)";
    json!({
        "name": "source",
        "label": "Source",
        "type": "query",
        "datasource": datasource(),
        "definition": query,
        "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "refresh": 2,
        "multi": true,
        "includeAll": true,
        "sort": 1,
        "current": {},
    })
}

/// Every generated dashboard: (file name, JSON).
pub fn all() -> Vec<(&'static str, Value)> {
    vec![
        (
            "overview.json",
            dashboard(
                "mailsluice-overview",
                "mailsluice overview",
                OVERVIEW,
                vec![],
            ),
        ),
        (
            "source.json",
            dashboard(
                "mailsluice-source",
                "mailsluice source",
                SOURCE,
                vec![source_variable()],
            ),
        ),
    ]
}

/// Every generated file under `dashboards/`: (file name, content).
pub fn files() -> Vec<(&'static str, String)> {
    let mut out: Vec<(&'static str, String)> = all()
        .into_iter()
        .map(|(file, json)| {
            let text = serde_json::to_string_pretty(&json).unwrap_or_default() + "\n";
            (file, text)
        })
        .collect();
    out.push(("alerts.yml", alerts_yaml(&AlertOptions::default())));
    out
}

/// A dashboard expression as Grafana sends it to Prometheus: `$__rate_interval`,
/// `$__interval` and `$__range` replaced by `window` (e.g. `1m`), `$source` by `source`
/// (a source name, or a regex such as `mail|pop` for several).
pub fn expand(expr: &str, window: &str, source: &str) -> String {
    expr.replace("$__rate_interval", window)
        .replace("$__interval", window)
        .replace("$__range", window)
        .replace("${source}", source)
        .replace("$source", source)
}

/// What the alerting rules are generated with.
#[derive(Debug, Clone)]
pub struct AlertOptions {
    /// The `job` label Prometheus gives the scraped nodes: the `job_name` of the scrape
    /// config. The node-down rules select on it and never fire if it does not match.
    pub job: String,
    /// A source that has not completed a session for this long is reported. It must exceed
    /// the longest `poll_interval_secs` by a good margin.
    pub no_success_secs: u64,
    /// Replaces every rule's `for:` (tests use `0s` to see alerts fire at once).
    pub pending_for: Option<String>,
}

impl Default for AlertOptions {
    /// Job `mailsluice`; no success for 15 minutes (15 polls at the default
    /// `poll_interval_secs = 60`: one failed poll is routine, a quarter of an hour without
    /// mail from a mailbox that is meant to be collected is not); each rule's own `for:`.
    fn default() -> Self {
        AlertOptions {
            job: "mailsluice".into(),
            no_success_secs: 900,
            pending_for: None,
        }
    }
}

/// One Prometheus alerting rule.
#[derive(Debug, Clone)]
pub struct AlertRule {
    pub name: &'static str,
    pub expr: String,
    /// How long `expr` must hold before the alert fires (`for:`).
    pub pending_for: String,
    /// `warning` (act within the day) or `critical` (mail is not being collected).
    pub severity: &'static str,
    pub summary: String,
    /// What happened and what the operator does about it; may use Prometheus templates
    /// (`{{ $labels.source }}`, `{{ $value }}`).
    pub description: String,
}

/// The alerting rules of group `mailsluice`.
pub fn alert_rules(opts: &AlertOptions) -> Vec<AlertRule> {
    let job = &opts.job;
    let no_success = opts.no_success_secs;
    let (no_success_human, no_success_for) = if no_success.is_multiple_of(60) {
        let minutes = no_success / 60;
        (format!("{minutes} minutes"), format!("{minutes}m"))
    } else {
        (format!("{no_success} seconds"), format!("{no_success}s"))
    };
    // Sources meant to be collecting: configured (a source removed by a reload keeps its
    // series with every state at 0), not disabled, and not waiting for a consent (that has
    // an alert of its own).
    let collecting = format!(
        "max by (job, instance, source) (mailsluice_source_state{{state!~\"{}|{}\"}}) == 1",
        SourceState::Disabled.as_str(),
        SourceState::NeedsReauth.as_str()
    );
    // Configured sources, whatever their state.
    let configured = "max by (job, instance, source) (mailsluice_source_state) == 1";
    let rule =
        |name, expr: String, pending_for: &str, severity, summary: &str, description: &str| {
            AlertRule {
                name,
                expr,
                pending_for: opts
                    .pending_for
                    .clone()
                    .unwrap_or_else(|| pending_for.to_string()),
                severity,
                summary: summary.to_string(),
                description: description.to_string(),
            }
        };
    vec![
        rule(
            "MailsluiceSourceNeedsReauth",
            format!(
                "max by (job, instance, source) (mailsluice_source_state{{state=\"{}\"}}) == 1",
                SourceState::NeedsReauth.as_str()
            ),
            "1m",
            "critical",
            "mailsluice source {{ $labels.source }} needs re-authorization",
            "The provider refused the refresh token of source {{ $labels.source }} on {{ $labels.instance }} (consent revoked, password reset, or token expired), so collection from this mailbox is paused and nothing is retried. Run `mailsluice authorize {{ $labels.source }}` (add `--device` on a headless server) and sign in as the source's configured user; a running node picks the new consent up without a restart. `mailsluice status` shows the provider's error code.",
        ),
        rule(
            "MailsluiceSourceNoSuccess",
            format!(
                "(time() - max by (job, instance, source) (mailsluice_last_success_timestamp_seconds) > {no_success}) and on (job, instance, source) ({collecting})"
            ),
            "1m",
            "warning",
            &format!("mailsluice source {{{{ $labels.source }}}} has not collected for {no_success_human}"),
            &format!("Source {{{{ $labels.source }}}} on {{{{ $labels.instance }}}} last completed a collection session {{{{ $value | humanizeDuration }}}} ago (threshold {no_success_human}, meant to exceed the source's poll_interval_secs many times over). Run `mailsluice status` for the source's state and last error and `mailsluice test-login {{{{ $labels.source }}}}` to see which step fails (DNS/connect, TLS, SASL, token, mailbox)."),
        ),
        rule(
            "MailsluiceSourceNeverSucceeded",
            format!(
                "({collecting}) unless on (job, instance, source) mailsluice_last_success_timestamp_seconds"
            ),
            &no_success_for,
            "warning",
            &format!("mailsluice source {{{{ $labels.source }}}} has not completed a session in the {no_success_human} since the node started"),
            "Source {{ $labels.source }} on {{ $labels.instance }} has not completed a single collection session since the node started (a first sync of a very large mailbox can take this long; its backlog then shrinks). Run `mailsluice status` for its last error and `mailsluice test-login {{ $labels.source }}` to see which step fails.",
        ),
        rule(
            "MailsluiceRefreshTokenIdle",
            format!(
                "(time() - max by (job, instance, source) (mailsluice_refresh_token_last_used_timestamp_seconds) > {REFRESH_TOKEN_IDLE_DAYS} * 86400) and on (job, instance, source) ({configured})"
            ),
            "1h",
            "warning",
            &format!("refresh token of mailsluice source {{{{ $labels.source }}}} unused for {REFRESH_TOKEN_IDLE_DAYS} days"),
            "The refresh token of source {{ $labels.source }} on {{ $labels.instance }} was last used {{ $value | humanizeDuration }} ago. Microsoft revokes refresh tokens left unused for 90 days, after which the source needs a new consent. Find out why the source does not collect (`mailsluice status`, `mailsluice tokens status`) and let it run, or re-authorize with `mailsluice authorize {{ $labels.source }}` before the 90 days are over.",
        ),
        rule(
            "MailsluiceClientSecretExpiring",
            format!(
                "min by (job, instance, provider) (mailsluice_client_secret_expiry_timestamp_seconds) - time() < {CLIENT_SECRET_WARN_DAYS} * 86400"
            ),
            "10m",
            "warning",
            &format!("client secret of mailsluice provider {{{{ $labels.provider }}}} expires within {CLIENT_SECRET_WARN_DAYS} days"),
            "The client secret of provider {{ $labels.provider }} on {{ $labels.instance }} expires in {{ $value | humanizeDuration }} (negative: already expired); every source using this provider then fails to get tokens. Create a new secret in the app registration, point providers.{{ $labels.provider }}.client_secret_env or client_secret_file at it, set providers.{{ $labels.provider }}.client_secret_expires to its end date, and restart the node.",
        ),
        rule(
            "MailsluiceSourceThrottled",
            format!(
                "max by (job, instance, source) (mailsluice_source_state{{state=\"{}\"}}) == 1",
                SourceState::Throttled.as_str()
            ),
            "30m",
            "warning",
            "mailsluice source {{ $labels.source }} throttled for 30 minutes",
            "The server has kept throttling source {{ $labels.source }} on {{ $labels.instance }} for 30 minutes, so its mail arrives late or not at all. Office 365 limits concurrent sessions and bandwidth per mailbox: lower sources.{{ $labels.source }}.max_connections, raise poll_interval_secs, or stop other clients using the same mailbox. `mailsluice status` shows the server's reply.",
        ),
        rule(
            "MailsluiceParseFailuresRising",
            "sum by (job, instance, source) (increase(mailsluice_parse_failures_total[1h])) > 3 and sum by (job, instance, source) (increase(mailsluice_parse_failures_total[1h])) > 0.05 * sum by (job, instance, source) (increase(mailsluice_messages_ingested_total[1h]))".to_string(),
            "15m",
            "warning",
            "mail from mailsluice source {{ $labels.source }} often fails to parse",
            "More than 3 messages, and more than 5% of those stored, from source {{ $labels.source }} on {{ $labels.instance }} could not be parsed in the last hour. They are stored raw with a parse-error mark (no mail is lost), but consumers miss their parsed fields. Export them with `mailsluice messages export --format eml` and look for a new sender or format.",
        ),
        rule(
            "MailsluiceNodeDown",
            format!("up{{job=\"{job}\"}} == 0"),
            "5m",
            "critical",
            "mailsluice node {{ $labels.instance }} is down",
            &format!("Prometheus cannot scrape the mailsluice node {{{{ $labels.instance }}}} (job {job}): the process is not running or its http_listen address is unreachable, so no mail is collected there. Check the service and its log. This rule selects job=\"{job}\", which must equal the job_name of the scrape config that scrapes the nodes."),
        ),
        rule(
            "MailsluiceNodeAbsent",
            format!("absent(mailsluice_build_info{{job=\"{job}\"}})"),
            "15m",
            "critical",
            "no mailsluice node reports metrics",
            &format!("No target of job {job} exposes mailsluice metrics: every node is gone, or the scrape config's job_name differs from \"{job}\" (then MailsluiceNodeDown cannot fire either). Check the nodes and the scrape config."),
        ),
    ]
}

/// `alert_rules` as a Prometheus rule file. Strings are written as JSON strings, which are
/// valid YAML double-quoted scalars, so no expression or template needs YAML escaping.
pub fn alerts_yaml(opts: &AlertOptions) -> String {
    let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let mut out = format!(
        "# Prometheus alerting rules for mailsluice nodes. Generated by\n\
         # `cargo run --example gen_dashboards` from src/telemetry/dashboards.rs: edit there.\n\
         # MailsluiceNodeDown and MailsluiceNodeAbsent select job=\"{}\": it must equal the\n\
         # job_name of the scrape config that scrapes the nodes' /metrics.\n\
         # MailsluiceSourceNoSuccess and MailsluiceSourceNeverSucceeded report a source without a\n\
         # completed session for {} seconds (a few minutes is routine: one failed poll, a server\n\
         # restart; many missed polls at the default poll_interval_secs = 60 are not). Sources\n\
         # polled less often need a larger AlertOptions::no_success_secs.\n\
         groups:\n  - name: mailsluice\n    rules:\n",
        opts.job, opts.no_success_secs
    );
    for r in alert_rules(opts) {
        out.push_str(&format!(
            "      - alert: {}\n        expr: {}\n        for: {}\n        labels:\n          severity: {}\n        annotations:\n          summary: {}\n          description: {}\n",
            r.name,
            q(&r.expr),
            r.pending_for,
            r.severity,
            q(&r.summary),
            q(&r.description),
        ));
    }
    out
}

/// Metric names (`mailsluice_...`) an expression uses, with histogram suffixes removed.
pub fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("mailsluice_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        out.push(base.to_string());
        rest = &tail[end..];
    }
    out
}

/// Label names an expression groups by or matches on (`by (...)`, `on (...)`, `{name=...}`).
pub fn label_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    for kw in ["by (", "on ("] {
        for (at, _) in expr.match_indices(kw) {
            let list = &expr[at + kw.len()..];
            let list = &list[..list.find(')').unwrap_or(list.len())];
            out.extend(list.split(',').map(|l| l.trim().to_string()));
        }
    }
    for (at, _) in expr.match_indices('{') {
        let inner = &expr[at + 1..];
        let inner = &inner[..inner.find('}').unwrap_or(inner.len())];
        for matcher in inner.split(',') {
            let name = matcher
                .split(['=', '!'])
                .next()
                .unwrap_or("")
                .trim()
                .to_string();
            out.push(name);
        }
    }
    out.retain(|l| !l.is_empty());
    out
}

/// Labels every series has besides the catalog's: Prometheus' target labels, and `le` of
/// histogram buckets.
const IMPLICIT_LABELS: &[&str] = &["job", "instance", "le"];

/// Checks that `expr` names only catalog metrics and labels those metrics have; `Err` says
/// what is wrong.
pub fn check_against_catalog(expr: &str) -> Result<(), String> {
    let names = metric_names(expr);
    if names.is_empty() && !expr.starts_with("up{") {
        return Err(format!("no mailsluice metric in {expr}"));
    }
    let mut labels: Vec<&str> = IMPLICIT_LABELS.to_vec();
    for n in &names {
        let def = CATALOG
            .iter()
            .find(|d| d.name == n)
            .ok_or_else(|| format!("{n} is not in the metric catalog ({expr})"))?;
        labels.extend(def.labels);
    }
    for l in label_names(expr) {
        if !labels.contains(&l.as_str()) {
            return Err(format!("label {l} is not a label of {names:?} ({expr})"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dashboard_exprs() -> Vec<&'static str> {
        OVERVIEW
            .iter()
            .chain(SOURCE)
            .flat_map(|r| r.panels)
            .flat_map(|p| p.targets)
            .map(|(e, _)| *e)
            .collect()
    }

    #[test]
    fn every_expression_uses_catalog_metrics_and_labels() {
        for expr in dashboard_exprs() {
            check_against_catalog(expr).unwrap();
        }
        for rule in alert_rules(&AlertOptions::default()) {
            check_against_catalog(&rule.expr).unwrap();
        }
    }

    #[test]
    fn the_catalog_check_catches_invented_names() {
        assert!(check_against_catalog("rate(mailsluice_nope_total[5m])").is_err());
        assert!(check_against_catalog("sum by (tenant) (mailsluice_backlog_messages)").is_err());
        assert!(check_against_catalog("mailsluice_backlog_messages{folder=\"x\"}").is_err());
        assert!(
            check_against_catalog(
                "sum by (source, le) (rate(mailsluice_session_duration_seconds_bucket[1m]))"
            )
            .is_ok()
        );
    }

    #[test]
    fn every_source_dashboard_selector_is_filtered_by_the_variable() {
        for row in SOURCE {
            for p in row.panels {
                for (expr, _) in p.targets {
                    assert_eq!(
                        expr.matches("mailsluice_").count(),
                        expr.matches("{source=~\"$source\"}").count(),
                        "{expr}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_overview_covers_every_catalog_metric() {
        let used: Vec<String> = OVERVIEW
            .iter()
            .flat_map(|r| r.panels)
            .flat_map(|p| p.targets)
            .map(|(e, _)| e)
            .flat_map(|e| metric_names(e))
            .collect();
        for def in CATALOG {
            assert!(
                used.iter().any(|u| u == def.name),
                "{} is on no dashboard",
                def.name
            );
        }
    }

    #[test]
    fn expand_leaves_no_grafana_variable() {
        for expr in dashboard_exprs() {
            let e = expand(expr, "1m", "mail");
            assert!(!e.contains('$'), "{e}");
        }
    }

    #[test]
    fn pending_for_can_be_overridden() {
        let opts = AlertOptions {
            pending_for: Some("0s".into()),
            ..AlertOptions::default()
        };
        assert!(alert_rules(&opts).iter().all(|r| r.pending_for == "0s"));
        assert!(alerts_yaml(&opts).contains("for: 0s"));
    }
}

//! Grafana dashboards and Prometheus alerting rules generated from code, so they cannot drift
//! from the metric catalog: `cargo run --example gen_dashboards` writes `dashboards/`
//! (`overview.json`, `source.json`, `alerts.yml`), and tests fail when the checked-in files
//! differ from what this module generates, name a metric or label not in [`super::CATALOG`],
//! or hold an expression that a real Prometheus scraping a real node answers with nothing.
//!
//! Rate windows are Grafana's `$__rate_interval` (at least four scrape intervals, so a rate
//! always has two samples); [`expand`] turns a dashboard expression into the PromQL Grafana
//! sends, for tests and for pasting into Prometheus.
//!
//! Layout: `panel` is the model a dashboard is written in, `overview` and `source` are
//! the two dashboards' panels, `grafana` turns rows of panels into Grafana's JSON model,
//! `alerts` holds the alerting rules, and `catalog_check` compares an expression with the
//! metric catalog. This file lists the generated files.

mod alerts;
mod catalog_check;
mod grafana;
mod overview;
mod panel;
mod source;

#[cfg(test)]
mod tests;

use serde_json::Value;

pub use alerts::{AlertOptions, AlertRule, alert_rules, alerts_yaml};
pub use catalog_check::{check_against_catalog, label_names, metric_names};
pub use grafana::dashboard;
pub use overview::OVERVIEW;
pub use panel::{Panel, Row, Thresholds, Viz};
pub use source::SOURCE;

/// Alert when a refresh token has not been used for this many days: Microsoft revokes
/// refresh tokens left unused for 90 days, and the operator needs time to react.
pub const REFRESH_TOKEN_IDLE_DAYS: u64 = 80;

/// Alert when a provider's client secret expires within this many days.
pub const CLIENT_SECRET_WARN_DAYS: u64 = 14;

/// Alert when a sink's oldest pending event has waited this long and keeps getting older:
/// by then retries have run for minutes (the longest wait between two is
/// `max_backoff_secs`, 300 s by default), so the receiver is down or refuses, not slow.
pub const SINK_LAG_SECS: u64 = 600;

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
                vec![grafana::source_variable()],
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

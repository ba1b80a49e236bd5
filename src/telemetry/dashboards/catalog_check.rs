//! Checks a PromQL expression against the metric catalog: every `mailsluice_` metric it
//! names exists, and every label it groups, joins or matches on is one of those metrics'
//! labels (or one Prometheus adds). A light scan, not a PromQL parser: `promtool` and a real
//! Prometheus check the syntax in `tests/dashboards.rs` and `tests/prometheus.rs`.

use crate::telemetry::CATALOG;

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
///
/// The error stays a `String`: this is a check run by tests and CI on generated dashboards
/// and rules, never on a running node, so no caller branches on why it failed or counts it.
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

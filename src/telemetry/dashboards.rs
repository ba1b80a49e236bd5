//! Grafana dashboards generated from code, so they cannot drift from the metric catalog:
//! `cargo run --example gen_dashboards` writes `dashboards/*.json`, and a test fails when the
//! checked-in files differ from what this module generates or name a metric not in
//! [`super::CATALOG`].

use serde_json::{Value, json};

/// One panel: a title, PromQL expressions with legends, and a unit.
pub struct Panel {
    pub title: &'static str,
    pub unit: &'static str,
    pub targets: &'static [(&'static str, &'static str)],
}

/// The overview dashboard's panels, in display order.
pub const OVERVIEW: &[Panel] = &[
    Panel {
        title: "Messages ingested / s",
        unit: "ops",
        targets: &[(
            "sum by (source) (rate(mailsluice_messages_ingested_total[5m]))",
            "{{source}}",
        )],
    },
    Panel {
        title: "Bytes ingested / s",
        unit: "Bps",
        targets: &[(
            "sum by (source) (rate(mailsluice_bytes_ingested_total[5m]))",
            "{{source}}",
        )],
    },
    Panel {
        title: "Source state",
        unit: "short",
        targets: &[("mailsluice_source_state == 1", "{{source}}: {{state}}")],
    },
    Panel {
        title: "Seconds since last successful session",
        unit: "s",
        targets: &[(
            "time() - mailsluice_last_success_timestamp_seconds",
            "{{source}}",
        )],
    },
    Panel {
        title: "Sessions / s by outcome",
        unit: "ops",
        targets: &[(
            "sum by (source, outcome) (rate(mailsluice_sessions_total[5m]))",
            "{{source}} {{outcome}}",
        )],
    },
    Panel {
        title: "Errors / s by kind",
        unit: "ops",
        targets: &[(
            "sum by (source, kind) (rate(mailsluice_errors_total[5m]))",
            "{{source}} {{kind}}",
        )],
    },
    Panel {
        title: "Session duration p95",
        unit: "s",
        targets: &[(
            "histogram_quantile(0.95, sum by (source, le) (rate(mailsluice_session_duration_seconds_bucket[5m])))",
            "{{source}}",
        )],
    },
    Panel {
        title: "Store write latency p99",
        unit: "s",
        targets: &[(
            "histogram_quantile(0.99, sum by (le) (rate(mailsluice_store_write_duration_seconds_bucket[5m])))",
            "p99",
        )],
    },
    Panel {
        title: "Token refreshes / s",
        unit: "ops",
        targets: &[(
            "sum by (provider, outcome) (rate(mailsluice_token_refreshes_total[5m]))",
            "{{provider}} {{outcome}}",
        )],
    },
    Panel {
        title: "Token refresh latency p95",
        unit: "s",
        targets: &[(
            "histogram_quantile(0.95, sum by (provider, le) (rate(mailsluice_token_refresh_duration_seconds_bucket[5m])))",
            "{{provider}}",
        )],
    },
    Panel {
        title: "Access token lifetime left",
        unit: "s",
        targets: &[(
            "mailsluice_access_token_expiry_timestamp_seconds - time()",
            "{{source}}",
        )],
    },
    Panel {
        title: "Days since refresh token last used (Microsoft revokes at 90)",
        unit: "d",
        targets: &[(
            "(time() - mailsluice_refresh_token_last_used_timestamp_seconds) / 86400",
            "{{source}}",
        )],
    },
    Panel {
        title: "Days until client secret expires",
        unit: "d",
        targets: &[(
            "(mailsluice_client_secret_expiry_timestamp_seconds - time()) / 86400",
            "{{provider}}",
        )],
    },
    Panel {
        title: "Backlog (messages seen, not yet stored)",
        unit: "short",
        targets: &[("mailsluice_backlog_messages", "{{source}}")],
    },
    Panel {
        title: "Parse failures / s",
        unit: "ops",
        targets: &[(
            "sum by (source) (rate(mailsluice_parse_failures_total[5m]))",
            "{{source}}",
        )],
    },
];

/// The Grafana JSON model of a dashboard made of `panels`, two per row.
pub fn dashboard(uid: &str, title: &str, panels: &[Panel]) -> Value {
    let panels: Vec<Value> = panels
        .iter()
        .enumerate()
        .map(|(i, p)| {
            json!({
                "id": i + 1,
                "type": "timeseries",
                "title": p.title,
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "gridPos": {"h": 8, "w": 12, "x": (i % 2) * 12, "y": (i / 2) * 8},
                "fieldConfig": {"defaults": {"unit": p.unit}, "overrides": []},
                "targets": p.targets.iter().enumerate().map(|(j, (expr, legend))| json!({
                    "refId": ((b'A' + j as u8) as char).to_string(),
                    "expr": expr,
                    "legendFormat": legend,
                    "datasource": {"type": "prometheus", "uid": "${datasource}"},
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "uid": uid,
        "title": title,
        "schemaVersion": 39,
        "version": 1,
        "editable": false,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "tags": ["mailsluice"],
        "templating": {"list": [{
            "name": "datasource", "type": "datasource", "query": "prometheus",
            "label": "Data source", "current": {}
        }]},
        "panels": panels,
    })
}

/// Every generated dashboard: (file name, JSON).
pub fn all() -> Vec<(&'static str, Value)> {
    vec![(
        "overview.json",
        dashboard("mailsluice-overview", "mailsluice overview", OVERVIEW),
    )]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_expression_uses_catalog_metrics() {
        for p in OVERVIEW {
            for (expr, _) in p.targets {
                let names = metric_names(expr);
                assert!(!names.is_empty(), "{expr}");
                for n in names {
                    assert!(
                        super::super::CATALOG.iter().any(|d| d.name == n),
                        "{n} not in the catalog ({expr})"
                    );
                }
            }
        }
    }

    #[test]
    fn checked_in_dashboards_match_the_generator() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards");
        for (file, json) in all() {
            let on_disk = std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| {
                panic!("dashboards/{file}: {e}; run `cargo run --example gen_dashboards`")
            });
            let generated = serde_json::to_string_pretty(&json).unwrap() + "\n";
            assert!(
                on_disk == generated,
                "dashboards/{file} is stale; run `cargo run --example gen_dashboards`"
            );
        }
    }
}

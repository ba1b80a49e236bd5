//! Every dashboard and alert expression names only catalog metrics and labels, the overview
//! covers the whole catalog, and the per-source dashboard filters every selector.

use super::*;
use crate::telemetry::CATALOG;

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

#[test]
fn the_sink_lag_bands_turn_orange_where_sinks_status_says_retrying() {
    assert_eq!(
        super::panel::SINK_LAG_BANDS.steps[0].0,
        crate::sinks::health::RETRYING_AFTER_SECS as f64
    );
    assert_eq!(
        super::panel::SINK_LAG_BANDS.steps[1].0,
        SINK_LAG_SECS as f64
    );
}

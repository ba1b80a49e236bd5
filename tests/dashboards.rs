//! The generated files in `dashboards/` are current, and Prometheus's own parser
//! (`promtool check rules`) accepts the alerting rules and every dashboard expression.
//! `tests/prometheus.rs` then runs them all against a real Prometheus scraping a real node.

use std::path::Path;
use std::process::Command;

use mailsluice::telemetry::dashboards;

fn promtool_check_rules(file: &Path) {
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(file)
        .output()
        .expect("promtool (Debian package prometheus) must be installed");
    assert!(
        out.status.success(),
        "promtool check rules {}:\n{}\n{}",
        file.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn checked_in_dashboards_and_alerts_match_the_generator() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards");
    let files = dashboards::files();
    for name in ["overview.json", "source.json", "alerts.yml"] {
        assert!(
            files.iter().any(|(f, _)| *f == name),
            "{name} not generated"
        );
    }
    for (file, generated) in files {
        let on_disk = std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| {
            panic!("dashboards/{file}: {e}; run `cargo run --example gen_dashboards`")
        });
        assert!(
            on_disk == generated,
            "dashboards/{file} is stale; run `cargo run --example gen_dashboards`"
        );
    }
}

#[test]
fn alert_rules_pass_promtool() {
    promtool_check_rules(&Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards/alerts.yml"));
    // The test variant (every `for:` 0s) is a valid rule file too.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("alerts.yml");
    let opts = dashboards::AlertOptions {
        pending_for: Some("0s".into()),
        ..Default::default()
    };
    std::fs::write(&file, dashboards::alerts_yaml(&opts)).unwrap();
    promtool_check_rules(&file);
}

#[test]
fn dashboard_expressions_are_valid_promql() {
    let mut rules = String::from("groups:\n  - name: dashboard-expressions\n    rules:\n");
    let mut n = 0;
    for (_, json) in dashboards::all() {
        for panel in json["panels"].as_array().unwrap() {
            for t in panel["targets"].as_array().into_iter().flatten() {
                let expr = dashboards::expand(t["expr"].as_str().unwrap(), "5m", "mail");
                n += 1;
                rules.push_str(&format!(
                    "      - record: mailsluice:dashboard_check_{n}\n        expr: {}\n",
                    serde_json::to_string(&expr).unwrap()
                ));
            }
        }
    }
    assert!(n > 30, "too few expressions: {n}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rules.yml");
    std::fs::write(&file, rules).unwrap();
    promtool_check_rules(&file);
}

#[test]
fn the_source_dashboard_offers_every_source() {
    let all = dashboards::all();
    let (_, source) = all.iter().find(|(f, _)| *f == "source.json").unwrap();
    let vars = source["templating"]["list"].as_array().unwrap();
    let var = vars.iter().find(|v| v["name"] == "source").unwrap();
    assert_eq!(
        var["query"]["query"],
        "label_values(mailsluice_source_state, source)"
    );
    assert_eq!(var["multi"], true);
}

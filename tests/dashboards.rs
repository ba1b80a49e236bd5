//! Every PromQL expression in the generated dashboards parses: each is checked by
//! Prometheus's own parser (`promtool check rules`) as a recording rule.

#[test]
fn dashboard_expressions_are_valid_promql() {
    let mut rules = String::from("groups:\n  - name: dashboard-expressions\n    rules:\n");
    let mut n = 0;
    for (_, json) in mailsluice::telemetry::dashboards::all() {
        for panel in json["panels"].as_array().unwrap() {
            for t in panel["targets"].as_array().unwrap() {
                let expr = t["expr"].as_str().unwrap();
                n += 1;
                rules.push_str(&format!(
                    "      - record: mailsluice:dashboard_check_{n}\n        expr: {}\n",
                    serde_json::to_string(expr).unwrap()
                ));
            }
        }
    }
    assert!(n > 10, "too few expressions: {n}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rules.yml");
    std::fs::write(&file, rules).unwrap();
    let out = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("promtool (Debian package prometheus) must be installed");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

//! Rows of panels -> Grafana's JSON model (schema 39): two panels per line under a row
//! header, every query on the `datasource` variable, so an imported dashboard works with
//! whichever Prometheus data source is picked. Output must stay stable: the checked-in files
//! are compared byte for byte with it.

use serde_json::{Value, json};

use super::panel::{Panel, Row, Viz};

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
pub(super) fn source_variable() -> Value {
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

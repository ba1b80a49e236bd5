//! The model dashboards are written in: rows of panels, each a title, a description that
//! tells the operator what to do, PromQL targets and how to draw them. Everything is `const`,
//! so a dashboard is data checked by the compiler and the tests, not hand-edited JSON.

use super::{CLIENT_SECRET_WARN_DAYS, REFRESH_TOKEN_IDLE_DAYS, SINK_LAG_SECS};

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
pub(super) const PANEL: Panel = Panel {
    title: "",
    description: "",
    unit: "short",
    viz: Viz::TimeSeries,
    thresholds: None,
    targets: &[],
};

pub(super) const DAY: f64 = 86_400.0;

/// Refresh-token idle time: fine, getting close to Microsoft's 90 days, past it.
pub(super) const REFRESH_IDLE_BANDS: Thresholds = Thresholds {
    base: "green",
    steps: &[
        (REFRESH_TOKEN_IDLE_DAYS as f64 * DAY, "orange"),
        (90.0 * DAY, "red"),
    ],
};

/// Time left on a credential: expired or nearly, within the alert's horizon, fine.
pub(super) const SECRET_LEFT_BANDS: Thresholds = Thresholds {
    base: "red",
    steps: &[
        (0.0, "orange"),
        (CLIENT_SECRET_WARN_DAYS as f64 * DAY, "green"),
    ],
};

/// A sink's oldest pending event: delivered within the minute, waiting through retries
/// (`sinks status` says `retrying` from the same minute on; a test holds the two together),
/// past the lag alert's threshold.
pub(super) const SINK_LAG_BANDS: Thresholds = Thresholds {
    base: "green",
    steps: &[(60.0, "orange"), (SINK_LAG_SECS as f64, "red")],
};

//! The per-source dashboard's panels. Every selector carries `source=~"$source"` (a test
//! checks it), so the dashboard shows only the sources picked in its variable.

use super::panel::{PANEL, Panel, REFRESH_IDLE_BANDS, Row, Viz};

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

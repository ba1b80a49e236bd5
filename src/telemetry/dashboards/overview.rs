//! The overview dashboard's panels: every source and provider of every node at once. It
//! shows every metric of the catalog (a test checks it), so a new metric needs a panel here.

use super::panel::{PANEL, Panel, REFRESH_IDLE_BANDS, Row, SECRET_LEFT_BANDS, SINK_LAG_BANDS, Viz};

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
        title: "Sinks",
        panels: &[
            Panel {
                title: "Sink deliveries / s by outcome",
                description: "Event delivery attempts per second, by sink and outcome. delivered: the receiver has it; retried: an attempt failed and will be repeated with backoff; failed: given up after the sink's max_age_secs and held (`mailsluice sinks status` lists them, `mailsluice sinks retry SINK` sends them again); skipped: not wanted by the sink (sources, events).",
                unit: "ops",
                targets: &[(
                    "sum by (sink, outcome) (rate(mailsluice_sink_deliveries_total[$__rate_interval]))",
                    "{{sink}} {{outcome}}",
                )],
                ..PANEL
            },
            Panel {
                title: "Sink backlog (events)",
                description: "Events in the outbox each sink has not yet delivered, failed or skipped. It grows while a receiver is down and shrinks when it is back; the mail itself is stored once whatever the backlog, and each event is a small record.",
                targets: &[("max by (sink) (mailsluice_sink_backlog_events)", "{{sink}}")],
                ..PANEL
            },
            Panel {
                title: "Oldest pending event age",
                description: "How long each sink's oldest undelivered event has waited since it was committed. A working sink stays within seconds; a line rising at one second per second is a receiver that does not take events (see `mailsluice sinks status` for its last answer). Past the red line the MailsluiceSinkLagGrowing alert fires.",
                unit: "s",
                thresholds: Some(SINK_LAG_BANDS),
                targets: &[(
                    "max by (sink) (mailsluice_sink_oldest_pending_age_seconds)",
                    "{{sink}}",
                )],
                ..PANEL
            },
            Panel {
                title: "Sink delivery duration",
                description: "Duration of one delivery attempt (webhook request to answer, NATS publish to acknowledgement), by sink. Close to the sink's timeout_secs means the receiver is the bottleneck: raise its capacity or the sink's concurrency.",
                unit: "s",
                targets: &[
                    (
                        "histogram_quantile(0.5, sum by (sink, le) (rate(mailsluice_sink_delivery_duration_seconds_bucket[$__rate_interval])))",
                        "{{sink}} p50",
                    ),
                    (
                        "histogram_quantile(0.95, sum by (sink, le) (rate(mailsluice_sink_delivery_duration_seconds_bucket[$__rate_interval])))",
                        "{{sink}} p95",
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
                title: "API requests / s, by route and code",
                description: "Requests to the node's HTTP endpoints. 401 (no or wrong token), 403 (role not enough, foreign Host, cross-site browser request) and 429 (too many failures from one peer) are callers turned away: a rise means someone is trying.",
                unit: "reqps",
                targets: &[(
                    "sum by (route, code) (rate(mailsluice_api_requests_total[$__rate_interval]))",
                    "{{route}} {{code}}",
                )],
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

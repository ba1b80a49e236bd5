//! Prometheus alerting rules (group `mailsluice`) and the rule file `dashboards/alerts.yml`.
//! Every rule's description names the source or provider and says what the operator does;
//! label values come from [`SourceState`], never from free text.

use super::{CLIENT_SECRET_WARN_DAYS, REFRESH_TOKEN_IDLE_DAYS, SINK_LAG_SECS};
use crate::telemetry::SourceState;

/// What the alerting rules are generated with.
#[derive(Debug, Clone)]
pub struct AlertOptions {
    /// The `job` label Prometheus gives the scraped nodes: the `job_name` of the scrape
    /// config. The node-down rules select on it and never fire if it does not match.
    pub job: String,
    /// A source that has not completed a session for this long is reported. It must exceed
    /// the longest `poll_interval_secs` by a good margin.
    pub no_success_secs: u64,
    /// Replaces every rule's `for:` (tests use `0s` to see alerts fire at once).
    pub pending_for: Option<String>,
}

impl Default for AlertOptions {
    /// Job `mailsluice`; no success for 15 minutes (15 polls at the default
    /// `poll_interval_secs = 60`: one failed poll is routine, a quarter of an hour without
    /// mail from a mailbox that is meant to be collected is not); each rule's own `for:`.
    fn default() -> Self {
        AlertOptions {
            job: "mailsluice".into(),
            no_success_secs: 900,
            pending_for: None,
        }
    }
}

/// One Prometheus alerting rule.
#[derive(Debug, Clone)]
pub struct AlertRule {
    pub name: &'static str,
    pub expr: String,
    /// How long `expr` must hold before the alert fires (`for:`).
    pub pending_for: String,
    /// `warning` (act within the day) or `critical` (mail is not being collected).
    pub severity: &'static str,
    pub summary: String,
    /// What happened and what the operator does about it; may use Prometheus templates
    /// (`{{ $labels.source }}`, `{{ $value }}`).
    pub description: String,
}

/// The alerting rules of group `mailsluice`.
pub fn alert_rules(opts: &AlertOptions) -> Vec<AlertRule> {
    let job = &opts.job;
    let no_success = opts.no_success_secs;
    let (no_success_human, no_success_for) = if no_success.is_multiple_of(60) {
        let minutes = no_success / 60;
        (format!("{minutes} minutes"), format!("{minutes}m"))
    } else {
        (format!("{no_success} seconds"), format!("{no_success}s"))
    };
    // Sources meant to be collecting: configured (a source removed by a reload keeps its
    // series with every state at 0), not disabled, and not waiting for a consent (that has
    // an alert of its own).
    let collecting = format!(
        "max by (job, instance, source) (mailsluice_source_state{{state!~\"{}|{}\"}}) == 1",
        SourceState::Disabled.as_str(),
        SourceState::NeedsReauth.as_str()
    );
    // Configured sources, whatever their state.
    let configured = "max by (job, instance, source) (mailsluice_source_state) == 1";
    let rule =
        |name, expr: String, pending_for: &str, severity, summary: &str, description: &str| {
            AlertRule {
                name,
                expr,
                pending_for: opts
                    .pending_for
                    .clone()
                    .unwrap_or_else(|| pending_for.to_string()),
                severity,
                summary: summary.to_string(),
                description: description.to_string(),
            }
        };
    vec![
        rule(
            "MailsluiceSourceNeedsReauth",
            format!(
                "max by (job, instance, source) (mailsluice_source_state{{state=\"{}\"}}) == 1",
                SourceState::NeedsReauth.as_str()
            ),
            "1m",
            "critical",
            "mailsluice source {{ $labels.source }} needs re-authorization",
            "The provider refused the refresh token of source {{ $labels.source }} on {{ $labels.instance }} (consent revoked, password reset, or token expired), so collection from this mailbox is paused and nothing is retried. Run `mailsluice authorize {{ $labels.source }}` (add `--device` on a headless server) and sign in as the source's configured user; a running node picks the new consent up without a restart. `mailsluice status` shows the provider's error code.",
        ),
        rule(
            "MailsluiceSourceNoSuccess",
            format!(
                "(time() - max by (job, instance, source) (mailsluice_last_success_timestamp_seconds) > {no_success}) and on (job, instance, source) ({collecting})"
            ),
            "1m",
            "warning",
            &format!("mailsluice source {{{{ $labels.source }}}} has not collected for {no_success_human}"),
            &format!("Source {{{{ $labels.source }}}} on {{{{ $labels.instance }}}} last completed a collection session {{{{ $value | humanizeDuration }}}} ago (threshold {no_success_human}, meant to exceed the source's poll_interval_secs many times over). Run `mailsluice status` for the source's state and last error and `mailsluice test-login {{{{ $labels.source }}}}` to see which step fails (DNS/connect, TLS, SASL, token, mailbox)."),
        ),
        rule(
            "MailsluiceSourceNeverSucceeded",
            format!(
                "({collecting}) unless on (job, instance, source) mailsluice_last_success_timestamp_seconds"
            ),
            &no_success_for,
            "warning",
            &format!("mailsluice source {{{{ $labels.source }}}} has not completed a session in the {no_success_human} since the node started"),
            "Source {{ $labels.source }} on {{ $labels.instance }} has not completed a single collection session since the node started (a first sync of a very large mailbox can take this long; its backlog then shrinks). Run `mailsluice status` for its last error and `mailsluice test-login {{ $labels.source }}` to see which step fails.",
        ),
        rule(
            "MailsluiceRefreshTokenIdle",
            format!(
                "(time() - max by (job, instance, source) (mailsluice_refresh_token_last_used_timestamp_seconds) > {REFRESH_TOKEN_IDLE_DAYS} * 86400) and on (job, instance, source) ({configured})"
            ),
            "1h",
            "warning",
            &format!("refresh token of mailsluice source {{{{ $labels.source }}}} unused for {REFRESH_TOKEN_IDLE_DAYS} days"),
            "The refresh token of source {{ $labels.source }} on {{ $labels.instance }} was last used {{ $value | humanizeDuration }} ago. Microsoft revokes refresh tokens left unused for 90 days, after which the source needs a new consent. Find out why the source does not collect (`mailsluice status`, `mailsluice tokens status`) and let it run, or re-authorize with `mailsluice authorize {{ $labels.source }}` before the 90 days are over.",
        ),
        rule(
            "MailsluiceClientSecretExpiring",
            format!(
                "min by (job, instance, provider) (mailsluice_client_secret_expiry_timestamp_seconds) - time() < {CLIENT_SECRET_WARN_DAYS} * 86400"
            ),
            "10m",
            "warning",
            &format!("client secret of mailsluice provider {{{{ $labels.provider }}}} expires within {CLIENT_SECRET_WARN_DAYS} days"),
            "The client secret of provider {{ $labels.provider }} on {{ $labels.instance }} expires in {{ $value | humanizeDuration }} (negative: already expired); every source using this provider then fails to get tokens. Create a new secret in the app registration, point providers.{{ $labels.provider }}.client_secret_env or client_secret_file at it, set providers.{{ $labels.provider }}.client_secret_expires to its end date, and restart the node.",
        ),
        rule(
            "MailsluiceSourceThrottled",
            format!(
                "max by (job, instance, source) (mailsluice_source_state{{state=\"{}\"}}) == 1",
                SourceState::Throttled.as_str()
            ),
            "30m",
            "warning",
            "mailsluice source {{ $labels.source }} throttled for 30 minutes",
            "The server has kept throttling source {{ $labels.source }} on {{ $labels.instance }} for 30 minutes, so its mail arrives late or not at all. Office 365 limits concurrent sessions and bandwidth per mailbox: lower sources.{{ $labels.source }}.max_connections, raise poll_interval_secs, or stop other clients using the same mailbox. `mailsluice status` shows the server's reply.",
        ),
        rule(
            "MailsluiceParseFailuresRising",
            "sum by (job, instance, source) (increase(mailsluice_parse_failures_total[1h])) > 3 and sum by (job, instance, source) (increase(mailsluice_parse_failures_total[1h])) > 0.05 * sum by (job, instance, source) (increase(mailsluice_messages_ingested_total[1h]))".to_string(),
            "15m",
            "warning",
            "mail from mailsluice source {{ $labels.source }} often fails to parse",
            "More than 3 messages, and more than 5% of those stored, from source {{ $labels.source }} on {{ $labels.instance }} could not be parsed in the last hour. They are stored raw with a parse-error mark (no mail is lost), but consumers miss their parsed fields. Export them with `mailsluice messages export --format eml` and look for a new sender or format.",
        ),
        rule(
            "MailsluiceSinkFailing",
            "sum by (job, instance, sink) (increase(mailsluice_sink_deliveries_total{outcome=\"failed\"}[15m])) > 0".to_string(),
            "1m",
            "critical",
            "mailsluice sink {{ $labels.sink }} gave up on events",
            "Sink {{ $labels.sink }} on {{ $labels.instance }} marked events failed in the last 15 minutes: its receiver did not take them within the sink's max_age_secs of retries, so that receiver is missing them. They are held, not lost. Run `mailsluice sinks status` for the failed events and the receiver's last answer, fix the receiver (or the sink's url, secret or credentials), then `mailsluice sinks retry {{ $labels.sink }}` sends them again. The alert resolves 15 minutes after the last failure; the failed events stay listed until retried.",
        ),
        rule(
            "MailsluiceSinkLagGrowing",
            format!(
                "(max by (job, instance, sink) (mailsluice_sink_oldest_pending_age_seconds) > {SINK_LAG_SECS}) and on (job, instance, sink) (max by (job, instance, sink) (deriv(mailsluice_sink_oldest_pending_age_seconds[10m])) > 0)"
            ),
            "5m",
            "warning",
            &format!("mailsluice sink {{{{ $labels.sink }}}} is more than {} minutes behind and falling further", SINK_LAG_SECS / 60),
            "The oldest event sink {{ $labels.sink }} on {{ $labels.instance }} has not delivered was committed {{ $value | humanizeDuration }} ago, and the lag keeps growing: the receiver is down, refuses the requests (wrong secret, 4xx, 5xx), or is slower than the mail arrives. Run `mailsluice sinks status` for the backlog and the receiver's last answer, and check the receiver. Nothing is lost meanwhile: events wait in the outbox (small records; the mail is stored once) and are delivered in order once it answers; an event older than the sink's max_age_secs is marked failed and waits for `mailsluice sinks retry {{ $labels.sink }}`.",
        ),
        rule(
            "MailsluiceNodeDown",
            format!("up{{job=\"{job}\"}} == 0"),
            "5m",
            "critical",
            "mailsluice node {{ $labels.instance }} is down",
            &format!("Prometheus cannot scrape the mailsluice node {{{{ $labels.instance }}}} (job {job}): the process is not running or its http_listen address is unreachable, so no mail is collected there. Check the service and its log. This rule selects job=\"{job}\", which must equal the job_name of the scrape config that scrapes the nodes."),
        ),
        rule(
            "MailsluiceNodeAbsent",
            format!("absent(mailsluice_build_info{{job=\"{job}\"}})"),
            "15m",
            "critical",
            "no mailsluice node reports metrics",
            &format!("No target of job {job} exposes mailsluice metrics: every node is gone, or the scrape config's job_name differs from \"{job}\" (then MailsluiceNodeDown cannot fire either). Check the nodes and the scrape config."),
        ),
    ]
}

/// `alert_rules` as a Prometheus rule file. Strings are written as JSON strings, which are
/// valid YAML double-quoted scalars, so no expression or template needs YAML escaping.
pub fn alerts_yaml(opts: &AlertOptions) -> String {
    let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let mut out = format!(
        "# Prometheus alerting rules for mailsluice nodes. Generated by\n\
         # `cargo run --example gen_dashboards` from src/telemetry/dashboards/: edit there.\n\
         # MailsluiceNodeDown and MailsluiceNodeAbsent select job=\"{}\": it must equal the\n\
         # job_name of the scrape config that scrapes the nodes' /metrics.\n\
         # MailsluiceSourceNoSuccess and MailsluiceSourceNeverSucceeded report a source without a\n\
         # completed session for {} seconds (a few minutes is routine: one failed poll, a server\n\
         # restart; many missed polls at the default poll_interval_secs = 60 are not). Sources\n\
         # polled less often need a larger AlertOptions::no_success_secs.\n\
         # MailsluiceSinkFailing and MailsluiceSinkLagGrowing need a node that delivers\n\
         # events to sinks ([sinks.NAME]); without sinks they stay quiet.\n\
         groups:\n  - name: mailsluice\n    rules:\n",
        opts.job, opts.no_success_secs
    );
    for r in alert_rules(opts) {
        out.push_str(&format!(
            "      - alert: {}\n        expr: {}\n        for: {}\n        labels:\n          severity: {}\n        annotations:\n          summary: {}\n          description: {}\n",
            r.name,
            q(&r.expr),
            r.pending_for,
            r.severity,
            q(&r.summary),
            q(&r.description),
        ));
    }
    out
}

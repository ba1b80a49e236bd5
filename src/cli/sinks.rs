//! `mailsluice sinks ...`: `status` from the store, or through the running node's API when
//! it holds the store; `retry SINK` and `replay SINK --from SEQ` always ask the running
//! node, whose sink workers do the delivering.

use std::fmt::Write as _;

use anyhow::Context;

use mailsluice::api::{self, SinkView};
use mailsluice::config::Settings;
use mailsluice::sinks::engine::{ReplayReport, RetryReport};

use super::node_api::NodeApi;
use super::{SinksCommand, UsageError, open_store, runtime};

pub(crate) fn sinks(settings: &Settings, command: SinksCommand) -> anyhow::Result<()> {
    match command {
        SinksCommand::Status { json } => status(settings, json),
        SinksCommand::Retry { sink } => retry(settings, &sink),
        SinksCommand::Replay { sink, from } => replay(settings, &sink, from),
    }
}

fn status(settings: &Settings, json: bool) -> anyhow::Result<()> {
    let views: Vec<SinkView> = match open_store(settings)? {
        Some(store) => api::sink_views(settings, &store, chrono::Utc::now())?,
        None => runtime()?.block_on(NodeApi::new(settings)?.get_json("/api/sinks"))?,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&views)?);
    } else {
        print!("{}", table(&views));
    }
    Ok(())
}

/// The table `sinks status` prints, then each failing sink's failed events.
fn table(views: &[SinkView]) -> String {
    if views.is_empty() {
        return "no sinks configured\n".to_string();
    }
    let mut out = format!(
        "{:<20} {:<8} {:<9} {:>10} {:>8} {:>8}  OLDEST PENDING\n",
        "SINK", "KIND", "STATE", "DELIVERED", "FAILED", "BACKLOG"
    );
    for v in views {
        let oldest = v.oldest_pending.as_ref().map_or_else(
            || "-".to_string(),
            |p| format!("{} (seq {})", age(p.age_secs), p.seq),
        );
        let _ = writeln!(
            out,
            "{:<20} {:<8} {:<9} {:>10} {:>8} {:>8}  {oldest}",
            v.name,
            v.kind,
            v.state.as_str(),
            v.delivered,
            v.failed,
            v.backlog,
        );
    }
    for v in views.iter().filter(|v| v.failed > 0) {
        let _ = writeln!(
            out,
            "\n{}: {} failed event(s); once the receiver is fixed: mailsluice sinks retry {}",
            v.name, v.failed, v.name
        );
        for f in &v.failures {
            let _ = writeln!(
                out,
                "  seq {:<8} {:<36} {} attempt(s), failed {}: {}",
                f.seq,
                f.id.as_deref().unwrap_or("-"),
                f.attempts,
                f.failed_at,
                printable(&f.last_error)
            );
        }
        let more = v.failed.saturating_sub(v.failures.len() as u64);
        if more > 0 {
            let _ = writeln!(
                out,
                "  ... and {more} more (`--json` lists the same first ones)"
            );
        }
    }
    out
}

/// A receiver's answer as one terminal line: control characters (line breaks, escape
/// sequences a hostile receiver could send) become spaces.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// `45s`, `3m12s`, `2h05m`, `3d04h`.
fn age(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        s => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// `mailsluice sinks retry SINK`.
fn retry(settings: &Settings, sink: &str) -> anyhow::Result<()> {
    known(settings, sink)?;
    let path = format!("/api/sinks/{sink}/retry");
    let report: RetryReport = ask(settings, &path, serde_json::json!({}))?;
    if report.events.is_empty() {
        println!("sink {}: no failed events", report.sink);
    } else {
        let seqs: Vec<String> = report.events.iter().map(u64::to_string).collect();
        println!(
            "sink {}: {} failed event(s) queued for another attempt: {}",
            report.sink,
            report.events.len(),
            seqs.join(", ")
        );
    }
    Ok(())
}

/// `mailsluice sinks replay SINK --from SEQ`.
fn replay(settings: &Settings, sink: &str, from: u64) -> anyhow::Result<()> {
    known(settings, sink)?;
    let path = format!("/api/sinks/{sink}/replay");
    let report: ReplayReport = ask(settings, &path, serde_json::json!({ "from": from }))?;
    println!(
        "sink {}: delivering events {} to {} again",
        report.sink, report.from, report.through
    );
    Ok(())
}

/// A sink not in the file is a usage error, told without asking the node.
fn known(settings: &Settings, sink: &str) -> anyhow::Result<()> {
    if settings.sinks.contains_key(sink) {
        return Ok(());
    }
    let names: Vec<&str> = settings.sinks.keys().map(String::as_str).collect();
    let which = if names.is_empty() {
        "there are no [sinks.NAME]".to_string()
    } else {
        format!("the sinks are {}", names.join(", "))
    };
    Err(UsageError(format!("no sink {sink:?} in the configuration; {which}")).into())
}

/// POSTs `body` to `path` on the running node; the answer as `T`, or the node's refusal
/// (a replay from a pruned event: exit 2, naming the oldest event kept).
fn ask<T: serde::de::DeserializeOwned>(
    settings: &Settings,
    path: &str,
    body: serde_json::Value,
) -> anyhow::Result<T> {
    let api = NodeApi::new(settings).context("sinks commands need the running node")?;
    let url = format!("{}{path}", api.base);
    let (status, text) = runtime()?.block_on(api.post_json(path, &body))?;
    if status.is_success() {
        return serde_json::from_str(&text)
            .with_context(|| format!("{url}: unexpected answer: {text}"));
    }
    #[derive(serde::Deserialize)]
    struct Refused {
        error: String,
    }
    let why = serde_json::from_str::<Refused>(&text)
        .map(|r| r.error)
        .unwrap_or_else(|_| format!("HTTP {status}: {text}"));
    if status == reqwest::StatusCode::UNPROCESSABLE_ENTITY {
        return Err(UsageError(why).into());
    }
    Err(anyhow::anyhow!("{url}: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailsluice::api::{FailureView, PendingView, SinkHealth};

    fn view(name: &str, failed: u64, failures: Vec<FailureView>) -> SinkView {
        SinkView {
            name: name.into(),
            kind: "webhook".into(),
            state: if failed > 0 {
                SinkHealth::Failing
            } else {
                SinkHealth::Healthy
            },
            delivered: 120,
            failed,
            failed_total: failed,
            skipped: 0,
            backlog: 5,
            delivered_through: 130,
            oldest_pending: Some(PendingView {
                seq: 131,
                id: "evt_1".into(),
                timestamp: "2025-01-01T00:00:00Z".into(),
                age_secs: 192,
            }),
            failures,
        }
    }

    #[test]
    fn ages_read_at_a_glance() {
        assert_eq!(age(0), "0s");
        assert_eq!(age(59), "59s");
        assert_eq!(age(192), "3m12s");
        assert_eq!(age(2 * 3600 + 5 * 60 + 9), "2h05m");
        assert_eq!(age(3 * 86_400 + 4 * 3600), "3d04h");
    }

    #[test]
    fn the_table_has_a_row_per_sink_and_lists_failed_events() {
        let failure = FailureView {
            seq: 12,
            id: Some("evt_ab".into()),
            attempts: 9,
            last_error: "HTTP 500\r\n\u{1b}[31mred".into(),
            failed_at: "2025-01-01T00:00:00Z".into(),
        };
        let text = table(&[
            view("helpdesk", 3, vec![failure]),
            view("stream", 0, vec![]),
        ]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("SINK "), "{text}");
        assert!(lines[0].ends_with("OLDEST PENDING"), "{text}");
        let row: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            row,
            [
                "helpdesk", "webhook", "failing", "120", "3", "5", "3m12s", "(seq", "131)"
            ]
        );
        assert!(lines[2].starts_with("stream "), "{text}");
        assert!(text.contains("mailsluice sinks retry helpdesk"), "{text}");
        assert!(text.contains("seq 12"), "{text}");
        assert!(text.contains("HTTP 500   [31mred"), "{text}");
        assert!(
            !text.contains('\u{1b}'),
            "an escape sequence reached the terminal"
        );
        assert!(text.contains("... and 2 more"), "{text}");
        assert_eq!(table(&[]), "no sinks configured\n");
    }
}

//! `mailsluice sinks retry SINK` and `mailsluice sinks replay SINK --from SEQ`: both ask the
//! running node, whose sink workers do the delivering.

use anyhow::Context;

use mailsluice::config::Settings;
use mailsluice::sinks::engine::{ReplayReport, RetryReport};

use super::node_api::NodeApi;
use super::{UsageError, runtime};

/// `mailsluice sinks retry SINK`.
pub(crate) fn retry(settings: &Settings, sink: &str) -> anyhow::Result<()> {
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
pub(crate) fn replay(settings: &Settings, sink: &str, from: u64) -> anyhow::Result<()> {
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

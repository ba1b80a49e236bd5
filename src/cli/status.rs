//! `mailsluice status`.

use mailsluice::api::{self, SourceView};
use mailsluice::config::Settings;

use super::node_api::NodeApi;
use super::{open_store, runtime};

pub(crate) fn status(settings: &Settings) -> anyhow::Result<()> {
    let views: Vec<SourceView> = match open_store(settings)? {
        Some(store) => api::source_views(settings, &store)?,
        None => runtime()?.block_on(NodeApi::new(settings)?.get_json("/api/sources"))?,
    };
    println!(
        "{:<20} {:<6} {:<13} {:>8} {:>8}  {:<26} LAST ERROR",
        "SOURCE", "PROTO", "STATE", "STORED", "BACKLOG", "LAST SUCCESS"
    );
    let mut warnings = Vec::new();
    for v in views {
        println!(
            "{:<20} {:<6} {:<13} {:>8} {:>8}  {:<26} {}",
            v.name,
            v.protocol,
            v.state,
            v.stored_total,
            v.backlog,
            v.last_success.unwrap_or_else(|| "-".into()),
            v.last_error.unwrap_or_default()
        );
        warnings.extend(v.warnings.iter().map(|w| format!("{}: {w}", v.name)));
    }
    for w in warnings {
        println!("WARNING {w}");
    }
    Ok(())
}

//! The per-message cost of the ingest path without any network: `parse::parse` of the raw
//! bytes, then `Store::store` into a fresh store in a temporary directory, with one flush at
//! the end, over the same generated corpus as `benches/scenarios.rs`.
//!
//! A cheap regression check, timed with `std::time` (no statistics crate): run it before and
//! after a change to `src/parse.rs` or `src/store/` and compare the ns/message lines.
//!
//! ```text
//! cargo bench --bench parse_store                    # 2,000 messages
//! cargo bench --bench parse_store -- --messages 10000
//! ```

// The corpus module has more functions than this bench needs.
#[allow(dead_code)]
#[path = "common/corpus.rs"]
mod corpus;

use std::time::{Duration, Instant};

use mailsluice::store::{Location, NewMessage, Store};

const DEFAULT_MESSAGES: usize = 2_000;

fn main() {
    let messages = match parse_args(std::env::args().skip(1)) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("parse_store: {e}\nusage: parse_store [--messages N]");
            std::process::exit(2);
        }
    };
    let mail = corpus::mailbox("ps", messages);
    let (total_bytes, median, p95, max) = corpus::stats(&mail);
    println!(
        "parse_store: {messages} messages, {:.1} MB (median {median} B, p95 {p95} B, max {max} B)",
        total_bytes as f64 / 1e6
    );

    // Parsing alone, so a change in either half shows where it came from.
    let started = Instant::now();
    let parsed: Vec<_> = mail
        .iter()
        .map(|raw| mailsluice::parse::parse(raw))
        .collect();
    let parse_time = started.elapsed();
    let failures = parsed.iter().filter(|p| p.is_err()).count();

    let dir = tempfile::Builder::new()
        .prefix("mailsluice-parse-store-")
        .tempdir()
        .expect("create a temporary directory for the store");
    let store = Store::open(&dir.path().join("data"), &dir.path().join("secret.key"))
        .expect("open a store in the temporary directory");

    // Parse + store as `ingest::fetch_batch` does it when mail arrives faster than it is
    // stored: parse, build the message, store up to 8 messages (4 MiB) with their
    // checkpoints in one transaction; one flush at the end.
    let written_before = disk_writes();
    let started = Instant::now();
    let mut batch = Vec::new();
    let mut batch_bytes = 0;
    for (uid, raw) in mail.into_iter().enumerate() {
        let parsed = mailsluice::parse::parse(&raw);
        let msg = NewMessage {
            source: "bench".to_string(),
            location: Location::Imap {
                folder: "INBOX".to_string(),
                uidvalidity: 1,
                uid: u32::try_from(uid + 1).expect("fewer than 2^32 messages"),
            },
            raw,
            internal_date: None,
            parsed,
            post_action: false,
        };
        batch_bytes += msg.raw.len();
        batch.push((msg, true));
        if batch.len() == 8 || batch_bytes >= 4 * 1024 * 1024 {
            store
                .store_batch(std::mem::take(&mut batch), true)
                .expect("store a batch");
            batch_bytes = 0;
        }
    }
    if !batch.is_empty() {
        store.store_batch(batch, true).expect("store a batch");
    }
    let stored_time = started.elapsed();
    let started = Instant::now();
    store.flush_sync().expect("flush the store");
    let flush_time = started.elapsed();
    let written = disk_writes()
        .zip(written_before)
        .map(|(after, before)| after - before);

    println!("parse failures: {failures}");
    report("parse", parse_time, messages, total_bytes);
    report("parse + store", stored_time, messages, total_bytes);
    report("flush (once)", flush_time, messages, total_bytes);
    report(
        "parse + store + flush",
        stored_time + flush_time,
        messages,
        total_bytes,
    );
    if let Some(written) = written {
        println!(
            "written to disk         {:>9.1} MB ({:.2}x the mail)",
            written as f64 / 1e6,
            written as f64 / total_bytes.max(1) as f64
        );
    }
}

/// Bytes this process has caused to be written to storage so far (Linux `/proc/self/io`).
fn disk_writes() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
}

fn report(what: &str, took: Duration, messages: usize, bytes: u64) {
    let secs = took.as_secs_f64().max(1e-9);
    println!(
        "{what:<22} {:>10.0} ns/message {:>9.1} MB/s {:>9.3} s",
        took.as_nanos() as f64 / messages.max(1) as f64,
        bytes as f64 / 1e6 / secs,
        secs
    );
}

/// `--messages N`; `--bench` (added by `cargo bench`) is ignored.
fn parse_args(mut args: impl Iterator<Item = String>) -> Result<usize, String> {
    let mut messages = DEFAULT_MESSAGES;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--bench" => {}
            "--messages" => {
                let value = args.next().ok_or("--messages needs a number")?;
                messages = value
                    .parse()
                    .map_err(|_| format!("--messages {value:?}: not a number"))?;
                if messages == 0 {
                    return Err("--messages must be at least 1".into());
                }
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(messages)
}

//! The per-message cost of the ingest path without any network, stage by stage, over the
//! same generated corpus as `benches/scenarios.rs`: `parse::parse` of the raw bytes, then
//! `Store::prepare_batch` (sha256, the metadata as JSON, zstd), `Store::commit_batch` (the
//! sled transactions) into a fresh store in a temporary directory, and one flush at the end.
//! sha256 and zstd of the raw bytes are also timed alone, to split the prepare stage.
//!
//! Each stage is reported as wall time and as the CPU time of the whole process while it
//! ran (`getrusage`: sled's background threads included), so the sum of the CPU column is
//! what parsing and storing the corpus costs, whichever core it runs on.
//!
//! A cheap regression check, timed with `std::time` (no statistics crate): run it before and
//! after a change to `src/parse.rs` or `src/store/` and compare the ns/message lines.
//!
//! ```text
//! cargo bench --bench parse_store                    # 2,000 messages
//! cargo bench --bench parse_store -- --messages 10000
//! cargo bench --bench parse_store -- --compression none
//! ```

// The corpus module has more functions than this bench needs.
#[allow(dead_code)]
#[path = "common/corpus.rs"]
mod corpus;

use std::time::{Duration, Instant};

use mailsluice::store::{Compression, Location, NewMessage, Store};
use sha2::Digest as _;

const DEFAULT_MESSAGES: usize = 2_000;

struct Args {
    messages: usize,
    compression: Compression,
}

fn main() {
    let Args {
        messages,
        compression,
    } = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!(
                "parse_store: {e}\nusage: parse_store [--messages N] [--compression zstd|none]"
            );
            std::process::exit(2);
        }
    };
    let mail = corpus::mailbox("ps", messages);
    let (total_bytes, median, p95, max) = corpus::stats(&mail);
    println!(
        "parse_store: {messages} messages, {:.1} MB (median {median} B, p95 {p95} B, max {max} B), compression {compression:?}",
        total_bytes as f64 / 1e6
    );
    let mut stages: Vec<(&str, Timed)> = Vec::new();

    // The two pieces of the prepare stage that do not depend on the parse, alone.
    let (digests, t) = timed(|| {
        mail.iter()
            .map(|raw| sha2::Sha256::digest(raw)[0])
            .fold(0u8, |a, b| a ^ b)
    });
    std::hint::black_box(digests);
    let sha_alone = t;
    let (compressed, t) = timed(|| {
        let mut z = zstd::bulk::Compressor::new(1).expect("a zstd context");
        mail.iter()
            .map(|raw| z.compress(raw).map_or(0, |c| c.len()))
            .sum::<usize>()
    });
    let zstd_alone = t;

    let (parsed, t) = timed(|| {
        mail.iter()
            .map(|raw| mailsluice::parse::parse(raw))
            .collect::<Vec<_>>()
    });
    stages.push(("parse", t));
    let failures = parsed.iter().filter(|p| p.is_err()).count();

    // The parsed fields as JSON, and that compressed: the rest of the prepare stage.
    let (json, json_alone) = timed(|| {
        parsed
            .iter()
            .map(|p| serde_json::to_vec(&p.as_ref().ok()).expect("parsed fields as JSON"))
            .collect::<Vec<_>>()
    });
    let json_bytes: usize = json.iter().map(Vec::len).sum();
    let (json_compressed, zstd_json_alone) = timed(|| {
        let mut z = zstd::bulk::Compressor::new(1).expect("a zstd context");
        json.iter()
            .map(|j| z.compress(j).map_or(0, |c| c.len()))
            .sum::<usize>()
    });
    drop(json);

    let dir = tempfile::Builder::new()
        .prefix("mailsluice-parse-store-")
        .tempdir()
        .expect("create a temporary directory for the store");
    let store = Store::open(&dir.path().join("data"), &dir.path().join("secret.key"))
        .expect("open a store in the temporary directory");
    store.set_compression(compression);

    // Batches as the ingest pipeline makes them when mail arrives faster than it is stored:
    // up to 8 messages (4 MiB) with their checkpoints in one transaction; one flush at the
    // end. Each batch is prepared, then committed; the two stages are timed apart.
    let written_before = disk_writes();
    let mut prepare = Timed::default();
    let mut commit = Timed::default();
    let mut batch = Vec::new();
    let mut batch_bytes = 0;
    let mut store_batch = |batch: Vec<(NewMessage, bool)>| {
        let (prepared, t) = timed(|| store.prepare_batch(batch).expect("prepare a batch"));
        prepare += t;
        let (_, t) = timed(|| store.commit_batch(&prepared).expect("commit a batch"));
        commit += t;
    };
    for (uid, (raw, parsed)) in mail.into_iter().zip(parsed).enumerate() {
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
            rematch: false,
        };
        batch_bytes += msg.raw.len();
        batch.push((msg, true));
        if batch.len() == 8 || batch_bytes >= 4 * 1024 * 1024 {
            store_batch(std::mem::take(&mut batch));
            batch_bytes = 0;
        }
    }
    if !batch.is_empty() {
        store_batch(batch);
    }
    stages.push(("prepare", prepare));
    stages.push(("commit", commit));
    let ((), t) = timed(|| store.flush_sync().expect("flush the store"));
    stages.push(("flush (once)", t));
    let written = disk_writes()
        .zip(written_before)
        .map(|(after, before)| after - before);

    println!("parse failures: {failures}");
    println!(
        "{:<30} {:>10} {:>9} {:>9} {:>9}",
        "stage", "ns/message", "MB/s", "wall s", "CPU s"
    );
    let mut total = Timed::default();
    for (what, t) in &stages {
        report(what, *t, messages, total_bytes);
        total += *t;
    }
    report("parse + store + flush", total, messages, total_bytes);
    println!("of which, alone:");
    report(
        "  sha256 of the raw bytes",
        sha_alone,
        messages,
        total_bytes,
    );
    report(
        "  zstd (level 1) of the raw",
        zstd_alone,
        messages,
        total_bytes,
    );
    report("  parsed fields to JSON", json_alone, messages, total_bytes);
    report(
        "  zstd (level 1) of the JSON",
        zstd_json_alone,
        messages,
        total_bytes,
    );
    println!(
        "zstd level 1 makes the raw bytes {:.1} % of their size, and the parsed fields' JSON \
         ({:.1} MB) {:.1} % of its size",
        compressed as f64 * 100.0 / total_bytes.max(1) as f64,
        json_bytes as f64 / 1e6,
        json_compressed as f64 * 100.0 / json_bytes.max(1) as f64
    );
    if let Some(written) = written {
        println!(
            "written to disk {:>9.1} MB ({:.2}x the mail)",
            written as f64 / 1e6,
            written as f64 / total_bytes.max(1) as f64
        );
    }
}

/// Wall time and whole-process CPU time (user + system) of a stage.
#[derive(Clone, Copy, Default)]
struct Timed {
    wall: Duration,
    cpu: Duration,
}

impl std::ops::AddAssign for Timed {
    fn add_assign(&mut self, other: Timed) {
        self.wall += other.wall;
        self.cpu += other.cpu;
    }
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Timed) {
    let (cpu, started) = (process_cpu(), Instant::now());
    let out = f();
    let wall = started.elapsed();
    (
        out,
        Timed {
            wall,
            cpu: process_cpu().saturating_sub(cpu),
        },
    )
}

/// User + system CPU time of this process, all threads, so far.
fn process_cpu() -> Duration {
    // SAFETY: rusage is plain data that getrusage fills in; all-zero is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage for the duration of the call.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Bytes this process has caused to be written to storage so far (Linux `/proc/self/io`).
fn disk_writes() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
}

fn report(what: &str, t: Timed, messages: usize, bytes: u64) {
    let secs = t.wall.as_secs_f64().max(1e-9);
    println!(
        "{what:<30} {:>10.0} {:>9.1} {:>9.3} {:>9.3}",
        t.wall.as_nanos() as f64 / messages.max(1) as f64,
        bytes as f64 / 1e6 / secs,
        secs,
        t.cpu.as_secs_f64()
    );
}

/// `--messages N`, `--compression zstd|none`; `--bench` (added by `cargo bench`) is ignored.
fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut parsed = Args {
        messages: DEFAULT_MESSAGES,
        compression: Compression::Zstd,
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--bench" => {}
            "--messages" => {
                let value = args.next().ok_or("--messages needs a number")?;
                parsed.messages = value
                    .parse()
                    .map_err(|_| format!("--messages {value:?}: not a number"))?;
                if parsed.messages == 0 {
                    return Err("--messages must be at least 1".into());
                }
            }
            "--compression" => {
                parsed.compression = match args.next().as_deref() {
                    Some("zstd") => Compression::Zstd,
                    Some("none") => Compression::None,
                    other => {
                        return Err(format!("--compression {other:?}: expected zstd or none"));
                    }
                }
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(parsed)
}

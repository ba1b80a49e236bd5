//! Results: the per-contender summary over runs, the table on stdout and the Markdown section
//! written with `--out`.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::contenders::{Contender, How};
use super::judge::{Judgement, Normalize};
use super::measure::Measured;

/// What one run of one contender gave.
pub struct RunResult {
    pub measured: Measured,
    /// CPU time of the server's processes (Dovecot's process group) during the run.
    pub server_cpu: Option<Duration>,
    /// Bytes written to the block devices from spawn to exit.
    pub disk_written: Option<u64>,
    pub verdict: Verdict,
    /// Why the run failed (its exit status and last output lines); its time is then not
    /// counted, but its output is still judged.
    pub failure: Option<String>,
}

/// What a run's output was found to be.
#[derive(Clone, Debug)]
pub enum Verdict {
    /// Message files compared with the seeded bytes.
    Judged(Judgement),
    /// The reference keeps nothing: messages and bytes it counted.
    Counted { messages: u64, bytes: u64 },
    /// There was no output to judge (the run could not start, or its output not be read).
    Failed(String),
}

/// All runs of one contender in one scenario.
pub struct ContenderResult {
    pub contender: Contender,
    pub name: String,
    pub runs: Vec<RunResult>,
    pub how: Option<How>,
    pub normalize: Normalize,
    /// Why it did not run at all (a peer that is not installed, or not for this protocol).
    pub skipped: Option<String>,
}

/// One scenario's results.
pub struct ScenarioResult {
    pub title: String,
    pub messages: usize,
    pub total_bytes: u64,
    pub median_size: usize,
    pub p95_size: usize,
    pub max_size: usize,
    pub runs: usize,
    /// Dovecot settings added for the benchmark.
    pub dovecot_config: String,
    /// Seeding and the untimed warm-up fetch.
    pub setup_notes: Vec<String>,
    pub contenders: Vec<ContenderResult>,
}

/// A contender's numbers over its successful runs (medians).
pub struct Summary {
    pub wall: Duration,
    pub cpu: Duration,
    /// The server's CPU time, when every timed run measured it.
    pub server_cpu: Option<Duration>,
    /// Bytes written to disk, when every timed run measured it.
    pub disk_written: Option<u64>,
    pub peak_rss_bytes: u64,
    pub ok_runs: usize,
    pub failures: Vec<String>,
    /// The worst run's verdict (most messages missing, duplicated or altered).
    pub verdict: Option<Verdict>,
    /// Whether the verdict differed between runs.
    pub verdicts_differ: bool,
}

fn median<T: Copy + Ord>(mut v: Vec<T>) -> Option<T> {
    v.sort_unstable();
    v.get(v.len() / 2).copied().filter(|_| !v.is_empty())
}

fn badness(v: &Verdict, seeded: usize) -> u64 {
    match v {
        Verdict::Judged(j) => (j.missing + j.duplicated + j.altered) as u64,
        Verdict::Counted { messages, .. } => (seeded as u64).abs_diff(*messages),
        Verdict::Failed(_) => u64::MAX,
    }
}

impl ContenderResult {
    pub fn summary(&self, seeded: usize) -> Summary {
        let judged = |r: &&RunResult| !matches!(r.verdict, Verdict::Failed(_));
        let timed: Vec<&RunResult> = self
            .runs
            .iter()
            .filter(|r| r.failure.is_none())
            .filter(judged)
            .collect();
        let failures = self
            .runs
            .iter()
            .filter_map(|r| match (&r.failure, &r.verdict) {
                (Some(f), _) => Some(f.clone()),
                (None, Verdict::Failed(e)) => Some(e.clone()),
                _ => None,
            })
            .collect();
        let with_output: Vec<&RunResult> = self.runs.iter().filter(judged).collect();
        let verdict = with_output
            .iter()
            .map(|r| r.verdict.clone())
            .max_by_key(|v| badness(v, seeded));
        let verdicts_differ = with_output
            .windows(2)
            .any(|w| badness(&w[0].verdict, seeded) != badness(&w[1].verdict, seeded));
        Summary {
            wall: median(timed.iter().map(|r| r.measured.wall).collect()).unwrap_or_default(),
            cpu: median(timed.iter().map(|r| r.measured.cpu).collect()).unwrap_or_default(),
            server_cpu: timed
                .iter()
                .map(|r| r.server_cpu)
                .collect::<Option<Vec<_>>>()
                .and_then(median),
            disk_written: timed
                .iter()
                .map(|r| r.disk_written)
                .collect::<Option<Vec<_>>>()
                .and_then(median),
            peak_rss_bytes: median(timed.iter().map(|r| r.measured.peak_rss_bytes).collect())
                .unwrap_or_default(),
            ok_runs: timed.len(),
            failures,
            verdict,
            verdicts_differ,
        }
    }
}

const HEADERS: [&str; 12] = [
    "contender",
    "median wall s",
    "msg/s",
    "MB/s",
    "peak RSS MB",
    "CPU s",
    "server CPU s",
    "disk written MB",
    "ratio vs mailsluice (password)",
    "missing",
    "duplicated",
    "altered",
];

/// The table rows of a scenario (cells as text).
fn rows(s: &ScenarioResult) -> Vec<[String; 12]> {
    let baseline = s
        .contenders
        .iter()
        .find(|c| c.contender == Contender::MailsluicePassword)
        .map(|c| c.summary(s.messages))
        .filter(|b| b.ok_runs > 0)
        .map(|b| b.wall.as_secs_f64());
    let mut out = Vec::new();
    for c in &s.contenders {
        let dash = || "–".to_string();
        if let Some(why) = &c.skipped {
            out.push([
                c.name.clone(),
                format!("not run: {why}"),
                dash(),
                dash(),
                dash(),
                dash(),
                dash(),
                dash(),
                dash(),
                dash(),
                dash(),
                dash(),
            ]);
            continue;
        }
        let sum = c.summary(s.messages);
        let (missing, duplicated, altered) = match &sum.verdict {
            Some(Verdict::Judged(j)) => (
                j.missing.to_string(),
                j.duplicated.to_string(),
                j.altered.to_string(),
            ),
            Some(Verdict::Counted { messages, .. }) => (
                (s.messages as u64).saturating_sub(*messages).to_string(),
                "n/a".into(),
                "n/a".into(),
            ),
            _ => (dash(), dash(), dash()),
        };
        if sum.ok_runs == 0 {
            out.push([
                c.name.clone(),
                "failed".into(),
                dash(),
                dash(),
                dash(),
                dash(),
                dash(),
                dash(),
                dash(),
                missing,
                duplicated,
                altered,
            ]);
            continue;
        }
        let secs = sum.wall.as_secs_f64().max(1e-9);
        let ratio = baseline.map_or_else(dash, |b| format!("{:.2}×", secs / b));
        let mut name = c.name.clone();
        if !sum.failures.is_empty() {
            let _ = write!(
                name,
                " ({} of {} runs failed)",
                sum.failures.len(),
                c.runs.len()
            );
        }
        out.push([
            name,
            format!("{secs:.2}"),
            format!("{:.0}", s.messages as f64 / secs),
            format!("{:.1}", s.total_bytes as f64 / 1e6 / secs),
            format!("{:.1}", sum.peak_rss_bytes as f64 / 1e6),
            format!("{:.2}", sum.cpu.as_secs_f64()),
            sum.server_cpu
                .map_or_else(dash, |c| format!("{:.2}", c.as_secs_f64())),
            sum.disk_written
                .map_or_else(dash, |b| format!("{:.0}", b as f64 / 1e6)),
            ratio,
            missing,
            duplicated,
            altered,
        ]);
    }
    out
}

/// What the judgement found, in words, per contender.
fn judgement_notes(s: &ScenarioResult) -> Vec<String> {
    let mut notes = Vec::new();
    for c in &s.contenders {
        if c.skipped.is_some() {
            continue;
        }
        let sum = c.summary(s.messages);
        for failure in sum.failures.iter().take(3) {
            notes.push(format!(
                "{}: a run failed ({}); its time is left out, its output judged all the same.",
                c.name,
                failure.replace('\n', " / ")
            ));
        }
        let differ = if sum.verdicts_differ {
            " (the worst of its runs; runs differed)"
        } else {
            ""
        };
        match &sum.verdict {
            Some(Verdict::Judged(j)) if j.perfect() => notes.push(format!(
                "{}: all {} messages present once, byte for byte (sha256){differ}.",
                c.name, j.seeded
            )),
            Some(Verdict::Judged(j)) => {
                let mut text = format!(
                    "{}: {} files for {} seeded messages; {} byte-identical, {} missing, {} duplicated, {} altered{differ}",
                    c.name, j.files, j.seeded, j.exact, j.missing, j.duplicated, j.altered
                );
                if j.unidentified > 0 {
                    let _ = write!(text, " ({} files with no seeded Message-ID)", j.unidentified);
                }
                if j.altered > 0 && !c.normalize.added_headers.is_empty() {
                    let _ = write!(
                        text,
                        "; of the altered, {} equal the seeded bytes once any added header line ({}) is removed",
                        j.equal_without_added_headers,
                        c.normalize.describe_headers()
                    );
                }
                if j.altered > 0 && c.normalize.line_endings {
                    let _ = write!(
                        text,
                        ", {} once CRLF line endings are also taken as LF",
                        j.equal_after_normalizing
                    );
                }
                text.push('.');
                notes.push(text);
            }
            Some(Verdict::Counted { messages, bytes }) => notes.push(format!(
                "{}: counted {messages} messages and {bytes} bytes (seeded: {} and {}); bytes are discarded unhashed, so duplicates and alterations are not judged{differ}.",
                c.name, s.messages, s.total_bytes
            )),
            _ => {}
        }
    }
    notes
}

fn corpus_line(s: &ScenarioResult) -> String {
    format!(
        "{} messages, {:.1} MB; message size median {} B, p95 {} B, max {} B",
        s.messages,
        s.total_bytes as f64 / 1e6,
        s.median_size,
        s.p95_size,
        s.max_size
    )
}

/// The human table for stdout.
pub fn print_text(s: &ScenarioResult) {
    println!("\n== {}", s.title);
    println!("corpus: {}", corpus_line(s));
    let rows = rows(s);
    let mut widths = HEADERS.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            let pad = w - cell.chars().count();
            if i == 0 {
                out.push_str(cell);
                out.push_str(&" ".repeat(pad));
            } else {
                out.push_str("  ");
                out.push_str(&" ".repeat(pad));
                out.push_str(cell);
            }
        }
        out
    };
    println!("{}", line(&HEADERS.map(String::from)));
    for row in &rows {
        println!("{}", line(row));
    }
    for note in judgement_notes(s) {
        println!("  - {note}");
    }
}

/// The machine and software the numbers come from.
pub struct Environment {
    pub date: String,
    pub cores: usize,
    pub memory: String,
    pub cpu: String,
    pub versions: Vec<(String, String)>,
    pub command: String,
    /// Peak RSS the measurement shows for `true`: the floor every contender starts from.
    pub rss_floor_bytes: Option<u64>,
    /// The disk's sequential write rate in the temp dir, bytes/s (not probed in smoke runs).
    pub disk_write_rate: Option<f64>,
}

impl Environment {
    pub fn probe(mailsluice: &Path, command: String) -> Environment {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map_or_else(
                || "unknown".into(),
                |kb| format!("{:.1} GiB", kb as f64 / 1048576.0),
            );
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let fetchmail_home = tempfile::tempdir().ok();
        let mut versions = vec![
            (
                "mailsluice".to_string(),
                version(Command::new(mailsluice).arg("--version"), None),
            ),
            (
                "Dovecot".into(),
                version(Command::new("dovecot").arg("--version"), None),
            ),
            (
                "mbsync".into(),
                version(Command::new("mbsync").arg("--version"), None),
            ),
            (
                "getmail".into(),
                version(Command::new("getmail").arg("--version"), None),
            ),
        ];
        let mut fetchmail = Command::new("fetchmail");
        fetchmail.arg("--version");
        if let Some(home) = &fetchmail_home {
            fetchmail
                .env("FETCHMAILHOME", home.path())
                .env("HOME", home.path());
        }
        versions.push(("fetchmail".into(), version(&mut fetchmail, Some("release"))));
        versions.push((
            "rustc".into(),
            version(Command::new("rustc").arg("--version"), None),
        ));
        Environment {
            date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory,
            cpu,
            versions,
            command,
            rss_floor_bytes: None,
            disk_write_rate: None,
        }
    }
}

/// The first line of a `--version` output (or the first containing `marker`).
fn version(cmd: &mut Command, marker: Option<&str>) -> String {
    let Ok(out) = cmd.stdin(Stdio::null()).output() else {
        return "not installed".into();
    };
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let line = match marker {
        Some(m) => text.lines().find(|l| l.contains(m)),
        None => text.lines().find(|l| !l.trim().is_empty()),
    };
    match line {
        Some(l) => l
            .trim()
            .trim_start_matches("This is ")
            .trim_end_matches('.')
            .to_string(),
        None => "unknown".into(),
    }
}

/// The Markdown section for `--out`.
pub fn markdown(env: &Environment, scenarios: &[ScenarioResult]) -> String {
    let mut m = String::new();
    let _ = writeln!(m, "## Benchmark results, {}\n", env.date);
    let _ = writeln!(
        m,
        "- Machine: {} cores ({}), {} memory{}",
        env.cores,
        env.cpu,
        env.memory,
        env.disk_write_rate.map_or_else(String::new, |r| format!(
            "; disk {:.0} MB/s sequential write (1 GiB then fsync, in the temp dir)",
            r / 1e6
        ))
    );
    let versions: Vec<String> = env
        .versions
        .iter()
        .map(|(k, v)| format!("{k}: `{v}`"))
        .collect();
    let _ = writeln!(m, "- Versions: {}", versions.join("; "));
    let _ = writeln!(m, "- Command: `{}`", env.command);
    let _ = writeln!(
        m,
        "- Method: each contender starts from an empty local state in a fresh directory; the \
         mailboxes are seeded once and fetched once untimed (warm-up), then the contenders run \
         in rotation (run r starts with the contender after the one that started run r-1), so \
         none always goes first. Wall time is spawn to exit of the contender's process; peak \
         RSS and CPU (user + system) come from `wait4` and include every child it reaped (e.g. \
         fetchmail's MDA){floor}. Server CPU is what Dovecot's processes (its process group: \
         master, login, auth and mail processes, and those the master reaped) used from spawn \
         to exit, from `/proc`; on a machine whose cores the server shares, it is the part of \
         them the contender could not have. Disk written is what the block devices took from spawn \
         to exit (`/sys/block/*/stat`, every process'), so a contender's writes still in the \
         page cache at exit are not in it. `sync` runs between runs, untimed. Figures are medians over runs; \
         msg/s and MB/s are the seeded messages and bytes over the median wall time; the ratio \
         is wall time over mailsluice's (password), so above 1 is slower. The judgement reads \
         each run's output afterwards (mailsluice: `messages export --format eml`) and matches \
         files to seeded messages by Message-ID, then by sha256.",
        floor = env.rss_floor_bytes.map_or_else(String::new, |b| format!(
            "; a process that does nothing (`true`) shows {:.1} MB peak RSS under this \
             measurement, the pages of the measuring wrapper it starts from",
            b as f64 / 1e6
        ))
    );
    for s in scenarios {
        let _ = writeln!(m, "\n### {}\n", s.title);
        let _ = writeln!(m, "- Corpus: {}", corpus_line(s));
        let _ = writeln!(m, "- Runs per contender: {}", s.runs);
        for note in &s.setup_notes {
            let _ = writeln!(m, "- {note}");
        }
        let _ = writeln!(
            m,
            "- Dovecot settings added to the harness configuration:\n\n```\n{}```\n",
            s.dovecot_config
        );
        let _ = writeln!(m, "| {} |", HEADERS.join(" | "));
        let _ = writeln!(
            m,
            "|{}",
            HEADERS
                .iter()
                .enumerate()
                .map(|(i, _)| if i == 0 { "---|" } else { "---:|" })
                .collect::<String>()
        );
        for row in rows(s) {
            let _ = writeln!(m, "| {} |", row.join(" | "));
        }
        let _ = writeln!(m, "\nJudgement:\n");
        for note in judgement_notes(s) {
            let _ = writeln!(m, "- {note}");
        }
        let _ = writeln!(m, "\nWhat each contender does besides fetching:\n");
        for c in &s.contenders {
            if c.skipped.is_none() {
                let _ = writeln!(m, "- {}: {}.", c.name, c.contender.fairness_note());
            }
        }
        let _ = writeln!(m, "\nHow each contender ran:\n");
        for c in &s.contenders {
            let Some(how) = &c.how else { continue };
            let _ = writeln!(m, "- **{}**: `{}`", c.name, how.command_line);
            for (file, text) in &how.files {
                let _ = writeln!(m, "\n  `{file}`:\n\n  ```");
                for line in text.trim_end().lines() {
                    let _ = writeln!(m, "  {line}");
                }
                let _ = writeln!(m, "  ```\n");
            }
        }
    }
    let _ = writeln!(
        m,
        "\nHow to reproduce: `{}` (as root on Debian 12; it installs isync, getmail6, fetchmail \
         and the test harness' dependencies when missing).",
        env.command
    );
    m
}

//! Records the `tests/transcripts/ingest/dovecot-*.txt` transcripts: the real collection
//! cycle (`ingest::run_cycle`, and `run_session` for IDLE) against the harness Dovecot,
//! through [`Recorder`], a TLS relay that writes every line of every connection down.
//!
//! Ignored by default: they rewrite files in the source tree, and the unit tests replay the
//! recorded files without a server. Run them again with
//! `cargo test --test record_transcripts -- --ignored` (one at a time with a name filter).
//! UIDVALIDITY, dates and the greeting differ from one recording to the next; the replay
//! takes whatever the file says.
//!
//! Each test also checks what it records: the cycle stored what the scenario says, the
//! relay could write every line faithfully (CRLF-separated UTF-8), every connection ends
//! with the client's LOGOUT or QUIT answered and the client closing, and the only
//! credential on the wire is the test password.

mod node;
mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use mailsluice::config::{AfterIngest, SourceSettings};
use mailsluice::ingest::{Credential, CycleReport, IdleCtl, run_cycle, run_session};
use mailsluice::secret::Secret;
use support::recorder::Recorder;
use support::{Dovecot, DovecotOptions, wait_for_async};

const ALICE: &str = "alice@example.test";
const PASSWORD: &str = "alice-password";

/// Message `n` of the corpus: a few short CRLF lines, so transcripts stay readable.
fn message(n: usize) -> Vec<u8> {
    format!("Message-ID: <t{n}@example.test>\r\nSubject: t{n}\r\n\r\nbody {n}\r\n").into_bytes()
}

/// Message `n` padded with 76-character lines to exactly `size` bytes.
fn sized_message(n: usize, size: usize) -> Vec<u8> {
    let mut m = format!("Message-ID: <t{n}@example.test>\r\nSubject: t{n}\r\n\r\n").into_bytes();
    while m.len() + 78 <= size {
        m.extend_from_slice(&[b'x'; 76]);
        m.extend_from_slice(b"\r\n");
    }
    let rest = size - m.len();
    assert!(rest >= 2, "{size} leaves no room for the last line's CRLF");
    m.extend(std::iter::repeat_n(b'y', rest - 2));
    m.extend_from_slice(b"\r\n");
    assert_eq!(m.len(), size);
    m
}

fn messages(range: std::ops::RangeInclusive<usize>) -> Vec<Vec<u8>> {
    range.map(message).collect()
}

/// `dovecot --version`, for the header.
fn dovecot_version() -> String {
    std::process::Command::new("/usr/sbin/dovecot")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// The settings a transcript header names, one per line, as the config would write them.
fn describe(source: &SourceSettings, idle: bool) -> Vec<String> {
    let mut out = vec![format!(
        "protocol = \"{}\"",
        format!("{:?}", source.protocol).to_lowercase()
    )];
    if !source.folders.is_empty() {
        out.push(format!("folders = {:?}", source.folders));
    }
    out.push(format!(
        "after_ingest = \"{}\"",
        format!("{:?}", source.after_ingest).to_lowercase()
    ));
    if source.after_ingest == AfterIngest::Move {
        out.push(format!(
            "move_to = \"{}\"",
            source.move_to.as_deref().unwrap_or("Processed")
        ));
    }
    out.push(format!("max_message_bytes = {}", source.max_message_bytes));
    out.push(format!("delete_after_days = {}", source.delete_after_days));
    // `idle` is on by default, but only a session run with an `IdleCtl` uses it.
    if idle {
        out.push("idle = true".into());
        out.push(format!(
            "poll_interval_secs = {}",
            source.poll_interval.as_secs()
        ));
    }
    out
}

/// One scenario being recorded: a Dovecot, the relay in front of it, a source reading
/// through the relay, and the transcript so far.
struct Recording {
    dovecot: Dovecot,
    recorder: Recorder,
    _dir: tempfile::TempDir,
    store: Arc<mailsluice::store::Store>,
    connector: mailsluice::net::Connector,
    source: SourceSettings,
    /// Transcript blocks, each with the comment that introduces it.
    blocks: Vec<String>,
    /// The source was run as an IDLE session (the header then names its IDLE settings).
    idle: bool,
    runtime: tokio::runtime::Runtime,
}

impl Recording {
    /// `extra` is appended to the source's config (`after_ingest = ...`).
    fn start(options: DovecotOptions, protocol: &str, extra: &str) -> Recording {
        let dovecot = Dovecot::start(options);
        let backend = if protocol == "imap" {
            dovecot.imap_port
        } else {
            dovecot.pop3_port
        };
        let recorder = Recorder::start(
            &dovecot.ca.cert_pem,
            &dovecot.ca.key_pem,
            backend,
            protocol == "imap",
        );
        let dir = tempfile::tempdir().unwrap();
        let (store, connector, source) =
            node::direct_source(&dovecot.ca_pem, dir.path(), protocol, recorder.port, extra);
        assert_eq!(source.name, "s");
        // The relay runs a runtime of its own; this one is built after it.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        Recording {
            dovecot,
            recorder,
            _dir: dir,
            store,
            connector,
            source,
            blocks: Vec::new(),
            idle: false,
            runtime,
        }
    }

    fn seed(&self, folder: &str, messages: &[Vec<u8>]) {
        self.dovecot.seed_folder(ALICE, folder, messages);
    }

    /// Runs one cycle, and adds its connection to the transcript under `note`.
    fn cycle(&mut self, note: &str) -> CycleReport {
        let report = self
            .runtime
            .block_on(run_cycle(
                &self.store,
                &self.connector,
                &self.source,
                &Credential::Password(Secret::new(PASSWORD)),
                None,
            ))
            .unwrap_or_else(|e| panic!("cycle failed: {e}\n{}", self.dovecot.log()));
        self.take(note, 1);
        report
    }

    /// Adds the `expected` connections made since the last call under `note`.
    fn take(&mut self, note: &str, expected: usize) {
        let blocks = self.recorder.take();
        assert_eq!(blocks.len(), expected, "connections: {blocks:#?}");
        let mut text = String::new();
        for line in note.lines() {
            text.push_str(&format!("# {line}\n"));
        }
        for block in blocks {
            text.push_str(&block);
        }
        self.blocks.push(text);
    }

    /// Checks the transcript and writes it to `tests/transcripts/ingest/<name>`.
    fn write(self, name: &str, scenario: &str) {
        let text = self.finish(scenario);
        let path = support::manifest_dir()
            .join("tests/transcripts/ingest")
            .join(name);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// The checked transcript under a header of `scenario` lines.
    fn finish(self, scenario: &str) -> String {
        let anomalies = self.recorder.anomalies();
        assert!(
            anomalies.is_empty(),
            "lines the transcript cannot carry: {anomalies:#?}"
        );
        let mut text = String::new();
        for line in scenario.lines() {
            text.push_str(&format!("# {line}\n"));
        }
        text.push_str(&format!(
            "#\n# Source `s`, user {ALICE}, password {PASSWORD} (test values), settings:\n"
        ));
        for line in describe(&self.source, self.idle) {
            text.push_str(&format!("#   {line}\n"));
        }
        text.push_str(&format!(
            "# Recorded from Dovecot {} by tests/record_transcripts.rs,\n\
             # through a TLS relay in front of Dovecot's plain port (hence {} among its\n\
             # capabilities).\n",
            dovecot_version(),
            if self.source.folders.is_empty() {
                "STLS"
            } else {
                "STARTTLS"
            },
        ));
        for block in &self.blocks {
            text.push('\n');
            text.push_str(block);
        }
        check(&text);
        text
    }
}

/// Every connection ends with LOGOUT/QUIT answered and `== end`; the only credential sent is
/// the test password.
fn check(transcript: &str) {
    let blocks: Vec<&str> = transcript.split("== connection\n").skip(1).collect();
    assert!(!blocks.is_empty(), "no connection recorded");
    for block in blocks {
        let lines: Vec<&str> = block
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        assert_eq!(lines.first(), Some(&"== tls"), "{block}");
        assert_eq!(lines.last(), Some(&"== end"), "{block}");
        let last_client = lines.iter().rposition(|l| l.starts_with("C: ")).unwrap();
        let goodbye = lines[last_client];
        assert!(
            goodbye == "C: $ LOGOUT" || goodbye == "C: QUIT",
            "the last command is {goodbye:?}:\n{block}"
        );
        let answered = lines[last_client + 1..]
            .iter()
            .any(|l| l.starts_with("S: $ OK") || l.starts_with("S: +OK"));
        assert!(answered, "{goodbye} is not answered:\n{block}");
        for line in lines.iter().filter_map(|l| l.strip_prefix("C: ")) {
            let words: Vec<&str> = line.split(' ').collect();
            let verb = words
                .iter()
                .find(|w| **w != "$")
                .copied()
                .unwrap_or_default()
                .to_ascii_uppercase();
            let carries_credential = matches!(verb.as_str(), "LOGIN" | "PASS")
                || (matches!(verb.as_str(), "AUTHENTICATE" | "AUTH") && words.len() > 3);
            if carries_credential {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(words.last().unwrap_or(&""))
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                assert!(
                    line.contains(PASSWORD) || decoded == format!("\0{ALICE}\0{PASSWORD}"),
                    "a credential other than the test password: {line}"
                );
            }
        }
    }
}

/// The connections' client lines, for assertions.
fn client_lines(transcript: &[String]) -> Vec<String> {
    transcript
        .iter()
        .flat_map(|b| b.lines())
        .filter_map(|l| l.strip_prefix("C: "))
        .map(str::to_owned)
        .collect()
}

/// The recorder itself (the tests below only run on demand): a cycle over each protocol is
/// written down line for line, and message lines that look like a tagged completion keep
/// their words, because they are literal bytes.
#[test]
fn recorder_writes_each_line_and_normalizes_only_real_tags() {
    let lookalike: String = (1..=9).map(|n| format!("A{n:04} OK x\r\n")).collect();
    let tricky =
        format!("Message-ID: <t9@example.test>\r\nSubject: t9\r\n\r\n{lookalike}").into_bytes();
    for protocol in ["imap", "pop3"] {
        let mut r = Recording::start(DovecotOptions::default(), protocol, "");
        r.seed("INBOX", &[message(1), tricky.clone()]);
        let report = r.cycle("t1 and t9");
        assert_eq!(report.stored, 2, "{protocol}");
        let text = r.finish("smoke");
        assert_eq!(text.matches("== connection\n== tls\n").count(), 1, "{text}");
        for n in 1..=9 {
            assert!(
                text.contains(&format!("\nS: A{n:04} OK x\n")),
                "{protocol}: {text}"
            );
        }
        let (login, fetched, bye) = if protocol == "imap" {
            (
                "C: $ AUTHENTICATE PLAIN ",
                "S: $ OK Fetch completed",
                "C: $ LOGOUT",
            )
        } else {
            ("C: PASS alice-password", "S: +OK 54 octets", "C: QUIT")
        };
        for expected in [
            login,
            "S: Message-ID: <t1@example.test>\nS: Subject: t1\nS: \nS: body 1\n",
            fetched,
            bye,
        ] {
            assert!(
                text.contains(expected),
                "{protocol}: no {expected:?} in\n{text}"
            );
        }
        // Every real tag became `$`: the only tag-like words left are the message's.
        assert!(!text.lines().any(|l| l.starts_with("C: A0")), "{text}");
        assert_eq!(
            text.lines().filter(|l| l.starts_with("S: A0")).count(),
            9,
            "{text}"
        );
    }
}

#[test]
#[ignore = "rewrites tests/transcripts/ingest/dovecot-imap-checkpoint.txt"]
fn imap_checkpoint() {
    let mut r = Recording::start(DovecotOptions::default(), "imap", "");
    r.seed("INBOX", &messages(1..=3));
    let first = r.cycle("Cycle 1: INBOX holds t1..t3; all three are stored.");
    assert_eq!(first.stored, 3);
    r.seed("INBOX", &messages(4..=5));
    let second = r.cycle(
        "Cycle 2: t4 and t5 were added; the checkpoint advanced, so only they are fetched\n\
         and stored.",
    );
    assert_eq!((second.stored, second.already), (2, 0));
    r.write(
        "dovecot-imap-checkpoint.txt",
        "Two polling cycles over INBOX: the second lists and fetches only what arrived after\n\
         the first (UIDs above the checkpoint).",
    );
}

#[test]
#[ignore = "rewrites tests/transcripts/ingest/dovecot-imap-uidvalidity.txt"]
fn imap_uidvalidity() {
    let mut r = Recording::start(DovecotOptions::default(), "imap", "");
    r.source.folders = vec!["Support".into()];
    r.seed("Support", &messages(1..=3));
    let first = r.cycle("Cycle 1: Support holds t1..t3; all three are stored.");
    assert_eq!(first.stored, 3);
    std::fs::remove_dir_all(r.dovecot.folder_dir(ALICE, "Support")).unwrap();
    // Dovecot derives UIDVALIDITY from the clock.
    std::thread::sleep(Duration::from_millis(1100));
    let mut again = messages(1..=4);
    again.push(message(1));
    r.seed("Support", &again);
    let second = r.cycle(
        "Cycle 2: Support was deleted and made again (new UIDVALIDITY) with t1..t3, a new t4\n\
         and a byte-identical copy of t1. Stored: t4 and the copy of t1 (2); found stored\n\
         already by content: t1..t3 (3).",
    );
    assert_eq!(
        (second.stored, second.already, second.uidvalidity_changes),
        (2, 3, 1)
    );
    r.write(
        "dovecot-imap-uidvalidity.txt",
        "A folder re-created between two cycles: its UIDVALIDITY changes, the stored messages\n\
         are matched again by content and only what is new (including a second identical\n\
         copy) is stored.",
    );
}

fn post_action(name: &str, extra: &str, what: &str) -> Recording {
    let mut r = Recording::start(DovecotOptions::default(), "imap", extra);
    r.seed("INBOX", &messages(1..=3));
    let report = r.cycle(&format!(
        "Cycle 1: INBOX holds t1..t3; all three are stored, then {what}."
    ));
    assert_eq!((report.stored, report.acted), (3, 3), "{name}");
    r
}

#[test]
#[ignore = "rewrites tests/transcripts/ingest/dovecot-imap-{delete,move,seen}.txt"]
fn imap_post_actions() {
    let r = post_action(
        "delete",
        "after_ingest = \"delete\"",
        "deleted from the server",
    );
    assert!(r.dovecot.message_files(ALICE, "INBOX").is_empty());
    r.write(
        "dovecot-imap-delete.txt",
        "One cycle with after_ingest = \"delete\": messages are deleted (and expunged) only\n\
         after they are stored.",
    );
    let r = post_action(
        "move",
        "after_ingest = \"move\"\nmove_to = \"Processed\"",
        "moved to Processed",
    );
    assert!(r.dovecot.message_files(ALICE, "INBOX").is_empty());
    assert_eq!(r.dovecot.message_files(ALICE, "Processed").len(), 3);
    r.write(
        "dovecot-imap-move.txt",
        "One cycle with after_ingest = \"move\": messages are moved to Processed (made when\n\
         missing) only after they are stored.",
    );
    let r = post_action("seen", "after_ingest = \"seen\"", "flagged \\Seen");
    r.write(
        "dovecot-imap-seen.txt",
        "One cycle with after_ingest = \"seen\": messages are flagged \\Seen only after they\n\
         are stored.",
    );
}

#[test]
#[ignore = "rewrites tests/transcripts/ingest/dovecot-imap-patterns.txt"]
fn imap_patterns() {
    // Folders are made on disk behind Dovecot's back: without its mailbox list index, LIST
    // reads the directory every time.
    let mut r = Recording::start(
        DovecotOptions {
            extra_config: "mailbox_list_index = no\n".into(),
            ..DovecotOptions::default()
        },
        "imap",
        "",
    );
    r.source.folders = vec!["INBOX".into(), "Support/*".into()];
    r.seed("INBOX", &messages(1..=2));
    r.seed("Support/A", &messages(3..=3));
    r.seed("Support/B", &messages(4..=5));
    r.seed("Other", &messages(6..=6));
    let report = r.cycle(
        "Cycle 1: INBOX holds t1 and t2, Support/A t3, Support/B t4 and t5, Other t6.\n\
         Support/* is listed and matches Support/A and Support/B; Other is not collected.\n\
         Stored: t1..t5 (5).",
    );
    assert_eq!(report.stored, 5);
    r.write(
        "dovecot-imap-patterns.txt",
        "Folder patterns: folders = [\"INBOX\", \"Support/*\"] collects INBOX and every folder\n\
         LIST finds under Support, each with its own checkpoint, and no other folder.",
    );
}

#[test]
#[ignore = "rewrites tests/transcripts/ingest/dovecot-imap-oversize.txt"]
fn imap_oversize() {
    let mut r = Recording::start(
        DovecotOptions::default(),
        "imap",
        "max_message_bytes = 2000",
    );
    r.seed("INBOX", &[message(1), sized_message(2, 5000), message(3)]);
    let report = r.cycle(
        "Cycle 1: INBOX holds t1, t2 (5000 bytes) and t3. t2 is over max_message_bytes: it\n\
         is skipped without being fetched. Stored: t1 and t3 (2).",
    );
    assert_eq!((report.stored, report.skipped), (2, 1));
    r.write(
        "dovecot-imap-oversize.txt",
        "A message over max_message_bytes (2000) between two small ones: its size is listed,\n\
         it is never fetched, and the folder is collected past it.",
    );
}

#[test]
#[ignore = "rewrites tests/transcripts/ingest/dovecot-pop3-uidl.txt"]
fn pop3_uidl() {
    let mut r = Recording::start(DovecotOptions::default(), "pop3", "");
    r.seed("INBOX", &messages(1..=3));
    let first = r.cycle("Cycle 1: the maildrop holds t1..t3; all three are retrieved and stored.");
    assert_eq!(first.stored, 3);
    r.seed("INBOX", &messages(4..=5));
    let second = r.cycle(
        "Cycle 2: t4 and t5 were added; UIDL shows which are new, only they are retrieved\n\
         and stored.",
    );
    assert_eq!((second.stored, second.already), (2, 0));
    let retrieved = client_lines(&r.blocks)
        .iter()
        .filter(|l| l.starts_with("RETR "))
        .count();
    assert_eq!(retrieved, 5, "each message retrieved once");
    r.write(
        "dovecot-pop3-uidl.txt",
        "Two POP3 cycles: the second compares the UIDL listing with what is stored and\n\
         retrieves only the new messages.",
    );
}

#[test]
#[ignore = "rewrites tests/transcripts/ingest/dovecot-pop3-delete{,-after-days}.txt"]
fn pop3_delete() {
    let mut r = Recording::start(
        DovecotOptions::default(),
        "pop3",
        "after_ingest = \"delete\"",
    );
    r.seed("INBOX", &messages(1..=3));
    let report = r.cycle(
        "Cycle 1: the maildrop holds t1..t3; all three are stored, then marked with DELE\n\
         (deleted at QUIT).",
    );
    assert_eq!((report.stored, report.acted), (3, 3));
    assert!(r.dovecot.message_files(ALICE, "INBOX").is_empty());
    r.write(
        "dovecot-pop3-delete.txt",
        "One POP3 cycle with after_ingest = \"delete\": each message is deleted only after it is\n\
         stored.",
    );

    let mut r = Recording::start(
        DovecotOptions::default(),
        "pop3",
        "after_ingest = \"delete\"\ndelete_after_days = 1",
    );
    r.seed("INBOX", &messages(1..=3));
    let report = r.cycle(
        "Cycle 1: the maildrop holds t1..t3; all three are stored, none is deleted (stored\n\
         less than a day ago).",
    );
    assert_eq!((report.stored, report.acted), (3, 0));
    assert_eq!(r.dovecot.message_files(ALICE, "INBOX").len(), 3);
    r.write(
        "dovecot-pop3-delete-after-days.txt",
        "One POP3 cycle with after_ingest = \"delete\" and delete_after_days = 1: messages are\n\
         stored and kept on the server, as none has been stored for a day yet.",
    );
}

#[test]
#[ignore = "rewrites tests/transcripts/ingest/dovecot-imap-idle.txt"]
fn imap_idle() {
    let mut r = Recording::start(
        DovecotOptions::default(),
        "imap",
        "idle = true\npoll_interval_secs = 3600",
    );
    r.seed("INBOX", &messages(1..=2));
    let cred = Credential::Password(Secret::new(PASSWORD));
    let passes: Arc<Mutex<Vec<CycleReport>>> = Arc::default();
    let seen = passes.clone();
    let mut on_pass = move |p: &CycleReport, _: &[mailsluice::ingest::RefusedFolder]| {
        seen.lock().unwrap().push(*p)
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let ctl = IdleCtl {
        stop: stop_rx,
        on_pass: &mut on_pass,
        sessions: Arc::new(tokio::sync::Semaphore::new(1)),
        permit: None,
        // Long enough that IDLE is never re-issued on the timer while recording.
        reissue: Duration::from_secs(3600),
    };
    let session = run_session(&r.store, &r.connector, &r.source, &cred, None, Some(ctl));
    let (recorder, dovecot) = (&r.recorder, &r.dovecot);
    let driver = async {
        wait_for_async(
            "the client to wait in IDLE",
            Duration::from_secs(10),
            || (recorder.idling() >= 1).then_some(()),
            || dovecot.log(),
        )
        .await;
        dovecot.seed(ALICE, &[message(3)]);
        wait_for_async(
            "the new message to be collected and IDLE entered again",
            Duration::from_secs(10),
            || (recorder.idling() >= 2).then_some(()),
            || dovecot.log(),
        )
        .await;
        stop_tx.send(true).unwrap();
    };
    let (result, ()) = r.runtime.block_on(async { tokio::join!(session, driver) });
    result.unwrap_or_else(|e| panic!("session failed: {e}"));
    r.idle = true;
    let passes: Vec<u64> = passes.lock().unwrap().iter().map(|p| p.stored).collect();
    assert_eq!(passes, [2, 1]);
    r.take(
        "One session: INBOX holds t1 and t2, both stored; then IDLE. While the client idles\n\
         t3 arrives: the server reports EXISTS, the client ends IDLE with DONE, fetches and\n\
         stores t3, and idles again. Then it is asked to stop: DONE, LOGOUT.",
        1,
    );
    r.write(
        "dovecot-imap-idle.txt",
        "An IDLE session (idle = true, poll_interval_secs = 3600): new mail reported while\n\
         idling is collected over the same connection.",
    );
}

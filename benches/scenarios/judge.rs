//! Judges what a contender wrote against what was seeded.
//!
//! Every seeded message has a unique Message-ID, so each output file is matched to the
//! message it stands for by that header, and then compared by sha256 with the seeded bytes:
//!
//! - **missing**: a seeded message with no file at all;
//! - **duplicated**: files beyond the first for one message;
//! - **altered**: a seeded message none of whose files is byte-identical to it (a file whose
//!   Message-ID is not a seeded one counts here too, under `unidentified`).
//!
//! Altered files are then compared once more after the contender's known, harmless rewrites
//! are undone on both sides (mbsync's `X-TUID` line, getmail's LF line endings, ...), to tell
//! "changed the bytes" from "lost or garbled content".

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The seeded messages, indexed by Message-ID.
pub struct Expected {
    messages: Vec<Vec<u8>>,
    hashes: Vec<[u8; 32]>,
    by_id: HashMap<Vec<u8>, usize>,
}

impl Expected {
    pub fn new(messages: Vec<Vec<u8>>) -> Expected {
        let hashes = messages.iter().map(|m| Sha256::digest(m).into()).collect();
        let mut by_id = HashMap::with_capacity(messages.len());
        for (i, m) in messages.iter().enumerate() {
            let id = message_id(m).expect("every corpus message has a Message-ID");
            assert!(
                by_id.insert(id, i).is_none(),
                "corpus Message-IDs are unique"
            );
        }
        Expected {
            messages,
            hashes,
            by_id,
        }
    }

    pub fn len(&self) -> usize {
        self.messages.len()
    }
}

/// Rewrites a contender is known to make, undone before the second comparison.
#[derive(Clone, Copy, Debug, Default)]
pub struct Normalize {
    /// Header fields the contender adds (none of them occurs in the corpus).
    pub added_headers: &'static [&'static str],
    /// Compare with CRLF turned into LF on both sides.
    pub line_endings: bool,
}

impl Normalize {
    pub fn is_identity(&self) -> bool {
        self.added_headers.is_empty() && !self.line_endings
    }

    /// The header fields removed, for the report.
    pub fn describe_headers(&self) -> String {
        self.added_headers.join(", ")
    }

    fn apply(&self, raw: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(raw.len());
        let mut in_header = true;
        let mut skipping = false;
        for line in raw.split_inclusive(|&b| b == b'\n') {
            if in_header {
                if line == b"\r\n" || line == b"\n" {
                    in_header = false;
                } else if skipping && matches!(line.first(), Some(b' ' | b'\t')) {
                    // A folded continuation of a removed field.
                    continue;
                } else {
                    skipping = self
                        .added_headers
                        .iter()
                        .any(|name| header_name_is(line, name.as_bytes()));
                    if skipping {
                        continue;
                    }
                }
            }
            if self.line_endings && line.ends_with(b"\r\n") {
                out.extend_from_slice(&line[..line.len() - 2]);
                out.push(b'\n');
            } else {
                out.extend_from_slice(line);
            }
        }
        out
    }
}

/// The verdict on one contender's output.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Judgement {
    pub seeded: usize,
    /// Message files the contender wrote.
    pub files: usize,
    /// Seeded messages with at least one byte-identical file.
    pub exact: usize,
    pub missing: usize,
    pub duplicated: usize,
    pub altered: usize,
    /// Of the altered ones: equal to the seeded message once the added header fields are
    /// removed (nothing else undone).
    pub equal_without_added_headers: usize,
    /// Of the altered ones: equal to the seeded message after all of [`Normalize`].
    pub equal_after_normalizing: usize,
    /// Files whose Message-ID is no seeded message's (counted in `altered` as well).
    pub unidentified: usize,
}

impl Judgement {
    /// Every message once, byte for byte.
    pub fn perfect(&self) -> bool {
        self.exact == self.seeded
            && self.missing == 0
            && self.duplicated == 0
            && self.altered == 0
            && self.files == self.seeded
    }
}

/// Judges the message files `files` against `expected`.
pub fn judge(expected: &Expected, files: &[PathBuf], normalize: Normalize) -> Judgement {
    let mut copies: Vec<Vec<usize>> = vec![Vec::new(); expected.len()];
    let mut unidentified = 0;
    let mut exact_file = vec![false; files.len()];
    for (f, path) in files.iter().enumerate() {
        let bytes = read(path);
        let Some(i) = message_id(&bytes).and_then(|id| expected.by_id.get(&id).copied()) else {
            unidentified += 1;
            continue;
        };
        exact_file[f] = <[u8; 32]>::from(Sha256::digest(&bytes)) == expected.hashes[i];
        copies[i].push(f);
    }
    let mut j = Judgement {
        seeded: expected.len(),
        files: files.len(),
        unidentified,
        altered: unidentified,
        ..Judgement::default()
    };
    for (i, got) in copies.iter().enumerate() {
        match got.len() {
            0 => j.missing += 1,
            n => j.duplicated += n - 1,
        }
        if got.is_empty() {
            continue;
        }
        if got.iter().any(|&f| exact_file[f]) {
            j.exact += 1;
            continue;
        }
        j.altered += 1;
        if normalize.is_identity() {
            continue;
        }
        let seeded = &expected.messages[i];
        let copies: Vec<Vec<u8>> = got.iter().map(|&f| read(&files[f])).collect();
        let headers_only = Normalize {
            line_endings: false,
            ..normalize
        };
        if !normalize.added_headers.is_empty()
            && copies.iter().any(|c| headers_only.apply(c) == *seeded)
        {
            j.equal_without_added_headers += 1;
        }
        let want = normalize.apply(seeded);
        if copies.iter().any(|c| normalize.apply(c) == want) {
            j.equal_after_normalizing += 1;
        }
    }
    j
}

/// Message files under `root`: every file in a directory named `cur` or `new` (Maildirs),
/// sorted.
pub fn maildir_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    walk(root, &mut |path| {
        let parent = path.parent().and_then(Path::file_name);
        if parent.is_some_and(|p| p == "cur" || p == "new") {
            out.push(path.to_path_buf());
        }
    });
    out.sort();
    out
}

/// Every file directly in `dir`, sorted.
pub fn flat_files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn walk(dir: &Path, visit: &mut dyn FnMut(&Path)) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => walk(&path, visit),
            Ok(t) if t.is_file() => visit(&path),
            _ => {}
        }
    }
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The value of the first Message-ID field of the header, trimmed.
fn message_id(raw: &[u8]) -> Option<Vec<u8>> {
    for line in raw.split_inclusive(|&b| b == b'\n') {
        if line == b"\r\n" || line == b"\n" {
            return None;
        }
        if header_name_is(line, b"message-id") {
            let value = &line[b"message-id:".len()..];
            return Some(value.trim_ascii().to_vec());
        }
    }
    None
}

/// Whether the header line `line` is the field `name` (case-insensitive).
fn header_name_is(line: &[u8], name: &[u8]) -> bool {
    line.len() > name.len()
        && line[name.len()] == b':'
        && line[..name.len()].eq_ignore_ascii_case(name)
}

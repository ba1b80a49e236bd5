//! Tagged IMAP commands a collector sends, and the encodings their arguments need (quoted
//! strings, modified UTF-7 mailbox names, UID sets), plus LIST pattern matching.

/// Builds tagged commands. Tags are `A0001`, `A0002`, ...
#[derive(Debug, Default)]
pub struct Commands {
    next: u32,
}

/// A command ready to write, with the tag whose completion ends it.
#[derive(Clone, PartialEq, Eq)]
pub struct Command {
    pub tag: String,
    pub bytes: Vec<u8>,
}

/// The bytes may carry a password or a token (LOGIN, AUTHENTICATE with SASL-IR): only the
/// tag and the command's name are shown.
impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = self
            .bytes
            .split(|b| *b == b' ')
            .nth(1)
            .map(String::from_utf8_lossy)
            .unwrap_or_default();
        f.debug_struct("Command")
            .field("tag", &self.tag)
            .field("name", &name.trim_end())
            .finish_non_exhaustive()
    }
}

impl Commands {
    fn tagged(&mut self, body: &str) -> Command {
        self.next += 1;
        let tag = format!("A{:04}", self.next);
        Command {
            bytes: format!("{tag} {body}\r\n").into_bytes(),
            tag,
        }
    }

    pub fn capability(&mut self) -> Command {
        self.tagged("CAPABILITY")
    }

    pub fn starttls(&mut self) -> Command {
        self.tagged("STARTTLS")
    }

    /// `AUTHENTICATE <mech> [<initial response>]`. The initial response goes on the line
    /// only when the server advertised SASL-IR; otherwise the caller sends it after `+`.
    pub fn authenticate(&mut self, mechanism: &str, initial: Option<&str>) -> Command {
        match initial {
            Some(ir) => self.tagged(&format!("AUTHENTICATE {mechanism} {ir}")),
            None => self.tagged(&format!("AUTHENTICATE {mechanism}")),
        }
    }

    /// `LOGIN user password`, both as quoted strings. Returns `None` when a value cannot be
    /// sent quoted (CR, LF or NUL), in which case the caller uses AUTHENTICATE PLAIN.
    pub fn login(&mut self, user: &str, password: &str) -> Option<Command> {
        let u = quoted(user)?;
        let p = quoted(password)?;
        Some(self.tagged(&format!("LOGIN {u} {p}")))
    }

    pub fn select(&mut self, mailbox: &str, read_only: bool) -> Command {
        let verb = if read_only { "EXAMINE" } else { "SELECT" };
        self.tagged(&format!("{verb} {}", mailbox_arg(mailbox)))
    }

    /// `UID FETCH <from>:<to> (UID RFC822.SIZE INTERNALDATE BODY.PEEK[])`; `to = None` is `*`.
    pub fn uid_fetch_bodies(&mut self, from: u32, to: Option<u32>) -> Command {
        let to = to.map_or_else(|| "*".to_string(), |t| t.to_string());
        self.tagged(&format!(
            "UID FETCH {from}:{to} (UID RFC822.SIZE INTERNALDATE BODY.PEEK[])"
        ))
    }

    /// `UID FETCH <from>:<to> (UID RFC822.SIZE)` (`to = None` is `*`): the messages to
    /// collect and their sizes.
    pub fn uid_fetch_sizes(&mut self, from: u32, to: Option<u32>) -> Command {
        let to = to.map_or_else(|| "*".to_string(), |t| t.to_string());
        self.tagged(&format!("UID FETCH {from}:{to} (UID RFC822.SIZE)"))
    }

    /// `UID FETCH <set> (...)` for an explicit, comma-separated UID set.
    pub fn uid_fetch_set(&mut self, uids: &[u32]) -> Command {
        let set = uid_set(uids);
        self.tagged(&format!(
            "UID FETCH {set} (UID RFC822.SIZE INTERNALDATE BODY.PEEK[])"
        ))
    }

    /// `UID FETCH * (UID BODY.PEEK[HEADER])`: the newest message's header, for diagnosis.
    pub fn uid_fetch_header_star(&mut self) -> Command {
        self.tagged("UID FETCH * (UID BODY.PEEK[HEADER])")
    }

    /// `UID STORE <set> +FLAGS.SILENT (<flag>)`.
    pub fn uid_store_add_flag(&mut self, uids: &[u32], flag: &str) -> Command {
        self.tagged(&format!(
            "UID STORE {} +FLAGS.SILENT ({flag})",
            uid_set(uids)
        ))
    }

    /// `UID EXPUNGE <set>` (UIDPLUS): expunges only these UIDs, never messages that other
    /// clients flagged \Deleted.
    pub fn uid_expunge(&mut self, uids: &[u32]) -> Command {
        self.tagged(&format!("UID EXPUNGE {}", uid_set(uids)))
    }

    /// `UID MOVE <set> <mailbox>` (RFC 6851).
    pub fn uid_move(&mut self, uids: &[u32], mailbox: &str) -> Command {
        self.tagged(&format!(
            "UID MOVE {} {}",
            uid_set(uids),
            mailbox_arg(mailbox)
        ))
    }

    /// `CREATE <mailbox>`.
    pub fn create(&mut self, mailbox: &str) -> Command {
        self.tagged(&format!("CREATE {}", mailbox_arg(mailbox)))
    }

    /// `UID COPY <set> <mailbox>`.
    pub fn uid_copy(&mut self, uids: &[u32], mailbox: &str) -> Command {
        self.tagged(&format!(
            "UID COPY {} {}",
            uid_set(uids),
            mailbox_arg(mailbox)
        ))
    }

    pub fn logout(&mut self) -> Command {
        self.tagged("LOGOUT")
    }

    pub fn noop(&mut self) -> Command {
        self.tagged("NOOP")
    }

    /// `IDLE` (RFC 2177); ended by [`IDLE_DONE`].
    pub fn idle(&mut self) -> Command {
        self.tagged("IDLE")
    }

    /// `LIST "" <pattern>`: the folders matching `pattern` (`*` and `%` wildcards).
    pub fn list(&mut self, pattern: &str) -> Command {
        let arg = quoted(&encode_mutf7(pattern)).unwrap_or_else(|| "\"\"".to_string());
        self.tagged(&format!("LIST \"\" {arg}"))
    }
}

/// Ends an IDLE command.
pub const IDLE_DONE: &[u8] = b"DONE\r\n";

/// Whether a `folders` entry is a LIST pattern rather than one folder's name.
pub fn is_pattern(folder: &str) -> bool {
    folder.contains('*') || folder.contains('%')
}

/// Decodes a modified UTF-7 mailbox name (RFC 3501 §5.1.3). Bytes that are not valid
/// modified UTF-7 are kept as they are (lossy UTF-8), so a broken name still shows.
pub fn decode_mutf7(raw: &[u8]) -> String {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD_NO_PAD;
    let mut out = String::new();
    let mut i = 0;
    while i < raw.len() {
        if raw[i] != b'&' {
            let start = i;
            while i < raw.len() && raw[i] != b'&' {
                i += 1;
            }
            out.push_str(&String::from_utf8_lossy(&raw[start..i]));
            continue;
        }
        let Some(end) = raw[i + 1..]
            .iter()
            .position(|b| *b == b'-')
            .map(|p| i + 1 + p)
        else {
            out.push_str(&String::from_utf8_lossy(&raw[i..]));
            break;
        };
        let inner = &raw[i + 1..end];
        if inner.is_empty() {
            out.push('&');
        } else {
            let b64: Vec<u8> = inner
                .iter()
                .map(|b| if *b == b',' { b'/' } else { *b })
                .collect();
            let decoded = STANDARD_NO_PAD.decode(&b64).ok().and_then(|bytes| {
                if bytes.len() % 2 != 0 {
                    return None;
                }
                let units: Vec<u16> = bytes
                    .chunks(2)
                    .map(|c| u16::from_be_bytes([c[0], c[1]]))
                    .collect();
                String::from_utf16(&units).ok()
            });
            match decoded {
                Some(text) => out.push_str(&text),
                None => out.push_str(&String::from_utf8_lossy(&raw[i..=end])),
            }
        }
        i = end + 1;
    }
    out
}

/// Whether `name` matches a LIST `pattern` (`*`: anything; `%`: anything but the hierarchy
/// delimiter). Servers match for us; this re-checks their answer and decides `INBOX`'s case.
pub fn pattern_matches(pattern: &str, name: &str, delimiter: Option<char>) -> bool {
    fn go(p: &[char], n: &[char], delim: Option<char>) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some('*') => (0..=n.len()).any(|k| go(&p[1..], &n[k..], delim)),
            Some('%') => (0..=n.len())
                .take_while(|k| *k == 0 || Some(n[k - 1]) != delim)
                .any(|k| go(&p[1..], &n[k..], delim)),
            Some(c) => n.first() == Some(c) && go(&p[1..], &n[1..], delim),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    go(&p, &n, delimiter)
}

/// Compresses sorted UIDs into ranges: `1:3,7,9:10`.
pub fn uid_set(uids: &[u32]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < uids.len() {
        let start = uids[i];
        let mut end = start;
        while i + 1 < uids.len() && uids[i + 1] == end + 1 {
            i += 1;
            end = uids[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}:{end}"));
        }
        i += 1;
    }
    out
}

fn quoted(s: &str) -> Option<String> {
    if s.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        return None;
    }
    Some(format!(
        "\"{}\"",
        s.replace('\\', "\\\\").replace('"', "\\\"")
    ))
}

/// A mailbox name as a command argument: modified UTF-7 (RFC 3501 §5.1.3), quoted.
pub fn mailbox_arg(name: &str) -> String {
    if name.eq_ignore_ascii_case("INBOX") {
        return "INBOX".to_string();
    }
    quoted(&encode_mutf7(name)).unwrap_or_else(|| "\"\"".to_string())
}

/// Modified UTF-7 for mailbox names: printable ASCII stays (with `&` as `&-`), other text
/// becomes `&<modified base64 of UTF-16BE>-`.
pub fn encode_mutf7(name: &str) -> String {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD_NO_PAD;
    let mut out = String::new();
    let mut pending: Vec<u16> = Vec::new();
    let flush = |pending: &mut Vec<u16>, out: &mut String| {
        if pending.is_empty() {
            return;
        }
        let bytes: Vec<u8> = pending.iter().flat_map(|u| u.to_be_bytes()).collect();
        out.push('&');
        out.push_str(&STANDARD_NO_PAD.encode(bytes).replace('/', ","));
        out.push('-');
        pending.clear();
    };
    for ch in name.chars() {
        if (' '..='~').contains(&ch) {
            flush(&mut pending, &mut out);
            if ch == '&' {
                out.push_str("&-");
            } else {
                out.push(ch);
            }
        } else {
            let mut buf = [0u16; 2];
            pending.extend_from_slice(ch.encode_utf16(&mut buf));
        }
    }
    flush(&mut pending, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::imap::{ServerResponse, parse_response};

    #[test]
    fn commands_are_tagged_and_quoted() {
        let mut c = Commands::default();
        assert_eq!(c.capability().bytes, b"A0001 CAPABILITY\r\n");
        assert_eq!(
            c.login("bob", "p\"w\\").unwrap().bytes,
            b"A0002 LOGIN \"bob\" \"p\\\"w\\\\\"\r\n"
        );
        assert!(c.login("bob", "a\r\nb").is_none());
        assert_eq!(
            c.uid_fetch_bodies(5, None).bytes,
            b"A0003 UID FETCH 5:* (UID RFC822.SIZE INTERNALDATE BODY.PEEK[])\r\n"
        );
        assert_eq!(c.select("Support/Ärger", false).tag, "A0004");
    }

    #[test]
    fn list_responses_and_patterns() {
        let r =
            parse_response(b"* LIST (\\HasNoChildren) \"/\" \"Support/&AOk-quipe\"\r\n").unwrap();
        assert_eq!(
            r,
            ServerResponse::List {
                name: "Support/\u{e9}quipe".into(),
                delimiter: Some('/'),
                noselect: false
            }
        );
        let r = parse_response(b"* LIST (\\Noselect \\HasChildren) \".\" Support\r\n").unwrap();
        assert!(matches!(r, ServerResponse::List { noselect: true, .. }));
        let r = parse_response(b"* LIST () \"/\" INBOX\r\n").unwrap();
        assert!(matches!(r, ServerResponse::List { ref name, .. } if name == "INBOX"));
        for name in ["Support/\u{e9}quipe", "A&B", "plain", "\u{65e5}\u{672c}/x"] {
            assert_eq!(decode_mutf7(encode_mutf7(name).as_bytes()), name);
        }
        assert_eq!(decode_mutf7(b"bad&zz"), "bad&zz");
        assert!(pattern_matches("Support/*", "Support/a/b", Some('/')));
        assert!(!pattern_matches("Support/%", "Support/a/b", Some('/')));
        assert!(pattern_matches("Support/%", "Support/a", Some('/')));
        assert!(!pattern_matches("Support/*", "Support", Some('/')));
        assert!(is_pattern("A/*") && is_pattern("%") && !is_pattern("INBOX"));
        let mut c = Commands::default();
        assert_eq!(
            c.list("Support/*").bytes,
            b"A0001 LIST \"\" \"Support/*\"\r\n"
        );
        assert_eq!(c.idle().bytes, b"A0002 IDLE\r\n");
    }

    #[test]
    fn uid_sets_and_mutf7() {
        assert_eq!(uid_set(&[1, 2, 3, 7, 9, 10]), "1:3,7,9:10");
        assert_eq!(uid_set(&[4]), "4");
        assert_eq!(encode_mutf7("Entwürfe"), "Entw&APw-rfe");
        assert_eq!(encode_mutf7("A&B"), "A&-B");
        assert_eq!(mailbox_arg("inbox"), "INBOX");
    }

    /// Every command a collector sends, byte for byte, with the tag counting up by one.
    #[test]
    fn every_command_has_its_exact_bytes() {
        let mut c = Commands::default();
        let sent: Vec<Vec<u8>> = vec![
            c.capability().bytes,
            c.starttls().bytes,
            c.authenticate("XOAUTH2", Some("dXNlcg==")).bytes,
            c.authenticate("PLAIN", None).bytes,
            c.login("bob", "pw").unwrap().bytes,
            c.select("INBOX", false).bytes,
            c.select("Archiv", true).bytes,
            c.uid_fetch_bodies(5, Some(9)).bytes,
            c.uid_fetch_sizes(1, None).bytes,
            c.uid_fetch_sizes(3, Some(8)).bytes,
            c.uid_fetch_set(&[1, 2, 3, 7]).bytes,
            c.uid_fetch_header_star().bytes,
            c.uid_store_add_flag(&[4, 5], "\\Seen").bytes,
            c.uid_expunge(&[4, 6]).bytes,
            c.uid_move(&[4], "Done & Dusted").bytes,
            c.create("Entwürfe").bytes,
            c.uid_copy(&[9, 10], "inbox").bytes,
            c.logout().bytes,
            c.noop().bytes,
            c.idle().bytes,
            c.list("%").bytes,
        ];
        let expected = [
            "A0001 CAPABILITY",
            "A0002 STARTTLS",
            "A0003 AUTHENTICATE XOAUTH2 dXNlcg==",
            "A0004 AUTHENTICATE PLAIN",
            "A0005 LOGIN \"bob\" \"pw\"",
            "A0006 SELECT INBOX",
            "A0007 EXAMINE \"Archiv\"",
            "A0008 UID FETCH 5:9 (UID RFC822.SIZE INTERNALDATE BODY.PEEK[])",
            "A0009 UID FETCH 1:* (UID RFC822.SIZE)",
            "A0010 UID FETCH 3:8 (UID RFC822.SIZE)",
            "A0011 UID FETCH 1:3,7 (UID RFC822.SIZE INTERNALDATE BODY.PEEK[])",
            "A0012 UID FETCH * (UID BODY.PEEK[HEADER])",
            "A0013 UID STORE 4:5 +FLAGS.SILENT (\\Seen)",
            "A0014 UID EXPUNGE 4,6",
            "A0015 UID MOVE 4 \"Done &- Dusted\"",
            "A0016 CREATE \"Entw&APw-rfe\"",
            "A0017 UID COPY 9:10 INBOX",
            "A0018 LOGOUT",
            "A0019 NOOP",
            "A0020 IDLE",
            "A0021 LIST \"\" \"%\"",
        ];
        assert_eq!(sent.len(), expected.len());
        for (got, want) in sent.iter().zip(expected) {
            assert_eq!(String::from_utf8_lossy(got), format!("{want}\r\n"));
        }
        assert_eq!(IDLE_DONE, b"DONE\r\n");
    }

    #[test]
    fn tags_are_four_digits_and_grow_past_them() {
        let mut c = Commands::default();
        let tags: Vec<String> = (0..10_000).map(|_| c.noop().tag).collect();
        assert_eq!(tags[0], "A0001");
        assert_eq!(tags[8], "A0009");
        assert_eq!(tags[9_998], "A9999");
        assert_eq!(tags[9_999], "A10000");
        let cmd = c.noop();
        assert!(cmd.bytes.starts_with(format!("{} ", cmd.tag).as_bytes()));
    }

    #[test]
    fn a_commands_debug_shows_its_tag_and_name_but_never_its_arguments() {
        let mut c = Commands::default();
        let login = c.login("bob", "hunter2").unwrap();
        let shown = format!("{login:?}");
        assert_eq!(shown, "Command { tag: \"A0001\", name: \"LOGIN\", .. }");
        let auth = c.authenticate("PLAIN", Some("c2VjcmV0"));
        let shown = format!("{auth:?}");
        assert_eq!(
            shown,
            "Command { tag: \"A0002\", name: \"AUTHENTICATE\", .. }"
        );
        // A command without arguments: the name without its CRLF.
        assert_eq!(
            format!("{:?}", c.logout()),
            "Command { tag: \"A0003\", name: \"LOGOUT\", .. }"
        );
        let nameless = Command {
            tag: "x".into(),
            bytes: b"x".to_vec(),
        };
        assert_eq!(
            format!("{nameless:?}"),
            "Command { tag: \"x\", name: \"\", .. }"
        );
    }

    #[test]
    fn login_refuses_each_byte_a_quoted_string_cannot_carry() {
        let mut c = Commands::default();
        for bad in ["a\rb", "a\nb", "a\0b"] {
            assert!(c.login(bad, "pw").is_none(), "user {bad:?}");
            assert!(c.login("bob", bad).is_none(), "password {bad:?}");
        }
        // Refused logins use no tag.
        assert_eq!(
            c.login("b\\o\"b", "").unwrap().bytes,
            b"A0001 LOGIN \"b\\\\o\\\"b\" \"\"\r\n"
        );
    }

    #[test]
    fn mailbox_arguments_are_quoted_modified_utf7_except_inbox() {
        assert_eq!(mailbox_arg("INBOX"), "INBOX");
        assert_eq!(mailbox_arg("InBox"), "INBOX");
        assert_eq!(mailbox_arg("INBOX/Sub"), "\"INBOX/Sub\"");
        assert_eq!(mailbox_arg("a \"b\" \\c"), "\"a \\\"b\\\" \\\\c\"");
        assert_eq!(mailbox_arg("Ärger"), "\"&AMQ-rger\"");
        // CR and LF are not printable ASCII: encoded, they cannot end the command line.
        assert_eq!(mailbox_arg("a\r\nb"), "\"a&AA0ACg-b\"");
        let mut c = Commands::default();
        assert_eq!(c.list("a\nb").bytes, b"A0001 LIST \"\" \"a&AAo-b\"\r\n");
        assert_eq!(
            c.list("日本/*").bytes,
            "A0002 LIST \"\" \"&ZeVnLA-/*\"\r\n".as_bytes()
        );
    }

    #[test]
    fn modified_utf7_encodes_runs_and_keeps_printable_ascii() {
        assert_eq!(encode_mutf7(""), "");
        assert_eq!(encode_mutf7(" ~"), " ~");
        assert_eq!(encode_mutf7("&"), "&-");
        assert_eq!(encode_mutf7("日本"), "&ZeVnLA-");
        assert_eq!(encode_mutf7("日x本"), "&ZeU-x&Zyw-");
        // Base64's '/' becomes ',' (U+03FF is 0x03FF: 000000 111111 11..).
        assert_eq!(encode_mutf7("\u{3ff}"), "&A,8-");
        // Outside the BMP: a surrogate pair.
        assert_eq!(encode_mutf7("\u{1F600}"), "&2D3eAA-");
        // Control characters are not printable ASCII.
        assert_eq!(encode_mutf7("\t"), "&AAk-");
    }

    #[test]
    fn modified_utf7_decodes_and_keeps_what_is_not_valid() {
        assert_eq!(decode_mutf7(b""), "");
        assert_eq!(decode_mutf7(b"plain"), "plain");
        assert_eq!(decode_mutf7(b"&-"), "&");
        assert_eq!(decode_mutf7(b"a&-b&-c"), "a&b&c");
        assert_eq!(
            decode_mutf7(b"x&ZeVnLA-y&AOk-z"),
            "x\u{65e5}\u{672c}y\u{e9}z"
        );
        assert_eq!(decode_mutf7(b"&A,8-"), "\u{3ff}");
        assert_eq!(decode_mutf7(b"&2D3eAA-"), "\u{1F600}");
        // Unterminated: the rest as it is.
        assert_eq!(decode_mutf7(b"ab&ZeVnLA"), "ab&ZeVnLA");
        // An odd number of bytes, a lone surrogate, bad base64: kept as they are, and what
        // follows still decodes.
        assert_eq!(decode_mutf7(b"&AA-x&AOk-"), "&AA-x\u{e9}");
        assert_eq!(decode_mutf7(b"a&2AA-b"), "a&2AA-b");
        assert_eq!(decode_mutf7(b"a&!!-&-"), "a&!!-&");
        // Invalid UTF-8 outside a run shows lossily.
        assert_eq!(decode_mutf7(b"a\xffb"), "a\u{fffd}b");
    }

    #[test]
    fn list_patterns_match_like_the_server() {
        assert!(pattern_matches("", "", Some('/')));
        assert!(!pattern_matches("", "a", Some('/')));
        assert!(!pattern_matches("a", "", Some('/')));
        assert!(pattern_matches("*", "", Some('/')));
        assert!(pattern_matches("%", "", Some('/')));
        assert!(pattern_matches("*", "a/b/c", Some('/')));
        assert!(pattern_matches("a*c", "abbbc", Some('/')));
        assert!(!pattern_matches("a*c", "abbbd", Some('/')));
        assert!(!pattern_matches("abc", "xbc", Some('/')));
        assert!(!pattern_matches("abc", "abx", Some('/')));
        assert!(pattern_matches("%", "Sent", Some('/')));
        assert!(!pattern_matches("%", "a/b", Some('/')));
        assert!(pattern_matches("%/b", "a/b", Some('/')));
        assert!(pattern_matches("a%", "a", Some('/')));
        assert!(pattern_matches("%b", "ab", Some('/')));
        assert!(pattern_matches("%.b", "a.b", Some('/')));
        // Without a hierarchy delimiter `%` is `*`.
        assert!(pattern_matches("%", "a/b", None));
        assert!(pattern_matches("a/%", "a/b.c", Some('/')));
        assert!(!pattern_matches("a/%", "a/b.c", Some('.')));
        assert!(!pattern_matches("Support/%", "Support", Some('/')));
    }

    #[test]
    fn is_pattern_needs_one_wildcard_of_either_kind() {
        assert!(is_pattern("*"));
        assert!(is_pattern("a%"));
        assert!(is_pattern("*%"));
        assert!(!is_pattern("Sent"));
        assert!(!is_pattern(""));
    }

    #[test]
    fn uid_sets_compress_runs_wherever_they_are() {
        assert_eq!(uid_set(&[]), "");
        assert_eq!(uid_set(&[1, 2]), "1:2");
        assert_eq!(uid_set(&[1, 3]), "1,3");
        assert_eq!(uid_set(&[1, 3, 4]), "1,3:4");
        assert_eq!(uid_set(&[1, 2, 4]), "1:2,4");
        assert_eq!(uid_set(&[5, 6, 7, 8]), "5:8");
        assert_eq!(uid_set(&[2, 4, 6]), "2,4,6");
        assert_eq!(uid_set(&[10, 11, 13, 14, 20]), "10:11,13:14,20");
        // Not sorted: each break in the run starts a new member, nothing is lost.
        assert_eq!(uid_set(&[3, 1, 2]), "3,1:2");
        assert_eq!(uid_set(&[7, 7]), "7,7");
        assert_eq!(uid_set(&[u32::MAX - 1, u32::MAX]), "4294967294:4294967295");
    }
}

//! How a session signs in ([`Login`]), and the SASL initial responses for the mechanisms
//! mailsluice speaks: XOAUTH2 (Microsoft, Google), OAUTHBEARER (RFC 7628) and PLAIN
//! (RFC 4616). Pure functions returning base64 text; IMAP and POP3 both use them.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::secret::Secret;

/// How to sign in, for IMAP and POP3 alike. Secrets stay behind [`Secret`], so `Debug` of a
/// `Login` shows no password or token.
#[derive(Debug)]
pub enum Login<'a> {
    /// IMAP: `AUTHENTICATE PLAIN` when offered, else `LOGIN`; POP3: `USER`/`PASS`.
    Password {
        user: &'a str,
        password: &'a Secret,
    },
    XOAuth2 {
        user: &'a str,
        token: &'a Secret,
    },
    /// RFC 7628; the host and port go into the client response.
    OAuthBearer {
        user: &'a str,
        token: &'a Secret,
        host: &'a str,
        port: u16,
    },
}

impl Login<'_> {
    /// Whether an error challenge is answered the OAUTHBEARER way ([`error_challenge_reply`]).
    pub fn is_oauthbearer(&self) -> bool {
        matches!(self, Login::OAuthBearer { .. })
    }
}

/// `user=<user>^Aauth=Bearer <token>^A^A`, base64 (PROTOCOLS §1.7).
pub fn xoauth2(user: &str, token: &Secret) -> Secret {
    let raw = format!("user={user}\x01auth=Bearer {}\x01\x01", token.expose());
    Secret::new(STANDARD.encode(raw))
}

/// RFC 7628 client response: `n,a=<user>,^Ahost=..^Aport=..^Aauth=Bearer <token>^A^A`.
/// Dovecot 2.3 requires the authzid (`a=`), so it is always sent.
pub fn oauthbearer(user: &str, host: &str, port: u16, token: &Secret) -> Secret {
    let authzid = user.replace('=', "=3D").replace(',', "=2C");
    let raw = format!(
        "n,a={authzid},\x01host={host}\x01port={port}\x01auth=Bearer {}\x01\x01",
        token.expose()
    );
    Secret::new(STANDARD.encode(raw))
}

/// RFC 4616 PLAIN: `\0user\0password`.
pub fn plain(user: &str, password: &Secret) -> Secret {
    let raw = format!("\0{user}\0{}", password.expose());
    Secret::new(STANDARD.encode(raw))
}

/// What a client sends to abort after an error challenge: XOAUTH2 expects an empty line,
/// OAUTHBEARER a single %x01 (`AQ==`). Answering instead of waiting is what keeps a
/// rejected token from hanging until the read timeout (RFC 7628 §3.2.3, PROTOCOLS §2.4).
pub fn error_challenge_reply(oauthbearer: bool) -> &'static str {
    if oauthbearer { "AQ==" } else { "" }
}

/// Decodes a server challenge (base64) for an error message: the JSON that Gmail and
/// Dovecot send on a rejected token, e.g. `{"status":"401","schemes":"bearer"}`.
/// Returns the decoded text when it is printable, the raw challenge otherwise.
pub fn describe_challenge(challenge: &str) -> String {
    match STANDARD.decode(challenge.trim()) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(text) if !text.chars().any(|c| c.is_control() && c != '\n') => text,
            _ => challenge.trim().to_string(),
        },
        Err(_) => challenge.trim().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xoauth2_matches_microsoft_test_vector() {
        let s = xoauth2(
            "test@contoso.onmicrosoft.com",
            &Secret::new("EwBAAl3BAAUFFpUAo7J3Ve0bjLBWZWCclRC3EoAA"),
        );
        assert_eq!(
            s.expose(),
            "dXNlcj10ZXN0QGNvbnRvc28ub25taWNyb3NvZnQuY29tAWF1dGg9QmVhcmVyIEV3QkFBbDNCQUFVRkZwVUFvN0ozVmUwYmpMQldaV0NjbFJDM0VvQUEBAQ=="
        );
    }

    #[test]
    fn oauthbearer_matches_rfc7628_example() {
        let s = oauthbearer(
            "user@example.com",
            "server.example.com",
            143,
            &Secret::new("vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg=="),
        );
        assert_eq!(
            s.expose(),
            "bixhPXVzZXJAZXhhbXBsZS5jb20sAWhvc3Q9c2VydmVyLmV4YW1wbGUuY29tAXBvcnQ9MTQzAWF1dGg9QmVhcmVyIHZGOWRmdDRxbVRjMk52YjNSbGNrQmhiSFJoZG1semRHRXVZMjl0Q2c9PQEB"
        );
    }

    #[test]
    fn oauthbearer_escapes_authzid() {
        let s = oauthbearer("a,b=c", "h", 1, &Secret::new("t"));
        let raw = STANDARD.decode(s.expose()).unwrap();
        assert!(raw.starts_with(b"n,a=a=2Cb=3Dc,"));
    }

    #[test]
    fn plain_layout() {
        let s = plain("bob", &Secret::new("pw"));
        assert_eq!(STANDARD.decode(s.expose()).unwrap(), b"\0bob\0pw");
    }

    #[test]
    fn challenge_is_decoded_for_errors() {
        let c = STANDARD.encode(r#"{"status":"401","schemes":"bearer","scope":"mail"}"#);
        assert!(describe_challenge(&c).contains("\"status\":\"401\""));
        assert_eq!(describe_challenge(""), "");
        assert_eq!(describe_challenge("not base64!"), "not base64!");
    }

    #[test]
    fn abort_reply_after_an_error_challenge() {
        // RFC 7628 §3.2.3: OAUTHBEARER answers with a single %x01; Google's XOAUTH2 wants an
        // empty line.
        assert_eq!(error_challenge_reply(true), "AQ==");
        assert_eq!(STANDARD.decode(error_challenge_reply(true)).unwrap(), [1]);
        assert_eq!(error_challenge_reply(false), "");
    }

    #[test]
    fn challenge_description_shows_only_printable_text() {
        let dovecot = STANDARD.encode(r#"{"status":"invalid_token"}"#);
        assert_eq!(
            describe_challenge(&format!(" {dovecot}\r\n")),
            r#"{"status":"invalid_token"}"#
        );
        // Pretty-printed JSON keeps its newlines.
        let pretty = "{\n  \"status\": \"401\"\n}";
        assert_eq!(describe_challenge(&STANDARD.encode(pretty)), pretty);
        // Control characters or bytes that are not UTF-8: the challenge as sent.
        let binary = STANDARD.encode([b'a', 1, b'b']);
        assert_eq!(describe_challenge(&binary), binary);
        let tab = STANDARD.encode("a\tb");
        assert_eq!(describe_challenge(&tab), tab);
        let latin1 = STANDARD.encode([0xe9, 0x74, 0xe9]);
        assert_eq!(describe_challenge(&format!("{latin1} ")), latin1);
    }

    #[test]
    fn xoauth2_has_no_authzid_and_ends_with_two_separators() {
        let s = xoauth2("a@b", &Secret::new("tok"));
        assert_eq!(
            STANDARD.decode(s.expose()).unwrap(),
            b"user=a@b\x01auth=Bearer tok\x01\x01"
        );
    }

    #[test]
    fn oauthbearer_layout() {
        let s = oauthbearer("u@x", "imap.example.com", 993, &Secret::new("tok"));
        assert_eq!(
            STANDARD.decode(s.expose()).unwrap(),
            b"n,a=u@x,\x01host=imap.example.com\x01port=993\x01auth=Bearer tok\x01\x01"
        );
    }
}

//! mail-parser → the parsed fields we store beside the raw bytes. The only importer of
//! `mail_parser`. Parsing never loses a message: when mail-parser cannot make sense of the
//! bytes, the caller stores them raw with the returned error as the parse-error mark.

use mail_parser::{Address, MessageParser, MimeHeaders};
use serde::{Deserialize, Serialize};

/// What we extract from a message. Strings are decoded (RFC 2047 words, charsets).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParsedFields {
    pub message_id: Option<String>,
    pub from: Vec<String>,
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub subject: Option<String>,
    /// The Date header as RFC 3339, when it parses.
    pub date: Option<String>,
    pub text_body: Option<String>,
    pub html_body: Option<String>,
    pub attachments: Vec<AttachmentInfo>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentInfo {
    pub name: Option<String>,
    pub content_type: Option<String>,
    /// Decoded size in bytes.
    pub size: u64,
}

fn addresses(a: Option<&Address<'_>>) -> Vec<String> {
    let Some(a) = a else { return Vec::new() };
    a.iter()
        .map(|addr| match (addr.name(), addr.address()) {
            (Some(name), Some(email)) => format!("{name} <{email}>"),
            (None, Some(email)) => email.to_string(),
            (Some(name), None) => name.to_string(),
            (None, None) => String::new(),
        })
        .filter(|s| !s.is_empty())
        .collect()
}

/// Parses a raw message. `Err` carries a short reason for the parse-error mark.
pub fn parse(raw: &[u8]) -> Result<ParsedFields, String> {
    let Some(msg) = MessageParser::default().parse(raw) else {
        return Err("no RFC 5322 header found".to_string());
    };
    if msg.headers().is_empty() {
        return Err("no RFC 5322 header found".to_string());
    }
    let attachments = msg
        .attachments()
        .map(|part| AttachmentInfo {
            name: part.attachment_name().map(str::to_string),
            content_type: part.content_type().map(|ct| match ct.subtype() {
                Some(sub) => format!("{}/{}", ct.ctype(), sub),
                None => ct.ctype().to_string(),
            }),
            size: part.contents().len() as u64,
        })
        .collect();
    Ok(ParsedFields {
        message_id: msg.message_id().map(str::to_string),
        from: addresses(msg.from()),
        to: addresses(msg.to()),
        cc: addresses(msg.cc()),
        subject: msg.subject().map(str::to_string),
        date: msg.date().map(|d| d.to_rfc3339()),
        text_body: msg.body_text(0).map(|t| t.into_owned()),
        // Only an HTML part the message has: mail-parser would otherwise make one up from
        // the text body (escaped, with <br>), which stores the text a second time, larger.
        html_body: msg
            .html_part(0)
            .filter(|p| matches!(p.body, mail_parser::PartType::Html(_)))
            .and_then(|_| msg.body_html(0))
            .map(|t| t.into_owned()),
        attachments,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_usual_fields() {
        let raw = b"Message-ID: <a1@example.test>\r\nFrom: =?UTF-8?Q?J=C3=B6rg?= <joerg@example.test>\r\nTo: a@example.test, b@example.test\r\nSubject: =?UTF-8?B?w5xiZXJ3ZWlzdW5n?=\r\nDate: Tue, 1 Jul 2025 10:00:00 +0200\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHallo\r\n--XX\r\nContent-Type: application/pdf; name=inv.pdf\r\nContent-Disposition: attachment; filename=inv.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n--XX--\r\n";
        let p = parse(raw).unwrap();
        assert_eq!(p.message_id.as_deref(), Some("a1@example.test"));
        assert_eq!(p.from, vec!["Jörg <joerg@example.test>"]);
        assert_eq!(p.to.len(), 2);
        assert_eq!(p.subject.as_deref(), Some("Überweisung"));
        assert_eq!(p.date.as_deref(), Some("2025-07-01T10:00:00+02:00"));
        assert_eq!(p.text_body.as_deref().map(str::trim), Some("Hallo"));
        assert_eq!(p.attachments.len(), 1);
        assert_eq!(p.attachments[0].name.as_deref(), Some("inv.pdf"));
        assert_eq!(
            p.attachments[0].content_type.as_deref(),
            Some("application/pdf")
        );
        assert_eq!(p.attachments[0].size, 5);
    }

    #[test]
    fn html_body_is_the_messages_own_html_part_only() {
        let text_only = b"From: a@example.test\r\nSubject: t\r\nContent-Type: text/plain\r\n\r\nplain <words> here\r\n";
        let p = parse(text_only).unwrap();
        assert_eq!(
            p.text_body.as_deref().map(str::trim),
            Some("plain <words> here")
        );
        assert_eq!(p.html_body, None, "no HTML made up from the text");

        let alternative = b"From: a@example.test\r\nContent-Type: multipart/alternative; boundary=B\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nhello\r\n--B\r\nContent-Type: text/html\r\n\r\n<p>hello</p>\r\n--B--\r\n";
        let p = parse(alternative).unwrap();
        assert_eq!(p.text_body.as_deref().map(str::trim), Some("hello"));
        assert_eq!(p.html_body.as_deref().map(str::trim), Some("<p>hello</p>"));

        // An HTML-only message keeps its HTML, and gets a text rendering of it.
        let html_only =
            b"From: a@example.test\r\nContent-Type: text/html\r\n\r\n<p>only <b>html</b></p>\r\n";
        let p = parse(html_only).unwrap();
        assert_eq!(
            p.html_body.as_deref().map(str::trim),
            Some("<p>only <b>html</b></p>")
        );
        assert!(
            p.text_body
                .as_deref()
                .is_some_and(|t| t.contains("only html")),
            "{:?}",
            p.text_body
        );
    }

    #[test]
    fn unparseable_input_is_an_error_not_a_panic() {
        assert!(parse(b"").is_err());
        assert!(parse(b"\r\n").is_err());
    }
}

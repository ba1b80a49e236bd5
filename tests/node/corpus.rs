//! Messages the end-to-end tests seed: CRLF line endings (what IMAP and POP3 servers send),
//! covering plain text, multipart with a binary attachment, non-ASCII headers (encoded words
//! and raw UTF-8), 8-bit junk, dot-leading lines (POP3 byte-stuffing) and one message that
//! mail-parser cannot parse; [`panics_mail_parser`] is one mail-parser panics on.

pub fn corpus(tag: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    out.push(format!(
        "Message-ID: <plain-{tag}@example.test>\r\nFrom: Alice <alice@example.test>\r\nTo: support@example.test\r\nSubject: plain {tag}\r\nDate: Mon, 3 Nov 2025 10:00:00 +0000\r\n\r\nHello.\r\n.a line starting with a dot\r\n..two dots\r\n.\r\nend\r\n"
    ).into_bytes());
    let attachment: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 251) as u8).collect();
    let b64 = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(&attachment)
    };
    let wrapped: String = b64
        .as_bytes()
        .chunks(76)
        .map(|c| format!("{}\r\n", String::from_utf8_lossy(c)))
        .collect();
    out.push(format!(
        "Message-ID: <multi-{tag}@example.test>\r\nFrom: =?UTF-8?Q?J=C3=B6rg_M=C3=BCller?= <joerg@example.test>\r\nTo: invoices@example.test\r\nSubject: =?UTF-8?B?UmVjaG51bmcgw5zDpMO2?= {tag}\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGrüße, siehe Anhang.\r\n--b1\r\nContent-Type: application/octet-stream; name=\"data.bin\"\r\nContent-Disposition: attachment; filename=\"data.bin\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{wrapped}--b1--\r\n"
    ).into_bytes());
    out.push(
        format!("Message-ID: <utf8-{tag}@example.test>\r\nFrom: Zoë <zoe@example.test>\r\nTo: 日本 <jp@example.test>\r\nSubject: Überweisung 請求書 {tag}\r\n\r\nraw UTF-8 headers\r\n")
            .into_bytes(),
    );
    let mut junk = format!(
        "Message-ID: <junk-{tag}@example.test>\r\nFrom: junk@example.test\r\nSubject: 8-bit junk {tag}\r\nContent-Type: text/plain; charset=unknown-8bit\r\n\r\n"
    )
    .into_bytes();
    junk.extend((0x80u8..=0xff).chain(b"\r\n".iter().copied()));
    junk.extend(b"\xff\xfe\xc3\x28 invalid utf-8\r\n");
    out.push(junk);
    // No header at all: mail-parser finds nothing to parse; stored raw with a mark.
    out.push(b"\r\n".to_vec());
    out.push(
        format!("Message-ID: <from-{tag}@example.test>\r\nFrom: desk@example.test\r\nSubject: mbox quoting {tag}\r\n\r\nFrom the desk of the CFO\r\n>From an earlier quote\r\n>>From deeper\r\n")
            .into_bytes(),
    );
    out.push(
        format!("Message-ID: <html-{tag}@example.test>\r\nFrom: news@example.test\r\nSubject: html {tag}\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>Hi &amp; bye</p>\r\n")
            .into_bytes(),
    );
    out
}

/// An attached message nested in a way mail-parser panics on; stored raw with a mark.
pub fn panics_mail_parser(tag: &str) -> Vec<u8> {
    format!("Message-ID: <nest-{tag}@example.test>\r\nContent-Type: multipart/mixed; boundary=o\r\n\r\n--o\r\nContent-Type: message/rfc822\r\n\r\nFrom\r\nContent-Type: message/rfc822\r\n\r\n\r\npU\r\n--o--\r\n")
        .into_bytes()
}

/// `n` small generated messages for volume tests.
pub fn many(tag: &str, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            format!(
                "Message-ID: <m{i}-{tag}@example.test>\r\nFrom: bulk@example.test\r\nSubject: bulk {i} {tag}\r\n\r\nbody {i}\r\n{}\r\n",
                "x".repeat(i % 200)
            )
            .into_bytes()
        })
        .collect()
}

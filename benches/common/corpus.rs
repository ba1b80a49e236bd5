//! A generated mailbox with realistic sizes, the same for every contender and every run
//! (seeded): a fifth short notifications (~1 KB), three quarters ordinary mail (text + HTML
//! alternatives, 12-90 KB; the median message is about 25 KB), and 5 % with a base64
//! attachment from 80 KB up to 3 MB. CRLF line endings, as servers send; unique
//! Message-IDs; some non-ASCII headers.

use base64::Engine;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const WORDS: &[&str] = &[
    "invoice",
    "order",
    "support",
    "ticket",
    "payment",
    "delivery",
    "account",
    "update",
    "please",
    "attached",
    "regards",
    "thanks",
    "meeting",
    "report",
    "status",
    "request",
    "customer",
    "service",
    "number",
    "reference",
    "shipment",
    "balance",
    "contract",
    "renewal",
    "the",
    "and",
    "for",
    "with",
    "your",
    "our",
    "this",
    "that",
    "from",
    "will",
    "have",
    "been",
    "Grüße",
    "Rechnung",
    "façade",
    "naïve",
    "請求書",
    "отчёт",
];

fn words(rng: &mut StdRng, bytes: usize) -> String {
    let mut out = String::with_capacity(bytes + 80);
    let mut line = 0;
    while out.len() < bytes {
        let w = WORDS[rng.random_range(0..WORDS.len())];
        out.push_str(w);
        line += w.len() + 1;
        if line > 70 {
            out.push_str("\r\n");
            line = 0;
        } else {
            out.push(' ');
        }
    }
    out.push_str("\r\n");
    out
}

fn base64_lines(data: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(data);
    let mut out = String::with_capacity(b64.len() + b64.len() / 76 * 2 + 2);
    for chunk in b64.as_bytes().chunks(76) {
        out.push_str(std::str::from_utf8(chunk).unwrap());
        out.push_str("\r\n");
    }
    out
}

fn header(rng: &mut StdRng, tag: &str, i: usize, subject: &str) -> String {
    let day = 1 + i % 28;
    let from = if rng.random_bool(0.1) {
        "=?UTF-8?Q?J=C3=B6rg_M=C3=BCller?= <joerg@example.test>".to_string()
    } else {
        format!("Customer {} <c{}@example.test>", i % 997, i % 997)
    };
    format!(
        "Return-Path: <bounce@example.test>\r\nMessage-ID: <{tag}-{i}@bench.example.test>\r\nDate: Mon, {day} Nov 2025 10:{:02}:{:02} +0000\r\nFrom: {from}\r\nTo: intake@example.test\r\nSubject: {subject} #{i}\r\nMIME-Version: 1.0\r\n",
        i % 60,
        (i / 60) % 60
    )
}

/// Message `i` of the corpus `tag` (deterministic).
pub fn message(tag: &str, i: usize) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(0x6d61_696c ^ (i as u64).wrapping_mul(0x9e37_79b9));
    let kind: f64 = rng.random();
    if kind < 0.20 {
        // Notification: ~1 KB of plain text.
        let len = rng.random_range(600..1400);
        let h = header(&mut rng, tag, i, "Alert: threshold reached");
        let body = words(&mut rng, len);
        format!("{h}Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{body}")
            .into_bytes()
    } else if kind < 0.95 {
        // Ordinary mail: text and HTML alternatives, log-uniform 12-90 KB in all.
        let total = (12_000f64 * (90_000f64 / 12_000f64).powf(rng.random::<f64>())) as usize;
        let h = header(&mut rng, tag, i, "Re: your order");
        let text = words(&mut rng, total / 3);
        let html_words = words(&mut rng, total / 2);
        let html = format!(
            "<html><body><p>{}</p></body></html>\r\n",
            html_words.replace("\r\n", "<br>\r\n")
        );
        format!(
            "{h}Content-Type: multipart/alternative; boundary=\"alt-{i}\"\r\n\r\n--alt-{i}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{text}--alt-{i}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{html}--alt-{i}--\r\n"
        )
        .into_bytes()
    } else {
        // With an attachment: log-uniform 80 KB - 3 MB of incompressible bytes.
        let size = (80_000f64 * (3_000_000f64 / 80_000f64).powf(rng.random::<f64>())) as usize;
        let mut data = vec![0u8; size];
        rng.fill(&mut data[..]);
        let h = header(&mut rng, tag, i, "Invoice attached");
        let text = words(&mut rng, 1500);
        let att = base64_lines(&data);
        format!(
            "{h}Content-Type: multipart/mixed; boundary=\"mix-{i}\"\r\n\r\n--mix-{i}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{text}--mix-{i}\r\nContent-Type: application/pdf; name=\"invoice-{i}.pdf\"\r\nContent-Disposition: attachment; filename=\"invoice-{i}.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{att}--mix-{i}--\r\n"
        )
        .into_bytes()
    }
}

/// Messages `0..n` of the corpus `tag`.
pub fn mailbox(tag: &str, n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| message(tag, i)).collect()
}

/// Size statistics of a set of messages: (total bytes, median, p95, max).
pub fn stats(messages: &[Vec<u8>]) -> (u64, usize, usize, usize) {
    let mut sizes: Vec<usize> = messages.iter().map(Vec::len).collect();
    sizes.sort_unstable();
    let total = sizes.iter().map(|s| *s as u64).sum();
    let at = |q: f64| sizes[((sizes.len() - 1) as f64 * q) as usize];
    (total, at(0.5), at(0.95), *sizes.last().unwrap_or(&0))
}

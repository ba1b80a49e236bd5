//! The JSON body every sink sends for an event: the same envelope for webhooks and NATS.
//!
//! ```json
//! {"type": "message.stored", "id": "evt_…", "seq": 42, "timestamp": "2025-…Z",
//!  "data": {"source": …, "folder": …, "uidvalidity": …, "uid": … | "uidl": …, "sha256": …,
//!           "size": …, "internal_date": …, "message_id": …, "from": […], "to": […],
//!           "cc": […], "subject": …, "date": …, "text": …, "html": …,
//!           "attachments": [{"name", "content_type", "size"}],
//!           "raw_base64": … | "raw_url": … | "raw_object": {"bucket", "name"},
//!           "parse_error": …}}
//! {"type": "source.state_changed", "id": …, "seq": …, "timestamp": …,
//!  "data": {"source": …, "from": …, "to": …, "reason": …}}
//! ```
//! A field the message does not have is `null`, a list it does not have `[]`; an IMAP
//! message has `uid` and a POP3 one `uidl` (its `folder` and `uidvalidity` are `null`);
//! `parse_error` appears only on a message that did not parse, and such a message always
//! carries its raw bytes (inline up to `max_raw_bytes`, else by URL), since they are all
//! there is of it.
//!
//! Invariant: the body is a function of the event, the stored message and the raw choice
//! alone, with fields in a fixed order, so a repeat (after a failed attempt or a crash) is
//! byte-for-byte the body sent before, and so carries the same signature input.

use serde::{Serialize, Serializer};

use crate::store::{Location, MessageMeta};

/// `type` of an event for a newly stored message.
pub const MESSAGE_STORED: &str = "message.stored";
/// `type` of an event for a source's state change.
pub const SOURCE_STATE_CHANGED: &str = "source.state_changed";

/// The event's own fields, as the outbox holds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvelopeEvent<'a> {
    /// `evt_` + 32 hex digits: the same on every attempt (`webhook-id`, `Nats-Msg-Id`).
    pub id: &'a str,
    /// Position in the outbox, in commit order.
    pub seq: u64,
    /// [`MESSAGE_STORED`] or [`SOURCE_STATE_CHANGED`].
    pub kind: &'a str,
    /// When the event was committed (RFC 3339, UTC).
    pub timestamp: &'a str,
    /// The source the event is about.
    pub source: &'a str,
}

/// How a message's raw bytes travel with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Raw<'a> {
    /// Inline, base64 (`raw_base64`).
    Base64(&'a [u8]),
    /// Where the node serves them (`raw_url`): `{api_base}/api/messages/{id}/raw`.
    Url(&'a str),
    /// In a NATS object store (`raw_object`), for a message too large for one NATS message.
    Object { bucket: &'a str, name: &'a str },
}

/// What a state change says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateChangeData<'a> {
    pub from: &'a str,
    pub to: &'a str,
    pub reason: Option<&'a str>,
}

/// What the envelope's `data` is built from.
#[derive(Debug, Clone, Copy)]
pub enum EventData<'a> {
    MessageStored { meta: &'a MessageMeta, raw: Raw<'a> },
    SourceStateChanged(StateChangeData<'a>),
}

/// Why no envelope could be built: the caller handed over parts that do not belong together
/// (a bug in the caller, reported instead of sending a misleading body).
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("event {id} is of type {kind:?}, but its data is for {expected:?}")]
    KindMismatch {
        id: String,
        kind: String,
        expected: &'static str,
    },
    #[error("event {id} is about source {event:?}, but the message is from {message:?}")]
    SourceMismatch {
        id: String,
        event: String,
        message: String,
    },
    #[error("event {id}: cannot write JSON: {reason}")]
    Json {
        id: String,
        reason: serde_json::Error,
    },
}

/// Whether a message's raw bytes go inline: wanted (`include_raw`, or always for a message
/// that did not parse) and no larger than `max_raw_bytes` (counted before base64, which
/// adds a third). Asked before the bytes are read, so an event that does not need them
/// costs no read.
pub fn raw_inline(meta: &MessageMeta, include_raw: bool, max_raw_bytes: u64) -> bool {
    (include_raw || meta.parse_error.is_some()) && meta.size <= max_raw_bytes
}

/// Whether a message's envelope carries a reference to its raw bytes at all: every one does,
/// except a parsed message when the sink did not ask for raw bytes.
pub fn raw_wanted(meta: &MessageMeta, include_raw: bool) -> bool {
    include_raw || meta.parse_error.is_some()
}

/// The envelope's bytes.
pub fn build(event: &EnvelopeEvent<'_>, data: &EventData<'_>) -> Result<Vec<u8>, EnvelopeError> {
    let expected = match data {
        EventData::MessageStored { .. } => MESSAGE_STORED,
        EventData::SourceStateChanged(_) => SOURCE_STATE_CHANGED,
    };
    if event.kind != expected {
        return Err(EnvelopeError::KindMismatch {
            id: event.id.to_owned(),
            kind: event.kind.to_owned(),
            expected,
        });
    }
    let json = match data {
        EventData::MessageStored { meta, raw } => {
            if meta.source != event.source {
                return Err(EnvelopeError::SourceMismatch {
                    id: event.id.to_owned(),
                    event: event.source.to_owned(),
                    message: meta.source.clone(),
                });
            }
            serde_json::to_vec(&Envelope {
                kind: event.kind,
                id: event.id,
                seq: event.seq,
                timestamp: event.timestamp,
                data: MessageFields::new(meta, *raw),
            })
        }
        EventData::SourceStateChanged(change) => serde_json::to_vec(&Envelope {
            kind: event.kind,
            id: event.id,
            seq: event.seq,
            timestamp: event.timestamp,
            data: StateFields {
                source: event.source,
                from: change.from,
                to: change.to,
                reason: change.reason,
            },
        }),
    };
    json.map_err(|reason| EnvelopeError::Json {
        id: event.id.to_owned(),
        reason,
    })
}

// Field order below is the order on the wire: it must not change between two builds of the
// same event, and a reorder here is a visible change to receivers.

#[derive(Serialize)]
struct Envelope<'a, D> {
    #[serde(rename = "type")]
    kind: &'a str,
    id: &'a str,
    seq: u64,
    timestamp: &'a str,
    data: D,
}

#[derive(Serialize)]
struct StateFields<'a> {
    source: &'a str,
    from: &'a str,
    to: &'a str,
    reason: Option<&'a str>,
}

/// A stored message as receivers see it.
#[derive(Serialize)]
struct MessageFields<'a> {
    source: &'a str,
    folder: Option<&'a str>,
    uidvalidity: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    uidl: Option<&'a str>,
    sha256: &'a str,
    size: u64,
    internal_date: Option<&'a str>,
    message_id: Option<&'a str>,
    from: &'a [String],
    to: &'a [String],
    cc: &'a [String],
    subject: Option<&'a str>,
    date: Option<&'a str>,
    text: Option<&'a str>,
    html: Option<&'a str>,
    attachments: Vec<AttachmentFields<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    raw_base64: Option<Base64<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    raw_url: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    raw_object: Option<ObjectFields<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parse_error: Option<&'a str>,
}

#[derive(Serialize)]
struct AttachmentFields<'a> {
    name: Option<&'a str>,
    content_type: Option<&'a str>,
    size: u64,
}

#[derive(Serialize)]
struct ObjectFields<'a> {
    bucket: &'a str,
    name: &'a str,
}

/// Raw bytes written as base64 straight into the JSON, without a second copy as a string.
struct Base64<'a>(&'a [u8]);

impl Serialize for Base64<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&base64::display::Base64Display::new(
            self.0,
            &base64::engine::general_purpose::STANDARD,
        ))
    }
}

impl<'a> MessageFields<'a> {
    fn new(meta: &'a MessageMeta, raw: Raw<'a>) -> Self {
        const NONE: &[String] = &[];
        let (folder, uidvalidity, uid, uidl) = match &meta.location {
            Location::Imap {
                folder,
                uidvalidity,
                uid,
            } => (Some(folder.as_str()), Some(*uidvalidity), Some(*uid), None),
            Location::Pop3 { uidl } => (None, None, None, Some(uidl.as_str())),
        };
        let parsed = meta.parsed.as_ref();
        let (raw_base64, raw_url, raw_object) = match raw {
            Raw::Base64(bytes) => (Some(Base64(bytes)), None, None),
            Raw::Url(url) => (None, Some(url), None),
            Raw::Object { bucket, name } => (None, None, Some(ObjectFields { bucket, name })),
        };
        MessageFields {
            source: &meta.source,
            folder,
            uidvalidity,
            uid,
            uidl,
            sha256: &meta.sha256,
            size: meta.size,
            internal_date: meta.internal_date.as_deref(),
            message_id: parsed.and_then(|p| p.message_id.as_deref()),
            from: parsed.map_or(NONE, |p| &p.from),
            to: parsed.map_or(NONE, |p| &p.to),
            cc: parsed.map_or(NONE, |p| &p.cc),
            subject: parsed.and_then(|p| p.subject.as_deref()),
            date: parsed.and_then(|p| p.date.as_deref()),
            text: parsed.and_then(|p| p.text_body.as_deref()),
            html: parsed.and_then(|p| p.html_body.as_deref()),
            attachments: parsed.map_or_else(Vec::new, |p| {
                p.attachments
                    .iter()
                    .map(|a| AttachmentFields {
                        name: a.name.as_deref(),
                        content_type: a.content_type.as_deref(),
                        size: a.size,
                    })
                    .collect()
            }),
            raw_base64,
            raw_url,
            raw_object,
            parse_error: meta.parse_error.as_deref(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::{AttachmentInfo, ParsedFields};

    const RAW: &[u8] = b"From: a@example.com\r\nSubject: Hi\r\n\r\nHello\r\n";

    fn event<'a>(kind: &'a str, source: &'a str) -> EnvelopeEvent<'a> {
        EnvelopeEvent {
            id: "evt_00112233445566778899aabbccddeeff",
            seq: 42,
            kind,
            timestamp: "2025-03-01T10:00:00Z",
            source,
        }
    }

    fn parsed_meta() -> MessageMeta {
        MessageMeta {
            id: 7,
            source: "support".into(),
            location: Location::Imap {
                folder: "INBOX".into(),
                uidvalidity: 1_700_000_000,
                uid: 12,
            },
            sha256: "ab".repeat(32),
            size: RAW.len() as u64,
            internal_date: Some("2025-03-01T09:59:58+01:00".into()),
            stored_at: "2025-03-01T10:00:00Z".into(),
            parsed: Some(ParsedFields {
                message_id: Some("<m1@example.com>".into()),
                from: vec!["Alice <a@example.com>".into()],
                to: vec!["support@example.com".into(), "b@example.com".into()],
                cc: vec![],
                subject: Some("Hi \"there\" \u{e9}".into()),
                date: Some("2025-03-01T09:59:00+01:00".into()),
                text_body: Some("Hello\n".into()),
                html_body: None,
                attachments: vec![AttachmentInfo {
                    name: Some("invoice.pdf".into()),
                    content_type: Some("application/pdf".into()),
                    size: 1234,
                }],
            }),
            parse_error: None,
        }
    }

    fn unparsed_pop3_meta() -> MessageMeta {
        MessageMeta {
            id: 8,
            source: "invoices".into(),
            location: Location::Pop3 {
                uidl: "UID-0001".into(),
            },
            sha256: "cd".repeat(32),
            size: 3,
            internal_date: None,
            stored_at: "2025-03-01T10:00:00Z".into(),
            parsed: None,
            parse_error: Some("no header".into()),
        }
    }

    fn text(bytes: Vec<u8>) -> String {
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn a_parsed_imap_message_by_url() {
        let meta = parsed_meta();
        let url = "https://ingest.example.com/api/messages/7/raw";
        let body = build(
            &event(MESSAGE_STORED, "support"),
            &EventData::MessageStored {
                meta: &meta,
                raw: Raw::Url(url),
            },
        )
        .unwrap();
        let sha = "ab".repeat(32);
        assert_eq!(
            text(body),
            format!(
                concat!(
                    r#"{{"type":"message.stored","id":"evt_00112233445566778899aabbccddeeff","#,
                    r#""seq":42,"timestamp":"2025-03-01T10:00:00Z","data":{{"source":"support","#,
                    r#""folder":"INBOX","uidvalidity":1700000000,"uid":12,"sha256":"{sha}","#,
                    r#""size":43,"internal_date":"2025-03-01T09:59:58+01:00","#,
                    r#""message_id":"<m1@example.com>","from":["Alice <a@example.com>"],"#,
                    r#""to":["support@example.com","b@example.com"],"cc":[],"#,
                    r#""subject":"Hi \"there\" é","date":"2025-03-01T09:59:00+01:00","#,
                    r#""text":"Hello\n","html":null,"#,
                    r#""attachments":[{{"name":"invoice.pdf","content_type":"application/pdf","size":1234}}],"#,
                    r#""raw_url":"https://ingest.example.com/api/messages/7/raw"}}}}"#
                ),
                sha = sha
            )
        );
    }

    #[test]
    fn an_unparsed_pop3_message_carries_parse_error_and_raw() {
        let meta = unparsed_pop3_meta();
        // Not asked for raw bytes, yet a message that did not parse carries them.
        assert!(raw_wanted(&meta, false));
        assert!(raw_inline(&meta, false, 10));
        let body = build(
            &event(MESSAGE_STORED, "invoices"),
            &EventData::MessageStored {
                meta: &meta,
                raw: Raw::Base64(b"\x00\xffx"),
            },
        )
        .unwrap();
        let sha = "cd".repeat(32);
        assert_eq!(
            text(body),
            format!(
                concat!(
                    r#"{{"type":"message.stored","id":"evt_00112233445566778899aabbccddeeff","#,
                    r#""seq":42,"timestamp":"2025-03-01T10:00:00Z","data":{{"source":"invoices","#,
                    r#""folder":null,"uidvalidity":null,"uidl":"UID-0001","sha256":"{sha}","#,
                    r#""size":3,"internal_date":null,"message_id":null,"from":[],"to":[],"cc":[],"#,
                    r#""subject":null,"date":null,"text":null,"html":null,"attachments":[],"#,
                    r#""raw_base64":"AP94","parse_error":"no header"}}}}"#
                ),
                sha = sha
            )
        );
    }

    #[test]
    fn a_state_change() {
        let body = build(
            &event(SOURCE_STATE_CHANGED, "support"),
            &EventData::SourceStateChanged(StateChangeData {
                from: "healthy",
                to: "needs_reauth",
                reason: Some("invalid_grant"),
            }),
        )
        .unwrap();
        assert_eq!(
            text(body),
            concat!(
                r#"{"type":"source.state_changed","id":"evt_00112233445566778899aabbccddeeff","#,
                r#""seq":42,"timestamp":"2025-03-01T10:00:00Z","#,
                r#""data":{"source":"support","from":"healthy","to":"needs_reauth","reason":"invalid_grant"}}"#
            )
        );
        let no_reason = build(
            &event(SOURCE_STATE_CHANGED, "support"),
            &EventData::SourceStateChanged(StateChangeData {
                from: "starting",
                to: "healthy",
                reason: None,
            }),
        )
        .unwrap();
        assert!(text(no_reason).ends_with(r#""to":"healthy","reason":null}}"#));
    }

    /// include_raw with a message over max_raw_bytes: the engine is told not to inline it
    /// and sends the URL; at or under the limit it inlines the bytes.
    #[test]
    fn include_raw_over_max_raw_bytes_sends_raw_url() {
        let meta = parsed_meta();
        let size = meta.size;
        assert!(!raw_wanted(&meta, false));
        assert!(!raw_inline(&meta, false, size));
        assert!(raw_inline(&meta, true, size));
        assert!(!raw_inline(&meta, true, size - 1));

        let url = "http://127.0.0.1:9898/api/messages/7/raw";
        let raw = if raw_inline(&meta, true, size - 1) {
            Raw::Base64(RAW)
        } else {
            Raw::Url(url)
        };
        let body = text(
            build(
                &event(MESSAGE_STORED, "support"),
                &EventData::MessageStored { meta: &meta, raw },
            )
            .unwrap(),
        );
        assert!(
            body.ends_with(&format!(r#""raw_url":"{url}"}}}}"#)),
            "{body}"
        );
        assert!(!body.contains("raw_base64"));

        let inline = text(
            build(
                &event(MESSAGE_STORED, "support"),
                &EventData::MessageStored {
                    meta: &meta,
                    raw: Raw::Base64(RAW),
                },
            )
            .unwrap(),
        );
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(RAW);
        assert!(
            inline.ends_with(&format!(r#""raw_base64":"{b64}"}}}}"#)),
            "{inline}"
        );
    }

    #[test]
    fn a_large_nats_message_points_at_the_object_store() {
        let meta = parsed_meta();
        let body = text(
            build(
                &event(MESSAGE_STORED, "support"),
                &EventData::MessageStored {
                    meta: &meta,
                    raw: Raw::Object {
                        bucket: "mailsluice-raw",
                        name: "evt_00112233445566778899aabbccddeeff",
                    },
                },
            )
            .unwrap(),
        );
        assert!(
            body.ends_with(
                r#""raw_object":{"bucket":"mailsluice-raw","name":"evt_00112233445566778899aabbccddeeff"}}}"#
            ),
            "{body}"
        );
    }

    #[test]
    fn building_twice_gives_the_same_bytes() {
        let meta = parsed_meta();
        let ev = event(MESSAGE_STORED, "support");
        let data = EventData::MessageStored {
            meta: &meta,
            raw: Raw::Base64(RAW),
        };
        let first = build(&ev, &data).unwrap();
        // A clone read back from JSON, as the store hands it over after a restart.
        let reread: MessageMeta =
            serde_json::from_slice(&serde_json::to_vec(&meta).unwrap()).unwrap();
        let again = build(
            &ev,
            &EventData::MessageStored {
                meta: &reread,
                raw: Raw::Base64(RAW),
            },
        )
        .unwrap();
        assert_eq!(first, again);
        // And it is JSON whose fields read back as built.
        let v: serde_json::Value = serde_json::from_slice(&first).unwrap();
        assert_eq!(v["data"]["subject"], "Hi \"there\" \u{e9}");
        assert_eq!(v["seq"], 42);
    }

    #[test]
    fn parts_that_do_not_belong_together_are_refused() {
        let meta = parsed_meta();
        let err = build(
            &event(SOURCE_STATE_CHANGED, "support"),
            &EventData::MessageStored {
                meta: &meta,
                raw: Raw::Url("u"),
            },
        )
        .unwrap_err();
        assert!(matches!(err, EnvelopeError::KindMismatch { .. }), "{err}");
        let err = build(
            &event(MESSAGE_STORED, "sales"),
            &EventData::MessageStored {
                meta: &meta,
                raw: Raw::Url("u"),
            },
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "event evt_00112233445566778899aabbccddeeff is about source \"sales\", but the \
             message is from \"support\""
        );
    }
}

//! Standard Webhooks signatures: what a webhook sink puts in `webhook-signature`, and the
//! check a receiver makes (used by the tests' receiver and shown in the README).
//!
//! A secret is written `whsec_` + base64 of the key; the signature is
//! `v1,` + base64(HMAC-SHA256(key, "{webhook-id}.{webhook-timestamp}.{body}")). During a
//! rotation the sink holds two secrets and sends one `v1,` signature per secret, separated
//! by a space, so a receiver that knows either secret accepts the request.
//!
//! Invariant: no value built here (error, `Debug`) holds a key or any part of one. A malformed
//! secret is named by its position in the list, never quoted.

use std::fmt;
use std::time::Duration;

use base64::Engine;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

/// What every secret starts with.
pub const SECRET_PREFIX: &str = "whsec_";
/// Shortest key accepted (decoded bytes). The Standard Webhooks libraries generate 24 to 64
/// bytes; less would be a weak HMAC key.
pub const MIN_KEY_BYTES: usize = 24;
/// Longest key accepted (decoded bytes): HMAC-SHA256 hashes longer keys down to 32 bytes, so
/// more adds nothing but a larger input to read.
pub const MAX_KEY_BYTES: usize = 64;
/// Most secrets in one value: two during a rotation is the normal case; four leaves room for
/// an overlapping rotation without letting a mistake multiply the work per request.
pub const MAX_SECRETS: usize = 4;
/// How far a receiver lets `webhook-timestamp` be from its clock (either way).
pub const TOLERANCE: Duration = Duration::from_secs(5 * 60);
/// Most `v1,` entries a verifier looks at in one header: a sender has at most
/// [`MAX_SECRETS`]; a header with many more is someone making the receiver work.
const MAX_SIGNATURES_CHECKED: usize = 16;

/// The secrets' base64: standard alphabet, padding optional (some tools strip it).
const SECRET_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

type HmacSha256 = Hmac<Sha256>;

/// One signing key: the decoded bytes of a `whsec_` secret (wiped when dropped) and the
/// HMAC keyed with them. `Debug` shows nothing of it.
#[derive(Clone)]
pub struct SigningKey {
    bytes: Zeroizing<Vec<u8>>,
    mac: HmacSha256,
}

impl SigningKey {
    /// A key from its bytes: `None` unless there are [`MIN_KEY_BYTES`] to [`MAX_KEY_BYTES`].
    pub fn from_bytes(bytes: &[u8]) -> Option<SigningKey> {
        if !(MIN_KEY_BYTES..=MAX_KEY_BYTES).contains(&bytes.len()) {
            return None;
        }
        // HMAC takes keys of every length, so this never fails.
        let mac = HmacSha256::new_from_slice(bytes).ok()?;
        Some(SigningKey {
            bytes: Zeroizing::new(bytes.to_vec()),
            mac,
        })
    }

    /// The secret as it is written: `whsec_` + base64 of the key. For the tests' receiver
    /// and for tools that hand a secret to a receiver; never logged.
    pub fn to_secret(&self) -> Zeroizing<String> {
        Zeroizing::new(format!("{SECRET_PREFIX}{}", STANDARD.encode(&*self.bytes)))
    }

    /// The HMAC over `{id}.{timestamp}.{body}`, with the timestamp as it is written in
    /// the header (a receiver signs the text it got, not a number parsed from it).
    fn signed(&self, id: &str, timestamp: &str, body: &[u8]) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }
}

/// Same key bytes. Not constant-time: for finding a secret listed twice in the config,
/// never for checking a request.
impl PartialEq for SigningKey {
    fn eq(&self, other: &Self) -> bool {
        *self.bytes == *other.bytes
    }
}

impl Eq for SigningKey {}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

/// Why a configured secret value is not a list of `whsec_` secrets. Positions count from 1
/// in the order the secrets are written; the value itself is never part of the error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretFormatError {
    #[error("no secret found; write one or more \"whsec_\" + base64 secrets, separated by spaces")]
    Empty,
    #[error(
        "{count} secrets found; at most {MAX_SECRETS} (one, or two during a rotation) are used"
    )]
    TooMany { count: usize },
    #[error("secret {position} does not start with \"whsec_\"")]
    NoPrefix { position: usize },
    #[error("secret {position} is not base64 after \"whsec_\"")]
    NotBase64 { position: usize },
    #[error(
        "secret {position} is a key of {len} bytes; a key has {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes (e.g. `printf 'whsec_%s' \"$(openssl rand -base64 32)\"`)"
    )]
    KeyLength { position: usize, len: usize },
    #[error("secret {position} is the same as secret {first}")]
    Repeated { position: usize, first: usize },
}

/// The keys of a secret value: one or more `whsec_` secrets separated by whitespace.
pub fn parse_secrets(text: &str) -> Result<Vec<SigningKey>, SecretFormatError> {
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.is_empty() {
        return Err(SecretFormatError::Empty);
    }
    if words.len() > MAX_SECRETS {
        return Err(SecretFormatError::TooMany { count: words.len() });
    }
    let mut keys: Vec<SigningKey> = Vec::with_capacity(words.len());
    for (i, word) in words.iter().enumerate() {
        let position = i + 1;
        let Some(encoded) = word.strip_prefix(SECRET_PREFIX) else {
            return Err(SecretFormatError::NoPrefix { position });
        };
        let bytes = Zeroizing::new(
            SECRET_BASE64
                .decode(encoded)
                .map_err(|_| SecretFormatError::NotBase64 { position })?,
        );
        let key = SigningKey::from_bytes(&bytes).ok_or(SecretFormatError::KeyLength {
            position,
            len: bytes.len(),
        })?;
        if let Some(first) = keys.iter().position(|k| *k == key) {
            return Err(SecretFormatError::Repeated {
                position,
                first: first + 1,
            });
        }
        keys.push(key);
    }
    Ok(keys)
}

/// The `webhook-signature` header for one request: `v1,<base64 signature>` per key, in the
/// keys' order, separated by single spaces. `timestamp` is the `webhook-timestamp` sent with
/// it (Unix seconds); `body` the exact bytes sent.
pub fn signature_header(id: &str, timestamp: i64, body: &[u8], keys: &[SigningKey]) -> String {
    let timestamp = timestamp.to_string();
    let mut header = String::new();
    for key in keys {
        if !header.is_empty() {
            header.push(' ');
        }
        header.push_str("v1,");
        STANDARD.encode_string(
            key.signed(id, &timestamp, body).finalize().into_bytes(),
            &mut header,
        );
    }
    header
}

/// Why a receiver refuses a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("webhook-timestamp is not a Unix time in seconds")]
    BadTimestamp,
    #[error(
        "webhook-timestamp is {skew_secs} s away from the receiver's clock; at most {tolerance_secs} s is accepted"
    )]
    OutsideTolerance { skew_secs: u64, tolerance_secs: u64 },
    #[error("webhook-signature holds no v1 signature made with a known key over this body")]
    NoMatch,
}

/// The receiver's check: `timestamp` within `tolerance` of `now` (Unix seconds), and one of
/// the `v1,` signatures in `signatures` made by one of `keys` over `id`, `timestamp` and
/// `body`. Signatures are compared in constant time; entries of other versions are skipped.
pub fn verify(
    id: &str,
    timestamp: &str,
    signatures: &str,
    body: &[u8],
    keys: &[SigningKey],
    now: i64,
    tolerance: Duration,
) -> Result<(), VerifyError> {
    // Digits only: `i64::from_str` would also take "+17", which no sender writes.
    if timestamp.is_empty()
        || timestamp.len() > 19
        || !timestamp.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(VerifyError::BadTimestamp);
    }
    let sent: i64 = timestamp.parse().map_err(|_| VerifyError::BadTimestamp)?;
    let skew_secs = now.abs_diff(sent);
    if skew_secs > tolerance.as_secs() {
        return Err(VerifyError::OutsideTolerance {
            skew_secs,
            tolerance_secs: tolerance.as_secs(),
        });
    }
    let candidates = signatures
        .split_whitespace()
        .take(MAX_SIGNATURES_CHECKED)
        .filter_map(|entry| entry.strip_prefix("v1,"))
        .filter_map(|b64| STANDARD.decode(b64).ok());
    for candidate in candidates {
        for key in keys {
            if key
                .signed(id, timestamp, body)
                .verify_slice(&candidate)
                .is_ok()
            {
                return Ok(());
            }
        }
    }
    Err(VerifyError::NoMatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Standard Webhooks reference libraries' published vector.
    const VECTOR_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const VECTOR_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const VECTOR_TIMESTAMP: i64 = 1_614_265_330;
    const VECTOR_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const VECTOR_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn key(byte: u8) -> SigningKey {
        SigningKey::from_bytes(&[byte; 32]).unwrap()
    }

    /// Interoperability, not self-consistency: a round trip through our own verifier would
    /// pass with the delimiter, the base64 alphabet or the key decoding all wrong. This
    /// signature was computed by the reference implementation (and again by Python's `hmac`).
    #[test]
    fn reproduces_the_published_test_vector() {
        let keys = parse_secrets(VECTOR_SECRET).unwrap();
        assert_eq!(
            signature_header(VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY, &keys),
            VECTOR_SIGNATURE
        );
        assert_eq!(
            verify(
                VECTOR_ID,
                "1614265330",
                VECTOR_SIGNATURE,
                VECTOR_BODY,
                &keys,
                VECTOR_TIMESTAMP + 299,
                TOLERANCE
            ),
            Ok(())
        );
        assert_eq!(&*keys[0].to_secret(), VECTOR_SECRET);
    }

    #[test]
    fn one_signature_per_key_in_order() {
        let (old, new) = (key(1), key(2));
        let both = signature_header("evt_1", 1_700_000_000, b"{}", &[old.clone(), new.clone()]);
        let alone_old = signature_header("evt_1", 1_700_000_000, b"{}", std::slice::from_ref(&old));
        let alone_new = signature_header("evt_1", 1_700_000_000, b"{}", std::slice::from_ref(&new));
        assert_eq!(both, format!("{alone_old} {alone_new}"));
        assert_ne!(alone_old, alone_new);
        // A receiver that knows only one of the two secrets accepts the request.
        for receiver in [old, new] {
            verify(
                "evt_1",
                "1700000000",
                &both,
                b"{}",
                &[receiver],
                1_700_000_000,
                TOLERANCE,
            )
            .unwrap();
        }
        assert_eq!(signature_header("evt_1", 1, b"{}", &[]), "");
    }

    #[test]
    fn verify_refuses_what_was_not_signed() {
        let k = key(7);
        let header = signature_header(
            "evt_1",
            1_700_000_000,
            b"{\"a\":1}",
            std::slice::from_ref(&k),
        );
        let check = |id: &str, ts: &str, sig: &str, body: &[u8], keys: &[SigningKey]| {
            verify(id, ts, sig, body, keys, 1_700_000_000, TOLERANCE)
        };
        assert_eq!(
            check(
                "evt_1",
                "1700000000",
                &header,
                b"{\"a\":1}",
                std::slice::from_ref(&k)
            ),
            Ok(())
        );
        assert_eq!(
            check(
                "evt_1",
                "1700000000",
                &header,
                b"{\"a\":2}",
                std::slice::from_ref(&k)
            ),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            check(
                "evt_2",
                "1700000000",
                &header,
                b"{\"a\":1}",
                std::slice::from_ref(&k)
            ),
            Err(VerifyError::NoMatch)
        );
        // The timestamp is signed: moving it (within tolerance) breaks the signature.
        assert_eq!(
            check(
                "evt_1",
                "1700000001",
                &header,
                b"{\"a\":1}",
                std::slice::from_ref(&k)
            ),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            check("evt_1", "1700000000", &header, b"{\"a\":1}", &[key(8)]),
            Err(VerifyError::NoMatch)
        );
        // Other versions are skipped, garbage entries do not stop the search.
        let mixed = format!("v1a,xyz v1,!!notbase64!! {header}");
        assert_eq!(
            check(
                "evt_1",
                "1700000000",
                &mixed,
                b"{\"a\":1}",
                std::slice::from_ref(&k)
            ),
            Ok(())
        );
        assert_eq!(
            check(
                "evt_1",
                "1700000000",
                "v2,abc",
                b"{\"a\":1}",
                std::slice::from_ref(&k)
            ),
            Err(VerifyError::NoMatch)
        );
        // A truncated signature is not a prefix match.
        let short = &header[..header.len() - 4];
        assert_eq!(
            check("evt_1", "1700000000", short, b"{\"a\":1}", &[k]),
            Err(VerifyError::NoMatch)
        );
    }

    #[test]
    fn verify_enforces_the_timestamp_tolerance() {
        let k = key(3);
        let sign = |ts: i64| signature_header("evt_1", ts, b"x", std::slice::from_ref(&k));
        let now = 1_700_000_000;
        for ts in [now - 300, now + 300] {
            verify(
                "evt_1",
                &ts.to_string(),
                &sign(ts),
                b"x",
                std::slice::from_ref(&k),
                now,
                TOLERANCE,
            )
            .unwrap();
        }
        for ts in [now - 301, now + 301] {
            assert_eq!(
                verify(
                    "evt_1",
                    &ts.to_string(),
                    &sign(ts),
                    b"x",
                    std::slice::from_ref(&k),
                    now,
                    TOLERANCE
                ),
                Err(VerifyError::OutsideTolerance {
                    skew_secs: 301,
                    tolerance_secs: 300
                })
            );
        }
        for bad in [
            "",
            "+1700000000",
            "1700000000.5",
            "-5",
            "17e8",
            "99999999999999999999",
        ] {
            assert_eq!(
                verify(
                    "evt_1",
                    bad,
                    &sign(now),
                    b"x",
                    std::slice::from_ref(&k),
                    now,
                    TOLERANCE
                ),
                Err(VerifyError::BadTimestamp),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn secrets_parse_with_rotation_and_are_refused_by_position() {
        let second = format!("whsec_{}", STANDARD.encode([9u8; 24]));
        let keys = parse_secrets(&format!("  {VECTOR_SECRET}\n\t{second}\n")).unwrap();
        assert_eq!(keys.len(), 2);
        // Padding may be left off.
        let unpadded = format!("whsec_{}", STANDARD.encode([5u8; 32]).trim_end_matches('='));
        assert_eq!(parse_secrets(&unpadded).unwrap(), vec![key(5)]);

        let four = [1u8, 2, 3, 4]
            .map(|b| key(b).to_secret().to_string())
            .join(" ");
        assert_eq!(parse_secrets(&four).unwrap().len(), 4);
        let five = format!("{four} {}", key(6).to_secret().as_str());
        assert_eq!(
            parse_secrets(&five),
            Err(SecretFormatError::TooMany { count: 5 })
        );
        assert_eq!(parse_secrets(" \n "), Err(SecretFormatError::Empty));
        assert_eq!(
            parse_secrets(&format!("{VECTOR_SECRET} MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")),
            Err(SecretFormatError::NoPrefix { position: 2 })
        );
        assert_eq!(
            parse_secrets("whsec_not*base64"),
            Err(SecretFormatError::NotBase64 { position: 1 })
        );
        let short = format!("whsec_{}", STANDARD.encode([1u8; 23]));
        assert_eq!(
            parse_secrets(&short),
            Err(SecretFormatError::KeyLength {
                position: 1,
                len: 23
            })
        );
        let long = format!("whsec_{}", STANDARD.encode([1u8; 65]));
        assert_eq!(
            parse_secrets(&long),
            Err(SecretFormatError::KeyLength {
                position: 1,
                len: 65
            })
        );
        assert_eq!(
            parse_secrets(&format!("{VECTOR_SECRET} {second} {VECTOR_SECRET}")),
            Err(SecretFormatError::Repeated {
                position: 3,
                first: 1
            })
        );
    }

    #[test]
    fn keys_and_errors_never_show_the_secret() {
        let keys = parse_secrets(VECTOR_SECRET).unwrap();
        let shown = format!("{keys:?}");
        assert_eq!(shown, "[SigningKey(<redacted>)]");
        let encoded = VECTOR_SECRET.trim_start_matches(SECRET_PREFIX);
        for bad in [
            format!("{VECTOR_SECRET} {encoded}"),
            format!("whsec_{encoded}!"),
            format!("whsec_{}", &encoded[..20]),
        ] {
            let err = parse_secrets(&bad).unwrap_err();
            for text in [err.to_string(), format!("{err:?}")] {
                assert!(!text.contains(&encoded[..8]), "{text}");
            }
        }
    }
}

//! SASL: describing a server challenge never panics; encodings are well-formed base64.
#![no_main]
use base64::Engine;
use libfuzzer_sys::fuzz_target;
use mailsluice::protocol::sasl;
use mailsluice::secret::Secret;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = sasl::describe_challenge(&text);
    let mid = text
        .char_indices()
        .nth(text.chars().count() / 2)
        .map_or(text.len(), |(i, _)| i);
    let (user, token) = text.split_at(mid);
    for encoded in [
        sasl::xoauth2(user, &Secret::new(token)),
        sasl::oauthbearer(user, "h", 993, &Secret::new(token)),
        sasl::plain(user, &Secret::new(token)),
    ] {
        assert!(
            base64::engine::general_purpose::STANDARD
                .decode(encoded.expose())
                .is_ok()
        );
    }
});

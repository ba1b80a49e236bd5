//! POP3 replies, multi-line bodies (dot-unstuffing, size cap) and listings: no panic, and
//! the reader never claims more bytes than it was given.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mailsluice::protocol::pop3;

fuzz_target!(|data: &[u8]| {
    let mut reader = pop3::Reader::default();
    if let Ok(Some((_, used))) = reader.reply(data) {
        assert!(used <= data.len());
    }
    let mut reader = pop3::Reader::default();
    // Feed in two pieces, as reads arrive.
    let cut = data.len() / 2;
    let first = reader.multiline(&data[..cut], 4096);
    if let Ok(None) = first {
        if let Ok(Some((body, used))) = reader.multiline(data, 4096) {
            assert!(used <= data.len());
            assert!(body.len() <= used);
        }
    }
    let _ = pop3::parse_uidl(data);
    let _ = pop3::parse_list(data);
    let _ = pop3::parse_capa(data);
});

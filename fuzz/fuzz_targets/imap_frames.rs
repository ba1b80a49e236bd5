//! IMAP framing (lines + literals with caps) and response parsing: no panic, frames never
//! exceed the input, a frame found in one piece is found the same when fed byte by byte, and
//! the owned parse (which parses the frame without its largest literal) agrees with the
//! whole-frame parse whenever that one succeeds.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mailsluice::protocol::imap::{Framer, parse_greeting, parse_response, parse_response_owned};

fuzz_target!(|data: &[u8]| {
    let mut framer = Framer::new(2048, 1 << 16);
    let whole = framer.next_frame(data);
    if let Ok(Some(n)) = whole {
        assert!(n <= data.len());
        let whole = parse_response(&data[..n]);
        let owned = parse_response_owned(data[..n].to_vec());
        if let Ok(whole) = whole {
            assert_eq!(owned.ok(), Some(whole));
        }
        let _ = parse_greeting(&data[..n]);
        let mut byte_by_byte = Framer::new(2048, 1 << 16);
        let mut found = None;
        for end in 1..=n {
            if let Ok(Some(m)) = byte_by_byte.next_frame(&data[..end]) {
                found = Some(m);
                break;
            }
        }
        assert_eq!(found, Some(n));
    }
    let _ = parse_response(data);
});

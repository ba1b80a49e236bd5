//! Our mail-parser wrapper on arbitrary bytes: a result or a parse-error mark, never a panic;
//! and cutting attachments' base64 bodies out before parsing changes nothing in the result.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mailsluice::parse::{parse, parse_cutting, parse_whole};

fuzz_target!(|data: &[u8]| {
    // libFuzzer's panic hook aborts on every panic, also a caught one. mail-parser panics
    // on some inputs, which the wrapper catches and turns into a parse error; any other
    // panic is still a finding.
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(mailsluice::parse::quiet_mail_parser_panics);
    let whole = parse_whole(data);
    assert_eq!(parse_cutting(data, 1), whole, "cutting every base64 body");
    assert_eq!(parse(data), whole);
});

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
    HOOK.call_once(|| {
        let fuzzer_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_mail_parser = info
                .location()
                .is_some_and(|l| l.file().contains("/mail-parser-"));
            if !in_mail_parser {
                fuzzer_hook(info);
            }
        }));
    });
    let whole = parse_whole(data);
    assert_eq!(parse_cutting(data, 1), whole, "cutting every base64 body");
    assert_eq!(parse(data), whole);
});

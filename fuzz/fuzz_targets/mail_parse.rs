//! Our mail-parser wrapper on arbitrary bytes: a result or a parse-error mark, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = mailsluice::parse::parse(data);
});

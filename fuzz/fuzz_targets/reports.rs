//! The report parsers: ARF (RFC 5965), XARF (JSON) and DSN (RFC 3464) on arbitrary
//! messages — they come from anyone on the internet.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let text = String::from_utf8_lossy(input);
    let _ = sluice_engine::feedback::parse(&text);
    if let Some(bounces) = sluice_engine::feedback::parse_dsn(&text, "bounces+a=b.example@bounces.example.com") {
        for b in bounces {
            assert!(!b.rcpt.contains('\n'));
        }
    }
});

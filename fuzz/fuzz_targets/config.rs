//! The configuration parser: any text loads or fails with file:line, never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let text = String::from_utf8_lossy(input);
    if let Err(e) = sluice_config::load("fuzz.conf", &text, &mut |_| Err("no includes".into())) {
        assert!(e.line as usize <= text.lines().count() + 1, "{e}");
        assert!(!e.message.is_empty());
    }
});

//! The check the `config` fuzz target runs on each input, here so that the ordinary test
//! suite replays every kept input through the same code (`tests/fuzz_regressions.rs`).

/// The configuration parser: any text loads or fails with file:line, never panics.
pub fn config(input: &[u8]) {
    let text = String::from_utf8_lossy(input);
    if let Err(e) = crate::load("fuzz.conf", &text, &mut |_| Err("no includes".into())) {
        assert!(e.line as usize <= text.lines().count() + 1, "{e}");
        assert!(!e.message.is_empty());
    }
}

//! The SMTP reply parser (what the delivery client reads from remote servers): no panic; a
//! parsed reply has a 3-digit code and consumed no more than it was given.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice_engine::smtp::reply::parse_reply;

fuzz_target!(|input: &[u8]| {
    if let Ok(Some((reply, used))) = parse_reply(input) {
        assert!(used <= input.len());
        assert!((100..1000).contains(&reply.code));
        let _ = (reply.enhanced(), reply.line(), reply.is_positive(), reply.is_transient(), reply.is_permanent());
    }
});

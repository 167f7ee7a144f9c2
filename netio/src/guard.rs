//! Panics and the process. A panic while one connection's input is handled (`isolated`) ends
//! that connection only: the shard and every other connection go on. Any other panic ends the
//! process (`install_hook`), so its supervisor restarts it and the spool recovers as after
//! `kill -9` — never a process whose listeners accept connections no shard serves.

use std::cell::Cell;
use std::panic::AssertUnwindSafe;

thread_local! {
    /// How many `isolated` calls this thread is inside (a panic here unwinds to the innermost).
    static ISOLATED_DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Runs `f`; a panic inside it is caught and returned as its message. Only for work whose
/// state the caller can throw away whole (one connection's), never for shared state.
pub fn isolated<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    ISOLATED_DEPTH.with(|d| d.set(d.get() + 1));
    let result = std::panic::catch_unwind(AssertUnwindSafe(f));
    ISOLATED_DEPTH.with(|d| d.set(d.get() - 1));
    result.map_err(|payload| panic_message(payload.as_ref()))
}

/// Is this thread inside an `isolated` call?
pub fn is_isolated() -> bool {
    ISOLATED_DEPTH.with(|d| d.get() > 0)
}

/// The text of a panic's payload (`panic!` gives a `&str` or a `String`).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with no message".to_string()
    }
}

/// The process's panic hook: the standard report on standard error, then, unless an
/// `isolated` call will catch it, the end of the process (abort: nothing more runs, as with
/// `kill -9`). Panics on the control plane's tokio tasks count too: tokio would otherwise
/// swallow them and leave the process half alive.
pub fn install_hook() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        if !is_isolated() {
            let thread = std::thread::current().name().unwrap_or("unnamed").to_string();
            tracing::error!(
                %thread,
                "a panic outside any connection's handling: sluice exits so its supervisor restarts it \
                 (the spool recovers as after kill -9)"
            );
            std::process::abort();
        }
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_inside_is_caught_with_its_message_and_the_depth_unwinds() {
        assert!(!is_isolated());
        assert_eq!(isolated(|| 7), Ok(7));
        let inner = isolated(|| {
            assert!(is_isolated());
            let e = isolated(|| -> u32 { panic!("boom {}", 1) });
            assert!(is_isolated(), "still inside the outer call");
            e
        });
        assert_eq!(inner, Ok(Err("boom 1".to_string())));
        assert!(!is_isolated());
    }
}

//! sluice-engine: the sans-IO heart. SMTP machines, queues, bounce classification and
//! accounting records; takes `now` and bytes, returns values, never touches IO.

pub mod acct;
pub mod bounce;
pub mod dkim;
pub mod feedback;
#[doc(hidden)]
pub mod fuzz_check;
pub mod http;
pub mod prepare;
pub mod queue;
pub mod route;
pub mod sched;
pub mod shape;
pub mod smtp;
pub mod suppress;
pub mod time;

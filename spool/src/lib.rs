//! sluice-spool: the durable message store's logic — segment and journal byte format,
//! group-commit bookkeeping, recovery — with no IO of its own. The io_uring backend lives in
//! `netio`; `memdisk` is the crash-simulating backend tests drive.

pub mod codec;
pub mod commit;
#[doc(hidden)]
pub mod fuzz_check;
pub mod life;
pub mod machine;
pub mod memdisk;
pub mod recover;
pub mod resume;

pub use codec::{Envelope, MessageView, Outcome};
pub use commit::{Appender, FileCommit, JournalBackoff, Placement, TicketResult};
pub use life::{JournalRefs, SegmentLife};
pub use machine::{JournalId, OldJournal, SegmentFile, SegmentHandle, Spool, SpoolEvent, SpoolOp};
pub use resume::{Resume, SendBuf};

/// File names inside a shard's spool directory.
pub fn segment_name(seq: u64) -> String {
    format!("{seq:016x}.seg")
}

pub fn journal_name(seq: u64) -> String {
    format!("{seq:016x}.jnl")
}

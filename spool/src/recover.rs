//! Recovery: from the bytes of segment and journal files to the recipients still owed a
//! delivery. Pure functions over byte slices; the caller reads the files.

use crate::codec::{self, Decoded, FileKind, Outcome, FILE_HEADER_BYTES, OUTCOME_BYTES};
use crate::commit::Appender;
use std::collections::HashSet;

/// One message found in a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundMessage {
    pub offset: u64,
    pub recipients: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannedSegment {
    pub shard: u32,
    pub seq: u64,
    pub messages: Vec<FoundMessage>,
    /// Offset where scanning stopped at a torn record (an unacknowledged write cut by a crash).
    pub torn_at: Option<u64>,
}

/// `Ok(None)` for a file whose header never (wholly) reached the disk: it was created just
/// before a crash and, since the header is synced with the first batch, holds nothing that
/// was acknowledged.
pub fn scan_segment(bytes: &[u8]) -> Result<Option<ScannedSegment>, String> {
    if !codec::file_header_intact(bytes) {
        return Ok(None);
    }
    let header = codec::decode_file_header(bytes)?;
    if header.kind != FileKind::Segment {
        return Err("a journal where a segment was expected".into());
    }
    let mut messages = Vec::new();
    let mut at = FILE_HEADER_BYTES;
    let mut torn_at = None;
    while at < bytes.len() {
        match codec::decode_message(&bytes[at..]) {
            Decoded::Record(view, len) => {
                messages.push(FoundMessage { offset: at as u64, recipients: view.envelope.recipients.len() as u32 });
                at += Appender::aligned(len as u64) as usize;
            }
            Decoded::End => break,
            Decoded::Torn => {
                torn_at = Some(at as u64);
                break;
            }
        }
    }
    Ok(Some(ScannedSegment { shard: header.shard, seq: header.seq, messages, torn_at }))
}

/// Reads every valid entry of a journal; zeroed or torn entries are skipped (entries are
/// fixed-size, so one torn entry never hides the next).
pub fn scan_journal(bytes: &[u8]) -> Result<(u32, u64, Vec<Outcome>), String> {
    if !codec::file_header_intact(bytes) {
        return Ok((0, 0, Vec::new()));
    }
    let header = codec::decode_file_header(bytes)?;
    if header.kind != FileKind::Journal {
        return Err("a segment where a journal was expected".into());
    }
    let entries = bytes[FILE_HEADER_BYTES..]
        .chunks_exact(OUTCOME_BYTES)
        .filter_map(|c| codec::decode_outcome(c.try_into().expect("exact chunk")))
        .collect();
    Ok((header.shard, header.seq, entries))
}

/// A message with recipients still to deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingMessage {
    pub seg_shard: u32,
    pub seg_seq: u64,
    pub offset: u64,
    pub pending: Vec<u32>,
}

/// What recovery hands back: messages owed delivery, and segments that are wholly final.
#[derive(Debug, Default)]
pub struct Plan {
    pub pending: Vec<PendingMessage>,
    pub finished_segments: Vec<(u32, u64)>,
}

pub fn plan(segments: &[ScannedSegment], outcomes: &[Outcome]) -> Plan {
    let done: HashSet<(u32, u64, u64, u32)> =
        outcomes.iter().map(|o| (o.seg_shard, o.seg_seq, o.offset, o.rcpt)).collect();
    let mut plan = Plan::default();
    for seg in segments {
        let before = plan.pending.len();
        for m in &seg.messages {
            let pending: Vec<u32> =
                (0..m.recipients).filter(|r| !done.contains(&(seg.shard, seg.seq, m.offset, *r))).collect();
            if !pending.is_empty() {
                plan.pending.push(PendingMessage { seg_shard: seg.shard, seg_seq: seg.seq, offset: m.offset, pending });
            }
        }
        if plan.pending.len() == before {
            plan.finished_segments.push((seg.shard, seg.seq));
        }
    }
    plan
}

/// The first sequence number a restarted shard may give a new segment or journal: above
/// every file left in its directory, and above every segment of it that a surviving journal
/// (of any shard) names. A segment number named in an old journal must never come back: that
/// journal's entries would mark the new segment's recipients done (same offsets, same
/// recipient numbers) and an acknowledged message would never be delivered.
pub fn next_seq(file_seqs: &[u64], outcomes: &[Outcome], shard: u32) -> u64 {
    let named = outcomes.iter().filter(|o| o.seg_shard == shard).map(|o| o.seg_seq);
    file_seqs.iter().copied().chain(named).max().map_or(1, |s| s + 1)
}

/// Every spool file found at start-up, scanned: segments (with the caller's handle on
/// each), journals and their entries, and the numbers of all files per shard directory.
pub struct Found<S> {
    pub segments: Vec<(S, ScannedSegment)>,
    pub journals: Vec<(crate::machine::JournalId, Vec<Outcome>)>,
    pub file_seqs: std::collections::HashMap<u32, Vec<u64>>,
}

/// What a restart does with what it found: messages still owed (segment, offset,
/// recipients), journals to keep, the first free number per shard directory, and the files
/// with nothing left to do (the caller deletes them).
pub struct Recovery<S> {
    pub messages: Vec<(S, u64, Vec<u32>)>,
    pub old_journals: Vec<crate::machine::OldJournal>,
    pub next_seq: std::collections::HashMap<u32, u64>,
    pub delete_segments: Vec<S>,
    pub delete_journals: Vec<crate::machine::JournalId>,
}

/// Applies the journals to the segments: owed recipients become live in their segment,
/// every segment is sealed (those owing nothing are to be deleted), and each journal is kept
/// while a segment it names survives. The same steps for the daemon and the simulation.
pub fn assemble<S: crate::machine::SegmentHandle>(found: Found<S>) -> Recovery<S> {
    use std::collections::HashMap;
    let scanned: Vec<ScannedSegment> = found.segments.iter().map(|(_, s)| s.clone()).collect();
    let outcomes: Vec<Outcome> = found.journals.iter().flat_map(|(_, o)| o.iter().copied()).collect();
    let plan = plan(&scanned, &outcomes);
    let shards: HashSet<u32> = found.file_seqs.keys().copied().chain(outcomes.iter().map(|o| o.seg_shard)).collect();
    let next_seq = shards
        .into_iter()
        .map(|shard| {
            let seqs = found.file_seqs.get(&shard).map_or(&[][..], Vec::as_slice);
            (shard, next_seq(seqs, &outcomes, shard))
        })
        .collect();
    let by_key: HashMap<(u32, u64), S> = found.segments.into_iter().map(|(h, s)| ((s.shard, s.seq), h)).collect();
    let mut messages = Vec::with_capacity(plan.pending.len());
    for p in plan.pending {
        let seg = by_key[&(p.seg_shard, p.seg_seq)].clone();
        seg.life().add_live(p.pending.len() as u64);
        messages.push((seg, p.offset, p.pending));
    }
    let delete_segments = by_key.values().filter(|s| s.life().seal()).cloned().collect();
    let (mut old_journals, mut delete_journals) = (Vec::new(), Vec::new());
    for (id, entries) in found.journals {
        let mut refs = crate::life::JournalRefs::default();
        // Segments to delete count as gone: the caller deletes them before these journals.
        for o in entries {
            if let Some(seg) = by_key.get(&(o.seg_shard, o.seg_seq)).filter(|s| !s.life().is_deleted()) {
                refs.reference(o.seg_shard, o.seg_seq, seg.life());
            }
        }
        if refs.all_gone() {
            delete_journals.push(id);
        } else {
            old_journals.push(crate::machine::OldJournal { id, refs });
        }
    }
    Recovery { messages, old_journals, next_seq, delete_segments, delete_journals }
}

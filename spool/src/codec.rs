//! Byte codec for segment and journal files. The layout is documented in `spool/FORMAT.md`;
//! offsets here are built from the previous field so code and document agree.
//! All integers are little-endian.

use std::net::{IpAddr, Ipv6Addr};

/// Version 2 added the optional job id after a record's data; version 3 the tagged extras
/// after it (HELO name, AUTH user, DSN and SMTPUTF8 parameters). Older files are read the same
/// way (they never have them); an older sluice refuses newer files instead of misreading them.
pub const FORMAT_VERSION: u32 = 3;
/// The oldest version this sluice reads.
pub const FORMAT_VERSION_MIN: u32 = 1;
pub const SEGMENT_MAGIC: [u8; 8] = *b"SLUSEG\0\0";
pub const JOURNAL_MAGIC: [u8; 8] = *b"SLUJNL\0\0";
/// File header: magic(8) version(4) shard(4) seq(8) reserved(4) crc32c(4) of bytes 0..28.
pub const FILE_HEADER_BYTES: usize = 32;
pub const RECORD_MAGIC: u32 = 0x4352_4c53; // "SLRC"
/// Record header: magic(4) payload_len(4) crc32c(4).
pub const RECORD_HEADER_BYTES: usize = 12;
/// A record's payload is bounded so a torn length can never send recovery past the file.
pub const RECORD_PAYLOAD_BYTES_MAX: usize = 1 << 30;
pub const ADDRESS_BYTES_MAX: usize = u16::MAX as usize;
pub const RECIPIENTS_MAX: usize = 100_000;
/// Journal entry: crc32c(4) kind(1) pad(3) seg_shard(4) rcpt(4) seg_seq(8) offset(8).
pub const OUTCOME_BYTES: usize = 32;

// Each field's offset is the previous field's plus its size (FORMAT.md's tables).
const HDR_MAGIC: usize = 0;
const HDR_VERSION: usize = HDR_MAGIC + 8;
const HDR_SHARD: usize = HDR_VERSION + 4;
const HDR_SEQ: usize = HDR_SHARD + 4;
const HDR_RESERVED: usize = HDR_SEQ + 8;
const HDR_CRC: usize = HDR_RESERVED + 4;
const _: () = assert!(HDR_CRC + 4 == FILE_HEADER_BYTES);

const REC_MAGIC: usize = 0;
const REC_LEN: usize = REC_MAGIC + 4;
const REC_CRC: usize = REC_LEN + 4;
const _: () = assert!(REC_CRC + 4 == RECORD_HEADER_BYTES);

const OUT_CRC: usize = 0;
const OUT_KIND: usize = OUT_CRC + 4;
const OUT_SHARD: usize = OUT_KIND + 4; // kind(1), then 3 bytes of padding
const OUT_RCPT: usize = OUT_SHARD + 4;
const OUT_SEQ: usize = OUT_RCPT + 4;
const OUT_OFFSET: usize = OUT_SEQ + 8;
const _: () = assert!(OUT_OFFSET + 8 == OUTCOME_BYTES);

const _: () = assert!(FILE_HEADER_BYTES % 8 == 0 && OUTCOME_BYTES % 8 == 0);

fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(buf[at..at + 8].try_into().expect("8 bytes"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Segment,
    Journal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileHeader {
    pub kind: FileKind,
    pub shard: u32,
    pub seq: u64,
}

pub fn encode_file_header(h: FileHeader) -> [u8; FILE_HEADER_BYTES] {
    let mut out = [0u8; FILE_HEADER_BYTES];
    out[HDR_MAGIC..HDR_VERSION].copy_from_slice(match h.kind {
        FileKind::Segment => &SEGMENT_MAGIC,
        FileKind::Journal => &JOURNAL_MAGIC,
    });
    out[HDR_VERSION..HDR_SHARD].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    out[HDR_SHARD..HDR_SEQ].copy_from_slice(&h.shard.to_le_bytes());
    out[HDR_SEQ..HDR_RESERVED].copy_from_slice(&h.seq.to_le_bytes());
    let crc = crc32c::crc32c(&out[..HDR_CRC]);
    out[HDR_CRC..].copy_from_slice(&crc.to_le_bytes());
    out
}

/// True when the header's checksum holds (a header torn by a crash fails it).
pub fn file_header_intact(buf: &[u8]) -> bool {
    buf.len() >= FILE_HEADER_BYTES && crc32c::crc32c(&buf[..HDR_CRC]) == u32_at(buf, HDR_CRC)
}

pub fn decode_file_header(buf: &[u8]) -> Result<FileHeader, String> {
    if buf.len() < FILE_HEADER_BYTES {
        return Err("file shorter than its header".into());
    }
    if !file_header_intact(buf) {
        return Err("file header checksum mismatch".into());
    }
    let kind = match &buf[HDR_MAGIC..HDR_VERSION] {
        m if m == SEGMENT_MAGIC => FileKind::Segment,
        m if m == JOURNAL_MAGIC => FileKind::Journal,
        _ => return Err("not a sluice spool file (bad magic)".into()),
    };
    let version = u32_at(buf, HDR_VERSION);
    if !(FORMAT_VERSION_MIN..=FORMAT_VERSION).contains(&version) {
        return Err(format!(
            "spool format version {version}, this sluice reads {FORMAT_VERSION_MIN} to {FORMAT_VERSION}"
        ));
    }
    Ok(FileHeader { kind, shard: u32_at(buf, HDR_SHARD), seq: u64_at(buf, HDR_SEQ) })
}

/// The envelope of one accepted message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope<'a> {
    pub queued_unix_ms: u64,
    pub client_ip: IpAddr,
    pub mail_from: &'a str,
    pub envid: &'a str,
    pub vmta: &'a str,
    pub recipients: Vec<&'a str>,
    /// The job (`x-job:` header) the message belongs to; empty for none. Written after the
    /// data, and only when set.
    pub job_id: &'a str,
    /// What else the injection said (version 3), written after the job id when any is set.
    pub extras: Extras<'a>,
}

/// Flags of `Extras`.
pub mod flags {
    /// Injected over HTTP (`srcType` api), not SMTP.
    pub const API: u8 = 1;
    /// `MAIL ... SMTPUTF8` (RFC 6531): UTF-8 addresses or headers.
    pub const SMTPUTF8: u8 = 2;
    /// `RET=FULL` (RFC 3461 §4.3): a DSN returns the whole message.
    pub const RET_FULL: u8 = 4;
    /// `RET=HDRS`: a DSN returns the headers only.
    pub const RET_HDRS: u8 = 8;
    /// `BODY=8BITMIME` (RFC 6152).
    pub const BODY_8BIT: u8 = 16;
    /// `verp-default`: each recipient is sent with its own VERP return path.
    pub const VERP: u8 = 32;
}

/// A recipient's DSN parameters: `NOTIFY=` bits (their meaning is the engine's:
/// `sluice_engine::sched::notify`) and `ORCPT=` as given (`rfc822;a@b.example`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RcptDsn<'a> {
    /// Index into `Envelope::recipients`.
    pub index: u32,
    pub notify: u8,
    pub orcpt: &'a str,
}

/// The optional parts of an envelope (format version 3), each a tagged field after the job
/// id; a reader skips tags it does not know.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extras<'a> {
    /// The client's EHLO/HELO name (`srcMta` is `helo (ip)`).
    pub helo: &'a str,
    /// The SMTP AUTH user who injected it (`rcvSmtpUser`).
    pub auth_user: &'a str,
    /// `flags::*`.
    pub flags: u8,
    /// Recipients that came with DSN parameters.
    pub rcpt_dsn: Vec<RcptDsn<'a>>,
}

impl<'a> Extras<'a> {
    pub fn is_empty(&self) -> bool {
        self.helo.is_empty() && self.auth_user.is_empty() && self.flags == 0 && self.rcpt_dsn.is_empty()
    }

    /// The DSN parameters of recipient `index`, when it had any.
    pub fn rcpt(&self, index: u32) -> Option<RcptDsn<'a>> {
        self.rcpt_dsn.iter().find(|r| r.index == index).copied()
    }
}

const TAG_HELO: u8 = 1;
const TAG_AUTH_USER: u8 = 2;
const TAG_FLAGS: u8 = 3;
const TAG_RCPT_DSN: u8 = 4;

fn ip_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn ip_from(bytes: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(bytes);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// Payload bytes for an envelope (without the message data).
pub fn envelope_bytes(env: &Envelope) -> usize {
    8 + 16
        + 2
        + env.mail_from.len()
        + 2
        + env.envid.len()
        + 2
        + env.vmta.len()
        + 4
        + env.recipients.iter().map(|r| 2 + r.len()).sum::<usize>()
        + 4
}

/// Bytes after the data: the job id (length-prefixed) when there is one or when extras
/// follow, then each extra as tag(1) length(2) value.
pub fn encode_message_tail(env: &Envelope) -> Vec<u8> {
    let x = &env.extras;
    // Each is written with a u16 length (an extra's value takes up to 5 bytes more).
    for s in [env.job_id, x.helo, x.auth_user].iter().chain(x.rcpt_dsn.iter().map(|r| &r.orcpt)) {
        assert!(s.len() <= ADDRESS_BYTES_MAX - 5);
    }
    if env.job_id.is_empty() && x.is_empty() {
        return Vec::new();
    }
    let mut tail = Vec::with_capacity(2 + env.job_id.len() + 16);
    tail.extend_from_slice(&(env.job_id.len() as u16).to_le_bytes());
    tail.extend_from_slice(env.job_id.as_bytes());
    let mut field = |tag: u8, value: &[&[u8]]| {
        let len: usize = value.iter().map(|v| v.len()).sum();
        tail.push(tag);
        tail.extend_from_slice(&(len as u16).to_le_bytes());
        for v in value {
            tail.extend_from_slice(v);
        }
    };
    if !x.helo.is_empty() {
        field(TAG_HELO, &[x.helo.as_bytes()]);
    }
    if !x.auth_user.is_empty() {
        field(TAG_AUTH_USER, &[x.auth_user.as_bytes()]);
    }
    if x.flags != 0 {
        field(TAG_FLAGS, &[&[x.flags]]);
    }
    for r in &x.rcpt_dsn {
        field(TAG_RCPT_DSN, &[&r.index.to_le_bytes(), &[r.notify], r.orcpt.as_bytes()]);
    }
    tail
}

/// Reads the extras after the job id; unknown tags are skipped.
fn decode_extras<'a>(r: &mut Reader<'a>, end: usize) -> Option<Extras<'a>> {
    let mut x = Extras::default();
    while r.at < end {
        let tag = r.take(1)?[0];
        let len = r.u16()? as usize;
        let value = r.take(len)?;
        match tag {
            TAG_HELO => x.helo = std::str::from_utf8(value).ok()?,
            TAG_AUTH_USER => x.auth_user = std::str::from_utf8(value).ok()?,
            TAG_FLAGS => x.flags = *value.first()?,
            TAG_RCPT_DSN if value.len() >= 5 => x.rcpt_dsn.push(RcptDsn {
                index: u32::from_le_bytes(value[..4].try_into().ok()?),
                notify: value[4],
                orcpt: std::str::from_utf8(&value[5..]).ok()?,
            }),
            _ => {}
        }
    }
    Some(x)
}

/// Appends one message record (header + envelope + data) to `out`. `data` is the message
/// in SMTP transparency form (RFC 5321 §4.5.2: dot-stuffed, CRLF lines, without the final
/// `.CRLF`), so delivery sends it straight from the segment.
pub fn encode_message(env: &Envelope, data: &[u8], out: &mut Vec<u8>) {
    let tail = encode_message_tail(env);
    let start = out.len();
    push_head(env, data.len(), tail.len(), out);
    out.extend_from_slice(data);
    out.extend_from_slice(&tail);
    let crc = crc32c::crc32c(&out[start + RECORD_HEADER_BYTES..]);
    out[start + REC_CRC..start + RECORD_HEADER_BYTES].copy_from_slice(&crc.to_le_bytes());
}

/// The record header (its checksum left zero) and the envelope, up to and with the data's
/// length, for data and a tail of these lengths.
fn push_head(env: &Envelope, data_len: usize, tail_len: usize, out: &mut Vec<u8>) {
    assert!(env.recipients.len() <= RECIPIENTS_MAX && !env.recipients.is_empty());
    for s in [env.mail_from, env.envid, env.vmta].iter().chain(env.recipients.iter()) {
        assert!(s.len() <= ADDRESS_BYTES_MAX - 5);
    }
    let envelope_len = envelope_bytes(env);
    let payload_len = envelope_len + data_len + tail_len;
    assert!(payload_len <= RECORD_PAYLOAD_BYTES_MAX);
    out.reserve(RECORD_HEADER_BYTES + payload_len);
    let start = out.len();
    out.extend_from_slice(&RECORD_MAGIC.to_le_bytes());
    out.extend_from_slice(&(payload_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]); // crc, filled by the caller
    out.extend_from_slice(&env.queued_unix_ms.to_le_bytes());
    out.extend_from_slice(&ip_bytes(env.client_ip));
    for s in [env.mail_from, env.envid, env.vmta] {
        out.extend_from_slice(&(s.len() as u16).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    out.extend_from_slice(&(env.recipients.len() as u32).to_le_bytes());
    for r in &env.recipients {
        out.extend_from_slice(&(r.len() as u16).to_le_bytes());
        out.extend_from_slice(r.as_bytes());
    }
    out.extend_from_slice(&(data_len as u32).to_le_bytes());
    assert_eq!(out.len() - start, RECORD_HEADER_BYTES + envelope_len);
}

/// The record header and envelope for `data` (the tail, from `encode_message_tail`, follows
/// the data), with the checksum covering all three, so the runtime can write
/// `[head, data, tail]` with one vectored write and no copy of the data.
pub fn encode_message_head(env: &Envelope, data: &[u8]) -> Vec<u8> {
    encode_message_parts(env, data).0
}

/// `encode_message_head` and `encode_message_tail` together (the tail encoded once).
pub fn encode_message_parts(env: &Envelope, data: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let tail = encode_message_tail(env);
    let mut head = Vec::with_capacity(RECORD_HEADER_BYTES + envelope_bytes(env));
    push_head(env, data.len(), tail.len(), &mut head);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&head[RECORD_HEADER_BYTES..]), data);
    let crc = crc32c::crc32c_append(crc, &tail);
    head[REC_CRC..RECORD_HEADER_BYTES].copy_from_slice(&crc.to_le_bytes());
    (head, tail)
}

/// A decoded message record, borrowing from the segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageView<'a> {
    pub envelope: Envelope<'a>,
    pub data: &'a [u8],
}

// Returned by value and matched at once: boxing the view would allocate on every decode.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A whole, checksummed record and its total length in bytes.
    Record(MessageView<'a>, usize),
    /// Zeroes where the next record would start: the clean end of the written part.
    End,
    /// A record that is cut short or fails its checksum: a write torn by a crash.
    Torn,
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.buf.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn str16(&mut self) -> Option<&'a str> {
        let n = self.u16()? as usize;
        std::str::from_utf8(self.take(n)?).ok()
    }
    fn skip16(&mut self) -> Option<()> {
        let n = self.u16()? as usize;
        self.take(n).map(drop)
    }
}

/// Decodes the record starting at `buf[0]`, its checksum verified (recovery).
pub fn decode_message(buf: &[u8]) -> Decoded<'_> {
    decode(buf, true)
}

/// Decodes a record already verified: one this process wrote and saw durable, or one
/// recovery checked. The delivery path reads a message's envelope and data several times;
/// the checksum over the whole message is not paid each time.
pub fn decode_verified_message(buf: &[u8]) -> Decoded<'_> {
    decode(buf, false)
}

/// The bytes of the record starting with `header` (its first `RECORD_HEADER_BYTES`), header
/// included, as its header says.
pub fn record_bytes(header: &[u8]) -> Option<usize> {
    Some(RECORD_HEADER_BYTES + u32_at(header.get(..RECORD_HEADER_BYTES)?, REC_LEN) as usize)
}

/// Parts of a verified record, read without decoding the rest (no recipient list built):
/// the delivery path asks for one part at a time, many times a message.
pub mod part {
    use super::*;

    fn payload(buf: &[u8]) -> Option<Reader<'_>> {
        let len = u32_at(buf.get(..RECORD_HEADER_BYTES)?, REC_LEN) as usize;
        Some(Reader { buf: buf.get(RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + len)?, at: 0 })
    }

    /// The fields before the recipients, and a reader past them.
    fn after_recipients(buf: &[u8]) -> Option<(Front<'_>, Reader<'_>)> {
        let mut r = payload(buf)?;
        let front = read_front(&mut r)?;
        for _ in 0..r.u32()? {
            r.skip16()?;
        }
        Some((front, r))
    }

    /// The client's address and the envelope sender.
    pub fn origin(buf: &[u8]) -> Option<(IpAddr, &str)> {
        read_front(&mut payload(buf)?).map(|f| (f.client_ip, f.mail_from))
    }

    /// The message data (transparency form).
    pub fn data(buf: &[u8]) -> Option<&[u8]> {
        let (_, mut r) = after_recipients(buf)?;
        let n = r.u32()? as usize;
        r.take(n)
    }

    /// The client's address, the envelope sender, the DSN envelope id and the extras: what
    /// an accounting row takes of the message, in one read.
    pub fn summary(buf: &[u8]) -> Option<(IpAddr, &str, &str, Extras<'_>)> {
        let (front, mut r) = after_recipients(buf)?;
        let (_, _, extras) = read_rest(&mut r)?;
        Some((front.client_ip, front.mail_from, front.envid, extras))
    }

    /// The DSN envelope id, the job id and the extras.
    pub fn tail(buf: &[u8]) -> Option<(&str, &str, Extras<'_>)> {
        let (front, mut r) = after_recipients(buf)?;
        let (_, job_id, extras) = read_rest(&mut r)?;
        Some((front.envid, job_id, extras))
    }
}

/// A record's fields before the recipients, in their order on disk.
struct Front<'a> {
    queued_unix_ms: u64,
    client_ip: IpAddr,
    mail_from: &'a str,
    envid: &'a str,
    vmta: &'a str,
}

fn read_front<'a>(r: &mut Reader<'a>) -> Option<Front<'a>> {
    Some(Front {
        queued_unix_ms: r.u64()?,
        client_ip: ip_from(r.take(16)?.try_into().ok()?),
        mail_from: r.str16()?,
        envid: r.str16()?,
        vmta: r.str16()?,
    })
}

/// A record's fields after the recipients: the data, the job id and the extras.
fn read_rest<'a>(r: &mut Reader<'a>) -> Option<(&'a [u8], &'a str, Extras<'a>)> {
    let data_len = r.u32()? as usize;
    let data = r.take(data_len)?;
    // Version 2: an optional job id after the data; version 3: extras after it.
    let end = r.buf.len();
    let job_id = if r.at < end { r.str16()? } else { "" };
    Some((data, job_id, decode_extras(r, end)?))
}

fn decode(buf: &[u8], verify: bool) -> Decoded<'_> {
    if buf.len() < RECORD_HEADER_BYTES {
        return if buf.iter().all(|&b| b == 0) { Decoded::End } else { Decoded::Torn };
    }
    let magic = u32_at(buf, REC_MAGIC);
    if magic == 0 {
        return Decoded::End;
    }
    let payload_len = u32_at(buf, REC_LEN) as usize;
    if magic != RECORD_MAGIC || payload_len > RECORD_PAYLOAD_BYTES_MAX {
        return Decoded::Torn;
    }
    let crc = u32_at(buf, REC_CRC);
    let Some(payload) = buf.get(RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + payload_len) else {
        return Decoded::Torn;
    };
    if verify && crc32c::crc32c(payload) != crc {
        return Decoded::Torn;
    }
    match decode_payload(payload) {
        Some(view) => Decoded::Record(view, RECORD_HEADER_BYTES + payload_len),
        None => Decoded::Torn,
    }
}

fn decode_payload(payload: &[u8]) -> Option<MessageView<'_>> {
    let mut r = Reader { buf: payload, at: 0 };
    let Front { queued_unix_ms, client_ip, mail_from, envid, vmta } = read_front(&mut r)?;
    let count = r.u32()? as usize;
    if count == 0 || count > RECIPIENTS_MAX {
        return None;
    }
    let mut recipients = Vec::with_capacity(count);
    for _ in 0..count {
        recipients.push(r.str16()?);
    }
    let (data, job_id, extras) = read_rest(&mut r)?;
    if r.at != payload.len() {
        return None;
    }
    let envelope = Envelope { queued_unix_ms, client_ip, mail_from, envid, vmta, recipients, job_id, extras };
    Some(MessageView { envelope, data })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeKind {
    /// Delivered, bounced or expired: the recipient needs no more work.
    Final = 1,
}

/// One journal entry: recipient `rcpt` of the message at `offset` in segment
/// (`seg_shard`, `seg_seq`) reached an outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Outcome {
    pub seg_shard: u32,
    pub seg_seq: u64,
    pub offset: u64,
    pub rcpt: u32,
}

pub fn encode_outcome(o: &Outcome) -> [u8; OUTCOME_BYTES] {
    let mut out = [0u8; OUTCOME_BYTES];
    out[OUT_KIND] = OutcomeKind::Final as u8;
    out[OUT_SHARD..OUT_RCPT].copy_from_slice(&o.seg_shard.to_le_bytes());
    out[OUT_RCPT..OUT_SEQ].copy_from_slice(&o.rcpt.to_le_bytes());
    out[OUT_SEQ..OUT_OFFSET].copy_from_slice(&o.seg_seq.to_le_bytes());
    out[OUT_OFFSET..].copy_from_slice(&o.offset.to_le_bytes());
    let crc = crc32c::crc32c(&out[OUT_KIND..]);
    out[OUT_CRC..OUT_KIND].copy_from_slice(&crc.to_le_bytes());
    out
}

/// `None` for a zeroed (never written) or torn entry.
pub fn decode_outcome(buf: &[u8; OUTCOME_BYTES]) -> Option<Outcome> {
    if buf[OUT_KIND] != OutcomeKind::Final as u8 {
        return None;
    }
    if crc32c::crc32c(&buf[OUT_KIND..]) != u32_at(buf, OUT_CRC) {
        return None;
    }
    Some(Outcome {
        seg_shard: u32_at(buf, OUT_SHARD),
        rcpt: u32_at(buf, OUT_RCPT),
        seg_seq: u64_at(buf, OUT_SEQ),
        offset: u64_at(buf, OUT_OFFSET),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `FORMAT.md` says the version the code writes and documents every extra's tag and flag.
    #[test]
    fn the_format_document_matches_the_code() {
        let doc = include_str!("../FORMAT.md");
        assert!(doc.starts_with(&format!("# sluice spool format (version {FORMAT_VERSION})")), "the title's version");
        assert!(doc.contains(&format!("| 8 | 4 | format version ({FORMAT_VERSION};")), "the header's version");
        for tag in [TAG_HELO, TAG_AUTH_USER, TAG_FLAGS, TAG_RCPT_DSN] {
            assert!(doc.contains(&format!("\n| {tag} | ")), "tag {tag} documented");
        }
        use flags::*;
        for flag in [API, SMTPUTF8, RET_FULL, RET_HDRS, BODY_8BIT, VERP] {
            assert!(doc.contains(&format!(" {flag} ")), "flag {flag} documented");
        }
    }

    fn env() -> Envelope<'static> {
        Envelope {
            queued_unix_ms: 1_700_000_000_000,
            client_ip: "127.0.0.1".parse().unwrap(),
            mail_from: "a@b.test",
            envid: "",
            vmta: "",
            recipients: vec!["x@y.test", "z@y.test"],
            job_id: "",
            extras: Extras::default(),
        }
    }

    /// Version 3 extras ride after the job id (with an empty job id when there is none), and
    /// a tag this version does not know is skipped.
    #[test]
    fn extras_round_trip_and_unknown_tags_are_skipped() {
        let extras = Extras {
            helo: "client.example",
            auth_user: "injector",
            flags: flags::SMTPUTF8 | flags::RET_HDRS,
            rcpt_dsn: vec![RcptDsn { index: 1, notify: 6, orcpt: "rfc822;z@y.test" }],
        };
        let data = b"Subject: hi\r\n\r\nbody\r\n";
        for job_id in ["", "job-7"] {
            let env = Envelope { job_id, extras: extras.clone(), ..env() };
            let mut whole = Vec::new();
            encode_message(&env, data, &mut whole);
            let mut parts = encode_message_head(&env, data);
            parts.extend_from_slice(data);
            parts.extend_from_slice(&encode_message_tail(&env));
            assert_eq!(parts, whole);
            match decode_message(&whole) {
                Decoded::Record(view, _) => assert_eq!(view.envelope, env),
                other => panic!("{other:?}"),
            }
        }
        // A future tag (99) between known ones: skipped, the rest still read.
        let env = Envelope { extras: extras.clone(), ..env() };
        let mut tail = encode_message_tail(&env);
        tail.extend_from_slice(&[99, 3, 0, b'x', b'y', b'z']);
        let mut head = encode_message_head(&Envelope { extras: Extras::default(), ..env.clone() }, data);
        let payload_len = head.len() - RECORD_HEADER_BYTES + data.len() + tail.len();
        head[REC_LEN..REC_CRC].copy_from_slice(&(payload_len as u32).to_le_bytes());
        let mut rec = head;
        rec.extend_from_slice(data);
        rec.extend_from_slice(&tail);
        let crc = crc32c::crc32c(&rec[RECORD_HEADER_BYTES..]);
        rec[REC_CRC..RECORD_HEADER_BYTES].copy_from_slice(&crc.to_le_bytes());
        match decode_message(&rec) {
            Decoded::Record(view, _) => assert_eq!(view.envelope.extras, extras),
            other => panic!("{other:?}"),
        }
    }

    /// The part readers the delivery path uses agree with the whole decode, with and without
    /// a job id and extras, and refuse a cut record.
    #[test]
    fn parts_read_what_the_whole_decode_reads() {
        let extras = Extras {
            helo: "client.example",
            auth_user: "",
            flags: flags::API,
            rcpt_dsn: vec![RcptDsn { index: 0, notify: 2, orcpt: "rfc822;x@y.test" }],
        };
        let data = b"Subject: hi\r\n\r\nbody\r\n..dot\r\n";
        for (job_id, extras, envid) in [("", Extras::default(), ""), ("job-7", extras, "ENV-1")] {
            let env = Envelope { job_id, extras, envid, client_ip: "192.0.2.7".parse().unwrap(), ..env() };
            let mut rec = Vec::new();
            encode_message(&env, data, &mut rec);
            rec.extend_from_slice(&[0; 64]); // the next record's zeroes
            let Decoded::Record(view, _) = decode_message(&rec) else { panic!("a record") };
            assert_eq!(part::data(&rec), Some(view.data));
            assert_eq!(part::origin(&rec), Some((view.envelope.client_ip, view.envelope.mail_from)));
            assert_eq!(part::tail(&rec), Some((env.envid, env.job_id, env.extras.clone())));
            let summary = (env.client_ip, env.mail_from, env.envid, env.extras.clone());
            assert_eq!(part::summary(&rec), Some(summary));
            let len = RECORD_HEADER_BYTES + u32_at(&rec, REC_LEN) as usize;
            assert_eq!(part::data(&rec[..len - 1]), None);
            assert_eq!(part::tail(&rec[..len - 1]), None);
            assert_eq!(part::summary(&rec[..len - 1]), None);
        }
    }

    #[test]
    fn job_id_rides_after_the_data_and_head_plus_tail_equal_the_whole() {
        let env = Envelope { job_id: "job-42", ..env() };
        let data = b"Subject: hi\r\n\r\nbody\r\n";
        let mut whole = Vec::new();
        encode_message(&env, data, &mut whole);
        let mut parts = encode_message_head(&env, data);
        parts.extend_from_slice(data);
        parts.extend_from_slice(&encode_message_tail(&env));
        assert_eq!(parts, whole, "the vectored write gives the same bytes");
        match decode_message(&whole) {
            Decoded::Record(view, _) => assert_eq!((view.envelope.job_id, view.data), ("job-42", &data[..])),
            other => panic!("{other:?}"),
        }
        // Version 1 records (no job id) still decode.
        let mut v1 = Vec::new();
        encode_message(&super::tests::env(), data, &mut v1);
        assert!(matches!(decode_message(&v1), Decoded::Record(v, _) if v.envelope.job_id.is_empty()));
    }

    #[test]
    fn message_round_trip_and_torn_detection() {
        let mut buf = Vec::new();
        encode_message(&env(), b"Subject: hi\r\n\r\nbody\r\n", &mut buf);
        let len = buf.len();
        match decode_message(&buf) {
            Decoded::Record(view, n) => {
                assert_eq!(n, len);
                assert_eq!(view.envelope, env());
                assert_eq!(view.data, b"Subject: hi\r\n\r\nbody\r\n");
            }
            other => panic!("{other:?}"),
        }
        // Every strict prefix is torn (or, for an empty one, the end).
        for cut in 1..len {
            assert_eq!(decode_message(&buf[..cut]), Decoded::Torn, "cut at {cut}");
        }
        // Any flipped byte is caught by the checksum or the structure checks.
        for i in 0..len {
            let mut bad = buf.clone();
            bad[i] ^= 0x40;
            assert!(!matches!(decode_message(&bad), Decoded::Record(..)), "flip at {i}");
        }
        assert_eq!(decode_message(&[0u8; 64]), Decoded::End);
    }

    #[test]
    fn head_plus_data_equals_whole_record() {
        let data = b"Subject: hi\r\n\r\nbody\r\n";
        let mut whole = Vec::new();
        encode_message(&env(), data, &mut whole);
        let mut split = encode_message_head(&env(), data);
        split.extend_from_slice(data);
        assert_eq!(whole, split);
    }

    #[test]
    fn outcome_round_trip() {
        let o = Outcome { seg_shard: 3, seg_seq: 9, offset: 4096, rcpt: 2 };
        let bytes = encode_outcome(&o);
        assert_eq!(decode_outcome(&bytes), Some(o));
        let mut bad = bytes;
        bad[20] ^= 1;
        assert_eq!(decode_outcome(&bad), None);
        assert_eq!(decode_outcome(&[0; OUTCOME_BYTES]), None);
    }

    #[test]
    fn file_header_round_trip() {
        let h = FileHeader { kind: FileKind::Journal, shard: 1, seq: 77 };
        assert_eq!(decode_file_header(&encode_file_header(h)).unwrap(), h);
        assert!(decode_file_header(&[0; 32]).is_err());
    }
}

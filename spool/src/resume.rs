//! Where a write resumes after a short one. A socket send or a file write may take fewer bytes
//! than it was given; the rest goes in the next one. This is the one place that computes
//! what is left, for the shard's sockets (commands, replies, message bodies) and for the
//! spool's files alike, so a send can never restart from the wrong offset.

/// Progress through `total` bytes given as a list of parts (a gather write).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Resume {
    total: usize,
    done: usize,
}

impl Resume {
    pub fn new(total: usize) -> Resume {
        Resume { total, done: 0 }
    }

    /// A write of `parts` (all of them, from the first byte).
    pub fn of<const N: usize>(parts: [&[u8]; N]) -> Resume {
        Resume::new(parts.iter().map(|p| p.len()).sum())
    }

    /// `n` more bytes went out; returns whether everything has. A write never takes more
    /// than it was given: more means the bookkeeping is wrong, and sending on would put
    /// bytes on the wire twice (the 12.8 GB endless body of issue 18), so it panics.
    pub fn advance(&mut self, n: usize) -> bool {
        assert!(n <= self.left(), "a write reported {n} bytes with only {} left of {}", self.left(), self.total);
        self.done += n;
        self.is_done()
    }

    pub fn done(&self) -> usize {
        self.done
    }

    pub fn left(&self) -> usize {
        self.total - self.done
    }

    pub fn total(&self) -> usize {
        self.total
    }

    pub fn is_done(&self) -> bool {
        self.done == self.total
    }

    /// What is still to be written of `parts`, in order (parts already out are empty).
    pub fn rest<'a, const N: usize>(&self, parts: [&'a [u8]; N]) -> [&'a [u8]; N] {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        assert_eq!(total, self.total, "the parts changed under a write in progress");
        let mut skip = self.done;
        parts.map(|p| {
            let s = skip.min(p.len());
            skip -= s;
            &p[s..]
        })
    }
}

/// Bytes waiting to be sent from one buffer, with where the next send resumes (a protocol's
/// commands and replies). More bytes may be added at the end between sends, never while one
/// is in flight (the caller's one-operation-per-connection rule keeps that).
#[derive(Debug, Default)]
pub struct SendBuf {
    buf: Vec<u8>,
    done: usize,
}

impl SendBuf {
    /// What is still to be sent.
    pub fn rest(&self) -> &[u8] {
        &self.buf[self.done..]
    }

    pub fn is_empty(&self) -> bool {
        self.done == self.buf.len()
    }

    /// The buffer to append to.
    pub fn buf(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// `n` more bytes went out; returns whether everything has (the buffer then empties).
    /// More than was left is a bookkeeping bug that would send bytes twice: it panics.
    pub fn sent(&mut self, n: usize) -> bool {
        assert!(n <= self.buf.len() - self.done, "a send reported {n} bytes with {} left", self.buf.len() - self.done);
        self.done += n;
        if self.done == self.buf.len() {
            self.buf.clear();
            self.done = 0;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_split_of_short_writes_sends_each_byte_once() {
        let (a, b, c) = (&b"header"[..], &b"the body of it"[..], &b".\r\n"[..]);
        let whole = [a, b, c].concat();
        // Every sequence of write sizes 1..=5 repeated: the concatenation of what each write
        // was given (its first `n` bytes) is the whole, in order.
        for step in 1..=5 {
            let mut r = Resume::of([a, b, c]);
            let mut wire = Vec::new();
            while !r.is_done() {
                let rest = r.rest([a, b, c]);
                let offered: Vec<u8> = rest.concat();
                assert_eq!(offered.len(), r.left());
                let n = step.min(offered.len());
                wire.extend_from_slice(&offered[..n]);
                r.advance(n);
            }
            assert_eq!(wire, whole, "step {step}");
        }
    }

    #[test]
    fn a_send_buffer_resumes_and_takes_more_between_sends() {
        let mut b = SendBuf::default();
        b.extend(b"250 ok\r\n");
        assert!(!b.sent(3));
        assert_eq!(b.rest(), b" ok\r\n");
        b.extend(b"221 bye\r\n");
        assert!(!b.sent(5));
        assert_eq!(b.rest(), b"221 bye\r\n");
        assert!(b.sent(9) && b.is_empty());
    }

    #[test]
    #[should_panic(expected = "a write reported")]
    fn more_than_was_left_is_a_bug() {
        let mut r = Resume::new(10);
        r.advance(6);
        r.advance(5);
    }
}

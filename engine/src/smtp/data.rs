//! The DATA receiver shared by the relay's inbound session and the benchmark sink: finds the
//! end of data (RFC 5321 §4.1.1.4) incrementally and hands the content on in transparency
//! form, without the terminating `.CRLF`.
//!
//! Only CRLF "." CRLF, where the first CRLF ends a line that itself began after CRLF, ends
//! the message. Bare CR or LF never does (SMTP smuggling, CVE-2023-51764 and relatives); they
//! are recorded so the caller can refuse the message. With `normalize_bare_lf` a bare LF is
//! taken as a line end and handed on as CRLF (sloppy injectors, Postfix's
//! `smtpd_forbid_bare_newline = normalize`); a lone "." line next to a bare LF is a smuggling
//! attempt all the same and recorded as one.

/// RFC 5321 §4.5.3.1.6: a text line is at most 1000 octets including CRLF.
pub const TEXT_LINE_BYTES_MAX: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Eom {
    LineStart,
    Dot,
    DotCr,
    Mid,
    MidCr,
    /// After a bare LF: a new line, but not one that may end the message.
    BareLineStart,
    /// A "." at the start of a line that followed a bare LF.
    BareDot,
}

const TERMINATOR: &[u8] = b".\r\n";

#[derive(Debug, Clone)]
pub struct DataScanner {
    eom: Eom,
    line_bytes: usize,
    /// Bytes of a possible terminator (".", ".\r") seen in earlier input and not yet emitted.
    carried: usize,
    /// Hand bare LF on as CRLF (else as it came).
    normalize_bare_lf: bool,
    /// A CR not followed by LF.
    pub bare_cr: bool,
    /// An LF not preceded by CR.
    pub bare_lf: bool,
    /// A line of a lone "." next to a bare LF: one of the published end-of-data smuggling
    /// forms (refused whatever the bare LF policy).
    pub smuggling: bool,
    pub long_line: bool,
    /// A NUL byte in the content (RFC 5322 §3.5 forbids it).
    pub nul: bool,
}

impl Default for DataScanner {
    fn default() -> Self {
        DataScanner::new(false)
    }
}

impl DataScanner {
    pub fn new(normalize_bare_lf: bool) -> Self {
        DataScanner {
            eom: Eom::LineStart,
            line_bytes: 0,
            carried: 0,
            normalize_bare_lf,
            bare_cr: false,
            bare_lf: false,
            smuggling: false,
            long_line: false,
            nul: false,
        }
    }

    /// Any bare CR or LF, whatever became of it.
    pub fn bare_newline(&self) -> bool {
        self.bare_cr || self.bare_lf
    }

    fn end_line(&mut self) {
        if self.line_bytes > TEXT_LINE_BYTES_MAX {
            self.long_line = true;
        }
        self.line_bytes = 0;
    }

    /// Scans `input`; content goes to `emit` (possibly in several pieces). Returns the bytes
    /// consumed and whether the end of data was reached (then nothing after it is consumed).
    pub fn scan(&mut self, input: &[u8], mut emit: impl FnMut(&[u8])) -> (usize, bool) {
        let mut i = 0;
        // input[start..] is what this input has not yet handed on.
        let mut start = 0;
        while i < input.len() {
            let b = input[i];
            i += 1;
            self.line_bytes += 1;
            let was_pending = matches!(self.eom, Eom::Dot | Eom::DotCr);
            let mut bare_lf = false;
            self.eom = match (self.eom, b) {
                (Eom::LineStart, b'.') => Eom::Dot,
                (Eom::BareLineStart, b'.') => Eom::BareDot,
                (Eom::Dot, b'\r') => Eom::DotCr,
                (Eom::DotCr, b'\n') => {
                    let in_chunk = TERMINATOR.len() - self.carried;
                    emit(&input[start..i - in_chunk]);
                    self.carried = 0;
                    self.end_line();
                    self.eom = Eom::LineStart;
                    return (i, true);
                }
                (Eom::MidCr, b'\n') => {
                    self.end_line();
                    Eom::LineStart
                }
                (Eom::MidCr | Eom::DotCr, _) => {
                    self.bare_cr = true;
                    if b == b'\r' {
                        Eom::MidCr
                    } else {
                        Eom::Mid
                    }
                }
                (Eom::BareDot, b'\r') => {
                    self.smuggling = true;
                    Eom::MidCr
                }
                (Eom::BareDot | Eom::Dot, b'\n') => {
                    self.smuggling = true;
                    bare_lf = true;
                    Eom::BareLineStart
                }
                (_, b'\r') => Eom::MidCr,
                (_, b'\n') => {
                    bare_lf = true;
                    Eom::BareLineStart
                }
                (_, 0) => {
                    self.nul = true;
                    Eom::Mid
                }
                _ => Eom::Mid,
            };
            if was_pending && !matches!(self.eom, Eom::Dot | Eom::DotCr) && self.carried > 0 {
                // Not a terminator after all: what earlier input held back is content, and
                // it precedes everything in this input.
                emit(&TERMINATOR[..self.carried]);
                self.carried = 0;
            }
            if bare_lf {
                self.bare_lf = true;
                self.end_line();
                if self.normalize_bare_lf {
                    emit(&input[start..i - 1]);
                    emit(b"\r\n");
                    start = i;
                }
            }
            if self.eom == Eom::Mid {
                // Fast path: skip the run of ordinary bytes up to the next CR, LF or NUL (SIMD).
                let run = memchr::memchr3(b'\r', b'\n', 0, &input[i..]).unwrap_or(input.len() - i);
                i += run;
                self.line_bytes += run;
            }
        }
        let pending = match self.eom {
            Eom::Dot => 1,
            Eom::DotCr => 2,
            _ => 0,
        };
        let withheld_here = pending - self.carried;
        emit(&input[start..input.len() - withheld_here]);
        self.carried = pending;
        (input.len(), false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_chunked(input: &[u8], chunk: usize) -> (Vec<u8>, Option<usize>, DataScanner) {
        scan_with(DataScanner::default(), input, chunk)
    }

    fn scan_with(mut s: DataScanner, input: &[u8], chunk: usize) -> (Vec<u8>, Option<usize>, DataScanner) {
        let mut out = Vec::new();
        let mut at = 0;
        while at < input.len() {
            let end = (at + chunk).min(input.len());
            let (used, done) = s.scan(&input[at..end], |c| out.extend_from_slice(c));
            at += used;
            if done {
                return (out, Some(at), s);
            }
        }
        (out, None, s)
    }

    #[test]
    fn every_chunking_gives_the_same_content_and_end() {
        let cases: &[(&[u8], &[u8], Option<usize>)] = &[
            (b"a\r\n.\r\nNEXT", b"a\r\n", Some(6)),
            (b".\r\n", b"", Some(3)),
            (b"..x\r\n.\r\n", b"..x\r\n", Some(8)),
            (b"a\r\n.\rb\r\n.\r\n", b"a\r\n.\rb\r\n", Some(11)),
            (b"a\r\n.x\r\n.\r\n", b"a\r\n.x\r\n", Some(10)),
            (b"a\n.\nb", b"a\n.\nb", None),
            (b"a\r\n.", b"a\r\n", None),
        ];
        for (input, content, end) in cases {
            for chunk in 1..=input.len() {
                let (out, got_end, _) = scan_chunked(input, chunk);
                assert_eq!((out.as_slice(), got_end), (*content, *end), "input {input:?} chunk {chunk}");
            }
        }
    }

    #[test]
    fn faults_are_recorded() {
        let (_, end, s) = scan_chunked(b"a\nb\r\n.\r\n", 3);
        assert_eq!((end, s.bare_newline(), s.long_line), (Some(8), true, false));
        let long = [vec![b'x'; 1200], b"\r\n.\r\n".to_vec()].concat();
        let (_, _, s) = scan_chunked(&long, 100);
        assert!(s.long_line && !s.bare_newline());
        let (_, end, s) = scan_chunked(b"a\x00b\r\n\x00.\r\n.\r\n", 3);
        assert_eq!((end, s.nul, s.bare_newline()), (Some(12), true, false), "NUL found, also at a line start");
    }

    /// Bare LF normalized to CRLF in any chunking; a lone "." next to a bare LF (every
    /// published smuggling form that uses one) is flagged and never ends the data.
    #[test]
    fn bare_lf_is_normalized_and_smuggling_dots_are_flagged() {
        // (input, content, end, bare LF, smuggling)
        type Case = (&'static [u8], &'static [u8], Option<usize>, bool, bool);
        let cases: &[Case] = &[
            (b"a\nb\n\r\n.\r\n", b"a\r\nb\r\n\r\n", Some(9), true, false),
            (b"a\n..b\nc\r\n.\r\n", b"a\r\n..b\r\nc\r\n", Some(12), true, false),
            (b"a\n.\nb\r\n.\r\n", b"a\r\n.\r\nb\r\n", Some(10), true, true),
            (b"a\n.\r\nb\r\n.\r\n", b"a\r\n.\r\nb\r\n", Some(11), true, true),
            (b"a\r\n.\nb\r\n.\r\n", b"a\r\n.\r\nb\r\n", Some(11), true, true),
            (b"a\r\nb\r\n.\r\n", b"a\r\nb\r\n", Some(9), false, false),
        ];
        for (input, content, end, bare, smuggling) in cases {
            for chunk in 1..=input.len() {
                let (out, got_end, s) = scan_with(DataScanner::new(true), input, chunk);
                let got = (out.as_slice(), got_end, s.bare_lf, s.smuggling);
                assert_eq!(got, (*content, *end, *bare, *smuggling), "input {input:?} chunk {chunk}");
            }
        }
    }
}

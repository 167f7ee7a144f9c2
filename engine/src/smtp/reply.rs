//! SMTP reply parsing (RFC 5321 §4.2): multi-line replies, enhanced status codes (RFC 3463).

/// Lines in one reply before we call the peer broken.
pub const REPLY_LINES_MAX: usize = 128;
/// Bytes of one reply line (RFC 5321 §4.5.3.1.5 says 512; peers exceed it).
pub const REPLY_LINE_BYTES_MAX: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// All lines' text joined by a space, without the codes.
    pub text: String,
}

impl Reply {
    pub fn new(code: u16, text: impl Into<String>) -> Self {
        Reply { code, text: text.into() }
    }
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }
    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }
    /// The enhanced status code leading the text (`5.1.1`), if any.
    pub fn enhanced(&self) -> Option<&str> {
        let first = self.text.split_ascii_whitespace().next()?;
        let mut parts = first.split('.');
        let class = parts.next()?;
        let ok = matches!(class, "2" | "4" | "5")
            && parts.clone().count() == 2
            && parts.all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()));
        ok.then_some(first)
    }
    /// `250 2.0.0 Ok` as one line, for accounting.
    pub fn line(&self) -> String {
        let mut out = String::with_capacity(4 + self.text.len());
        self.push_line(&mut out);
        out
    }

    /// `line` appended to `out` (a delivery row is built for every recipient).
    pub fn push_line(&self, out: &mut String) {
        use std::fmt::Write;
        let _ = write!(out, "{} {}", self.code, self.text);
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum ReplyError {
    Malformed,
    TooLong,
}

/// Parses one complete reply from the front of `buf`. `Ok(None)`: need more bytes.
pub fn parse_reply(buf: &[u8]) -> Result<Option<(Reply, usize)>, ReplyError> {
    let mut at = 0;
    let mut text = String::new();
    let mut code = None;
    for _ in 0..REPLY_LINES_MAX {
        let Some(lf) = buf[at..].iter().position(|&b| b == b'\n') else {
            return if buf.len() - at > REPLY_LINE_BYTES_MAX { Err(ReplyError::TooLong) } else { Ok(None) };
        };
        let line = &buf[at..at + lf];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        at += lf + 1;
        // RFC 5321 §4.2: a reply code is three digits, the first 2-5 (1 is not used in SMTP
        // but is well formed), the second 0-5.
        if line.len() < 3
            || !line[..3].iter().all(u8::is_ascii_digit)
            || !(b'1'..=b'5').contains(&line[0])
            || line[1] > b'5'
        {
            return Err(ReplyError::Malformed);
        }
        let this: u16 = std::str::from_utf8(&line[..3]).expect("digits").parse().expect("digits");
        if *code.get_or_insert(this) != this {
            return Err(ReplyError::Malformed);
        }
        let sep = line.get(3).copied().unwrap_or(b' ');
        let body = String::from_utf8_lossy(line.get(4..).unwrap_or_default());
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str(body.trim_end());
        match sep {
            b' ' => return Ok(Some((Reply { code: this, text }, at))),
            b'-' => continue,
            _ => return Err(ReplyError::Malformed),
        }
    }
    Err(ReplyError::TooLong)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_as_one_line() {
        assert_eq!(Reply::new(250, "2.0.0 Ok: queued").line(), "250 2.0.0 Ok: queued");
        assert_eq!(Reply::new(421, "").line(), "421 ");
        assert_eq!(Reply::new(7, "odd").line(), "7 odd");
        let mut diag = "smtp;".to_string();
        Reply::new(550, "5.1.1 no such user").push_line(&mut diag);
        assert_eq!(diag, "smtp;550 5.1.1 no such user");
    }

    #[test]
    fn replies() {
        assert_eq!(parse_reply(b"250 ok\r\n"), Ok(Some((Reply::new(250, "ok"), 8))));
        assert_eq!(parse_reply(b"250-a\r\n250 b\r\nxx"), Ok(Some((Reply::new(250, "a b"), 14))));
        assert_eq!(parse_reply(b"250-a\r\n25"), Ok(None));
        assert_eq!(parse_reply(b"250\r\n"), Ok(Some((Reply::new(250, ""), 5))));
        assert_eq!(parse_reply(b"abc\r\n"), Err(ReplyError::Malformed));
        assert_eq!(parse_reply(b"021 x\r\n"), Err(ReplyError::Malformed), "found by fuzzing: code 21");
        assert_eq!(parse_reply(b"260 x\r\n"), Err(ReplyError::Malformed), "second digit past 5");
        assert_eq!(parse_reply(b"699 x\r\n"), Err(ReplyError::Malformed));
        assert_eq!(parse_reply(b"250-a\r\n251 b\r\n"), Err(ReplyError::Malformed));
        assert_eq!(Reply::new(550, "5.1.1 no such user").enhanced(), Some("5.1.1"));
        assert_eq!(Reply::new(550, "no such user").enhanced(), None);
    }
}

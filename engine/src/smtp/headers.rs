//! Header access on a message held in transparency form (CRLF lines): find and optionally
//! remove a header field, continuation lines included (RFC 5322 §2.2.3).

/// Header bytes searched; a header section longer than this is not examined.
pub const HEADER_SECTION_BYTES_MAX: usize = 256 * 1024;

/// The unfolded value of the first `name:` field in the header section, removing every
/// `name:` field when `remove` is set.
pub fn take_header(data: &mut Vec<u8>, name: &str, remove: bool) -> Option<String> {
    let value = header_value(data, name);
    if remove {
        // Later occurrences go too; the first one's value is the answer.
        while let Some((at, field_end)) = header_section_end(data).and_then(|end| find_field(data, end, name)) {
            data.drain(at..field_end);
        }
    }
    value
}

/// The unfolded value of the first `name:` field in the header section.
pub fn header_value(data: &[u8], name: &str) -> Option<String> {
    let end = header_section_end(data)?;
    let (at, field_end) = find_field(data, end, name)?;
    let raw = String::from_utf8_lossy(&data[at + name.len() + 1..field_end]);
    Some(raw.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// The first `name:` field before `end`: its start and its end (past continuation lines).
fn find_field(data: &[u8], end: usize, name: &str) -> Option<(usize, usize)> {
    let mut at = 0;
    while at < end {
        let field_end = field_end(data, at, end);
        let field = &data[at..field_end];
        let matches = field.len() > name.len()
            && field[name.len()] == b':'
            && field[..name.len()].eq_ignore_ascii_case(name.as_bytes());
        if matches {
            return Some((at, field_end));
        }
        at = field_end;
    }
    None
}

/// Offset of the blank line that ends the header section (the header bytes are before it).
fn header_section_end(data: &[u8]) -> Option<usize> {
    if data.starts_with(b"\r\n") {
        return Some(0);
    }
    let limit = data.len().min(HEADER_SECTION_BYTES_MAX);
    memchr::memmem::find(&data[..limit], b"\r\n\r\n").map(|i| i + 2)
}

/// End of the field starting at `at`: past its CRLF and any continuation lines.
fn field_end(data: &[u8], at: usize, end: usize) -> usize {
    let mut i = at;
    loop {
        match memchr::memmem::find(&data[i..end], b"\r\n") {
            Some(k) => i += k + 2,
            None => return end,
        }
        if i >= end || !matches!(data[i], b' ' | b'\t') {
            return i;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_and_removes_folded_fields_case_insensitively() {
        let mut m = b"Received: x\r\nX-Virtual-MTA: mta1\r\nSubject: a\r\n b\r\nx-virtual-mta: second\r\n\r\nX-Virtual-MTA: body\r\n".to_vec();
        assert_eq!(take_header(&mut m.clone(), "subject", false).as_deref(), Some("a b"));
        assert_eq!(header_value(&m, "SUBJECT").as_deref(), Some("a b"));
        assert_eq!(header_value(&m, "missing"), None);
        assert_eq!(take_header(&mut m, "x-virtual-mta", true).as_deref(), Some("mta1"));
        assert_eq!(
            m,
            b"Received: x\r\nSubject: a\r\n b\r\n\r\nX-Virtual-MTA: body\r\n".to_vec(),
            "both fields gone, body untouched"
        );
        assert_eq!(take_header(&mut m, "x-virtual-mta", true), None);
        let mut no_headers = b"\r\nbody\r\n".to_vec();
        assert_eq!(take_header(&mut no_headers, "x", true), None);
        let mut prefix = b"X-Virtual-MTA-Extra: 1\r\n\r\n".to_vec();
        assert_eq!(take_header(&mut prefix, "x-virtual-mta", true), None, "a longer field name is not a match");
    }
}

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

/// Removes every `name:` field of the header section for each name; returns whether any went.
pub fn remove_fields(data: &mut Vec<u8>, names: &[String]) -> bool {
    let mut removed = false;
    for name in names {
        while let Some((at, end)) = header_section_end(data).and_then(|end| find_field(data, end, name)) {
            data.drain(at..end);
            removed = true;
        }
    }
    removed
}

/// Whether the header section has a `name:` field.
pub fn has_field(data: &[u8], name: &str) -> bool {
    header_section_end(data).and_then(|end| find_field(data, end, name)).is_some()
}

/// How many `name:` fields the header section has (`Received:`: the hops a message made).
pub fn count_fields(data: &[u8], name: &str) -> usize {
    let Some(end) = header_section_end(data) else { return 0 };
    let mut n = 0;
    let mut at = 0;
    while let Some((_, field_end)) = find_field(&data[at..], end - at, name) {
        n += 1;
        at += field_end;
    }
    n
}

/// What injection does to a message's header (a `<source>`'s rules, with the values the
/// caller made: a fresh Message-ID, the date).
pub struct Shaping<'a> {
    pub rules: &'a sluice_config::HeaderRules,
    /// The first field is sluice's own Received (`add-received-header`): kept by
    /// `remove-received-headers`.
    pub ours_first: bool,
    /// `<id@host>` for `add-message-id-header`.
    pub message_id: &'a str,
    /// RFC 5322 date for `add-date-header`.
    pub date: &'a str,
}

/// Applies a source's header rules to a message in transparency form; returns the
/// `X-Envid:` value when `process-x-envid` took one.
pub fn shape(data: &mut Vec<u8>, s: &Shaping) -> Option<String> {
    let rules = s.rules;
    if rules.remove_received {
        // Sluice's own Received (first, when added) is lifted out while the others go.
        let ours = match s.ours_first {
            true => header_section_end(data).map(|end| field_end(data, 0, end)).filter(|&e| e > 0),
            false => None,
        };
        let head: Vec<u8> = ours.map(|e| data.drain(..e).collect()).unwrap_or_default();
        remove_fields(data, &["Received".to_string()]);
        data.splice(0..0, head);
    }
    remove_fields(data, &rules.remove);
    let envid = match rules.process_x_envid {
        true => take_header(data, "x-envid", true).filter(|v| !v.is_empty()),
        false => None,
    };
    let mut added = Vec::new();
    if rules.add_message_id && !has_field(data, "message-id") {
        added.extend_from_slice(format!("Message-ID: {}\r\n", s.message_id).as_bytes());
    }
    // `date-header-time delivery`: the Date is the delivery's (`date_for_delivery`).
    if !rules.date_at_delivery && date_needed(data, rules.add_date) {
        added.extend_from_slice(format!("Date: {}\r\n", s.date).as_bytes());
    }
    insert_fields(data, added);
    envid
}

/// Whether `add-date-header` puts a Date field in: `yes` when the message has none,
/// `override` always (its own then removed).
fn date_needed(data: &mut Vec<u8>, add: sluice_config::AddDate) -> bool {
    match add {
        sluice_config::AddDate::No => false,
        sluice_config::AddDate::Yes => !has_field(data, "date"),
        sluice_config::AddDate::Override => {
            remove_fields(data, &["Date".to_string()]);
            true
        }
    }
}

/// Fields added at the end of the header section (a message without one gets one).
fn insert_fields(data: &mut Vec<u8>, mut added: Vec<u8>) {
    if added.is_empty() {
        return;
    }
    let at = header_section_end(data).unwrap_or(0);
    if header_section_end(data).is_none() {
        added.extend_from_slice(b"\r\n");
    }
    data.splice(at..at, added);
}

/// `add-date-header` with `date-header-time delivery`, at each delivery attempt: the Date
/// field the rules ask for, dated `date`. Returns whether the message changed (its
/// signatures must then be made again).
pub fn date_for_delivery(data: &mut Vec<u8>, rules: &sluice_config::HeaderRules, date: &str) -> bool {
    if !rules.date_at_delivery || !date_needed(data, rules.add_date) {
        return false;
    }
    insert_fields(data, format!("Date: {date}\r\n").into_bytes());
    true
}

/// The From field's address domain replaced where `new_domain` gives one (`from-domain`).
pub fn rewrite_from_domain(data: &mut Vec<u8>, new_domain: impl Fn(&str) -> Option<String>) {
    let Some(end) = header_section_end(data) else { return };
    let Some((at, field_end)) = find_field(data, end, "from") else { return };
    let field = &data[at..field_end];
    // The address's domain: after the last '@', up to '>' or the end of the address.
    let Some(sign) = field.iter().rposition(|&b| b == b'@') else { return };
    let start = sign + 1;
    let len = field[start..]
        .iter()
        .position(|&b| matches!(b, b'>' | b' ' | b'\r' | b'\n' | b',' | b')'))
        .unwrap_or(field.len() - start);
    let domain = String::from_utf8_lossy(&field[start..start + len]).into_owned();
    if let Some(new) = new_domain(&domain) {
        data.splice(at + start..at + start + len, new.into_bytes());
    }
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

/// Where the header section of a message (CRLF lines) ends: the end of its last line (its
/// CRLF included) and the start of the body (after the blank line). A message without a blank
/// line is all header: both are its length.
pub fn header_bounds(data: &[u8]) -> (usize, usize) {
    if data.starts_with(b"\r\n") {
        return (0, 2);
    }
    match memchr::memmem::find(data, b"\r\n\r\n") {
        Some(i) => (i + 2, i + 4),
        None => (data.len(), data.len()),
    }
}

/// Offset of the blank line that ends the header section (the header bytes are before it),
/// if there is one within `HEADER_SECTION_BYTES_MAX`.
fn header_section_end(data: &[u8]) -> Option<usize> {
    let (end, body) = header_bounds(&data[..data.len().min(HEADER_SECTION_BYTES_MAX)]);
    (body > end).then_some(end)
}

/// The CRLF searcher, built once (`memmem::find` built one for every line of every
/// message's header).
static CRLF: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\r\n"));

/// End of the field starting at `at`: past its CRLF and any continuation lines.
fn field_end(data: &[u8], at: usize, end: usize) -> usize {
    let mut i = at;
    loop {
        match CRLF.find(&data[i..end]) {
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
    fn injection_rules_shape_the_header_and_leave_the_body() {
        let rules = sluice_config::HeaderRules {
            remove_received: true,
            remove: vec!["X-Mailer".into(), "X-Campaign-Secret".into()],
            add_message_id: true,
            add_date: sluice_config::AddDate::Override,
            process_x_envid: true,
            date_at_delivery: false,
        };
        let mut m = b"Received: from us\r\nReceived: from them\r\n\tby x\r\nX-Mailer: PHPMailer\r\nX-Envid: batch-42\r\nDate: yesterday\r\nSubject: hi\r\n\r\nReceived: in the body\r\nX-Mailer: body\r\n".to_vec();
        let s = Shaping {
            rules: &rules,
            ours_first: true,
            message_id: "<1.2@relay.test>",
            date: "Tue, 1 Dec 2026 12:00:00 +0000",
        };
        assert_eq!(shape(&mut m, &s).as_deref(), Some("batch-42"));
        assert_eq!(
            String::from_utf8(m).unwrap(),
            "Received: from us\r\nSubject: hi\r\nMessage-ID: <1.2@relay.test>\r\nDate: Tue, 1 Dec 2026 12:00:00 +0000\r\n\r\nReceived: in the body\r\nX-Mailer: body\r\n"
        );
        // A message with its own Message-ID and Date keeps them (add-date-header yes).
        let rules = sluice_config::HeaderRules {
            add_message_id: true,
            add_date: sluice_config::AddDate::Yes,
            ..Default::default()
        };
        let mut m = b"Message-ID: <own@x>\r\nDate: today\r\n\r\nbody\r\n".to_vec();
        let before = m.clone();
        let s = Shaping { rules: &rules, ours_first: false, message_id: "<new@x>", date: "d" };
        assert_eq!(shape(&mut m, &s), None);
        assert_eq!(m, before);
    }

    /// `date-header-time delivery`: no Date at injection; at each attempt the rules' Date,
    /// dated then (`override` replacing the message's, `yes` only where it has none).
    #[test]
    fn the_date_of_delivery() {
        let rules = sluice_config::HeaderRules {
            add_date: sluice_config::AddDate::Override,
            date_at_delivery: true,
            ..Default::default()
        };
        let mut m = b"Date: at reception\r\nSubject: s\r\n\r\nbody\r\n".to_vec();
        let s = Shaping { rules: &rules, ours_first: false, message_id: "<new@x>", date: "injected" };
        shape(&mut m, &s);
        assert_eq!(m, b"Date: at reception\r\nSubject: s\r\n\r\nbody\r\n", "not at injection");
        assert!(date_for_delivery(&mut m, &rules, "attempt 1"));
        assert!(date_for_delivery(&mut m, &rules, "attempt 2"));
        assert_eq!(m, b"Subject: s\r\nDate: attempt 2\r\n\r\nbody\r\n");
        let yes = sluice_config::HeaderRules { add_date: sluice_config::AddDate::Yes, ..rules.clone() };
        assert!(!date_for_delivery(&mut m, &yes, "attempt 3"), "it has one");
        let off = sluice_config::HeaderRules { date_at_delivery: false, ..rules };
        assert!(!date_for_delivery(&mut m, &off, "attempt 4"));
    }

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

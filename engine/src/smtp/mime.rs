//! Content conversion for the wire's limits, without changing what the reader sees:
//! 8-bit text to quoted-printable for a receiver without 8BITMIME (RFC 6152 §3, RFC 1652's
//! conversion), and lines over 998 octets (RFC 5322 §2.1.1) wrapped losslessly — a text part
//! re-encoded as quoted-printable, soft line breaks added to a quoted-printable part, a
//! base64 part re-wrapped, a header field folded. Multipart bodies (RFC 2046 §5.1) and
//! attached messages are walked part by part; a part already in a 7-bit-safe encoding is
//! left alone unless it has long lines.
//!
//! Works on the message as meant (not dot-stuffed); `convert_stuffed` takes and returns the
//! transparency form the spool holds.

use super::data::TEXT_LINE_BYTES_MAX;

/// The longest line written, CRLF not counted (RFC 5322 §2.1.1: 998).
pub const LINE_BYTES_MAX: usize = TEXT_LINE_BYTES_MAX - 2;
/// Quoted-printable and base64 lines are at most 76 characters (RFC 2045 §6.7, §6.8).
const ENCODED_LINE_MAX: usize = 76;
/// Parts nested deeper than this are left as they are (a hostile message cannot recurse the
/// walker without bound).
const NESTING_MAX: usize = 32;

/// What to convert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Convert {
    /// 8-bit content to 7-bit (quoted-printable bodies, RFC 2047 words in unstructured
    /// header fields).
    pub eight_bit: bool,
    /// Lines over `LINE_BYTES_MAX`.
    pub long_lines: bool,
}

/// Any byte with the high bit set.
pub fn has_8bit(data: &[u8]) -> bool {
    data.iter().any(|b| *b >= 0x80)
}

/// Any line over `LINE_BYTES_MAX` octets (CRLF not counted).
pub fn has_long_lines(data: &[u8]) -> bool {
    lines(data).any(|(line, _)| line.len() > LINE_BYTES_MAX)
}

/// The message in transparency form (dot-stuffed, as spooled) converted; the result is in
/// transparency form too.
pub fn convert_stuffed(data: &[u8], what: Convert) -> Vec<u8> {
    stuff(&convert(&unstuff(data), what))
}

/// The message converted (`message` is not dot-stuffed).
pub fn convert(message: &[u8], what: Convert) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 8);
    entity(message, what, true, 0, &mut out);
    out
}

/// RFC 5321 §4.5.2 undone: the first "." of each line that starts with one is removed.
pub fn unstuff(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    for (line, end) in lines(data) {
        out.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
        out.extend_from_slice(end);
    }
    out
}

/// RFC 5321 §4.5.2: a "." is added to each line that starts with one.
pub fn stuff(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 64);
    for (line, end) in lines(message) {
        if line.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(line);
        out.extend_from_slice(end);
    }
    out
}

/// Lines with their endings (CRLF, or nothing for a last line without one).
fn lines(data: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    let mut at = 0;
    std::iter::from_fn(move || {
        if at >= data.len() {
            return None;
        }
        let rest = &data[at..];
        let (line, end) = match memchr::memmem::find(rest, b"\r\n") {
            Some(i) => (&rest[..i], &rest[i..i + 2]),
            None => (rest, &rest[rest.len()..]),
        };
        at += line.len() + end.len();
        Some((line, end))
    })
}

/// A header section split into fields (each with its continuation lines and CRLFs) and the
/// body after the blank line.
struct Entity<'a> {
    fields: Vec<&'a [u8]>,
    /// The blank line (empty when the entity had no body at all).
    blank: &'a [u8],
    body: &'a [u8],
}

fn split(entity: &[u8]) -> Entity<'_> {
    let mut fields: Vec<&[u8]> = Vec::new();
    let mut at = 0;
    while at < entity.len() {
        let rest = &entity[at..];
        if rest.starts_with(b"\r\n") {
            return Entity { fields, blank: &rest[..2], body: &rest[2..] };
        }
        let line_end = memchr::memmem::find(rest, b"\r\n").map_or(rest.len(), |i| i + 2);
        let continuation = matches!(rest[0], b' ' | b'\t');
        match fields.last_mut() {
            // A continuation line belongs to the field above (RFC 5322 §2.2.3).
            Some(last) if continuation => *last = &entity[at - last.len()..at + line_end],
            _ => fields.push(&rest[..line_end]),
        }
        at += line_end;
    }
    Entity { fields, blank: &[], body: &[] }
}

/// A field's name, lower case.
fn field_name(field: &[u8]) -> String {
    let colon = field.iter().position(|b| *b == b':').unwrap_or(0);
    String::from_utf8_lossy(&field[..colon]).trim().to_ascii_lowercase()
}

/// A field's value, unfolded and trimmed.
fn field_value(field: &[u8]) -> String {
    let colon = field.iter().position(|b| *b == b':').map_or(field.len(), |i| i + 1);
    let value = String::from_utf8_lossy(&field[colon..]);
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn header<'a>(e: &Entity<'a>, name: &str) -> Option<String> {
    e.fields.iter().find(|f| field_name(f) == name).map(|f| field_value(f))
}

/// A parameter of a structured value (`boundary` of Content-Type), unquoted.
fn parameter(value: &str, name: &str) -> Option<String> {
    for part in value.split(';').skip(1) {
        let (k, v) = part.split_once('=')?;
        if k.trim().eq_ignore_ascii_case(name) {
            return Some(v.trim().trim_matches('"').to_string());
        }
    }
    None
}

fn entity(data: &[u8], what: Convert, top: bool, depth: usize, out: &mut Vec<u8>) {
    if depth > NESTING_MAX {
        out.extend_from_slice(data);
        return;
    }
    let e = split(data);
    let content_type = header(&e, "content-type").unwrap_or_default();
    let media = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let cte = header(&e, "content-transfer-encoding").unwrap_or_default().to_ascii_lowercase();
    let identity = matches!(cte.as_str(), "" | "7bit" | "8bit" | "binary");
    if let (true, Some(boundary)) = (media.starts_with("multipart/"), parameter(&content_type, "boundary")) {
        fields(&e.fields, what, None, out);
        out.extend_from_slice(e.blank);
        return multipart(e.body, &boundary, what, depth, out);
    }
    if media == "message/rfc822" && identity {
        fields(&e.fields, what, None, out);
        out.extend_from_slice(e.blank);
        return entity(e.body, what, false, depth + 1, out);
    }
    let needs_8bit = what.eight_bit && has_8bit(e.body);
    let needs_wrap = what.long_lines && has_long_lines(e.body);
    match cte.as_str() {
        _ if identity && (needs_8bit || needs_wrap) => {
            // Re-encoded: the reader decodes the very same text.
            let mut added = Vec::new();
            let mime = header(&e, "mime-version").is_some() || !content_type.is_empty();
            if top && !mime {
                added.push("MIME-Version: 1.0".to_string());
            }
            if content_type.is_empty() {
                let charset = if std::str::from_utf8(e.body).is_ok() { "utf-8" } else { "unknown-8bit" };
                added.push(format!("Content-Type: text/plain; charset={charset}"));
            }
            added.push("Content-Transfer-Encoding: quoted-printable".to_string());
            fields(&e.fields, what, Some(&added), out);
            out.extend_from_slice(if e.blank.is_empty() { b"\r\n" } else { e.blank });
            quoted_printable(e.body, out);
        }
        "quoted-printable" if needs_wrap => {
            fields(&e.fields, what, None, out);
            out.extend_from_slice(e.blank);
            soft_wrap(e.body, out);
        }
        "base64" if needs_wrap => {
            fields(&e.fields, what, None, out);
            out.extend_from_slice(e.blank);
            rewrap_base64(e.body, out);
        }
        _ => {
            fields(&e.fields, what, None, out);
            out.extend_from_slice(e.blank);
            out.extend_from_slice(e.body);
        }
    }
}

/// The parts of a multipart body, each converted; delimiters, preamble and epilogue as they
/// were (RFC 2046 §5.1.1: the CRLF before a delimiter belongs to it).
fn multipart(body: &[u8], boundary: &str, what: Convert, depth: usize, out: &mut Vec<u8>) {
    let delimiter = format!("--{boundary}");
    let mut part_start: Option<usize> = None;
    let mut at = 0;
    let mut copied = 0; // body[..copied] is out
    for (line, end) in lines(body) {
        let line_at = at;
        at += line.len() + end.len();
        let trimmed = line.trim_ascii_end();
        let is_delimiter =
            trimmed.starts_with(delimiter.as_bytes()) && matches!(&trimmed[delimiter.len()..], b"" | b"--");
        if !is_delimiter {
            continue;
        }
        // The part ends before the CRLF that precedes this delimiter line.
        let part_end = line_at.saturating_sub(2).max(part_start.unwrap_or(0));
        match part_start {
            Some(start) => {
                entity(&body[start..part_end], what, false, depth + 1, out);
                out.extend_from_slice(&body[part_end..at]);
            }
            None => out.extend_from_slice(&body[copied..at]), // the preamble and the first delimiter
        }
        copied = at;
        let closing = trimmed.ends_with(b"--") && trimmed.len() == delimiter.len() + 2;
        part_start = if closing { None } else { Some(at) };
        if closing {
            break;
        }
    }
    // The epilogue, or an unterminated last part (as it is: a broken message stays broken).
    match part_start {
        Some(start) if start < body.len() => entity(&body[start..], what, false, depth + 1, out),
        _ => out.extend_from_slice(&body[copied..]),
    }
}

/// Header fields, with `added` ones replacing a Content-Transfer-Encoding (and put after
/// the rest); 8-bit unstructured values become RFC 2047 words and long lines are folded.
fn fields(list: &[&[u8]], what: Convert, added: Option<&Vec<String>>, out: &mut Vec<u8>) {
    for field in list {
        let name = field_name(field);
        if added.is_some() && name == "content-transfer-encoding" {
            continue;
        }
        let mut f = field.to_vec();
        if what.eight_bit && has_8bit(&f) {
            if unstructured(&name) {
                f = encoded_words(&f);
            } else if address_field(&name) {
                f = encoded_addresses(&f).unwrap_or(f);
            } else if matches!(name.as_str(), "content-type" | "content-disposition") {
                f = encoded_parameters(&f);
            }
        }
        if what.long_lines && has_long_lines(&f) {
            let folded = fold(&f);
            // Free text with a run too long to fold at whitespace: encoded words, which fold
            // between them and decode to the very same text (RFC 2047 §6.2).
            f = if has_long_lines(&folded) && unstructured(&name) { encoded_words(&f) } else { folded };
        }
        out.extend_from_slice(&f);
        if !f.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
    }
    for a in added.into_iter().flatten() {
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// Fields whose value is free text (RFC 5322 §3.6.5 and common extensions), where RFC 2047
/// encoded words may stand for the whole value.
fn unstructured(name: &str) -> bool {
    matches!(name, "subject" | "comments" | "content-description" | "thread-topic" | "keywords")
        || name.starts_with("x-")
}

/// Fields whose value is a list of addresses (RFC 5322 §3.6.2, §3.6.3, §3.6.6; RFC 8098).
fn address_field(name: &str) -> bool {
    let name = name.strip_prefix("resent-").unwrap_or(name);
    matches!(name, "from" | "sender" | "reply-to" | "to" | "cc" | "bcc" | "disposition-notification-to")
}

/// `text` as UTF-8 base64 encoded words (RFC 2047 §4.1), each at most 75 characters: 45 bytes
/// of UTF-8 → 60 of base64, + 12 around. A character is never split between two words.
fn encode_words(text: &str) -> Vec<String> {
    use base64::Engine;
    let mut chunk = String::new();
    let mut words = Vec::new();
    for c in text.chars() {
        if chunk.len() + c.len_utf8() > 45 {
            words.push(std::mem::take(&mut chunk));
        }
        chunk.push(c);
    }
    if !chunk.is_empty() {
        words.push(chunk);
    }
    words
        .iter()
        .map(|w| format!("=?utf-8?B?{}?=", base64::engine::general_purpose::STANDARD.encode(w.as_bytes())))
        .collect()
}

/// `Name:` and the pieces, folded between them.
fn folded_field(name: &[u8], pieces: &[String]) -> Vec<u8> {
    let mut out = name.to_vec();
    out.push(b':');
    for (i, p) in pieces.iter().enumerate() {
        out.extend_from_slice(if i == 0 { b" " } else { b"\r\n " });
        out.extend_from_slice(p.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// `Name: value` with the value as UTF-8 base64 encoded words (RFC 2047 §4.1), folded. A
/// value that is not UTF-8 (a legacy charset sent raw) keeps its bytes in `unknown-8bit`
/// words (RFC 1428): nothing is replaced by U+FFFD.
fn encoded_words(field: &[u8]) -> Vec<u8> {
    use base64::Engine;
    let colon = field.iter().position(|b| *b == b':').unwrap_or(0);
    let raw = &field[colon + 1..];
    if std::str::from_utf8(raw).is_ok() {
        return folded_field(&field[..colon], &encode_words(&field_value(field)));
    }
    let mut value: Vec<u8> = Vec::with_capacity(raw.len());
    for word in raw.split(|b| b.is_ascii_whitespace()).filter(|w| !w.is_empty()) {
        if !value.is_empty() {
            value.push(b' ');
        }
        value.extend_from_slice(word);
    }
    let words: Vec<String> = value
        .chunks(45)
        .map(|c| format!("=?unknown-8bit?B?{}?=", base64::engine::general_purpose::STANDARD.encode(c)))
        .collect();
    folded_field(&field[..colon], &words)
}

/// An address field whose display names (or group names) carry 8-bit text, for a 7-bit
/// receiver: each name as encoded words in its phrase (RFC 2047 §5(3)), the addresses as they
/// were (an 8-bit address needs SMTPUTF8, not this). Parsed as RFC 5322 (mail-parser);
/// comments go. None when the field does not parse as addresses (it is left as it is).
fn encoded_addresses(field: &[u8]) -> Option<Vec<u8>> {
    use mail_parser::{Address, HeaderValue};
    let colon = field.iter().position(|b| *b == b':')?;
    let mut text = field.to_vec();
    if !text.ends_with(b"\r\n") {
        text.extend_from_slice(b"\r\n");
    }
    text.extend_from_slice(b"\r\n");
    let parsed = mail_parser::MessageParser::new().parse_headers(&text)?;
    let header = parsed.headers().first()?;
    let mailbox = |name: Option<&str>, address: Option<&str>| -> Option<String> {
        let address = address?;
        Some(match name.filter(|n| !n.is_empty()) {
            Some(n) if !n.is_ascii() => format!("{} <{address}>", encode_words(n).join(" ")),
            Some(n) => format!("\"{}\" <{address}>", n.replace('\\', "\\\\").replace('"', "\\\"")),
            None => address.to_string(),
        })
    };
    let phrase =
        |n: &str| if n.is_ascii() { format!("\"{}\"", n.replace('"', "\\\"")) } else { encode_words(n).join(" ") };
    let mut pieces: Vec<String> = Vec::new();
    match &header.value {
        HeaderValue::Address(Address::List(list)) => {
            for a in list {
                pieces.push(mailbox(a.name.as_deref(), a.address.as_deref())?);
            }
        }
        HeaderValue::Address(Address::Group(groups)) => {
            for g in groups {
                let members: Option<Vec<String>> =
                    g.addresses.iter().map(|a| mailbox(a.name.as_deref(), a.address.as_deref())).collect();
                match g.name.as_deref() {
                    Some(name) => pieces.push(format!("{}: {};", phrase(name), members?.join(", "))),
                    None => pieces.extend(members?),
                }
            }
        }
        _ => return None,
    }
    let last = pieces.len().checked_sub(1)?;
    for (i, p) in pieces.iter_mut().enumerate() {
        if i < last && !p.ends_with(';') {
            p.push(',');
        }
    }
    Some(folded_field(&field[..colon], &pieces))
}

/// Content-Type or Content-Disposition with 8-bit parameter values (a file name, say), for a
/// 7-bit receiver: each such parameter as `name*=utf-8''percent-encoded` (RFC 2231 §4).
fn encoded_parameters(field: &[u8]) -> Vec<u8> {
    let colon = field.iter().position(|b| *b == b':').unwrap_or(0);
    let value = field_value(field);
    let mut parts = Vec::new();
    let (mut quoted, mut escaped, mut start) = (false, false, 0);
    for (i, c) in value.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ';' if !quoted => {
                parts.push(value[start..i].trim().to_string());
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(value[start..].trim().to_string());
    let mut pieces: Vec<String> = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate().filter(|(_, p)| !p.is_empty()) {
        let piece = match part.split_once('=') {
            Some((name, v)) if i > 0 && !v.is_ascii() => {
                let v = v.trim().trim_matches('"').replace("\\\"", "\"");
                let pct: String = v
                    .bytes()
                    .map(|b| match b {
                        b'A'..=b'Z'
                        | b'a'..=b'z'
                        | b'0'..=b'9'
                        | b'!'
                        | b'#'
                        | b'$'
                        | b'&'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~' => (b as char).to_string(),
                        _ => format!("%{b:02X}"),
                    })
                    .collect();
                format!("{}*=utf-8''{pct}", name.trim())
            }
            _ => part.clone(),
        };
        pieces.push(piece);
    }
    let last = pieces.len().saturating_sub(1);
    for p in pieces.iter_mut().take(last) {
        p.push(';');
    }
    folded_field(&field[..colon], &pieces)
}

/// A header field folded (RFC 5322 §2.2.3) at whitespace, so that no line exceeds
/// `LINE_BYTES_MAX` where it has whitespace to fold at. Folding only ever puts a CRLF before
/// whitespace that is there: a run of more than 998 octets without any (a long URL, a token)
/// stays on its line whole rather than gain a space inside its value (issue 22).
fn fold(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len() + field.len() / 64);
    for (line, end) in lines(field) {
        let mut rest = line;
        while rest.len() > LINE_BYTES_MAX {
            let is_wsp = |b: &u8| *b == b' ' || *b == b'\t';
            // The last whitespace before the limit (not the line's first byte), else the first
            // one after it; none: the line stays as it is.
            let before = rest[..LINE_BYTES_MAX].iter().rposition(is_wsp).filter(|&i| i > 0);
            let after = || rest[LINE_BYTES_MAX..].iter().position(is_wsp).map(|i| i + LINE_BYTES_MAX);
            let Some(cut) = before.or_else(after) else { break };
            let (head, tail) = rest.split_at(cut);
            out.extend_from_slice(head);
            out.extend_from_slice(b"\r\n");
            rest = tail;
        }
        out.extend_from_slice(rest);
        out.extend_from_slice(end);
    }
    out
}

/// RFC 2045 §6.7 quoted-printable, the body's CRLFs kept as hard line breaks.
fn quoted_printable(body: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for (line, end) in lines(body) {
        let mut col = 0;
        for (i, &b) in line.iter().enumerate() {
            let last = i + 1 == line.len();
            let literal = match b {
                b' ' | b'\t' => !last, // trailing whitespace is encoded (rule 3)
                b'=' => false,
                33..=126 => true,
                _ => false,
            };
            let width = if literal { 1 } else { 3 };
            // A soft line break keeps every line within 76 characters (rule 5).
            if col + width > ENCODED_LINE_MAX - 1 {
                out.extend_from_slice(b"=\r\n");
                col = 0;
            }
            if literal {
                out.push(b);
            } else {
                out.extend_from_slice(&[b'=', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]);
            }
            col += width;
        }
        out.extend_from_slice(end);
    }
}

/// Soft line breaks (`=` CRLF) added to a quoted-printable body's long lines, never inside
/// an `=XX` escape: decoding gives the same bytes.
fn soft_wrap(body: &[u8], out: &mut Vec<u8>) {
    for (line, end) in lines(body) {
        let mut rest = line;
        while rest.len() > LINE_BYTES_MAX {
            let mut cut = ENCODED_LINE_MAX - 1;
            // Do not split "=XX": back up to the escape's start if the cut falls inside it.
            if let Some(eq) = rest[cut.saturating_sub(2)..cut].iter().rposition(|b| *b == b'=') {
                cut = cut - 2 + eq;
            }
            out.extend_from_slice(&rest[..cut]);
            out.extend_from_slice(b"=\r\n");
            rest = &rest[cut..];
        }
        out.extend_from_slice(rest);
        out.extend_from_slice(end);
    }
}

/// A base64 body re-wrapped at 76 characters (decoders skip line breaks, RFC 2045 §6.8).
fn rewrap_base64(body: &[u8], out: &mut Vec<u8>) {
    let text: Vec<u8> = body.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
    for chunk in text.chunks(ENCODED_LINE_MAX) {
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 2045 §6.7 decoding, for checking that conversion changes nothing a reader sees.
    fn qp_decode(text: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < text.len() {
            match text[i] {
                b'=' if text[i + 1..].starts_with(b"\r\n") => i += 3,
                b'=' => {
                    let hex = std::str::from_utf8(&text[i + 1..i + 3]).unwrap();
                    out.push(u8::from_str_radix(hex, 16).unwrap());
                    i += 3;
                }
                b => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        out
    }

    fn body_of(message: &[u8]) -> &[u8] {
        let at = memchr::memmem::find(message, b"\r\n\r\n").unwrap();
        &message[at + 4..]
    }

    /// Issue 22: 8-bit display names and file names went raw to a 7-bit receiver.
    #[test]
    fn eight_bit_names_in_address_fields_and_parameters_are_encoded_for_7bit() {
        let msg = "From: \"Exp\u{e9}diteur 7\" <n7@shop.example>\r\nTo: Jos\u{e9} <j@a.example>, plain@b.example, \"Doe, J\" <d@c.example>\r\n\
                   Subject: caf\u{e9}\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n\
                   --b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nh\u{e9}\r\n\
                   --b1\r\nContent-Type: application/pdf; name=\"r\u{e9}sum\u{e9}.pdf\"\r\n\
                   Content-Disposition: attachment; filename=\"r\u{e9}sum\u{e9}.pdf\"; size=3\r\n\
                   Content-Transfer-Encoding: base64\r\n\r\nYWJj\r\n--b1--\r\n";
        let out = convert(msg.as_bytes(), Convert { eight_bit: true, long_lines: false });
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(!has_8bit(&out), "{text}");
        assert!(text.contains("From: =?utf-8?B?RXhww6lkaXRldXIgNw==?= <n7@shop.example>\r\n"), "{text}");
        assert!(
            text.contains(
                "To: =?utf-8?B?Sm9zw6k=?= <j@a.example>,\r\n plain@b.example,\r\n \"Doe, J\" <d@c.example>\r\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("Content-Disposition: attachment;\r\n filename*=utf-8''r%C3%A9sum%C3%A9.pdf;\r\n size=3\r\n"),
            "{text}"
        );
        assert!(text.contains("Content-Type: application/pdf;\r\n name*=utf-8''r%C3%A9sum%C3%A9.pdf\r\n"), "{text}");
        // Decoded by an independent reader, the names are the same.
        let parsed = mail_parser::MessageParser::new().parse(&out).unwrap();
        assert_eq!(parsed.from().unwrap().first().unwrap().name.as_deref(), Some("Exp\u{e9}diteur 7"));
        assert_eq!(parsed.to().unwrap().first().unwrap().name.as_deref(), Some("Jos\u{e9}"));
        use mail_parser::MimeHeaders;
        assert_eq!(parsed.attachment(0).unwrap().attachment_name(), Some("r\u{e9}sum\u{e9}.pdf"));
    }

    #[test]
    fn eight_bit_text_becomes_quoted_printable_that_decodes_to_it() {
        let body = "Grüße aus Köln — ça va?\r\nZweite Zeile mit Leerzeichen am Ende \r\n=gleich\r\n".as_bytes();
        let message = [b"From: a@b.test\r\nSubject: hi\r\n\r\n".as_slice(), body].concat();
        let out = convert(&message, Convert { eight_bit: true, long_lines: false });
        assert!(!has_8bit(&out), "{}", String::from_utf8_lossy(&out));
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("MIME-Version: 1.0\r\n"), "{text}");
        assert!(text.contains("Content-Type: text/plain; charset=utf-8\r\n"), "{text}");
        assert!(text.contains("Content-Transfer-Encoding: quoted-printable\r\n"), "{text}");
        assert_eq!(qp_decode(body_of(&out)), body);
        assert!(lines(&out).all(|(l, _)| l.len() <= ENCODED_LINE_MAX));
    }

    #[test]
    fn only_the_8bit_parts_of_a_multipart_change() {
        let message = b"MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"b1\"\r\n\r\n\
preamble\r\n--b1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nna\xc3\xafve\r\n\
--b1\r\nContent-Type: text/html\r\nContent-Transfer-Encoding: base64\r\n\r\nPGI+aGk8L2I+\r\n--b1--\r\nepilogue\r\n";
        let out = convert(message, Convert { eight_bit: true, long_lines: false });
        let text = String::from_utf8(out.clone()).expect("7-bit now");
        assert!(text.contains("Content-Transfer-Encoding: quoted-printable\r\n\r\nna=C3=AFve\r\n--b1\r\n"), "{text}");
        assert!(!text.contains("8bit"), "{text}");
        assert!(text.contains("base64\r\n\r\nPGI+aGk8L2I+\r\n--b1--\r\nepilogue\r\n"), "untouched: {text}");
        assert!(text.starts_with("MIME-Version: 1.0\r\nContent-Type: multipart/alternative"), "{text}");
    }

    #[test]
    fn long_lines_are_wrapped_without_changing_the_decoded_text() {
        let long = "word ".repeat(400);
        let message = format!("Subject: {}\r\n\r\n{long}\r\nshort\r\n", "s".repeat(1200));
        let out = convert(message.as_bytes(), Convert { eight_bit: false, long_lines: true });
        assert!(!has_long_lines(&out));
        assert_eq!(qp_decode(body_of(&out)), format!("{long}\r\nshort\r\n").as_bytes());
        let parsed = mail_parser::MessageParser::new().parse(&out).unwrap();
        assert_eq!(parsed.subject(), Some("s".repeat(1200).as_str()), "the subject decodes to itself");
        // A structured field's run without whitespace is never cut (a space would change it).
        let url = format!("List-Unsubscribe: <https://example.com/u/{}>\r\n", "x".repeat(1100));
        let out =
            convert(format!("{url}Subject: a\r\n\r\nb\r\n").as_bytes(), Convert { eight_bit: false, long_lines: true });
        let unfolded = String::from_utf8(out).unwrap().replace("\r\n ", " ");
        assert!(unfolded.starts_with(&url), "unfolded, the value is as it was: {}", &unfolded[..80]);
        let two = format!("References: <{}@a> <{}@b>\r\n", "r".repeat(900), "q".repeat(900));
        let out = convert(format!("{two}\r\nb\r\n").as_bytes(), Convert { eight_bit: false, long_lines: true });
        let expected = format!("References: <{}@a>\r\n <{}@b>\r\n", "r".repeat(900), "q".repeat(900));
        assert!(out.starts_with(expected.as_bytes()), "folded at its whitespace only");
        // A quoted-printable part with a long line gets soft breaks, never inside an escape.
        let qp = format!("Content-Transfer-Encoding: quoted-printable\r\n\r\n{}\r\n", "ab=3D".repeat(400));
        let out = convert(qp.as_bytes(), Convert { eight_bit: false, long_lines: true });
        assert!(!has_long_lines(&out));
        assert_eq!(qp_decode(body_of(&out)), format!("{}\r\n", "ab=".repeat(400)).as_bytes());
    }

    #[test]
    fn eight_bit_subject_becomes_encoded_words() {
        let message = "Subject: Grüße\r\nFrom: a@b.test\r\n\r\nplain\r\n".as_bytes();
        let out = convert(message, Convert { eight_bit: true, long_lines: false });
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("Subject: =?utf-8?B?R3LDvMOfZQ==?=\r\nFrom: a@b.test\r\n\r\nplain\r\n"), "{text}");
    }

    #[test]
    fn stuffing_round_trips() {
        let data = b"..a\r\nb\r\n..\r\n";
        assert_eq!(unstuff(data), b".a\r\nb\r\n.\r\n");
        assert_eq!(stuff(&unstuff(data)), data);
        // 7-bit content with nothing to do comes back as it was.
        let m = b"Subject: x\r\n\r\n..dot\r\n";
        assert_eq!(convert_stuffed(m, Convert { eight_bit: true, long_lines: true }), m);
    }
}

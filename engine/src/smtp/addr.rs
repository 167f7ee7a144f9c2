//! Reverse- and forward-path syntax (RFC 5321 §4.1.2), with the size limits of §4.5.3.1.

/// RFC 5321 §4.5.3.1.3: a path is at most 256 octets including the angle brackets.
pub const PATH_BYTES_MAX: usize = 256;
/// RFC 5321 §4.5.3.1.1 and §4.5.3.1.2.
pub const LOCAL_PART_BYTES_MAX: usize = 64;
pub const DOMAIN_BYTES_MAX: usize = 255;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    Syntax,
    TooLong,
    BadDomain,
}

/// Parses `<local@domain> params`; returns the address (without brackets) and the rest.
/// `allow_null` admits `<>` (the null reverse-path). Source routes (`<@a,@b:x@y>`) are
/// accepted and dropped, as §4.1.2 asks of servers.
pub fn parse_path(s: &str, allow_null: bool) -> Result<(&str, &str), PathError> {
    let rest = s.strip_prefix('<').ok_or(PathError::Syntax)?;
    let end = rest.find('>').ok_or(PathError::Syntax)?;
    if end + 2 > PATH_BYTES_MAX {
        return Err(PathError::TooLong);
    }
    let mut path = &rest[..end];
    let params = &rest[end + 1..];
    if !params.is_empty() && !params.starts_with(' ') {
        return Err(PathError::Syntax);
    }
    if path.is_empty() {
        return if allow_null { Ok(("", params)) } else { Err(PathError::Syntax) };
    }
    if path.starts_with('@') {
        path = &path[path.find(':').ok_or(PathError::Syntax)? + 1..];
    }
    let at = path.rfind('@').ok_or(PathError::Syntax)?;
    let (local, domain) = (&path[..at], &path[at + 1..]);
    if local.is_empty() || local.len() > LOCAL_PART_BYTES_MAX {
        return Err(if local.is_empty() { PathError::Syntax } else { PathError::TooLong });
    }
    if local.bytes().any(|b| b <= b' ' && !local.starts_with('"')) {
        return Err(PathError::Syntax);
    }
    if !valid_domain(domain) {
        return Err(PathError::BadDomain);
    }
    Ok((path, params))
}

/// A hostname (letters, digits, hyphens, dots, UTF-8 labels) or an address literal.
pub fn valid_domain(d: &str) -> bool {
    if d.is_empty() || d.len() > DOMAIN_BYTES_MAX {
        return false;
    }
    if d.starts_with('[') {
        return d.ends_with(']');
    }
    d.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b >= 0x80)
    })
}

/// The domain part of an address, lower-cased.
pub fn domain_of(address: &str) -> String {
    address.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let ok: &[(&str, bool, (&str, &str))] = &[
            ("<a@b.test>", false, ("a@b.test", "")),
            ("<a@b.test> SIZE=10", true, ("a@b.test", " SIZE=10")),
            ("<>", true, ("", "")),
            ("<@relay.test:a@b.test>", false, ("a@b.test", "")),
            ("<\"x y\"@b.test>", false, ("\"x y\"@b.test", "")),
            ("<a@[127.0.0.1]>", false, ("a@[127.0.0.1]", "")),
        ];
        for (input, null, expected) in ok {
            assert_eq!(parse_path(input, *null), Ok(*expected), "{input}");
        }
        let bad: &[(&str, PathError)] = &[
            ("a@b.test", PathError::Syntax),
            ("<>", PathError::Syntax),
            ("<a@b.test>x", PathError::Syntax),
            ("<ab.test>", PathError::Syntax),
            ("<a@-b.test>", PathError::BadDomain),
            ("<a@b..test>", PathError::BadDomain),
        ];
        for (input, err) in bad {
            assert_eq!(parse_path(input, false), Err(*err), "{input}");
        }
        let long = format!("<{}@b.test>", "x".repeat(65));
        assert_eq!(parse_path(&long, false), Err(PathError::TooLong));
        let long = format!("<a@{}.test>", "x.".repeat(130));
        assert_eq!(parse_path(&long, false), Err(PathError::TooLong));
    }
}

/// The VERP return path for `rcpt` (PowerMTA's fixed form, `verp-default`):
/// `jsmith@example.com` to `jdoe@yahoo.com` gives `jsmith-jdoe=yahoo.com@example.com`. The
/// null sender stays null.
pub fn verp(sender: &str, rcpt: &str) -> String {
    let Some((local, domain)) = sender.rsplit_once('@') else { return sender.to_string() };
    let (rl, rd) = rcpt.rsplit_once('@').unwrap_or((rcpt, ""));
    format!("{local}-{rl}={rd}@{domain}")
}

#[cfg(test)]
mod verp_tests {
    #[test]
    fn powermta_verp_form() {
        assert_eq!(super::verp("jsmith@example.com", "jdoe@yahoo.com"), "jsmith-jdoe=yahoo.com@example.com");
        assert_eq!(super::verp("", "jdoe@yahoo.com"), "");
    }
}

//! Bounce classification into PowerMTA's categories, from the enhanced status code
//! (RFC 3463) and the reply text. The built-in rules; `<bounce-category-patterns>` comes later.

use crate::smtp::reply::Reply;

pub const CATEGORIES: &[&str] = &[
    "bad-configuration",
    "bad-connection",
    "bad-domain",
    "bad-mailbox",
    "content-related",
    "inactive-mailbox",
    "invalid-sender",
    "message-expired",
    "no-answer-from-host",
    "other",
    "policy-related",
    "protocol-errors",
    "quota-issues",
    "relaying-issues",
    "routing-errors",
    "spam-related",
    "virus-related",
];

pub fn classify(reply: &Reply) -> &'static str {
    let text = reply.text.to_ascii_lowercase();
    let by_text: &[(&str, &str)] = &[
        ("spam", "spam-related"),
        ("blocklist", "spam-related"),
        ("blacklist", "spam-related"),
        ("virus", "virus-related"),
        ("quota", "quota-issues"),
        ("mailbox full", "quota-issues"),
        ("disabled", "inactive-mailbox"),
        ("inactive", "inactive-mailbox"),
        ("relay", "relaying-issues"),
        ("user unknown", "bad-mailbox"),
        ("no such user", "bad-mailbox"),
        ("does not exist", "bad-mailbox"),
    ];
    if let Some((_, cat)) = by_text.iter().find(|(needle, _)| text.contains(needle)) {
        return cat;
    }
    let Some(code) = reply.enhanced() else {
        return "other";
    };
    let mut parts = code.split('.').skip(1);
    let subject = parts.next().unwrap_or("");
    let detail = parts.next().unwrap_or("");
    match (subject, detail) {
        ("1", "1") | ("1", "0") | ("1", "6") => "bad-mailbox",
        ("1", "2") | ("1", "10") => "bad-domain",
        ("1", "3") => "bad-mailbox",
        ("1", "7") | ("1", "8") => "invalid-sender",
        ("2", "1") => "inactive-mailbox",
        ("2", "2") | ("2", "3") => "quota-issues",
        ("3", _) => "bad-configuration",
        ("4", "4") | ("4", "6") => "routing-errors",
        ("4", "7") => "message-expired",
        ("4", _) => "bad-connection",
        ("5", _) => "protocol-errors",
        ("6", _) => "content-related",
        ("7", "1") => "policy-related",
        ("7", _) => "policy-related",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let cases = [
            (550, "5.1.1 no mailbox here", "bad-mailbox"),
            (550, "5.1.1 user unknown", "bad-mailbox"),
            (556, "5.1.10 null MX", "bad-domain"),
            (552, "5.2.2 mailbox over quota", "quota-issues"),
            (554, "5.7.1 message rejected as spam", "spam-related"),
            (550, "5.7.1 policy", "policy-related"),
            (554, "5.6.0 bad content", "content-related"),
            (550, "rejected", "other"),
        ];
        for (code, text, cat) in cases {
            assert_eq!(classify(&Reply::new(code, text)), cat, "{text}");
            assert!(CATEGORIES.contains(&cat));
        }
    }
}

//! Bounce classification into PowerMTA's categories: the operator's
//! `<bounce-category-patterns>` first (matched against the reply line), then built-in rules
//! over the reply text and the enhanced status code (RFC 3463).

use crate::smtp::reply::Reply;
use sluice_config::BouncePattern;
pub use sluice_config::BOUNCE_CATEGORIES as CATEGORIES;

pub mod dsn;

/// Words in a reply that say more than its status code does; checked in this order.
const TEXT_RULES: &[(&str, &str)] = &[
    ("virus", "virus-related"),
    ("spam", "spam-related"),
    ("blocklist", "spam-related"),
    ("blacklist", "spam-related"),
    ("quota", "quota-issues"),
    ("mailbox full", "quota-issues"),
    ("mailbox is full", "quota-issues"),
    ("disabled", "inactive-mailbox"),
    ("inactive", "inactive-mailbox"),
    ("deactivated", "inactive-mailbox"),
    ("relay", "relaying-issues"),
    ("user unknown", "bad-mailbox"),
    ("no such user", "bad-mailbox"),
    ("does not exist", "bad-mailbox"),
];

/// A reply's category: the first `<bounce-category-patterns>` line matching it (tried on the
/// reply line, `550 5.1.1 ...`, and on its status before it, `5.1.1;550 5.1.1 ...`, the form
/// PowerMTA's stock patterns such as `/^[45]\.1\.1/` are written for), then built-in rules.
pub fn classify<'a>(reply: &Reply, patterns: &'a [BouncePattern]) -> &'a str {
    if !patterns.is_empty() {
        let line = reply.line();
        let status = reply.enhanced().map_or_else(|| format!("{}.0.0", reply.code / 100), |c| c.to_string());
        let with_status = format!("{status};{line}");
        if let Some(p) = patterns.iter().find(|p| p.regex.is_match(&line) || p.regex.is_match(&with_status)) {
            return &p.category;
        }
    }
    let text = reply.text.to_ascii_lowercase();
    if let Some((_, cat)) = TEXT_RULES.iter().find(|(needle, _)| text.contains(needle)) {
        return cat;
    }
    let Some(code) = reply.enhanced() else {
        return "other";
    };
    let mut parts = code.split('.').skip(1);
    let subject = parts.next().unwrap_or("");
    let detail = parts.next().unwrap_or("");
    // RFC 3463 §3: X.1 addressing, X.2 mailbox, X.3 mail system, X.4 network and routing,
    // X.5 protocol, X.6 content, X.7 security and policy.
    match (subject, detail) {
        ("1", "2") | ("1", "10") => "bad-domain",
        ("1", "7") | ("1", "8") => "invalid-sender",
        ("1", _) => "bad-mailbox",
        ("2", "1") => "inactive-mailbox",
        ("2", "2") => "quota-issues",
        ("2", "3") => "content-related",
        ("2", _) => "bad-mailbox",
        ("3", _) => "bad-configuration",
        ("4", "1") => "no-answer-from-host",
        ("4", "3") | ("4", "4") | ("4", "6") => "routing-errors",
        ("4", "7") => "message-expired",
        ("4", _) => "bad-connection",
        ("5", _) => "protocol-errors",
        ("6", _) => "content-related",
        ("7", _) => "policy-related",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_category_has_a_rule() {
        let cases = [
            (550, "5.1.1 mailbox unavailable", "bad-mailbox"),
            (550, "5.1.1 user unknown", "bad-mailbox"),
            (556, "5.1.10 null MX", "bad-domain"),
            (550, "5.1.2 host not found", "bad-domain"),
            (553, "5.1.8 sender domain rejected", "invalid-sender"),
            (550, "5.2.1 account closed", "inactive-mailbox"),
            (552, "5.2.2 over the limit", "quota-issues"),
            (554, "5.3.0 mail system misconfigured", "bad-configuration"),
            (554, "5.4.1 host did not answer", "no-answer-from-host"),
            (554, "5.4.2 connection dropped", "bad-connection"),
            (554, "5.4.4 unable to route", "routing-errors"),
            (554, "5.4.7 delivery time expired", "message-expired"),
            (554, "5.5.2 syntax error", "protocol-errors"),
            (554, "5.6.0 bad content", "content-related"),
            (550, "5.7.1 policy", "policy-related"),
            (550, "5.7.1 relaying denied", "relaying-issues"),
            (554, "5.7.1 message rejected as spam", "spam-related"),
            (554, "5.7.1 virus found", "virus-related"),
            (550, "rejected", "other"),
        ];
        let mut seen = std::collections::HashSet::new();
        for (code, text, cat) in cases {
            assert_eq!(classify(&Reply::new(code, text), &[]), cat, "{text}");
            seen.insert(cat);
        }
        assert_eq!(seen.len(), CATEGORIES.len(), "every category reachable");
    }

    #[test]
    fn patterns_come_first() {
        let p = BouncePattern { regex: regex_lite("custom marker"), category: "quota-issues".into() };
        assert_eq!(classify(&Reply::new(550, "5.7.1 custom marker"), std::slice::from_ref(&p)), "quota-issues");
        assert_eq!(classify(&Reply::new(550, "5.7.1 other text"), &[p]), "policy-related");
    }

    fn regex_lite(s: &str) -> sluice_config::BouncePatternRegex {
        sluice_config::BouncePatternRegex::new(s).unwrap()
    }
}

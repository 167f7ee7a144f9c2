//! Every PowerMTA bounce category reaches the accounting `bounceCat` column end to end: real
//! replies scripted per domain at the sink, expiry for `message-expired`, and an operator's
//! `<bounce-category-patterns>` overriding the built-in rules.

mod common;
use common::*;
use std::time::Duration;

/// (category, the receiver's reply for that domain's recipients).
const CASES: &[(&str, &str)] = &[
    ("bad-mailbox", "550 5.1.1 mailbox unavailable"),
    ("bad-domain", "550 5.1.2 host not found"),
    ("invalid-sender", "553 5.1.8 sender domain rejected"),
    ("inactive-mailbox", "550 5.2.1 account closed"),
    ("quota-issues", "552 5.2.2 over the limit"),
    ("bad-configuration", "554 5.3.0 mail system misconfigured"),
    ("no-answer-from-host", "554 5.4.1 host did not answer"),
    ("bad-connection", "554 5.4.2 connection dropped"),
    ("routing-errors", "554 5.4.4 unable to route"),
    ("protocol-errors", "554 5.5.2 syntax error"),
    ("content-related", "554 5.6.0 bad content"),
    ("policy-related", "550 5.7.1 policy"),
    ("relaying-issues", "550 5.7.1 relaying denied"),
    ("spam-related", "554 5.7.1 message rejected as spam"),
    ("virus-related", "554 5.7.1 virus found"),
    ("other", "550 rejected"),
];

#[test]
fn every_bounce_category_in_accounting() {
    let mut args: Vec<String> = CASES.iter().map(|(cat, reply)| format!("{cat}.test:{reply}:100%")).collect();
    args.push("expired.test:451 4.3.0 try again later:100%".into());
    args.push("custom.test:550 5.7.1 custom marker:100%".into());
    let arg_refs: Vec<&str> = args.iter().flat_map(|a| ["--reply", a.as_str()]).collect();
    let sink = SluiceSink::start(&arg_refs, u64::MAX);
    let relay = Relay::start(
        &format!(
            "<source 127.0.0.1>\n always-allow-relaying yes\n</source>\n<domain *>\n smtp-hosts [127.0.0.1]:{}\n</domain>\n\
             <domain expired.test>\n retry-after 1s\n bounce-after 2s\n</domain>\n\
             <bounce-category-patterns>\n /custom marker/ quota-issues\n</bounce-category-patterns>\n",
            sink.port
        ),
        None,
    );
    let mut rcpts: Vec<String> = CASES.iter().map(|(cat, _)| format!("u@{cat}.test")).collect();
    rcpts.push("u@expired.test".into());
    rcpts.push("u@custom.test".into());
    let (code, out) = swaks(&relay.addr().to_string(), &rcpts.join(","), &[]);
    assert_eq!(code, 0, "{out}");
    let rows = relay.wait_rows("b", rcpts.len(), Duration::from_secs(30));
    let cat_of = |rcpt: &str| {
        rows.iter()
            .find(|r| r["rcpt"] == rcpt)
            .map(|r| r["bounceCat"].clone())
            .unwrap_or_else(|| panic!("b row for {rcpt}"))
    };
    for (cat, _) in CASES {
        assert_eq!(cat_of(&format!("u@{cat}.test")), *cat);
    }
    assert_eq!(cat_of("u@expired.test"), "message-expired");
    assert_eq!(cat_of("u@custom.test"), "quota-issues", "the operator's pattern wins over 5.7.1 → policy-related");
    let categories: std::collections::HashSet<String> = rows.iter().map(|r| r["bounceCat"].clone()).collect();
    assert_eq!(categories.len(), 17, "all 17 categories: {categories:?}");
    let _ = sink.terminate();
}

//! `total-max-smtp-in`: connections beyond the cap are answered 421 at once (RFC 5321 §3.8)
//! and closed, and service returns for new clients as soon as others leave.

mod common;
use common::*;
use std::time::Duration;

fn scenario(shards: Option<u32>) {
    let relay =
        Relay::start("total-max-smtp-in 3\n<source 127.0.0.1>\n always-allow-relaying yes\n</source>\n", shards);
    // The harness's readiness probe counts until sluice sees it close: take the three places
    // once a whole set of greetings is 220.
    let held: Vec<Talk> = wait_for("three accepted connections", Duration::from_secs(10), || {
        let set: Vec<(Talk, String)> = (0..3).map(|_| Talk::connect(relay.addr())).collect();
        set.iter().all(|(_, g)| g.starts_with("220")).then(|| set.into_iter().map(|(t, _)| t).collect())
    });
    let (mut over, greeting) = Talk::connect(relay.addr());
    assert!(greeting.starts_with("421 4.7.0"), "over the cap: {greeting}");
    assert_eq!(over.rest(), "", "closed after the 421");
    drop(held);
    let greeting = wait_for("a 220 once the others left", Duration::from_secs(10), || {
        let (mut t, g) = Talk::connect(relay.addr());
        let ok = g.starts_with("220");
        t.cmd("QUIT");
        ok.then_some(g)
    });
    assert!(greeting.starts_with("220 relay.test"));
}

#[test]
fn connection_cap_one_shard() {
    scenario(Some(1));
}

#[test]
fn connection_cap_default_shards() {
    scenario(None);
}

//! Message preparation (`sluice_engine::prepare`), the one path every way in takes before the
//! spool: `bcc`, the VMTA (its cold share, a submission's own `*vmta`, `allowed-virtual-mta`),
//! the job header, VERP, and the DKIM signature after it.

use sluice_config::{Config, SenderRestrictions};
use sluice_engine::prepare::{prepare, sign, ColdCounts, Prepared, Way, World};
use sluice_engine::smtp::server::Message;
use std::net::IpAddr;

const DAY_MS: u64 = 86_400_000;

fn config(text: &str) -> Config {
    sluice_config::load("t.conf", text, &mut |_| Err("no includes".into())).unwrap()
}

fn message(rcpts: &[&str], data: &str) -> Message {
    Message {
        mail_from: "news@src.test".into(),
        recipients: rcpts.iter().map(|r| r.to_string()).collect(),
        data: data.as_bytes().to_vec(),
        ..Message::default()
    }
}

struct Fixture {
    config: Config,
    keys: sluice_engine::dkim::Keys,
    lists: sluice_config::names::Names<std::sync::Arc<sluice_engine::suppress::AddressList>>,
    cold: ColdCounts,
}

impl Fixture {
    fn new(text: &str) -> Fixture {
        let config = config(text);
        let keys = sluice_engine::dkim::Keys::load(&config, &mut |_| Err(std::io::Error::other("no keys"))).unwrap();
        Fixture { config, keys, lists: Default::default(), cold: ColdCounts::default() }
    }

    fn run(
        &self,
        m: &mut Message,
        vmta: Option<&str>,
        restrictions: &SenderRestrictions,
        day: u64,
    ) -> Result<Prepared, String> {
        let world = World {
            config: &self.config,
            dkim: &self.keys,
            lists: &self.lists,
            feedback: None,
            bounces: None,
            cold: &self.cold,
        };
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let policy = self.config.policy_for(ip, &[]);
        let way = Way { vmta, restrictions, ours_first: false, number: (0, 1), reports: true };
        prepare(&world, &policy, m, &way, day * DAY_MS + 1_000)
    }
}

/// `bcc`: every message also goes to the archive address, once.
#[test]
fn bcc_adds_the_archive_recipient_once() {
    let f = Fixture::new("<source 0/0>\n bcc archive@keep.test\n</source>\n");
    let any = SenderRestrictions::default();
    let mut m = message(&["x@y.test"], "Subject: x\r\n\r\nbody\r\n");
    f.run(&mut m, None, &any, 1).unwrap();
    assert_eq!(m.recipients, ["x@y.test", "archive@keep.test"]);
    let mut m = message(&["archive@keep.test"], "Subject: y\r\n\r\nb\r\n");
    f.run(&mut m, None, &any, 1).unwrap();
    assert_eq!(m.recipients, ["archive@keep.test"], "not twice");
}

/// A cold VMTA takes its daily share of the warm one's mail per destination, then the warm one
/// takes the rest; the next day the share starts again (and grows by its schedule).
#[test]
fn a_cold_vmta_takes_its_daily_share() {
    let f = Fixture::new(
        "<virtual-mta warm-cold>\n smtp-source-host 127.0.0.5 cold.test\n</virtual-mta>\n\
         <virtual-mta warm>\n smtp-source-host 127.0.0.2 warm.test\n cold-virtual-mta warm-cold\n \
           <domain *>\n max-cold-virtual-mta-msg 2/day,3/day\n </domain>\n</virtual-mta>\n\
         <source 0/0>\n default-virtual-mta warm\n</source>\n",
    );
    let any = SenderRestrictions::default();
    let vmtas = |day: u64, domain: &str| -> Vec<String> {
        (0..5)
            .map(|i| {
                f.run(&mut message(&[&format!("u{i}@{domain}")], "Subject: x\r\n\r\nb\r\n"), None, &any, day)
                    .unwrap()
                    .vmta
            })
            .collect()
    };
    assert_eq!(vmtas(10, "one.test"), ["warm-cold", "warm-cold", "warm", "warm", "warm"]);
    assert_eq!(vmtas(10, "two.test")[..3], ["warm-cold", "warm-cold", "warm"], "per destination");
    assert_eq!(vmtas(11, "one.test")[..4], ["warm-cold", "warm-cold", "warm-cold", "warm"], "day two: 3");
}

/// A submission's own `*vmta` wins over routing; one the configuration does not know is
/// refused, and so is a VMTA the sender may not use.
#[test]
fn a_named_vmta_is_checked_and_allowed_virtual_mta_holds() {
    let f = Fixture::new(
        "<virtual-mta a>\n smtp-source-host 127.0.0.2 a.test\n</virtual-mta>\n\
         <virtual-mta b>\n smtp-source-host 127.0.0.3 b.test\n</virtual-mta>\n\
         <source 0/0>\n default-virtual-mta a\n allowed-virtual-mta a\n</source>\n",
    );
    let any = SenderRestrictions::default();
    let mut m = message(&["x@y.test"], "Subject: x\r\n\r\nb\r\n");
    assert_eq!(f.run(&mut m, Some("b"), &any, 1).unwrap().vmta, "b");
    let err = f.run(&mut m, Some("nowhere"), &any, 1).unwrap_err();
    assert!(err.starts_with("550 5.7.1 Unknown virtual MTA `nowhere`"), "{err}");
    let policy = f.config.policy_for("127.0.0.1".parse().unwrap(), &[]);
    let restricted = policy.restrictions.clone();
    assert_eq!(f.run(&mut m, None, &restricted, 1).unwrap().vmta, "a");
    let err = f.run(&mut m, Some("b"), &restricted, 1).unwrap_err();
    assert!(err.contains("`b` is not allowed for this sender (allowed-virtual-mta)"), "{err}");
}

/// `process-x-job` takes the job from its header (and removes it); `verp-default` marks the
/// message for VERP; an injection's own job id is kept.
#[test]
fn the_job_header_and_verp() {
    let f = Fixture::new("<source 0/0>\n process-x-job yes\n verp-default yes\n</source>\n");
    let any = SenderRestrictions::default();
    let mut m = message(&["x@y.test"], "X-Job: spring-sale\r\nSubject: x\r\n\r\nb\r\n");
    f.run(&mut m, None, &any, 1).unwrap();
    assert_eq!(m.job_id, "spring-sale");
    assert!(!String::from_utf8_lossy(&m.data).contains("X-Job"), "removed");
    assert_ne!(m.flags & sluice_spool::codec::flags::VERP, 0);
    let mut m = message(&["x@y.test"], "X-Job: from-header\r\nSubject: x\r\n\r\nb\r\n");
    m.job_id = "from-the-api".into();
    f.run(&mut m, None, &any, 1).unwrap();
    assert_eq!(m.job_id, "from-the-api");
}

/// Without keys nothing is signed and nothing changes.
#[test]
fn no_keys_no_signature() {
    let f = Fixture::new("<domain *>\n dkim-sign yes\n</domain>\n");
    let mut data = b"From: a@src.test\r\nSubject: x\r\n\r\nb\r\n".to_vec();
    let before = data.clone();
    assert!(sign(&f.keys, &f.config, &["x@y.test".into()], "", &mut data));
    assert_eq!(data, before);
}

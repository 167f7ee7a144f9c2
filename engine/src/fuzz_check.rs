//! The checks the fuzz targets (`fuzz/fuzz_targets/`) run on each input, here so that the
//! ordinary test suite replays every kept input through the very same code
//! (`tests/fuzz_regressions.rs`): a crash found once fails `cargo test` for ever after, not
//! only a lucky fuzz run. Every parser of peer input has one: SMTP commands and data, BDAT and
//! AUTH (`smtp_session`), receivers' replies (`smtp_reply`, `smtp_client`), message content
//! (`message_content`), feedback and bounce reports (`reports`), the HTTP API's requests
//! (`http_request`) and MX answers (`mx_answer`).

use crate::smtp::client::{Client, ClientEvent, TlsMode, TxnParams};
use crate::smtp::data::DataScanner;
use crate::smtp::mime::{self, Convert};
use crate::smtp::reply::parse_reply;
use crate::smtp::server::{Event, Session, SessionPolicy};

/// The inbound SMTP session (command parser, DATA and BDAT receiver, AUTH, state machine) fed
/// arbitrary bytes in arbitrary pieces, as a client may send them: it never panics, never
/// answers without a reply code, and never hands over a message whose data holds a bare
/// CR/LF or NUL. The first byte picks the piece size and the policy.
pub fn smtp_session(input: &[u8]) {
    let Some((&split, bytes)) = input.split_first() else { return };
    let policy = SessionPolicy {
        relay_allowed: true,
        smtputf8: split & 0x80 == 0,
        chunking: split & 0x40 == 0,
        plain_auth_in_clear: true,
        auth: (split & 0x20 == 0).then(test_users),
        allow_mailmerge: split & 0x10 == 0,
        ..SessionPolicy::default()
    };
    let mut s = Session::new(policy, "192.0.2.1".parse().expect("an address"), 1);
    let chunk = (split as usize % 32) + 1;
    for piece in bytes.chunks(chunk) {
        let mut at = 0;
        while at < piece.len() {
            let (used, event) = s.receive(1_795_000_000_000, &piece[at..]);
            at += used;
            match event {
                Some(Event::Message) => {
                    let m = s.take_message();
                    assert!(!m.recipients.is_empty());
                    // A mail merge: each recipient's message, made from the parts and values.
                    let merged: Vec<Vec<u8>> = match &m.merge {
                        Some(merge) => (0..m.recipients.len())
                            .filter_map(|i| {
                                merge.render(i, &m.recipients[i], &m.mail_from, "date", split & 1 == 0).ok()
                            })
                            .map(|p| p.data)
                            .collect(),
                        None => vec![m.data.clone()],
                    };
                    for data in merged {
                        assert!(!data.contains(&0), "a NUL got through");
                        for (i, b) in data.iter().enumerate() {
                            if *b == b'\n' {
                                assert!(i > 0 && data[i - 1] == b'\r', "a bare LF got through");
                            }
                        }
                    }
                    s.message_stored(true, "fuzz");
                }
                Some(Event::StartTls) => s.tls_started(),
                Some(Event::Close) => return,
                None if used == 0 => break,
                None => {}
            }
        }
        let out = s.output().to_vec();
        s.clear_output();
        for line in out.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            assert!(line.len() >= 4 && line[..3].iter().all(u8::is_ascii_digit), "{:?}", String::from_utf8_lossy(line));
        }
        if s.is_closing() {
            return;
        }
    }
}

fn test_users() -> std::sync::Arc<crate::smtp::auth::Users> {
    let text = "smtp-listener 127.0.0.1:25\n<smtp-user alice>\n password s3cret\n</smtp-user>\n";
    let config = sluice_config::load("fuzz.conf", text, &mut |_| Err("no includes".into())).expect("a valid config");
    std::sync::Arc::new(crate::smtp::auth::Users::from_config(&config, 7))
}

/// The DATA receiver: any split of the input gives the same content and the same end as the
/// whole input at once (differential), only CRLF.CRLF ends it, and with bare LF normalized
/// the content has no bare LF left.
pub fn data_scanner(input: &[u8]) {
    type Scanned = (Vec<u8>, Option<usize>, bool, bool, bool);
    fn scan(input: &[u8], chunk: usize, normalize: bool) -> Scanned {
        let mut s = DataScanner::new(normalize);
        let mut out = Vec::new();
        let mut at = 0;
        for piece in input.chunks(chunk.max(1)) {
            let (used, done) = s.scan(piece, |b| out.extend_from_slice(b));
            at += used;
            if done {
                return (out, Some(at), s.bare_newline(), s.smuggling, s.nul);
            }
        }
        (out, None, s.bare_newline(), s.smuggling, s.nul)
    }
    let Some((&split, bytes)) = input.split_first() else { return };
    for normalize in [false, true] {
        let whole = scan(bytes, bytes.len(), normalize);
        let pieces = scan(bytes, split as usize % 17 + 1, normalize);
        assert_eq!(whole, pieces, "chunking changed the result");
        if let Some(end) = whole.1 {
            assert!(bytes[..end].ends_with(b".\r\n"), "ended without a terminator");
            assert!(end == 3 || bytes[..end].ends_with(b"\r\n.\r\n"), "ended mid-line");
        }
        if normalize {
            let content = &whole.0;
            let bare_lf = content.iter().enumerate().any(|(i, b)| *b == b'\n' && (i == 0 || content[i - 1] != b'\r'));
            assert!(!bare_lf, "a bare LF left after normalizing");
        }
    }
}

/// The SMTP reply parser: a parsed reply has a 3-digit code and used no more than it was given.
pub fn smtp_reply(input: &[u8]) {
    if let Ok(Some((reply, used))) = parse_reply(input) {
        assert!(used <= input.len());
        assert!((100..1000).contains(&reply.code));
        let _ = (reply.enhanced(), reply.line(), reply.is_positive(), reply.is_transient(), reply.is_permanent());
    }
}

/// The delivery client (what reads a receiver's replies) fed whatever a receiver may answer,
/// in pieces: it never panics, a finished transaction has one reply per recipient, and every
/// command it writes is a whole CRLF line of at most 1000 octets without a bare CR or LF.
pub fn smtp_client(input: &[u8]) {
    let Some((&split, bytes)) = input.split_first() else { return };
    let mut c = Client::new("sender.example");
    c.set_tls_mode(if split & 0x80 == 0 { TlsMode::Opportunistic } else { TlsMode::Off });
    if split & 0x40 != 0 {
        c.disable_pipelining();
    }
    let rcpts = ["a@example.com", "b@example.com", "c@example.com"];
    let (mut started, mut done) = (0, 0);
    let chunk = (split as usize % 24) + 1;
    let mut pending: Vec<u8> = Vec::new();
    for piece in bytes.chunks(chunk) {
        pending.extend_from_slice(piece);
        loop {
            let (used, event) = c.receive(&pending);
            assert!(used <= pending.len());
            pending.drain(..used);
            match event {
                Some(ClientEvent::Ready) if started < 4 => {
                    started += 1;
                    let params = TxnParams { envid: "id+x", smtputf8: true, ..TxnParams::default() };
                    c.start_with("bounces@example.com", &rcpts[..1 + started % 3], 100, &params);
                }
                Some(ClientEvent::Ready) => c.quit(),
                Some(ClientEvent::SendBody) => c.body_sent(),
                Some(ClientEvent::StartTls) => c.tls_started(),
                Some(ClientEvent::Done(replies)) => {
                    done += 1;
                    assert_eq!(replies.len(), 1 + started % 3, "one reply per recipient");
                }
                Some(ClientEvent::Failed(reply)) => {
                    assert!((100..1000).contains(&reply.code));
                    return;
                }
                Some(ClientEvent::Closed) => return,
                None if used == 0 => break,
                None => {}
            }
            if c.take_body_request() {
                c.body_sent();
            }
        }
        let out = c.output().to_vec();
        c.clear_output();
        assert!(out.is_empty() || out.ends_with(b"\r\n"), "a command without its CRLF");
        for line in out.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            assert!(line.len() <= 1000 && line.ends_with(b"\r") && !line[..line.len() - 1].contains(&b'\r'));
        }
    }
    assert!(done <= started);
}

/// What sluice does to a message's content, which any sender controls: header rules
/// (`remove-header`, `add-message-id-header`, `process-x-envid`, X-Job), header values for
/// accounting, the From domain (for DKIM), `X-DKIM-Options`, 8-bit and long-line conversion,
/// and dot-stuffing, which must round-trip.
pub fn message_content(input: &[u8]) {
    use crate::smtp::headers;
    let Some((&flags, message)) = input.split_first() else { return };
    let stuffed = mime::stuff(message);
    assert_eq!(mime::unstuff(&stuffed), message, "unstuffing undoes stuffing");
    let mut data = stuffed.clone();
    let rules = sluice_config::HeaderRules {
        remove_received: flags & 1 != 0,
        remove: vec!["X-Remove".into(), "Received".into()],
        add_message_id: flags & 2 != 0,
        add_date: if flags & 4 != 0 { sluice_config::AddDate::Override } else { sluice_config::AddDate::Yes },
        process_x_envid: flags & 8 != 0,
        date_at_delivery: false,
    };
    let shaping = headers::Shaping { rules: &rules, ours_first: flags & 16 != 0, message_id: "<1@x>", date: "d" };
    let _ = headers::shape(&mut data, &shaping);
    // `date-header-time delivery`: the Date at each attempt.
    let delivery = sluice_config::HeaderRules { date_at_delivery: true, ..rules.clone() };
    let _ = headers::date_for_delivery(&mut data, &delivery, "later");
    let _ = headers::take_header(&mut data, "X-Job", flags & 32 != 0);
    headers::rewrite_from_domain(&mut data, |d| Some(format!("{d}.rewritten.example")));
    let _ = headers::header_value(&data, "Subject");
    let _ = headers::has_field(&data, "From");
    if let Some(domain) = crate::dkim::from_domain(&stuffed) {
        assert!(!domain.is_empty());
    }
    let _ = crate::dkim::unstuffed(&stuffed);
    if let Some(options) = headers::header_value(message, "X-DKIM-Options") {
        let _ = crate::dkim::MessageOptions::parse(&options);
    }
    let what = Convert { eight_bit: flags & 64 != 0, long_lines: flags & 128 != 0 };
    // Only "no panic" here: sluice converts only messages that need it (8-bit content for a
    // receiver without 8BITMIME, long lines), and a malformed part may gain a blank line.
    let _ = mime::convert_stuffed(&stuffed, what);
}

/// Feedback and bounce reports (ARF, XARF, RFC 3464 DSNs) come from anyone on the internet.
pub fn reports(input: &[u8]) {
    let text = String::from_utf8_lossy(input);
    let _ = crate::feedback::parse(&text);
    if let Some(bounces) = crate::feedback::parse_dsn(&text, "bounces+a=b.example@bounces.example.com") {
        for b in bounces {
            assert!(!b.rcpt.contains('\n'));
        }
    }
}

/// The management API's request: the query string (any bytes a client sends, made text as
/// the HTTP stack does) and an injection body.
pub fn http_request(input: &[u8]) {
    let cut = input.iter().position(|b| *b == 0).unwrap_or(input.len());
    let query = String::from_utf8_lossy(&input[..cut]);
    for (k, v) in crate::http::parse_query(&query) {
        let _ = crate::sched::admin::Selector::parse(&v);
        let _ = k.len();
    }
    if let Ok(t) = crate::http::parse_transmission(input.get(cut + 1..).unwrap_or_default(), 0) {
        assert!(t.recipients().all(|r| crate::http::plausible_address(r)));
        assert!(t
            .messages
            .iter()
            .all(|m| !m.recipients.is_empty() && (m.data.is_empty() || m.data.ends_with(b"\r\n"))));
        assert!(t.job_id.chars().count() <= crate::http::CAMPAIGN_ID_CHARS_MAX);
    }
}

/// Any bytes a resolver may hand back, decoded as a DNS message by hickory (the decoder of
/// the resolver sluice uses); its MX records then go through sluice's plan (`mx_answer`).
#[cfg(feature = "dns-message")]
pub fn mx_message(input: &[u8]) {
    use hickory_proto::op::Message;
    use hickory_proto::rr::RData;
    let Ok(message) = Message::from_vec(input) else { return };
    let records: Vec<(u16, String)> = message
        .answers()
        .iter()
        .filter_map(|r| match r.data() {
            Some(RData::MX(mx)) => Some((mx.preference(), mx.exchange().to_utf8())),
            _ => None,
        })
        .collect();
    mx_answer(&records);
}

/// An MX answer's records (the preference and exchange pairs): the plan never panics and
/// keeps every usable host once.
pub fn mx_answer(records: &[(u16, String)]) {
    use crate::route::mx::{plan, MxPlan};
    let (p, set) = plan(records);
    match p {
        MxPlan::NullMx => assert_eq!(records.len(), 1),
        MxPlan::Levels(levels) => {
            assert_eq!(levels.iter().map(Vec::len).sum::<usize>(), set.len());
            assert!(levels.iter().all(|l| !l.is_empty()));
        }
    }
}

//! Inbound session behaviour, as (input, expected replies) tables. Each case names the RFC
//! rule or the published attack it checks.

mod common;
use sluice_engine::smtp::server::SessionPolicy;

fn policy(relay: bool) -> SessionPolicy {
    SessionPolicy {
        host_name: "mx.test".into(),
        relay_allowed: relay,
        smtp_service: true,
        max_message_size: 2000,
        max_rcpt_per_message: 3,
        add_received_header: false,
        hide_message_source: false,
        ..Default::default()
    }
}

/// Feeds `input` (all at once, or byte by byte) and returns the replies' codes, and the
/// messages that completed (each stored at once as durable).
fn run(policy: SessionPolicy, input: &[u8], byte_by_byte: bool) -> (Vec<u16>, Vec<Vec<u8>>) {
    let (lines, messages) = common::drive(policy, input, byte_by_byte);
    (common::codes(&lines), messages)
}

const ENVELOPE: &str = "EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nDATA\r\n";

#[test]
fn pipelined_transaction_rfc2920() {
    for bb in [false, true] {
        let input = format!("{ENVELOPE}Subject: x\r\n\r\n..dot\r\n.\r\nQUIT\r\n");
        let (codes, msgs) = run(policy(true), input.as_bytes(), bb);
        assert_eq!(codes, vec![220, 250, 250, 250, 354, 250, 221]);
        // Stored in transparency form: the dot-stuffed line stays stuffed.
        assert_eq!(msgs, vec![b"Subject: x\r\n\r\n..dot\r\n".to_vec()]);
    }
}

#[test]
fn smuggling_variants_never_end_data() {
    // Published SMTP smuggling end-of-data variants (SEC Consult, 2023). None may end the
    // message; the message is refused for its bare line ends, and the smuggled MAIL inside is
    // never executed as a command.
    let variants: &[&[u8]] = &[b"\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\r", b"\r\n.\n", b"\r.\n", b"\n.\r"];
    for v in variants {
        let mut input = format!("{ENVELOPE}Subject: x\r\n\r\nbody").into_bytes();
        input.extend_from_slice(v);
        input.extend_from_slice(b"MAIL FROM:<evil@x.test>\r\nRCPT TO:<v@y.test>\r\nDATA\r\nsmuggled\r\n.\r\nQUIT\r\n");
        for bb in [false, true] {
            let (codes, msgs) = run(policy(true), &input, bb);
            assert!(msgs.is_empty(), "variant {v:?} let a message through");
            assert_eq!(codes, vec![220, 250, 250, 250, 354, 550, 221], "variant {v:?}");
        }
    }
}

#[test]
fn relay_denied_without_permission_rfc5321_3_6() {
    let (codes, _) = run(policy(false), format!("{ENVELOPE}QUIT\r\n").as_bytes(), false);
    assert_eq!(codes, vec![220, 250, 250, 550, 554, 221]);
}

#[test]
fn too_many_recipients_gets_452_rfc5321_4_5_3_1_10() {
    let input = "EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<1@y.test>\r\nRCPT TO:<2@y.test>\r\nRCPT TO:<3@y.test>\r\nRCPT TO:<4@y.test>\r\n";
    let (codes, _) = run(policy(true), input.as_bytes(), false);
    assert_eq!(codes, vec![220, 250, 250, 250, 250, 250, 452]);
}

#[test]
fn size_limits_rfc1870() {
    let (codes, _) = run(policy(true), b"EHLO c\r\nMAIL FROM:<a@b.test> SIZE=999999\r\n", false);
    assert_eq!(codes, vec![220, 250, 552]);
    let big = format!("{ENVELOPE}{}\r\n.\r\nNOOP\r\n", "x\r\n".repeat(1000));
    let (codes, msgs) = run(policy(true), big.as_bytes(), false);
    assert_eq!((codes, msgs.len()), (vec![220, 250, 250, 250, 354, 552, 250], 0));
}

#[test]
fn line_limits_rfc5321_4_5_3_1() {
    let long_cmd = format!("EHLO {}\r\nNOOP\r\n", "a".repeat(2000));
    let (codes, _) = run(policy(true), long_cmd.as_bytes(), false);
    assert_eq!(codes, vec![220, 500, 250]);
    // RFC 5321 §4.5.3.1.6: a text line over 1000 octets. `long-lines encode` (the default)
    // wraps it as quoted-printable, losslessly; `long-lines reject` refuses the message.
    let long_text = format!("{ENVELOPE}Subject: x\r\n\r\n{}\r\n.\r\n", "y".repeat(1200));
    let (codes, msgs) = run(policy(true), long_text.as_bytes(), true);
    assert_eq!(codes, vec![220, 250, 250, 250, 354, 250]);
    let stored = String::from_utf8(msgs[0].clone()).unwrap();
    assert!(stored.contains("Content-Transfer-Encoding: quoted-printable\r\n"), "{stored}");
    assert!(stored.lines().all(|l| l.len() <= 998), "{stored}");
    let body = stored.split_once("\r\n\r\n").unwrap().1.replace("=\r\n", "");
    assert_eq!(body, format!("{}\r\n", "y".repeat(1200)), "soft breaks only");
    let reject = SessionPolicy { long_lines: sluice_config::LongLines::Reject, ..policy(true) };
    let (codes, msgs) = run(reject, long_text.as_bytes(), true);
    assert_eq!((codes, msgs.len()), (vec![220, 250, 250, 250, 354, 550], 0));
}

#[test]
fn bare_lf_normalized_or_refused_smuggling_always_refused() {
    // LF-only line ends from a careless injector: stored as CRLF (`bare-lf normalize`, the
    // default), or refused (`bare-lf reject`). The end of data is CRLF.CRLF either way.
    let sloppy = format!("{ENVELOPE}Subject: x\n\nline one\n..dot\nline two\r\n.\r\nQUIT\r\n");
    for bb in [false, true] {
        let (codes, msgs) = run(policy(true), sloppy.as_bytes(), bb);
        assert_eq!(codes, vec![220, 250, 250, 250, 354, 250, 221]);
        assert_eq!(msgs, vec![b"Subject: x\r\n\r\nline one\r\n..dot\r\nline two\r\n".to_vec()]);
        let reject = SessionPolicy { bare_lf: sluice_config::BareLf::Reject, ..policy(true) };
        let (codes, msgs) = run(reject, sloppy.as_bytes(), bb);
        assert_eq!((codes, msgs.len()), (vec![220, 250, 250, 250, 354, 550, 221], 0));
    }
}

#[test]
fn command_sequence_errors_rfc5321_4_1_4() {
    let cases: &[(&str, &[u16])] = &[
        ("MAIL FROM:<a@b.test>\r\n", &[220, 503]),
        ("EHLO c\r\nRCPT TO:<x@y.test>\r\n", &[220, 250, 503]),
        ("EHLO c\r\nMAIL FROM:<a@b.test>\r\nDATA\r\n", &[220, 250, 250, 554]),
        ("EHLO c\r\nMAIL FROM:<a@b.test>\r\nMAIL FROM:<a@b.test>\r\n", &[220, 250, 250, 503]),
        ("EHLO c\r\nMAIL FROM:a@b.test\r\n", &[220, 250, 501]),
        ("EHLO c\r\nMAIL FROM:<a@b.test> FOO=1\r\n", &[220, 250, 555]),
        ("VRFY x\r\nHELP\r\nNOOP\r\nRSET\r\n", &[220, 252, 214, 250, 250]),
        ("HELO\r\n", &[220, 501]),
        ("XYZW\r\n", &[220, 500]),
        ("EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<x@y.test>\r\n", &[220, 250, 250, 250]),
    ];
    for (input, expected) in cases {
        let (codes, _) = run(policy(true), input.as_bytes(), false);
        assert_eq!(&codes, expected, "{input:?}");
    }
}

#[test]
fn unknown_command_flood_disconnects() {
    let input = "BLAH\r\n".repeat(20);
    let (codes, _) = run(policy(true), input.as_bytes(), false);
    assert_eq!(codes.len(), 1 + 10 + 1);
    assert_eq!(*codes.last().unwrap(), 421);
}

#[test]
fn nul_in_command_is_refused() {
    let (codes, _) = run(policy(true), b"EHLO c\0x\r\n", false);
    assert_eq!(codes, vec![220, 500]);
}

#[test]
fn received_header_is_prepended() {
    let mut p = policy(true);
    p.add_received_header = true;
    let (_, msgs) = run(p, format!("{ENVELOPE}Subject: x\r\n\r\nb\r\n.\r\n").as_bytes(), false);
    let text = String::from_utf8(msgs[0].clone()).unwrap();
    assert!(text.starts_with("Received: from c.test ([127.0.0.1])\r\n\tby mx.test (sluice) with ESMTP id "), "{text}");
    assert!(text.ends_with("\r\nSubject: x\r\n\r\nb\r\n"), "{text}");
}

#[test]
fn smtp_service_no_refuses_at_greeting() {
    let mut p = policy(true);
    p.smtp_service = false;
    let (codes, _) = run(p, b"EHLO c\r\n", false);
    assert_eq!(codes, vec![554]);
}

/// RFC 3030 while CHUNKING is not offered: BDAT is refused and its chunk skipped, whatever
/// it holds (an RSET inside is no command); a BDAT whose size cannot be read closes the
/// session, since the chunk's end is unknown.
#[test]
fn bdat_without_chunking_discards_its_chunk_rfc3030() {
    let chunk = "RSET\r\nMAIL FROM:<evil@x.test>\r\n";
    let input =
        format!("EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nBDAT {} LAST\r\n{chunk}NOOP\r\n", chunk.len());
    let off = || SessionPolicy { chunking: false, ..policy(true) };
    for bb in [false, true] {
        let (codes, msgs) = run(off(), input.as_bytes(), bb);
        assert_eq!((codes, msgs.len()), (vec![220, 250, 250, 250, 503, 250], 0), "byte by byte: {bb}");
    }
    // Offered, but no transaction: refused, and the chunk skipped all the same.
    let input = format!("EHLO c\r\nBDAT {} LAST\r\n{chunk}NOOP\r\n", chunk.len());
    let (codes, msgs) = run(policy(true), input.as_bytes(), false);
    assert_eq!((codes, msgs.len()), (vec![220, 250, 503, 250], 0));
    let (codes, _) = run(policy(true), b"EHLO c\r\nBDAT lots\r\nRSET\r\n", false);
    assert_eq!(codes, vec![220, 250, 501], "closed after the unreadable size: no reply to RSET");
}

/// RFC 2920 §3.1: DATA ends a pipelined group. Message text sent with it, before the 354,
/// is refused as Postfix's `smtpd_forbid_unauth_pipelining` does (554 5.5.0, and the session
/// ends); nothing is stored.
#[test]
fn text_sent_before_the_354_is_refused_rfc2920() {
    let input = format!("{ENVELOPE}Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n");
    let (lines, msgs) = common::drive_chunks(policy(true), &[input.as_bytes()]);
    assert_eq!(common::codes(&lines), vec![220, 250, 250, 250, 554]);
    assert!(lines.last().unwrap().starts_with("554 5.5.0 Error: SMTP protocol synchronization"), "{lines:?}");
    assert!(msgs.is_empty());
}

/// `relay-domain` / `relay-address`: any client may send to those recipients (inbound mail
/// relayed inward); others stay refused for a source without relaying rights.
#[test]
fn relay_domain_and_relay_address_open_those_recipients_to_anyone() {
    let text = "smtp-listener 127.0.0.1:25\nrelay-domain [*.]inbound.test\nrelay-domain exact.test\nrelay-address postmaster@corp.test\n";
    let config = sluice_config::load("t.conf", text, &mut |_| Err("no".into())).unwrap();
    let p = SessionPolicy { relay_to: config.relay_to.clone(), max_rcpt_per_message: 100, ..policy(false) };
    let input = "EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@inbound.test>\r\nRCPT TO:<x@mx.inbound.test>\r\n\
                 RCPT TO:<x@exact.test>\r\nRCPT TO:<x@sub.exact.test>\r\nRCPT TO:<PostMaster@corp.test>\r\n\
                 RCPT TO:<sales@corp.test>\r\nRCPT TO:<x@far.test>\r\n";
    let (codes, _) = run(p, input.as_bytes(), false);
    assert_eq!(codes, vec![220, 250, 250, 250, 250, 250, 550, 250, 550, 550]);
}

/// CHUNKING (RFC 3030): a message in BDAT chunks, pipelined or byte by byte, is the same
/// message DATA would have carried (stored dot-stuffed), each chunk answered; DATA after
/// BDAT is refused; a chunk past the size limit refuses the message.
#[test]
fn bdat_chunks_make_the_message_rfc3030() {
    let (one, two) = ("Subject: chunked\r\n\r\n.leading dot\r\n", "bin\x01ary\r\nlast line");
    let input = format!(
        "EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nBDAT {}\r\n{one}BDAT {} LAST\r\n{two}QUIT\r\n",
        one.len(),
        two.len()
    );
    for bb in [false, true] {
        let (lines, msgs) = run(policy(true), input.as_bytes(), bb);
        assert_eq!(lines, vec![220, 250, 250, 250, 250, 250, 221], "byte by byte: {bb}");
        assert_eq!(msgs, vec![b"Subject: chunked\r\n\r\n..leading dot\r\nbin\x01ary\r\nlast line\r\n".to_vec()]);
    }
    let (lines, _) = common::drive(policy(true), b"EHLO c\r\n", false);
    assert!(lines.contains(&"250-CHUNKING".to_string()), "{lines:?}");
    let input = "EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nBDAT 3\r\nabcDATA\r\n";
    let (codes, _) = run(policy(true), input.as_bytes(), false);
    assert_eq!(codes, vec![220, 250, 250, 250, 250, 503]);
    let big = "x".repeat(2500);
    let input = format!("EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nBDAT 2500 LAST\r\n{big}NOOP\r\n");
    let (codes, msgs) = run(policy(true), input.as_bytes(), false);
    assert_eq!((codes, msgs.len()), (vec![220, 250, 250, 250, 552, 250], 0));
}

/// DSN parameters (RFC 3461) kept with the message: RET, ENVID (xtext decoded), NOTIFY and
/// ORCPT per recipient; malformed ones refused with 501. SMTPUTF8 (RFC 6531): a UTF-8
/// address in a transaction that says so is taken; without it, 553 5.6.7.
#[test]
fn dsn_and_smtputf8_parameters_rfc3461_rfc6531() {
    let input = "EHLO c\r\nMAIL FROM:<a@b.test> RET=HDRS ENVID=batch+2B42\r\n\
                 RCPT TO:<x@y.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;X+40y.test\r\nRCPT TO:<z@y.test> NOTIFY=NEVER\r\n\
                 RCPT TO:<w@y.test>\r\nDATA\r\nSubject: x\r\n\r\nhi\r\n.\r\n";
    let (lines, msgs) = common::drive_messages(policy(true), &common::pipelined(input.as_bytes()));
    assert_eq!(common::codes(&lines), vec![220, 250, 250, 250, 250, 250, 354, 250], "{lines:?}");
    let m = &msgs[0];
    assert_eq!(m.envid, "batch+42");
    assert_eq!(m.flags & sluice_spool::codec::flags::RET_HDRS, sluice_spool::codec::flags::RET_HDRS);
    use sluice_engine::sched::notify;
    assert_eq!(
        m.rcpt_dsn,
        vec![(0, notify::SUCCESS | notify::FAILURE, "rfc822;X@y.test".to_string()), (1, notify::NEVER, String::new())]
    );
    for bad in [
        "MAIL FROM:<a@b.test> RET=ALL",
        "MAIL FROM:<a@b.test> ENVID=a=b",
        "MAIL FROM:<a@b.test> RET=FULL\r\nRCPT TO:<x@y.test> NOTIFY=NEVER,DELAY",
    ] {
        let (codes, _) = run(policy(true), format!("EHLO c\r\n{bad}\r\n").as_bytes(), false);
        assert_eq!(codes.last(), Some(&501), "{bad}");
    }
    // SMTPUTF8: offered, declared, taken.
    let input = "EHLO c\r\nMAIL FROM:<jos\u{e9}@b\u{fc}cher.test> SMTPUTF8\r\nRCPT TO:<\u{7528}\u{6237}@y.test>\r\nDATA\r\nSubject: x\r\n\r\nhi\r\n.\r\n";
    let (lines, msgs) = common::drive_messages(policy(true), &common::pipelined(input.as_bytes()));
    assert_eq!(common::codes(&lines), vec![220, 250, 250, 250, 354, 250], "{lines:?}");
    assert!(lines.contains(&"250-SMTPUTF8".to_string()));
    assert_eq!(msgs[0].mail_from, "jos\u{e9}@b\u{fc}cher.test");
    assert_eq!(msgs[0].recipients, vec!["\u{7528}\u{6237}@y.test".to_string()]);
    assert_ne!(msgs[0].flags & sluice_spool::codec::flags::SMTPUTF8, 0);
    // Not declared: 553; not offered (allow-smtputf8 no): 553 and no SMTPUTF8 in EHLO.
    let input = "EHLO c\r\nMAIL FROM:<jos\u{e9}@b.test>\r\n";
    assert_eq!(run(policy(true), input.as_bytes(), false).0, vec![220, 250, 553]);
    let off = SessionPolicy { smtputf8: false, ..policy(true) };
    let input = "EHLO c\r\nMAIL FROM:<jos\u{e9}@b.test> SMTPUTF8\r\n";
    let (lines, _) = common::drive(off, input.as_bytes(), false);
    assert_eq!(common::codes(&lines), vec![220, 250, 553]);
    assert!(!lines.iter().any(|l| l.starts_with("250-SMTPUTF8")), "{lines:?}");
    assert!(lines.last().unwrap().contains("SMTPUTF8 (RFC 6531) is not offered"), "{lines:?}");
}

/// RFC 5321 §6.3: a message that went through more hosts than `max-message-hops` is
/// looping: refused with 554 5.4.6 (over DATA and BDAT), one at the limit is taken.
#[test]
fn a_looping_message_is_refused_max_message_hops() {
    let received = |n: usize| {
        (0..n).map(|i| format!("Received: from h{i}.test\r\n\tby h{}.test; now\r\n", i + 1)).collect::<String>()
    };
    let p = SessionPolicy { max_message_hops: 3, add_received_header: true, ..policy(true) };
    for (hops, code) in [(3, 250), (4, 554)] {
        let data = format!("{ENVELOPE}{}Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n", received(hops));
        let (codes, msgs) = run(p.clone(), data.as_bytes(), false);
        assert_eq!(codes, vec![220, 250, 250, 250, 354, code, 221], "{hops} hops");
        assert_eq!(msgs.len(), usize::from(code == 250));
        let message = format!("{}Subject: x\r\n\r\nbody\r\n", received(hops));
        let bdat = format!(
            "EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nBDAT {} LAST\r\n{message}QUIT\r\n",
            message.len()
        );
        let (codes, _) = run(p.clone(), bdat.as_bytes(), false);
        assert_eq!(codes, vec![220, 250, 250, 250, code, 221], "{hops} hops over BDAT");
    }
}

/// `dsn-return-default`: a MAIL without RET gets the source's default; a RET the client gave
/// stands.
#[test]
fn dsn_return_default_fills_in_a_missing_ret() {
    use sluice_config::DsnReturn;
    use sluice_spool::codec::flags::{RET_FULL, RET_HDRS};
    let ret = |default: Option<DsnReturn>, param: &str| {
        let input = format!(
            "EHLO c\r\nMAIL FROM:<a@b.test>{param}\r\nRCPT TO:<x@y.test>\r\nDATA\r\nSubject: x\r\n\r\nhi\r\n.\r\n"
        );
        let p = SessionPolicy { dsn_return_default: default, ..policy(true) };
        let (_, msgs) = common::drive_messages(p, &common::pipelined(input.as_bytes()));
        msgs[0].flags & (RET_FULL | RET_HDRS)
    };
    assert_eq!(ret(None, ""), 0, "system: the DSN decides (headers)");
    assert_eq!(ret(Some(DsnReturn::Full), ""), RET_FULL);
    assert_eq!(ret(Some(DsnReturn::Headers), ""), RET_HDRS);
    assert_eq!(ret(Some(DsnReturn::Full), " RET=HDRS"), RET_HDRS, "the client's RET stands");
}

/// `too-many-rcpts-fails-message`: past `max-rcpt-per-message` every RCPT is taken and the
/// message refused whole at DATA (or BDAT); without it the extra recipients get 452.
#[test]
fn too_many_recipients_fail_the_message_when_asked() {
    let rcpts = "RCPT TO:<a@y.test>\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\nRCPT TO:<d@y.test>\r\n";
    let input =
        format!("EHLO c.test\r\nMAIL FROM:<a@b.test>\r\n{rcpts}DATA\r\nSubject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n");
    let (codes, msgs) = run(policy(true), input.as_bytes(), false);
    assert_eq!(codes, vec![220, 250, 250, 250, 250, 250, 452, 354, 250, 221], "max 3: the 4th gets 452");
    assert_eq!(msgs.len(), 1);
    let whole = SessionPolicy { too_many_rcpts_fails_message: true, ..policy(true) };
    let input = format!("EHLO c.test\r\nMAIL FROM:<a@b.test>\r\n{rcpts}DATA\r\nQUIT\r\n");
    let (lines, msgs) = common::drive(whole.clone(), input.as_bytes(), false);
    assert_eq!(common::codes(&lines), vec![220, 250, 250, 250, 250, 250, 250, 552, 221], "{lines:?}");
    assert!(lines.iter().any(|l| l.contains("too-many-rcpts-fails-message")), "{lines:?}");
    assert!(msgs.is_empty());
    let input = format!("EHLO c.test\r\nMAIL FROM:<a@b.test>\r\n{rcpts}BDAT 5 LAST\r\nhello");
    let (codes, msgs) = run(whole, input.as_bytes(), false);
    assert_eq!(codes, vec![220, 250, 250, 250, 250, 250, 250, 552]);
    assert!(msgs.is_empty(), "the chunk is skipped, not taken");
}

/// PowerMTA's mail merge as its clients speak it (Ruby's `powermta` gem, PHP's
/// PowerMta_Mail_Protocol): XMRG, XDFN before each RCPT, XPRT parts; XACK OFF silences XDFN
/// and RCPT; refused where `allow-mailmerge` is off; DATA and BDAT are not part of it.
#[test]
fn mail_merge_commands_make_one_transaction_with_parts_and_values() {
    let p = SessionPolicy { allow_mailmerge: true, ..policy(true) };
    let input = "EHLO c.test\r\nXACK ON\r\nXMRG FROM:<news@b.test> VERP\r\nXDFN fname=\"Ann\" *parts=\"1,2\"\r\nRCPT TO:<ann@y.test>\r\n\
                 XDFN fname=\"Bob\"\r\nXDFN *parts=1\r\nRCPT TO:<bob@y.test>\r\nXPRT 1\r\nSubject: Hi [fname]\r\n\r\nDear [fname]\r\n.\r\n\
                 XPRT 2 LAST\r\n..P.S.\r\n.\r\nQUIT\r\n";
    let (lines, msgs) = common::drive_messages(p.clone(), &[input.as_bytes()]);
    assert_eq!(
        common::codes(&lines),
        vec![220, 250, 250, 250, 250, 250, 250, 250, 250, 354, 250, 354, 250, 221],
        "{lines:?}"
    );
    let m = &msgs[0];
    assert_eq!(
        (m.mail_from.as_str(), m.recipients.clone()),
        ("news@b.test", vec!["ann@y.test".to_string(), "bob@y.test".into()])
    );
    assert_ne!(m.flags & sluice_spool::codec::flags::VERP, 0, "XMRG's VERP");
    let merge = m.merge.as_ref().expect("a mail-merge message");
    let ann = merge.render(0, "ann@y.test", &m.mail_from, "now", true).unwrap();
    assert_eq!(ann.data, b"Subject: Hi Ann\r\n\r\nDear Ann\r\n..P.S.\r\n");
    let bob = merge.render(1, "bob@y.test", &m.mail_from, "now", true).unwrap();
    assert_eq!(bob.data, b"Subject: Hi Bob\r\n\r\nDear Bob\r\n", "part 1 only");
    // XACK OFF: no reply to XDFN or RCPT, the rest as before.
    let input = "EHLO c.test\r\nXACK OFF\r\nXMRG FROM: <news@b.test>\r\nXDFN a=1\r\nRCPT TO:<ann@y.test>\r\nXPRT 1 LAST\r\n[a]\r\n.\r\n";
    let (lines, msgs) = common::drive_messages(p.clone(), &[input.as_bytes()]);
    assert_eq!(common::codes(&lines), vec![220, 250, 250, 250, 354, 250], "{lines:?}");
    assert_eq!(msgs[0].merge.as_ref().unwrap().render(0, "ann@y.test", "", "", true).unwrap().data, b"1\r\n");
    // Not allowed here; DATA inside a merge; XDFN outside one.
    let (lines, _) = common::drive(policy(true), b"EHLO c\r\nXMRG FROM:<a@b.test>\r\n", false);
    assert!(lines.last().unwrap().starts_with("502 5.5.1 Mail merge is not allowed"), "{lines:?}");
    let (lines, _) =
        common::drive(p, b"EHLO c\r\nXDFN a=1\r\nXMRG FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nDATA\r\n", false);
    assert_eq!(common::codes(&lines), vec![220, 250, 503, 250, 250, 503], "{lines:?}");
}

//! The pickup directory (`pickup DIR BAD-DIR`): files with `x-sender:` / `x-receiver:` lines
//! dropped in DIR are delivered (to an aiosmtpd receiver, byte for byte: LF files become CRLF,
//! a leading dot survives) and removed; a file that is no message goes to BAD-DIR with the
//! reason beside it; a dot-file (still being written) waits until it is renamed; `bcc` in
//! `<source {pickup}>` copies each message to an archive.

mod common;
use common::*;
use std::path::PathBuf;
use std::time::Duration;

/// A relay taking files from a pickup directory (and `extra` configuration), delivering
/// `rcv.test` to `receiver`: the relay, the directories' parent, the pickup and bad-mail
/// directories.
fn relay_with_pickup(receiver: &PyReceiver, extra: &str) -> (Relay, TempDir, PathBuf, PathBuf) {
    let dirs = TempDir::new("pickup");
    let (inbox, bad) = (dirs.path().join("pickup"), dirs.path().join("badmail"));
    let relay = Relay::start(
        &format!(
            "pickup {} {}\n{extra}<domain rcv.test>\n smtp-hosts [127.0.0.1]:{}\n</domain>\n",
            inbox.display(),
            bad.display(),
            receiver.addr.port()
        ),
        None,
    );
    wait_for("the pickup directory", Duration::from_secs(10), || inbox.exists().then_some(()));
    (relay, dirs, inbox, bad)
}

#[test]
fn good_files_are_delivered_and_removed_bad_ones_set_aside() {
    let receiver = PyReceiver::start();
    let (relay, dirs, inbox, bad) =
        relay_with_pickup(&receiver, "<source {pickup}>\n process-x-envid yes\n bcc archive@rcv.test\n</source>\n");
    // IIS and PowerMTA's form: the envelope lines, then the message, LF line ends.
    let good = "x-sender: <news@src.test>\nx-receiver: a@rcv.test\nX-Receiver: <b@rcv.test>\nx-envid: campaign-7\n\
                From: News <news@src.test>\nTo: a@rcv.test\nSubject: from the pickup directory\n\n\
                .a line that starts with a dot\nend\n";
    std::fs::write(dirs.path().join("good.tmp"), good).unwrap();
    std::fs::rename(dirs.path().join("good.tmp"), inbox.join("0001.eml")).unwrap();
    std::fs::write(inbox.join("0002.eml"), "x-sender: news@src.test\nSubject: nobody to send to\n\nbody\n").unwrap();
    // Being written: a dot-file is left alone until it is renamed.
    std::fs::write(inbox.join(".0003.eml"), "x-sender: news@src.test\nx-receiver: c@rcv.test\n\nlate\n").unwrap();

    // `bcc` in `<source {pickup}>`: the archive gets a copy too.
    let rows = relay.wait_rows("d", 3, Duration::from_secs(30));
    let mut rcpts: Vec<&str> = rows.iter().map(|r| r["rcpt"].as_str()).collect();
    rcpts.sort();
    assert_eq!(rcpts, ["a@rcv.test", "archive@rcv.test", "b@rcv.test"]);
    assert!(rows.iter().all(|r| r["srcMta"].starts_with("pickup") && r["envId"] == "campaign-7"), "{rows:?}");
    let files = receiver.files();
    assert_eq!(files.len(), 1, "one message, three recipients");
    let got = std::fs::read(&files[0]).unwrap();
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.contains("Subject: from the pickup directory\r\n\r\n.a line that starts with a dot\r\nend\r\n"),
        "{text}"
    );
    assert!(!text.to_ascii_lowercase().contains("x-envid"), "process-x-envid took the header: {text}");
    let env = std::fs::read_to_string(files[0].with_extension("env")).unwrap();
    assert_eq!(env.lines().next(), Some("news@src.test"));

    wait_for("the bad file set aside", Duration::from_secs(10), || bad.join("0002.eml").exists().then_some(()));
    let why = std::fs::read_to_string(bad.join("0002.eml.why")).unwrap();
    assert!(why.contains("no x-receiver"), "{why}");
    wait_for("the good file removed", Duration::from_secs(10), || (!inbox.join("0001.eml").exists()).then_some(()));
    assert!(inbox.join(".0003.eml").exists(), "a dot-file is not read");
    assert_eq!(receiver.files().len(), 1);

    std::fs::rename(inbox.join(".0003.eml"), inbox.join("0003.eml")).unwrap();
    relay.wait_rows("d", 5, Duration::from_secs(30));
    wait_for("the late file removed", Duration::from_secs(10), || (!inbox.join("0003.eml").exists()).then_some(()));
    assert_eq!(receiver.files().len(), 2);
}

/// A BSMTP mail-merge file as mailer panels write it for PowerMTA's pickup directory: each
/// recipient gets its own message, its `*vmta` choosing the source address, its `*jobid`
/// in the rows; a file whose commands are refused goes to the bad-mail directory.
#[test]
fn bsmtp_mail_merge_files_are_delivered_per_recipient() {
    let receiver = PyReceiver::start();
    let (relay, dirs, inbox, bad) =
        relay_with_pickup(&receiver, "<virtual-mta v1>\n smtp-source-host 127.0.0.2 v1.test\n</virtual-mta>\n");
    let file = "XACK ON \nXMRG FROM: <bounce@src.test>\n\
                XDFN FNAME=\"Ann\" *parts=1 *jobid=\"drop-7\"\nRCPT TO: <ann@rcv.test>\n\
                XDFN FNAME=\"Bob\" *parts=1 *jobid=\"drop-7\" *vmta=\"v1\"\nRCPT TO: <bob@rcv.test>\n\
                XPRT 1 LAST \nFrom: news@src.test\nTo: [*to]\nSubject: Hi [fname]\n\nHello [fname]\n.\n";
    std::fs::write(dirs.path().join("drop.tmp"), file).unwrap();
    std::fs::rename(dirs.path().join("drop.tmp"), inbox.join("drop-7.bsmtp")).unwrap();
    std::fs::write(inbox.join("broken.bsmtp"), "XMRG FROM:<a@src.test>\nRCPT TO:<no address>\nXPRT 1 LAST\nx\n.\n")
        .unwrap();
    let rows = relay.wait_rows("d", 2, Duration::from_secs(30));
    for (to, name, ip) in [("ann@rcv.test", "Ann", "127.0.0.1"), ("bob@rcv.test", "Bob", "127.0.0.2")] {
        let row = rows.iter().find(|r| r["rcpt"] == to).unwrap();
        assert_eq!((row["jobId"].as_str(), row["dlvSourceIp"].as_str()), ("drop-7", ip), "{row:?}");
        let files = receiver.files();
        let m = files
            .iter()
            .find(|f| std::fs::read_to_string(f.with_extension("env")).unwrap().lines().nth(1) == Some(to))
            .map(|f| std::fs::read_to_string(f).unwrap())
            .unwrap();
        assert!(m.contains(&format!("To: {to}\r\nSubject: Hi {name}\r\n\r\nHello {name}\r\n")), "{m}");
    }
    wait_for("the broken file set aside", Duration::from_secs(10), || {
        bad.join("broken.bsmtp.why").exists().then_some(())
    });
    let why = std::fs::read_to_string(bad.join("broken.bsmtp.why")).unwrap();
    assert!(why.contains("refused"), "{why}");
    wait_for("the drop file removed", Duration::from_secs(10), || (!inbox.join("drop-7.bsmtp").exists()).then_some(()));
}

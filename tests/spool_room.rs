//! A spool too small for its shards' preallocated files (issue 22: a 20 MiB spool with the
//! default 64 MiB segments refused every message with 452 and nothing said why): check-config
//! and `sluice run` name the minimum and what to change; with segments sized to the room the
//! same spool takes mail. The spool is a 20 MiB tmpfs (mounting it needs root, as CI has).

mod common;
use common::*;
use std::process::Command;

#[test]
fn a_spool_smaller_than_its_segments_is_a_clear_start_up_error() {
    let dir = TempDir::new("spoolroom");
    let spool = dir.path().join("tmpfs");
    let _mount = Tmpfs::mount(&spool, "20m");
    let conf = dir.path().join("small.conf");
    let port = free_port("127.0.0.1");
    std::fs::write(&conf, format!("smtp-listener 127.0.0.1:{port}\nspool {}/q\nshards 2\n", spool.display())).unwrap();
    let (code, out) = sluice_cli(&conf, &["check-config"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("filesystem of 20 MiB, but 2 shard(s) need at least 160 MiB"), "{out}");
    assert!(out.contains("hint: lower spool-segment-size (at most 8 MiB fits here"), "{out}");
    assert!(out.contains(&format!("{}:0:", conf.display())), "names the file: {out}");
    let (code, out) = run(Command::new(BIN).args(["run", "-c"]).arg(&conf));
    assert_eq!(code, 2, "sluice run refuses to start: {out}");
    assert!(out.contains("need at least 160 MiB"), "{out}");
    // Sized to the room, the same spool takes mail.
    let sink = SmtpSink::start("127.0.0.1", free_port("127.0.0.1"), &[], true);
    let relay = Relay::start(
        &format!(
            "spool {}/q\nspool-segment-size 4M\n<source 127.0.0.1>\n always-allow-relaying yes\n</source>\n\
             <domain *>\n smtp-hosts [127.0.0.1]:{}\n</domain>\n",
            spool.display(),
            sink.addr.port()
        ),
        Some(2),
    );
    swaks_send(&relay, "r@dest.test");
    wait_for("the message at the sink", std::time::Duration::from_secs(20), || {
        (sink.messages().len() == 1).then_some(())
    });
}

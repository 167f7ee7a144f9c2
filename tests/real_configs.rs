//! Configurations modelled on real PowerMTA ones (tests/configs, sources in
//! tests/configs/SOURCES.md) load: `sluice check-config` passes each with warnings only. For
//! each, the directives it warns about are listed here: when one becomes implemented, its
//! warnings go and this list must say so.

mod common;
use common::*;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn configs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/configs")
}

/// The directives `check-config` warns about in `path`: each warning's file:line, read back
/// from the file (`<name` for a block).
fn warned(path: &Path) -> BTreeSet<String> {
    let (code, out) = run(Command::new(BIN).arg("check-config").arg("-c").arg(path));
    assert_eq!(code, 0, "{}: {out}", path.display());
    assert!(out.ends_with("ok\n"), "{out}");
    let mut names = BTreeSet::new();
    for w in out.lines().filter_map(|l| l.strip_prefix("warning: ")) {
        let (at, _) = w.split_once(": ").unwrap();
        let (file, line) = at.rsplit_once(':').unwrap();
        let line: usize = line.parse().unwrap();
        let text = std::fs::read_to_string(file).unwrap();
        let first = text.lines().nth(line - 1).unwrap().split_whitespace().next().unwrap().to_ascii_lowercase();
        names.insert(first.trim_end_matches('>').to_string());
    }
    names
}

#[rustfmt::skip]
const EXPECTED: &[(&str, &str)] = &[
    ("01-job-accounting.conf", "run-as-root sync-msg-create sync-msg-update"),
    ("02-production-isp-rules.conf", ""),
    ("03-ip-warmup.conf", "run-as-root"),
    ("04-minimal-relay.conf", "delete-file-holders run-as-root"),
    ("05-devops-single-ip.conf", ""),
    ("06-installer-many-domains.conf", "dk-sign run-as-root sync-msg-create sync-msg-update"),
    ("07-signals-demo.conf", "<signals authentication-method deliver-matched-email enable-signals run-as-root smtp-server-tls-allow-tlsv1.1 smtp-server-tls-allow-tlsv1.2"),
    ("08-auto-install-auth.conf", "run-as-root"),
    ("09-esp-generator-goodmail.conf", "dk-sign log-auto-rotation log-messages log-rotate max-events-recorded run-as-root sync-msg-create sync-msg-update"),
    ("10-esp-domain-macros.conf", "dk-sign"),
    ("11-enterprise-5.0r8.conf", "<domain-key-list backoff-notify domain-suffix max-smtp-out smtp-server-tls-ca-file sync-msg-create sync-msg-update"),
    ("12-reconfigure-timeouts.conf", "bounce-upon-transfer-failure min-free-space run-as-root sync-msg-create sync-msg-update"),
    ("13-iem-installer.conf", "delete-file-holders run-as-root sync-msg-create sync-msg-update"),
    ("14-enterprise-template.conf", "accept-invalid-recipients delete-file-holders edns-udp-length http-redirect-to-https run-as-root smtp-source-host"),
    ("15-bounce-handler-pipes.conf", "deliver-matched-email forward-errors-to forward-unmatched-to"),
    ("16-guide-examples.conf", "records"),
    ("17-managed-rollups.conf", "/quota/ allow-cancel-during-transfer bounce-upon-transfer-failure default-smtp-port dk-sign max-events-recorded max-smtp-out-per-source-ip process-x-dkim-options run-as-root sync-msg-create sync-msg-update track-recipient-events"),
    ("18-mailcarry-panel.conf", "dk-sign dkim-identity-fallback log-rotate"),
    ("19-indented-writer.conf", "command type"),
    ("20-multi-domain-installer.conf", "run-as-root sync-msg-create sync-msg-update"),
    ("21-forum-streams.conf", "run-as-root"),
    ("22-fbl-relay-domains.conf", "deliver-matched-email forward-errors-to forward-unmatched-to"),
    ("23-go-generated-vmtas.conf", ""),
    ("24-bash-vmta-generator.conf", ""),
    ("25-panel-installer-wildcard-key.conf", ""),
    ("26-test-sink-host.conf", "dummy-smtp-ip dummy-smtp-port"),
    ("27-older-names-and-case.conf", "421-means-mx-unavailable <virtual-mta-group"),
];

#[test]
fn real_configurations_load_with_warnings_only() {
    let mut files: Vec<String> = std::fs::read_dir(configs_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".conf"))
        .collect();
    files.sort();
    let listed: Vec<&str> = EXPECTED.iter().map(|(f, _)| *f).collect();
    assert_eq!(files, listed, "every test config is listed here");
    assert!(files.len() >= 25);
    let mut differences = Vec::new();
    for (file, expected) in EXPECTED {
        let got = warned(&configs_dir().join(file));
        let expected: BTreeSet<String> = expected.split_whitespace().map(str::to_string).collect();
        if got != expected {
            let gone: Vec<_> = expected.difference(&got).collect();
            let new: Vec<_> = got.difference(&expected).collect();
            differences.push(format!("{file}: no longer warned {gone:?}, newly warned {new:?}"));
        }
    }
    assert!(differences.is_empty(), "\n{}", differences.join("\n"));
}

/// Directives no PowerMTA version has are errors, each at its line with a hint; PowerMTA
/// refuses them too.
#[test]
fn invented_directives_are_errors() {
    let path = configs_dir().join("invalid/invented-directives.conf");
    let (code, out) = run(Command::new(BIN).arg("check-config").arg("-c").arg(&path));
    assert_eq!(code, 2, "{out}");
    let errors: Vec<&str> = out.lines().filter(|l| l.contains(": unknown ")).collect();
    assert_eq!(errors.len(), 7, "{out}");
    assert!(out.contains("invented-directives.conf:17: unknown directive `command-timeout` in <domain> (hint: did you mean `smtp-command-timeout` (it goes in the global section)?)"), "{out}");
    assert!(out.trim_end().ends_with("7 errors, 0 warnings"), "{out}");
}

//! What ships for operators: the example production configuration is valid (every directive
//! read, no warning), and the systemd unit's commands are ones this binary runs with it.

mod common;
use common::*;
use std::process::Command;

fn packaged(name: &str) -> String {
    std::fs::read_to_string(format!("{}/packaging/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// The example configuration with its /etc paths pointing at files in `dir`.
fn example_config(dir: &TempDir) -> std::path::PathBuf {
    for f in ["unsubscribed.txt", "complainers.txt"] {
        std::fs::write(dir.path().join(f), "").unwrap();
    }
    let text = packaged("sluice.conf").replace("/etc/sluice/suppress/", &format!("{}/", dir.path().display()));
    let path = dir.path().join("sluice.conf");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn example_production_config_is_valid_and_fully_read() {
    let dir = TempDir::new("pkg");
    let conf = example_config(&dir);
    let (code, out) = run(Command::new(BIN).arg("check-config").arg("-c").arg(&conf));
    assert_eq!((code, out.as_str()), (0, "0 errors, 0 warnings\nok\n"), "no error and no warning: {out}");
}

#[test]
fn systemd_unit_runs_this_binary_with_the_example_config() {
    let unit = packaged("sluice.service");
    let line = |key: &str| {
        unit.lines().find_map(|l| l.strip_prefix(&format!("{key}="))).unwrap_or_else(|| panic!("{key} in the unit"))
    };
    let dir = TempDir::new("pkg");
    let conf = example_config(&dir);
    // ExecStartPre: the configuration check, as the unit runs it.
    let pre: Vec<&str> = line("ExecStartPre").split_whitespace().collect();
    assert_eq!(pre[..3], ["/usr/local/bin/sluice", "check-config", "-c"]);
    let (code, out) = run(Command::new(BIN).args(&pre[1..3]).arg(&conf));
    assert_eq!(code, 0, "{out}");
    let start: Vec<&str> = line("ExecStart").split_whitespace().collect();
    assert_eq!(start[..3], ["/usr/local/bin/sluice", "run", "-c"]);
    assert_eq!(pre[3], start[3], "both read the same file");
    assert_eq!(line("ExecReload"), "/bin/kill -HUP $MAINPID", "SIGHUP reloads (tests/mgmt_api.rs)");
    assert_eq!(line("KillSignal"), "SIGTERM", "SIGTERM is the clean stop (tests/shutdown_sigterm.rs)");
    assert!(unit.contains("ReadWritePaths=/var/spool/sluice"), "the spool is writable");
    assert!(packaged("sluice.conf").contains("spool /var/spool/sluice"));
}

/// The container image: its configuration is valid and fully read, it runs with the command
/// the Dockerfile gives, the spool and log paths it names are the image's volumes, and every
/// file the Dockerfile copies is in the repository.
#[test]
fn the_container_image_runs_its_configuration() {
    let docker = packaged("Dockerfile");
    let conf = packaged("container.conf");
    let dir = TempDir::new("pkg");
    let path = dir.path().join("sluice.conf");
    std::fs::write(&path, conf.replace("/var/spool/sluice", &dir.path().join("spool").display().to_string())).unwrap();
    let (code, out) = run(Command::new(BIN).arg("check-config").arg("-c").arg(&path));
    assert_eq!((code, out.as_str()), (0, "0 errors, 0 warnings\nok\n"), "no error and no warning: {out}");
    assert!(
        docker.contains(r#"ENTRYPOINT ["sluice"]"#)
            && docker.contains(r#"CMD ["run", "-c", "/etc/sluice/sluice.conf"]"#)
    );
    assert!(docker.contains("COPY packaging/container.conf /etc/sluice/sluice.conf"));
    assert!(docker.contains(r#"VOLUME ["/var/spool/sluice", "/var/log/sluice"]"#));
    assert!(conf.contains("spool /var/spool/sluice") && conf.contains("<acct-file /var/log/sluice/acct.csv>"));
    for line in docker.lines().filter_map(|l| l.strip_prefix("COPY ")).filter(|l| !l.starts_with("--from")) {
        let source = line.split_whitespace().next().unwrap();
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(source);
        assert!(path.exists(), "the Dockerfile copies {source}");
    }
    let rust = docker.lines().find_map(|l| l.strip_prefix("FROM rust:")).unwrap();
    let manifest = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")).unwrap();
    let msrv = manifest.lines().find_map(|l| l.strip_prefix("rust-version = \"")).unwrap().trim_end_matches('"');
    assert!(rust.starts_with(msrv), "the image builds with the crate's rust-version {msrv}: {rust}");
    // The shipped seccomp profile is the one the README and the Dockerfile name.
    assert!(docker.contains("seccomp=packaging/seccomp.json"));
    let profile: serde_json::Value = serde_json::from_str(&packaged("seccomp.json")).unwrap();
    assert_eq!(profile["defaultAction"], "SCMP_ACT_ERRNO");
}

//! Every input the fuzzers kept, replayed through the fuzz targets' own checks in the ordinary
//! test suite: the crashes found (`fuzz/regressions/TARGET/`, each a past panic) and the
//! corpora (`fuzz/corpus/TARGET/`, the inputs that reached new code). A crash found once
//! fails `cargo test` for ever after, whatever a short fuzz run happens to try.

use std::path::{Path, PathBuf};

/// A fuzz target's check of one input (it panics on a defect).
type Check = fn(&[u8]);

/// Each fuzz target (`fuzz/fuzz_targets/NAME.rs`) and its check.
const TARGETS: &[(&str, Check)] = &[
    ("smtp_session", sluice_engine::fuzz_check::smtp_session),
    ("data_scanner", sluice_engine::fuzz_check::data_scanner),
    ("smtp_reply", sluice_engine::fuzz_check::smtp_reply),
    ("smtp_client", sluice_engine::fuzz_check::smtp_client),
    ("message_content", sluice_engine::fuzz_check::message_content),
    ("reports", sluice_engine::fuzz_check::reports),
    ("http_request", sluice_engine::fuzz_check::http_request),
    ("mx_answer", sluice_engine::fuzz_check::mx_message),
    ("config", sluice_config::fuzz_check::config),
    ("spool_record", sluice_spool::fuzz_check::spool_record),
];

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.path()).filter(|p| p.is_file()).collect();
    files.sort();
    files
}

fn replay(kind: &str) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join(kind);
    let mut failed = Vec::new();
    let mut replayed = 0;
    for (target, check) in TARGETS {
        for file in files(&root.join(target)) {
            // A fuzzer running in this checkout replaces corpus files as it goes.
            let input = match std::fs::read(&file) {
                Ok(input) => input,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => panic!("{}: {e}", file.display()),
            };
            replayed += 1;
            if std::panic::catch_unwind(|| check(&input)).is_err() {
                failed.push(file.display().to_string());
            }
        }
    }
    assert!(failed.is_empty(), "{} of {replayed} kept inputs panic again:\n{}", failed.len(), failed.join("\n"));
    replayed
}

#[test]
fn every_crash_the_fuzzers_found_stays_fixed() {
    let replayed = replay("regressions");
    assert!(replayed >= 1, "fuzz/regressions holds the crashes found so far");
}

#[test]
fn every_corpus_input_passes_its_targets_check() {
    let replayed = replay("corpus");
    assert!(replayed >= 1000, "the corpora are in the repository ({replayed} inputs)");
    // Every target has a corpus (a new target starts from at least one seed).
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for (target, _) in TARGETS {
        assert!(!files(&corpus.join(target)).is_empty(), "fuzz/corpus/{target} is empty");
    }
}

//! The cargo-fuzz targets of this crate (fuzz/fuzz_targets/), replayed on stable by `cargo test`:
//! every input of the committed, minimized corpus (fuzz/corpus/TARGET) and every crash the fuzzer
//! found (fuzz/regressions/TARGET) goes through the very check function the target calls
//! (`roamtun_netlink::fuzzing`). docs/fuzzing.md says how the corpora were made and how to fuzz further.

use std::path::{Path, PathBuf};

use roamtun_netlink::fuzzing;

/// Every committed input of `target`, corpus and regressions, in a stable order.
fn inputs(target: &str) -> Vec<PathBuf> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut files: Vec<PathBuf> = ["corpus", "regressions"]
        .iter()
        .filter_map(|dir| std::fs::read_dir(fuzz.join(dir).join(target)).ok())
        .flatten()
        .map(|entry| entry.expect("readable corpus directory").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

/// Runs `check` on every input of `target`; a failure names the input file.
fn replay(target: &str, check: fn(&[u8])) {
    let files = inputs(target);
    assert!(!files.is_empty(), "no committed corpus for {target} (fuzz/corpus/{target})");
    for path in &files {
        let data = std::fs::read(path).expect("readable corpus file");
        if std::panic::catch_unwind(|| check(&data)).is_err() {
            panic!(
                "fuzz input {} fails the {target} check (run it: cargo fuzz run {target} {})",
                path.display(),
                path.display()
            );
        }
    }
}

#[test]
fn netlink_corpus_and_regressions() {
    replay("netlink", fuzzing::netlink);
}

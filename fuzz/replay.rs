//! Shared by the crates' tests/fuzz_replay.rs (included with `#[path]`): every committed input of a
//! fuzz target, replayed through its check function.

use std::path::{Path, PathBuf};

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
pub fn replay(target: &str, check: fn(&[u8])) {
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

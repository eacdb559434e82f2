//! The cargo-fuzz targets of this crate (fuzz/fuzz_targets/), replayed on stable by `cargo test`:
//! every input of the committed, minimized corpus (fuzz/corpus/TARGET) and every crash the fuzzer
//! found (fuzz/regressions/TARGET) goes through the very check function the target calls
//! (`roamtun_netlink::fuzzing`). docs/fuzzing.md says how the corpora were made and how to fuzz further.

use roamtun_netlink::fuzzing;

#[path = "../../fuzz/replay.rs"]
mod replay;
use replay::replay;

#[test]
fn netlink_corpus_and_regressions() {
    replay("netlink", fuzzing::netlink);
}

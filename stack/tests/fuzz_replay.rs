//! The cargo-fuzz targets of this crate (fuzz/fuzz_targets/), replayed on stable by `cargo test`:
//! every input of the committed, minimized corpus (fuzz/corpus/TARGET) and every crash the fuzzer
//! found (fuzz/regressions/TARGET) goes through the very check function the target calls
//! (`roamtun_stack::fuzzing`). docs/fuzzing.md says how the corpora were made and how to fuzz further.

use roamtun_stack::fuzzing;

#[path = "../../fuzz/replay.rs"]
mod replay;
use replay::replay;

#[test]
fn stack_packets_corpus_and_regressions() {
    replay("stack_packets", fuzzing::stack_packets);
}

#[test]
fn virtio_header_corpus_and_regressions() {
    replay("virtio_header", fuzzing::virtio_header);
}

//! The cargo-fuzz targets of this crate (fuzz/fuzz_targets/), replayed on stable by `cargo test`:
//! every input of the committed, minimized corpus (fuzz/corpus/TARGET) and every crash the fuzzer
//! found (fuzz/regressions/TARGET) goes through the very check function the target calls
//! (`roamtun_proto::fuzzing`). docs/fuzzing.md says how the corpora were made and how to fuzz further.

use roamtun_proto::fuzzing;

#[path = "../../fuzz/replay.rs"]
mod replay;
use replay::replay;

#[test]
fn frame_decode_corpus_and_regressions() {
    replay("frame_decode", fuzzing::frame_decode);
}

#[test]
fn control_codec_corpus_and_regressions() {
    replay("control_codec", fuzzing::control_codec);
}

#[test]
fn engine_peer_corpus_and_regressions() {
    replay("engine_peer", fuzzing::engine_peer);
}

#[test]
fn transition_corpus_and_regressions() {
    replay("transition", fuzzing::transition);
}

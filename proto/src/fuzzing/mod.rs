//! The bodies of the cargo-fuzz targets in fuzz/fuzz_targets/, as functions of the input bytes, so
//! that the fuzzer and the replay test (tests/fuzz_replay.rs, which runs the committed corpus and
//! every crash found on stable, in `cargo test`) check the very same things. Each function panics
//! when an invariant breaks; that panic is the finding.
//!
//! Not part of the crate's API: built only with the `fuzzing` feature. docs/fuzzing.md lists the
//! targets, what each checks and how to run them.

mod codec;
mod engine;
mod transition;

pub use codec::{control_codec, frame_decode};
pub use engine::engine_peer;
pub use transition::transition;

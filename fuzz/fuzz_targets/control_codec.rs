#![no_main]

// The CONTROL (transition message) codec: no panic, canonical, round trip.
libfuzzer_sys::fuzz_target!(|data: &[u8]| roamtun_proto::fuzzing::control_codec(data));

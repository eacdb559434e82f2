#![no_main]

// The engine fed arbitrary frames by its peer: no panic, budget kept, TUN packets of the session.
libfuzzer_sys::fuzz_target!(|data: &[u8]| roamtun_proto::fuzzing::engine_peer(data));

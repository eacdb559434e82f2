#![no_main]

// Both transition machines fed arbitrary messages: no panic, epochs only grow, bounded output.
libfuzzer_sys::fuzz_target!(|data: &[u8]| roamtun_proto::fuzzing::transition(data));

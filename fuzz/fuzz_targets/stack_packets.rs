#![no_main]

// The Stack fed arbitrary IP packets and calls: no panic, flow limit, well-formed output.
libfuzzer_sys::fuzz_target!(|data: &[u8]| roamtun_stack::fuzzing::stack_packets(data));

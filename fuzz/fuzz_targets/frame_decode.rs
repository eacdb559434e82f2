#![no_main]

// Frame::decode and encode: no panic, canonical, round trip.
libfuzzer_sys::fuzz_target!(|data: &[u8]| roamtun_proto::fuzzing::frame_decode(data));

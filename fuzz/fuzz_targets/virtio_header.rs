#![no_main]

// The virtio-net header of TUN reads and writes: no panic, UDP checksums completed right.
libfuzzer_sys::fuzz_target!(|data: &[u8]| roamtun_stack::fuzzing::virtio_header(data));

#![no_main]

// rtnetlink messages parsed and applied to the UplinkTable: no panic, changes reported, idempotent.
libfuzzer_sys::fuzz_target!(|data: &[u8]| roamtun_netlink::fuzzing::netlink(data));

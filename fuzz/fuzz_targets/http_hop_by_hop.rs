#![no_main]
//! See docs/fuzzing.md and `meshd::fuzzing::http_hop_by_hop` for the properties.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| meshd::fuzzing::http_hop_by_hop(data));

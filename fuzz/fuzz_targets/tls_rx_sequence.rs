#![no_main]
//! See docs/fuzzing.md and `meshd::fuzzing::tls_rx_sequence` for the properties.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| meshd::fuzzing::tls_rx_sequence(data));

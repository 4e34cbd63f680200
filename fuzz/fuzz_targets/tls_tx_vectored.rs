#![no_main]
//! See docs/fuzzing.md and `meshd::fuzzing::tls_tx_vectored` for the properties.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| meshd::fuzzing::tls_tx_vectored(data));

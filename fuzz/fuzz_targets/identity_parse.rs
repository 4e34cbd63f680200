#![no_main]
//! See docs/fuzzing.md and `meshd::fuzzing::identity_parse` for the properties.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| meshd::fuzzing::identity_parse(data));

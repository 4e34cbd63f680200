#![no_main]
//! See docs/fuzzing.md and `meshd::fuzzing::post_handshake_msgs` for the properties.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| meshd::fuzzing::post_handshake_msgs(data));

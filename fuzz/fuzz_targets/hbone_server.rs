#![no_main]
//! See docs/fuzzing.md and `meshd::fuzzing::hbone_server` for the properties.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = meshd::fuzzing::hbone_server(data);
});

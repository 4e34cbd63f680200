#![no_main]
//! Every HTTP/1 request head of a connection checked before hyper reads it
//! (`proxy/l7/heads.rs`), over a pipe in pieces: the bytes pass unchanged, or up to a
//! refused head and then the unparseable head hyper answers 400 to; a head refused as
//! ambiguous is ambiguous to the first request's check. See docs/fuzzing.md.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    meshd::fuzzing::heads(data);
});

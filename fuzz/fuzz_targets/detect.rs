#![no_main]
//! `detect::classify`, `detect::ambiguous_head` and `detect()` over a chunked pipe, with
//! httparse as the oracle: whenever httparse parses a request head that carries both
//! Content-Length and Transfer-Encoding, or Content-Length values that differ, the framing
//! check must call it ambiguous. See docs/fuzzing.md.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, input)) = data.split_first() else {
        return;
    };
    let _ = meshd::fuzzing::classify(input);
    let ambiguous = meshd::fuzzing::ambiguous_head(input);
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    if let Ok(httparse::Status::Complete(_)) = req.parse(input) {
        let mut lengths: Vec<Vec<u8>> = Vec::new();
        let mut te = false;
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                lengths.extend(h.value.split(|b| *b == b',').map(|v| v.trim_ascii().to_vec()));
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                te = true;
            }
        }
        let differ = lengths.windows(2).any(|w| w[0] != w[1]);
        if (te && !lengths.is_empty()) || differ {
            assert!(
                ambiguous.is_some(),
                "httparse reads CL {lengths:?} TE {te}; the check lets it pass: {:?}",
                String::from_utf8_lossy(input)
            );
        }
    }
    // Detection over a pipe in chunks: what it keeps is what was read, from the start.
    if first & 0x80 != 0 {
        let chunk = usize::from(first & 0x3f) + 1;
        let (protocol, prefix) = meshd::fuzzing::detect_chunked(input, chunk);
        assert!(input.starts_with(&prefix), "detect kept other bytes");
        if let Some(p) = meshd::fuzzing::classify(&prefix) {
            assert_eq!(p, protocol);
        }
    }
});

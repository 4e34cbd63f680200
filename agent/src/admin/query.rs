//! The admin API's query strings: `key=value` pairs, percent-decoded byte by byte (a
//! malformed escape or bytes that are not UTF-8 are kept or replaced, never a panic).

use std::collections::BTreeMap;

/// The parameters of a query string (`a=1&b=x%20y`); a key without `=` has an empty value,
/// the last of repeated keys wins, empty keys are dropped.
pub(super) fn parse(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), percent_decode(v)))
        .collect()
}

/// The value of one hexadecimal digit.
fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes `%XX` escapes and `+` (a space), over bytes: a `%` not followed by two hex
/// digits stays a `%`; the result is UTF-8 with invalid sequences replaced by U+FFFD.
pub(crate) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let escaped = match (b[i], b.get(i + 1), b.get(i + 2)) {
            (b'%', Some(&hi), Some(&lo)) => hex_digit(hi).zip(hex_digit(lo)),
            _ => None,
        };
        match (escaped, b[i]) {
            (Some((hi, lo)), _) => {
                out.push(hi << 4 | lo);
                i += 3;
                continue;
            }
            (None, b'+') => out.push(b' '),
            (None, c) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_plus_are_decoded() {
        assert_eq!(percent_decode("a%20b+c"), "a b c");
        assert_eq!(percent_decode("%2Fapi%2fv1"), "/api/v1");
        assert_eq!(percent_decode("%C3%A9"), "é");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("%%41"), "%A");
    }

    /// Review case G99: `%a` followed by a multi-byte character used to slice inside it
    /// (a panic in the admin connection's task).
    #[test]
    fn a_malformed_escape_before_non_ascii_does_not_panic() {
        assert_eq!(percent_decode("%aé"), "%aé");
        assert_eq!(percent_decode("%é"), "%é");
        assert_eq!(percent_decode("é%"), "é%");
        // Bytes that are not UTF-8 once decoded are replaced, not a panic.
        assert_eq!(percent_decode("%ff%fe"), "\u{fffd}\u{fffd}");
    }

    #[test]
    fn every_short_input_decodes_without_panic() {
        let alphabet = ["%", "a", "A", "0", "+", "é", "€", "\u{1F600}", "z"];
        let mut inputs = vec![String::new()];
        for _ in 0..4 {
            inputs = inputs
                .iter()
                .flat_map(|s| alphabet.iter().map(move |c| format!("{s}{c}")))
                .collect();
            for s in &inputs {
                let _ = percent_decode(s);
            }
        }
    }

    #[test]
    fn parameters_are_split_and_decoded() {
        let q = parse("path=%2Fapi&limit=3&flag&=x&path2=a+b");
        assert_eq!(q.get("path").map(String::as_str), Some("/api"));
        assert_eq!(q.get("limit").map(String::as_str), Some("3"));
        assert_eq!(q.get("flag").map(String::as_str), Some(""));
        assert_eq!(q.get("path2").map(String::as_str), Some("a b"));
        assert!(!q.contains_key(""));
    }
}

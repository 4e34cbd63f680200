//! YAML parsing for the config file and policy documents, with serde-saphyr (a pure-Rust,
//! panic-free YAML parser; `serde_yaml` is archived upstream, see `docs/configuration.md`).
//!
//! Errors are typed values: the field path (`workloads[0].ips[1]`), the message, and the
//! line and column in the file. Multi-document streams are split the way `kubectl apply -f`
//! splits them: a line that starts with `---` begins a new document, and documents that hold
//! only comments or blank lines are skipped.

use std::{cell::RefCell, fmt};

use serde::de::DeserializeOwned;

/// For `#[serde(default, deserialize_with = ...)]` on lists and maps: a key written with no
/// value (`services:` with nothing under it, as people leave an empty section) is the
/// empty list or map, as it was with serde_yaml; anything else must be the right type.
pub(crate) fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + serde::Deserialize<'de>,
{
    Ok(<Option<T> as serde::Deserialize>::deserialize(deserializer)?.unwrap_or_default())
}

/// Why a YAML document could not be read into the type it should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct YamlError {
    /// The field the error is about (`spec.port`), empty for the document itself.
    pub path: String,
    /// What is wrong, without the location.
    pub message: String,
    /// 1-based line and column in the file, when the parser knows them.
    pub line: Option<u64>,
    pub column: Option<u64>,
}

impl fmt::Display for YamlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // serde names the field itself in some messages; do not say it twice.
        if self.path.is_empty() || self.message.starts_with(&self.path) {
            write!(f, "{}", self.message)?;
        } else {
            write!(f, "at {}: {}", self.path, self.message)?;
        }
        if let (Some(line), Some(column)) = (self.line, self.column) {
            write!(f, " (line {line} column {column})")?;
        }
        Ok(())
    }
}

/// One document of a multi-document stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Document<'a> {
    /// The document's text (its `---` line included, so lines count as in the file).
    pub text: &'a str,
    /// The 1-based line of the file where `text` begins.
    pub first_line: u64,
}

/// Splits a stream into its documents, as kubectl does: at every line that starts with
/// `---` followed by nothing, a space or a comment. Documents with nothing but comments and
/// blank lines are left out.
pub(crate) fn split_documents(text: &str) -> Vec<Document<'_>> {
    let mut docs = Vec::new();
    let mut start = 0usize;
    let mut start_line = 1u64;
    let mut offset = 0usize;
    for (line_no, line) in (1u64..).zip(text.split_inclusive('\n')) {
        if is_separator(line) && offset > start {
            docs.push(Document {
                text: &text[start..offset],
                first_line: start_line,
            });
            start = offset;
            start_line = line_no;
        }
        offset += line.len();
    }
    docs.push(Document {
        text: &text[start..],
        first_line: start_line,
    });
    docs.retain(|d| has_content(d.text));
    docs
}

fn is_separator(line: &str) -> bool {
    let Some(rest) = line.strip_prefix("---") else {
        return false;
    };
    let rest = rest.trim();
    rest.is_empty() || rest.starts_with('#')
}

/// Whether a document has anything but separators, comments and blank lines.
fn has_content(text: &str) -> bool {
    text.lines().any(|l| {
        let t = l.trim();
        !(t.is_empty() || t.starts_with('#') || is_separator(l) || t == "...")
    })
}

fn options() -> serde_saphyr::Options {
    let mut options = serde_saphyr::Options::default();
    // Errors are one line each (file, document, field); no source snippet.
    options.with_snippet = false;
    options
}

/// Parses one YAML document into `T`; `first_line` is where the document begins in its
/// file, so that error lines are the file's.
pub(crate) fn from_document<T: DeserializeOwned>(
    text: &str,
    first_line: u64,
) -> Result<T, YamlError> {
    // The path and message as serde_path_to_error saw them, before the parser adds its
    // location to the message.
    let seen: RefCell<Option<(String, String)>> = RefCell::new(None);
    let result = serde_saphyr::with_deserializer_from_str_with_options(text, options(), |de| {
        serde_path_to_error::deserialize::<_, T>(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            *seen.borrow_mut() = Some((path, inner.to_string()));
            inner
        })
    });
    result.map_err(|e| {
        let location = e.location();
        let (path, message) = seen
            .into_inner()
            .unwrap_or_else(|| (String::new(), e.to_string()));
        let message = strip_location(&message);
        let (line, column) = match location {
            Some(l) if l.line() > 0 => (Some(l.line() + first_line - 1), Some(l.column())),
            _ => (None, None),
        };
        YamlError {
            path: if path == "." { String::new() } else { path },
            message,
            line,
            column,
        }
    })
}

/// The message without a trailing ` at line N, column M` the parser may have added.
fn strip_location(message: &str) -> String {
    let message = message.strip_prefix("error: ").unwrap_or(message);
    let message = match message.split_once(": ") {
        Some((head, rest)) if head.starts_with("line ") && head.contains(" column ") => rest,
        _ => message,
    };
    match message.rfind(" at line ") {
        Some(i) if message[i..].contains("column") => message[..i].to_string(),
        _ => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct T {
        a: u16,
        #[serde(default)]
        b: Vec<std::net::IpAddr>,
    }

    #[test]
    fn splits_like_kubectl() {
        let text =
            "# header\n---\na: 1\n---   # second\na: 2\n---\n# only a comment\n---\n\na: 3\n";
        let docs = split_documents(text);
        let lines: Vec<u64> = docs.iter().map(|d| d.first_line).collect();
        assert_eq!(lines, vec![2, 4, 8]);
        let values: Vec<u16> = docs
            .iter()
            .map(|d| from_document::<T>(d.text, d.first_line).unwrap().a)
            .collect();
        assert_eq!(values, vec![1, 2, 3]);
        // `----` or `--- x` inside a block scalar line are not separators... `---x` is not.
        assert_eq!(split_documents("a: 1\n---x: 2\n").len(), 1);
    }

    #[test]
    fn errors_name_field_line_and_column_of_the_file() {
        let text = "a: 1\n---\na: 2\nb: [10.0.0.1, nope]\n";
        let docs = split_documents(text);
        let e = from_document::<T>(docs[1].text, docs[1].first_line).unwrap_err();
        assert_eq!(e.path, "b[1]");
        assert_eq!(e.line, Some(4));
        assert_eq!(e.column, Some(15));
        assert_eq!(
            e.to_string(),
            "at b[1]: invalid IP address syntax (line 4 column 15)"
        );
        let e = from_document::<T>("a: 1\nc: 2\n", 1).unwrap_err();
        assert!(e.message.contains("unknown field `c`"), "{e}");
        assert_eq!(e.line, Some(2));
        let e = from_document::<T>("a: [1\n", 1).unwrap_err();
        assert!(e.line.is_some(), "{e}");
    }
}

//! Kubernetes object names (DNS-1123 labels and subdomains): the one check that the file
//! schema and workload identities share. Each failure says why, in words a user can act on.

/// Why a name is not a valid DNS-1123 label or subdomain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum NameError {
    #[error("is empty")]
    Empty,
    #[error("{name:?} is longer than {max} characters")]
    TooLong { name: String, max: usize },
    #[error("{name:?} contains {found:?} (allowed: lowercase letters, digits, '-')")]
    Character { name: String, found: char },
    #[error("{name:?} must start and end with a lowercase letter or digit")]
    Edge { name: String },
    #[error("{name:?}: label {source}")]
    Label {
        name: String,
        #[source]
        source: Box<NameError>,
    },
}

/// A DNS-1123 label (a namespace name): at most 63 lowercase alphanumerics or `-`,
/// starting and ending with an alphanumeric.
pub(crate) fn check_dns_label(s: &str) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(NameError::Empty);
    }
    if s.len() > 63 {
        return Err(NameError::TooLong {
            name: s.into(),
            max: 63,
        });
    }
    let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    if let Some(found) = s.chars().find(|&c| !(ok(c) || c == '-')) {
        return Err(NameError::Character {
            name: s.into(),
            found,
        });
    }
    if !s.starts_with(ok) || !s.ends_with(ok) {
        return Err(NameError::Edge { name: s.into() });
    }
    Ok(())
}

/// A DNS-1123 subdomain (a pod or service account name): dot-separated labels, at most
/// 253 characters.
pub(crate) fn check_dns_subdomain(s: &str) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(NameError::Empty);
    }
    if s.len() > 253 {
        return Err(NameError::TooLong {
            name: s.into(),
            max: 253,
        });
    }
    for label in s.split('.') {
        check_dns_label(label).map_err(|e| NameError::Label {
            name: s.into(),
            source: Box::new(e),
        })?;
    }
    Ok(())
}

pub(crate) fn is_dns_label(s: &str) -> bool {
    check_dns_label(s).is_ok()
}

pub(crate) fn is_dns_subdomain(s: &str) -> bool {
    check_dns_subdomain(s).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_subdomains() {
        assert!(is_dns_label("web-1"));
        assert!(!is_dns_label("-web"));
        assert!(!is_dns_label("Web"));
        assert!(is_dns_subdomain("my.sa"));
        assert!(!is_dns_subdomain("my..sa"));
        assert!(!is_dns_subdomain(""));
        assert_eq!(
            check_dns_subdomain("a.B").unwrap_err().to_string(),
            "\"a.B\": label \"B\" contains 'B' (allowed: lowercase letters, digits, '-')"
        );
        assert_eq!(
            check_dns_label(&"a".repeat(64)).unwrap_err().to_string(),
            format!("{:?} is longer than 63 characters", "a".repeat(64))
        );
    }
}

//! The error type of the identity module.

use std::{path::PathBuf, time::SystemTime};

/// Everything that can go wrong creating, loading or using identity material. Each variant
/// names the file or the identity it is about.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A string is not a valid identity (SPIFFE or Linkerd form).
    #[error("invalid identity {input:?}: {reason}")]
    InvalidIdentity {
        /// The string as given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A trust domain is not valid.
    #[error("invalid trust domain {trust_domain:?}: {reason}")]
    InvalidTrustDomain {
        /// The trust domain as given.
        trust_domain: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A file could not be read (missing, permissions, ...).
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file or directory could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// `init` found a file it would overwrite and `force` was not given.
    #[error("{} already exists; refusing to overwrite it (use --force to replace the trust anchor and issuer)", path.display())]
    AlreadyExists {
        /// The existing file.
        path: PathBuf,
    },
    /// A file is not PEM, or a PEM block in it is malformed.
    #[error("{} is not a PEM file: {reason}", path.display())]
    NotPem {
        /// The file.
        path: PathBuf,
        /// What the PEM parser said.
        reason: String,
    },
    /// A PEM file has no block of the expected kind.
    #[error("{} contains no {what} (expected a PEM block \"-----BEGIN {label}-----\")", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
        /// What was expected, e.g. "certificate".
        what: &'static str,
        /// The PEM label that was expected.
        label: &'static str,
    },
    /// A certificate in a file is not a valid X.509 certificate.
    #[error("{}: certificate #{index} is not a valid X.509 certificate: {reason}", path.display())]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// The position of the certificate in the file, from 1.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A trust anchor or issuer certificate is not a CA certificate.
    #[error("{}: certificate {subject:?} is not a CA certificate (it lacks basic constraints CA:TRUE)", path.display())]
    NotCa {
        /// The file.
        path: PathBuf,
        /// The certificate's subject.
        subject: String,
    },
    /// A trust anchor in the bundle has expired (webpki would still accept chains to it).
    #[error("{}: trust anchor {subject:?} expired at {}; remove it from the bundle (or replace it with a new anchor and re-issue the issuer)", path.display(), fmt_time(*not_after))]
    AnchorExpired {
        /// The trust anchor bundle.
        path: PathBuf,
        /// The anchor's subject.
        subject: String,
        /// When it expired.
        not_after: SystemTime,
    },
    /// The issuer certificate has expired.
    #[error("{}: issuer certificate {subject:?} expired at {}", path.display(), fmt_time(*not_after))]
    IssuerExpired {
        /// The issuer certificate file.
        path: PathBuf,
        /// The issuer's subject.
        subject: String,
        /// When it expired.
        not_after: SystemTime,
    },
    /// The issuer certificate is not valid yet.
    #[error("{}: issuer certificate {subject:?} is not valid before {}", path.display(), fmt_time(*not_before))]
    IssuerNotYetValid {
        /// The issuer certificate file.
        path: PathBuf,
        /// The issuer's subject.
        subject: String,
        /// When it becomes valid.
        not_before: SystemTime,
    },
    /// The issuer certificate does not chain to any anchor of the trust anchor bundle.
    #[error(
        "{}: issuer certificate {subject:?} (issued by {issuer:?}) is not signed by any trust anchor in {} (anchors: {})",
        issuer_path.display(), anchors_path.display(), anchors.join(", ")
    )]
    NotSignedByAnchor {
        /// The issuer certificate file.
        issuer_path: PathBuf,
        /// The trust anchor bundle.
        anchors_path: PathBuf,
        /// The issuer's subject.
        subject: String,
        /// The issuer's issuer name.
        issuer: String,
        /// The subjects of the anchors in the bundle.
        anchors: Vec<String>,
    },
    /// A private key could not be parsed or is of an unsupported kind.
    #[error("{}: unusable private key: {reason}", path.display())]
    BadKey {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The issuer key is not the key of the issuer certificate.
    #[error("{}: private key does not match the certificate in {}", key_path.display(), cert_path.display())]
    KeyMismatch {
        /// The key file.
        key_path: PathBuf,
        /// The certificate file.
        cert_path: PathBuf,
    },
    /// Generating a key or certificate failed.
    #[error("cannot create the certificate for {subject}: {source}")]
    Generate {
        /// The certificate's subject or identity.
        subject: String,
        /// The underlying error.
        #[source]
        source: rcgen::Error,
    },
    /// Issuing a leaf certificate for a workload failed.
    #[error("cannot issue a certificate for {identity}: {reason}")]
    Issue {
        /// The workload identity.
        identity: String,
        /// What went wrong.
        reason: String,
    },
    /// The leaf certificate lifetime is not usable.
    #[error("invalid certificate lifetime {ttl:?}: {reason}")]
    InvalidTtl {
        /// The lifetime given.
        ttl: std::time::Duration,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Building a rustls configuration failed.
    #[error("cannot build the TLS configuration for {identity}: {source}")]
    Tls {
        /// The local identity the configuration is for.
        identity: String,
        /// The rustls error.
        #[source]
        source: rustls::Error,
    },
    /// Building the verifier of client certificates failed.
    #[error("cannot build the client certificate verifier from the trust anchors in {}: {source}", path.display())]
    Verifier {
        /// The trust anchor bundle.
        path: PathBuf,
        /// The rustls error.
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
}

/// Formats a time as RFC 3339 (UTC, whole seconds) for messages.
pub(crate) fn fmt_time(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn fmt_time_is_rfc3339_utc() {
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(super::fmt_time(t), "2023-11-14T22:13:20Z");
    }
}

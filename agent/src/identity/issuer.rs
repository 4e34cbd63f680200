//! Loading the trust anchor bundle and the issuer, and issuing workload certificates.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use rcgen::{
    CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
    SanType, SerialNumber,
};
use rustls::{
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
    sign::CertifiedKey,
    RootCertStore,
};
use x509_parser::certificate::X509Certificate;

use super::{crypto::provider, error::fmt_time, Identity, IdentityError};

/// File names written by [`init`](super::init) and expected by [`IssuerFiles::in_dir`].
pub(crate) const TRUST_ANCHOR_FILE: &str = "ca.crt";
pub(crate) const TRUST_ANCHOR_KEY_FILE: &str = "ca.key";
pub(crate) const ISSUER_CERT_FILE: &str = "issuer.crt";
pub(crate) const ISSUER_KEY_FILE: &str = "issuer.key";

/// How far in the past a leaf certificate's `not_before` is set, for clock skew.
pub(crate) const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// Where the agent finds its identity material, like Linkerd's
/// `--identity-trust-anchors-file`, `--identity-issuer-certificate-file` and
/// `--identity-issuer-key-file`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuerFiles {
    /// PEM bundle of one or more trust anchors (two during an anchor rotation).
    pub trust_anchors: PathBuf,
    /// PEM issuer certificate (an intermediate CA under one of the anchors); further
    /// certificates after it, if any, are sent along as intermediates.
    pub issuer_cert: PathBuf,
    /// PEM private key of the issuer (PKCS#8, or SEC1 "EC PRIVATE KEY").
    pub issuer_key: PathBuf,
}

impl IssuerFiles {
    /// The files [`init`](super::init) writes in `dir`: `ca.crt`, `issuer.crt`, `issuer.key`.
    pub fn in_dir(dir: &Path) -> IssuerFiles {
        IssuerFiles {
            trust_anchors: dir.join(TRUST_ANCHOR_FILE),
            issuer_cert: dir.join(ISSUER_CERT_FILE),
            issuer_key: dir.join(ISSUER_KEY_FILE),
        }
    }
}

/// A loaded trust anchor bundle: the CA certificates whose chains the mesh accepts.
#[derive(Debug)]
pub struct TrustAnchors {
    path: PathBuf,
    roots: Arc<RootCertStore>,
    certs: Vec<CertificateDer<'static>>,
    subjects: Vec<String>,
    not_after: Vec<SystemTime>,
}

impl TrustAnchors {
    /// Loads a PEM bundle of one or more CA certificates, none of them expired (webpki does
    /// not check an anchor's validity: an expired one would go on being trusted).
    pub fn load(path: &Path) -> Result<TrustAnchors, IdentityError> {
        let now = SystemTime::now();
        let certs = read_certs(path)?;
        let mut roots = RootCertStore::empty();
        let mut subjects = Vec::with_capacity(certs.len());
        let mut not_after = Vec::with_capacity(certs.len());
        for (i, der) in certs.iter().enumerate() {
            let cert = parse_cert(path, i, der)?;
            let subject = subject_of(&cert);
            require_ca(path, &cert, &subject)?;
            roots
                .add(der.clone())
                .map_err(|e| IdentityError::BadCertificate {
                    path: path.to_path_buf(),
                    index: i + 1,
                    reason: e.to_string(),
                })?;
            let expiry = asn1_to_system_time(cert.validity().not_after.timestamp());
            if expiry < now {
                return Err(IdentityError::AnchorExpired {
                    path: path.to_path_buf(),
                    subject,
                    not_after: expiry,
                });
            }
            not_after.push(expiry);
            subjects.push(subject);
        }
        Ok(TrustAnchors {
            path: path.to_path_buf(),
            roots: Arc::new(roots),
            certs,
            subjects,
            not_after,
        })
    }

    /// The file the bundle was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The subjects of the anchors, in file order.
    pub fn subjects(&self) -> &[String] {
        &self.subjects
    }

    /// The expiry of each anchor, in file order.
    pub fn expiries(&self) -> &[SystemTime] {
        &self.not_after
    }

    /// The anchors as a rustls root store.
    pub(crate) fn roots(&self) -> &Arc<RootCertStore> {
        &self.roots
    }

    pub(crate) fn certs(&self) -> &[CertificateDer<'static>] {
        &self.certs
    }
}

/// A leaf certificate issued for a workload, with its in-memory key.
#[derive(Debug)]
pub(crate) struct IssuedCert {
    pub(crate) identity: Identity,
    pub(crate) key: Arc<CertifiedKey>,
    /// Hex serial number, for logs and tests.
    pub(crate) serial: String,
    pub(crate) issued_at: SystemTime,
    pub(crate) not_before: SystemTime,
    pub(crate) not_after: SystemTime,
    /// Half-life from issuance: when the renewal task replaces it.
    pub(crate) renew_at: SystemTime,
}

/// The issuer: signs workload certificates.
pub(crate) struct Issuer {
    signer: rcgen::Issuer<'static, KeyPair>,
    /// The issuer certificate (and any intermediates after it) sent after the leaf.
    chain: Vec<CertificateDer<'static>>,
    subject: String,
    not_after: SystemTime,
    cert_path: PathBuf,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("subject", &self.subject)
            .field("not_after", &fmt_time(self.not_after))
            .field("cert_path", &self.cert_path)
            .finish_non_exhaustive()
    }
}

impl Issuer {
    /// Loads the issuer certificate and key and checks them against the anchors: the
    /// certificate is a CA, currently valid, chains to one of the anchors, and the key is
    /// its key.
    pub(crate) fn load(
        files: &IssuerFiles,
        anchors: &TrustAnchors,
    ) -> Result<Issuer, IdentityError> {
        let cert_path = &files.issuer_cert;
        let chain = read_certs(cert_path)?;
        let parsed = chain
            .iter()
            .enumerate()
            .map(|(i, der)| parse_cert(cert_path, i, der))
            .collect::<Result<Vec<_>, _>>()?;
        let (Some(issuer), Some(issuer_der)) = (parsed.first(), chain.first()) else {
            return Err(IdentityError::Empty {
                path: cert_path.clone(),
                what: "certificate",
                label: "CERTIFICATE",
            });
        };
        let subject = subject_of(issuer);
        require_ca(cert_path, issuer, &subject)?;

        let now = SystemTime::now();
        let not_before = asn1_to_system_time(issuer.validity().not_before.timestamp());
        let not_after = asn1_to_system_time(issuer.validity().not_after.timestamp());
        if now > not_after {
            return Err(IdentityError::IssuerExpired {
                path: cert_path.clone(),
                subject,
                not_after,
            });
        }
        if now < not_before {
            return Err(IdentityError::IssuerNotYetValid {
                path: cert_path.clone(),
                subject,
                not_before,
            });
        }

        // Each certificate in the file is signed by the next; the last by an anchor.
        let anchor_certs = anchors
            .certs()
            .iter()
            .enumerate()
            .map(|(i, der)| parse_cert(anchors.path(), i, der))
            .collect::<Result<Vec<_>, _>>()?;
        let mut chained = true;
        for (i, cert) in parsed.iter().enumerate() {
            chained &= match parsed.get(i + 1) {
                Some(next) => signed_by(cert, next),
                None => anchor_certs.iter().any(|anchor| signed_by(cert, anchor)),
            };
        }
        if !chained {
            return Err(IdentityError::NotSignedByAnchor {
                issuer_path: cert_path.clone(),
                anchors_path: anchors.path().to_path_buf(),
                subject,
                issuer: issuer.issuer().to_string(),
                anchors: anchors.subjects().to_vec(),
            });
        }

        let key = load_key(&files.issuer_key)?;
        let key_spki = rcgen::PublicKeyData::subject_public_key_info(&key);
        if key_spki != issuer.public_key().raw {
            return Err(IdentityError::KeyMismatch {
                key_path: files.issuer_key.clone(),
                cert_path: cert_path.clone(),
            });
        }
        let signer = rcgen::Issuer::from_ca_cert_der(issuer_der, key).map_err(|e| {
            IdentityError::BadCertificate {
                path: cert_path.clone(),
                index: 1,
                reason: e.to_string(),
            }
        })?;
        Ok(Issuer {
            signer,
            chain,
            subject,
            not_after,
            cert_path: cert_path.clone(),
        })
    }

    /// The issuer certificate's expiry.
    pub(crate) fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The issuer certificate's subject.
    pub(crate) fn subject(&self) -> &str {
        &self.subject
    }

    /// Issues a certificate for `id` valid from a minute ago (clock skew) for `ttl`.
    pub(crate) fn issue(&self, id: &Identity, ttl: Duration) -> Result<IssuedCert, IdentityError> {
        let now = SystemTime::now();
        let not_after = (now + ttl).min(self.not_after);
        self.issue_with_validity(id, now, now - CLOCK_SKEW, not_after)
    }

    /// Issues a certificate for `id` with explicit validity (tests use it for expired and
    /// not-yet-valid certificates).
    pub(crate) fn issue_with_validity(
        &self,
        id: &Identity,
        issued_at: SystemTime,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<IssuedCert, IdentityError> {
        let fail = |reason: String| IdentityError::Issue {
            identity: id.to_string(),
            reason,
        };
        id.validate()?;
        let now = SystemTime::now();
        if now > self.not_after {
            return Err(fail(format!(
                "the issuer certificate {:?} ({}) expired at {}",
                self.subject,
                self.cert_path.display(),
                fmt_time(self.not_after)
            )));
        }
        let spiffe = id.to_string();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(
            spiffe
                .as_str()
                .try_into()
                .map_err(|e: rcgen::Error| fail(e.to_string()))?,
        )];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = time::OffsetDateTime::from(not_before);
        params.not_after = time::OffsetDateTime::from(not_after);
        params.serial_number = Some(random_serial().map_err(fail)?);
        params.use_authority_key_identifier_extension = true;

        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| fail(e.to_string()))?;
        let cert = params
            .signed_by(&key, &self.signer)
            .map_err(|e| fail(e.to_string()))?;
        let serial = hex(&params
            .serial_number
            .as_ref()
            .map(SerialNumber::to_bytes)
            .unwrap_or_default());

        let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signing_key = provider()
            .key_provider
            .load_private_key(private)
            .map_err(|e| fail(e.to_string()))?;
        let mut chain = Vec::with_capacity(1 + self.chain.len());
        chain.push(cert.der().clone());
        chain.extend(self.chain.iter().cloned());
        let lifetime = not_after.duration_since(issued_at).unwrap_or_default();
        Ok(IssuedCert {
            identity: id.clone(),
            key: Arc::new(CertifiedKey::new(chain, signing_key)),
            serial,
            issued_at,
            not_before,
            not_after,
            renew_at: issued_at + lifetime / 2,
        })
    }
}

/// Reads all certificates of a PEM file; at least one.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let bytes = std::fs::read(path).map_err(|source| IdentityError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| IdentityError::NotPem {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(IdentityError::Empty {
            path: path.to_path_buf(),
            what: "certificate",
            label: "CERTIFICATE",
        });
    }
    Ok(certs)
}

/// Reads a PEM private key (PKCS#8, SEC1 or PKCS#1) into an rcgen key pair.
fn load_key(path: &Path) -> Result<KeyPair, IdentityError> {
    let bytes = std::fs::read(path).map_err(|source| IdentityError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let key = PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => IdentityError::Empty {
            path: path.to_path_buf(),
            what: "private key",
            label: "PRIVATE KEY",
        },
        e => IdentityError::NotPem {
            path: path.to_path_buf(),
            reason: e.to_string(),
        },
    })?;
    KeyPair::try_from(&key).map_err(|e| IdentityError::BadKey {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// The public key (SubjectPublicKeyInfo DER) of the PEM private key in `path`, `None`
/// when the file holds no usable private key.
pub(super) fn read_key_quietly(path: &Path) -> Option<Vec<u8>> {
    let key = load_key(path).ok()?;
    Some(rcgen::PublicKeyData::subject_public_key_info(&key))
}

fn parse_cert<'a>(
    path: &Path,
    index: usize,
    der: &'a CertificateDer<'_>,
) -> Result<X509Certificate<'a>, IdentityError> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, cert)| cert)
        .map_err(|e| IdentityError::BadCertificate {
            path: path.to_path_buf(),
            index: index + 1,
            reason: e.to_string(),
        })
}

/// The subject of a certificate for messages (workload certificates have an empty one).
fn subject_of(cert: &X509Certificate<'_>) -> String {
    let subject = cert.subject().to_string();
    if subject.is_empty() {
        "<empty subject>".to_string()
    } else {
        subject
    }
}

fn require_ca(path: &Path, cert: &X509Certificate<'_>, subject: &str) -> Result<(), IdentityError> {
    match cert.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => Ok(()),
        _ => Err(IdentityError::NotCa {
            path: path.to_path_buf(),
            subject: subject.to_string(),
        }),
    }
}

/// Whether `cert` names `issuer` as its issuer and carries a valid signature by its key.
fn signed_by(cert: &X509Certificate<'_>, issuer: &X509Certificate<'_>) -> bool {
    cert.issuer().as_raw() == issuer.subject().as_raw()
        && cert.verify_signature(Some(issuer.public_key())).is_ok()
}

pub(crate) fn asn1_to_system_time(secs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

/// A random positive 128-bit serial number.
pub(crate) fn random_serial() -> Result<SerialNumber, String> {
    let mut bytes = [0u8; 16];
    provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| "the system random number generator failed".to_string())?;
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

//! rustls configurations for the mesh's mutual TLS: TLS 1.3 only, certificates from the
//! [`CertManager`], peers verified against the trust anchors, the server's SPIFFE identity
//! checked by the client.

use std::{
    fmt,
    sync::{Arc, Weak},
};

use rustls::{
    client::{
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        verify_server_cert_signed_by_trust_anchor, ResolvesClientCert, Resumption,
    },
    pki_types::{CertificateDer, ServerName, UnixTime},
    server::{
        danger::{ClientCertVerified, ClientCertVerifier},
        ClientHello, NoServerSessionStorage, ParsedCertificate, ResolvesServerCert,
    },
    sign::CertifiedKey,
    CertificateError, ClientConfig, CommonState, DigitallySignedStruct, DistinguishedName,
    OtherError, ServerConfig, SignatureScheme,
};
use x509_parser::{error::X509Error, extensions::GeneralName};

use super::{crypto::provider, manager::CertManager, Identity, IdentityError};

/// The ALPN protocol of mesh connections (HBONE is HTTP/2).
pub const ALPN_H2: &[u8] = b"h2";

/// The certificate a server presented did not carry the identity the client expected.
/// It is the [`OtherError`] inside [`CertificateError::Other`] of the handshake error, so
/// callers can downcast to it. Its `Debug` is its message, because rustls formats
/// `CertificateError::Other` with `Debug`, and that is what ends up in the handshake error.
#[derive(Clone, thiserror::Error)]
#[error(
    "server identity mismatch: expected identity {expected}, but the server presented {presented}"
)]
pub struct IdentityMismatch {
    /// The identity the client expected.
    pub expected: String,
    /// What the server's certificate carried (its URI SANs, or a note that it had none).
    pub presented: String,
}

impl fmt::Debug for IdentityMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A client certificate that chains to the trust anchors but names an identity in another
/// trust domain (anchors shared by several meshes, or an issuer of another mesh under the
/// same anchors). Refused in the handshake, like [`IdentityMismatch`] inside
/// [`CertificateError::Other`]; its `Debug` is its message for the same reason.
#[derive(Clone, thiserror::Error)]
#[error("client identity {presented} is not in this mesh's trust domain {expected}")]
pub struct ForeignTrustDomain {
    /// This mesh's trust domain.
    pub expected: String,
    /// The identity the client's certificate carried.
    pub presented: String,
}

impl fmt::Debug for ForeignTrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The server configuration for `local`: presents `local`'s current certificate (read from
/// `mgr` at each handshake, so renewals apply to new connections only) and requires a client
/// certificate that chains to the trust anchors and whose SPIFFE identity, if it carries
/// one, is in `local`'s trust domain ([`ForeignTrustDomain`] otherwise; a certificate
/// without exactly one SPIFFE identity is refused after the handshake). TLS 1.3 only, ALPN `h2`, no session
/// resumption (every connection re-verifies its peer). Configurations are cached per identity.
pub fn server_config(
    mgr: Arc<CertManager>,
    local: Identity,
) -> Result<Arc<ServerConfig>, IdentityError> {
    if let Some(config) = mgr.cached_server_config(&local) {
        return Ok(config);
    }
    // Issue now, so that an identity that cannot get a certificate fails here, not in every
    // handshake.
    mgr.certificate(&local)?;
    let tls_err = |source| IdentityError::Tls {
        identity: local.to_string(),
        source,
    };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_client_cert_verifier(Arc::new(AnchorClientVerifier {
            mgr: Arc::downgrade(&mgr),
            trust_domain: local.trust_domain.clone(),
        }))
        .with_cert_resolver(Arc::new(ManagedCert {
            mgr: Arc::downgrade(&mgr),
            identity: local.clone(),
        }));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.ignore_client_order = true;
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    // The agent protects the records itself after the handshake (`proxy::tls`).
    config.enable_secret_extraction = true;
    Ok(mgr.cache_server_config(local, Arc::new(config)))
}

/// The client configuration for `local` connecting to a server that must be
/// `expected_server`: presents `local`'s current certificate, verifies the server's chain to
/// the trust anchors (serverAuth, at the current time) and that its certificate's URI SAN is
/// exactly `expected_server`'s SPIFFE ID. The DNS name given to rustls is not checked (use any
/// fixed name); SNI is not sent. TLS 1.3 only, ALPN `h2`, no session resumption.
/// Configurations are cached per (local, expected) pair.
pub fn client_config(
    mgr: Arc<CertManager>,
    local: Identity,
    expected_server: Identity,
) -> Result<Arc<ClientConfig>, IdentityError> {
    let key = (local, expected_server);
    if let Some(config) = mgr.cached_client_config(&key) {
        return Ok(config);
    }
    let (local, expected_server) = key;
    mgr.certificate(&local)?;
    let tls_err = |source| IdentityError::Tls {
        identity: local.to_string(),
        source,
    };
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier::new(
            Arc::downgrade(&mgr),
            expected_server.clone(),
        )))
        .with_client_cert_resolver(Arc::new(ManagedCert {
            mgr: Arc::downgrade(&mgr),
            identity: local.clone(),
        }));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.resumption = Resumption::disabled();
    config.enable_sni = false;
    config.enable_secret_extraction = true;
    Ok(mgr.cache_client_config((local, expected_server), Arc::new(config)))
}

/// The identity of the peer of an established connection: the SPIFFE ID in the URI SAN of its
/// leaf certificate. `None` if it sent no certificate or the certificate does not carry
/// exactly one valid SPIFFE ID. Takes a `ServerConnection` or `ClientConnection` (they deref
/// to [`CommonState`]).
pub fn peer_identity(conn: &CommonState) -> Option<Identity> {
    peer_identity_from_certs(conn.peer_certificates()?)
}

/// Like [`peer_identity`], from the peer's certificate chain (leaf first).
pub fn peer_identity_from_certs(certs: &[CertificateDer<'_>]) -> Option<Identity> {
    let uris = uri_sans(certs.first()?).ok()?;
    match uris.as_slice() {
        [uri] => Identity::from_spiffe_id(uri).ok(),
        _ => None,
    }
}

/// The URI SANs of a certificate.
pub(crate) fn uri_sans(cert: &CertificateDer<'_>) -> Result<Vec<String>, X509Error> {
    use x509_parser::nom::Err;
    let (_, cert) = x509_parser::parse_x509_certificate(cert).map_err(|e| match e {
        Err::Error(e) | Err::Failure(e) => e,
        Err::Incomplete(_) => X509Error::InvalidCertificate,
    })?;
    let san = cert.subject_alternative_name()?;
    Ok(san
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some((*u).to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

/// Serves the manager's current certificate for one identity, as server or as client.
struct ManagedCert {
    mgr: Weak<CertManager>,
    identity: Identity,
}

impl ManagedCert {
    fn current(&self) -> Option<Arc<CertifiedKey>> {
        let mgr = self.mgr.upgrade()?;
        match mgr.certificate(&self.identity) {
            Ok(key) => Some(key),
            Err(e) => {
                tracing::error!(identity = %self.identity, error = %e, "no certificate to present in a TLS handshake");
                None
            }
        }
    }
}

impl fmt::Debug for ManagedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManagedCert")
            .field("identity", &self.identity.to_string())
            .finish()
    }
}

impl ResolvesServerCert for ManagedCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

impl ResolvesClientCert for ManagedCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.current()
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Verifies client certificates against the manager's current trust anchors (so that a new
/// anchor bundle applies to cached configurations), with rustls' webpki verifier, then
/// that the client's SPIFFE identity is in `trust_domain`.
struct AnchorClientVerifier {
    mgr: Weak<CertManager>,
    /// The server's own trust domain: the only one whose clients it accepts.
    trust_domain: String,
}

/// Refuses a certificate whose single SPIFFE identity is in another trust domain than
/// `trust_domain` (exact comparison: identities are never case-folded).
fn check_trust_domain(
    end_entity: &CertificateDer<'_>,
    trust_domain: &str,
) -> Result<(), rustls::Error> {
    let Ok(uris) = uri_sans(end_entity) else {
        return Ok(());
    };
    let [uri] = uris.as_slice() else {
        return Ok(());
    };
    match Identity::from_spiffe_id(uri) {
        Ok(id) if id.trust_domain != trust_domain => Err(rustls::Error::InvalidCertificate(
            CertificateError::Other(OtherError(Arc::new(ForeignTrustDomain {
                expected: trust_domain.to_string(),
                presented: id.to_string(),
            }))),
        )),
        _ => Ok(()),
    }
}

impl fmt::Debug for AnchorClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnchorClientVerifier")
            .finish_non_exhaustive()
    }
}

impl AnchorClientVerifier {
    fn current(&self) -> Result<Arc<dyn ClientCertVerifier>, rustls::Error> {
        let mgr = self
            .mgr
            .upgrade()
            .ok_or_else(|| rustls::Error::General("the certificate manager is gone".into()))?;
        Ok(mgr.client_verifier())
    }
}

impl ClientCertVerifier for AnchorClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints are optional; our clients present their one certificate regardless.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .current()?
            .verify_client_cert(end_entity, intermediates, now)?;
        check_trust_domain(end_entity, &self.trust_domain)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current()?.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current()?.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn offer_client_auth(&self) -> bool {
        true
    }
}

/// Verifies the server's chain to the manager's trust anchors and that its leaf carries the
/// expected SPIFFE ID (instead of a DNS name).
pub(crate) struct SpiffeServerVerifier {
    mgr: Weak<CertManager>,
    /// The expected identity as the URI SAN it must be (compared per handshake).
    expected_uri: String,
}

impl SpiffeServerVerifier {
    pub(crate) fn new(mgr: Weak<CertManager>, expected: Identity) -> SpiffeServerVerifier {
        let expected_uri = expected.to_string();
        SpiffeServerVerifier { mgr, expected_uri }
    }
}

impl fmt::Debug for SpiffeServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpiffeServerVerifier")
            .field("expected", &self.expected_uri)
            .finish_non_exhaustive()
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mgr = self
            .mgr
            .upgrade()
            .ok_or_else(|| rustls::Error::General("the certificate manager is gone".into()))?;
        let anchors = mgr.trust_anchors();
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            anchors.roots(),
            intermediates,
            now,
            provider().signature_verification_algorithms.all,
        )?;
        let uris = uri_sans(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        if uris.len() == 1 && uris.contains(&self.expected_uri) {
            return Ok(ServerCertVerified::assertion());
        }
        let presented = match uris.as_slice() {
            [] => "a certificate without a URI SAN (no SPIFFE identity)".to_string(),
            [one] => one.clone(),
            many => format!("several URI SANs: {}", many.join(", ")),
        };
        Err(rustls::Error::InvalidCertificate(CertificateError::Other(
            OtherError(Arc::new(IdentityMismatch {
                expected: self.expected_uri.clone(),
                presented,
            })),
        )))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

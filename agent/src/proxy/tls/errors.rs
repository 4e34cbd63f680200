//! Why a TLS handshake failed, as a bounded set of reasons ([`RejectReason`]) that become the
//! `reason` label of `hbone_rejected_total` at the metrics edge. Classified from the typed
//! errors: the `rustls::Error` inside the handshake's I/O error, and the mesh's own
//! [`IdentityMismatch`] inside a certificate error.

use std::fmt;

use crate::identity::{ForeignTrustDomain, IdentityMismatch};

/// Why the agent refused a peer, or a peer refused the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum RejectReason {
    /// The handshake failed for another reason (including a timeout).
    Handshake,
    /// The certificate does not chain to the trust anchors.
    UnknownCa,
    Expired,
    NotYetValid,
    /// The server's certificate does not carry the identity the client expected.
    ServerIdentityMismatch,
    /// The client presented no certificate, or one without a SPIFFE identity.
    NoClientCert,
    /// The client's certificate chains to the anchors but names another trust domain.
    ForeignTrustDomain,
    /// The bytes were not TLS.
    NotTls,
    /// The peer refused the agent's own certificate (an alert).
    PeerRejectedUs,
    /// An HBONE request that is not a well-formed CONNECT.
    BadRequest,
    /// A CONNECT to an address that is not the pod's own.
    ConnectOtherAddress,
    /// A CONNECT to one of the agent's ports (15001, 15006, 15008).
    ConnectAgentPort,
}

impl RejectReason {
    /// The label value, as `hbone_rejected_total{reason}` shows it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            RejectReason::Handshake => "handshake",
            RejectReason::UnknownCa => "unknown_ca",
            RejectReason::Expired => "expired",
            RejectReason::NotYetValid => "not_yet_valid",
            RejectReason::ServerIdentityMismatch => "server_identity_mismatch",
            RejectReason::NoClientCert => "no_client_cert",
            RejectReason::ForeignTrustDomain => "foreign_trust_domain",
            RejectReason::NotTls => "not_tls",
            RejectReason::PeerRejectedUs => "peer_rejected_us",
            RejectReason::BadRequest => "bad_request",
            RejectReason::ConnectOtherAddress => "connect_other_address",
            RejectReason::ConnectAgentPort => "connect_agent_port",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The reason for a failed handshake, from the I/O error the handshake returned (wrapping
/// the `rustls::Error`, as `proxy::tls` and tokio-rustls both report it).
pub(crate) fn reason(e: &std::io::Error) -> RejectReason {
    let Some(inner) = e.get_ref() else {
        return RejectReason::Handshake;
    };
    if let Some(err) = inner.downcast_ref::<rustls::Error>() {
        return classify(err);
    }
    if inner.downcast_ref::<IdentityMismatch>().is_some() {
        return RejectReason::ServerIdentityMismatch;
    }
    RejectReason::Handshake
}

/// The reason for a `rustls::Error`.
pub(crate) fn classify(err: &rustls::Error) -> RejectReason {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    match err {
        E::InvalidCertificate(C::UnknownIssuer) | E::InvalidCertificate(C::BadSignature) => {
            RejectReason::UnknownCa
        }
        E::InvalidCertificate(C::Expired) | E::InvalidCertificate(C::ExpiredContext { .. }) => {
            RejectReason::Expired
        }
        E::InvalidCertificate(C::NotValidYet)
        | E::InvalidCertificate(C::NotValidYetContext { .. }) => RejectReason::NotYetValid,
        E::InvalidCertificate(C::NotValidForName)
        | E::InvalidCertificate(C::NotValidForNameContext { .. }) => {
            RejectReason::ServerIdentityMismatch
        }
        E::InvalidCertificate(C::Other(o)) if o.0.downcast_ref::<IdentityMismatch>().is_some() => {
            RejectReason::ServerIdentityMismatch
        }
        E::InvalidCertificate(C::Other(o))
            if o.0.downcast_ref::<ForeignTrustDomain>().is_some() =>
        {
            RejectReason::ForeignTrustDomain
        }
        E::NoCertificatesPresented => RejectReason::NoClientCert,
        E::InvalidMessage(_)
        | E::InappropriateMessage { .. }
        | E::InappropriateHandshakeMessage { .. } => RejectReason::NotTls,
        E::AlertReceived(A::UnknownCA | A::BadCertificate | A::CertificateExpired) => {
            RejectReason::PeerRejectedUs
        }
        _ => RejectReason::Handshake,
    }
}

/// The alerts a server sends when it refuses the client's certificate. In TLS 1.3 they
/// arrive after the client's side of the handshake is done, on the first HTTP/2 exchange.
const CERTIFICATE_REFUSALS: [rustls::AlertDescription; 9] = {
    use rustls::AlertDescription as A;
    [
        A::BadCertificate,
        A::UnsupportedCertificate,
        A::CertificateRevoked,
        A::CertificateExpired,
        A::CertificateUnknown,
        A::UnknownCA,
        A::CertificateRequired,
        A::DecryptError,
        A::AccessDenied,
    ]
};

/// The certificate-refusal alert in an error's text, as rustls prints an
/// `AlertReceived` ("received fatal alert: UnknownCA"). h2 keeps only the text of the I/O
/// error that ended a connection, so this is the one place the reason is read from text.
pub(crate) fn certificate_refusal_in(text: &str) -> Option<rustls::AlertDescription> {
    let (_, name) = text.split_once("received fatal alert: ")?;
    let name = name.trim();
    CERTIFICATE_REFUSALS
        .into_iter()
        .find(|a| format!("{a:?}") == name)
}

/// A TLS failure as the I/O error the record layer and the handshake return.
pub(super) fn to_io(e: rustls::Error) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e)
}

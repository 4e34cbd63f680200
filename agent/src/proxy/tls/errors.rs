//! Classifying TLS failures into the bounded `reason` label of `hbone_rejected_total`.

/// The reason for a failed handshake, from the I/O error the handshake returned (wrapping
/// the `rustls::Error`, as `proxy::tls` and tokio-rustls both report it).
pub(crate) fn reason(e: &std::io::Error) -> &'static str {
    let Some(inner) = e.get_ref() else {
        return "handshake";
    };
    match inner.downcast_ref::<rustls::Error>() {
        Some(err) => classify(err),
        None => {
            let text = inner.to_string();
            if text.contains("expected identity") || text.contains("identity mismatch") {
                "server_identity_mismatch"
            } else {
                "handshake"
            }
        }
    }
}

pub(crate) fn classify(err: &rustls::Error) -> &'static str {
    use rustls::{CertificateError as C, Error as E};
    match err {
        E::InvalidCertificate(C::UnknownIssuer) | E::InvalidCertificate(C::BadSignature) => {
            "unknown_ca"
        }
        E::InvalidCertificate(C::Expired) | E::InvalidCertificate(C::ExpiredContext { .. }) => {
            "expired"
        }
        E::InvalidCertificate(C::NotValidYet)
        | E::InvalidCertificate(C::NotValidYetContext { .. }) => "not_yet_valid",
        E::InvalidCertificate(C::NotValidForName)
        | E::InvalidCertificate(C::NotValidForNameContext { .. }) => "server_identity_mismatch",
        E::InvalidCertificate(C::Other(o)) if o.to_string().contains("identity") => {
            "server_identity_mismatch"
        }
        E::NoCertificatesPresented => "no_client_cert",
        E::InvalidMessage(_)
        | E::InappropriateMessage { .. }
        | E::InappropriateHandshakeMessage { .. } => "not_tls",
        E::AlertReceived(rustls::AlertDescription::UnknownCA)
        | E::AlertReceived(rustls::AlertDescription::BadCertificate) => "peer_rejected_us",
        E::AlertReceived(rustls::AlertDescription::CertificateExpired) => "peer_rejected_us",
        _ => "handshake",
    }
}

/// A TLS failure as the I/O error the record layer and the handshake return.
pub(super) fn to_io(e: rustls::Error) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e)
}

//! Workload identity and mutual TLS.
//!
//! A workload's identity is its Kubernetes service account, written as a SPIFFE ID
//! (`spiffe://TRUST_DOMAIN/ns/NS/sa/SA`, see [`Identity`]). The agent holds an issuer
//! certificate and key under one or more trust anchors ([`IssuerFiles`], created with
//! [`init`] or by the operator's own tooling), issues short-lived leaf certificates for the
//! workloads on its node ([`CertManager`]), renews them at half-life, and builds the rustls
//! configurations for the mesh's mutual TLS ([`server_config`], [`client_config`],
//! [`peer_identity`]).

mod anchor_key;
mod crypto;
mod error;
mod id;
mod init;
mod issuer;
mod manager;
mod tls;

#[cfg(test)]
mod bad_cert_tests;
#[cfg(test)]
pub(crate) mod tests;

pub use anchor_key::{anchor_keys_beside, AnchorKey};
pub use error::IdentityError;
pub use id::Identity;
pub use init::{init, InitOutput};
pub use issuer::{IssuerFiles, TrustAnchors};
pub use manager::{CertManager, DEFAULT_LEAF_TTL};
pub use tls::{
    client_config, peer_identity, peer_identity_from_certs, server_config, ForeignTrustDomain,
    IdentityMismatch, ALPN_H2,
};
pub(crate) use tls::{uri_sans, SpiffeServerVerifier};

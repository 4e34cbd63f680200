//! Workload identity and mutual TLS.
//!
//! A workload's identity is its Kubernetes service account, written as a SPIFFE ID
//! (`spiffe://TRUST_DOMAIN/ns/NS/sa/SA`, see [`Identity`]). The agent holds an issuer
//! certificate and key under one or more trust anchors ([`IssuerFiles`], created with
//! [`init`] or by the operator's own tooling), issues short-lived leaf certificates for the
//! workloads on its node ([`CertManager`]), renews them at half-life, and builds the rustls
//! configurations for the mesh's mutual TLS ([`server_config`], [`client_config`],
//! [`peer_identity`]).

// Wired into HBONE, `meshd identity init`, `check` and `diagnostics`. A few items
// (`CertManager::forget`, `Identity::try_new`, `IssuerFiles::in_dir`, ...) are used only by
// the tests so far; policy will use them. The identity section is read at start-up only.
#![allow(dead_code)]

mod error;
mod id;
mod init;
mod issuer;
mod manager;
mod tls;

#[cfg(test)]
pub(crate) mod tests;

// Not all of these are used by the binary yet (the CLI and the proxy wire them next).
#[allow(unused_imports)]
pub use error::IdentityError;
#[allow(unused_imports)]
pub use id::Identity;
#[allow(unused_imports)]
pub use init::{init, InitOutput};
#[allow(unused_imports)]
pub use issuer::{IssuerFiles, TrustAnchors};
#[allow(unused_imports)]
pub use manager::{CertManager, DEFAULT_LEAF_TTL};
#[allow(unused_imports)]
pub use tls::{
    client_config, peer_identity, peer_identity_from_certs, server_config, IdentityMismatch,
    ALPN_H2,
};

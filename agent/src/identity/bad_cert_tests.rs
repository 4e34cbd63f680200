//! The review's bad-input class C that the other identity tests do not cover: certificates
//! that chain to the anchors but must not be accepted as a mesh workload (C45, C46, C47,
//! C50), and ClientHellos the mesh's TLS must not follow (C53, C54). Real handshakes over
//! in-memory streams, with certificates signed by a real issuer of `meshd identity init`.

use std::sync::Arc;

use rustls::{
    client::Resumption,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
    ClientConfig, HandshakeKind, ServerConfig,
};

use super::tests::{client_read_fails, err_text, handshake, id, manager, pki};
use super::*;

/// A leaf signed by the issuer of `files`, made from a mesh leaf's parameters (one URI
/// SAN `uri`, digital signature, serverAuth + clientAuth, not a CA, valid for an hour)
/// changed by `change`; the chain (leaf, issuer) and its key.
fn leaf(
    files: &IssuerFiles,
    uris: &[&str],
    change: impl FnOnce(&mut rcgen::CertificateParams),
) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let issuer_pem = std::fs::read_to_string(&files.issuer_cert).expect("issuer.crt");
    let issuer_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(&files.issuer_key).expect("key"))
            .expect("issuer key");
    let issuer = rcgen::Issuer::from_ca_cert_pem(&issuer_pem, issuer_key).expect("issuer");
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.subject_alt_names = uris
        .iter()
        .map(|u| rcgen::SanType::URI((*u).try_into().expect("uri")))
        .collect();
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(1);
    params.not_after = now + time::Duration::hours(1);
    change(&mut params);
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let cert = params.signed_by(&key, &issuer).expect("sign leaf");
    let issuer_der = rustls_pemfile_der(&issuer_pem);
    (
        vec![cert.der().clone(), issuer_der],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
}

/// The DER of the one certificate in `pem`.
fn rustls_pemfile_der(pem: &str) -> CertificateDer<'static> {
    use rustls::pki_types::pem::PemObject as _;
    CertificateDer::from_pem_slice(pem.as_bytes()).expect("PEM certificate")
}

/// A mesh-like client (TLS 1.3, ALPN h2, checking the server is `web`) presenting `chain`.
fn client_presenting(
    mgr: &Arc<CertManager>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> ClientConfig {
    let mut client = ClientConfig::builder_with_provider(crypto::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(tls::SpiffeServerVerifier::new(
            Arc::downgrade(mgr),
            id("default", "web"),
        )))
        .with_client_auth_cert(chain, key)
        .expect("client cert");
    client.alpn_protocols = vec![ALPN_H2.to_vec()];
    client
}

/// C45, C46, C47: a client certificate for server authentication only, a CA certificate
/// used as the client's own, and one with two URI SANs are refused by the mesh server
/// (the first two in the handshake, the last with no identity, which the HBONE listener
/// refuses as `no_client_cert`); the same client with a proper leaf is accepted.
#[tokio::test]
async fn client_certificates_that_are_not_workload_leaves_are_refused() {
    let (_dir, a) = pki();
    let files = a.issuer_files();
    let mgr = manager(&files);
    let server = server_config(mgr.clone(), id("default", "web")).expect("server config");
    let curl = "spiffe://cluster.local/ns/tools/sa/curl";

    let (chain, key) = leaf(&files, &[curl], |p| {
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    });
    let (s, c) = handshake(
        server.clone(),
        Arc::new(client_presenting(&mgr, chain, key)),
    )
    .await;
    let e = err_text(&s);
    assert!(e.contains("invalid peer certificate"), "C45: {e}");
    assert!(
        e.contains("does not allow extended key usage for client authentication"),
        "C45: {e}"
    );
    client_read_fails(c).await;

    let (chain, key) = leaf(&files, &[curl], |p| {
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::DigitalSignature,
            rcgen::KeyUsagePurpose::KeyCertSign,
        ];
    });
    let (s, c) = handshake(
        server.clone(),
        Arc::new(client_presenting(&mgr, chain, key)),
    )
    .await;
    let e = err_text(&s);
    assert!(e.contains("invalid peer certificate"), "C46: {e}");
    assert!(e.contains("CaUsedAsEndEntity"), "C46: {e}");
    client_read_fails(c).await;

    let (chain, key) = leaf(
        &files,
        &[curl, "spiffe://cluster.local/ns/default/sa/admin"],
        |_| {},
    );
    let (s, _c) = handshake(
        server.clone(),
        Arc::new(client_presenting(&mgr, chain, key)),
    )
    .await;
    // The chain is valid: the handshake completes, and the connection has no identity.
    let s = s.expect("C47: the chain is valid");
    assert_eq!(peer_identity(s.get_ref().1), None, "C47: two identities");

    let (chain, key) = leaf(&files, &[curl], |_| {});
    let (s, c) = handshake(server, Arc::new(client_presenting(&mgr, chain, key))).await;
    let s = s.expect("a proper leaf is accepted");
    assert!(c.is_ok());
    assert_eq!(
        peer_identity(s.get_ref().1),
        Some(id("tools", "curl")),
        "the proper leaf"
    );
}

/// C50: a server whose URI SAN is almost the expected identity (a longer path, a shorter
/// name, a trailing space) or carries a second URI beside it is refused by the mesh client
/// expecting `web`; the exact one is accepted.
#[tokio::test]
async fn a_server_identity_that_is_almost_the_expected_one_is_refused() {
    let (_dir, a) = pki();
    let files = a.issuer_files();
    let mgr = manager(&files);
    let client = client_config(mgr.clone(), id("tools", "curl"), id("default", "web"))
        .expect("client config");
    let web = "spiffe://cluster.local/ns/default/sa/web";
    let server_with = |uris: &[&str]| {
        let (chain, key) = leaf(&files, uris, |_| {});
        let mut s = ServerConfig::builder_with_provider(crypto::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("versions")
            .with_client_cert_verifier(mgr.client_verifier())
            .with_single_cert(chain, key)
            .expect("server cert");
        s.alpn_protocols = vec![ALPN_H2.to_vec()];
        Arc::new(s)
    };
    for uris in [
        &[&format!("{web}/x")[..]][..],
        &["spiffe://cluster.local/ns/default/sa/we"],
        &[&format!("{web} ")[..]],
        &[web, "spiffe://cluster.local/ns/default/sa/api"],
    ] {
        let (_s, c) = handshake(server_with(uris), client.clone()).await;
        let e = err_text(&c);
        assert!(e.contains("invalid peer certificate"), "{uris:?}: {e}");
    }
    let (s, c) = handshake(server_with(&[web]), client).await;
    assert!(s.is_ok() && c.is_ok(), "the exact identity");
}

/// C53, C54: a client that offers only `http/1.1` gets `no_application_protocol`; a
/// client that asks for resumption and early data gets a full handshake every time (the
/// server issues no tickets and keeps no sessions), so no early data is ever accepted.
#[tokio::test]
async fn no_other_protocol_and_no_resumption_or_early_data() {
    let (_dir, a) = pki();
    let files = a.issuer_files();
    let mgr = manager(&files);
    let server = server_config(mgr.clone(), id("default", "web")).expect("server config");

    let (chain, key) = leaf(&files, &["spiffe://cluster.local/ns/tools/sa/curl"], |_| {});
    let mut http1 = client_presenting(&mgr, chain.clone(), key.clone_key());
    http1.alpn_protocols = vec![b"http/1.1".to_vec()];
    let (s, c) = handshake(server.clone(), Arc::new(http1)).await;
    let e = err_text(&s);
    assert!(
        e.contains("peer doesn't support any known protocol"),
        "C53: {e}"
    );
    assert!(c.is_err(), "C53: the client must fail");

    let mut eager = client_presenting(&mgr, chain, key);
    eager.resumption = Resumption::in_memory_sessions(16);
    eager.enable_early_data = true;
    let eager = Arc::new(eager);
    for round in 0..2 {
        let (s, c) = handshake(server.clone(), eager.clone()).await;
        let (s, c) = (s.expect("server"), c.expect("client"));
        assert_eq!(
            c.get_ref().1.handshake_kind(),
            Some(HandshakeKind::Full),
            "C54: round {round}"
        );
        assert!(
            !c.get_ref().1.is_early_data_accepted(),
            "C54: round {round}"
        );
        drop(s);
    }
}

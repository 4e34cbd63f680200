//! Tests of the identity module: init/load, and real TLS handshakes over in-memory streams.

use std::{
    io,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, SystemTime},
};

use rustls::{pki_types::ServerName, ClientConfig, ServerConfig};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};
use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};

use super::*;

const TD: &str = "cluster.local";

/// A directory under the system temp dir, removed on drop (also for other modules' tests).
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "meshd-identity-test-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(super) fn id(ns: &str, sa: &str) -> Identity {
    Identity::new(TD, ns, sa)
}

/// A fresh trust anchor and issuer in a temp dir.
pub(super) fn pki() -> (TempDir, InitOutput) {
    let dir = TempDir::new();
    let out = init(dir.path(), TD, false).expect("init");
    (dir, out)
}

pub(super) fn manager(files: &IssuerFiles) -> Arc<CertManager> {
    Arc::new(CertManager::load(files, DEFAULT_LEAF_TTL).expect("load"))
}

/// Writes a bundle of the given anchor files into `dir/name`.
fn bundle(dir: &Path, name: &str, anchors: &[&Path]) -> PathBuf {
    let mut pem = String::new();
    for a in anchors {
        pem.push_str(&std::fs::read_to_string(a).expect("read anchor"));
    }
    let path = dir.join(name);
    std::fs::write(&path, pem).expect("write bundle");
    path
}

/// Signs a new issuer with the anchor of `ca` (its ca.crt/ca.key), with explicit validity;
/// writes `out/issuer.crt` and `out/issuer.key`.
fn sign_issuer(
    ca: &InitOutput,
    out: &Path,
    not_before: SystemTime,
    not_after: SystemTime,
) -> IssuerFiles {
    sign_issuer_with(ca, out, not_before, not_after, None)
}

/// [`sign_issuer`] with the issuer's key given: the key pair and the PEM text written to
/// `issuer.key` (any encoding of that key).
fn sign_issuer_with(
    ca: &InitOutput,
    out: &Path,
    not_before: SystemTime,
    not_after: SystemTime,
    key: Option<(&rcgen::KeyPair, String)>,
) -> IssuerFiles {
    let anchor_key = rcgen::KeyPair::from_pem(
        &std::fs::read_to_string(&ca.trust_anchor_key).expect("read ca.key"),
    )
    .expect("ca key");
    let anchor = rcgen::Issuer::from_ca_cert_pem(
        &std::fs::read_to_string(&ca.trust_anchor).expect("read ca.crt"),
        anchor_key,
    )
    .expect("anchor issuer");
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "identity.linkerd.cluster.local");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    params.not_before = time::OffsetDateTime::from(not_before);
    params.not_after = time::OffsetDateTime::from(not_after);
    let generated;
    let (key, key_pem) = match key {
        Some(given) => given,
        None => {
            generated = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
            (&generated, generated.serialize_pem())
        }
    };
    let cert = params.signed_by(key, &anchor).expect("sign issuer");
    std::fs::create_dir_all(out).expect("mkdir");
    std::fs::write(out.join("issuer.crt"), cert.pem()).expect("write issuer.crt");
    std::fs::write(out.join("issuer.key"), key_pem).expect("write issuer.key");
    IssuerFiles {
        trust_anchors: ca.trust_anchor.clone(),
        issuer_cert: out.join("issuer.crt"),
        issuer_key: out.join("issuer.key"),
    }
}

type Handshake = (
    io::Result<server::TlsStream<DuplexStream>>,
    io::Result<client::TlsStream<DuplexStream>>,
);

/// Runs a real handshake over an in-memory stream.
pub(super) async fn handshake(server: Arc<ServerConfig>, client: Arc<ClientConfig>) -> Handshake {
    let (c, s) = tokio::io::duplex(64 * 1024);
    let name = ServerName::try_from("hbone.meshd.local").expect("server name");
    tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(
            TlsAcceptor::from(server).accept(s),
            TlsConnector::from(client).connect(name, c)
        )
    })
    .await
    .expect("handshake timed out")
}

/// Handshake between `client_id` (under `client_mgr`) and `server_id` (under `server_mgr`),
/// the client expecting `expected`.
async fn mesh_handshake(
    server_mgr: &Arc<CertManager>,
    server_id: &Identity,
    client_mgr: &Arc<CertManager>,
    client_id: &Identity,
    expected: &Identity,
) -> Handshake {
    let server = server_config(server_mgr.clone(), server_id.clone()).expect("server config");
    let client = client_config(client_mgr.clone(), client_id.clone(), expected.clone())
        .expect("client config");
    handshake(server, client).await
}

pub(super) fn err_text<T>(r: &io::Result<T>) -> String {
    match r {
        Ok(_) => "Ok".to_string(),
        Err(e) => e.to_string(),
    }
}

/// Sends a line each way.
async fn exchange(
    s: &mut server::TlsStream<DuplexStream>,
    c: &mut client::TlsStream<DuplexStream>,
    msg: &[u8],
) {
    c.write_all(msg).await.expect("client write");
    c.flush().await.expect("client flush");
    let mut buf = vec![0; msg.len()];
    s.read_exact(&mut buf).await.expect("server read");
    assert_eq!(buf, msg);
    s.write_all(&buf).await.expect("server write");
    s.flush().await.expect("server flush");
    c.read_exact(&mut buf).await.expect("client read");
    assert_eq!(buf, msg);
}

/// After the server rejected the client (TLS 1.3: the client may already consider the
/// handshake done), the client's first read fails.
pub(super) async fn client_read_fails(client: io::Result<client::TlsStream<DuplexStream>>) {
    if let Ok(mut c) = client {
        let mut buf = [0u8; 1];
        let r = c.read(&mut buf).await;
        assert!(
            matches!(r, Err(_) | Ok(0)),
            "client read should fail, got {r:?}"
        );
    }
}

#[test]
fn init_writes_files_that_load_and_refuses_to_overwrite() {
    let dir = TempDir::new();
    let out = init(dir.path(), TD, false).expect("init");
    for (path, mode) in [
        (&out.trust_anchor, 0o644),
        (&out.trust_anchor_key, 0o600),
        (&out.issuer_cert, 0o644),
        (&out.issuer_key, 0o600),
    ] {
        let meta = std::fs::metadata(path).expect("file written");
        assert_eq!(
            meta.permissions().mode() & 0o777,
            mode,
            "{}",
            path.display()
        );
    }
    assert_eq!(out.trust_anchor, dir.path().join("ca.crt"));
    assert_eq!(out.trust_anchor_key, dir.path().join("ca.key"));
    assert_eq!(out.issuer_cert, dir.path().join("issuer.crt"));
    assert_eq!(out.issuer_key, dir.path().join("issuer.key"));
    assert_eq!(out.issuer_files(), IssuerFiles::in_dir(dir.path()));
    let summary = out.to_string();
    assert!(
        summary.contains("does NOT need the trust anchor key"),
        "{summary}"
    );
    assert!(summary.contains("ca.key"), "{summary}");
    let key_pem = std::fs::read_to_string(&out.issuer_key).expect("read key");
    assert!(
        key_pem.starts_with("-----BEGIN PRIVATE KEY-----"),
        "PKCS#8: {key_pem}"
    );

    // The certificates: names, CA flags, path length, lifetimes, the issuer chains to the anchor.
    let anchor_file = std::fs::read(&out.trust_anchor).expect("read ca.crt");
    let issuer_pem = std::fs::read(&out.issuer_cert).expect("read issuer.crt");
    let (_, anchor_pem) = x509_parser::pem::parse_x509_pem(&anchor_file).expect("anchor pem");
    let (_, issuer_pem) = x509_parser::pem::parse_x509_pem(&issuer_pem).expect("issuer pem");
    let anchor = anchor_pem.parse_x509().expect("anchor x509");
    let issuer = issuer_pem.parse_x509().expect("issuer x509");
    assert_eq!(anchor.subject().to_string(), "CN=root.cluster.local");
    assert_eq!(anchor.issuer().to_string(), "CN=root.cluster.local");
    assert_eq!(
        issuer.subject().to_string(),
        "CN=identity.linkerd.cluster.local"
    );
    assert_eq!(issuer.issuer().to_string(), "CN=root.cluster.local");
    assert!(anchor.is_ca() && issuer.is_ca());
    let bc = issuer.basic_constraints().expect("bc").expect("bc present");
    assert_eq!(bc.value.path_len_constraint, Some(0));
    issuer
        .verify_signature(Some(anchor.public_key()))
        .expect("issuer signed by anchor");
    anchor.verify_signature(None).expect("anchor self-signed");
    let years = |c: &x509_parser::certificate::X509Certificate<'_>| {
        (c.validity().not_after.timestamp() - c.validity().not_before.timestamp())
            / (365 * 24 * 3600)
    };
    assert_eq!(years(&anchor), 10);
    assert_eq!(years(&issuer), 1);

    // They load back.
    let mgr = CertManager::load(&IssuerFiles::in_dir(dir.path()), DEFAULT_LEAF_TTL).expect("load");
    assert_eq!(
        mgr.trust_anchors().subjects(),
        ["CN=root.cluster.local".to_string()]
    );
    assert_eq!(mgr.issuer().0, "CN=identity.linkerd.cluster.local");

    // No overwrite without force; nothing changed.
    let err = init(dir.path(), TD, false).expect_err("must refuse");
    assert!(matches!(err, IdentityError::AlreadyExists { .. }));
    assert!(err.to_string().contains("ca.crt already exists"), "{err}");
    assert_eq!(std::fs::read(&out.trust_anchor).expect("read"), anchor_file);
    // A single leftover file is enough to refuse.
    let dir2 = TempDir::new();
    std::fs::write(dir2.path().join("issuer.key"), "x").expect("write");
    let err = init(dir2.path(), TD, false).expect_err("must refuse");
    assert!(
        err.to_string().contains("issuer.key already exists"),
        "{err}"
    );

    // With force: replaced, keys still 0600 even if they were not.
    std::fs::set_permissions(&out.issuer_key, std::fs::Permissions::from_mode(0o644))
        .expect("chmod");
    init(dir.path(), TD, true).expect("init --force");
    assert_ne!(std::fs::read(&out.trust_anchor).expect("read"), anchor_file);
    let mode = std::fs::metadata(&out.issuer_key)
        .expect("meta")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    CertManager::load(&IssuerFiles::in_dir(dir.path()), DEFAULT_LEAF_TTL)
        .expect("load after force");

    let err = init(dir.path(), "Not Valid", true).expect_err("bad trust domain");
    assert!(
        err.to_string()
            .contains("invalid trust domain \"Not Valid\""),
        "{err}"
    );
}

#[test]
fn load_reports_each_bad_input() {
    let (dir_a, a) = pki();
    let (dir_b, b) = pki();
    let files_a = a.issuer_files();
    let load = |files: &IssuerFiles| {
        CertManager::load(files, DEFAULT_LEAF_TTL)
            .map(|_| ())
            .expect_err("must fail")
            .to_string()
    };
    let tmp = TempDir::new();

    // Missing file.
    let missing = IssuerFiles {
        trust_anchors: dir_a.path().join("nope.crt"),
        ..files_a.clone()
    };
    let e = load(&missing);
    assert!(e.contains("cannot read") && e.contains("nope.crt"), "{e}");
    let missing_key = IssuerFiles {
        issuer_key: dir_a.path().join("nope.key"),
        ..files_a.clone()
    };
    let e = load(&missing_key);
    assert!(e.contains("cannot read") && e.contains("nope.key"), "{e}");

    // Not PEM at all, and broken PEM.
    let garbage = tmp.path().join("garbage.crt");
    std::fs::write(&garbage, "hello, world\n").expect("write");
    let e = load(&IssuerFiles {
        trust_anchors: garbage.clone(),
        ..files_a.clone()
    });
    assert!(e.contains("garbage.crt contains no certificate"), "{e}");
    let e = load(&IssuerFiles {
        issuer_cert: garbage.clone(),
        ..files_a.clone()
    });
    assert!(e.contains("garbage.crt contains no certificate"), "{e}");
    let e = load(&IssuerFiles {
        issuer_key: garbage.clone(),
        ..files_a.clone()
    });
    assert!(e.contains("garbage.crt contains no private key"), "{e}");
    let broken = tmp.path().join("broken.crt");
    std::fs::write(&broken, "-----BEGIN CERTIFICATE-----\nAAAA\n").expect("write");
    let e = load(&IssuerFiles {
        trust_anchors: broken.clone(),
        ..files_a.clone()
    });
    assert!(e.contains("broken.crt is not a PEM file"), "{e}");
    let not_der = tmp.path().join("notder.crt");
    std::fs::write(
        &not_der,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .expect("write");
    let e = load(&IssuerFiles {
        trust_anchors: not_der.clone(),
        ..files_a.clone()
    });
    assert!(
        e.contains("notder.crt: certificate #1 is not a valid X.509 certificate"),
        "{e}"
    );

    // A leaf (not a CA) as trust anchor or as issuer.
    let mgr = manager(&files_a);
    let leaf = mgr.certificate(&id("default", "web")).expect("leaf");
    let leaf_pem = tmp.path().join("leaf.crt");
    std::fs::write(&leaf_pem, pem_of(&leaf.cert[0])).expect("write");
    let e = load(&IssuerFiles {
        trust_anchors: leaf_pem.clone(),
        ..files_a.clone()
    });
    assert!(
        e.contains("leaf.crt: certificate \"<empty subject>\" is not a CA certificate"),
        "{e}"
    );
    let e = load(&IssuerFiles {
        issuer_cert: leaf_pem.clone(),
        ..files_a.clone()
    });
    assert!(
        e.contains("leaf.crt: certificate \"<empty subject>\" is not a CA certificate"),
        "{e}"
    );

    // Issuer not signed by any anchor of the bundle.
    let e = load(&IssuerFiles {
        trust_anchors: b.trust_anchor.clone(),
        ..files_a.clone()
    });
    assert!(e.contains("is not signed by any trust anchor in"), "{e}");
    assert!(
        e.contains("issuer.crt: issuer certificate \"CN=identity.linkerd.cluster.local\""),
        "{e}"
    );
    assert!(e.contains(&b.trust_anchor.display().to_string()), "{e}");

    // Issuer expired / not yet valid.
    let now = SystemTime::now();
    let day = Duration::from_secs(24 * 3600);
    let expired = sign_issuer(&a, &tmp.path().join("expired"), now - 10 * day, now - day);
    let e = load(&expired);
    assert!(
        e.contains("issuer certificate \"CN=identity.linkerd.cluster.local\" expired at"),
        "{e}"
    );
    let future = sign_issuer(&a, &tmp.path().join("future"), now + day, now + 10 * day);
    let e = load(&future);
    assert!(e.contains("is not valid before"), "{e}");

    // Key of another issuer.
    let e = load(&IssuerFiles {
        issuer_key: b.issuer_key.clone(),
        ..files_a.clone()
    });
    assert!(
        e.contains("private key does not match the certificate in"),
        "{e}"
    );
    assert!(
        e.contains(&b.issuer_key.display().to_string())
            && e.contains(&a.issuer_cert.display().to_string()),
        "{e}"
    );

    // A key that is PEM but not a key.
    let e = load(&IssuerFiles {
        issuer_key: a.issuer_cert.clone(),
        ..files_a.clone()
    });
    assert!(e.contains("issuer.crt contains no private key"), "{e}");

    // Zero TTL.
    let e = CertManager::load(&files_a, Duration::ZERO)
        .map(|_| ())
        .expect_err("zero ttl")
        .to_string();
    assert!(e.contains("invalid certificate lifetime"), "{e}");
    drop(dir_b);
}

fn pem_of(der: &[u8]) -> String {
    use std::fmt::Write as _;
    let b64 = base64_encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        let _ = writeln!(out, "{}", String::from_utf8_lossy(chunk));
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

fn base64_encode(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn leaf_certificates_have_the_spiffe_id_and_usages() {
    let (_dir, a) = pki();
    let mgr = manager(&a.issuer_files());
    let web = id("default", "web");
    let key = mgr.certificate(&web).expect("issue");
    assert_eq!(key.cert.len(), 2, "leaf + issuer");
    assert_eq!(
        key.cert[1].as_ref(),
        std::fs::read(&a.issuer_cert)
            .ok()
            .and_then(|p| {
                x509_parser::pem::parse_x509_pem(&p)
                    .ok()
                    .map(|(_, pem)| pem.contents)
            })
            .expect("issuer der")
            .as_slice()
    );
    let (_, leaf) = x509_parser::parse_x509_certificate(&key.cert[0]).expect("parse leaf");
    assert_eq!(peer_identity_from_certs(&key.cert), Some(web.clone()));
    assert!(!leaf.is_ca());
    let ku = leaf.key_usage().expect("ku").expect("ku present");
    assert!(ku.value.digital_signature() && !ku.value.key_cert_sign());
    let eku = leaf
        .extended_key_usage()
        .expect("eku")
        .expect("eku present");
    assert!(eku.value.server_auth && eku.value.client_auth);
    let v = leaf.validity();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("now")
        .as_secs() as i64;
    assert!(
        (v.not_before.timestamp() - (now - 60)).abs() <= 2,
        "not_before a minute ago"
    );
    assert!(
        (v.not_after.timestamp() - (now + 24 * 3600)).abs() <= 2,
        "24 h"
    );
    assert_eq!(
        leaf.issuer().to_string(),
        "CN=identity.linkerd.cluster.local"
    );
    // Cached: the same certificate again.
    assert!(Arc::ptr_eq(&key, &mgr.certificate(&web).expect("cached")));
    let expiries = mgr.expiries();
    assert_eq!(expiries.len(), 1);
    assert_eq!(expiries[0].0, web);
    // Invalid identities get no certificate.
    let e = mgr
        .certificate(&id("Bad", "web"))
        .map(|_| ())
        .expect_err("invalid")
        .to_string();
    assert!(e.contains("invalid identity"), "{e}");
    assert!(server_config(mgr.clone(), id("Bad", "web")).is_err());
    assert!(mgr.forget(&web));
    assert!(mgr.expiries().is_empty());
}

#[tokio::test]
async fn handshake_between_two_workloads_learns_both_identities() {
    let (_dir, a) = pki();
    let mgr = manager(&a.issuer_files());
    let (web, curl) = (id("default", "web"), id("tools", "curl"));
    let (s, c) = mesh_handshake(&mgr, &web, &mgr, &curl, &web).await;
    let (mut s, mut c) = (s.expect("server handshake"), c.expect("client handshake"));
    assert_eq!(
        peer_identity(s.get_ref().1),
        Some(curl.clone()),
        "server learns the client"
    );
    assert_eq!(
        peer_identity(c.get_ref().1),
        Some(web.clone()),
        "client saw the server"
    );
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(ALPN_H2));
    assert_eq!(
        c.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    let suite = c
        .get_ref()
        .1
        .negotiated_cipher_suite()
        .expect("suite")
        .suite();
    assert_eq!(suite, rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    exchange(&mut s, &mut c, b"hello mesh").await;
    // Configurations are cached.
    let s1 = server_config(mgr.clone(), web.clone()).expect("server config");
    assert!(Arc::ptr_eq(
        &s1,
        &server_config(mgr.clone(), web.clone()).expect("again")
    ));
    let c1 = client_config(mgr.clone(), curl.clone(), web.clone()).expect("client config");
    assert!(Arc::ptr_eq(
        &c1,
        &client_config(mgr.clone(), curl.clone(), web.clone()).expect("again")
    ));
}

#[tokio::test]
async fn client_certificate_from_another_trust_anchor_is_rejected() {
    let (dir_a, a) = pki();
    // Another anchor with another name (webpki: UnknownIssuer); the same-name case is below.
    let dir_b = TempDir::new();
    let b = init(dir_b.path(), "example.org", false).expect("init example.org");
    let server_mgr = manager(&a.issuer_files());
    // The client trusts both anchors (so it accepts the server) but its issuer is under B.
    let both = bundle(
        dir_a.path(),
        "both.crt",
        &[&a.trust_anchor, &b.trust_anchor],
    );
    let client_mgr = manager(&IssuerFiles {
        trust_anchors: both,
        ..b.issuer_files()
    });
    let (web, curl) = (id("default", "web"), id("tools", "curl"));
    let (s, c) = mesh_handshake(&server_mgr, &web, &client_mgr, &curl, &web).await;
    let e = err_text(&s);
    assert!(e.contains("invalid peer certificate: UnknownIssuer"), "{e}");
    client_read_fails(c).await;

    // And the other way round: the client does not trust the server's anchor.
    let (s, c) = mesh_handshake(&client_mgr, &web, &server_mgr, &curl, &web).await;
    let e = err_text(&c);
    assert!(e.contains("invalid peer certificate: UnknownIssuer"), "{e}");
    assert!(s.is_err());

    // Another anchor with the same name (two `init`s for one trust domain): webpki finds the
    // anchor by name, and its key does not verify the issuer.
    let (dir_c, c_pki) = pki();
    let both = bundle(
        dir_c.path(),
        "both.crt",
        &[&a.trust_anchor, &c_pki.trust_anchor],
    );
    let client_mgr = manager(&IssuerFiles {
        trust_anchors: both,
        ..c_pki.issuer_files()
    });
    let (s, c) = mesh_handshake(&server_mgr, &web, &client_mgr, &curl, &web).await;
    let e = err_text(&s);
    assert!(e.contains("invalid peer certificate: BadSignature"), "{e}");
    client_read_fails(c).await;
}

/// Review case C48 (L6): a client whose certificate chains to the same anchors (one issuer
/// signing for several trust domains, or anchors shared by two meshes) but names another
/// trust domain is refused in the handshake, naming both; the same client in this trust
/// domain is accepted.
#[tokio::test]
async fn client_from_another_trust_domain_under_the_same_anchors_is_rejected() {
    let (_dir, a) = pki();
    let mgr = manager(&a.issuer_files());
    let web = id("default", "web");
    let foreign = Identity::new("other.td", "tools", "curl");
    let (s, c) = mesh_handshake(&mgr, &web, &mgr, &foreign, &web).await;
    let e = err_text(&s);
    assert!(
        e.contains(
            "client identity spiffe://other.td/ns/tools/sa/curl is not in this mesh's trust domain cluster.local"
        ),
        "{e}"
    );
    client_read_fails(c).await;
    let Err(io) = s else {
        panic!("the server must fail")
    };
    let inner = io
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .expect("rustls error");
    let rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) = inner else {
        panic!("unexpected {inner:?}");
    };
    let refused = other
        .0
        .downcast_ref::<ForeignTrustDomain>()
        .expect("ForeignTrustDomain");
    assert_eq!(refused.expected, TD);
    assert_eq!(refused.presented, foreign.to_string());

    let (s, c) = mesh_handshake(&mgr, &web, &mgr, &id("tools", "curl"), &web).await;
    assert!(
        s.is_ok() && c.is_ok(),
        "{} / {}",
        err_text(&s),
        err_text(&c)
    );
}

/// A self-signed CA certificate (PEM) valid from `not_before` to `not_after`.
fn self_signed_ca(name: &str, not_before: SystemTime, not_after: SystemTime) -> String {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.not_before = time::OffsetDateTime::from(not_before);
    params.not_after = time::OffsetDateTime::from(not_after);
    params.self_signed(&key).expect("self-signed").pem()
}

/// Review case H105 (L8): a bundle holding an expired anchor is refused at load, naming the
/// file and the anchor (webpki never checks an anchor's validity).
#[test]
fn an_expired_trust_anchor_is_refused_at_load() {
    let (dir, a) = pki();
    let now = SystemTime::now();
    let day = Duration::from_secs(86_400);
    let expired = self_signed_ca("old.cluster.local", now - 400 * day, now - day);
    let path = dir.path().join("with-expired.crt");
    let good = std::fs::read_to_string(&a.trust_anchor).expect("read ca.crt");
    std::fs::write(&path, format!("{good}{expired}")).expect("write bundle");
    let e = TrustAnchors::load(&path)
        .expect_err("expired anchor")
        .to_string();
    assert!(e.contains(&path.display().to_string()), "{e}");
    assert!(
        e.contains("trust anchor \"CN=old.cluster.local\" expired at"),
        "{e}"
    );
    assert!(e.contains("remove it from the bundle"), "{e}");
    // The manager refuses it too.
    let files = IssuerFiles {
        trust_anchors: path,
        ..a.issuer_files()
    };
    assert!(CertManager::load(&files, DEFAULT_LEAF_TTL).is_err());
    // An anchor valid for another day loads.
    let fresh = self_signed_ca("new.cluster.local", now - day, now + day);
    let path = dir.path().join("fresh.crt");
    std::fs::write(&path, fresh).expect("write");
    assert!(TrustAnchors::load(&path).is_ok());
}

/// H3: `init` writes the anchor key beside the issuer files; it is found there (by its
/// public key, whatever its name), and not once it is gone.
#[test]
fn an_anchor_key_beside_the_issuer_files_is_found() {
    let (dir, a) = pki();
    let mgr = manager(&a.issuer_files());
    let anchors = mgr.trust_anchors();
    let found = anchor_keys_beside(&a.issuer_files(), &anchors);
    assert_eq!(
        found,
        vec![AnchorKey {
            path: a.trust_anchor_key.clone(),
            anchor: "CN=root.cluster.local".into()
        }]
    );
    // Under another name too; the issuer key and the certificates are not anchor keys.
    let renamed = dir.path().join("backup.pem");
    std::fs::rename(&a.trust_anchor_key, &renamed).expect("rename");
    let found = anchor_keys_beside(&a.issuer_files(), &anchors);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].path, renamed);
    std::fs::remove_file(&renamed).expect("remove");
    assert!(anchor_keys_beside(&a.issuer_files(), &anchors).is_empty());
}

#[tokio::test]
async fn expired_certificates_are_rejected() {
    let (_dir, a) = pki();
    let mgr = manager(&a.issuer_files());
    let (web, curl) = (id("default", "web"), id("tools", "curl"));
    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);

    mgr.install_with_validity(&curl, now - 2 * hour, now - hour)
        .expect("expired client cert");
    let (s, c) = mesh_handshake(&mgr, &web, &mgr, &curl, &web).await;
    let e = err_text(&s);
    assert!(
        e.contains("invalid peer certificate: certificate expired"),
        "{e}"
    );
    client_read_fails(c).await;

    mgr.install_with_validity(&web, now - 2 * hour, now - hour)
        .expect("expired server cert");
    let ok_client = id("tools", "ok");
    let (s, c) = mesh_handshake(&mgr, &web, &mgr, &ok_client, &web).await;
    let e = err_text(&c);
    assert!(
        e.contains("invalid peer certificate: certificate expired"),
        "{e}"
    );
    assert!(s.is_err());
}

#[tokio::test]
async fn not_yet_valid_certificates_are_rejected() {
    let (_dir, a) = pki();
    let mgr = manager(&a.issuer_files());
    let (web, curl) = (id("default", "web"), id("tools", "curl"));
    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);

    mgr.install_with_validity(&curl, now + hour, now + 2 * hour)
        .expect("future client cert");
    let (s, c) = mesh_handshake(&mgr, &web, &mgr, &curl, &web).await;
    let e = err_text(&s);
    assert!(
        e.contains("invalid peer certificate: certificate not valid yet"),
        "{e}"
    );
    client_read_fails(c).await;

    mgr.install_with_validity(&web, now + hour, now + 2 * hour)
        .expect("future server cert");
    let ok_client = id("tools", "ok");
    let (_s, c) = mesh_handshake(&mgr, &web, &mgr, &ok_client, &web).await;
    let e = err_text(&c);
    assert!(
        e.contains("invalid peer certificate: certificate not valid yet"),
        "{e}"
    );
}

#[tokio::test]
async fn server_with_another_identity_is_rejected_naming_both() {
    let (_dir, a) = pki();
    let mgr = manager(&a.issuer_files());
    let (web, api, curl) = (
        id("default", "web"),
        id("default", "api"),
        id("tools", "curl"),
    );
    // The server is `web`, the client expects `api`.
    let (s, c) = mesh_handshake(&mgr, &web, &mgr, &curl, &api).await;
    let e = err_text(&c);
    assert!(e.contains("server identity mismatch"), "{e}");
    assert!(
        e.contains("expected identity spiffe://cluster.local/ns/default/sa/api"),
        "{e}"
    );
    assert!(
        e.contains("the server presented spiffe://cluster.local/ns/default/sa/web"),
        "{e}"
    );
    assert!(s.is_err());
    // The error can be downcast by callers.
    let Err(io) = c else {
        panic!("the client must fail")
    };
    let inner = io
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .expect("rustls error");
    let rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) = inner else {
        panic!("unexpected {inner:?}");
    };
    let mismatch = other
        .0
        .downcast_ref::<IdentityMismatch>()
        .expect("IdentityMismatch");
    assert_eq!(mismatch.expected, api.to_string());
    assert_eq!(mismatch.presented, web.to_string());
}

#[tokio::test]
async fn client_without_certificate_is_rejected() {
    let (_dir, a) = pki();
    let mgr = manager(&a.issuer_files());
    let web = id("default", "web");
    let server = server_config(mgr.clone(), web.clone()).expect("server config");
    let mut client = ClientConfig::builder_with_provider(crypto::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(tls::SpiffeServerVerifier::new(
            Arc::downgrade(&mgr),
            web.clone(),
        )))
        .with_no_client_auth();
    client.alpn_protocols = vec![ALPN_H2.to_vec()];
    let (s, c) = handshake(server, Arc::new(client)).await;
    let e = err_text(&s);
    assert!(e.contains("peer sent no certificates"), "{e}");
    client_read_fails(c).await;
}

#[tokio::test]
async fn tls12_only_client_is_refused() {
    let (_dir, a) = pki();
    let mgr = manager(&a.issuer_files());
    let web = id("default", "web");
    let server = server_config(mgr.clone(), web.clone()).expect("server config");
    let client = ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .expect("versions")
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(tls::SpiffeServerVerifier::new(
        Arc::downgrade(&mgr),
        web.clone(),
    )))
    .with_no_client_auth();
    let (s, c) = handshake(server, Arc::new(client)).await;
    let e = err_text(&s);
    assert!(e.contains("peer is incompatible"), "{e}");
    let e = err_text(&c);
    assert!(e.contains("ProtocolVersion"), "{e}");
}

#[tokio::test]
async fn two_anchors_in_the_bundle_accept_issuers_under_either() {
    let (dir_old, old) = pki();
    let (_dir_new, new) = pki();
    let both = bundle(
        dir_old.path(),
        "both.crt",
        &[&old.trust_anchor, &new.trust_anchor],
    );
    let mgr_old = manager(&IssuerFiles {
        trust_anchors: both.clone(),
        ..old.issuer_files()
    });
    let mgr_new = manager(&IssuerFiles {
        trust_anchors: both,
        ..new.issuer_files()
    });
    assert_eq!(mgr_old.trust_anchors().subjects().len(), 2);
    let (web, curl) = (id("default", "web"), id("tools", "curl"));
    for (server_mgr, client_mgr) in [
        (&mgr_old, &mgr_new),
        (&mgr_new, &mgr_old),
        (&mgr_new, &mgr_new),
    ] {
        let (s, c) = mesh_handshake(server_mgr, &web, client_mgr, &curl, &web).await;
        let (mut s, mut c) = (s.expect("server"), c.expect("client"));
        assert_eq!(peer_identity(s.get_ref().1), Some(curl.clone()));
        exchange(&mut s, &mut c, b"rotation").await;
    }
}

#[tokio::test]
async fn renewal_swaps_certificates_without_breaking_connections() {
    let (_dir, a) = pki();
    let mgr = Arc::new(CertManager::load(&a.issuer_files(), Duration::from_secs(2)).expect("load"));
    let (web, curl) = (id("default", "web"), id("tools", "curl"));
    let renewal = mgr.spawn_renewal();

    let (s, c) = mesh_handshake(&mgr, &web, &mgr, &curl, &web).await;
    let (mut s1, mut c1) = (s.expect("server"), c.expect("client"));
    exchange(&mut s1, &mut c1, b"before").await;
    let first_client_cert = s1.get_ref().1.peer_certificates().expect("client cert")[0].clone();
    let (web_serial, curl_serial) = (
        mgr.serial(&web).expect("web"),
        mgr.serial(&curl).expect("curl"),
    );
    let first_expiry = mgr.expiries();
    assert_eq!(mgr.renewals(), 0);

    // Half-life is 1 s; wait for both to renew, then past the old certificates' expiry.
    tokio::time::timeout(Duration::from_secs(10), async {
        while mgr.serial(&web).as_ref() == Some(&web_serial)
            || mgr.serial(&curl).as_ref() == Some(&curl_serial)
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("renewal happened");
    assert!(mgr.renewals() >= 2, "counter: {}", mgr.renewals());
    let second_expiry = mgr.expiries();
    assert!(second_expiry
        .iter()
        .zip(&first_expiry)
        .all(|(new, old)| new.0 == old.0 && new.1 > old.1));
    // Wait (no fixed sleep) until the first certificates have expired.
    let old_expiry = first_expiry
        .iter()
        .map(|e| e.1)
        .max()
        .expect("two certificates");
    tokio::time::timeout(Duration::from_secs(10), async {
        while SystemTime::now() <= old_expiry + Duration::from_secs(1) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the first certificates expire within their 2 s lifetime");

    // The connection made before renewal (with now-expired certificates) still works.
    exchange(&mut s1, &mut c1, b"after renewal").await;

    // New handshakes use the current certificates.
    let (s, c) = mesh_handshake(&mgr, &web, &mgr, &curl, &web).await;
    let (mut s2, mut c2) = (
        s.expect("server after renewal"),
        c.expect("client after renewal"),
    );
    exchange(&mut s2, &mut c2, b"new").await;
    let second_client_cert = s2.get_ref().1.peer_certificates().expect("client cert")[0].clone();
    assert_ne!(first_client_cert, second_client_cert);
    assert_eq!(peer_identity(s2.get_ref().1), Some(curl.clone()));
    renewal.abort();
}

/// The `notAfter` of a DER certificate.
fn not_after_of(der: &[u8]) -> SystemTime {
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("parse");
    super::issuer::asn1_to_system_time(cert.validity().not_after.timestamp())
}

/// A leaf certificate never outlives its issuer: with an issuer that expires in an hour and
/// the default 24 h lifetime, the leaf's `notAfter` is the issuer's, exactly (the chain is
/// valid for its whole life), and handshakes with it work; a lifetime that ends before the
/// issuer does is kept as it is.
#[tokio::test]
async fn leaf_certificates_never_outlive_the_issuer() {
    let (_dir, ca) = pki();
    let tmp = TempDir::new();
    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);
    let files = sign_issuer(&ca, tmp.path(), now - hour, now + hour);
    let mgr = manager(&files);
    let (_, issuer_expiry) = mgr.issuer();
    assert!(issuer_expiry > now + hour - Duration::from_secs(2));
    assert!(issuer_expiry <= now + hour);
    assert_eq!(mgr.leaf_ttl(), DEFAULT_LEAF_TTL);

    let web = id("default", "web");
    let key = mgr.certificate(&web).expect("issue");
    assert_eq!(
        not_after_of(&key.cert[0]),
        issuer_expiry,
        "capped at the issuer's expiry"
    );
    assert_eq!(
        not_after_of(&key.cert[1]),
        issuer_expiry,
        "the issuer in the chain"
    );
    assert_eq!(mgr.expiries(), vec![(web.clone(), issuer_expiry)]);
    let curl = id("tools", "curl");
    let (s, c) = mesh_handshake(&mgr, &web, &mgr, &curl, &web).await;
    let (mut s, mut c) = (s.expect("server"), c.expect("client"));
    exchange(&mut s, &mut c, b"capped").await;

    // A 10-minute lifetime ends before the issuer: not capped.
    let short =
        Arc::new(CertManager::load(&files, 10 * 60 * Duration::from_secs(1)).expect("load"));
    let before = SystemTime::now();
    let key = short.certificate(&web).expect("issue");
    let leaf_expiry = not_after_of(&key.cert[0]);
    assert!(leaf_expiry < issuer_expiry);
    let ttl = leaf_expiry.duration_since(before).expect("in the future");
    assert!(
        (Duration::from_secs(598)..=Duration::from_secs(600)).contains(&ttl),
        "{ttl:?}"
    );
}

/// A PEM block of `der` under `label`.
fn pem_block(label: &str, der: &[u8]) -> String {
    pem_of(der).replace("CERTIFICATE", label)
}

/// The contents of the DER element at the start of `b`, and what follows it.
fn der_element(b: &[u8]) -> (&[u8], &[u8]) {
    let (len, header) = match b[1] {
        n if n < 0x80 => (usize::from(n), 2),
        n => {
            let k = usize::from(n & 0x7f);
            let len = b[2..2 + k].iter().fold(0, |l, &x| l << 8 | usize::from(x));
            (len, 2 + k)
        }
    };
    (&b[header..header + len], &b[header + len..])
}

/// The PKCS#1 `RSAPrivateKey` inside a PKCS#8 `PrivateKeyInfo` (its `privateKey` octets).
fn pkcs1_of(pkcs8: &[u8]) -> Vec<u8> {
    let (info, _) = der_element(pkcs8);
    let (_version, rest) = der_element(info);
    let (_algorithm, rest) = der_element(rest);
    assert_eq!(rest[0], 0x04, "privateKey is an OCTET STRING");
    der_element(rest).0.to_vec()
}

/// Issuer keys in the encodings other tools write load, and sign leaves that handshakes
/// accept: SEC1 (`BEGIN EC PRIVATE KEY`, what `step` writes for its default P-256 keys:
/// RFC 5915 with the curve and the public key) and PKCS#1 (`BEGIN RSA PRIVATE KEY`, an RSA
/// issuer as `openssl genrsa -traditional` writes it).
#[tokio::test]
async fn sec1_and_pkcs1_issuer_keys_load() {
    use aws_lc_rs::encoding::AsDer as _;
    let (_dir, ca) = pki();
    let tmp = TempDir::new();
    let now = SystemTime::now();
    let day = Duration::from_secs(24 * 3600);

    let ec = aws_lc_rs::signature::EcdsaKeyPair::generate(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
    )
    .expect("P-256 key");
    let sec1 = ec.private_key().as_der().expect("SEC1");
    // With the curve named in it ([0] prime256v1), as step and openssl write it.
    const P256: [u8; 12] = [
        0xa0, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
    ];
    assert!(sec1.as_ref().windows(P256.len()).any(|w| w == P256));
    let ec_pkcs8 = ec.to_pkcs8v1().expect("PKCS#8");
    let ec_signer = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
        &ec_pkcs8.as_ref().to_vec().into(),
        &rcgen::PKCS_ECDSA_P256_SHA256,
    )
    .expect("rcgen EC key");

    let rsa = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("RSA key");
    let rsa_pkcs8 = rsa.as_der().expect("PKCS#8");
    let rsa_signer = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
        &rsa_pkcs8.as_ref().to_vec().into(),
        &rcgen::PKCS_RSA_SHA256,
    )
    .expect("rcgen RSA key");
    let pkcs1 = pkcs1_of(rsa_pkcs8.as_ref());

    let web = id("default", "web");
    let curl = id("tools", "curl");
    for (name, signer, pem) in [
        (
            "sec1",
            &ec_signer,
            pem_block("EC PRIVATE KEY", sec1.as_ref()),
        ),
        ("pkcs1", &rsa_signer, pem_block("RSA PRIVATE KEY", &pkcs1)),
    ] {
        let files = sign_issuer_with(
            &ca,
            &tmp.path().join(name),
            now - day,
            now + day,
            Some((signer, pem.clone())),
        );
        // What is on disk is the traditional encoding, not PKCS#8.
        let written = std::fs::read_to_string(&files.issuer_key).expect("read");
        assert_eq!(written, pem);
        use rustls::pki_types::{pem::PemObject as _, PrivateKeyDer};
        let kind = match PrivateKeyDer::from_pem_slice(written.as_bytes()).expect("a PEM key") {
            PrivateKeyDer::Sec1(_) => "sec1",
            PrivateKeyDer::Pkcs1(_) => "pkcs1",
            _ => "other",
        };
        assert_eq!(kind, name, "{written:.40}");
        let mgr = Arc::new(
            CertManager::load(&files, DEFAULT_LEAF_TTL)
                .unwrap_or_else(|e| panic!("{name} issuer key: {e}")),
        );
        let (s, c) = mesh_handshake(&mgr, &web, &mgr, &curl, &web).await;
        let (mut s, mut c) = (s.expect(name), c.expect(name));
        assert_eq!(peer_identity(s.get_ref().1), Some(curl.clone()), "{name}");
        exchange(&mut s, &mut c, name.as_bytes()).await;
    }
}

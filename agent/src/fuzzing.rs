//! Entry points for the fuzz targets (`fuzz/`, cargo-fuzz): each takes the fuzzer's bytes,
//! drives one parser or state machine of the agent and panics when a property does not hold
//! (see docs/fuzzing.md for the properties). Not an API: the internals stay `pub(crate)`,
//! and only these wrappers are public.

use std::{
    str::FromStr,
    sync::{Arc, OnceLock},
};

use hyper::{
    header::{self, HeaderMap, HeaderName, HeaderValue},
    Request, Version,
};
use rustls::{
    client::danger::ServerCertVerifier,
    pki_types::{CertificateDer, ServerName, UnixTime},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::identity::{self, CertManager, Identity, IssuerFiles, DEFAULT_LEAF_TTL};
use crate::proxy::{
    hbone, l7, tls,
    tls::{
        fuzzing::{drain, write_in_chunks},
        testing::Bytes,
    },
};

fn runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("runtime: {e}"),
    }
}

// --- 1. record_open ---

/// `record_len` and `RecordKey::open` on arbitrary bytes with a fixed key: no panic, and a
/// record opens only if it is exactly what the key seals (the AEAD verified).
pub fn record_open(data: &[u8]) {
    tls::fuzzing::record_open(data)
}

/// Sealed records to seed `record_open` with.
pub fn record_seeds() -> Vec<Vec<u8>> {
    tls::fuzzing::record_seeds()
}

// --- 2. record_inner ---

/// Seals a record from (type, padding, content, version flip) and opens it: the content
/// comes back exactly, or the exact error the inner plaintext calls for.
pub fn record_inner(data: &[u8]) {
    tls::fuzzing::record_inner(data)
}

// --- 3. tls_rx_sequence ---

/// A sequence of records (data, empty, padded, alerts, KeyUpdates, tickets, garbage) in
/// arbitrary TCP chunks, read through `TlsStream::poll_read`; compared with a model of the
/// record layer (data delivered, how it ends, the limits).
pub fn tls_rx_sequence(data: &[u8]) {
    runtime().block_on(tls::fuzzing::rx_sequence(data))
}

// --- 4. tls_tx_vectored ---

/// Vectored writes of arbitrary slices (empty ones too), flushes, a key replaced every few
/// records, then shutdown: the peer reads back exactly the bytes written, then close_notify.
pub fn tls_tx_vectored(data: &[u8]) {
    runtime().block_on(tls::fuzzing::tx_vectored(data))
}

// --- 5. post_handshake_msgs ---

/// `on_handshake` on arbitrary record content: a KeyUpdate is accepted only as the last
/// message; tickets before it reach the session.
pub fn post_handshake_msgs(data: &[u8]) {
    tls::fuzzing::post_handshake(data)
}

// --- 6. handshake_accept / handshake_connect ---

struct Pki {
    mgr: Arc<CertManager>,
}

fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("meshd-fuzz-pki-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            panic!("{}: {e}", dir.display());
        }
        if let Err(e) = identity::init(&dir, "cluster.local", false) {
            panic!("identity init: {e}");
        }
        let mgr = match CertManager::load(&IssuerFiles::in_dir(&dir), DEFAULT_LEAF_TTL) {
            Ok(m) => m,
            Err(e) => panic!("load: {e}"),
        };
        let _ = std::fs::remove_dir_all(&dir);
        Pki { mgr: Arc::new(mgr) }
    })
}

fn server_id() -> Identity {
    Identity::new("cluster.local", "ns", "server")
}

fn client_id() -> Identity {
    Identity::new("cluster.local", "ns", "client")
}

/// The handshake's server side (`accept`) on arbitrary client bytes in arbitrary chunks:
/// no panic, and it ends once the input is exhausted (the client closes).
pub fn handshake_accept(data: &[u8]) {
    let config = match identity::server_config(pki().mgr.clone(), server_id()) {
        Ok(c) => c,
        Err(e) => panic!("server config: {e}"),
    };
    runtime().block_on(handshake(data, |io| async move {
        tls::accept(config, io).await.map(drop)
    }))
}

/// The handshake's client side (`connect`) on arbitrary server bytes.
pub fn handshake_connect(data: &[u8]) {
    let config = match identity::client_config(pki().mgr.clone(), client_id(), server_id()) {
        Ok(c) => c,
        Err(e) => panic!("client config: {e}"),
    };
    let name = match ServerName::try_from("hbone.meshd.local") {
        Ok(n) => n,
        Err(e) => panic!("{e}"),
    };
    runtime().block_on(handshake(data, |io| async move {
        tls::connect(config, name, io).await.map(drop)
    }))
}

async fn handshake<F, Fut>(data: &[u8], side: F)
where
    F: FnOnce(tokio::io::DuplexStream) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<()>>,
{
    let mut b = Bytes::new(data);
    let chunk = usize::from(b.u8()).max(1);
    let input = b.rest().to_vec();
    let (ours, theirs) = tokio::io::duplex(1 << 20);
    let (r, w) = tokio::io::split(theirs);
    let peer = write_in_chunks(w, &input, chunk);
    let run = async { tokio::join!(side(ours), peer, drain(r)) };
    if tokio::time::timeout(std::time::Duration::from_secs(10), run)
        .await
        .is_err()
    {
        panic!("the handshake did not end once its input was exhausted");
    }
}

/// A ClientHello as our client sends it, and the flight a server answers it with.
pub fn handshake_seeds() -> (Vec<u8>, Vec<u8>) {
    let pki = pki();
    let (cc, sc) = match (
        identity::client_config(pki.mgr.clone(), client_id(), server_id()),
        identity::server_config(pki.mgr.clone(), server_id()),
    ) {
        (Ok(c), Ok(s)) => (c, s),
        _ => panic!("configs"),
    };
    let name = match ServerName::try_from("hbone.meshd.local") {
        Ok(n) => n,
        Err(e) => panic!("{e}"),
    };
    let (Ok(mut client), Ok(mut server)) = (
        rustls::ClientConnection::new(cc, name),
        rustls::ServerConnection::new(sc),
    ) else {
        panic!("connections");
    };
    let mut hello = Vec::new();
    let _ = client.write_tls(&mut hello);
    let _ = server.read_tls(&mut &hello[..]);
    let _ = server.process_new_packets();
    let mut flight = Vec::new();
    while server.wants_write() {
        if server.write_tls(&mut flight).is_err() {
            break;
        }
    }
    (hello, flight)
}

// --- 7. detect ---

/// The protocol classification of a first read (`None`: more bytes needed).
pub fn classify(buf: &[u8]) -> Option<&'static str> {
    if buf.is_empty() {
        return None;
    }
    l7::detect::classify(buf).map(protocol_name)
}

fn protocol_name(p: l7::detect::Protocol) -> &'static str {
    match p {
        l7::detect::Protocol::Http1 => "http1",
        l7::detect::Protocol::Http2 => "http2",
        l7::detect::Protocol::Opaque => "opaque",
    }
}

/// The framing check on an HTTP/1 head: why it is ambiguous, if it is.
pub fn ambiguous_head(head: &[u8]) -> Option<&'static str> {
    l7::detect::ambiguous_head(head)
}

/// `detect()` over a pipe fed in `chunk`-byte pieces: the protocol and the bytes it kept
/// (put back in front of the stream).
pub fn detect_chunked(data: &[u8], chunk: usize) -> (&'static str, Vec<u8>) {
    let data = data.to_vec();
    runtime().block_on(async move {
        let (ours, mut theirs) = tokio::io::duplex(1 << 20);
        let feed = async move {
            for piece in data.chunks(chunk.max(1)) {
                if theirs.write_all(piece).await.is_err() {
                    return;
                }
            }
            let _ = theirs.shutdown().await;
            // Keep the pipe open until detection is done reading.
            let mut sink = Vec::new();
            let _ = theirs.read_to_end(&mut sink).await;
        };
        let detect = async move {
            let (p, prefixed) = l7::detect::detect(ours).await;
            (protocol_name(p), prefixed.prefix().to_vec())
        };
        tokio::select! {
            out = detect => out,
            () = async { feed.await; std::future::pending().await } => unreachable!(),
        }
    })
}

// --- 8. hbone_server ---

/// Raw client bytes (an HTTP/2 connection preface and frames) to the HBONE server's h2
/// settings; every request is admitted as `inbound` admits it (a CONNECT with an `ip:port`
/// authority). Returns the admitted targets. No panic; ends once the input is exhausted.
pub fn hbone_server(data: &[u8]) -> Vec<std::net::SocketAddr> {
    let mut b = Bytes::new(data);
    let chunk = usize::from(b.u16()).max(1);
    let input = b.rest().to_vec();
    runtime().block_on(async move {
        let (ours, theirs) = tokio::io::duplex(1 << 20);
        let (r, mut w) = tokio::io::split(theirs);
        let feed = async move {
            let _ = w.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
            write_in_chunks(w, &input, chunk).await;
        };
        let drain = drain(r);
        let serve = async move {
            let mut admitted = Vec::new();
            let Ok(mut conn) = hbone::h2_server().handshake::<_, bytes::Bytes>(ours).await else {
                return admitted;
            };
            while let Some(Ok((req, mut respond))) = conn.accept().await {
                let target = (req.method() == hyper::Method::CONNECT)
                    .then(|| hbone::target_of(&req))
                    .flatten();
                let status = match target {
                    Some(t) => {
                        admitted.push(t);
                        hyper::StatusCode::OK
                    }
                    None => hyper::StatusCode::BAD_REQUEST,
                };
                let mut res = hyper::Response::new(());
                *res.status_mut() = status;
                let _ = respond.send_response(res, true);
            }
            admitted
        };
        let run = async { tokio::join!(serve, feed, drain).0 };
        match tokio::time::timeout(std::time::Duration::from_secs(10), run).await {
            Ok(admitted) => admitted,
            Err(_) => panic!("the HBONE server did not end once its input was exhausted"),
        }
    })
}

// --- 9. http_hop_by_hop ---

/// Headers from the fuzzer's bytes (name, value pairs), stripped as the HTTP proxy strips
/// them: no hop-by-hop header survives, nor one `Connection` names; `TE` only as
/// `trailers`; an upgrade keeps `Connection: upgrade` and `Upgrade`.
pub fn http_hop_by_hop(data: &[u8]) {
    let mut b = Bytes::new(data);
    let mut headers = HeaderMap::new();
    while !b.is_empty() && headers.len() < 64 {
        let n = usize::from(b.u8() % 24);
        let v = usize::from(b.u8() % 40);
        let name = b.take(n);
        let value = b.take(v);
        let name = match name.first() {
            Some(i) => match i % 8 {
                0 => header::CONNECTION,
                1 => header::TE,
                2 => header::UPGRADE,
                3 => header::TRANSFER_ENCODING,
                _ => match HeaderName::from_bytes(name) {
                    Ok(n) => n,
                    Err(_) => continue,
                },
            },
            None => continue,
        };
        if let Ok(v) = HeaderValue::from_bytes(value) {
            headers.append(name, v);
        }
    }
    let mut req = Request::new(());
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers.clone();
    let upgrade = l7::http::is_upgrade(&req);
    let named = l7::http::named_in_connection(&headers);
    let mut out = headers.clone();
    l7::http::strip_hop_by_hop(Version::HTTP_11, &mut out, upgrade);
    for name in [
        "keep-alive",
        "proxy-connection",
        "trailer",
        "transfer-encoding",
    ] {
        assert!(!out.contains_key(name), "{name} survived: {out:?}");
    }
    for v in out.get_all(header::TE) {
        assert_eq!(v, "trailers", "TE survived as {v:?}");
    }
    if upgrade {
        assert_eq!(out.get_all(header::CONNECTION).iter().count(), 1, "{out:?}");
        assert_eq!(
            out.get(header::CONNECTION).map(|v| v.as_bytes()),
            Some(&b"upgrade"[..])
        );
        assert_eq!(out.get(header::UPGRADE), headers.get(header::UPGRADE));
    } else {
        assert!(!out.contains_key(header::CONNECTION), "{out:?}");
        assert!(!out.contains_key(header::UPGRADE), "{out:?}");
    }
    for name in named {
        let allowed = (upgrade && (name == header::UPGRADE || name == header::CONNECTION))
            || (name == header::TE && out.get(header::TE).is_some_and(|v| v == "trailers"));
        assert!(
            allowed || !out.contains_key(&name),
            "{name} (named by Connection) survived"
        );
    }
    // Headers that are not hop-by-hop and not named pass unchanged.
    for (name, value) in &headers {
        if out.contains_key(name)
            && !matches!(*name, header::TE | header::CONNECTION | header::UPGRADE)
        {
            assert!(
                out.get_all(name).iter().any(|v| v == value),
                "{name} changed"
            );
        }
    }
}

// --- 10. identity_parse ---

/// The three parsers of an identity: a success prints back to what parses to itself, and is
/// valid.
pub fn identity_parse(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    for id in [
        Identity::from_str(s).ok(),
        Identity::from_spiffe_id(s).ok(),
        Identity::from_linkerd_name(s).ok(),
    ]
    .into_iter()
    .flatten()
    {
        assert!(id.validate().is_ok(), "{s:?} parsed to an invalid {id:?}");
        assert_eq!(Identity::from_str(&id.to_string()).ok().as_ref(), Some(&id));
        assert_eq!(
            Identity::from_spiffe_id(&id.spiffe_id()).ok().as_ref(),
            Some(&id)
        );
        // The Linkerd form is ambiguous when a part holds its infix: refused then, but
        // never read as another identity.
        if let Ok(back) = Identity::from_linkerd_name(&id.linkerd_name()) {
            assert_eq!(back, id, "the Linkerd name reads as another identity");
        }
    }
}

// --- 11. cert_identity ---

/// Certificates to seed `cert_identity` with: the leaf of a workload and the anchor.
pub fn certificate_seeds() -> Vec<Vec<u8>> {
    let mgr = &pki().mgr;
    let mut out = Vec::new();
    if let Ok(key) = mgr.certificate(&server_id()) {
        out.extend(key.cert.iter().map(|c| c.as_ref().to_vec()));
    }
    out.extend(
        mgr.trust_anchors()
            .certs()
            .iter()
            .map(|c| c.as_ref().to_vec()),
    );
    out
}

/// `uri_sans`, `peer_identity_from_certs` and the server verifier on arbitrary DER: no
/// panic; accepted only when the chain holds and the single URI SAN is the expected one.
pub fn cert_identity(data: &[u8]) {
    let cert = CertificateDer::from(data);
    let sans = identity::uri_sans(&cert);
    let peer = identity::peer_identity_from_certs(std::slice::from_ref(&cert));
    if let Some(id) = &peer {
        let sans = sans.as_ref().map(Vec::as_slice).unwrap_or_default();
        // Exact: no case-folding of the scheme or the trust domain (review L6).
        assert!(
            matches!(sans, [one] if *one == id.to_string()),
            "an identity from other than one URI SAN: {sans:?} -> {id}"
        );
    }
    let mgr = &pki().mgr;
    let verifier = identity::SpiffeServerVerifier::new(Arc::downgrade(mgr), server_id());
    let name = match ServerName::try_from("hbone.meshd.local") {
        Ok(n) => n,
        Err(e) => panic!("{e}"),
    };
    let ok = verifier
        .verify_server_cert(&cert, &[], &name, &[], UnixTime::now())
        .is_ok();
    if ok {
        assert_eq!(
            peer,
            Some(server_id()),
            "accepted without the expected identity"
        );
    }
}

// --- 12. admin_query ---

/// The admin API's percent-decoding of a query value: no panic, and what has no `%` and no
/// `+` comes back unchanged.
pub fn admin_query(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let out = crate::admin::query::percent_decode(s);
    if !s.contains(['%', '+']) {
        assert_eq!(out, s);
    }
}

// --- 14. heads ---

/// Every HTTP/1 request head of a connection checked before hyper reads it
/// (`l7::heads::CheckedHeads`), the client's bytes fed in pieces of a size the input picks.
/// No panic; what hyper reads is the input itself, or a prefix of it (a chunked body that
/// is not valid chunked ends the stream with an error), or, once a head is refused, the
/// input up to that head and then the unparseable head hyper answers `400` to; a head
/// refused as ambiguous is one [`ambiguous_head`] calls ambiguous.
pub fn heads(data: &[u8]) {
    use l7::heads::{CheckedHeads, HeadCheck, HeadRefusal, UNPARSEABLE};
    let mut b = Bytes::new(data);
    let chunk = usize::from(b.u16() % 1024).max(1);
    let input = b.rest().to_vec();
    let (out, ended, refused) = runtime().block_on(async {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let check = Arc::new(HeadCheck::default());
        let mut checked =
            CheckedHeads::new(server, std::time::Duration::from_secs(60), check.clone());
        let feed = async {
            for piece in input.chunks(chunk) {
                if client.write_all(piece).await.is_err() {
                    break;
                }
            }
            drop(client);
        };
        let read = async {
            let mut out = Vec::new();
            let ended = checked.read_to_end(&mut out).await;
            (out, ended)
        };
        let ((), (out, ended)) = tokio::join!(feed, read);
        (out, ended, check.refused())
    });
    match refused {
        None if ended.is_ok() => assert_eq!(out, input, "bytes changed or lost"),
        None => assert!(input.starts_with(&out), "not a prefix of the input"),
        Some(why) => {
            let before = out
                .strip_suffix(UNPARSEABLE)
                .unwrap_or_else(|| panic!("refused ({why}) without the unparseable head"));
            assert!(input.starts_with(before), "not a prefix of the input");
            if let HeadRefusal::Ambiguous(_) = why {
                assert!(
                    ambiguous_head(&input[before.len()..]).is_some(),
                    "refused a head the framing check lets pass: {:?}",
                    String::from_utf8_lossy(&input[before.len()..])
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// A fuzz target's entry point.
    type Target = fn(&[u8]);

    /// The committed seed corpora (regression inputs of earlier findings among them) go
    /// through their targets' entry points with every property holding, in the unit tests
    /// too, not only under `cargo xtask fuzz`.
    #[test]
    fn the_seed_corpora_hold_their_properties() {
        let targets: [(&str, Target); 13] = [
            ("record_open", super::record_open),
            ("record_inner", super::record_inner),
            ("tls_rx_sequence", super::tls_rx_sequence),
            ("tls_tx_vectored", super::tls_tx_vectored),
            ("post_handshake_msgs", super::post_handshake_msgs),
            ("handshake_accept", super::handshake_accept),
            ("handshake_connect", super::handshake_connect),
            ("hbone_server", |d| drop(super::hbone_server(d))),
            ("http_hop_by_hop", super::http_hop_by_hop),
            ("identity_parse", super::identity_parse),
            ("cert_identity", super::cert_identity),
            ("admin_query", super::admin_query),
            ("heads", super::heads),
        ];
        let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
        for (target, run) in targets {
            let dir = corpus.join(target);
            let mut inputs = 0;
            for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{target}: {e}")) {
                let path = entry.expect("corpus entry").path();
                run(&std::fs::read(&path).expect("corpus file"));
                inputs += 1;
            }
            assert!(inputs > 0, "{target}: an empty corpus");
        }
    }
}

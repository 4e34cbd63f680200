//! Writes the seed corpora (`fuzz/corpus/<target>/seed-N`): `cargo run --bin seeds` in
//! `fuzz/` (`cargo xtask fuzz --seeds`). Deterministic except the certificates and the
//! handshake bytes, which are made fresh.

use std::{fs, path::Path};

fn write(root: &Path, target: &str, seeds: &[Vec<u8>]) {
    let dir = root.join(target);
    fs::create_dir_all(&dir).expect("corpus directory");
    for (i, seed) in seeds.iter().enumerate() {
        fs::write(dir.join(format!("seed-{i}")), seed).expect("seed");
    }
}

fn with_prefix(prefix: &[u8], rest: &[u8]) -> Vec<u8> {
    [prefix, rest].concat()
}

/// An HTTP/2 frame.
fn frame(typ: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.extend([typ, flags]);
    f.extend(stream.to_be_bytes());
    f.extend(payload);
    f
}

/// HPACK: a literal header without indexing, its name from the static table.
fn literal(index: u8, value: &str) -> Vec<u8> {
    let mut v = vec![index & 0x0f, value.len() as u8];
    v.extend(value.as_bytes());
    v
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    write(&root, "record_open", &meshd::fuzzing::record_seeds());
    write(
        &root,
        "record_inner",
        &[
            [&[23u8, 0, 0, 0, 5, 0][..], b"hello"].concat(),
            vec![22, 0, 16, 0, 40, 0, 24, 0, 0, 1, 1],
            vec![0, 0, 3, 0, 3, 0, 0, 0, 0],
            vec![23, 0, 239, 0x40, 0x00, 0, 7],
            vec![23, 0, 0, 0x40, 0x01, 1, 9],
        ],
    );
    write(
        &root,
        "tls_rx_sequence",
        &[
            vec![3, 0, 20, 1, 6],
            vec![1, 0, 200, 7, 1, 1, 3, 1, 0, 5, 2, 2, 1, 90, 4, 3, 1, 2, 3, 6],
            [vec![2], vec![1; 40]].concat(),
            vec![5, 2, 1, 90, 2, 1, 90, 2, 1, 90, 2, 1, 90, 2, 1, 90],
            [vec![9], [3, 0].repeat(32), vec![1], [3, 0].repeat(2)].concat(),
            vec![1, 0, 10, 1, 7, 4, 1, 2, 3, 4],
            vec![4, 5, 100, 3, 9, 2, 2, 90, 0, 1, 1],
            vec![1, 0, 5, 1, 8],
        ],
    );
    write(
        &root,
        "tls_tx_vectored",
        &[
            vec![0, 0, 3, 0, 10, 1, 0, 0, 2, 0x40, 0, 3, 2],
            vec![3, 1, 5, 0xff, 0xff, 1, 0, 0, 2, 0, 1, 3, 0x80, 0, 4, 0, 9, 5, 3, 7, 2, 3, 8],
            vec![1, 0, 2, 0x9c, 0x3f, 1, 0x9c, 0x3f, 2, 2, 0, 1, 0, 100, 6],
        ],
    );
    write(
        &root,
        "post_handshake_msgs",
        &[
            vec![0, 24, 0, 0, 1, 1],
            vec![0, 4, 0, 0, 3, 1, 2, 3, 24, 0, 0, 1, 0],
            vec![0, 4, 0, 0, 2, 1, 2, 4, 0, 0, 0],
            vec![0x80, 4, 0, 0, 1, 0],
            vec![0, 24, 0, 0, 1, 0, 4, 0, 0, 0],
            vec![0, 13, 0, 0, 0],
        ],
    );
    let (client_hello, server_flight) = meshd::fuzzing::handshake_seeds();
    write(
        &root,
        "handshake_accept",
        &[
            with_prefix(&[255], &client_hello),
            with_prefix(&[1], &client_hello),
            with_prefix(&[7], &client_hello[..client_hello.len() / 2]),
            with_prefix(&[255], b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"),
        ],
    );
    write(
        &root,
        "handshake_connect",
        &[
            with_prefix(&[255], &server_flight),
            with_prefix(&[3], &server_flight),
            with_prefix(&[255], &server_flight[..server_flight.len().min(100)]),
        ],
    );
    write(
        &root,
        "detect",
        &[
            with_prefix(&[0x85], b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            with_prefix(
                &[0x81],
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            ),
            with_prefix(&[0x03], b"POST / HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\n"),
            with_prefix(&[0x90], b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            with_prefix(&[0x80], b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
            with_prefix(&[0x02], b"PUT /x HTTP/1.0\nContent-Length: 1\n\n"),
        ],
    );
    write(
        &root,
        "heads",
        &[
            with_prefix(&[0, 255], b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n"),
            with_prefix(
                &[0, 7],
                b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloPOST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nT: 1\r\n\r\nGET / HTTP/1.1\r\n\r\n",
            ),
            with_prefix(
                &[0, 1],
                b"GET / HTTP/1.1\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            ),
            with_prefix(&[0, 3], b"\r\n\nPOST / HTTP/1.1\nContent-Length: 3\nContent-Length: 4\n\nabc"),
            with_prefix(&[0, 9], b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nanything"),
            with_prefix(&[0, 16], b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
        ],
    );
    let settings = frame(4, 0, 0, &[]);
    let connect = [literal(2, "CONNECT"), literal(1, "10.0.0.1:8080")].concat();
    let get = [literal(2, "GET"), literal(1, "10.0.0.1:80"), literal(4, "/")].concat();
    let rst = frame(3, 0, 1, &[0, 0, 0, 8]);
    write(
        &root,
        "hbone_server",
        &[
            with_prefix(&[0, 255], &[settings.clone(), frame(1, 4, 1, &connect)].concat()),
            with_prefix(&[0, 3], &[settings.clone(), frame(1, 4, 1, &get)].concat()),
            with_prefix(
                &[1, 0],
                &[settings.clone(), frame(1, 4, 1, &connect), rst, frame(7, 0, 0, &[0; 8])]
                    .concat(),
            ),
            with_prefix(&[0, 9], &[settings, frame(1, 0, 1, &connect), frame(9, 4, 1, &[])].concat()),
        ],
    );
    write(
        &root,
        "http_hop_by_hop",
        &[
            [&[0u8, 7][..], b"c", b"upgrade", &[2, 9], b"u", b"websocket"].concat(),
            [&[1u8, 8][..], b"t", b"trailers", &[0, 20], b"c", b"keep-alive, x-secret"].concat(),
            [&[5u8, 3][..], b"x-secret", b"abc", &[3, 7], b"t", b"chunked"].concat(),
        ],
    );
    write(
        &root,
        "identity_parse",
        &[
            b"spiffe://cluster.local/ns/default/sa/web".to_vec(),
            b"web.default.serviceaccount.identity.linkerd.cluster.local".to_vec(),
            b"SPIFFE://Cluster.Local/ns/a/sa/b".to_vec(),
            b"spiffe://cluster.local/ns/a/sa/b/c".to_vec(),
            b"spiffe://td/ns//sa/x".to_vec(),
        ],
    );
    write(&root, "cert_identity", &meshd::fuzzing::certificate_seeds());
    write(
        &root,
        "admin_query",
        &[
            b"path=%2Fapi%2Fv1".to_vec(),
            b"a+b%20c".to_vec(),
            b"%a".to_vec(),
            b"%zz%".to_vec(),
            "x%a\u{e9}".as_bytes().to_vec(),
        ],
    );
}

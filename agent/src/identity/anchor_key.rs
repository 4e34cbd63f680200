//! Finding a trust anchor's private key beside the issuer files. The agent needs the issuer
//! key on every node; the anchor key must never be there: with it, whoever reads the node's
//! files can make a new issuer and outlive any rotation of the issuer. `meshd identity
//! init` writes both into one directory, so this is an easy mistake to deploy.

use std::path::{Path, PathBuf};

use x509_parser::prelude::FromDer as _;

use super::{issuer::read_key_quietly, IssuerFiles, TrustAnchors};

/// Files larger than this are not private keys; they are not read.
const MAX_KEY_FILE: u64 = 64 * 1024;

/// A trust anchor's private key found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnchorKey {
    /// The key file.
    pub path: PathBuf,
    /// The subject of the anchor whose key it is.
    pub anchor: String,
}

/// The private keys of `anchors` in the directories of the trust anchor bundle, the issuer
/// certificate and the issuer key (each regular file is tried as a PEM private key and its
/// public key compared with each anchor's).
pub fn anchor_keys_beside(files: &IssuerFiles, anchors: &TrustAnchors) -> Vec<AnchorKey> {
    let spkis: Vec<(Vec<u8>, &str)> = anchors
        .certs()
        .iter()
        .zip(anchors.subjects())
        .filter_map(|(der, subject)| {
            let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
            Some((cert.public_key().raw.to_vec(), subject.as_str()))
        })
        .collect();
    let mut dirs: Vec<&Path> = [&files.trust_anchors, &files.issuer_cert, &files.issuer_key]
        .iter()
        .filter_map(|p| p.parent())
        .collect();
    dirs.sort();
    dirs.dedup();
    let mut found = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = entries
            .flatten()
            .filter(|e| {
                e.metadata()
                    .is_ok_and(|m| m.is_file() && m.len() <= MAX_KEY_FILE)
            })
            .map(|e| e.path())
            .collect();
        paths.sort();
        for path in paths {
            let Some(spki) = read_key_quietly(&path) else {
                continue;
            };
            if let Some((_, subject)) = spkis.iter().find(|(s, _)| *s == spki) {
                found.push(AnchorKey {
                    path,
                    anchor: subject.to_string(),
                });
            }
        }
    }
    found
}

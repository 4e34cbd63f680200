//! `meshd identity init`: create a trust anchor and an issuer, like
//! `step certificate create root.linkerd.cluster.local ca.crt ca.key --profile root-ca` and
//! `step certificate create identity.linkerd.cluster.local issuer.crt issuer.key
//! --profile intermediate-ca --ca ca.crt --ca-key ca.key`.

use std::{
    fmt,
    fs::{self, OpenOptions},
    io::Write as _,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

use super::{
    error::fmt_time,
    id::check_trust_domain,
    issuer::{
        random_serial, IssuerFiles, ISSUER_CERT_FILE, ISSUER_KEY_FILE, TRUST_ANCHOR_FILE,
        TRUST_ANCHOR_KEY_FILE,
    },
    IdentityError,
};

/// Lifetime of the trust anchor (10 years, as `step --profile root-ca`).
const ANCHOR_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Lifetime of the issuer (1 year).
const ISSUER_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// Backdating of both, for clock skew between nodes.
const BACKDATE: Duration = Duration::from_secs(60);

/// What [`init`] created. Its `Display` is the summary to print.
#[derive(Clone, Debug)]
pub struct InitOutput {
    /// The trust domain the certificates are for.
    pub trust_domain: String,
    /// The trust anchor certificate (`ca.crt`).
    pub trust_anchor: PathBuf,
    /// The trust anchor's private key (`ca.key`), not needed by the agent.
    pub trust_anchor_key: PathBuf,
    /// The issuer certificate (`issuer.crt`).
    pub issuer_cert: PathBuf,
    /// The issuer's private key (`issuer.key`).
    pub issuer_key: PathBuf,
    /// The trust anchor's subject common name.
    pub anchor_name: String,
    /// The issuer's subject common name.
    pub issuer_name: String,
    /// When the trust anchor expires.
    pub anchor_not_after: SystemTime,
    /// When the issuer expires.
    pub issuer_not_after: SystemTime,
}

impl InitOutput {
    /// The files the agent loads (anchor bundle, issuer certificate and key).
    pub fn issuer_files(&self) -> IssuerFiles {
        IssuerFiles {
            trust_anchors: self.trust_anchor.clone(),
            issuer_cert: self.issuer_cert.clone(),
            issuer_key: self.issuer_key.clone(),
        }
    }
}

impl fmt::Display for InitOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "Created the mesh identity for trust domain {}:",
            self.trust_domain
        )?;
        writeln!(
            f,
            "  trust anchor  {}  (CN={}, expires {})",
            self.trust_anchor.display(),
            self.anchor_name,
            fmt_time(self.anchor_not_after)
        )?;
        writeln!(
            f,
            "  issuer        {}  (CN={}, expires {})",
            self.issuer_cert.display(),
            self.issuer_name,
            fmt_time(self.issuer_not_after)
        )?;
        writeln!(
            f,
            "  issuer key    {}  (mode 0600)",
            self.issuer_key.display()
        )?;
        writeln!(
            f,
            "  anchor key    {}  (mode 0600)",
            self.trust_anchor_key.display()
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "meshd needs {}, {} and {} at runtime.",
            self.trust_anchor.display(),
            self.issuer_cert.display(),
            self.issuer_key.display()
        )?;
        write!(
            f,
            "It does NOT need the trust anchor key {}: it is only for signing a new issuer \
             when this one expires. Move it off the node and keep it offline.",
            self.trust_anchor_key.display()
        )
    }
}

/// Creates, in `dir`, a self-signed trust anchor `ca.crt` + `ca.key` (ECDSA P-256, CA,
/// 10 years, CN `root.<trust_domain>`) and an issuer `issuer.crt` + `issuer.key` signed by it
/// (intermediate CA, path length 0, 1 year, CN `identity.linkerd.<trust_domain>`). Keys are
/// PKCS#8 PEM with mode 0600. Existing files are not overwritten unless `force`.
pub fn init(dir: &Path, trust_domain: &str, force: bool) -> Result<InitOutput, IdentityError> {
    check_trust_domain(trust_domain).map_err(|reason| IdentityError::InvalidTrustDomain {
        trust_domain: trust_domain.to_string(),
        reason,
    })?;
    let paths = [
        TRUST_ANCHOR_FILE,
        TRUST_ANCHOR_KEY_FILE,
        ISSUER_CERT_FILE,
        ISSUER_KEY_FILE,
    ]
    .map(|f| dir.join(f));
    if !force {
        if let Some(existing) = paths.iter().find(|p| p.symlink_metadata().is_ok()) {
            return Err(IdentityError::AlreadyExists {
                path: existing.clone(),
            });
        }
    }
    let [anchor_path, anchor_key_path, issuer_path, issuer_key_path] = paths;

    let now = SystemTime::now();
    let anchor_name = format!("root.{trust_domain}");
    let issuer_name = format!("identity.linkerd.{trust_domain}");
    let anchor_not_after = now + ANCHOR_TTL;
    let issuer_not_after = now + ISSUER_TTL;

    let anchor_params = ca_params(&anchor_name, 1, now - BACKDATE, anchor_not_after)
        .map_err(generate(&anchor_name))?;
    let anchor_key =
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(generate(&anchor_name))?;
    let anchor_cert = anchor_params
        .self_signed(&anchor_key)
        .map_err(generate(&anchor_name))?;
    let anchor = rcgen::Issuer::new(anchor_params, anchor_key);

    let mut issuer_params = ca_params(&issuer_name, 0, now - BACKDATE, issuer_not_after)
        .map_err(generate(&issuer_name))?;
    issuer_params.use_authority_key_identifier_extension = true;
    let issuer_key =
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(generate(&issuer_name))?;
    let issuer_cert = issuer_params
        .signed_by(&issuer_key, &anchor)
        .map_err(generate(&issuer_name))?;

    fs::create_dir_all(dir).map_err(|source| IdentityError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    write_file(&anchor_path, anchor_cert.pem().as_bytes(), 0o644, force)?;
    write_file(
        &anchor_key_path,
        anchor.key().serialize_pem().as_bytes(),
        0o600,
        force,
    )?;
    write_file(&issuer_path, issuer_cert.pem().as_bytes(), 0o644, force)?;
    write_file(
        &issuer_key_path,
        issuer_key.serialize_pem().as_bytes(),
        0o600,
        force,
    )?;

    Ok(InitOutput {
        trust_domain: trust_domain.to_string(),
        trust_anchor: anchor_path,
        trust_anchor_key: anchor_key_path,
        issuer_cert: issuer_path,
        issuer_key: issuer_key_path,
        anchor_name,
        issuer_name,
        anchor_not_after,
        issuer_not_after,
    })
}

/// Parameters of a CA certificate with the given common name and path length.
fn ca_params(
    common_name: &str,
    path_len: u8,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = time::OffsetDateTime::from(not_before);
    params.not_after = time::OffsetDateTime::from(not_after);
    params.serial_number = Some(random_serial().map_err(|_| rcgen::Error::RingUnspecified)?);
    Ok(params)
}

/// Writes `contents` to `path` with `mode`: a new file, or (with `force`) replacing an
/// existing one, whose permissions are reset to `mode` before anything is written.
fn write_file(path: &Path, contents: &[u8], mode: u32, force: bool) -> Result<(), IdentityError> {
    let err = |source| IdentityError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut options = OpenOptions::new();
    options.write(true).mode(mode);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            IdentityError::AlreadyExists {
                path: path.to_path_buf(),
            }
        } else {
            err(e)
        }
    })?;
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(err)?;
    file.write_all(contents).map_err(err)?;
    file.sync_all().map_err(err)
}

/// Maps an rcgen error to [`IdentityError::Generate`] for `subject`.
fn generate(subject: &str) -> impl Fn(rcgen::Error) -> IdentityError + '_ {
    move |source| IdentityError::Generate {
        subject: subject.to_string(),
        source,
    }
}

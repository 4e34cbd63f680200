//! `meshd check --config`: the identity files. Are the trust anchors and the issuer
//! loadable and valid, how long before they expire, and does a trust anchor's private key
//! sit beside them (it must stay off the nodes)?

use std::time::{Duration, SystemTime};

use super::outcome::{fail, ok, warn, Outcome};

/// With a config file: are the trust anchors and the issuer loadable and valid, and when do
/// they expire?
pub fn identity_checks(path: &std::path::Path) -> Vec<Outcome> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            return vec![fail(
                "config",
                format!("{}: {e}", path.display()),
                "pass the agent's config file",
            )]
        }
    };
    let settings = match crate::sources::file::settings_from(path, &text) {
        Ok(s) => s,
        Err(e) => return vec![fail("config", e.to_string(), "fix the config file")],
    };
    let Some(id) = settings.identity else {
        return vec![ok(
            "identity",
            "not configured: captured traffic is passed through in plaintext",
        )];
    };
    let ttl = id.certificate_ttl;
    let files = id.issuer_files();
    let m = match crate::identity::CertManager::load(&files, ttl) {
        Ok(m) => m,
        Err(e) => {
            return vec![fail(
                "identity",
                e.to_string(),
                "meshd identity init --dir DIR, or fix the files",
            )]
        }
    };
    let now = SystemTime::now();
    let anchors = m.trust_anchors();
    let mut out: Vec<Outcome> = anchors
        .subjects()
        .iter()
        .zip(anchors.expiries())
        .map(|(s, t)| anchor_expiry(s, days_until(now, *t)))
        .collect();
    let (issuer, t) = m.issuer();
    out.push(issuer_expiry(&issuer, days_until(now, t), ttl));
    out.extend(
        crate::identity::anchor_keys_beside(&files, &anchors)
            .into_iter()
            .map(|k| {
                warn(
                    "trust anchor key",
                    format!(
                        "{} is the private key of trust anchor {}, beside the issuer files: whoever reads this node's files can make issuers of their own",
                        k.path.display(),
                        k.anchor
                    ),
                    "keep the trust anchor key off the nodes (offline, or in the tool that signs issuers)",
                )
            }),
    );
    out
}

/// An anchor closer to its expiry than this is warned about: replacing an anchor takes a
/// rollout of a two-anchor bundle to every node first.
pub(crate) const ANCHOR_WARN_DAYS: u64 = 90;
/// An issuer closer to its expiry than this fails the check (then every workload
/// certificate expires with it).
pub(crate) const ISSUER_FAIL_DAYS: u64 = 30;

/// Whole days from `now` to `t` (0 once past).
fn days_until(now: SystemTime, t: SystemTime) -> u64 {
    t.duration_since(now)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0)
}

fn anchor_expiry(subject: &str, days: u64) -> Outcome {
    if days < ANCHOR_WARN_DAYS {
        warn(
            "trust anchor",
            format!("{subject} expires in {days} days"),
            "add a new anchor to the bundle on every node, issue the issuer under it, then remove the old anchor",
        )
    } else {
        ok(
            "trust anchor",
            format!("{subject} valid for {days} more days"),
        )
    }
}

fn issuer_expiry(issuer: &str, days: u64, ttl: Duration) -> Outcome {
    if days < ISSUER_FAIL_DAYS {
        fail(
            "issuer",
            format!("{issuer} expires in {days} days"),
            "issue a new issuer certificate from the trust anchor",
        )
    } else {
        ok(
            "issuer",
            format!(
                "{issuer} valid for {days} more days; workload certificates live {}s",
                ttl.as_secs()
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::outcome::Verdict;

    fn line(o: &Outcome) -> (char, String) {
        match &o.verdict {
            Verdict::Ok(d) => ('√', d.clone()),
            Verdict::Warn { problem, .. } => ('!', problem.clone()),
            Verdict::Fail { problem, .. } => ('×', problem.clone()),
        }
    }

    #[test]
    fn expiry_thresholds() {
        assert_eq!(
            line(&anchor_expiry("CN=a", 3650)),
            ('√', "CN=a valid for 3650 more days".into())
        );
        assert_eq!(
            line(&anchor_expiry("CN=a", 89)),
            ('!', "CN=a expires in 89 days".into())
        );
        assert_eq!(
            line(&issuer_expiry("CN=i", 30, Duration::from_secs(60))).0,
            '√'
        );
        assert_eq!(
            line(&issuer_expiry("CN=i", 29, Duration::from_secs(60))),
            ('×', "CN=i expires in 29 days".into())
        );
        let now = SystemTime::now();
        assert_eq!(days_until(now, now - Duration::from_secs(10)), 0);
        assert_eq!(
            days_until(now, now + Duration::from_secs(86_400 * 2 + 5)),
            2
        );
    }
}

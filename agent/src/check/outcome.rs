//! What one check found ([`Outcome`]), and the three ways to say it.

pub struct Outcome {
    pub name: String,
    pub verdict: Verdict,
}

/// What a check found: fine; a problem that does not stop the agent (`!`, the checks
/// still pass); or one that does (`×`).
pub enum Verdict {
    Ok(String),
    Warn { problem: String, fix: String },
    Fail { problem: String, fix: String },
}

pub(super) fn ok(name: &str, detail: impl Into<String>) -> Outcome {
    Outcome {
        name: name.into(),
        verdict: Verdict::Ok(detail.into()),
    }
}

pub(super) fn warn(name: &str, problem: impl Into<String>, fix: impl Into<String>) -> Outcome {
    Outcome {
        name: name.into(),
        verdict: Verdict::Warn {
            problem: problem.into(),
            fix: fix.into(),
        },
    }
}

pub(super) fn fail(name: &str, problem: impl Into<String>, fix: impl Into<String>) -> Outcome {
    Outcome {
        name: name.into(),
        verdict: Verdict::Fail {
            problem: problem.into(),
            fix: fix.into(),
        },
    }
}

//! `cargo xtask bench --quick`, as a test: every mode that is available measured every
//! figure, direct and passthrough are available, mtls is either measured or unavailable with
//! a reason, and the JSON round-trips. No timing assertions.
//! Also: the congestion control asked for is the one the run used, and an unknown one is
//! refused before anything is built.

use meshd_tests::{
    bench::{self, Options, Report, MODES},
    require_root,
};

#[test]
fn quick_bench_measures_every_mode() {
    require_root().unwrap();
    let mut opts = Options::quick();
    opts.verbose = true;
    // A congestion control other than the machine's default, so that the one recorded can
    // only be the one set in the run's namespaces.
    let default = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control").unwrap();
    let chosen = if default.trim() == "reno" { "cubic" } else { "reno" };
    opts.congestion_control = Some(chosen.to_string());
    let report = bench::run(&opts).unwrap();
    let table = report.table();
    eprintln!("{table}");
    assert_eq!(report.settings.congestion_control, chosen, "{table}");
    assert!(table.contains(&format!(", TCP {chosen}")), "{table}");

    assert_eq!(
        report
            .modes
            .iter()
            .map(|m| m.mode.as_str())
            .collect::<Vec<_>>(),
        MODES,
        "{table}"
    );
    for m in &report.modes {
        match &m.unavailable {
            Some(why) => {
                assert!(
                    !["direct", "passthrough"].contains(&m.mode.as_str()),
                    "{} must be available: {why}\n{table}",
                    m.mode
                );
                assert!(!why.trim().is_empty(), "{}: no reason\n{table}", m.mode);
                assert!(m.figures.is_empty(), "{}: {:?}", m.mode, m.figures);
            }
            None => {
                for met in m.expected_metrics() {
                    let v = m.get(met.key);
                    assert!(
                        v.is_some_and(|v| v > 0.0 && v.is_finite()),
                        "{}: {} = {v:?}; notes: {:?}\n{table}",
                        m.mode,
                        met.key,
                        m.notes
                    );
                }
            }
        }
    }
    // Every held connection opened (quick mode holds few enough for any fd limit): a
    // proxy that stalls after some tunnels shows here, not only in the figures.
    for m in report.modes.iter().filter(|m| m.available()) {
        if let Some(opened) = m.get("conns_max_opened") {
            assert_eq!(
                opened, report.settings.conns_max as f64,
                "{}: held connections opened; notes: {:?}\n{table}",
                m.mode, m.notes
            );
        }
    }
    // Targets are reported for every mode, measured or not.
    assert!(!report.targets.is_empty());
    assert!(report
        .targets
        .iter()
        .all(|t| t.result == "PASS" || t.result == "MISS" || t.result.starts_with("n/a")));

    // The JSON round-trips (figures to within rounding of the decimal form).
    let json = report.to_json();
    let text = serde_json::to_string_pretty(&json).unwrap();
    let back = Report::from_json(&serde_json::from_str(&text).unwrap()).unwrap();
    assert_eq!(back.modes.len(), report.modes.len());
    for (a, b) in report.modes.iter().zip(&back.modes) {
        assert_eq!(a.mode, b.mode);
        assert_eq!(a.unavailable, b.unavailable);
        assert_eq!(a.notes, b.notes);
        assert_eq!(a.details, b.details);
        assert_eq!(
            a.figures.keys().collect::<Vec<_>>(),
            b.figures.keys().collect::<Vec<_>>()
        );
        for (k, x) in &a.figures {
            let y = b.figures[k];
            assert!((x - y).abs() <= 1e-9 * x.abs().max(1.0), "{k}: {x} vs {y}");
        }
    }
    assert_eq!(back.machine, report.machine);
    assert_eq!(back.settings, report.settings);
    assert_eq!(back.targets.len(), report.targets.len());
    assert_eq!(
        back.to_json(),
        Report::from_json(&back.to_json()).unwrap().to_json()
    );
    // And a run compares with itself: no figure changed.
    let cmp = bench::compare(&report, &back);
    assert!(cmp.contains("bulk TCP, 1 stream"), "{cmp}");
    assert!(!cmp.contains("better") && !cmp.contains("worse"), "{cmp}");
}

#[test]
fn unknown_congestion_control_is_refused_before_anything_is_built() {
    require_root().unwrap();
    let mut opts = Options::quick();
    opts.congestion_control = Some("no-such-algorithm".to_string());
    let err = format!("{:#}", bench::run(&opts).unwrap_err());
    assert!(
        err.contains("\"no-such-algorithm\" is not available on this machine (available: "),
        "{err}"
    );
    let available =
        std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_congestion_control").unwrap();
    assert!(err.contains(available.trim()), "{err}");
}

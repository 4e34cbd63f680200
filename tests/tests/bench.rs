//! `cargo xtask bench --quick`, as a test: every mode is available and measured every
//! figure it should, each positive; the table shows each mode's figures as the JSON has
//! them; every target is evaluated. No timing assertions.
//! Also: the congestion control asked for is the one the run used, and an unknown one is
//! refused before anything is built.

use meshd_tests::{
    bench::{self, fmt_value, Options, METRICS, MODES},
    require_root,
};

/// The quick bench: every mode of [`MODES`] (direct, relay, passthrough, mtls, mtls-http)
/// is available (an unavailable mode fails with its reason) and has a positive, finite
/// value for every figure it should measure; every held connection opened; the agents
/// stopped cleanly; the table lists each mode with the figures of the JSON report; every
/// target has a measured value and a result that follows from it. Runs with a congestion
/// control other than the machine's, which the report and the table must name.
/// Takes about 60 s and loads both CPUs.
#[test]
fn quick_bench_measures_every_mode() {
    require_root().unwrap();
    let mut opts = Options::quick();
    opts.verbose = true;
    // A congestion control other than the machine's default, so that the one recorded can
    // only be the one set in the run's namespaces.
    let default = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control").unwrap();
    let chosen = if default.trim() == "reno" {
        "cubic"
    } else {
        "reno"
    };
    opts.congestion_control = Some(chosen.to_string());
    let report = bench::run(&opts).unwrap();
    let table = report.table();
    eprintln!("{table}");
    assert_eq!(report.settings.congestion_control, chosen, "{table}");
    assert!(table.contains(&format!(", TCP {chosen}")), "{table}");

    let modes: Vec<&str> = report.modes.iter().map(|m| m.mode.as_str()).collect();
    assert_eq!(modes, MODES, "{table}");
    for m in &report.modes {
        if let Some(why) = &m.unavailable {
            panic!("mode {} is unavailable: {why}\n{table}", m.mode);
        }
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
        // An agent that died or did not stop cleanly on SIGTERM is noted by the bench.
        let agent_notes: Vec<&String> = m
            .notes
            .iter()
            .filter(|n| n.contains("the agent on"))
            .collect();
        assert!(agent_notes.is_empty(), "{}: {agent_notes:?}", m.mode);
    }
    // Every held connection opened (quick mode holds few enough for any fd limit): a
    // proxy that stalls after some tunnels shows here, not only in the figures. The
    // figure is among the expected ones of every agent mode, so it exists (checked above).
    for m in report.modes.iter().filter(|m| {
        m.expected_metrics()
            .iter()
            .any(|e| e.key == "conns_max_opened")
    }) {
        assert_eq!(
            m.get("conns_max_opened"),
            Some(report.settings.conns_max as f64),
            "{}: held connections opened; notes: {:?}\n{table}",
            m.mode,
            m.notes
        );
    }

    // The table shows, per measurement, each mode's figure from the JSON report in that
    // mode's column (cells are right-aligned under the mode names of the header).
    let json = report.to_json();
    let header = table
        .lines()
        .find(|l| l.starts_with("measurement"))
        .unwrap_or_else(|| panic!("no header line\n{table}"));
    assert_eq!(
        header.split_whitespace().skip(1).collect::<Vec<_>>(),
        MODES,
        "{table}"
    );
    let mut column_ends = Vec::new();
    let mut from = 0;
    for mode in MODES {
        let at = from + header[from..].find(mode).unwrap();
        column_ends.push(at + mode.len());
        from = at + mode.len();
    }
    for met in METRICS {
        let label = format!("{} ({})", report.label(met), met.unit);
        let row = table
            .lines()
            .find(|l| l.starts_with(&label))
            .unwrap_or_else(|| panic!("no row {label:?}\n{table}"));
        let mut start = label.len();
        for (i, m) in report.modes.iter().enumerate() {
            let jm = &json["modes"][i];
            assert_eq!(jm["mode"], m.mode.as_str());
            assert_eq!(jm["available"], true, "{jm}");
            let want = if m.expected_metrics().iter().any(|e| e.key == met.key) {
                let v = jm["figures"][met.key]
                    .as_f64()
                    .unwrap_or_else(|| panic!("{}: no {} in the JSON: {jm}", m.mode, met.key));
                assert_eq!(Some(v), m.get(met.key), "{}: {}", m.mode, met.key);
                fmt_value(v)
            } else {
                assert!(jm["figures"].get(met.key).is_none(), "{jm}");
                "n/a".to_string()
            };
            let cell = row.get(start..column_ends[i]).unwrap_or_else(|| {
                panic!("row {label:?} does not reach {}'s column\n{table}", m.mode)
            });
            // The figure, then for modes other than direct its ratio in parentheses.
            let shown = cell.trim().split(" (").next().unwrap_or_default();
            assert_eq!(
                shown, want,
                "row {label:?}, {}: the table shows {cell:?}, the JSON {want}\n{table}",
                m.mode
            );
            start = column_ends[i];
        }
        assert_eq!(row.len(), start, "row {label:?} has more columns\n{table}");
    }

    // Every mode measured, so every target is evaluated (none "n/a"), its result follows
    // from its value and limit, and the table lists it.
    assert!(!report.targets.is_empty());
    for t in &report.targets {
        let v = t
            .value
            .unwrap_or_else(|| panic!("target {:?} not evaluated: {}\n{table}", t.name, t.result));
        let pass = if t.at_least {
            v >= t.limit
        } else {
            v <= t.limit
        };
        assert_eq!(
            t.result,
            if pass { "PASS" } else { "MISS" },
            "{}: {v}",
            t.name
        );
        assert!(
            table
                .lines()
                .any(|l| l.trim_start().starts_with(&t.result) && l.ends_with(&t.name)),
            "target {:?} not in the table\n{table}",
            t.name
        );
    }
}

/// An unknown congestion control is refused, naming the ones available, before anything
/// is built: no cluster was started (so no namespace, cgroup, pin or process), and no
/// cluster of this process is on the machine.
#[test]
fn unknown_congestion_control_is_refused_before_anything_is_built() {
    require_root().unwrap();
    let started = bench::clusters_started_on_this_thread();
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
    assert_eq!(
        bench::clusters_started_on_this_thread(),
        started,
        "the refused run started building a cluster"
    );
    // And nothing of a cluster of this process is on the machine.
    assert_eq!(
        meshd_tests::clusters_of_process(std::process::id()),
        Vec::<String>::new()
    );
}

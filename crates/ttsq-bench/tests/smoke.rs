//! The benchmark in smoke mode (tiny sizes) against the local services, so
//! that the driver cannot rot: every scenario runs, every check passes and
//! the figures are sane. Targets that only mean something at full size
//! (scenario 10's fairness, scenario 12's speed-up) are noted, not
//! enforced, in smoke mode. The full
//! benchmark never runs in tests.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// The `ttsq` binary of the same profile, built when it is missing (it is
/// another package's binary, so Cargo does not build it for this test).
fn ttsq_binary() -> PathBuf {
    let bench = Path::new(env!("CARGO_BIN_EXE_ttsq-bench"));
    let dir = bench.parent().expect("the bench binary has a directory");
    let ttsq = dir.join("ttsq");
    if !ttsq.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let mut build = Command::new(cargo);
        build.args(["build", "-p", "ttsq", "--bin", "ttsq"]);
        if dir.file_name().is_some_and(|name| name == "release") {
            build.arg("--release");
        }
        let status = build.status().expect("cargo runs");
        assert!(status.success(), "building ttsq failed");
    }
    ttsq
}

/// The numbers in the cells of the table row starting with `| {label}`.
fn row<'a>(stdout: &'a str, label: &str) -> Vec<&'a str> {
    let line = stdout
        .lines()
        .find(|l| l.starts_with(&format!("| {label}")))
        .unwrap_or_else(|| panic!("no row `{label}` in:\n{stdout}"));
    line.split('|')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect()
}

fn number(cell: &str) -> f64 {
    cell.trim_matches('*')
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .replace(',', "")
        .parse()
        .unwrap_or_else(|_| panic!("`{cell}` is not a number"))
}

#[test]
fn smoke_mode_runs_every_scenario_and_its_figures_are_sane() {
    let output = Command::new(env!("CARGO_BIN_EXE_ttsq-bench"))
        .arg("--smoke")
        .arg("--ttsq-bin")
        .arg(ttsq_binary())
        .output()
        .expect("ttsq-bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "ttsq-bench --smoke failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );

    for title in [
        "### Baselines",
        "### 1. Throughput",
        "### 2. Batch submit",
        "### 3. Single submit latency",
        "### 4. High priority",
        "### 5. Quota",
        "### 6. Dedupe",
        "### 7. Memory",
        "### 8. Scaling",
        "### 9. Dedupe across replicas",
        "### 10. Fair share, zero-latency fake",
        "### 10. Fair share, fake quota",
        "### 11. Time to first byte",
        "### 12. Long job",
        "### 13. Open-loop submits",
        "### 1. Throughput: CPU per process",
        "### 1. Throughput: Postgres per job",
        "### 3. Single submit latency: CPU per process",
        "### 4. High priority, cache miss: CPU per process",
        "### 4. High priority, cache hit: Postgres per job",
        "### 7. Memory, the drain: CPU per process",
        "### 13. Open-loop submits at 20/s: CPU per process",
        "### 13. Open-loop submits at 40/s: Postgres per job",
    ] {
        assert!(stdout.contains(title), "no table `{title}`:\n{stdout}");
    }
    assert!(!stdout.contains("check: FAILED"), "{stdout}");
    // 1 + 1 + 1 + 1 + 3 + 1 + 1 + 3 + 1 + 2 + 1 + 4 + 2 checks.
    assert_eq!(stdout.matches("check: ok").count(), 22, "{stdout}");
    // Scenario 10's three targets per mode and scenario 12's speed-up per
    // worker count are notes in smoke mode.
    assert_eq!(
        stdout.matches("check (not enforced in smoke): ").count(),
        8,
        "{stdout}"
    );
    // The batch endpoint ran.
    assert!(stdout.contains("**accepted/s**"), "{stdout}");

    // Baselines measured something.
    for label in [
        "RabbitMQ publish",
        "RabbitMQ consume",
        "S3 PutObject",
        "Postgres INSERT … UNNEST",
    ] {
        let cells = row(&stdout, label);
        assert!(number(cells[3]) > 0.0, "{label}: {cells:?}");
    }
    // Scenario 1: all 200 jobs succeeded, once each at the provider, at a
    // positive rate.
    assert_eq!(number(row(&stdout, "succeeded")[1]), 200.0);
    assert_eq!(number(row(&stdout, "provider calls")[1]), 200.0);
    assert!(number(row(&stdout, "**jobs/s end to end**")[1]) > 0.0);
    // Scenario 3: percentiles ordered.
    let latency = row(&stdout, "200 |");
    assert!(number(latency[2]) <= number(latency[3]), "{latency:?}");
    // Scenario 6: one provider call per distinct text.
    assert_eq!(number(row(&stdout, "**provider calls**")[1]), 10.0);
    // Scenario 7: both processes were measured and stayed plausible.
    for label in ["api, submitting", "worker, draining"] {
        let peak = number(row(&stdout, label)[6]);
        assert!(peak > 1.0 && peak < 1024.0, "{label}: {peak} MiB");
    }
    // Scenario 9: one provider call and one bill per distinct text across
    // four worker processes.
    assert_eq!(
        number(row(&stdout, "**provider calls, 4 workers**")[1]),
        20.0
    );
    assert_eq!(
        number(row(&stdout, "billed ledger rows (cache_hit = false)")[1]),
        20.0
    );
    // Scenario 10: B's tasks were timed in both runs, A drained at a
    // positive rate in both.
    for label in [
        "B single jobs p50",
        "**B single jobs p99",
        "B batch items p99",
    ] {
        let cells = row(&stdout, label);
        assert!(
            number(cells[1]) > 0.0 && number(cells[2]) > 0.0,
            "{label}: {cells:?}"
        );
    }
    let drain = row(&stdout, "**A jobs/s");
    assert!(
        number(drain[1]) > 0.0 && number(drain[2]) > 0.0,
        "{drain:?}"
    );
    // Scenario 12: the long job took several chunks, one call each, with 1
    // and 4 workers; its edited re-run one call. (Other tables have rows
    // `| 1 |` too: look in scenario 12's only.)
    let long_job = &stdout[stdout.find("### 12. Long job").unwrap_or_default()..];
    for workers in ["1", "4"] {
        let cells = row(long_job, &format!("{workers} |"));
        assert!(number(cells[1]) > 1.0, "{cells:?}");
        assert_eq!(number(cells[1]), number(cells[2]), "{cells:?}");
        assert!(
            number(cells[3]) > 0.0 && number(cells[4]) > 0.0,
            "{cells:?}"
        );
        let edit = row(long_job, &format!("{workers}, one paragraph edited"));
        assert_eq!(number(edit[2]), 1.0, "{edit:?}");
    }
    // Scenario 13: both smoke rates answered, percentiles ordered, nothing
    // lost; the target is reported either way.
    let open_loop = &stdout[stdout.find("### 13. Open-loop submits").unwrap_or_default()..];
    for rate in ["20", "40"] {
        let cells = row(open_loop, &format!("{rate} |"));
        assert!(number(cells[1]) > 0.0, "{cells:?}");
        assert!(number(cells[2]) <= number(cells[4]), "{cells:?}");
        assert!(number(cells[4]) <= number(cells[5]), "{cells:?}");
        assert_eq!(number(cells[6]), 0.0, "{cells:?}");
    }
    assert!(
        open_loop.contains("Target: p99 ≤ 20 ms at 1,000/s"),
        "{open_loop}"
    );
    // Cost per job: the stack's own processes are always local, so their
    // CPU is measured (never n/a) and the scenario's jobs cost some.
    let throughput_cpu = &stdout[stdout
        .find("### 1. Throughput: CPU per process")
        .unwrap_or_default()..];
    for label in ["api |", "worker(s) |", "driver"] {
        let cells = row(throughput_cpu, label);
        assert!(number(cells[2]) > 0.0, "{label}: {cells:?}");
    }
    let throughput_pg = &stdout[stdout
        .find("### 1. Throughput: Postgres per job")
        .unwrap_or_default()..];
    let transactions = row(throughput_pg, "transactions");
    assert!(number(transactions[1]) > 0.0, "{transactions:?}");
    assert!(stderr.contains("checks: 22 passed, 0 failed"), "{stderr}");
}

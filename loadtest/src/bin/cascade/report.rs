//! The drill's table (one line per phase) and its requirements, each
//! printed with what was measured and whether it was met.

use std::time::Duration;

use super::phases::{Kind, PhaseResult, Rec};
use super::Cli;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// What one phase measured, for the table and the checks.
struct Measured {
    fast_p50: Duration,
    fast_p99: Duration,
    fast_errors: usize,
    fast: usize,
    slow: usize,
    by_kind: [usize; 8],
    slow_under_50ms: f64,
    slow_ok_p50: Duration,
    sockets_max: u32,
    in_flight_max: u32,
    per_request: f64,
    opened_after: Option<Duration>,
    fast_503_after_open: Option<f64>,
    full_service_after: Option<Duration>,
}

const KINDS: [Kind; 8] = [
    Kind::Ok,
    Kind::App,
    Kind::Shed,
    Kind::BreakerOpen,
    Kind::RetryBudget,
    Kind::Timeout,
    Kind::Gateway,
    Kind::NoAnswer,
];

fn measure(r: &PhaseResult, length: Duration) -> Measured {
    let (slow, fast): (Vec<&Rec>, Vec<&Rec>) = r.recs.iter().partition(|x| x.slow);
    let mut fast_lat: Vec<Duration> = fast.iter().map(|x| x.latency).collect();
    fast_lat.sort();
    let mut ok_lat: Vec<Duration> = slow
        .iter()
        .filter(|x| x.kind == Kind::Ok)
        .map(|x| x.latency)
        .collect();
    ok_lat.sort();
    let mut by_kind = [0usize; 8];
    for x in &slow {
        if let Some(i) = KINDS.iter().position(|k| *k == x.kind) {
            by_kind[i] += 1;
        }
    }
    let under = slow
        .iter()
        .filter(|x| x.latency < Duration::from_millis(50))
        .count();
    // The breaker opened: the first reading with more openings than the
    // phase began with (or open at its start: the sample at 0 shows it).
    let opened_after = r
        .samples
        .iter()
        .find(|s| s.openings > r.openings_before)
        .map(|s| s.at);
    let fast_503_after_open = opened_after.map(|at| {
        let after: Vec<&&Rec> = slow.iter().filter(|x| x.sent >= at).collect();
        let quick = after
            .iter()
            .filter(|x| {
                matches!(x.kind, Kind::Shed | Kind::BreakerOpen | Kind::RetryBudget)
                    && x.latency < Duration::from_millis(50)
            })
            .count();
        quick as f64 / after.len().max(1) as f64
    });
    // Full service: from the first request after the last one not served,
    // of those answered within the phase (one still waiting when the next
    // phase changed the app is that phase's).
    let mut by_sent: Vec<&&Rec> = slow
        .iter()
        .filter(|x| x.sent + x.latency <= length)
        .collect();
    by_sent.sort_by_key(|x| x.sent);
    let full_service_after = match by_sent.iter().rposition(|x| x.kind != Kind::Ok) {
        None => Some(Duration::ZERO),
        Some(i) if i + 1 < by_sent.len() => Some(by_sent[i + 1].sent),
        Some(_) => None,
    };
    Measured {
        fast_p50: percentile(&fast_lat, 0.50),
        fast_p99: percentile(&fast_lat, 0.99),
        fast_errors: fast.iter().filter(|x| x.kind != Kind::Ok).count(),
        fast: fast.len(),
        slow: slow.len(),
        by_kind,
        slow_under_50ms: under as f64 / slow.len().max(1) as f64,
        slow_ok_p50: percentile(&ok_lat, 0.50),
        sockets_max: r.samples.iter().map(|s| s.sockets).max().unwrap_or(0),
        in_flight_max: r.samples.iter().map(|s| s.in_flight).max().unwrap_or(0),
        per_request: r.received as f64 / slow.len().max(1) as f64,
        opened_after,
        fast_503_after_open,
        full_service_after,
    }
}

fn secs(d: Option<Duration>) -> String {
    d.map_or("—".into(), |d| format!("{:.1} s", d.as_secs_f64()))
}

/// Print the table and the checks; the number of requirements not met.
pub fn print(cli: &Cli, cap: u32, results: &[PhaseResult]) -> usize {
    let length = Duration::from_secs(cli.phase_secs);
    let m: Vec<Measured> = results.iter().map(|r| measure(r, length)).collect();
    println!();
    println!("| slow app is | fast p50 / p99 | fast errors | slow: 200 / app 5xx / shed / breaker-open / retry-budget / 504 / other / no answer | slow answered < 50 ms | slow 200 p50 | sockets gateway→slow (max) | slow in flight (max) | requests the slow app received per client request | breaker opened after | full service after |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (r, x) in results.iter().zip(&m) {
        let kinds: Vec<String> = x.by_kind.iter().map(|n| n.to_string()).collect();
        println!(
            "| {} ({} req/s) | {:.1} / {:.1} ms | {} of {} | {} | {:.0} % | {:.0} ms | {} | {} | {:.2} | {} | {} |",
            r.phase.name,
            r.slow_rate,
            ms(x.fast_p50),
            ms(x.fast_p99),
            x.fast_errors,
            x.fast,
            kinds.join(" / "),
            x.slow_under_50ms * 100.0,
            ms(x.slow_ok_p50),
            x.sockets_max,
            x.in_flight_max,
            x.per_request,
            secs(x.opened_after),
            if r.phase.healing { secs(x.full_service_after) } else { "".into() },
        );
    }
    println!();
    let healthy_p99 = m[0].fast_p99;
    let p99_bound = healthy_p99.mul_f64(1.2) + Duration::from_millis(2);
    let mut checks: Vec<(String, bool)> = Vec::new();
    // Sockets are read from /proc: a reading of none while the app is
    // healthy and busy means they could not be, not that there were none.
    checks.push((
        format!(
            "the gateway's sockets to the slow app can be counted (healthy: {})",
            m[0].sockets_max
        ),
        m[0].sockets_max > 0,
    ));
    for (r, x) in results.iter().zip(&m) {
        let name = r.phase.name;
        checks.push((
            format!(
                "{name}: fast app p99 {:.1} ms ≤ {:.1} ms (healthy p99 × 1.2 + 2 ms)",
                ms(x.fast_p99),
                ms(p99_bound)
            ),
            x.fast_p99 <= p99_bound,
        ));
        checks.push((
            format!(
                "{name}: sockets to the slow app {} ≤ its cap {cap}",
                x.sockets_max
            ),
            x.sockets_max <= cap,
        ));
        checks.push((
            format!(
                "{name}: the slow app received {:.2} requests per client request ≤ 1.2",
                x.per_request
            ),
            x.per_request <= 1.2,
        ));
        if r.phase.hanging {
            checks.push((
                format!(
                    "{name}: breaker open {} after onset ≤ 3 s",
                    secs(x.opened_after)
                ),
                x.opened_after.is_some_and(|d| d <= Duration::from_secs(3)),
            ));
            checks.push((
                format!(
                    "{name}: {:.1} % of requests after the breaker opened answered 503 in < 50 ms ≥ 90 %",
                    x.fast_503_after_open.unwrap_or(0.0) * 100.0
                ),
                x.fast_503_after_open.is_some_and(|s| s >= 0.9),
            ));
            checks.push((
                format!(
                    "{name}: the hanging app received {:.1} % of the {} requests sent to it ≤ 10 %",
                    x.per_request * 100.0,
                    x.slow
                ),
                x.per_request <= 0.1,
            ));
        }
        if r.phase.healing {
            checks.push((
                format!(
                    "{name}: full service {} after healing ≤ 10 s",
                    secs(x.full_service_after)
                ),
                x.full_service_after
                    .is_some_and(|d| d <= Duration::from_secs(10)),
            ));
        }
        if r.phase.spike {
            checks.push((
                format!(
                    "{name} under `ulimit -n {}`: the fast app answered {} of {} with 200",
                    cli.nofile,
                    x.fast - x.fast_errors,
                    x.fast
                ),
                x.fast_errors == 0 && x.fast > 0,
            ));
        }
    }
    let mut failed = 0;
    for (text, ok) in &checks {
        println!("{} {text}", if *ok { "PASS" } else { "FAIL" });
        failed += usize::from(!ok);
    }
    failed
}

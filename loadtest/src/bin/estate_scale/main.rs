//! `estate-scale`: how compiling, starting and reloading grow with the
//! estate. Generates estates of N apps (each with a contract of its own)
//! and optionally a file of many consumers, then for each: `policy lint`
//! (time, peak memory), `serve` until ready (time, steady and peak
//! memory), a one-line edit of one app until the new version is live (the
//! median of five), the memory after it, and the p99 of a steady load
//! before and while every app compiles again (an edit of the document all
//! contracts refer to). Prints a Markdown table and the growth between the
//! smallest and the largest estate, so a step worse than linear shows at
//! once. Loopback only; `loadtest/scale.sh` builds and runs it.

mod estate;
mod load;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;

/// Estate-scale benchmark.
#[derive(Parser, Debug)]
#[command(name = "estate-scale", version, about)]
struct Cli {
    /// The gatehouse binary.
    #[arg(long, default_value = "target/release/gatehouse")]
    gatehouse: PathBuf,
    /// The example bundle the estates are made from.
    #[arg(long, default_value = "policies")]
    policies: PathBuf,
    /// Estate sizes (generated apps, each with its own contract).
    #[arg(long, value_delimiter = ',', default_value = "100,300,1000")]
    apps: Vec<usize>,
    /// Consumers of the extra consumer row (0: none).
    #[arg(long, default_value_t = 1_000_000)]
    consumers: usize,
    /// Where the estates are written.
    #[arg(long, default_value = "target/estate-scale")]
    work: PathBuf,
    /// Requests per second of the steady load.
    #[arg(long, default_value_t = 2_000)]
    rate: u64,
    /// Connections of the steady load.
    #[arg(long, default_value_t = 8)]
    connections: usize,
}

/// A child process, killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Resident and peak memory of a live process, MiB.
fn memory(pid: u32) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Run `gatehouse policy lint DIR`: its time and peak memory (MiB, read
/// every few milliseconds while it runs).
fn lint(cli: &Cli, dir: &Path) -> anyhow::Result<(Duration, f64)> {
    let started = Instant::now();
    let mut child = Command::new(&cli.gatehouse)
        .args(["policy", "lint"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting gatehouse policy lint")?;
    let mut peak: f64 = 0.0;
    loop {
        if let Some((_, hwm)) = memory(child.id()) {
            peak = peak.max(hwm);
        }
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                bail!("policy lint failed on {}", dir.display());
            }
            return Ok((started.elapsed(), peak));
        }
        std::thread::sleep(Duration::from_millis(3));
    }
}

/// A free loopback port.
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// One estate's figures.
struct Row {
    label: String,
    lint: Duration,
    lint_peak: f64,
    ready: Duration,
    rss: f64,
    peak: f64,
    reload: Duration,
    rss_after: f64,
    full: Option<FullReload>,
}

/// A reload in which every app compiles again, under steady load.
struct FullReload {
    took: Duration,
    p99_before: f64,
    p99_during: f64,
}

/// Wait until the active version is not `from`: how long it took.
fn until_new_version(admin: &str, from: &str, within: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    while started.elapsed() < within {
        if load::version(admin).is_some_and(|v| v != from) {
            return Ok(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    bail!("no new version within {within:?}")
}

fn measure(cli: &Cli, dir: &Path, label: &str, full_reload: bool) -> anyhow::Result<Row> {
    let (lint_time, lint_peak) = lint(cli, dir)?;
    let (port, admin_port) = (free_port()?, free_port()?);
    let (target, admin) = (
        format!("127.0.0.1:{port}"),
        format!("127.0.0.1:{admin_port}"),
    );
    let run_dir = dir.with_extension("run");
    let _ = std::fs::remove_dir_all(&run_dir);
    let started = Instant::now();
    let gw = Proc(
        Command::new(&cli.gatehouse)
            .arg("serve")
            .arg("--policies")
            .arg(dir)
            .args(["--listen", &target, "--admin-listen", &admin, "--run-dir"])
            .arg(&run_dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting gatehouse serve")?,
    );
    let pid = gw.0.id();
    while load::get(&admin, "/readyz").is_none_or(|(s, _)| s != 200) {
        if started.elapsed() > Duration::from_secs(120) {
            bail!("not ready within two minutes");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let ready = started.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let (rss, _) = memory(pid).context("the gateway's memory")?;
    // One line of one app, five times: the median.
    let mut reloads = Vec::new();
    for n in 1..=5 {
        let from = load::version(&admin).context("the active version")?;
        estate::edit_app(dir, n)?;
        reloads.push(until_new_version(&admin, &from, Duration::from_secs(60))?);
        std::thread::sleep(Duration::from_millis(200));
    }
    reloads.sort();
    let (rss_after, _) = memory(pid).context("the gateway's memory")?;
    let full = if full_reload {
        // Three seconds of steady load, then the shared document changes
        // and every app compiles again while the load goes on.
        let host = "orders-0000.corp.example".to_string();
        let (t, rate, conns) = (target.clone(), cli.rate, cli.connections);
        let length = Duration::from_secs(8);
        let loader = std::thread::spawn(move || load::steady(&t, &host, rate, conns, length));
        std::thread::sleep(Duration::from_secs(3));
        let from = load::version(&admin).context("the active version")?;
        let edit_at = Duration::from_secs(3);
        estate::edit_shared(dir, 1)?;
        let took = until_new_version(&admin, &from, Duration::from_secs(120))?;
        let samples = loader
            .join()
            .map_err(|_| anyhow::anyhow!("the load panicked"))?;
        let (p99_before, _) = load::p99(&samples, Duration::ZERO, edit_at);
        let (p99_during, n) = load::p99(
            &samples,
            edit_at,
            edit_at + took.max(Duration::from_millis(100)),
        );
        anyhow::ensure!(n > 0, "no requests while the bundle compiled");
        Some(FullReload {
            took,
            p99_before,
            p99_during,
        })
    } else {
        None
    };
    let (_, peak) = memory(pid).context("the gateway's memory")?;
    drop(gw);
    Ok(Row {
        label: label.to_string(),
        lint: lint_time,
        lint_peak,
        ready,
        rss,
        peak,
        reload: reloads[reloads.len() / 2],
        rss_after,
        full,
    })
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    std::fs::create_dir_all(&cli.work)?;
    let mut rows = Vec::new();
    for &n in &cli.apps {
        let dir = cli.work.join(format!("apps-{n}"));
        eprintln!("{n} apps: generating {}", dir.display());
        estate::generate(&cli.policies, &dir, n, 0)?;
        rows.push(measure(&cli, &dir, &format!("{n} apps"), true)?);
    }
    if cli.consumers > 0 {
        let n = cli.consumers;
        let dir = cli.work.join(format!("consumers-{n}"));
        eprintln!("{n} consumers: generating {}", dir.display());
        estate::generate(&cli.policies, &dir, 1, n)?;
        rows.push(measure(
            &cli,
            &dir,
            &format!("1 app, {n} consumers (JSON)"),
            false,
        )?);
    }
    println!("| estate | `policy lint` | lint peak | `serve` ready | RSS ready | one-line edit → live (median of 5) | RSS after | every app recompiled → live | p99 before / while it compiles | peak RSS |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        let (full, p99) = match &r.full {
            Some(f) => (
                secs(f.took),
                format!("{:.2} / {:.2} ms", f.p99_before, f.p99_during),
            ),
            None => ("—".into(), "—".into()),
        };
        println!(
            "| {} | {} | {:.0} MiB | {} | {:.0} MiB | {} | {:.0} MiB | {full} | {p99} | {:.0} MiB |",
            r.label,
            secs(r.lint),
            r.lint_peak,
            secs(r.ready),
            r.rss,
            ms(r.reload),
            r.rss_after,
            r.peak
        );
    }
    let apps: Vec<&Row> = rows.iter().filter(|r| r.full.is_some()).collect();
    if let (Some(first), Some(last)) = (apps.first(), apps.last()) {
        if apps.len() > 1 {
            let (a, b) = (cli.apps[0] as f64, cli.apps[apps.len() - 1] as f64);
            println!(
                "\ngrowth from {} to {} ({:.0}× the apps): lint {:.1}×, ready {:.1}×, lint peak {:.1}×, one-line reload {:.1}×",
                first.label,
                last.label,
                b / a,
                last.lint.as_secs_f64() / first.lint.as_secs_f64(),
                last.ready.as_secs_f64() / first.ready.as_secs_f64(),
                last.lint_peak / first.lint_peak,
                last.reload.as_secs_f64() / first.reload.as_secs_f64(),
            );
        }
    }
    Ok(())
}

//! `cascade`: the failure-isolation drill. Two passthrough apps, `fast`
//! and `slow`, two lowcode-sim instances each, behind a Gatehouse with the
//! default fences (no `resilience` written) and a low descriptor limit.
//! Open-loop load on both apps while `slow` goes through the phases an
//! overloaded low-code app goes through: healthy, slow, healed, hanging,
//! healed, failing, and a spike while it hangs. One line per phase, then
//! each requirement checked; the exit status is 1 when one fails.
//!
//! Loopback only; the gateway and the simulators are this drill's own
//! children, stopped when it ends. `loadtest/drills/cascade.sh` builds the
//! release binaries and runs it.

mod client;
mod phases;
mod report;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;

/// The failure-isolation drill.
#[derive(Parser, Debug)]
#[command(name = "cascade", version, about)]
pub struct Cli {
    /// The gatehouse binary.
    #[arg(long, default_value = "target/release/gatehouse")]
    gatehouse: PathBuf,
    /// The lowcode-sim binary.
    #[arg(long, default_value = "target/release/lowcode-sim")]
    sim: PathBuf,
    /// Length of each phase, in seconds.
    #[arg(long, default_value_t = 30)]
    phase_secs: u64,
    /// Requests per second to each app.
    #[arg(long, default_value_t = 300)]
    rate: u64,
    /// Requests per second to the hanging app in the spike.
    #[arg(long, default_value_t = 1200)]
    spike_rate: u64,
    /// The gateway's descriptor limit (`ulimit -n`).
    #[arg(long, default_value_t = 2048)]
    nofile: u64,
    /// The gateway's proxy threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
}

/// A child process, killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start a lowcode-sim with two `orders` instances; their addresses.
fn start_sim(bin: &Path) -> anyhow::Result<(Proc, Vec<String>)> {
    use std::io::BufRead;
    let mut child = Command::new(bin)
        .args(["--app", "orders=127.0.0.1:0", "--app", "orders=127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let out = child.stdout.take().context("sim stdout")?;
    let proc = Proc(child);
    let mut addrs = Vec::new();
    for line in std::io::BufReader::new(out).lines() {
        let line = line?;
        if let Some(addr) = line.split("addr=").nth(1) {
            addrs.push(addr.trim().to_string());
        }
        if line.trim() == "ready" {
            return Ok((proc, addrs));
        }
    }
    bail!("lowcode-sim ended before it was ready")
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The bundle: two passthrough apps with the timeouts and
/// retries, and nothing about fences (the defaults are what is drilled).
fn policy(fast: &[String], slow: &[String]) -> String {
    let app = |name: &str, addrs: &[String]| {
        let instances: Vec<String> = addrs.iter().map(|a| format!("\"http://{a}\"")).collect();
        format!(
            "  - name: {name}\n    owner: drill@corp.example\n    hosts: [{name}.test]\n    passthrough: true\n    upstream: {{ instances: [{}] }}\n    timeouts: {{ connect: 1s, read: 5s, total: 10s }}\n    retries: 2\n",
            instances.join(", ")
        )
    };
    format!(
        "version: 1\napps:\n{}{}",
        app("fast", fast),
        app("slow", slow)
    )
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let dir = std::env::temp_dir().join(format!("gatehouse-cascade-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("policies"))?;
    let (_fast_sim, fast) = start_sim(&cli.sim)?;
    let (_slow_sim, slow) = start_sim(&cli.sim)?;
    std::fs::write(dir.join("policies/apps.yaml"), policy(&fast, &slow))?;
    let (proxy, admin) = (free_port()?, free_port()?);
    let log = dir.join("gatehouse.log");
    let mut serve = format!(
        "ulimit -n {} && exec \"$0\" serve --policies {} --listen 127.0.0.1:{proxy} --admin-listen 127.0.0.1:{admin} --run-dir {} --no-watch",
        cli.nofile,
        dir.join("policies").display(),
        dir.join("run").display(),
    );
    if let Some(t) = cli.threads {
        serve.push_str(&format!(" --threads {t}"));
    }
    let gateway = Proc(
        Command::new("sh")
            .args(["-c", &serve])
            .arg(&cli.gatehouse)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("starting {}", cli.gatehouse.display()))?,
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let target = phases::Target {
        // `sh` execs the gateway: the same process.
        pid: gateway.0.id(),
        proxy: format!("127.0.0.1:{proxy}"),
        admin: format!("127.0.0.1:{admin}"),
        slow: slow.clone(),
    };
    runtime.block_on(async {
        let started = Instant::now();
        while client::get_text(&target.admin, "/readyz").await.map(|(s, _)| s) != Some(200) {
            if started.elapsed() > Duration::from_secs(20) {
                bail!("the gateway did not get ready; its log: {}", log.display());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!(
            "cascade drill: fast and slow apps at {} requests/s each, {} s per phase, gateway under `ulimit -n {}`, default fences",
            cli.rate, cli.phase_secs, cli.nofile
        );
        let cap = phases::slow_cap(&target.admin).await;
        println!("the slow app's concurrency cap, as the gateway set it: {cap}");
        let results = phases::run(&cli, &target).await?;
        let failed = report::print(&cli, cap, &results);
        println!("gateway log: {}", log.display());
        if failed > 0 {
            bail!("{failed} requirement(s) not met");
        }
        Ok(())
    })
}

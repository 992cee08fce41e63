//! Fixtures for Gatehouse's end-to-end tests: real `gatehouse` and
//! `lowcode-sim` processes on loopback ports, real HTTP.
//!
//! Binaries are taken from the same target directory as the test binary, so
//! run `cargo build --workspace --bins` first (the README's test command
//! does).

pub mod drill;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Path of a workspace binary next to the running test.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` before the tests",
        path.display()
    );
    path
}

/// The engine the suite's gateways carry plain HTTP/1.1 with, unless a
/// test names one: `GATEHOUSE_E2E_ENGINE` (`lean`, the default, or
/// `pingora`). The test command runs the request-path suites once with
/// each, so both engines are held to the same tests.
pub fn engine() -> String {
    match std::env::var("GATEHOUSE_E2E_ENGINE") {
        Ok(e) if e == "pingora" => e,
        Ok(e) if e == "lean" || e.is_empty() => "lean".into(),
        Ok(other) => panic!("GATEHOUSE_E2E_ENGINE={other}: expected lean or pingora"),
        Err(_) => "lean".into(),
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    // A port is released before its process binds it: two tests handed
    // the same port would race for it, and the loser's requests (and its
    // readiness check) would reach the winner. So no port is handed out
    // twice in this process.
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("bind port 0");
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// A running `lowcode-sim` process.
pub struct Sim {
    child: Child,
    /// Listener addresses in the order given.
    pub addrs: Vec<SocketAddr>,
}

impl Sim {
    /// Start `lowcode-sim` with `--app KIND=ADDR` for each `(kind, addr)`.
    pub fn start(apps: &[(&str, &str)], extra: &[&str]) -> Sim {
        let mut cmd = Command::new(bin("lowcode-sim"));
        for (kind, addr) in apps {
            cmd.arg("--app").arg(format!("{kind}={addr}"));
        }
        cmd.args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("spawn lowcode-sim");
        let stdout = child.stdout.take().expect("stdout");
        let mut addrs = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("read sim stdout");
            if line == "ready" {
                break;
            }
            if let Some(addr) = line.split("addr=").nth(1) {
                addrs.push(addr.trim().parse().expect("sim addr"));
            }
        }
        assert_eq!(
            addrs.len(),
            apps.len(),
            "lowcode-sim did not start all listeners"
        );
        Sim { child, addrs }
    }

    /// One instance of `kind` on a free port.
    pub fn one(kind: &str) -> Sim {
        Sim::start(&[(kind, "127.0.0.1:0")], &[])
    }

    /// `http://ADDR` of listener `i`.
    pub fn url(&self, i: usize) -> String {
        format!("http://{}", self.addrs[i])
    }

    /// Requests listener `i` has received (health checks excluded).
    pub fn requests(&self, i: usize) -> u64 {
        let body = http_get(self.addrs[i], "/__sim/stats", "sim");
        let v: serde_json::Value = serde_json::from_str(&body).expect("stats json");
        v["requests"].as_u64().expect("requests")
    }

    /// Kill the process at once (SIGKILL).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A running `gatehouse serve`.
pub struct Gateway {
    child: Child,
    /// Proxy listener.
    pub addr: SocketAddr,
    /// Admin listener.
    pub admin: SocketAddr,
    /// Where its log goes.
    pub log: PathBuf,
    /// Bearer token sent with admin reads (governed mode needs one).
    pub admin_token: Option<String>,
    /// Its `--run-dir` (pid file, upgrade socket), in its temporary directory.
    pub run_dir: PathBuf,
    _logdir: tempfile::TempDir,
}

impl Gateway {
    /// Start a gateway on `policies` with free ports; waits for `/readyz`.
    pub fn start(policies: &Path, extra: &[&str]) -> Gateway {
        let mut args = vec!["--policies", policies.to_str().expect("utf-8 path")];
        args.extend_from_slice(extra);
        Gateway::launch(&args)
    }

    /// Start a gateway on `policies` under a descriptor limit of `nofile`
    /// (`ulimit -n`); waits for `/readyz`.
    pub fn start_limited(policies: &Path, nofile: u64, extra: &[&str]) -> Gateway {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let logdir = tempfile::tempdir().expect("tempdir");
        let run_dir = logdir.path().join("run");
        let mut args = vec!["--policies", policies.to_str().expect("utf-8 path")];
        args.extend_from_slice(extra);
        let gw = Gateway::spawn_limited(addr, admin, logdir, run_dir, &args, Some(nofile));
        gw.wait_ready(Duration::from_secs(30));
        gw
    }

    /// Start `gatehouse serve ARGS` (listeners on free ports); waits for `/readyz`.
    pub fn launch(args: &[&str]) -> Gateway {
        let gw = Gateway::spawn(args);
        gw.wait_ready(Duration::from_secs(30));
        gw
    }

    /// Start `gatehouse serve ARGS` without waiting for it.
    pub fn spawn(args: &[&str]) -> Gateway {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        Gateway::spawn_on(addr, admin, args)
    }

    /// Start `gatehouse serve --upgrade ARGS` on this gateway's listeners:
    /// it takes them over, and this one drains and exits. Waits until the
    /// successor is ready.
    pub fn successor(&self, args: &[&str]) -> Gateway {
        let mut all = vec!["--upgrade"];
        all.extend_from_slice(args);
        // The pid file is written once the running process handles SIGQUIT.
        assert!(
            eventually(Duration::from_secs(10), || self
                .run_dir
                .join("gatehouse.pid")
                .exists()),
            "the running gateway recorded no pid"
        );
        let next = Gateway::spawn_in(self.addr, self.admin, &self.run_dir, &all);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if next.log_text().contains("listeners taken over") {
                next.wait_ready(Duration::from_secs(30));
                return next;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "the successor did not take over; its log:\n{}",
            next.log_text()
        );
    }

    /// Start `gatehouse serve ARGS` on the given listeners; waits for `/readyz`.
    pub fn launch_on(addr: SocketAddr, admin: SocketAddr, args: &[&str]) -> Gateway {
        let gw = Gateway::spawn_on(addr, admin, args);
        gw.wait_ready(Duration::from_secs(30));
        gw
    }

    fn spawn_on(addr: SocketAddr, admin: SocketAddr, args: &[&str]) -> Gateway {
        let logdir = tempfile::tempdir().expect("tempdir");
        let run_dir = logdir.path().join("run");
        Gateway::spawn_with(addr, admin, logdir, run_dir, args)
    }

    /// A successor's process: a run dir shared with its predecessor.
    fn spawn_in(addr: SocketAddr, admin: SocketAddr, run_dir: &Path, args: &[&str]) -> Gateway {
        let logdir = tempfile::tempdir().expect("tempdir");
        Gateway::spawn_with(addr, admin, logdir, run_dir.to_path_buf(), args)
    }

    fn spawn_with(
        addr: SocketAddr,
        admin: SocketAddr,
        logdir: tempfile::TempDir,
        run_dir: PathBuf,
        args: &[&str],
    ) -> Gateway {
        Gateway::spawn_limited(addr, admin, logdir, run_dir, args, None)
    }

    fn spawn_limited(
        addr: SocketAddr,
        admin: SocketAddr,
        logdir: tempfile::TempDir,
        run_dir: PathBuf,
        args: &[&str],
        nofile: Option<u64>,
    ) -> Gateway {
        let log = logdir.path().join("gatehouse.log");
        let logfile = std::fs::File::create(&log).expect("log file");
        let engine = engine();
        let mut command = match nofile {
            None => Command::new(bin("gatehouse")),
            Some(n) => {
                let mut sh = Command::new("sh");
                sh.args(["-c", &format!("ulimit -n {n} && exec \"$0\" \"$@\"")])
                    .arg(bin("gatehouse"));
                sh
            }
        };
        command.arg("serve");
        if !args.contains(&"--http1-engine") {
            command.args(["--http1-engine", &engine]);
        }
        if !args.contains(&"--threads") {
            command.args(["--threads", "2"]);
        }
        let child = command
            .args([
                "--listen",
                &addr.to_string(),
                "--admin-listen",
                &admin.to_string(),
                "--run-dir",
                run_dir.to_str().expect("utf-8 path"),
            ])
            .args(args)
            .env("RUST_LOG", "info,pingora_core::connectors=off")
            .env_remove("GATEHOUSE_TOKEN")
            .stdout(Stdio::null())
            .stderr(logfile)
            .spawn()
            .expect("spawn gatehouse");
        Gateway {
            child,
            addr,
            admin,
            log,
            admin_token: None,
            run_dir,
            _logdir: logdir,
        }
    }

    /// `http://ADDR` of the admin listener.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    fn wait_ready(&self, within: Duration) {
        let start = Instant::now();
        while start.elapsed() < within {
            if let Some((200, _)) = try_http_get(self.admin, "/readyz", "admin") {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "gateway not ready within {within:?}; log:\n{}",
            self.log_text()
        );
    }

    /// The gateway's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `http://ADDR` of the proxy.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// GET an admin endpoint as JSON.
    pub fn admin_json(&self, path: &str) -> serde_json::Value {
        let auth = self
            .admin_token
            .as_ref()
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let (status, body) = try_http_get_with(self.admin, path, "admin", &auth)
            .unwrap_or_else(|| panic!("GET {path} on the admin listener failed"));
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).expect("admin json")
    }

    /// The active policy version.
    pub fn policy_version(&self) -> String {
        self.admin_json("/v1/policy")["version"]
            .as_str()
            .expect("version")
            .to_string()
    }

    /// Send a signal (`TERM`, `HUP`, …) with kill(1).
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait for the process to exit; `None` on timeout.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < within {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- gatehouse log ---\n{}", self.log_text());
        }
    }
}

/// Run the `gatehouse` CLI; returns (exit code, stdout, stderr).
pub fn cli(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(bin("gatehouse"))
        .args(args)
        .env_remove("GATEHOUSE_TOKEN")
        .env_remove("GATEHOUSE_URL")
        .envs(env.iter().copied())
        .output()
        .expect("run gatehouse");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// `gatehouse admin add-principal`: the new principal's token.
pub fn add_principal(state: &Path, name: &str, roles: &str) -> String {
    let (code, out, err) = cli(
        &[
            "admin",
            "add-principal",
            "--state",
            state.to_str().expect("utf-8 path"),
            "--name",
            name,
            "--role",
            roles,
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let token = out.trim().to_string();
    assert!(token.starts_with("ght_"), "{out}");
    token
}

/// A policy directory in a temp dir.
pub struct PolicyDir {
    dir: tempfile::TempDir,
}

impl PolicyDir {
    /// An empty directory.
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Write (atomically: temp file + rename) one file.
    pub fn write(&self, name: &str, text: &str) {
        let path = self.dir.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        let file_name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("policy");
        let tmp = path.with_file_name(format!(".{file_name}.tmp"));
        std::fs::write(&tmp, text).expect("write policy");
        std::fs::rename(&tmp, &path).expect("rename policy");
    }
}

impl PolicyDir {
    /// A copy of the bundle in `src`, each file's text passed through `edit`
    /// (given its path relative to `src`).
    pub fn copy_of(src: &Path, edit: impl Fn(&str, String) -> String) -> Self {
        let out = PolicyDir::new();
        copy_tree(src, src, &out, &edit);
        out
    }
}

impl Default for PolicyDir {
    fn default() -> Self {
        Self::new()
    }
}

/// One simple app as a policy file body.
pub fn app_policy(
    name: &str,
    host: &str,
    instances: &[String],
    extra: &str,
    routes: &str,
) -> String {
    let instances = instances
        .iter()
        .map(|i| format!("\"{i}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "version: 1\napps:\n  - name: {name}\n    owner: team@corp.example\n    hosts: [{host}]\n    upstream:\n      instances: [{instances}]\n{extra}\n    routes:\n{routes}\n"
    )
}

/// Raw HTTP/1.1 exchange: send `request` bytes, read until the server closes.
pub fn raw_http(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(request).expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).to_string()
}

/// GET with `Connection: close`; `(status, body)` or `None` when it fails.
pub fn try_http_get(addr: SocketAddr, path: &str, host: &str) -> Option<(u16, String)> {
    try_http_get_with(addr, path, host, "")
}

/// Like [`try_http_get`], with extra header lines (each ending in CRLF).
pub fn try_http_get_with(
    addr: SocketAddr,
    path: &str,
    host: &str,
    headers: &str,
) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\n{headers}Connection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.get(9..12)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// Like [`try_http_get`] but panics on failure and returns the body.
pub fn http_get(addr: SocketAddr, path: &str, host: &str) -> String {
    try_http_get(addr, path, host)
        .unwrap_or_else(|| panic!("GET {path} on {addr} failed"))
        .1
}

/// Poll `cond` every 50 ms until it holds or `within` passes.
pub fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < within {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cond()
}

/// An HTTP client for the tests (no proxy from the environment, no pooling
/// surprises across tests).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// A cleartext HTTP/2 client (prior knowledge, for `serve --h2c`) that sends
/// requests for `host` to `addr`: HTTP/2 carries the host in `:authority`,
/// so the app is addressed by name.
pub fn h2c_client(host: &str, addr: SocketAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .http2_prior_knowledge()
        .resolve(host, addr)
        .build()
        .expect("h2c client")
}

/// A copy of the example bundle in `policies/` whose instance URLs point at
/// `sim` (one listener per app kind, in the order orders, customers,
/// employees, approvals); `edit` may change the app files' text. It adds a
/// consumer `e2e` allowed on every app, without a plan, and returns its key.
pub fn example_policies(sim: &Sim, edit: impl Fn(&str, String) -> String) -> (PolicyDir, String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let dir = PolicyDir::new();
    let ports = [("91", 0), ("92", 1), ("93", 2), ("94", 3)];
    copy_tree(&root, &root, &dir, &|rel, text| {
        let mut text = text;
        if rel.starts_with("apps/") {
            for (prefix, i) in ports {
                for n in 1..=2 {
                    text = text.replace(&format!("http://127.0.0.1:{prefix}0{n}"), &sim.url(i));
                }
            }
            // One listener per kind: the second instance is the first again.
            let mut seen = std::collections::HashSet::new();
            text = text
                .lines()
                .filter(|l| {
                    !l.trim_start().starts_with("- http://") || seen.insert(l.trim().to_string())
                })
                .collect::<Vec<_>>()
                .join("\n");
            text = edit(rel, text);
        }
        text
    });
    let (entry, key) = new_consumer(&["--id", "e2e", "--name", "End-to-end tests"]);
    dir.write("consumers-e2e.yaml", &entry);
    (dir, key)
}

/// Run `gatehouse consumer new ARGS`; returns the policy entry and the key.
pub fn new_consumer(args: &[&str]) -> (String, String) {
    let keydir = tempfile::tempdir().expect("tempdir");
    let keyfile = keydir.path().join("key");
    let out = Command::new(bin("gatehouse"))
        .args(["consumer", "new"])
        .args(args)
        .arg("--key-file")
        .arg(&keyfile)
        .output()
        .expect("gatehouse consumer new");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = std::fs::read_to_string(&keyfile)
        .expect("key file")
        .trim()
        .to_string();
    (String::from_utf8(out.stdout).expect("utf-8"), key)
}

/// A client sending `x-api-key: key` on every request.
pub fn keyed_client(key: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        "x-api-key",
        reqwest::header::HeaderValue::from_str(key).expect("key header"),
    );
    reqwest::Client::builder()
        .no_proxy()
        .default_headers(headers)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

fn copy_tree(root: &Path, dir: &Path, out: &PolicyDir, f: &dyn Fn(&str, String) -> String) {
    for entry in std::fs::read_dir(dir).expect("read policies").flatten() {
        let path = entry.path();
        if path.is_dir() {
            copy_tree(root, &path, out, f);
            continue;
        }
        let rel = path
            .strip_prefix(root)
            .expect("under root")
            .to_string_lossy()
            .to_string();
        let text = std::fs::read_to_string(&path).expect("read policy file");
        out.write(&rel, &f(&rel, text));
    }
}

/// The estate of the example policies: one instance of each app kind.
pub fn example_estate() -> Sim {
    Sim::start(
        &[
            ("orders", "127.0.0.1:0"),
            ("customers", "127.0.0.1:0"),
            ("employees", "127.0.0.1:0"),
            ("approvals", "127.0.0.1:0"),
        ],
        &[],
    )
}

/// A private ClickHouse server (Debian's `clickhouse-server`, installed by
/// `scripts/setup.sh`) on free loopback ports with its data in a temp dir.
pub struct ClickHouse {
    child: Option<Child>,
    dir: tempfile::TempDir,
    http_port: u16,
    tcp_port: u16,
}

impl ClickHouse {
    /// Start and wait for `/ping`.
    pub fn start() -> ClickHouse {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ch = ClickHouse {
            child: None,
            dir,
            http_port: free_port(),
            tcp_port: free_port(),
        };
        ch.write_config();
        ch.spawn();
        ch
    }

    fn write_config(&self) {
        let d = self.dir.path().display();
        for sub in ["data", "tmp", "user_files", "format_schemas", "log"] {
            std::fs::create_dir_all(self.dir.path().join(sub)).expect("mkdir");
        }
        let config = format!(
            "<?xml version=\"1.0\"?>\n<yandex>\n<logger><level>warning</level><log>{d}/log/server.log</log><errorlog>{d}/log/error.log</errorlog><size>10M</size><count>1</count></logger>\n\
             <http_port>{}</http_port><tcp_port>{}</tcp_port><listen_host>127.0.0.1</listen_host>\n\
             <path>{d}/data/</path><tmp_path>{d}/tmp/</tmp_path><user_files_path>{d}/user_files/</user_files_path><format_schema_path>{d}/format_schemas/</format_schema_path>\n\
             <mark_cache_size>67108864</mark_cache_size><max_concurrent_queries>50</max_concurrent_queries>\n\
             <users_config>users.xml</users_config><default_profile>default</default_profile><default_database>default</default_database>\n</yandex>\n",
            self.http_port, self.tcp_port
        );
        std::fs::write(self.dir.path().join("config.xml"), config).expect("config");
        let users = "<?xml version=\"1.0\"?>\n<yandex><profiles><default><max_memory_usage>2000000000</max_memory_usage></default></profiles>\
            <users><default><password></password><networks><ip>127.0.0.1</ip><ip>::1</ip></networks><profile>default</profile><quota>default</quota></default></users>\
            <quotas><default></default></quotas></yandex>\n";
        std::fs::write(self.dir.path().join("users.xml"), users).expect("users");
    }

    fn spawn(&mut self) {
        let server = ["/usr/bin/clickhouse-server", "/usr/sbin/clickhouse-server"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("clickhouse-server is installed by scripts/setup.sh");
        let log = std::fs::File::create(self.dir.path().join("log/stdout.log")).expect("log");
        let child = Command::new(server)
            .arg(format!(
                "--config-file={}",
                self.dir.path().join("config.xml").display()
            ))
            .current_dir(self.dir.path())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn clickhouse-server");
        self.child = Some(child);
        let ok = eventually(Duration::from_secs(20), || {
            try_http_get(self.addr(), "/ping", "clickhouse")
                .is_some_and(|(s, b)| s == 200 && b.starts_with("Ok."))
        });
        assert!(
            ok,
            "ClickHouse did not start; log: {}",
            std::fs::read_to_string(self.dir.path().join("log/stdout.log")).unwrap_or_default()
        );
    }

    /// HTTP address.
    pub fn addr(&self) -> SocketAddr {
        format!("127.0.0.1:{}", self.http_port)
            .parse()
            .expect("addr")
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// Run a query; the response body (TabSeparated), or panic.
    pub fn query(&self, sql: &str) -> String {
        let body = sql.as_bytes();
        let req = format!(
            "POST / HTTP/1.1\r\nHost: clickhouse\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        let resp = raw_http(self.addr(), &bytes);
        assert!(
            resp.starts_with("HTTP/1.1 200"),
            "query failed: {sql}\n{resp}"
        );
        let body = resp
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        if resp
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(&body)
        } else {
            body
        }
    }

    /// A single number from a query.
    pub fn count(&self, sql: &str) -> u64 {
        self.query(sql)
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("not a number from {sql}"))
    }

    /// Stop the server (SIGTERM, then wait).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let start = std::time::Instant::now();
            while start.elapsed() < Duration::from_secs(30) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again on the same ports and data.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Kill the server at once (SIGKILL): an outage without the wait of a
    /// clean stop; what it acknowledged stays on disk.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again after [`ClickHouse::stop`] or [`ClickHouse::kill`].
    pub fn start_again(&mut self) {
        self.spawn();
    }

    /// The server's process id (while it runs).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Freeze (`STOP`) or thaw (`CONT`) the server process.
    pub fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(c.id().to_string())
                .status();
        }
    }
}

impl Drop for ClickHouse {
    fn drop(&mut self) {
        self.signal("CONT");
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// A throwaway CA and a leaf certificate for `app.test`, made with openssl(1).
pub fn make_certs(dir: &std::path::Path) -> (String, String, String) {
    let p = |n: &str| dir.join(n).to_str().expect("utf-8 temp path").to_string();
    std::fs::write(
        p("leaf.ext"),
        "subjectAltName=DNS:app.test\nbasicConstraints=CA:FALSE\n",
    )
    .expect("write the certificate extensions");
    let (ca_key, ca, key, csr, cert, ext) = (
        p("ca.key"),
        p("ca.pem"),
        p("key.pem"),
        p("leaf.csr"),
        p("cert.pem"),
        p("leaf.ext"),
    );
    let steps: [&[&str]; 3] = [
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=gatehouse-test-ca",
            "-keyout",
            &ca_key,
            "-out",
            &ca,
        ],
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=app.test",
            "-keyout",
            &key,
            "-out",
            &csr,
        ],
        &[
            "x509",
            "-req",
            "-days",
            "2",
            "-CAcreateserial",
            "-in",
            &csr,
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-extfile",
            &ext,
            "-out",
            &cert,
        ],
    ];
    for args in steps {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl is installed by the test setup");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    (ca, cert, key)
}

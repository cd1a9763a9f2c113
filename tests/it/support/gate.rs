//! The gateway on ephemeral ports, in front of a stub upstream: in this
//! process through `run::prepare` and `run::serve` (the default), or as the
//! real `scopegate` binary with its stdout (the logs) captured to a file,
//! for tests about logs, signals, exit codes and memory (`.binary()`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use http::Request;
use hyper_util::rt::TokioIo;
use scopegate::config::Config;
use scopegate::run;
use tokio::net::TcpStream;

use super::{free_port, full, get, sha256_hex, DEVICE_ONLY_TOKEN, FULL_TOKEN};

/// The config every test starts from; the builder's extras are appended to
/// their sections, `rest` to the end.
fn config(listen: SocketAddr, admin: SocketAddr, upstream: SocketAddr, b: &GateBuilder) -> String {
    let (server_extra, upstream_extra, log_extra, auth_extra, rest) = (
        &b.server_extra,
        &b.upstream_extra,
        &b.log_extra,
        &b.auth_extra,
        &b.rest,
    );
    format!(
        r#"[server]
listen = "{listen}"
header_read_timeout_ms = 1000
{server_extra}

[upstream]
url = "http://{upstream}"
probe_interval_s = 1
{upstream_extra}

[admin]
listen = "{admin}"

[log]
level = "debug"
{log_extra}

[auth]
server_name = "example.org"
{auth_extra}

[[auth.static]]
token_sha256 = "{full}"
user_id = "@alice:example.org"
scopes = ["urn:matrix:client:api:*"]

[[auth.static]]
token_sha256 = "{device}"
user_id = "@bob:example.org"
scopes = ["urn:matrix:client:device:ABC"]
{rest}
"#,
        full = sha256_hex(FULL_TOKEN),
        device = sha256_hex(DEVICE_ONLY_TOKEN),
    )
}

/// A running gateway.
pub struct Gate {
    /// The binary, when started with `.binary()`.
    child: Option<Child>,
    /// The in-process gateway's task, stopped on drop.
    task: Option<tokio::task::JoinHandle<()>>,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    log: PathBuf,
    pub dir: tempfile::TempDir,
}

#[derive(Default)]
pub struct GateBuilder {
    server_extra: String,
    upstream_extra: String,
    log_extra: String,
    auth_extra: String,
    rest: String,
    files: Vec<(String, Vec<u8>)>,
    binary: bool,
}

impl GateBuilder {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn log(mut self, s: &str) -> Self {
        self.log_extra.push_str(s);
        self.log_extra.push('\n');
        self
    }
    pub fn rest(mut self, s: &str) -> Self {
        self.rest.push_str(s);
        self.rest.push('\n');
        self
    }
    /// Keys of the `[auth]` table itself (`issuer = …`).
    pub fn auth(mut self, s: &str) -> Self {
        self.auth_extra.push_str(s);
        self.auth_extra.push('\n');
        self
    }
    pub fn server(mut self, s: &str) -> Self {
        self.server_extra.push_str(s);
        self.server_extra.push('\n');
        self
    }
    pub fn upstream(mut self, s: &str) -> Self {
        self.upstream_extra.push_str(s);
        self.upstream_extra.push('\n');
        self
    }
    /// A file beside the config (`gate.dir`), for paths the config names.
    pub fn file(mut self, name: &str, content: impl Into<Vec<u8>>) -> Self {
        self.files.push((name.into(), content.into()));
        self
    }

    /// The real binary rather than this process: for logs, signals, exit
    /// codes and memory.
    pub fn binary(mut self) -> Self {
        self.binary = true;
        self
    }

    pub async fn start(self, upstream: SocketAddr) -> Gate {
        if !self.binary {
            return self.start_in_process(upstream).await;
        }
        let mut dir = tempfile::tempdir().unwrap();
        for (name, content) in &self.files {
            std::fs::write(dir.path().join(name), content).unwrap();
        }
        // A free port can be taken by someone else before the gateway binds
        // it: start again on new ports then.
        for _ in 0..5 {
            let (addr, admin) = (free_port(), free_port());
            let cfg = config(addr, admin, upstream, &self);
            let cfg_path = dir.path().join("scopegate.toml");
            std::fs::write(&cfg_path, cfg).unwrap();
            let log = dir.path().join("scopegate.log");
            let stderr = dir.path().join("stderr.log");
            let child = Command::new(env!("CARGO_BIN_EXE_scopegate"))
                .arg("run")
                .arg("--config")
                .arg(&cfg_path)
                .env_remove("RUST_LOG")
                .stdout(std::fs::File::create(&log).unwrap())
                .stderr(std::fs::File::create(&stderr).unwrap())
                .spawn()
                .unwrap();
            let mut gate = Gate {
                child: Some(child),
                task: None,
                addr,
                admin,
                log,
                dir,
            };
            match gate.wait_ready().await {
                Ok(()) => return gate,
                Err(e) if e.contains("cannot listen on") => {
                    dir = std::mem::replace(&mut gate.dir, tempfile::tempdir().unwrap());
                    continue;
                }
                Err(e) => panic!("{e}"),
            }
        }
        panic!("scopegate found no free ports in five tries");
    }

    async fn start_in_process(self, upstream: SocketAddr) -> Gate {
        let dir = tempfile::tempdir().unwrap();
        for (name, content) in &self.files {
            std::fs::write(dir.path().join(name), content).unwrap();
        }
        for _ in 0..5 {
            let (addr, admin) = (free_port(), free_port());
            let cfg_path = dir.path().join("scopegate.toml");
            let cfg = config(addr, admin, upstream, &self);
            std::fs::write(&cfg_path, &cfg).unwrap();
            let config = Config::parse(&cfg, &cfg_path, std::iter::empty())
                .unwrap_or_else(|e| panic!("{e}"));
            let prepared = run::prepare(config).unwrap_or_else(|e| panic!("{e}"));
            let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
            let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
            let serving = tokio::spawn(run::serve(
                prepared,
                async move {
                    let _ = stop_rx.await;
                },
                move |bound| {
                    let _ = bound_tx.send(bound);
                },
            ));
            if bound_rx.await.is_err() {
                // Bound nothing: a port was taken meanwhile. Try new ones.
                match serving.await.unwrap() {
                    Err(e) if e.to_string().contains("cannot listen on") => continue,
                    other => panic!("the gateway did not start: {other:?}"),
                }
            }
            let task = tokio::spawn(async move {
                let _keep_running = stop_tx;
                let _ = serving.await;
            });
            let mut gate = Gate {
                child: None,
                task: Some(task),
                addr,
                admin,
                log: dir.path().join("no-log"),
                dir,
            };
            gate.wait_ready().await.unwrap();
            return gate;
        }
        panic!("the gateway found no free ports in five tries");
    }
}

/// How long a test waits for something the gateway should do at once.
const PATIENCE: Duration = Duration::from_secs(10);

impl Gate {
    pub async fn start(upstream: SocketAddr) -> Gate {
        GateBuilder::new().start(upstream).await
    }

    /// Ready: the public listener accepts connections and the admin
    /// listener answers `/healthz` (it is served by a task spawned with
    /// the others after both listeners are bound).
    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let exited = match self.child.as_mut() {
                Some(child) => child.try_wait().unwrap(),
                None => None,
            };
            if let Some(status) = exited {
                let stderr =
                    std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default();
                return Err(format!(
                    "scopegate exited at start-up ({status}): {stderr}{}",
                    self.logs()
                ));
            }
            if healthy(self.admin).await && TcpStream::connect(self.addr).await.is_ok() {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "scopegate did not start: {}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The log so far, in whole lines. Lines are written by a background
    /// thread and may lag behind: wait with [`Gate::wait_log`] or
    /// [`Gate::logs_flushed`].
    pub fn logs(&self) -> String {
        self.needs_binary("logs");
        let mut logs = std::fs::read(&self.log).unwrap_or_default();
        logs.truncate(
            logs.iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |end| end + 1),
        );
        String::from_utf8_lossy(&logs).into_owned()
    }

    /// Polls the log until `done` holds, and returns it.
    pub async fn wait_log(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let logs = self.logs();
            if done(&logs) {
                return logs;
            }
            assert!(Instant::now() < deadline, "no {what} in the log:\n{logs}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The log with every line logged before this call: a SIGHUP's
    /// "reloading rules" line, logged after them, has reached the file.
    pub async fn logs_flushed(&self) -> String {
        const MARK: &str = "SIGHUP: reloading rules";
        let seen = self.logs().matches(MARK).count();
        self.signal("HUP");
        self.wait_log("SIGHUP line", |logs| logs.matches(MARK).count() > seen)
            .await
    }

    pub fn pid(&self) -> u32 {
        self.needs_binary("a process id");
        self.child.as_ref().unwrap().id()
    }

    fn needs_binary(&self, what: &str) {
        assert!(
            self.child.is_some() || self.task.is_none(),
            "{what}: start this gateway with GateBuilder::binary()"
        );
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit, at most `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        self.needs_binary("an exit status");
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The gateway's peak resident memory, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    pub async fn metrics(&self) -> String {
        let (_, body) = get(self.admin, "/metrics", None).await;
        String::from_utf8(body.to_vec()).unwrap()
    }

    /// Polls `/metrics` until `done` holds, and returns them.
    pub async fn wait_metrics(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let metrics = self.metrics().await;
            if done(&metrics) {
                return metrics;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} in the metrics:\n{metrics}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Whether `/healthz` answers 200 on `admin`, within a second.
async fn healthy(admin: SocketAddr) -> bool {
    let ask = async {
        let stream = TcpStream::connect(admin).await.ok()?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .ok()?;
        tokio::spawn(conn);
        let req = Request::get("/healthz").body(full("")).unwrap();
        Some(sender.send_request(req).await.ok()?.status() == 200)
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), ask).await,
        Ok(Some(true))
    )
}

impl Drop for Gate {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

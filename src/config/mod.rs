//! The gateway's config file: every section's schema, and every check that
//! needs no I/O. Everything is validated while it is read, so each mistake
//! is reported with the file, line and key at start-up (all of them at once
//! by `scopegate check`) rather than discovered by the first request. This
//! module is a leaf: the runtime reads it, it reads nothing of the runtime.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use http::Uri;
use ipnet::IpNet;
use serde::{Deserialize, Deserializer};

mod auth;
mod relay;

pub(crate) use auth::{provider_url, ProviderUrl};
pub use auth::{
    AuthSettings, CacheConfig, ClientAuthMethod, IntrospectionConfig, JwsAlgorithm, JwtConfig,
    LegacyConfig, RateLimitConfig, RevocationConfig, Secret, StaticToken, TokenDigest,
};
pub use relay::RelayConfig;

/// Request targets longer than this are refused (`[server] max_path_bytes`).
pub const DEFAULT_MAX_PATH_BYTES: usize = 8 * 1024;

/// Environment variables with this prefix override config keys:
/// `SCOPEGATE__UPSTREAM__URL` sets `[upstream] url`.
pub const ENV_PREFIX: &str = "SCOPEGATE__";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub rules: RulesConfig,
    pub auth: AuthSettings,
    #[serde(default)]
    pub cache: CacheConfig,
    #[serde(default)]
    pub log: LogConfig,
    /// The homeserver's introspection endpoint, when set.
    pub relay: Option<RelayConfig>,
    /// Where the file was read from; relative paths resolve against its folder.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    #[serde(default = "defaults::header_read_timeout_ms")]
    pub header_read_timeout_ms: u64,
    #[serde(default = "defaults::max_header_bytes")]
    pub max_header_bytes: usize,
    #[serde(default = "defaults::max_headers")]
    pub max_headers: usize,
    #[serde(default = "defaults::idle_timeout_s")]
    pub idle_timeout_s: u64,
    #[serde(default = "defaults::max_connections")]
    pub max_connections: usize,
    #[serde(default = "defaults::drain_timeout_s")]
    pub drain_timeout_s: u64,
    #[serde(default = "defaults::max_path_bytes")]
    pub max_path_bytes: usize,
    /// Peers whose `X-Forwarded-*` headers are believed (CIDR or address).
    #[serde(default)]
    pub trusted_proxies: Vec<TrustedProxy>,
    /// The deprecated `access_token` query parameter (spec v1.11).
    #[serde(default = "defaults::yes")]
    pub allow_query_token: bool,
    pub worker_threads: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub url: UpstreamUrl,
    #[serde(default = "defaults::connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Long enough for `/sync` long-polls, which clients hold for minutes.
    #[serde(default = "defaults::response_header_timeout_s")]
    pub response_header_timeout_s: u64,
    /// Extra PEM CA certificates trusted for an `https://` upstream, besides the system roots.
    pub ca_file: Option<PathBuf>,
    /// Replaces the client's `Host` header when set.
    pub host: Option<String>,
    #[serde(default = "defaults::pool_idle_timeout_s")]
    pub pool_idle_timeout_s: u64,
    #[serde(default = "defaults::pool_max_idle")]
    pub pool_max_idle_per_host: usize,
    #[serde(default = "defaults::probe_interval_s")]
    pub probe_interval_s: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default = "defaults::admin_listen")]
    pub listen: SocketAddr,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesConfig {
    /// Relative to the config file; without it the shipped rule set is used.
    pub file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default)]
    pub format: LogFormat,
    #[serde(default = "defaults::log_level")]
    pub level: String,
    /// One line per request (target `scopegate::access`).
    #[serde(default = "defaults::yes")]
    pub access: bool,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

mod defaults {
    use std::net::SocketAddr;

    pub fn header_read_timeout_ms() -> u64 {
        10_000
    }
    pub fn max_header_bytes() -> usize {
        64 * 1024
    }
    pub fn max_headers() -> usize {
        100
    }
    pub fn idle_timeout_s() -> u64 {
        60
    }
    pub fn max_connections() -> usize {
        20_000
    }
    pub fn drain_timeout_s() -> u64 {
        30
    }
    pub fn max_path_bytes() -> usize {
        super::DEFAULT_MAX_PATH_BYTES
    }
    pub fn yes() -> bool {
        true
    }
    pub fn connect_timeout_ms() -> u64 {
        5_000
    }
    pub fn response_header_timeout_s() -> u64 {
        330
    }
    pub fn pool_idle_timeout_s() -> u64 {
        90
    }
    pub fn pool_max_idle() -> usize {
        512
    }
    pub fn probe_interval_s() -> u64 {
        10
    }
    pub fn admin_listen() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 9090))
    }
    pub fn log_level() -> String {
        "info".into()
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: defaults::admin_listen(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::default(),
            level: defaults::log_level(),
            access: true,
        }
    }
}

impl ServerConfig {
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_s)
    }
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_timeout_s)
    }
}

impl UpstreamConfig {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    pub fn response_header_timeout(&self) -> Duration {
        Duration::from_secs(self.response_header_timeout_s)
    }
}

/// The homeserver's base URL: `http` or `https`, no path, query or user info.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl(pub Uri);

impl UpstreamUrl {
    pub fn is_https(&self) -> bool {
        self.0.scheme_str() == Some("https")
    }
}

impl FromStr for UpstreamUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let uri: Uri = s.parse().map_err(|e| format!("`{s}` is not a URL: {e}"))?;
        match uri.scheme_str() {
            Some("http" | "https") => {}
            _ => {
                return Err(format!(
                    "`{s}`: the upstream URL must start with http:// or https://"
                ))
            }
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("`{s}`: the upstream URL needs a host"))?;
        if authority.as_str().contains('@') {
            return Err(format!(
                "`{s}`: user info is not allowed in the upstream URL"
            ));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(format!(
                "`{s}`: the upstream URL must not have a path or query; requests keep their own"
            ));
        }
        Ok(UpstreamUrl(uri))
    }
}

/// An address or CIDR block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrustedProxy(pub IpNet);

impl FromStr for TrustedProxy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(net) = s.parse::<IpNet>() {
            return Ok(TrustedProxy(net));
        }
        s.parse::<std::net::IpAddr>()
            .map(|ip| TrustedProxy(IpNet::from(ip)))
            .map_err(|_| format!("`{s}` is neither an IP address nor a CIDR block"))
    }
}

macro_rules! deserialize_from_str {
    ($($t:ty),*) => {$(
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}
deserialize_from_str!(UpstreamUrl, TrustedProxy);

/// A mistake found after parsing, named by its section and key.
#[derive(Debug)]
pub struct Problem {
    pub section: &'static str,
    pub key: &'static str,
    pub message: String,
}

/// The mistakes one check found.
#[derive(Debug, Default)]
pub struct Problems(pub Vec<Problem>);

impl Problems {
    pub(crate) fn add(
        &mut self,
        section: &'static str,
        key: &'static str,
        message: impl Into<String>,
    ) {
        self.0.push(Problem {
            section,
            key,
            message: message.into(),
        });
    }

    /// The first mistake, for callers that build from settings without a file.
    pub fn into_result(self) -> Result<(), String> {
        match self.0.into_iter().next() {
            Some(p) => Err(p.to_string()),
            None => Ok(()),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}: {}", self.section, self.key, self.message)
    }
}

/// What is wrong with a config file: every mistake found, each with its
/// line where one can be named.
#[derive(Debug)]
pub struct ConfigError {
    pub file: PathBuf,
    pub mistakes: Vec<Located>,
}

/// One mistake and where it is.
#[derive(Debug)]
pub struct Located {
    pub line: Option<usize>,
    pub message: String,
}

impl ConfigError {
    fn one(file: &Path, line: Option<usize>, message: String) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            mistakes: vec![Located { line, message }],
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, m) in self.mistakes.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            match m.line {
                Some(line) => write!(f, "{}:{}: {}", self.file.display(), line, m.message)?,
                None => write!(f, "{}: {}", self.file.display(), m.message)?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads, overrides from the environment, and validates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let src = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::one(path, None, format!("cannot read the config file: {e}"))
        })?;
        Self::parse(&src, path, std::env::vars())
    }

    pub fn parse(
        src: &str,
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let error = |line, message| ConfigError::one(path, line, message);
        let overrides: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        let mut config: Config = if overrides.is_empty() {
            toml::from_str(src).map_err(|e| {
                let line = e.span().map(|s| line_of(src, s.start));
                error(line, e.message().trim().to_string())
            })?
        } else {
            let mut table: toml::Table = toml::from_str(src).map_err(|e| {
                let line = e.span().map(|s| line_of(src, s.start));
                error(line, e.message().trim().to_string())
            })?;
            let names: Vec<String> = overrides.iter().map(|(k, _)| k.clone()).collect();
            for (key, value) in overrides {
                apply_override(&mut table, &key, &value).map_err(|m| error(None, m))?;
            }
            Config::deserialize(table).map_err(|e| {
                error(
                    None,
                    format!(
                        "{} (after applying {})",
                        e.message().trim(),
                        names.join(", ")
                    ),
                )
            })?
        };
        config.base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let problems = config.problems();
        if problems.0.is_empty() {
            return Ok(config);
        }
        Err(ConfigError {
            file: path.to_path_buf(),
            mistakes: problems
                .0
                .into_iter()
                .map(|p| Located {
                    line: find_key_line(src, p.section, p.key),
                    message: p.to_string(),
                })
                .collect(),
        })
    }

    /// Every check serde cannot express that needs no I/O.
    fn problems(&self) -> Problems {
        let mut out = self.auth.problems();
        out.0.extend(self.cache.problems().0);
        let s = &self.server;
        match (&s.tls_cert, &s.tls_key) {
            (Some(_), None) => out.add("server", "tls_cert", "set tls_key too"),
            (None, Some(_)) => out.add("server", "tls_key", "set tls_cert too"),
            _ => {}
        }
        if s.max_header_bytes < 8192 {
            out.add("server", "max_header_bytes", "must be at least 8192");
        }
        if s.max_connections == 0 {
            out.add("server", "max_connections", "must be at least 1");
        }
        if s.header_read_timeout_ms == 0 {
            out.add("server", "header_read_timeout_ms", "must be positive");
        }
        if s.worker_threads == Some(0) {
            out.add("server", "worker_threads", "must be at least 1");
        }
        if self.upstream.response_header_timeout_s == 0 {
            out.add("upstream", "response_header_timeout_s", "must be positive");
        }
        if self.admin.listen == s.listen {
            out.add(
                "admin",
                "listen",
                "the admin listener must not share the public listener's address",
            );
        }
        if let Some(relay) = &self.relay {
            relay.problems(&mut out);
            if relay.listen == s.listen || relay.listen == self.admin.listen {
                out.add(
                    "relay",
                    "listen",
                    "must differ from the public and admin listeners",
                );
            }
        }
        out
    }

    /// A path from the config, resolved against the config file's folder.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        self.base_dir.join(path)
    }
}

/// `SCOPEGATE__AUTH__SERVER_NAME=x` → `auth.server_name = "x"`. A value that
/// reads as TOML (a number, a boolean, an array) is taken as such.
fn apply_override(table: &mut toml::Table, key: &str, value: &str) -> Result<(), String> {
    let path: Vec<String> = key[ENV_PREFIX.len()..]
        .split("__")
        .map(str::to_ascii_lowercase)
        .collect();
    if path.iter().any(String::is_empty) {
        return Err(format!("environment variable {key}: malformed key"));
    }
    let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    let (last, parents) = path.split_last().expect("at least one part");
    let mut cursor = table;
    for part in parents {
        let entry = cursor
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cursor = entry
            .as_table_mut()
            .ok_or_else(|| format!("environment variable {key}: `{part}` is not a table"))?;
    }
    cursor.insert(last.clone(), parsed);
    Ok(())
}

fn line_of(src: &str, offset: usize) -> usize {
    src[..offset.min(src.len())].matches('\n').count() + 1
}

/// The line that assigns `key` in `[section]`, else the section's header,
/// else the same key in the parent section (`[cache]` for a
/// `[cache.revocations]` left to its defaults): for mistakes found after
/// parsing.
fn find_key_line(src: &str, section: &str, key: &str) -> Option<usize> {
    let mut current = "";
    let mut header = None;
    for (i, line) in src.lines().enumerate() {
        let line = line.trim();
        if line.starts_with('[') {
            current = line.trim_matches(['[', ']']).trim();
            if current == section && header.is_none() {
                header = Some(i + 1);
            }
            continue;
        }
        let assigns = line
            .strip_prefix(key)
            .is_some_and(|rest| rest.trim_start().starts_with('='));
        if current == section && assigns {
            return Some(i + 1);
        }
    }
    header.or_else(|| {
        let (parent, _) = section.rsplit_once('.')?;
        find_key_line(src, parent, key)
    })
}

#[cfg(test)]
mod tests;

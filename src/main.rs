use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use scopegate::config::{Config, LogConfig, LogFormat};
use scopegate::run;
use tracing_appender::non_blocking::WorkerGuard;

/// jemalloc rather than the system allocator: a held long-poll keeps buffers
/// that hyper allocates but never fills (its read and write buffers, the
/// request channel's block), and jemalloc's size classes leave those pages
/// untouched, so they cost no memory; glibc's malloc writes its chunk headers
/// into them, and keeps what a burst of connections used long after they
/// closed. Measured in `docs/performance.md` (idle long-polls).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main`: a background thread hands pages
/// unused for a second back to the kernel (`dirty_decay_ms`), at once rather
/// than through the lazier "muzzy" state, so memory comes back after a burst
/// of connections without a request having to trigger the purge.
/// (`_rjem_`: the prefix tikv-jemalloc-sys gives jemalloc's symbols.)
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8; 60] =
    b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

/// A scope-enforcing OIDC gateway in front of a Matrix homeserver.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// The gateway's config file.
    #[arg(
        long,
        short,
        global = true,
        env = "SCOPEGATE_CONFIG",
        default_value = "scopegate.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Run,
    /// Validate the config file and rules, print what is wrong, exit non-zero on errors.
    Check,
    /// Run a self-contained demo: a stub homeserver, the gateway, demo tokens.
    Demo(scopegate::demo::DemoArgs),
    /// Show how the rules decide one request: exit 0 on allow, 1 on deny, 2 on error.
    Explain(ExplainArgs),
}

#[derive(clap::Args)]
struct ExplainArgs {
    /// The token's scopes, space-separated; empty means no token.
    #[arg(long, default_value = "")]
    scopes: String,
    /// Explain against this rule file instead of the config's rules.
    #[arg(long)]
    rules: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// e.g. PUT
    method: String,
    /// The request target as a client sends it, e.g. /_matrix/client/v3/rooms/%21r%3Ax/send/m.room.message/1
    target: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => run_gateway(&cli.config),
        Command::Check => check(&cli.config),
        Command::Explain(args) => explain(&cli.config, &args),
        Command::Demo(args) => {
            let _log = init_logging(&LogConfig::default());
            runtime(None).block_on(scopegate::demo::run(args))
        }
    }
}

fn run_gateway(path: &std::path::Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(e) => {
            report(&e);
            return ExitCode::from(2);
        }
    };
    let _log = init_logging(&config.log);
    let workers = config.server.worker_threads;
    let prepared = match run::prepare(config) {
        Ok(prepared) => prepared,
        Err(e) => {
            report(&e);
            return ExitCode::from(2);
        }
    };
    let result = runtime(workers).block_on(run::serve(prepared, run::termination_signal(), |_| {}));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report(&e);
            ExitCode::FAILURE
        }
    }
}

/// One `error:` line per mistake, each with its causes.
fn report(e: &dyn std::error::Error) {
    for line in scopegate::error_chain(e).lines() {
        eprintln!("error: {line}");
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    let prepared = Config::load(path)
        .map_err(run::StartError::from)
        .and_then(|config| {
            // Building the pipeline checks the rule set, TLS files and upstream.
            let _guard = runtime(Some(1)).enter();
            run::prepare(config)
        });
    match prepared {
        Ok(prepared) => {
            for warning in &prepared.warnings {
                eprintln!("{warning}");
            }
            println!("{}: ok", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            report(&e);
            ExitCode::FAILURE
        }
    }
}

fn explain(config: &std::path::Path, args: &ExplainArgs) -> ExitCode {
    use scopegate::canonical::canonicalize;
    use scopegate::config::DEFAULT_MAX_PATH_BYTES;
    use scopegate::scopes::{Ruling, ScopeSet};

    let rules_file = match &args.rules {
        Some(file) => Some(file.clone()),
        None => match Config::load(config) {
            Ok(config) => config.rules.file.as_ref().map(|f| config.resolve(f)),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        },
    };
    let rules = match run::load_rules(rules_file.as_deref()) {
        Ok((rules, _)) => rules,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let Ok(method) = args.method.to_ascii_uppercase().parse::<http::Method>() else {
        eprintln!("error: `{}` is not an HTTP method", args.method);
        return ExitCode::from(2);
    };
    let uri: http::Uri = match args.target.parse() {
        Ok(uri) => uri,
        Err(e) => {
            eprintln!("error: `{}` is not a request target: {e}", args.target);
            return ExitCode::from(2);
        }
    };
    let target = match canonicalize(&uri, http::Version::HTTP_11, DEFAULT_MAX_PATH_BYTES) {
        Ok(target) => target,
        Err(e) => {
            println!("refused before routing: {e} (400)");
            return ExitCode::from(1);
        }
    };
    let explanation = rules.explain(
        &method,
        target.path,
        &ScopeSet::from_space_separated(&args.scopes),
    );
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&explanation).expect("explanations serialize")
        );
    } else {
        print!("{explanation}");
    }
    match explanation.decision {
        Ruling::Allow => ExitCode::SUCCESS,
        Ruling::Deny => ExitCode::from(1),
    }
}

/// One worker means tokio's single-threaded scheduler: no work stealing, no
/// cross-thread wake-ups (measured faster when the gateway has one core).
fn runtime(workers: Option<usize>) -> tokio::runtime::Runtime {
    let mut builder = match workers {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(n);
            builder
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    builder.enable_all().build().expect("a tokio runtime")
}

/// Dependencies stay at `warn` unless named explicitly: at `trace`, HTTP
/// libraries print raw header values, tokens included.
///
/// Lines are written by a background thread, so a request never waits on a
/// write to stdout; the returned guard flushes them at exit.
fn init_logging(log: &LogConfig) -> WorkerGuard {
    use tracing_subscriber::EnvFilter;
    let access = if log.access {
        ""
    } else {
        ",scopegate::access=off"
    };
    let level = &log.level;
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|s| EnvFilter::try_new(s).ok())
        .unwrap_or_else(|| {
            EnvFilter::try_new(format!("warn,scopegate={level}{access}"))
                .unwrap_or_else(|_| EnvFilter::new("warn,scopegate=info"))
        });
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let (writer, guard) = tracing_appender::non_blocking(std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    match log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    guard
}

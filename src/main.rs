use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use scopegate::config::{Config, LogFormat};
use scopegate::run;

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => run_gateway(&cli.config),
        Command::Check => check(&cli.config),
        Command::Demo(args) => {
            init_logging(LogFormat::Text, "info");
            runtime(None).block_on(scopegate::demo::run(args))
        }
    }
}

fn run_gateway(path: &std::path::Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(config.log.format, &config.log.level);
    let workers = config.server.worker_threads;
    let prepared = match run::prepare(config) {
        Ok(prepared) => prepared,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime(workers).block_on(run::serve(prepared, run::termination_signal(), |_| {}));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    let prepared = Config::load(path)
        .map_err(|e| e.to_string())
        .and_then(|config| {
            // Building the pipeline checks the rule set, TLS files and upstream.
            let _guard = runtime(Some(1)).enter();
            run::prepare(config)
        });
    match prepared {
        Ok(_) => {
            println!("{}: ok", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn runtime(workers: Option<usize>) -> tokio::runtime::Runtime {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        builder.worker_threads(n);
    }
    builder.enable_all().build().expect("a tokio runtime")
}

/// Dependencies stay at `warn` unless named explicitly: at `trace`, HTTP
/// libraries print raw header values, tokens included.
fn init_logging(format: LogFormat, level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|s| EnvFilter::try_new(s).ok())
        .unwrap_or_else(|| {
            EnvFilter::try_new(format!("warn,scopegate={level}"))
                .unwrap_or_else(|_| EnvFilter::new("warn,scopegate=info"))
        });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_writer(std::io::stdout);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

//! `spooky`: the daemon and its command line — `run`, `check`, `route`, `--version`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// mimalloc: a quarter less CPU per HTTP/2 request and a third less per HTTP/3 request than
/// glibc's malloc, and less than jemalloc (docs/performance.md). Its v2 line (the `v2`
/// feature), not v3: an idle TLS connection costs about half the RSS (docs/performance.md,
/// *Idle connections*). `--no-default-features` builds with the system allocator.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod admin;
mod check;
mod control;
mod diff;
mod dns;
mod exposition;
mod listeners;
mod membership;
mod notify;
mod reload;
mod restart;
mod route;
mod run;
mod status;
mod top;

/// Spooky: an HTTP/3-first edge proxy built as a pipeline of bounded stages.
#[derive(Parser)]
#[command(name = "spooky", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Same as `spooky run FILE`.
    file: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Plain, global = true)]
    log_format: LogFormat,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy on a pipeline file.
    Run { file: PathBuf },
    /// Check pipeline files and print every error and warning; exit 64 if any is invalid.
    Check {
        #[arg(required_unless_present = "diff")]
        files: Vec<PathBuf>,
        /// Check both files and print what changes from OLD to NEW (what a reload would do).
        #[arg(long, num_args = 2, value_names = ["OLD", "NEW"])]
        diff: Option<Vec<PathBuf>>,
    },
    /// Explain which route a request takes, what it does, and why other routes lost.
    Route {
        file: PathBuf,
        /// GET, POST, …
        method: String,
        /// The whole URL: https://api.example.com/path?query
        url: String,
        /// A request header, 'Name: value' (repeatable).
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// A cookie, name=value (repeatable).
        #[arg(long = "cookie")]
        cookies: Vec<String>,
        /// How the client comes.
        #[arg(long, value_enum, default_value_t = ProtocolArg::H3)]
        protocol: ProtocolArg,
        /// The TLS server name (default: the URL's host for https).
        #[arg(long)]
        sni: Option<String>,
        /// The client's address (client-ip keys).
        #[arg(long, default_value = "127.0.0.1")]
        client_ip: std::net::IpAddr,
    },
    /// A live view of a running instance: the stage chain and the backends, from its admin
    /// listener's /status (q quits).
    Top {
        /// The instance's admin listener.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: std::net::SocketAddr,
        /// A file holding the admin token (when the instance has one).
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
    /// Ask a running instance's /health; exit 0 when it answers ok (container health checks).
    Health {
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: std::net::SocketAddr,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ProtocolArg {
    H3,
    H2,
    Http1,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Plain,
    Json,
}

/// EX_USAGE from sysexits.h: the input was bad.
const EXIT_BAD_CONFIG: u8 = 64;
/// EX_SOFTWARE: the proxy could not start or failed while running.
const EXIT_FAILED: u8 = 70;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match (cli.command, cli.file) {
        (Some(Command::Check { files, diff }), _) => match diff {
            Some(pair) => check::diff(&pair[0], &pair[1]),
            None => check::check(&files),
        },
        (
            Some(Command::Route {
                file,
                method,
                url,
                headers,
                cookies,
                protocol,
                sni,
                client_ip,
            }),
            _,
        ) => {
            use spooky_stages::contract::exchange::ClientProtocol;
            let probe = route::Probe {
                method,
                url,
                headers,
                cookies,
                protocol: match protocol {
                    ProtocolArg::H3 => ClientProtocol::H3,
                    ProtocolArg::H2 => ClientProtocol::H2,
                    ProtocolArg::Http1 => ClientProtocol::Http1,
                },
                sni,
                client_ip,
            };
            route::route(&file, &probe)
        }
        (Some(Command::Top { admin, token_file }), _) => {
            let token = match token_file.map(std::fs::read_to_string).transpose() {
                Ok(t) => t.map(|t| t.trim().to_string()),
                Err(e) => {
                    eprintln!("spooky top: cannot read the token file: {e}");
                    return ExitCode::from(EXIT_BAD_CONFIG);
                }
            };
            match top::run(admin, token) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("spooky top: {e}");
                    ExitCode::from(EXIT_FAILED)
                }
            }
        }
        (Some(Command::Health { admin }), _) => match top::get(admin, "/health", None) {
            Ok((200, _)) => ExitCode::SUCCESS,
            Ok((status, body)) => {
                eprintln!("{admin}/health answered {status}: {}", body.trim());
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        (Some(Command::Run { file }), _) | (None, Some(file)) => run::run(&file),
        (None, None) => {
            eprintln!(
                "usage: spooky run FILE | spooky check FILE... | spooky route FILE METHOD URL | spooky top [--admin ADDR] | spooky --version"
            );
            ExitCode::from(EXIT_BAD_CONFIG)
        }
    }
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("SPOOKY_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Plain => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

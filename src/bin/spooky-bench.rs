//! `spooky-bench`: an HTTP/3 client for trying Spooky out and loading it.
//!
//! * `spooky-bench get https://127.0.0.1:8443/hello` — one request, prints status and body.
//! * `spooky-bench load --url https://127.0.0.1:8443/x --connections 8 --streams 16
//!   --duration 10s` — closed-loop load: each connection keeps `streams` requests in flight;
//!   prints req/s and p50/p90/p99/max latency. Bounded by `--duration` and `--max-requests`.

use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use http::{Request, Uri};
use spooky::h3client::{Error, H3Client, Trust};

#[derive(Parser)]
#[command(name = "spooky-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One GET; prints the status line, headers (with -i) and body.
    Get {
        url: String,
        /// Print response headers.
        #[arg(short = 'i', long)]
        include: bool,
    },
    /// Closed-loop HTTP/3 load.
    Load {
        #[arg(long)]
        url: String,
        #[arg(long, default_value_t = 4)]
        connections: usize,
        /// Requests in flight per connection.
        #[arg(long, default_value_t = 8)]
        streams: usize,
        /// How long to run, e.g. "10s".
        #[arg(long, default_value = "5s")]
        duration: String,
        /// Stop after this many requests in all.
        #[arg(long, default_value_t = 10_000_000)]
        max_requests: u64,
        /// Print one machine-readable line (`rps=… p50_us=… …`) instead of a table.
        #[arg(long)]
        machine: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Get { url, include } => get(&url, include).await,
            Command::Load {
                url,
                connections,
                streams,
                duration,
                max_requests,
                machine,
            } => {
                let d = spooky_stages::config::parse_duration(&duration).map_err(Error::from)?;
                load(&url, connections, streams, d, max_requests, machine).await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("spooky-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Address and TLS server name of an `https://host:port/...` URL.
fn target(url: &str) -> Result<(SocketAddr, String), Error> {
    let uri: Uri = url.parse()?;
    let host = uri
        .host()
        .ok_or("URL has no host")?
        .trim_matches(['[', ']'])
        .to_string();
    let port = uri.port_u16().unwrap_or(443);
    let addr = (host.as_str(), port)
        .to_socket_addrs()?
        .next()
        .ok_or("host does not resolve")?;
    Ok((addr, host))
}

async fn get(url: &str, include: bool) -> Result<(), Error> {
    let (addr, name) = target(url)?;
    let client = H3Client::new(Trust::Insecure)?;
    let conn = client.connect(addr, &name).await?;
    let resp = conn.get(url).await?;
    println!("HTTP/3 {}", resp.status);
    if include {
        for (k, v) in &resp.headers {
            println!("{k}: {}", v.to_str().unwrap_or("<binary>"));
        }
        println!();
    }
    print!("{}", String::from_utf8_lossy(&resp.body));
    conn.close();
    Ok(())
}

async fn load(
    url: &str,
    connections: usize,
    streams: usize,
    duration: Duration,
    max_requests: u64,
    machine: bool,
) -> Result<(), Error> {
    let (addr, name) = target(url)?;
    let client = H3Client::new(Trust::Insecure)?;
    let issued = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let mut conns = Vec::new();
    for _ in 0..connections {
        conns.push(Arc::new(client.connect(addr, &name).await?));
    }
    let start = Instant::now();
    for conn in &conns {
        for _ in 0..streams {
            let (conn, issued, stop, errors) =
                (conn.clone(), issued.clone(), stop.clone(), errors.clone());
            let url = url.to_string();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                while !stop.load(Ordering::Relaxed)
                    && issued.fetch_add(1, Ordering::Relaxed) < max_requests
                {
                    let t = Instant::now();
                    let Ok(req) = Request::get(url.as_str()).body(()) else {
                        break;
                    };
                    match conn.request(req, None).await {
                        Ok(r) if r.status.is_success() => lat.push(t.elapsed()),
                        _ => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                lat
            }));
        }
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await?);
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .map_or(0, |d| d.as_micros())
    };
    let rps = all.len() as f64 / elapsed;
    let errors = errors.load(Ordering::Relaxed);
    if machine {
        println!(
            "rps={rps:.0} ok={} errors={errors} p50_us={} p90_us={} p99_us={} max_us={}",
            all.len(),
            pct(0.5),
            pct(0.9),
            pct(0.99),
            all.last().map_or(0, |d| d.as_micros())
        );
    } else {
        println!(
            "requests: {} ok, {errors} errors in {elapsed:.2}s",
            all.len()
        );
        println!("req/s:    {rps:.0}");
        println!(
            "latency:  p50 {}µs  p90 {}µs  p99 {}µs  max {}µs",
            pct(0.5),
            pct(0.9),
            pct(0.99),
            all.last().map_or(0, |d| d.as_micros())
        );
    }
    for c in &conns {
        c.close();
    }
    Ok(())
}

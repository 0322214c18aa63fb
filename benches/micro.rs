//! Micro benchmarks: route lookup at 10 / 1 000 / 10 000 routes (hit and miss), each
//! balancing algorithm's pick at 3 / 100 / 1 000 backends, a stage hop through a channel
//! versus fused, and permit acquire/release.
//!
//! `cargo bench --bench micro` (add `-- --quick` for a short run).

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::{HeaderMap, Method, Request};
use spooky_stages::Pipeline;
use spooky_stages::config::{RouteConfig, parse};
use spooky_stages::contract::exchange::ClientProtocol;
use spooky_stages::contract::exchange::Exchange;
use spooky_stages::stages::route::{MatchConfig, OneOrMany, Req, RespondConfig, RouteIndex};
use spooky_stages::upstreams::balance::{Balancer, Loads, PeakEwma};
use spooky_stages::upstreams::config::Balance;
use spooky_sync::{Cap, try_acquire_all};

fn routes(n: usize) -> Vec<RouteConfig> {
    (0..n)
        .map(|i| RouteConfig {
            name: format!("r{i}"),
            matches: MatchConfig {
                host: match i % 3 {
                    0 => None,
                    1 => Some(OneOrMany::One(format!("h{}.example.com", i % 50))),
                    _ => Some(OneOrMany::One(format!("*.z{}.example.com", i % 20))),
                },
                path_prefix: Some(format!("/svc{}/v{}", i / 3, i % 7)),
                methods: if i % 2 == 0 {
                    vec!["GET".into()]
                } else {
                    vec![]
                },
                ..MatchConfig::default()
            },
            respond: Some(RespondConfig {
                status: 200,
                body: String::new(),
                content_type: "text/plain".into(),
                headers: Default::default(),
            }),
            ..RouteConfig::default()
        })
        .collect()
}

fn route_lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("route_lookup");
    let headers = HeaderMap::new();
    for n in [10usize, 1_000, 10_000] {
        let index = RouteIndex::build(&routes(n), &HashMap::new(), 16).expect("routes");
        for (label, hit) in [("hit", true), ("miss", false)] {
            let probes: Vec<(String, String)> = (0..64)
                .map(|i| {
                    let r = (i * 7919) % n;
                    let host = match r % 3 {
                        0 => "plain.example.org".to_string(),
                        1 => format!("h{}.example.com", r % 50),
                        _ => format!("a.b.z{}.example.com", r % 20),
                    };
                    let svc = if hit { r / 3 } else { n + r };
                    (host, format!("/svc{svc}/v{}/items/42", r % 7))
                })
                .collect();
            // Only host-less routes have "/svc…" for plain.example.org, and none has a
            // service number above n: misses walk every host group and every prefix.
            g.bench_with_input(BenchmarkId::new(label, n), &n, |b, _| {
                let mut i = 0;
                b.iter(|| {
                    let (h, p) = &probes[i % probes.len()];
                    i += 1;
                    let req = Req {
                        host: h,
                        path: p,
                        method: &Method::GET,
                        headers: &headers,
                        query: Some("x=1"),
                        protocol: ClientProtocol::H3,
                        sni: None,
                    };
                    black_box(index.lookup(&req).is_some())
                })
            });
        }
    }
    g.finish();
}

/// Each algorithm's pick over 3 / 100 / 1 000 idle backends.
fn balance_pick(c: &mut Criterion) {
    struct Idle(Vec<PeakEwma>);
    impl Loads for Idle {
        fn inflight(&self, _: usize) -> usize {
            0
        }
        fn latency(&self, i: usize) -> &PeakEwma {
            &self.0[i]
        }
    }
    let mut g = c.benchmark_group("balance_pick");
    for n in [3usize, 100, 1_000] {
        let names: Vec<String> = (0..n)
            .map(|i| format!("http://10.0.{}.{}:80", i / 250, i % 250))
            .collect();
        let members: Vec<(&str, u32, bool)> = names
            .iter()
            .enumerate()
            .map(|(i, s)| (s.as_str(), 1 + (i % 4) as u32, true))
            .collect();
        let loads = Idle((0..n).map(|_| PeakEwma::default()).collect());
        for algorithm in [
            Balance::RoundRobin,
            Balance::Random,
            Balance::LeastConnections,
            Balance::PowerOfTwo,
            Balance::LatencyAware,
            Balance::ConsistentHash,
        ] {
            let b = Balancer::new(algorithm, Balance::RoundRobin, &members);
            g.bench_with_input(BenchmarkId::new(algorithm.name(), n), &n, |bench, _| {
                let mut k = 0u64;
                bench.iter(|| {
                    k = k.wrapping_add(0x9e37_79b9_7f4a_7c15);
                    black_box(b.pick(&loads, Some(k)).next())
                })
            });
        }
    }
    g.finish();
}

/// A pipeline answering from a direct-response route; `route_queue` > 0 gives the route stage a
/// waiting room (its inlet's queue), 0 fuses it.
fn pipeline_toml(route_queue: usize) -> String {
    format!(
        r#"
[pipeline]
name = "bench"
chain = ["ingress", "admission", "route", "select", "dispatch", "egress"]
[[listeners]]
name = "l"
bind = "127.0.0.1:0"
[stages.route]
queue = {route_queue}
[stages.dispatch]
queue = 0
[[routes]]
name = "hello"
match = {{ path_prefix = "/" }}
respond = {{ status = 200, body = "hi" }}
"#
    )
}

fn stage_hop(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut g = c.benchmark_group("stage_hop");
    for (label, queue) in [("fused", 0usize), ("queued", 1024)] {
        g.bench_function(label, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let config = parse("bench.toml", &pipeline_toml(queue)).expect("config");
                    let pipeline = Pipeline::start(&config).expect("pipeline");
                    let start = Instant::now();
                    for i in 0..iters {
                        let (head, ()) = Request::get("https://bench.example/x")
                            .body(())
                            .expect("req")
                            .into_parts();
                        let mut ex = Exchange::detached(i, head);
                        ex.permits.drain = pipeline.drain().enter().ok();
                        let permit = pipeline.ingress_cap().acquire().await.expect("permit");
                        pipeline.clone().run(ex, permit).await;
                    }
                    // Every exchange has ended once the drain completes.
                    pipeline.drain().close();
                    pipeline.drain().wait().await;
                    start.elapsed()
                })
            })
        });
    }
    g.finish();
}

fn permits(c: &mut Criterion) {
    let mut g = c.benchmark_group("permit");
    let cap = Cap::new(1024);
    g.bench_function("try_acquire_release", |b| {
        b.iter(|| drop(black_box(cap.try_acquire())))
    });
    let (gl, up, be) = (Cap::new(4096), Cap::new(1024), Cap::new(256));
    g.bench_function("hierarchy_3_levels", |b| {
        b.iter(|| drop(black_box(try_acquire_all(&[&gl, &up, &be]))))
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    g.bench_function("async_acquire_release", |b| {
        b.iter(|| rt.block_on(async { drop(black_box(cap.acquire().await)) }))
    });
    g.finish();
}

/// 100 pipelined HTTP/1.1 requests (browser-sized GET heads, and small POSTs with fixed and
/// chunked bodies) read to the end plainly and through the framing guard.
fn h1_guard(c: &mut Criterion) {
    use tokio::io::AsyncReadExt;
    let get = "GET /assets/app.js?v=1234 HTTP/1.1\r\nHost: www.example.com\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/128.0\r\nAccept: */*\r\nAccept-Language: en-GB,en;q=0.5\r\nAccept-Encoding: gzip, deflate, br\r\nReferer: https://www.example.com/\r\nCookie: session=0123456789abcdef0123456789abcdef\r\n\r\n";
    let post = "POST /api/items HTTP/1.1\r\nHost: www.example.com\r\nContent-Type: application/json\r\nContent-Length: 27\r\n\r\n{\"name\":\"widget\",\"n\":42}\r\n";
    let chunked = "POST /api/upload HTTP/1.1\r\nHost: www.example.com\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n";
    let mut input = Vec::new();
    for i in 0..100 {
        input.extend_from_slice(match i % 10 {
            8 => post.as_bytes(),
            9 => chunked.as_bytes(),
            _ => get.as_bytes(),
        });
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut g = c.benchmark_group("h1_guard_100_requests");
    g.throughput(criterion::Throughput::Elements(100));
    async fn drain(mut r: impl tokio::io::AsyncRead + Unpin) -> usize {
        let mut buf = [0u8; 8192];
        let mut total = 0;
        while let Ok(n) = r.read(&mut buf).await {
            if n == 0 {
                break;
            }
            total += n;
        }
        total
    }
    g.bench_function("plain", |b| {
        b.iter(|| rt.block_on(async { black_box(drain(&input[..]).await) }))
    });
    g.bench_function("guarded", |b| {
        b.iter(|| {
            rt.block_on(async {
                // The guard writes too (a 408 on timeout): give it a sink to write to.
                let io = tokio::io::join(&input[..], tokio::io::sink());
                let guard =
                    spooky_stages::adapters::tcp::h1_guard::H1Guard::new(io, Default::default());
                black_box(drain(guard).await)
            })
        })
    });
    g.finish();
}

/// Path normalization on the request hot path: a path that needs nothing (borrowed, the
/// usual case) and one that needs every step.
fn path_normalize(c: &mut Criterion) {
    use spooky_stages::http::path::{Rules, normalize};
    let mut g = c.benchmark_group("path_normalize");
    for (name, path) in [
        ("normal", "/api/v1/users/12345/orders?limit=10"),
        (
            "walk_around",
            "/api//v1/./users/%31%32345/../12345/orders%7e",
        ),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| black_box(normalize(black_box(path), Rules::default()).is_ok()))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = route_lookup, balance_pick, stage_hop, permits, h1_guard, path_normalize
}
criterion_main!(benches);

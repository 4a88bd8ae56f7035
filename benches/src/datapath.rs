//! `strata-bench data-path`: the binary data path against its peers and limits,
//! every comparison in one invocation, closed loop, rounds in a rotating order.
//!
//! - TCP GET (256 KiB, 1 MiB, 4 MiB; 1 and 2 connections) vs Redis GET, limit: a
//!   raw TCP request/response of the same size; and vs the gRPC Get of the same
//!   server, to show what the data path buys.
//! - 4 KiB GET latency vs Redis and the raw TCP round trip.
//! - MGET of 32 × 256 KiB (TCP and shared memory) vs Redis MGET, limit: one raw TCP
//!   response of the same 8 MiB.
//! - Shared-memory GET of 1 MiB vs a Unix-socket request/response, limit: a
//!   single-thread memcpy of the same bytes into a fresh buffer.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, ensure};
use bytes::Bytes;
use clap::Args;
use strata_server::config::{DataConfig, OriginKindConfig, OriginSection, ServerConfig};
use strata_server::{ByteSize, Config, Server};
use strata_tiers::Key;
use strata_transport::data::{CarrierChoice, DataClient, DataEndpoint, DataOptions};
use strata_transport::{Client, ClientOptions};
use tokio::net::{TcpStream, UnixStream};

use crate::load::{Getter, Series, run_closed_loop};
use crate::rawtcp::{RawConn, RawServer, RawUnixServer};
use crate::redis::RedisServer;
use crate::report::{Row, size_label};
use crate::resp::RespConn;
use crate::{pattern, runtime};

/// Settings of `strata-bench data-path`.
#[derive(Debug, Args)]
pub struct DataArgs {
    /// GET value sizes, comma-separated.
    #[arg(long, default_value = "256KiB,1MiB,4MiB", value_delimiter = ',', value_parser = parse_size)]
    pub sizes: Vec<u64>,
    /// Connection counts, comma-separated (each client has its own connection).
    #[arg(long, default_value = "1,2", value_delimiter = ',')]
    pub clients: Vec<usize>,
    /// Measured seconds per system per round.
    #[arg(long, default_value_t = 2.0)]
    pub duration: f64,
    /// Unmeasured warm-up seconds before each measured window.
    #[arg(long, default_value_t = 0.5)]
    pub warmup: f64,
    /// Rounds (throughput is the median over rounds; latencies pool all rounds).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Which comparisons to run: tcp, small, mget, shm (comma-separated).
    #[arg(long, default_value = "tcp,small,mget,shm", value_delimiter = ',')]
    pub only: Vec<String>,
    /// Microseconds Strata's server polls a connection for its next request before it
    /// parks (`data.poll_us`); 0, the default, parks at once.
    #[arg(long, default_value_t = 0)]
    pub server_poll_us: u64,
}

fn parse_size(s: &str) -> Result<u64, String> {
    ByteSize::parse(s).map(|b| b.0)
}

/// One client of any system under test.
enum AnyGetter {
    Data(DataClient, Key, usize),
    DataMget(DataClient, Vec<Key>, usize),
    Grpc(Box<Client>, Key, usize),
    Redis(RespConn, Vec<u8>, usize),
    RedisMget(RespConn, Vec<Vec<u8>>, usize),
    RawTcp(RawConn<TcpStream>, usize),
    RawUnix(RawConn<UnixStream>, usize),
    /// Copies one of `src` (rotating, so the source is cold) into a fresh buffer.
    Memcpy(Arc<Vec<Bytes>>, usize),
}

impl Getter for AnyGetter {
    async fn get(&mut self) -> anyhow::Result<usize> {
        let n = match self {
            AnyGetter::Data(c, k, len) => {
                let v = c.get(k).await?.context("strata: value missing")?;
                ensure!(v.len() == *len, "strata returned {} bytes", v.len());
                v.len()
            }
            AnyGetter::DataMget(c, keys, total) => {
                let vs = c.mget(keys).await?;
                let n: usize = vs.iter().map(|v| v.as_ref().map_or(0, Bytes::len)).sum();
                ensure!(n == *total, "strata MGET returned {n} bytes");
                n
            }
            AnyGetter::Grpc(c, k, len) => {
                let (_, v) = c
                    .get_range(k, 0, None)
                    .await?
                    .context("strata: value missing")?;
                ensure!(v.len() == *len, "strata returned {} bytes", v.len());
                v.len()
            }
            AnyGetter::Redis(c, k, len) => {
                let v = c.get(k).await?.context("redis: nil")?;
                ensure!(v.len() == *len, "redis returned {} bytes", v.len());
                v.len()
            }
            AnyGetter::RedisMget(c, keys, total) => {
                let ks: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
                let vs = c.mget(&ks).await?;
                let n: usize = vs.iter().map(|v| v.as_ref().map_or(0, Bytes::len)).sum();
                ensure!(n == *total, "redis MGET returned {n} bytes");
                n
            }
            AnyGetter::RawTcp(c, len) => c.get(*len).await?.len(),
            AnyGetter::RawUnix(c, len) => c.get(*len).await?.len(),
            AnyGetter::Memcpy(src, i) => {
                *i = (*i + 1) % src.len();
                let s = &src[*i];
                let mut v = Vec::<u8>::with_capacity(s.len());
                v.extend_from_slice(s);
                std::hint::black_box(&v);
                v.len()
            }
        };
        Ok(n)
    }
}

/// How to open one client of a system.
type Opener<'a> =
    Box<dyn Fn() -> std::pin::Pin<Box<dyn Future<Output = anyhow::Result<AnyGetter>> + 'a>> + 'a>;

struct Bench<'a> {
    rt: &'a tokio::runtime::Runtime,
    warm: Duration,
    dur: Duration,
    rounds: usize,
}

impl Bench<'_> {
    /// Runs every system with `clients` clients, `rounds` times in a rotating order;
    /// returns one series per system.
    fn compare(
        &self,
        label: &str,
        clients: usize,
        systems: &[(&str, Opener<'_>)],
    ) -> anyhow::Result<Vec<Series>> {
        let mut out: Vec<Series> = systems.iter().map(|_| Series::new()).collect();
        for round in 0..self.rounds {
            for turn in 0..systems.len() {
                let which = (round + turn) % systems.len();
                let (name, open) = &systems[which];
                let r = self.rt.block_on(async {
                    let mut cs = Vec::with_capacity(clients);
                    for _ in 0..clients {
                        cs.push(open().await?);
                    }
                    run_closed_loop(cs, self.warm, self.dur).await
                })?;
                eprintln!(
                    "  round {} {label}, {name:>12}: {:.2} GB/s, {} requests, p50 {:.1} µs, p99 {:.1} µs",
                    round + 1,
                    r.gbps(),
                    r.requests,
                    r.latency.value_at_quantile(0.5) as f64 / 1e3,
                    r.latency.value_at_quantile(0.99) as f64 / 1e3
                );
                out[which].add(&r)?;
            }
        }
        Ok(out)
    }
}

/// Runs the whole comparison and prints its table.
pub fn run(a: &DataArgs) -> anyhow::Result<()> {
    ensure!(
        a.rounds > 0 && !a.clients.is_empty(),
        "--rounds and --clients must be positive"
    );
    let server_rt = runtime(2, "strata-server")?;
    let rt = runtime(2, "bench-client")?;
    let dir = tempfile::tempdir()?;
    let shm_socket = dir.path().join("strata.sock");
    let max = a
        .sizes
        .iter()
        .copied()
        .max()
        .unwrap_or(1 << 20)
        .max(1 << 20);
    let config = Config {
        server: ServerConfig {
            listen: "127.0.0.1:0".into(),
            metrics_listen: "127.0.0.1:0".into(),
            ..ServerConfig::default()
        },
        data: DataConfig {
            listen: "127.0.0.1:0".into(),
            shm_socket: Some(shm_socket.clone()),
            poll_us: a.server_poll_us,
            ..DataConfig::default()
        },
        data_dir: dir.path().to_owned(),
        dram: strata_tiers::DramConfig {
            capacity: a.sizes.iter().sum::<u64>() * 2 + (128 << 20),
            ..strata_tiers::DramConfig::default()
        },
        nvme: strata_tiers::NvmeConfig {
            enabled: false,
            ..strata_tiers::NvmeConfig::default()
        },
        origin: OriginSection {
            kind: OriginKindConfig::None,
            ..OriginSection::default()
        },
        ..Config::default()
    };
    config.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    let running = server_rt.block_on(Server::start(config))?;
    let grpc_addr = running.addr.to_string();
    let data_addr = running.data_addr.context("no data listener")?.to_string();
    let mget_len = 256usize << 10;
    let mget_n = 32usize;
    let raw = server_rt.block_on(RawServer::start(Bytes::from(pattern(
        max.max((mget_n * mget_len) as u64) as usize,
        7,
    ))))?;
    let raw_unix = server_rt.block_on(RawUnixServer::start(
        &dir.path().join("raw.sock"),
        Bytes::from(pattern(max as usize, 8)),
    ))?;
    let redis = rt.block_on(RedisServer::start())?;
    println!(
        "data-path: strata data {data_addr} / shm {} / gRPC {grpc_addr} (DRAM tier; the server polls {} µs); {}; raw TCP on {}, raw Unix on {}; {} s measured + {} s warm-up per system, {} rounds",
        shm_socket.display(),
        a.server_poll_us,
        redis.version(),
        raw.addr(),
        raw_unix.path().display(),
        a.duration,
        a.warmup,
        a.rounds
    );

    // The values, in Strata and in Redis.
    let key = |name: &str| Key::new("kv", "bench", name);
    let mut all_sizes = a.sizes.clone();
    all_sizes.push(4096);
    let mget_keys: Vec<Key> = (0..mget_n)
        .map(|i| key(&format!("mget-{i}")))
        .collect::<Result<_, _>>()?;
    let mget_rkeys: Vec<Vec<u8>> = (0..mget_n)
        .map(|i| format!("bench:mget-{i}").into_bytes())
        .collect();
    rt.block_on(async {
        let c = Client::connect(&grpc_addr, ClientOptions::default()).await?;
        let mut r = RespConn::connect(redis.addr()).await?;
        for &s in &all_sizes {
            let v = Bytes::from(pattern(s as usize, s));
            c.put(&key(&format!("v-{s}"))?, v.clone()).await?;
            r.set(format!("bench:v-{s}").as_bytes(), &v).await?;
        }
        for i in 0..mget_n {
            let v = Bytes::from(pattern(mget_len, i as u64));
            c.put(&mget_keys[i], v.clone()).await?;
            r.set(&mget_rkeys[i], &v).await?;
        }
        anyhow::Ok(())
    })?;

    let tcp_ep = DataEndpoint {
        tcp: Some(data_addr.clone()),
        ..DataEndpoint::default()
    };
    let shm_ep = DataEndpoint {
        unix: Some(shm_socket.clone()),
        ..DataEndpoint::default()
    };
    let opts = |carrier| DataOptions {
        carrier,
        connections: 1,
        ..DataOptions::default()
    };
    let data_client = |ep: &DataEndpoint, carrier| {
        let ep = ep.clone();
        async move { anyhow::Ok(DataClient::connect(ep, opts(carrier)).await?) }
    };
    let b = Bench {
        rt: &rt,
        warm: Duration::from_secs_f64(a.warmup),
        dur: Duration::from_secs_f64(a.duration),
        rounds: a.rounds,
    };
    let mut rows = Vec::new();

    let on = |s: &str| a.only.iter().any(|o| o == s);
    // TCP GET vs Redis vs raw TCP vs gRPC.
    for &size in a.sizes.iter().filter(|_| on("tcp")) {
        let len = size as usize;
        let k = key(&format!("v-{size}"))?;
        let rk = format!("bench:v-{size}").into_bytes();
        for &clients in &a.clients {
            let systems: Vec<(&str, Opener<'_>)> = vec![
                (
                    "strata-tcp",
                    Box::new(|| {
                        Box::pin({
                            let (k, f) = (k.clone(), data_client(&tcp_ep, CarrierChoice::Tcp));
                            async move { Ok(AnyGetter::Data(f.await?, k, len)) }
                        })
                    }),
                ),
                (
                    "redis",
                    Box::new(|| {
                        Box::pin({
                            let (rk, addr) = (rk.clone(), redis.addr().to_owned());
                            async move { Ok(AnyGetter::Redis(RespConn::connect(&addr).await?, rk, len)) }
                        })
                    }),
                ),
                (
                    "raw-tcp",
                    Box::new(|| {
                        Box::pin({
                            let addr = raw.addr();
                            async move { Ok(AnyGetter::RawTcp(RawConn::connect(addr).await?, len)) }
                        })
                    }),
                ),
                (
                    "strata-grpc",
                    Box::new(|| {
                        Box::pin({
                            let (k, addr) = (k.clone(), grpc_addr.clone());
                            async move {
                                let c = Client::connect(
                                    &addr,
                                    ClientOptions {
                                        data_path: false,
                                        ..ClientOptions::default()
                                    },
                                )
                                .await?;
                                Ok(AnyGetter::Grpc(Box::new(c), k, len))
                            }
                        })
                    }),
                ),
            ];
            let s = b.compare(
                &format!("GET {} × {clients}", size_label(size)),
                clients,
                &systems,
            )?;
            let case = format!("{}, {clients} conn", size_label(size));
            rows.push(Row {
                bench: "data-path TCP GET vs Redis GET (limit: raw TCP req/resp)".into(),
                case: case.clone(),
                ours: s[0].measure(),
                peer: Some(s[1].measure()),
                limit: Some(s[2].measure()),
            });
            rows.push(Row {
                bench: "data-path TCP GET vs gRPC Get, same server (limit: raw TCP)".into(),
                case,
                ours: s[0].measure(),
                peer: Some(s[3].measure()),
                limit: Some(s[2].measure()),
            });
        }
    }

    // 4 KiB latency.
    if on("small") {
        let k = key("v-4096")?;
        let systems: Vec<(&str, Opener<'_>)> = vec![
            (
                "strata-tcp",
                Box::new(|| {
                    Box::pin({
                        let (k, f) = (k.clone(), data_client(&tcp_ep, CarrierChoice::Tcp));
                        async move { Ok(AnyGetter::Data(f.await?, k, 4096)) }
                    })
                }),
            ),
            (
                "redis",
                Box::new(|| {
                    Box::pin({
                        let addr = redis.addr().to_owned();
                        async move {
                            Ok(AnyGetter::Redis(
                                RespConn::connect(&addr).await?,
                                b"bench:v-4096".to_vec(),
                                4096,
                            ))
                        }
                    })
                }),
            ),
            (
                "raw-tcp",
                Box::new(|| {
                    Box::pin({
                        let addr = raw.addr();
                        async move { Ok(AnyGetter::RawTcp(RawConn::connect(addr).await?, 4096)) }
                    })
                }),
            ),
        ];
        let s = b.compare("GET 4 KiB × 1", 1, &systems)?;
        rows.push(Row {
            bench: "4 KiB TCP GET latency vs Redis (limit: raw TCP round trip)".into(),
            case: "4 KiB, 1 conn".into(),
            ours: s[0].measure(),
            peer: Some(s[1].measure()),
            limit: Some(s[2].measure()),
        });
    }

    // MGET 32 × 256 KiB.
    if on("mget") {
        let total = mget_n * mget_len;
        let systems: Vec<(&str, Opener<'_>)> = vec![
            (
                "strata-tcp",
                Box::new(|| {
                    Box::pin({
                        let (ks, f) = (mget_keys.clone(), data_client(&tcp_ep, CarrierChoice::Tcp));
                        async move { Ok(AnyGetter::DataMget(f.await?, ks, total)) }
                    })
                }),
            ),
            (
                "strata-shm",
                Box::new(|| {
                    Box::pin({
                        let (ks, f) = (mget_keys.clone(), data_client(&shm_ep, CarrierChoice::Shm));
                        async move { Ok(AnyGetter::DataMget(f.await?, ks, total)) }
                    })
                }),
            ),
            (
                "redis",
                Box::new(|| {
                    Box::pin({
                        let (rks, addr) = (mget_rkeys.clone(), redis.addr().to_owned());
                        async move {
                            Ok(AnyGetter::RedisMget(
                                RespConn::connect(&addr).await?,
                                rks,
                                total,
                            ))
                        }
                    })
                }),
            ),
            (
                "raw-tcp",
                Box::new(|| {
                    Box::pin({
                        let addr = raw.addr();
                        async move { Ok(AnyGetter::RawTcp(RawConn::connect(addr).await?, total)) }
                    })
                }),
            ),
        ];
        let s = b.compare("MGET 32 × 256 KiB × 1", 1, &systems)?;
        for (i, carrier) in [(0, "TCP"), (1, "shm")] {
            rows.push(Row {
                bench: format!(
                    "MGET 32 × 256 KiB over {carrier} vs Redis MGET (limit: raw TCP 8 MiB)"
                ),
                case: "8 MiB, 1 conn".into(),
                ours: s[i].measure(),
                peer: Some(s[2].measure()),
                limit: Some(s[3].measure()),
            });
        }
    }

    // Shared-memory GET of 1 MiB.
    if on("shm") {
        let len = 1usize << 20;
        let k = key(&format!("v-{len}"))?;
        // 64 distinct sources (64 MiB), so the memcpy reads cold memory as the
        // shared-memory copy does from the arena.
        let src: Arc<Vec<Bytes>> =
            Arc::new((0..64).map(|i| Bytes::from(pattern(len, i))).collect());
        let systems: Vec<(&str, Opener<'_>)> = vec![
            (
                "strata-shm",
                Box::new(|| {
                    Box::pin({
                        let (k, f) = (k.clone(), data_client(&shm_ep, CarrierChoice::Shm));
                        async move { Ok(AnyGetter::Data(f.await?, k, len)) }
                    })
                }),
            ),
            (
                "unix-socket",
                Box::new(|| {
                    Box::pin({
                        let p = raw_unix.path().to_owned();
                        async move { Ok(AnyGetter::RawUnix(RawConn::connect_unix(&p).await?, len)) }
                    })
                }),
            ),
            (
                "memcpy",
                Box::new(|| {
                    Box::pin({
                        let src = src.clone();
                        async move { Ok(AnyGetter::Memcpy(src, 0)) }
                    })
                }),
            ),
        ];
        let s = b.compare("shm GET 1 MiB × 1", 1, &systems)?;
        rows.push(Row {
            bench: "shm GET vs Unix-socket req/resp (limit: memcpy into a fresh buffer)".into(),
            case: "1 MiB, 1 client".into(),
            ours: s[0].measure(),
            peer: Some(s[1].measure()),
            limit: Some(s[2].measure()),
        });
    }

    println!();
    println!("{}", Row::header());
    for r in &rows {
        println!("{}", r.markdown());
    }
    drop(raw);
    drop(raw_unix);
    drop(redis);
    server_rt.block_on(running.shutdown())?;
    Ok(())
}

//! The KV connector end to end: a simulated engine shaped like Llama-3.1-8B (32
//! layers, 8 KV heads of 128, bf16) replays a seeded multi-turn chat trace through
//! the connector with Strata (shm, TCP), with Redis behind the same `ChunkStore`
//! interface (as LMCache uses it: `EXISTS` per chunk to match, `GETRANGE`/`SET`),
//! and with no connector; then times the load of a 4k-token prefix hit per carrier
//! against the carrier's limit, measured in the same run.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, ensure};
use bytes::Bytes;
use clap::Args;
use futures::future::BoxFuture;
use strata_kv_connector::sim::{ChatShape, ChatTrace, SimEngine, llama_8b};
use strata_kv_connector::{ChunkStore, ReadUnit, WorkerConfig};
use strata_server::Server;
use strata_server::config::{Config, DataConfig, ServerConfig};
use strata_tiers::Key;
use strata_transport::data::{CarrierChoice, DataOptions};
use strata_transport::{Client, ClientOptions};

use crate::rawtcp::{RawConn, RawServer};
use crate::redis::RedisServer;
use crate::report::median;
use crate::resp::RespConn;
use crate::{pattern, runtime};

/// `strata-bench kv-connector` arguments.
#[derive(Debug, Args)]
pub struct KvArgs {
    /// Tokens of the prefix hit whose load is timed.
    #[arg(long, default_value_t = 4096)]
    pub prefix_tokens: usize,
    /// Rounds of the prefix load (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Conversations in the chat trace.
    #[arg(long, default_value_t = 6)]
    pub conversations: usize,
    /// Turns per conversation.
    #[arg(long, default_value_t = 3)]
    pub turns: usize,
    /// Skip the chat-trace replay (prefix loads only).
    #[arg(long)]
    pub no_trace: bool,
    /// Reads in flight per prefix load (the worker's `load_window`).
    #[arg(long, default_value_t = WorkerConfig::default().load_window)]
    pub load_window: usize,
    /// Microseconds the server polls a data connection for its next request before
    /// it parks (`data.poll_us`); 0, the default, parks at once.
    #[arg(long, default_value_t = 0)]
    pub server_poll_us: u64,
}

const CHUNK: usize = 256;
const BLOCK: usize = 16;
const PER_TOKEN: u64 = 32 * 2 * 8 * 128 * 2;
/// Llama-3.1-8B's parameters: prefill costs about 2 FLOPs per parameter per token.
const PARAMS: f64 = 8.03e9;

/// Redis as a chunk store, the way LMCache's Redis backend uses it.
struct RedisStore {
    conns: Vec<tokio::sync::Mutex<RespConn>>,
    next: AtomicUsize,
}

impl RedisStore {
    async fn conn(&self) -> tokio::sync::MutexGuard<'_, RespConn> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
        self.conns[i].lock().await
    }
}

fn store_err(e: anyhow::Error) -> strata_kv_connector::Error {
    strata_kv_connector::Error::Store(format!("{e:#}"))
}

impl ChunkStore for RedisStore {
    fn match_prefix<'a>(
        &'a self,
        keys: &'a [Key],
    ) -> BoxFuture<'a, strata_kv_connector::Result<usize>> {
        Box::pin(async move {
            let mut c = self.conn().await;
            let mut n = 0;
            for k in keys {
                if !c.exists(k.as_bytes()).await.map_err(store_err)? {
                    break;
                }
                n += 1;
            }
            Ok(n)
        })
    }

    fn get_range<'a>(
        &'a self,
        key: &'a Key,
        offset: u64,
        len: u64,
    ) -> BoxFuture<'a, strata_kv_connector::Result<Option<Bytes>>> {
        Box::pin(async move {
            let mut c = self.conn().await;
            c.getrange(key.as_bytes(), offset, offset + len - 1)
                .await
                .map_err(store_err)
        })
    }

    fn put<'a>(
        &'a self,
        key: &'a Key,
        value: Bytes,
    ) -> BoxFuture<'a, strata_kv_connector::Result<()>> {
        Box::pin(async move {
            let mut c = self.conn().await;
            c.set(key.as_bytes(), &value).await.map_err(store_err)
        })
    }

    fn name(&self) -> String {
        "redis".into()
    }
}

/// No connector: every match misses, saves go nowhere.
struct NoStore;

impl ChunkStore for NoStore {
    fn match_prefix<'a>(
        &'a self,
        _: &'a [Key],
    ) -> BoxFuture<'a, strata_kv_connector::Result<usize>> {
        Box::pin(async { Ok(0) })
    }
    fn get_range<'a>(
        &'a self,
        _: &'a Key,
        _: u64,
        _: u64,
    ) -> BoxFuture<'a, strata_kv_connector::Result<Option<Bytes>>> {
        Box::pin(async { Ok(None) })
    }
    fn put<'a>(&'a self, _: &'a Key, _: Bytes) -> BoxFuture<'a, strata_kv_connector::Result<()>> {
        Box::pin(async { Ok(()) })
    }
    fn name(&self) -> String {
        "none".into()
    }
}

/// Runs the benchmark and prints markdown tables.
pub fn run(a: &KvArgs) -> anyhow::Result<()> {
    ensure!(
        a.rounds > 0 && a.prefix_tokens >= CHUNK,
        "--rounds > 0 and --prefix-tokens >= {CHUNK}"
    );
    let server_rt = runtime(2, "strata-server")?;
    let rt = runtime(2, "kv-connector")?;
    let dir = tempfile::tempdir()?;
    let config = Config {
        server: ServerConfig {
            listen: "127.0.0.1:0".into(),
            metrics_listen: "127.0.0.1:0".into(),
            ..ServerConfig::default()
        },
        data: DataConfig {
            listen: "127.0.0.1:0".into(),
            shm_socket: Some(dir.path().join("strata.sock")),
            poll_us: a.server_poll_us,
            ..DataConfig::default()
        },
        data_dir: dir.path().to_owned(),
        dram: strata_tiers::DramConfig {
            capacity: 6 << 30,
            ..strata_tiers::DramConfig::default()
        },
        nvme: strata_tiers::NvmeConfig {
            enabled: false,
            ..strata_tiers::NvmeConfig::default()
        },
        ..Config::default()
    };
    let running = server_rt.block_on(Server::start(config))?;
    let redis = rt.block_on(RedisServer::start())?;
    let addr = running.addr.to_string();
    let connections = DataOptions::default().connections;
    let strata = |carrier| -> anyhow::Result<Arc<dyn ChunkStore>> {
        let options = ClientOptions {
            data: DataOptions {
                carrier,
                ..DataOptions::default()
            },
            ..ClientOptions::default()
        };
        Ok(Arc::new(rt.block_on(Client::connect(&addr, options))?))
    };
    let redis_store = || -> anyhow::Result<Arc<dyn ChunkStore>> {
        let conns = (0..connections)
            .map(|_| {
                rt.block_on(RespConn::connect(redis.addr()))
                    .map(tokio::sync::Mutex::new)
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Arc::new(RedisStore {
            conns,
            next: AtomicUsize::new(0),
        }))
    };
    println!(
        "kv-connector: Llama-3.1-8B KV shape (32 layers, 8 KV heads x 128, bf16, {} KiB/token), chunks of {CHUNK} tokens, blocks of {BLOCK}; strata DRAM tier; {}; {connections} connections each",
        PER_TOKEN >> 10,
        redis.version()
    );

    // 1. The chat trace, per store.
    if !a.no_trace {
        let trace = ChatTrace::new(&ChatShape {
            seed: 42,
            system_prompts: 2,
            system_tokens: 1024,
            conversations: a.conversations,
            turns: a.turns,
            user_tokens: (64, 512),
            reply_tokens: (64, 256),
        });
        let total: usize = trace.requests.iter().map(|(_, t)| t.len()).sum();
        let longest = trace.longest();
        println!(
            "\n### Chat trace: {} requests, {} prompt tokens (longest {longest}), seed 42\n",
            trace.requests.len(),
            total
        );
        println!("| store | hit rate | KV loaded | est. prefill saved | load wait | wall |");
        println!("| --- | --- | --- | --- | --- | --- |");
        let stores: Vec<(&str, Arc<dyn ChunkStore>)> = vec![
            ("strata shm", strata(CarrierChoice::Shm)?),
            ("strata tcp", strata(CarrierChoice::Tcp)?),
            ("redis (LMCache-style)", redis_store()?),
            ("no connector", Arc::new(NoStore)),
        ];
        for (i, (name, store)) in stores.into_iter().enumerate() {
            let mut fp = llama_8b();
            fp.cache_salt = Some(format!("trace-run-{i}"));
            let mut e = SimEngine::new(
                fp,
                CHUNK,
                BLOCK,
                longest.div_ceil(BLOCK) * 3,
                store,
                rt.handle().clone(),
                WorkerConfig::default(),
                true,
            )?;
            let t = Instant::now();
            let (mut hit, mut wait) = (0usize, 0f64);
            for (id, tokens) in &trace.requests {
                let r = e.run(id, tokens)?;
                ensure!(
                    r.failed_blocks == 0,
                    "{name}: {} blocks failed to load",
                    r.failed_blocks
                );
                hit += r.hit_tokens;
                wait += r.load_wait.as_secs_f64();
            }
            e.drain();
            let wall = t.elapsed().as_secs_f64();
            let flops = 2.0 * PARAMS * hit as f64;
            println!(
                "| {name} | {:.1}% ({hit} of {total} tokens) | {:.2} GiB | {:.1} TFLOP ({:.0} ms at 400 TFLOP/s) | {:.0} ms | {:.1} s |",
                100.0 * hit as f64 / total as f64,
                (hit as u64 * PER_TOKEN) as f64 / (1u64 << 30) as f64,
                flops / 1e12,
                flops / 400e12 * 1e3,
                wait * 1e3,
                wall
            );
        }
    }

    // 2. A prefix hit of `prefix_tokens`, loaded into a fresh engine, per carrier.
    let n = a.prefix_tokens / CHUNK * CHUNK;
    let tokens: Vec<u32> = (0..(n + BLOCK) as u32)
        .map(|i| (i * 7919) % 128_000)
        .collect();
    let bytes = n as u64 * PER_TOKEN;
    // The limits, same run: raw TCP request/response of one layer slice (1 MiB) on
    // as many connections as the client pools; a single-thread memcpy for shm.
    let slice = (PER_TOKEN as usize / 32) * CHUNK;
    let raw = server_rt.block_on(RawServer::start(Bytes::from(pattern(slice, 3))))?;
    let raw_gbps = |rounds: usize| -> anyhow::Result<f64> {
        let mut v = Vec::new();
        for _ in 0..rounds {
            let per_conn = (bytes as usize / slice).div_ceil(connections);
            let t = Instant::now();
            rt.block_on(async {
                let mut tasks = Vec::new();
                for _ in 0..connections {
                    let addr = raw.addr();
                    tasks.push(tokio::spawn(async move {
                        let mut c = RawConn::connect(addr).await?;
                        for _ in 0..per_conn {
                            std::hint::black_box(c.get(slice).await?);
                        }
                        anyhow::Ok(())
                    }));
                }
                for t in tasks {
                    t.await??;
                }
                anyhow::Ok(())
            })?;
            v.push(bytes as f64 / t.elapsed().as_secs_f64() / 1e9);
        }
        Ok(median(&v))
    };
    let memcpy_gbps = |rounds: usize| -> f64 {
        let src = pattern(bytes as usize, 5);
        let mut v = Vec::new();
        for _ in 0..rounds {
            let t = Instant::now();
            let dst: Vec<u8> = std::hint::black_box(src.clone());
            let s = t.elapsed().as_secs_f64();
            drop(dst);
            v.push(bytes as f64 / s / 1e9);
        }
        median(&v)
    };
    println!(
        "\n### {n}-token prefix hit ({:.0} MiB of KV) loaded into a fresh engine, {} rounds (medians)\n",
        bytes as f64 / (1 << 20) as f64,
        a.rounds
    );
    println!(
        "| store | read unit | lanes | load time | GB/s | limit | limit GB/s | bytes / limit | ratio (time / ideal) |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let tcp_limit = raw_gbps(a.rounds)?;
    let shm_limit = memcpy_gbps(a.rounds);
    type Case<'a> = (&'a str, Arc<dyn ChunkStore>, ReadUnit, usize, &'a str, f64);
    let shm = strata(CarrierChoice::Shm)?;
    let tcp = strata(CarrierChoice::Tcp)?;
    let cases: Vec<Case> = vec![
        (
            "strata shm",
            shm.clone(),
            ReadUnit::Layer,
            2,
            "memcpy",
            shm_limit,
        ),
        (
            "strata shm",
            shm.clone(),
            ReadUnit::Layer,
            1,
            "memcpy",
            shm_limit,
        ),
        ("strata shm", shm, ReadUnit::Chunk, 2, "memcpy", shm_limit),
        (
            "strata tcp",
            tcp.clone(),
            ReadUnit::Layer,
            2,
            "raw TCP",
            tcp_limit,
        ),
        (
            "strata tcp",
            tcp.clone(),
            ReadUnit::Layer,
            1,
            "raw TCP",
            tcp_limit,
        ),
        ("strata tcp", tcp, ReadUnit::Chunk, 2, "raw TCP", tcp_limit),
        (
            "redis (LMCache-style)",
            redis_store()?,
            ReadUnit::Layer,
            2,
            "raw TCP",
            tcp_limit,
        ),
    ];
    for (name, store, unit, lanes, limit_name, limit) in cases {
        let mut fp = llama_8b();
        fp.cache_salt = Some(format!("prefix-{name}-{unit:?}-{lanes}"));
        let blocks = tokens.len().div_ceil(BLOCK) + 1;
        // Fill: one engine computes and saves the prefix.
        let mut writer = SimEngine::new(
            fp.clone(),
            CHUNK,
            BLOCK,
            blocks,
            store.clone(),
            rt.handle().clone(),
            WorkerConfig::default(),
            true,
        )?;
        writer.run("writer", &tokens)?;
        writer.drain();
        drop(writer);
        let config = WorkerConfig {
            read_unit: unit,
            load_lanes: lanes,
            load_window: a.load_window,
            ..WorkerConfig::default()
        };
        let mut reader = SimEngine::new(
            fp,
            CHUNK,
            BLOCK,
            blocks,
            store.clone(),
            rt.handle().clone(),
            config,
            false,
        )?;
        let mut times = Vec::new();
        for r in 0..a.rounds {
            let t = Instant::now();
            let rep = reader.run(&format!("reader-{r}"), &tokens)?;
            times.push(t.elapsed().as_secs_f64());
            ensure!(
                rep.hit_tokens == n && rep.failed_blocks == 0,
                "{name}: hit {} of {n}, {} failed blocks",
                rep.hit_tokens,
                rep.failed_blocks
            );
        }
        let secs = median(&times);
        let gbps = bytes as f64 / secs / 1e9;
        let ideal = bytes as f64 / (limit * 1e9);
        println!(
            "| {name} | {unit:?} | {lanes} | {:.0} ms | {gbps:.2} | {limit_name} | {limit:.2} | {:.0} ms | {:.2}x |",
            secs * 1e3,
            ideal * 1e3,
            secs / ideal
        );
    }
    drop(raw);
    server_rt
        .block_on(running.shutdown())
        .context("server shutdown")?;
    Ok(())
}

//! A simulated engine (Llama-3.1-8B's KV shape) replays a seeded multi-turn chat
//! trace through the KV connector against an embedded Strata server, and prints the
//! hit rate and what it saved.
//!
//! ```text
//! cargo run --release -p strata-kv-connector --example chat_replay -- [conversations] [turns]
//! ```
//!
//! The full comparison (Redis behind the same interface, no connector, 4k-prefix
//! loads per carrier) is `strata-bench kv-connector`.

use std::sync::Arc;
use std::time::Instant;

use strata_kv_connector::sim::{ChatShape, ChatTrace, SimEngine, llama_8b};
use strata_kv_connector::{ChunkStore, WorkerConfig};
use strata_server::Server;
use strata_server::config::Config;
use strata_transport::{Client, ClientOptions};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>());
    let conversations = args.next().transpose()?.unwrap_or(4);
    let turns = args.next().transpose()?.unwrap_or(3);
    let rt = tokio::runtime::Runtime::new()?;
    let dir = tempfile::tempdir()?;
    let mut c = Config::default();
    c.server.listen = "127.0.0.1:0".into();
    c.server.metrics_listen = "127.0.0.1:0".into();
    c.data.listen = "127.0.0.1:0".into();
    c.data_dir = dir.path().to_owned();
    c.dram.capacity = 4 << 30;
    c.nvme.enabled = false;
    let server = rt.block_on(Server::start(c))?;
    let client = rt.block_on(Client::connect(
        &server.addr.to_string(),
        ClientOptions::default(),
    ))?;
    let store: Arc<dyn ChunkStore> = Arc::new(client);
    let trace = ChatTrace::new(&ChatShape {
        seed: 42,
        system_prompts: 2,
        system_tokens: 1024,
        conversations,
        turns,
        user_tokens: (64, 512),
        reply_tokens: (64, 256),
    });
    let longest = trace.longest();
    let mut engine = SimEngine::new(
        llama_8b(),
        256,
        16,
        longest.div_ceil(16) * 3,
        store.clone(),
        rt.handle().clone(),
        WorkerConfig::default(),
        true,
    )?;
    println!("{} requests over {}", trace.requests.len(), store.name());
    let (mut total, mut hit) = (0, 0);
    let t = Instant::now();
    for (id, tokens) in &trace.requests {
        let r = engine.run(id, tokens)?;
        println!(
            "{id:>14}: {:>5} prompt tokens, {:>5} loaded, waited {:>6.1} ms on loads",
            r.prompt_tokens,
            r.hit_tokens,
            r.load_wait.as_secs_f64() * 1e3
        );
        total += r.prompt_tokens;
        hit += r.hit_tokens;
    }
    engine.drain();
    let stats = engine.worker.stats();
    println!(
        "hit rate {:.1}% ({hit} of {total} tokens); {:.2} GiB of KV loaded, {} chunks saved; ~{:.1} TFLOP of prefill saved; {:.1} s",
        100.0 * hit as f64 / total.max(1) as f64,
        stats
            .bytes_loaded
            .load(std::sync::atomic::Ordering::Relaxed) as f64
            / (1u64 << 30) as f64,
        stats
            .chunks_saved
            .load(std::sync::atomic::Ordering::Relaxed),
        2.0 * 8.03e9 * hit as f64 / 1e12,
        t.elapsed().as_secs_f64()
    );
    drop(engine);
    rt.block_on(server.shutdown())
}

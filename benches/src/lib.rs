//! Strata's benchmarks: what each one measures, against what, and the pieces they
//! share.
//!
//! Every benchmark measures three things in one invocation, so the ratio is honest
//! on a noisy shared machine: **ours** (Strata), the **peer** a user would pick
//! instead, and the **limit** of the machine for the same work. See `BENCHMARKS.md`
//! at the repository root for the results and `scripts/bench.sh` to run them.
//!
//! - `benches/dram.rs` (criterion): the DRAM tier and the `TieredStore` in process
//!   against `memcpy` of the same bytes.
//! - `strata-bench grpc-vs-redis`: Strata's gRPC `Get` against Redis `GET` and a raw
//!   TCP request/response of the same size.
//! - `strata-bench data-path`: the binary data path (TCP and shared memory) against
//!   Redis, raw TCP and Unix sockets, memcpy, and the gRPC Get.
//! - `strata-bench shard-sim`: training-shard eviction policies (LRU, no-evict,
//!   clairvoyant, offline Belady), simulated over epoch plans.
//! - `strata-bench training`: the training loader over a Strata server whose
//!   origin is Azurite, cold and warm, against reading Azurite with the SDK.
//! - `strata-bench nvme-vs-odirect`: the NVMe tier's reads against plain `O_DIRECT`
//!   reads of a file of the same size.
//!
//! This library holds the parts the binary and the benches share: the closed-loop
//! load runner, a minimal RESP client, a Redis process guard, the raw TCP limit,
//! `O_DIRECT` file I/O, page-cache control and the markdown report.

pub mod cluster;
pub mod clustersim;
pub mod datapath;
pub mod gpucopy;
pub mod kvconn;
pub mod load;
pub mod odirect;
pub mod origin;
pub mod pagecache;
pub mod rawtcp;
pub mod redis;
pub mod report;
pub mod resp;
pub mod shardsim;
pub mod training;

/// Fills `buf` with a cheap pseudo-random pattern derived from `seed`, so values
/// are neither zero pages nor identical to one another.
pub fn fill_pattern(buf: &mut [u8], seed: u64) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for chunk in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

/// A value of `len` bytes filled by [`fill_pattern`].
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    fill_pattern(&mut v, seed);
    v
}

/// A multi-threaded tokio runtime of `threads` workers named `name`.
pub fn runtime(threads: usize, name: &str) -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(name)
        .enable_all()
        .build()?)
}

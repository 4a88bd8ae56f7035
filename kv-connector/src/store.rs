//! Where chunks live. The connector speaks to a [`ChunkStore`]; Strata's client is
//! the real one, and the benchmark puts Redis behind the same trait, the way
//! LMCache uses it, to compare like with like.

use bytes::Bytes;
use futures::future::BoxFuture;
use strata_proto::Key;
use strata_transport::Client;
use strata_transport::data::ValueReader;
use strata_transport::wire::KeyRange;

use crate::error::Result;

/// What a read hands its bytes to: a reader over them, read once and in order.
pub type Sink<'a> = Box<dyn FnOnce(&mut ValueReader<'_>) -> Result<()> + Send + 'a>;

/// What a batch read hands each range to, with its index in the batch.
pub type BatchSink<'a> = Box<dyn FnMut(usize, &mut ValueReader<'_>) -> Result<()> + Send + 'a>;

/// The four calls the connector makes.
pub trait ChunkStore: Send + Sync + 'static {
    /// How many leading `keys` are stored, ideally in one round trip.
    fn match_prefix<'a>(&'a self, keys: &'a [Key]) -> BoxFuture<'a, Result<usize>>;
    /// `[offset, offset + len)` of a value; `None` if the key is absent. A short
    /// answer (the value is smaller) is returned as it is, for the caller to refuse.
    fn get_range<'a>(
        &'a self,
        key: &'a Key,
        offset: u64,
        len: u64,
    ) -> BoxFuture<'a, Result<Option<Bytes>>>;
    /// Reads `[offset, offset + len)` of a value into `sink`, straight from where the
    /// carrier holds it when it can (Strata over shared memory: the leased arena, so
    /// the bytes are copied once, into their destination). `Ok(false)` if the key is
    /// absent; `sink`'s error is returned as it is. The default reads with
    /// [`get_range`](Self::get_range) and hands `sink` a reader over the answer.
    fn read_range<'a>(
        &'a self,
        key: &'a Key,
        offset: u64,
        len: u64,
        sink: Sink<'a>,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            match self.get_range(key, offset, len).await? {
                None => Ok(false),
                Some(b) => sink(&mut ValueReader::new(&b)).map(|()| true),
            }
        })
    }
    /// Whether [`read_ranges`](Self::read_ranges) is one request: the loader then
    /// reads one layer of every chunk at once. Default: false.
    fn batches_reads(&self) -> bool {
        false
    }
    /// Reads a range of each of many values and hands each present one to `sink`
    /// with its index. One result per range: `Ok(true)` when `sink` took it,
    /// `Ok(false)` when the key is absent, or that range's error (`sink`'s
    /// included). The default reads them one at a time with
    /// [`read_range`](Self::read_range).
    fn read_ranges<'a>(
        &'a self,
        ranges: &'a [KeyRange],
        mut sink: BatchSink<'a>,
    ) -> BoxFuture<'a, Result<Vec<Result<bool>>>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(ranges.len());
            for (i, r) in ranges.iter().enumerate() {
                let len = r.length.unwrap_or(u64::MAX - r.offset);
                let one: Sink<'_> = Box::new(|reader| sink(i, reader));
                out.push(self.read_range(&r.key, r.offset, len, one).await);
            }
            Ok(out)
        })
    }
    /// Stores a whole value.
    fn put<'a>(&'a self, key: &'a Key, value: Bytes) -> BoxFuture<'a, Result<()>>;
    /// A short name for reports.
    fn name(&self) -> String;
}

impl ChunkStore for Client {
    fn match_prefix<'a>(&'a self, keys: &'a [Key]) -> BoxFuture<'a, Result<usize>> {
        Box::pin(async move { Ok(Client::match_prefix(self, keys).await? as usize) })
    }

    fn get_range<'a>(
        &'a self,
        key: &'a Key,
        offset: u64,
        len: u64,
    ) -> BoxFuture<'a, Result<Option<Bytes>>> {
        Box::pin(async move {
            Ok(Client::get_range(self, key, offset, Some(len))
                .await?
                .map(|(_, b)| b))
        })
    }

    fn read_range<'a>(
        &'a self,
        key: &'a Key,
        offset: u64,
        len: u64,
        sink: Sink<'a>,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            match Client::get_range_with(self, key, offset, Some(len), |_, r| sink(r)).await? {
                None => Ok(false),
                Some(placed) => placed.map(|()| true),
            }
        })
    }

    /// Over shared memory: a batch answers leases, and the loader copies each range
    /// straight out of the arena. Over TCP a batch is one frame of every range's
    /// bytes, read into one buffer, which measured slower than a window of ranged
    /// GETs over both connections (`BENCHMARKS.md`, section 5).
    fn batches_reads(&self) -> bool {
        self.carrier() == Some(strata_transport::data::Carrier::Shm)
    }

    fn read_ranges<'a>(
        &'a self,
        ranges: &'a [KeyRange],
        mut sink: BatchSink<'a>,
    ) -> BoxFuture<'a, Result<Vec<Result<bool>>>> {
        Box::pin(async move {
            let got = Client::mget_range_with(self, ranges, |i, r| sink(i, r)).await?;
            Ok(got
                .into_iter()
                .map(|item| match item {
                    Ok(Some(placed)) => placed.map(|()| true),
                    Ok(None) => Ok(false),
                    Err(e) => Err(e.into()),
                })
                .collect())
        })
    }

    fn put<'a>(&'a self, key: &'a Key, value: Bytes) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            Client::put(self, key, value).await?;
            Ok(())
        })
    }

    fn name(&self) -> String {
        match self.carrier() {
            Some(c) => format!("strata-{c:?}").to_lowercase(),
            None => "strata-grpc".into(),
        }
    }
}

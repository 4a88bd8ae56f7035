//! Where chunks live. The connector speaks to a [`ChunkStore`]; Strata's client is
//! the real one, and the benchmark puts Redis behind the same trait, the way
//! LMCache uses it, to compare like with like.

use bytes::Bytes;
use futures::future::BoxFuture;
use strata_tiers::Key;
use strata_transport::Client;
use strata_transport::data::ValueReader;

use crate::error::Result;

/// What a read hands its bytes to: a reader over them, read once and in order.
pub type Sink<'a> = Box<dyn FnOnce(&mut ValueReader<'_>) -> Result<()> + Send + 'a>;

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

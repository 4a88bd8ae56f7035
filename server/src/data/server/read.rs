//! GET, MGET and MGET_RANGE: reads through the request layer, answered inline or
//! leased.

use super::conn::{fail, status_of};
use super::*;

impl DataServer {
    /// Counts the bytes of a read by how they leave.
    pub(super) fn count(&self, read: &Read) {
        if read.lease.is_some() {
            add(&self.stats.bytes_leased, read.len);
        }
    }

    pub(super) fn answer_get(&self, id: u64, read: Read) -> Out {
        self.count(&read);
        let mut m = BytesMut::with_capacity(64);
        response::encode_get(
            &mut m,
            &GetInfo {
                total_len: read.total,
                offset: read.start,
                len: read.len,
                lease: read.lease,
            },
        );
        let mut out = Out::ok(Op::Get, id, m, read.slices);
        out.held = read.held;
        out
    }

    /// Answers an MGET or MGET_RANGE: one item per range, leased or inline in
    /// order, the inline ones within `max_data` ([`Ops::mget`]).
    pub(super) async fn mget(
        &self,
        op: Op,
        id: u64,
        ranges: &[(&strata_tiers::Key, ByteRange)],
        opts: &Options,
    ) -> Out {
        let reads = match self
            .ops
            .mget(ranges, self.config.limits().max_data, opts)
            .await
        {
            Ok(r) => r,
            Err(e) => return fail(op, id, e),
        };
        let mut items = Vec::with_capacity(reads.len());
        let mut data = Vec::new();
        let mut held = None;
        for r in reads {
            items.push(match r {
                Ok(mut read) => {
                    self.count(&read);
                    held = held.or(read.held.take());
                    data.extend(read.slices);
                    MGetItem {
                        status: Status::Ok,
                        len: read.len,
                        lease: read.lease,
                    }
                }
                Err(e) => MGetItem {
                    status: status_of(&e),
                    len: 0,
                    lease: None,
                },
            });
        }
        let mut m = BytesMut::with_capacity(16 + items.len() * 16);
        response::encode_mget(&mut m, &items);
        let mut out = Out::ok(op, id, m, data);
        out.held = held;
        out
    }
}

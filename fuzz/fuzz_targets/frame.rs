//! Fuzzes the data-path frame decoders: a request frame as the server decodes it
//! (header, metadata, data), and every response decoder the client runs on the
//! metadata of an answer. None may panic, whatever the bytes; a frame that decodes
//! must re-encode to the same header and metadata.

#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_transport::wire::{self, Header, Limits, Op, Request, response};

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    if let Ok((h, req, body)) = wire::decode_request_frame(data, &limits) {
        let again = wire::request_frame_within(h.id, h.flags, &req, body.len() as u64, h.budget());
        assert_eq!(&again[..], &data[..wire::HEADER_LEN + h.meta_len as usize]);
    }
    let _ = Header::decode(data, &limits);
    if data.len() > 1 {
        let (op, meta) = (data[0], &data[1..]);
        const OPS: [Op; 12] = [
            Op::Hello,
            Op::Get,
            Op::MGet,
            Op::Put,
            Op::Reserve,
            Op::Write,
            Op::Commit,
            Op::Abort,
            Op::Delete,
            Op::MatchPrefix,
            Op::Release,
            Op::MGetRange,
        ];
        let h = Header::request(OPS[usize::from(op) % OPS.len()], 0, 0, meta.len(), 0);
        let _ = Request::decode(&h, meta);
        match op % 6 {
            0 => drop(response::decode_get(meta)),
            1 => drop(response::decode_mget(meta)),
            2 => drop(response::decode_hello(meta)),
            3 => drop(response::decode_reserve(meta)),
            4 => drop(response::decode_u64(Op::Delete, meta)),
            _ => drop(response::decode_error(meta)),
        }
    }
});

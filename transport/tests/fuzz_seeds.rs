//! The fuzz target's seed corpus (`fuzz/corpus/frame`, written by `fuzz/seeds.py`
//! from `docs/data-path.md`, not by the Rust encoder) decodes as the spec says:
//! an independent check of the decoder against the document.

use strata_transport::wire::{Limits, Op, decode_request_frame};

#[test]
fn seed_frames_decode_as_documented() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/frame");
    let expect = [
        ("hello", Some(Op::Hello)),
        ("get", Some(Op::Get)),
        ("get-range-lease", Some(Op::Get)),
        ("mget", Some(Op::MGet)),
        ("put", Some(Op::Put)),
        ("reserve", Some(Op::Reserve)),
        ("write", Some(Op::Write)),
        ("commit", Some(Op::Commit)),
        ("abort", Some(Op::Abort)),
        ("delete", Some(Op::Delete)),
        ("match-prefix", Some(Op::MatchPrefix)),
        ("release", Some(Op::Release)),
        ("mget-range", Some(Op::MGetRange)),
        ("bad-magic", None),
        ("truncated-key", None),
        ("huge-data", None),
    ];
    for (name, op) in expect {
        let bytes = std::fs::read(format!("{dir}/{name}")).unwrap();
        let got = decode_request_frame(&bytes, &Limits::default());
        match op {
            Some(op) => {
                let (h, _, _) = got.unwrap_or_else(|e| panic!("seed {name}: {e}"));
                assert_eq!(h.op, op, "seed {name}");
            }
            None => assert!(got.is_err(), "seed {name} should be refused"),
        }
    }
}

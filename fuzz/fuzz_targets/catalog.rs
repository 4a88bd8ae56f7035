//! Fuzzes the NVMe catalog's decoders, which a restart runs over what it finds
//! on disk: the snapshot, and the journal replayed over it (as it is, and behind
//! a good header with every record's CRC made right). A snapshot that decodes
//! survives a re-encoding; a journal replays to the same catalog from its good
//! prefix alone, and again over itself (`strata_tiers::fuzzing::catalog`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| strata_tiers::fuzzing::catalog(data));

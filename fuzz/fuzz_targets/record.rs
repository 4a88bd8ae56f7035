//! Fuzzes the decoders of the records the store reads back from NVMe (and from
//! a Blob cache tier): a value's head and its pages (`tiers/src/store/record.rs`),
//! and the NVMe entry's key and value framing. Each input is decoded as it is
//! and again with its CRCs made right. Nothing may panic or allocate from a
//! length field alone; what decodes must survive a re-encoding
//! (`strata_tiers::fuzzing::records`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| strata_tiers::fuzzing::records(data));

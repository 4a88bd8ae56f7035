//! Helpers shared by the integration tests of `strata-tiers`.

pub mod conformance;

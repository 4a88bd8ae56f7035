//! Epoch plans: which shard each rank reads at each step of each epoch.
//!
//! A plan is a pure function of `(seed, epoch)` and the split `(rank, world_size)`,
//! so every rank, every restart and every language computes the same order
//! (`docs/epoch-plan.md` specifies it and carries test vectors, which
//! `scripts/epoch-plan-vectors.py` recomputes independently).
//!
//! 1. The epoch's global order is a Fisher–Yates shuffle of `0..n` (indices into
//!    the manifest's shards, sorted by name) driven by SplitMix64 seeded with
//!    `mix(seed ^ mix(epoch))`, or the identity when shuffling is off.
//! 2. The order is cut to a multiple of `world_size`: the remainder is dropped, or
//!    padded by repeating the order from its start.
//! 3. Rank `r` reads global positions `r, r + W, r + 2W, …` (as PyTorch's
//!    `DistributedSampler` does), so step `k` of the job is global positions
//!    `k·W .. (k+1)·W`.
//!
//! The number of loader workers never enters: workers split the rank's steps and
//! the loader hands them out in step order.

use serde::{Deserialize, Serialize};

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// The SplitMix64 finalizer of `z + GOLDEN`.
pub fn mix(z: u64) -> u64 {
    let mut z = z.wrapping_add(GOLDEN);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast, the same in every language.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator whose first output is `mix(state)`.
    pub fn new(state: u64) -> Self {
        Self(state)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let out = mix(self.0);
        self.0 = self.0.wrapping_add(GOLDEN);
        out
    }

    /// A uniform draw from `0..bound` (`bound > 0`), by rejection: draws at or
    /// above the largest multiple of `bound` are redrawn, so there is no bias.
    pub fn below(&mut self, bound: u64) -> u64 {
        debug_assert!(bound > 0);
        let zone = (u64::MAX / bound) * bound;
        loop {
            let r = self.next_u64();
            if r < zone {
                return r % bound;
            }
        }
    }
}

/// The global order of one epoch over `n` shards.
pub fn permutation(n: u32, seed: u64, epoch: u64, shuffle: bool) -> Vec<u32> {
    let mut order: Vec<u32> = (0..n).collect();
    if shuffle {
        let mut rng = SplitMix64::new(mix(seed ^ mix(epoch)));
        for i in (1..order.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            order.swap(i, j);
        }
    }
    order
}

/// What happens to the shards left over when `n` is not a multiple of the world size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Remainder {
    /// Drop the last `n mod W` shards of the epoch's order (no rank reads them this epoch).
    #[default]
    Drop,
    /// Repeat the order from its start until every rank has the same count.
    Pad,
}

/// The parameters every rank of a job shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanSpec {
    /// Shards in the dataset version.
    pub shards: u32,
    /// The job's seed.
    pub seed: u64,
    /// Whether epochs are shuffled.
    pub shuffle: bool,
    /// Ranks reading the dataset.
    pub world_size: u32,
    /// What happens to the remainder.
    pub remainder: Remainder,
}

impl PlanSpec {
    /// A shuffled plan, dropping the remainder.
    pub fn new(shards: u32, seed: u64, world_size: u32) -> Self {
        Self {
            shards,
            seed,
            shuffle: true,
            world_size: world_size.max(1),
            remainder: Remainder::Drop,
        }
    }

    /// Global positions per epoch (a multiple of the world size).
    pub fn global_len(&self) -> u64 {
        let (n, w) = (u64::from(self.shards), u64::from(self.world_size.max(1)));
        match self.remainder {
            Remainder::Drop => n / w * w,
            Remainder::Pad if n == 0 => 0,
            Remainder::Pad => n.div_ceil(w) * w,
        }
    }

    /// Steps per epoch (what each rank reads per epoch).
    pub fn steps_per_epoch(&self) -> u64 {
        self.global_len() / u64::from(self.world_size.max(1))
    }

    /// The epoch's global order, cut or padded to [`global_len`](Self::global_len).
    pub fn global_order(&self, epoch: u64) -> Vec<u32> {
        let perm = permutation(self.shards, self.seed, epoch, self.shuffle);
        let len = self.global_len() as usize;
        if perm.is_empty() {
            return perm;
        }
        (0..len).map(|i| perm[i % perm.len()]).collect()
    }

    /// The shards rank `rank` reads in `epoch`, in step order.
    pub fn rank_order(&self, epoch: u64, rank: u32) -> Vec<u32> {
        let w = self.world_size.max(1) as usize;
        self.global_order(epoch)
            .into_iter()
            .skip(rank as usize)
            .step_by(w)
            .collect()
    }

    /// One rank's plan.
    pub fn rank(&self, rank: u32) -> RankPlan {
        assert!(rank < self.world_size.max(1), "rank {rank} ≥ world size");
        RankPlan { spec: *self, rank }
    }
}

/// One rank's view of a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RankPlan {
    /// The job's plan.
    pub spec: PlanSpec,
    /// This rank.
    pub rank: u32,
}

/// A place in a plan: the next step to read of an epoch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Position {
    /// The epoch.
    pub epoch: u64,
    /// The rank-local step within it.
    pub step: u64,
}

/// One item of a rank's plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Item {
    /// Where it is in the plan.
    pub at: Position,
    /// The shard's index in the manifest.
    pub shard: u32,
}

impl RankPlan {
    /// The items from `from` up to (not including) epoch `end_epoch`, in order.
    pub fn items(&self, from: Position, end_epoch: u64) -> PlanIter {
        PlanIter {
            plan: *self,
            at: from,
            end_epoch,
            order: Vec::new(),
            order_epoch: None,
        }
    }
}

/// Iterates a rank's plan across epochs, computing each epoch's order once.
#[derive(Debug, Clone)]
pub struct PlanIter {
    plan: RankPlan,
    at: Position,
    end_epoch: u64,
    order: Vec<u32>,
    order_epoch: Option<u64>,
}

impl Iterator for PlanIter {
    type Item = Item;

    fn next(&mut self) -> Option<Item> {
        let steps = self.plan.spec.steps_per_epoch();
        if steps == 0 {
            return None;
        }
        if self.at.step >= steps {
            self.at = Position {
                epoch: self.at.epoch + 1,
                step: 0,
            };
        }
        if self.at.epoch >= self.end_epoch {
            return None;
        }
        if self.order_epoch != Some(self.at.epoch) {
            self.order = self.plan.spec.rank_order(self.at.epoch, self.plan.rank);
            self.order_epoch = Some(self.at.epoch);
        }
        let item = Item {
            at: self.at,
            shard: self.order[self.at.step as usize],
        };
        self.at.step += 1;
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn permutation_is_a_permutation_and_depends_on_seed_and_epoch() {
        let p = permutation(1000, 7, 0, true);
        let set: HashSet<u32> = p.iter().copied().collect();
        assert_eq!(set.len(), 1000);
        assert_ne!(p, (0..1000).collect::<Vec<_>>());
        assert_ne!(p, permutation(1000, 7, 1, true));
        assert_ne!(p, permutation(1000, 8, 0, true));
        assert_eq!(p, permutation(1000, 7, 0, true));
        assert_eq!(permutation(5, 7, 0, false), vec![0, 1, 2, 3, 4]);
        assert!(permutation(0, 1, 1, true).is_empty());
        assert_eq!(permutation(1, 1, 1, true), vec![0]);
    }

    #[test]
    fn ranks_partition_the_epoch_when_dropping() {
        let spec = PlanSpec::new(10, 3, 3);
        assert_eq!(spec.steps_per_epoch(), 3);
        let mut seen = Vec::new();
        for r in 0..3 {
            seen.extend(spec.rank_order(2, r));
        }
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 9, "9 distinct shards; one dropped");
    }

    #[test]
    fn padding_repeats_from_the_start() {
        let spec = PlanSpec {
            remainder: Remainder::Pad,
            ..PlanSpec::new(10, 3, 4)
        };
        assert_eq!(spec.steps_per_epoch(), 3);
        let g = spec.global_order(0);
        assert_eq!(g.len(), 12);
        assert_eq!(g[10..], g[..2]);
        // More ranks than shards: everyone still gets one.
        let spec = PlanSpec {
            remainder: Remainder::Pad,
            ..PlanSpec::new(2, 3, 5)
        };
        assert_eq!(spec.global_order(0).len(), 5);
        assert_eq!(PlanSpec::new(2, 3, 5).steps_per_epoch(), 0);
    }

    #[test]
    fn resuming_continues_the_same_sequence() {
        let plan = PlanSpec::new(50, 11, 4).rank(1);
        let all: Vec<Item> = plan.items(Position::default(), 3).collect();
        assert_eq!(all.len(), 3 * 12);
        for cut in [0, 1, 11, 12, 13, 35] {
            let resumed: Vec<Item> = plan.items(all[cut].at, 3).collect();
            assert_eq!(resumed, all[cut..]);
        }
        // A position past an epoch's end rolls over.
        let rolled: Vec<Item> = plan
            .items(Position { epoch: 0, step: 12 }, 3)
            .take(1)
            .collect();
        assert_eq!(rolled[0], all[12]);
    }
}

//! The clairvoyant oracle: when will a shard next be read, over every registered plan?
//!
//! Loaders register their job's [`PlanSpec`] (with where it starts and ends) and
//! report progress. Because a plan is a pure function of `(seed, epoch)`, the
//! oracle knows each job's whole future order: the next read of shard `s` by a
//! job at global position `p` of epoch `e` is the first occurrence of `s` at or
//! after `p` in epoch `e`'s order, else in epoch `e + 1`'s, and so on. Distances
//! are counted in global positions and divided by the job's rate (positions per
//! unit of time, 1 unless reported), so jobs of different speeds compare.
//!
//! Eviction asks [`Oracle::next_use`] of each candidate and removes the one read
//! furthest in the future (Belady's rule, with the future known from the plans
//! instead of guessed). A shard no registered job will read again comes first.
//!
//! Cost: an epoch's inverse permutation (4 bytes per shard) per job, for the
//! epochs the job is in and the next two; a lookup is O(jobs).

use std::collections::{BTreeMap, HashMap};

use strata_training_cache::plan::{PlanSpec, Position};

/// How far ahead (in epochs past the current one) a job's future is looked for.
const LOOKAHEAD_EPOCHS: u64 = 2;

/// A job's identity (the loader picks it; unique per dataset version).
pub type JobId = u64;

/// A registered job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobPlan {
    /// The plan every rank of the job follows.
    pub spec: PlanSpec,
    /// Where it is now (the job's step: all ranks together).
    pub at: Position,
    /// The first epoch it will not read (`None`: it goes on).
    pub end_epoch: Option<u64>,
    /// Global positions per unit of time (any unit, the same for every job).
    pub rate: f64,
    /// How far (global positions) the job's reads may run ahead of its reported
    /// cursor (its prefetch window): a read of a shard this close ahead is taken
    /// to be the read happening now.
    pub lead: u64,
}

struct Job {
    plan: JobPlan,
    /// Inverse permutations (shard → position in the epoch's permutation), by epoch.
    inverse: BTreeMap<u64, Vec<u32>>,
}

impl Job {
    fn inverse(&mut self, epoch: u64) -> &[u32] {
        let spec = self.plan.spec;
        self.inverse.entry(epoch).or_insert_with(|| {
            let perm = strata_training_cache::plan::permutation(
                spec.shards,
                spec.seed,
                epoch,
                spec.shuffle,
            );
            let mut inv = vec![0u32; perm.len()];
            for (pos, &s) in perm.iter().enumerate() {
                inv[s as usize] = pos as u32;
            }
            inv
        })
    }

    /// Global positions from the job's cursor to its first read of `shard` at
    /// least `skip` positions ahead.
    fn distance(&mut self, shard: u32, skip: u64) -> Option<u64> {
        let spec = self.plan.spec;
        let (n, len) = (u64::from(spec.shards), spec.global_len());
        if shard >= spec.shards || len == 0 {
            return None;
        }
        let w = u64::from(spec.world_size.max(1));
        let cursor = self.plan.at.epoch * len + (self.plan.at.step * w).min(len);
        let start = cursor + skip;
        let e0 = start / len;
        for e in e0..=e0 + LOOKAHEAD_EPOCHS {
            if self.plan.end_epoch.is_some_and(|end| e >= end) {
                return None;
            }
            let first = u64::from(self.inverse(e)[shard as usize]);
            let from = if e == e0 { start % len } else { 0 };
            // Occurrences are first, first + n, first + 2n, … below len (padding repeats).
            let q = if first >= from {
                first
            } else {
                first + (from - first).div_ceil(n) * n
            };
            if q < len {
                return Some(e * len + q - cursor);
            }
        }
        None
    }
}

/// The registered plans of one dataset version.
#[derive(Default)]
pub struct Oracle {
    jobs: HashMap<JobId, Job>,
}

impl std::fmt::Debug for Oracle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Oracle")
            .field("jobs", &self.jobs.len())
            .finish()
    }
}

impl Oracle {
    /// Registers (or replaces) a job's plan.
    pub fn register(&mut self, id: JobId, plan: JobPlan) {
        self.jobs.insert(
            id,
            Job {
                plan,
                inverse: BTreeMap::new(),
            },
        );
    }

    /// Forgets a job.
    pub fn unregister(&mut self, id: JobId) -> bool {
        self.jobs.remove(&id).is_some()
    }

    /// Registered jobs.
    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    /// Whether no job is registered.
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// Moves a job's cursor (and its rate, in steps per unit of time, if given).
    /// Unknown jobs are ignored.
    pub fn advance(&mut self, id: JobId, at: Position, steps_rate: Option<f64>) -> bool {
        let Some(job) = self.jobs.get_mut(&id) else {
            return false;
        };
        job.plan.at = at;
        if let Some(r) = steps_rate.filter(|r| r.is_finite() && *r > 0.0) {
            // A step is `world_size` global positions.
            job.plan.rate = r * f64::from(job.plan.spec.world_size.max(1));
        }
        // Epochs behind the cursor will not be asked about again.
        job.inverse = job.inverse.split_off(&at.epoch);
        true
    }

    /// Time until some job next reads `shard` (`None`: no registered job will).
    pub fn next_use(&mut self, shard: u32) -> Option<f64> {
        self.jobs
            .values_mut()
            .filter_map(|j| {
                let rate = if j.plan.rate > 0.0 { j.plan.rate } else { 1.0 };
                j.distance(shard, 0).map(|d| d as f64 / rate)
            })
            .min_by(f64::total_cmp)
    }

    /// Time until `shard` is read again after the read happening now: a job
    /// whose next read of it is within its lead is the one reading it, and its
    /// following read counts.
    pub fn next_use_after_read(&mut self, shard: u32) -> Option<f64> {
        self.jobs
            .values_mut()
            .filter_map(|j| {
                let rate = if j.plan.rate > 0.0 { j.plan.rate } else { 1.0 };
                let d = match j.distance(shard, 0)? {
                    d if d <= j.plan.lead => j.distance(shard, d + 1)?,
                    d => d,
                };
                Some(d as f64 / rate)
            })
            .min_by(f64::total_cmp)
    }

    /// Of `candidates`, the one read furthest in the future (never read first;
    /// ties go to the earliest candidate).
    pub fn furthest(&mut self, candidates: impl IntoIterator<Item = u32>) -> Option<u32> {
        let mut best: Option<(f64, u32)> = None;
        for s in candidates {
            let t = self.next_use(s).unwrap_or(f64::INFINITY);
            if best.is_none_or(|(bt, _)| t > bt) {
                best = Some((t, s));
            }
        }
        best.map(|(_, s)| s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_training_cache::plan::Remainder;

    fn job(spec: PlanSpec) -> JobPlan {
        JobPlan {
            spec,
            at: Position::default(),
            end_epoch: None,
            rate: 1.0,
            lead: 0,
        }
    }

    #[test]
    fn next_use_follows_the_plan_across_epochs() {
        let spec = PlanSpec::new(20, 5, 1);
        let mut o = Oracle::default();
        o.register(1, job(spec));
        let e0 = spec.global_order(0);
        let e1 = spec.global_order(1);
        for (p, &s) in e0.iter().enumerate() {
            assert_eq!(o.next_use(s), Some(p as f64));
        }
        // After reading position 5 of epoch 0, shard e0[3] is next read in epoch 1.
        o.advance(1, Position { epoch: 0, step: 6 }, None);
        let s = e0[3];
        let q = e1.iter().position(|&x| x == s).unwrap();
        assert_eq!(o.next_use(s), Some((20 - 6 + q) as f64));
        assert_eq!(o.next_use(e0[6]), Some(0.0));
        assert_eq!(o.next_use(99), None);
        // Read now (within a lead of 2): the next read is next epoch's.
        o.register(
            2,
            JobPlan {
                lead: 2,
                at: Position { epoch: 0, step: 6 },
                ..job(spec)
            },
        );
        o.unregister(1);
        let s = e0[7];
        let q = e1.iter().position(|&x| x == s).unwrap();
        assert_eq!(o.next_use(s), Some(1.0));
        assert_eq!(o.next_use_after_read(s), Some((20 - 6 + q) as f64));
        assert_eq!(o.next_use_after_read(e0[12]), Some(6.0), "beyond the lead");
    }

    #[test]
    fn world_size_counts_global_positions_and_ends_stop() {
        let spec = PlanSpec {
            remainder: Remainder::Drop,
            ..PlanSpec::new(10, 1, 4)
        };
        let mut o = Oracle::default();
        o.register(
            7,
            JobPlan {
                end_epoch: Some(1),
                ..job(spec)
            },
        );
        let g = spec.global_order(0);
        o.advance(7, Position { epoch: 0, step: 1 }, None);
        assert_eq!(o.next_use(g[4]), Some(0.0));
        assert_eq!(o.next_use(g[7]), Some(3.0));
        // g[0] was read at step 0 and the job ends after epoch 0.
        assert_eq!(o.next_use(g[0]), None);
        assert_eq!(o.furthest([g[7], g[0], g[4]]), Some(g[0]));
    }

    #[test]
    fn the_nearest_job_wins_and_rates_scale() {
        let spec = PlanSpec::new(10, 1, 1);
        let other = PlanSpec::new(10, 2, 1);
        let mut o = Oracle::default();
        o.register(1, job(spec));
        o.register(
            2,
            JobPlan {
                rate: 2.0,
                ..job(other)
            },
        );
        let (a, b) = (spec.global_order(0), other.global_order(0));
        for s in 0..10u32 {
            let pa = a.iter().position(|&x| x == s).unwrap() as f64;
            let pb = b.iter().position(|&x| x == s).unwrap() as f64 / 2.0;
            assert_eq!(o.next_use(s), Some(pa.min(pb)));
        }
    }
}

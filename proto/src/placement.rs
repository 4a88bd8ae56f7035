//! Placement: which members of a cluster own a key, as a pure function of the key's
//! bytes and the member list, so that every client (Rust, Python, anything that
//! follows `docs/cluster.md`) and every server computes the same owners without
//! asking anyone.
//!
//! The function is **multi-probe consistent hashing** (Appleton and O'Reilly,
//! 2015): each member puts `weight` points on a 64-bit ring; a key is hashed to
//! [`PROBES`] points of its own, each probe finds the next member point clockwise,
//! and the probe whose point is nearest wins. Why this one (measured by
//! `strata-bench cluster-sim`, recorded in BENCHMARKS.md):
//!
//! - **Lookup in O(log N)-free time:** the ring is indexed by the top bits of a
//!   position, so each probe is one bucket read and a short scan; there is no walk
//!   over all members (rendezvous hashing is O(N): 100,000 hashes per key).
//! - **Minimal movement:** a member that joins only takes keys (its points only
//!   shorten distances), and one that leaves only gives its own keys away, so a
//!   join or leave moves exactly that member's share.
//! - **Balance without hundreds of virtual nodes:** [`PROBES`] probes bring the
//!   largest share near the mean with a few points per member
//!   ([`POINTS_PER_WEIGHT`] per unit of weight), where a plain ring needs hundreds
//!   of points per member (and their memory) for the same spread. Memory is O(N).
//!
//! Weights are whole numbers (1 to [`MAX_WEIGHT`]), each unit
//! [`POINTS_PER_WEIGHT`] points: a member of weight 2 owns twice the keys of a
//! member of weight 1. Capacity maps to a weight by a
//! fixed unit chosen by the cluster, never by the other members' capacity (that
//! would move keys whenever anyone joined).
//!
//! The hashes, bit for bit (the test vectors in `docs/cluster.md` pin them):
//! - `mix(x)`: SplitMix64's output function of `x + 0x9E3779B97F4A7C15`.
//! - probe `i` of a key: `mix(xxh3_64(key, seed 0) + i)`, for `i` in `0..PROBES`.
//! - point `j` of a member: `mix(xxh3_64(id, seed 1) + j)`, for `j` in
//!   `0..4 * weight`.
//! - a probe at `x` reaches the first point at or after `x` (wrapping past
//!   `2^64 - 1` to the first point); its distance is `point - x` (mod `2^64`).
//! - the owner is the member of the reached point with the smallest distance;
//!   equal distances go to the lower probe index; equal points to the member whose
//!   id sorts first.
//! - the `r`-th owner (replicas) repeats this with the points of the owners
//!   already chosen skipped: each probe walks on to the next point of a member not
//!   chosen yet.

use twox_hash::XxHash3_64;

/// Probes per key. 21 is the figure of the multi-probe paper for a peak-to-mean
/// of about 1.05 with one point per member; `strata-bench cluster-sim` measures it
/// at 100,000 members.
pub const PROBES: usize = 21;

/// The largest weight of one member.
pub const MAX_WEIGHT: u32 = 1024;

/// Points on the ring per unit of weight. One point per member is enough at
/// scale (1.05 max/mean at 1,000 members and more), but a small cluster would be
/// lopsided (up to 1.3-1.6x with 2-5 members); four bring that to 1.10-1.15x
/// and cost four times the memory (about 7 MB at 100,000 members).
pub const POINTS_PER_WEIGHT: u32 = 4;

/// One member as placement sees it: a stable id (never reused for another node)
/// and its weight.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Member {
    /// The member's id: stable across restarts of the same node.
    pub id: String,
    /// Its weight, 1 to [`MAX_WEIGHT`]: the member's share is its weight over the
    /// sum of weights ([`POINTS_PER_WEIGHT`] points on the ring per unit).
    pub weight: u32,
}

impl Member {
    /// A member of `weight` points.
    pub fn new(id: impl Into<String>, weight: u32) -> Self {
        Self {
            id: id.into(),
            weight,
        }
    }
}

/// Why a member list cannot be placed on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// Two members with one id.
    #[error("member id {0:?} appears twice in the member list")]
    DuplicateId(String),
    /// A weight outside 1..=MAX_WEIGHT.
    #[error("member {id:?} has weight {weight}: weights are 1 to {MAX_WEIGHT}")]
    Weight {
        /// The member.
        id: String,
        /// Its weight.
        weight: u32,
    },
}

/// SplitMix64's mixing of `x` (its state step, then its output function).
pub fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The [`PROBES`] ring positions of a key.
pub fn probes(key: &[u8]) -> [u64; PROBES] {
    let h = XxHash3_64::oneshot_with_seed(0, key);
    std::array::from_fn(|i| mix(h.wrapping_add(i as u64)))
}

/// Ring position of point `j` of member `id`.
pub fn point(id: &str, j: u32) -> u64 {
    mix(XxHash3_64::oneshot_with_seed(1, id.as_bytes()).wrapping_add(u64::from(j)))
}

/// The ring of one member list: built once per membership change, then asked for
/// the owners of any number of keys. Cheap to share (`Arc`) between tasks.
#[derive(Debug, Clone)]
pub struct Placement {
    /// Members sorted by id; `owner` indices point here.
    members: Vec<Member>,
    /// Point positions, ascending (equal positions by member id).
    points: Vec<u64>,
    /// The member of each point.
    owner: Vec<u32>,
    /// `index[b]`: the first point whose position's top bits are at least `b`.
    index: Vec<u32>,
    /// Position >> shift = bucket.
    shift: u32,
}

/// The bytes that place run `run` of a value read in runs (a `shard` page run:
/// `store.origin_read_size` bytes at an offset that is a multiple of it, see
/// `docs/cluster.md`): the key's own bytes for run 0, and for a later run the
/// key's bytes followed by `#` and the run's number as 8 big-endian bytes. So
/// a value no longer than one run is placed as its key, and the runs of a large
/// one are spread over the members.
pub fn run_key(key: &[u8], run: u64) -> std::borrow::Cow<'_, [u8]> {
    if run == 0 {
        return std::borrow::Cow::Borrowed(key);
    }
    let mut v = Vec::with_capacity(key.len() + 9);
    v.extend_from_slice(key);
    v.push(b'#');
    v.extend_from_slice(&run.to_be_bytes());
    std::borrow::Cow::Owned(v)
}

impl Placement {
    /// The ring of `members` (in any order). An empty list places nothing.
    pub fn new(members: impl IntoIterator<Item = Member>) -> Result<Self, PlacementError> {
        let mut members: Vec<Member> = members.into_iter().collect();
        members.sort();
        for w in members.windows(2) {
            if w[0].id == w[1].id {
                return Err(PlacementError::DuplicateId(w[0].id.clone()));
            }
        }
        if let Some(m) = members
            .iter()
            .find(|m| m.weight == 0 || m.weight > MAX_WEIGHT)
        {
            return Err(PlacementError::Weight {
                id: m.id.clone(),
                weight: m.weight,
            });
        }
        let mut pts: Vec<(u64, u32)> = members
            .iter()
            .enumerate()
            .flat_map(|(i, m)| {
                (0..m.weight * POINTS_PER_WEIGHT).map(move |j| (point(&m.id, j), i as u32))
            })
            .collect();
        // Equal positions: the member whose id sorts first comes first (members are
        // sorted, so its index is lower).
        pts.sort_unstable();
        let bits = pts.len().next_power_of_two().trailing_zeros().max(1);
        let shift = 64 - bits;
        let buckets = 1usize << bits;
        let mut index = Vec::with_capacity(buckets + 1);
        let mut p = 0usize;
        for b in 0..buckets {
            while p < pts.len() && ((pts[p].0 >> shift) as usize) < b {
                p += 1;
            }
            index.push(p as u32);
        }
        index.push(pts.len() as u32);
        Ok(Self {
            members,
            points: pts.iter().map(|p| p.0).collect(),
            owner: pts.iter().map(|p| p.1).collect(),
            index,
            shift,
        })
    }

    /// The members, sorted by id.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Points on the ring ([`POINTS_PER_WEIGHT`] times the sum of weights).
    pub fn points(&self) -> usize {
        self.points.len()
    }

    /// The index of the first point at or after `x`, wrapping to 0.
    fn successor(&self, x: u64) -> usize {
        let b = (x >> self.shift) as usize;
        let mut i = self.index[b] as usize;
        let end = self.index[b + 1] as usize;
        while i < end && self.points[i] < x {
            i += 1;
        }
        if i == self.points.len() { 0 } else { i }
    }

    /// The owner of `key` (`None` with no members).
    pub fn owner(&self, key: &[u8]) -> Option<&Member> {
        if self.points.is_empty() {
            return None;
        }
        let mut best = (u64::MAX, usize::MAX);
        for x in probes(key) {
            let s = self.successor(x);
            let d = self.points[s].wrapping_sub(x);
            if d < best.0 {
                best = (d, s);
            }
        }
        Some(&self.members[self.owner[best.1] as usize])
    }

    /// The first `n` owners of `key`, in order (fewer when the cluster has fewer
    /// members): the owner, then the owner with it left out, and so on.
    pub fn owners(&self, key: &[u8], n: usize) -> Vec<&Member> {
        let n = n.min(self.members.len());
        let mut out: Vec<u32> = Vec::with_capacity(n);
        if n == 0 {
            return Vec::new();
        }
        let probes = probes(key);
        let mut at: [usize; PROBES] = std::array::from_fn(|i| self.successor(probes[i]));
        while out.len() < n {
            let mut best = (u64::MAX, usize::MAX);
            for (i, x) in probes.iter().enumerate() {
                // Walk past points of owners already chosen.
                while out.contains(&self.owner[at[i]]) {
                    at[i] = (at[i] + 1) % self.points.len();
                }
                let d = self.points[at[i]].wrapping_sub(*x);
                if d < best.0 {
                    best = (d, at[i]);
                }
            }
            out.push(self.owner[best.1]);
        }
        out.into_iter().map(|m| &self.members[m as usize]).collect()
    }

    /// Each member's exact share of the key space (in member order, summing to 1),
    /// computed from the ring rather than sampled: a probe lands in the arc before
    /// a point with probability its length `l` and at a distance uniform in
    /// `[0, l)`; it wins when the other `PROBES - 1` probes are all farther, which
    /// they are with probability `G(x)^(PROBES-1)`, `G(x) = Σ max(0, l_j - x)`.
    /// So a point's share is `PROBES · ∫₀^l G(x)^(PROBES-1) dx`, and `G` is
    /// piecewise linear between the sorted arc lengths.
    pub fn shares(&self) -> Vec<f64> {
        let n = self.points.len();
        let mut shares = vec![0.0; self.members.len()];
        if n == 0 {
            return shares;
        }
        let scale = 2f64.powi(64);
        // The arc before point i: from the previous point (wrapping) to it.
        let arcs: Vec<f64> = (0..n)
            .map(|i| {
                let prev = self.points[(i + n - 1) % n];
                let len = self.points[i].wrapping_sub(prev);
                if n == 1 { 1.0 } else { len as f64 / scale }
            })
            .collect();
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| arcs[a].total_cmp(&arcs[b]));
        let k = PROBES as i32;
        // F at each sorted arc length, integrating G^(k-1) segment by segment.
        let mut f_at = vec![0.0; n];
        let (mut x0, mut f) = (0.0f64, 0.0f64);
        let mut s: f64 = arcs.iter().sum();
        for (m, &i) in order.iter().enumerate() {
            let x1 = arcs[i];
            let c = (n - m) as f64; // arcs longer than x on [x0, x1)
            if x1 > x0 {
                let g0 = s - c * x0;
                let g1 = s - c * x1;
                f += (g0.powi(k) - g1.powi(k)) / (c * f64::from(k));
            }
            f_at[i] = f;
            x0 = x1;
            s -= x1;
        }
        for (i, &o) in self.owner.iter().enumerate() {
            shares[o as usize] += f64::from(k) * f_at[i];
        }
        shares
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(n: usize) -> Placement {
        Placement::new((0..n).map(|i| Member::new(format!("node-{i:06}"), 1))).unwrap()
    }

    #[test]
    fn runs_of_a_value_are_spread_and_run_zero_is_the_key() {
        assert_eq!(&*run_key(b"k", 0), b"k");
        assert_eq!(&*run_key(b"k", 258), b"k#\0\0\0\0\0\0\x01\x02");
        let p = cluster(10);
        let owners: std::collections::HashSet<_> = (0..64)
            .map(|r| p.owner(&run_key(b"shard/big", r)).unwrap().id.clone())
            .collect();
        assert!(
            owners.len() >= 8,
            "64 runs over 10 members reach {}",
            owners.len()
        );
    }

    #[test]
    fn owners_are_distinct_ordered_and_start_with_the_owner() {
        let p = cluster(10);
        for i in 0..1000 {
            let key = format!("kv/key-{i}");
            let o = p.owners(key.as_bytes(), 3);
            assert_eq!(o.len(), 3);
            assert_eq!(o[0], p.owner(key.as_bytes()).unwrap());
            assert!(o[0] != o[1] && o[1] != o[2] && o[0] != o[2]);
        }
        assert_eq!(p.owners(b"x", 20).len(), 10);
        let empty = Placement::new([]).unwrap();
        assert!(empty.owner(b"x").is_none());
        assert!(empty.owners(b"x", 3).is_empty());
    }

    #[test]
    fn the_member_order_does_not_matter() {
        let a = Placement::new([
            Member::new("a", 1),
            Member::new("b", 2),
            Member::new("c", 1),
        ])
        .unwrap();
        let b = Placement::new([
            Member::new("c", 1),
            Member::new("a", 1),
            Member::new("b", 2),
        ])
        .unwrap();
        for i in 0..500 {
            let key = format!("obj/{i}");
            assert_eq!(a.owners(key.as_bytes(), 3), b.owners(key.as_bytes(), 3));
        }
    }

    #[test]
    fn bad_member_lists_are_refused_by_name() {
        let e = Placement::new([Member::new("a", 1), Member::new("a", 1)]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "member id \"a\" appears twice in the member list"
        );
        let e = Placement::new([Member::new("a", 0)]).unwrap_err();
        assert!(e.to_string().contains("weight 0"), "{e}");
        assert!(Placement::new([Member::new("a", MAX_WEIGHT + 1)]).is_err());
    }

    #[test]
    fn a_join_only_takes_keys_and_a_leave_only_gives_its_own() {
        let before = cluster(50);
        let mut members = before.members().to_vec();
        members.push(Member::new("joiner", 1));
        let after = Placement::new(members).unwrap();
        let mut moved = 0;
        for i in 0..20_000 {
            let key = format!("shard/d@1/part-{i}");
            let (a, b) = (before.owner(key.as_bytes()), after.owner(key.as_bytes()));
            if a != b {
                assert_eq!(b.unwrap().id, "joiner", "a key moved between old members");
                moved += 1;
            }
        }
        // About 1/51 of 20,000.
        assert!((200..700).contains(&moved), "{moved}");
        // Leaving is the same comparison the other way round.
    }

    #[test]
    fn exact_shares_match_sampled_ones_and_weights() {
        let p = Placement::new(
            (0..20).map(|i| Member::new(format!("n{i}"), if i < 10 { 1 } else { 2 })),
        )
        .unwrap();
        let shares = p.shares();
        assert!((shares.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        let mut counts = [0u64; 20];
        let n = 200_000;
        for i in 0..n {
            let o = p.owner(format!("k{i}").as_bytes()).unwrap();
            let idx = p.members().iter().position(|m| m == o).unwrap();
            counts[idx] += 1;
        }
        for (i, (&c, &s)) in counts.iter().zip(&shares).enumerate() {
            let sampled = c as f64 / n as f64;
            assert!(
                (sampled - s).abs() < 0.004,
                "member {i}: sampled {sampled:.4}, exact {s:.4}"
            );
        }
        let by_weight = |w: u32| -> f64 {
            p.members()
                .iter()
                .zip(&shares)
                .filter(|(m, _)| m.weight == w)
                .map(|(_, s)| s)
                .sum()
        };
        let (w1, w2) = (by_weight(1), by_weight(2));
        assert!(
            (w2 / w1 - 2.0).abs() < 0.35,
            "weight 2 owns {:.2}x",
            w2 / w1
        );
    }

    #[test]
    fn one_member_owns_everything() {
        let p = cluster(1);
        assert_eq!(p.shares(), vec![1.0]);
        assert_eq!(p.owner(b"anything").unwrap().id, "node-000000");
    }
}

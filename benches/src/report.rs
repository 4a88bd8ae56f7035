//! Markdown rows of ours / peer / limit, their ratios, and the small statistics
//! behind them (medians, latency percentiles).

use hdrhistogram::Histogram;

/// Bytes per second as decimal GB/s (10⁹ bytes), the unit of REFERENCE.md.
pub fn gbps(bytes: u64, secs: f64) -> f64 {
    if secs <= 0.0 {
        return 0.0;
    }
    bytes as f64 / secs / 1e9
}

/// The median of `values` (the mean of the middle two for an even count); 0 when
/// empty.
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// A latency histogram in nanoseconds, 1 ns to 10 minutes, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000_000, 3)
        .expect("1 ns .. 600 s at 3 significant digits is a valid histogram")
}

/// One side of a comparison: throughput and, where measured, latency percentiles.
#[derive(Debug, Clone, Copy, Default)]
pub struct Measure {
    /// Throughput, GB/s (median over rounds).
    pub gbps: f64,
    /// Median latency of one operation, µs (for criterion rows: its median time
    /// per iteration).
    pub p50_us: Option<f64>,
    /// 99th percentile latency of one operation, µs.
    pub p99_us: Option<f64>,
}

impl Measure {
    /// A throughput with the p50/p99 of `hist` (nanoseconds).
    pub fn with_latency(gbps: f64, hist: &Histogram<u64>) -> Self {
        if hist.is_empty() {
            return Self {
                gbps,
                ..Self::default()
            };
        }
        Self {
            gbps,
            p50_us: Some(hist.value_at_quantile(0.50) as f64 / 1e3),
            p99_us: Some(hist.value_at_quantile(0.99) as f64 / 1e3),
        }
    }

    fn latency_cell(&self) -> String {
        match (self.p50_us, self.p99_us) {
            (Some(a), Some(b)) => format!("{} / {}", fmt_us(a), fmt_us(b)),
            (Some(a), None) => fmt_us(a),
            _ => "–".into(),
        }
    }
}

fn fmt_us(us: f64) -> String {
    if us >= 100.0 {
        format!("{us:.0}")
    } else {
        format!("{us:.1}")
    }
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}×", a / b)
    } else {
        "–".into()
    }
}

/// One row of the result table.
#[derive(Debug, Clone)]
pub struct Row {
    /// What was measured ("gRPC Get vs Redis GET").
    pub bench: String,
    /// The case (value size, clients).
    pub case: String,
    /// Strata.
    pub ours: Measure,
    /// What a user would pick instead.
    pub peer: Option<Measure>,
    /// The machine's limit for the same work.
    pub limit: Option<Measure>,
}

impl Row {
    /// The markdown header that [`Row::markdown`] rows go under.
    pub fn header() -> String {
        "| bench | case | ours GB/s | peer GB/s | limit GB/s | ours/peer | ours/limit | ours p50 / p99 µs | peer p50 / p99 µs | limit p50 / p99 µs |\n\
         | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
            .to_owned()
    }

    /// The row as one markdown table line.
    pub fn markdown(&self) -> String {
        let gb = |m: Option<&Measure>| m.map_or("–".into(), |m| format!("{:.2}", m.gbps));
        let lat = |m: Option<&Measure>| m.map_or("–".into(), Measure::latency_cell);
        format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            self.bench,
            self.case,
            gb(Some(&self.ours)),
            gb(self.peer.as_ref()),
            gb(self.limit.as_ref()),
            self.peer
                .as_ref()
                .map_or("–".into(), |p| ratio(self.ours.gbps, p.gbps)),
            self.limit
                .as_ref()
                .map_or("–".into(), |l| ratio(self.ours.gbps, l.gbps)),
            lat(Some(&self.ours)),
            lat(self.peer.as_ref()),
            lat(self.limit.as_ref()),
        )
    }
}

/// `1 MiB`, `256 KiB`, `4 MiB`, `1.5 MiB`: sizes as the tables print them.
pub fn size_label(bytes: u64) -> String {
    const KIB: u64 = 1 << 10;
    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    match bytes {
        b if b >= GIB && b % GIB == 0 => format!("{} GiB", b / GIB),
        b if b >= MIB && b % MIB == 0 => format!("{} MiB", b / MIB),
        b if b >= MIB => format!("{:.1} MiB", b as f64 / MIB as f64),
        b if b >= KIB && b % KIB == 0 => format!("{} KiB", b / KIB),
        b => format!("{b} B"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_labels() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
        assert_eq!(size_label(1 << 20), "1 MiB");
        assert_eq!(size_label(256 << 10), "256 KiB");
        assert_eq!(gbps(2_000_000_000, 2.0), 1.0);
    }

    #[test]
    fn a_row_has_every_column() {
        let mut h = latency_histogram();
        h.record(1_000).ok();
        let row = Row {
            bench: "b".into(),
            case: "c".into(),
            ours: Measure::with_latency(1.0, &h),
            peer: Some(Measure::with_latency(2.0, &h)),
            limit: None,
        };
        let line = row.markdown();
        assert_eq!(line.matches('|').count(), 11, "{line}");
        assert!(line.contains("0.50×"), "{line}");
        assert_eq!(
            Row::header().lines().next().map(|l| l.matches('|').count()),
            Some(11)
        );
    }
}

//! Reduces a long curve to what a figure `buckets` pixels wide can show: per bucket of equal
//! x width, the lowest and the highest point, in step order. Averaging (or keeping every k-th
//! point) would hide a one-step spike, which is the thing a person looks for in a loss curve;
//! min/max keeps it and bounds the points drawn at 2 × `buckets`.

/// A bucket being filled: its index, its lowest and its highest point.
type Bucket = (usize, (u64, f64), (u64, f64));

/// The min and max point of each of `buckets` equal x ranges, in x order; the curve itself when
/// it has no more than 2 × `buckets` points. Non-finite losses are skipped (figures skip them).
/// `points` must be sorted by x (curves are stored in step order).
#[must_use]
pub fn min_max(points: &[(u64, f64)], buckets: usize) -> Vec<(u64, f64)> {
    let buckets = buckets.max(1);
    if points.len() <= 2 * buckets {
        return points.iter().copied().filter(|p| p.1.is_finite()).collect();
    }
    let (x0, x1) = (points[0].0, points[points.len() - 1].0);
    let span = (x1 - x0).max(1) as u128 + 1;
    let bucket_of = |x: u64| ((u128::from(x - x0) * buckets as u128) / span) as usize;
    let mut out = Vec::with_capacity(2 * buckets);
    let mut current: Option<Bucket> = None;
    let flush = |b: Option<Bucket>, out: &mut Vec<(u64, f64)>| {
        if let Some((_, lo, hi)) = b {
            let (first, second) = if lo.0 <= hi.0 { (lo, hi) } else { (hi, lo) };
            out.push(first);
            if second != first {
                out.push(second);
            }
        }
    };
    for &p in points.iter().filter(|p| p.1.is_finite()) {
        let b = bucket_of(p.0);
        match &mut current {
            Some((cur, lo, hi)) if *cur == b => {
                if p.1 < lo.1 {
                    *lo = p;
                }
                if p.1 > hi.1 {
                    *hi = p;
                }
            }
            _ => {
                flush(current.take(), &mut out);
                current = Some((b, p, p));
            }
        }
    }
    flush(current, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_curves_are_kept_whole() {
        let c: Vec<(u64, f64)> = (0..10).map(|i| (i, i as f64)).collect();
        assert_eq!(min_max(&c, 5), c);
    }

    #[test]
    fn a_one_step_spike_survives_and_the_size_is_bounded() {
        let mut c: Vec<(u64, f64)> = (0..1_000_000u64).map(|i| (i, 3.0 - i as f64 * 1e-6)).collect();
        c[654_321].1 = 50.0;
        c[10].1 = -1.0;
        let d = min_max(&c, 800);
        assert!(d.len() <= 1600, "{} points", d.len());
        assert!(d.contains(&(654_321, 50.0)), "the spike is kept");
        assert!(d.contains(&(10, -1.0)), "the dip is kept");
        assert!(d.windows(2).all(|w| w[0].0 < w[1].0), "x order");
        assert_eq!(d.first().map(|p| p.0), Some(0));
        assert_eq!(d.last().map(|p| p.0), Some(999_999), "the last point's bucket keeps its max or min");
    }

    #[test]
    fn non_finite_losses_are_skipped() {
        let c: Vec<(u64, f64)> = (0..100).map(|i| (i, if i == 50 { f64::NAN } else { 1.0 })).collect();
        assert!(min_max(&c, 10).iter().all(|p| p.1.is_finite()));
        assert!(min_max(&c, 1000).iter().all(|p| p.1.is_finite()));
    }
}

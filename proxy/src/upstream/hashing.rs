//! Consistent hashing for RING_HASH and MAGLEV: tables built over the endpoints the balancer picks
//! from (weighted), so a request hash (from the route's `hash_policy`) maps to the same endpoint for
//! as long as it is there, and most keys stay put when the set changes. Hashes are xxHash64, as
//! Envoy's.

use std::net::SocketAddr;

pub fn xxhash(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh64::xxh64(bytes, 0)
}

/// A hash ring: every endpoint placed at points in proportion to its weight, at least `min` points
/// overall and at most `max`; a key goes to the first point at or after its hash. The lightest
/// endpoint's count is rounded up to a power of two, so adding or removing an endpoint rarely changes
/// the others' points: only the keys of the endpoint that came or went move.
#[derive(Debug, Default)]
pub struct Ring {
    /// (point, endpoint index), sorted by point.
    points: Vec<(u64, u32)>,
}

impl Ring {
    pub fn build(endpoints: &[(SocketAddr, u32)], min: u64, max: u64) -> Ring {
        let total: u64 = endpoints.iter().map(|(_, w)| u64::from((*w).max(1))).sum();
        if total == 0 {
            return Ring::default();
        }
        let min_weight = endpoints.iter().map(|(_, w)| u64::from((*w).max(1))).min().unwrap_or(1) as f64 / total as f64;
        // The lightest endpoint's points: its share of `min`, rounded up to a power of two.
        let lightest = ((min_weight * min as f64).ceil() as u64).max(1).next_power_of_two() as f64;
        let scale = (lightest / min_weight).min(max as f64);
        let mut points = Vec::with_capacity(scale as usize + endpoints.len());
        let (mut placed, mut target) = (0.0f64, 0.0f64);
        for (index, (addr, weight)) in endpoints.iter().enumerate() {
            target += scale * u64::from((*weight).max(1)) as f64 / total as f64;
            let mut i = 0u64;
            while placed < target {
                points.push((xxhash(format!("{addr}_{i}").as_bytes()), index as u32));
                placed += 1.0;
                i += 1;
            }
        }
        points.sort_unstable();
        Ring { points }
    }

    pub fn pick(&self, hash: u64) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let at = self.points.partition_point(|(p, _)| *p < hash);
        Some(self.points[if at == self.points.len() { 0 } else { at }].1 as usize)
    }
}

/// A Maglev lookup table: `size` (a prime) slots filled by the endpoints' preference permutations,
/// heavier endpoints taking turns more often.
#[derive(Debug, Default)]
pub struct Maglev {
    table: Vec<u32>,
}

impl Maglev {
    pub fn build(endpoints: &[(SocketAddr, u32)], size: u64) -> Maglev {
        if endpoints.is_empty() || size == 0 {
            return Maglev::default();
        }
        let size = size as usize;
        let max_weight = endpoints.iter().map(|(_, w)| (*w).max(1)).max().unwrap_or(1) as f64;
        let prefs: Vec<(usize, usize)> = endpoints
            .iter()
            .map(|(addr, _)| {
                let name = addr.to_string();
                let offset = (xxhash(name.as_bytes()) % size as u64) as usize;
                let skip = (xxhash_rust::xxh64::xxh64(name.as_bytes(), 1) % (size as u64 - 1) + 1) as usize;
                (offset, skip)
            })
            .collect();
        let mut next = vec![0usize; endpoints.len()];
        let mut credit = vec![0f64; endpoints.len()];
        let mut table = vec![u32::MAX; size];
        let mut filled = 0;
        'fill: loop {
            for (i, (_, weight)) in endpoints.iter().enumerate() {
                credit[i] += f64::from((*weight).max(1)) / max_weight;
                if credit[i] < 1.0 {
                    continue;
                }
                credit[i] -= 1.0;
                let (offset, skip) = prefs[i];
                loop {
                    let slot = (offset + next[i] * skip) % size;
                    next[i] += 1;
                    if table[slot] == u32::MAX {
                        table[slot] = i as u32;
                        filled += 1;
                        break;
                    }
                }
                if filled == size {
                    break 'fill;
                }
            }
        }
        Maglev { table }
    }

    pub fn pick(&self, hash: u64) -> Option<usize> {
        (!self.table.is_empty()).then(|| self.table[(hash % self.table.len() as u64) as usize] as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(n: u16) -> Vec<(SocketAddr, u32)> {
        (0..n).map(|i| (SocketAddr::from(([10, 0, 0, 1], 8000 + i)), 1)).collect()
    }

    /// Of the keys whose endpoint is still there after one of ten goes, the share that stays on it;
    /// and the share of all keys that stays. `table` builds a picker for a set of endpoints.
    fn kept<P: Fn(u64) -> usize>(table: impl Fn(&[(SocketAddr, u32)]) -> P) -> (f64, f64) {
        let before = endpoints(10);
        let mut after = before.clone();
        let gone = after.remove(3).0;
        let (pick_before, pick_after) = (table(&before), table(&after));
        let (mut eligible, mut stayed, mut stayed_all) = (0, 0, 0);
        for key in 0..10_000u64 {
            let hash = xxhash(&key.to_le_bytes());
            let was = before[pick_before(hash)].0;
            let now = after[pick_after(hash)].0;
            if was != gone {
                eligible += 1;
                stayed += usize::from(was == now);
            }
            stayed_all += usize::from(was == now);
        }
        (stayed as f64 / eligible as f64, stayed_all as f64 / 10_000.0)
    }

    #[test]
    fn ring_hash_keeps_keys_when_an_endpoint_goes() {
        let (kept_of_others, kept_of_all) = kept(|e| {
            let ring = Ring::build(e, 1024, 8 << 20);
            move |h| ring.pick(h).unwrap()
        });
        assert!(kept_of_others >= 0.99, "{kept_of_others}");
        assert!(kept_of_all >= 0.85, "{kept_of_all}");
    }

    #[test]
    fn maglev_keeps_keys_when_an_endpoint_goes() {
        let (kept_of_others, kept_of_all) = kept(|e| {
            let maglev = Maglev::build(e, 65537);
            move |h| maglev.pick(h).unwrap()
        });
        assert!(kept_of_others >= 0.95, "{kept_of_others}");
        assert!(kept_of_all >= 0.85, "{kept_of_all}");
    }

    #[test]
    fn both_spread_keys_by_weight() {
        let mut weighted = endpoints(2);
        weighted[1].1 = 3;
        let ring = Ring::build(&weighted, 1024, 8 << 20);
        let maglev = Maglev::build(&weighted, 65537);
        let share = |pick: &dyn Fn(u64) -> Option<usize>| {
            (0..20_000u64).filter(|k| pick(xxhash(&k.to_le_bytes())) == Some(1)).count() as f64 / 20_000.0
        };
        let (ring_share, maglev_share) = (share(&|h| ring.pick(h)), share(&|h| maglev.pick(h)));
        assert!((ring_share - 0.75).abs() < 0.05, "ring: {ring_share}");
        assert!((maglev_share - 0.75).abs() < 0.05, "maglev: {maglev_share}");
    }
}

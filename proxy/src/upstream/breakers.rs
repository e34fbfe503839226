//! Circuit breakers (`circuit_breakers.thresholds`): limits on what a cluster has in flight, over
//! all its endpoints. A request over `max_requests` is answered at once (503 `UO`); a retry over
//! `max_retries` is not made. Envoy's defaults: 1024 requests, 3 retries.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

/// The limits of the default routing priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    pub max_requests: u32,
    pub max_retries: u32,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds { max_requests: 1024, max_retries: 3 }
    }
}

/// What a cluster has open against its thresholds.
#[derive(Debug, Default)]
pub struct Open {
    requests: Arc<AtomicU32>,
    retries: Arc<AtomicU32>,
}

/// One admitted request or retry; its place is given back on drop.
#[derive(Debug)]
pub struct Slot(Arc<AtomicU32>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn admit(counter: &Arc<AtomicU32>, limit: u32) -> Option<Slot> {
    counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < limit).then_some(n + 1)).ok()?;
    Some(Slot(counter.clone()))
}

impl Open {
    /// A place for one more request, if the cluster is under `max_requests`.
    pub fn request(&self, t: &Thresholds) -> Option<Slot> {
        admit(&self.requests, t.max_requests)
    }

    /// A place for one more retry, if the cluster is under `max_retries`.
    pub fn retry(&self, t: &Thresholds) -> Option<Slot> {
        admit(&self.retries, t.max_retries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_the_limit_and_frees_on_drop() {
        let (open, t) = (Open::default(), Thresholds { max_requests: 2, max_retries: 0 });
        let first = open.request(&t).unwrap();
        let _second = open.request(&t).unwrap();
        assert!(open.request(&t).is_none(), "the third is over the limit");
        drop(first);
        assert!(open.request(&t).is_some(), "a freed place is taken again");
        assert!(open.retry(&t).is_none(), "no retries at all with max_retries 0");
    }
}

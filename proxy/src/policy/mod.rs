//! Per-request policies: retries (a tower retry policy), the HTTP filters that run ahead of the
//! router as tower layers stacked in the order the connection manager lists them (local rate
//! limiting, fault injection, authorization), each with its per-route config
//! (`typed_per_filter_config`), and the limits a request runs under.

pub mod deadline;
pub mod fault;
pub mod filters;
pub mod local_ratelimit;
pub mod mirror;
pub mod rbac;
pub mod retry;
pub mod timeout;

use std::sync::Arc;

/// A share of requests (`FractionalPercent`): `numerator` out of `denominator`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fraction {
    pub numerator: u32,
    pub denominator: u32,
}

impl Fraction {
    pub const NONE: Fraction = Fraction { numerator: 0, denominator: 100 };
    pub const ALL: Fraction = Fraction { numerator: 100, denominator: 100 };

    /// Whether this request is in the share (a fresh random draw).
    pub fn sample(self) -> bool {
        self.numerator >= self.denominator
            || (self.numerator > 0 && fastrand::u32(0..self.denominator) < self.numerator)
    }
}

/// One HTTP filter of a connection manager (the router aside), by the name its per-route configs
/// are keyed by.
#[derive(Debug)]
pub struct HttpFilter {
    pub name: String,
    /// Its config in the connection manager, used where no route gives it another.
    pub config: FilterConfig,
    /// `disabled: true` in the connection manager: off unless a route, virtual host or route table
    /// gives it a config of its own.
    pub disabled_by_default: bool,
    /// A fault filter's counters and faults in progress, whichever config applies.
    pub fault_stats: Option<fault::FaultStats>,
    /// An RBAC filter's counters, whichever config applies.
    pub rbac_stats: Option<rbac::RbacStats>,
}

/// A filter's config: the connection manager's, or one that a route, virtual host or route table
/// gives it (`typed_per_filter_config`).
#[derive(Debug, Clone)]
pub enum FilterConfig {
    LocalRateLimit(Arc<local_ratelimit::LocalRateLimit>),
    Fault(Arc<fault::Fault>),
    Rbac(Arc<rbac::Rbac>),
    /// `FilterConfig { disabled: true }`: the filter does nothing for these requests.
    Disabled,
}

impl FilterConfig {
    /// Whether `self` may stand in for `other` (the same filter, or turning it off).
    pub fn same_kind(&self, other: &FilterConfig) -> bool {
        matches!(
            (self, other),
            (FilterConfig::Disabled, _)
                | (FilterConfig::LocalRateLimit(_), FilterConfig::LocalRateLimit(_))
                | (FilterConfig::Fault(_), FilterConfig::Fault(_))
                | (FilterConfig::Rbac(_), FilterConfig::Rbac(_))
        )
    }
}

/// The per-filter configs of one route, virtual host or route table.
#[derive(Debug, Default)]
pub struct FilterOverrides(Vec<(String, FilterConfig)>);

impl FilterOverrides {
    pub fn new(configs: Vec<(String, FilterConfig)>) -> Self {
        FilterOverrides(configs)
    }

    pub fn get(&self, filter: &str) -> Option<&FilterConfig> {
        self.0.iter().find(|(name, _)| name == filter).map(|(_, config)| config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractions_sample_their_share() {
        assert!(!(0..1000).any(|_| Fraction::NONE.sample()));
        assert!((0..1000).all(|_| Fraction::ALL.sample()));
        let quarter = Fraction { numerator: 2500, denominator: 10_000 };
        let hits = (0..20_000).filter(|_| quarter.sample()).count();
        assert!((4500..5500).contains(&hits), "{hits} of 20000");
    }
}

//! Address ranges (`CidrRange`) as Envoy's config names them: which peers are internal, and later
//! which sources an authorization policy means.

use std::net::IpAddr;

/// An address prefix and its length (`10.0.0.0/8`, `fd00::/8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CidrRange {
    prefix: IpAddr,
    len: u8,
}

impl CidrRange {
    /// A range from its address and prefix length; the length must fit the address family.
    pub fn new(prefix: IpAddr, len: u32) -> Result<CidrRange, String> {
        let bits = if prefix.is_ipv4() { 32 } else { 128 };
        if len > bits {
            return Err(format!("prefix length {len} is longer than the address ({bits} bits)"));
        }
        Ok(CidrRange { prefix, len: len as u8 })
    }

    /// The prefix length in bits (a longer prefix is a more specific range).
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// Whether `ip` is in the range (an IPv4-mapped IPv6 address counts as its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.prefix, ip.to_canonical()) {
            (IpAddr::V4(p), IpAddr::V4(a)) => same_prefix(u32::from(p).into(), u32::from(a).into(), 32, self.len),
            (IpAddr::V6(p), IpAddr::V6(a)) => same_prefix(u128::from(p), u128::from(a), 128, self.len),
            _ => false,
        }
    }
}

fn same_prefix(prefix: u128, addr: u128, bits: u8, len: u8) -> bool {
    if len == 0 {
        return true;
    }
    let shift = bits - len;
    (prefix >> shift) == (addr >> shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_contain_their_addresses_only() {
        let ten = CidrRange::new("10.0.0.0".parse().unwrap(), 8).unwrap();
        assert!(ten.contains("10.200.3.4".parse().unwrap()));
        assert!(ten.contains("::ffff:10.1.1.1".parse().unwrap()), "IPv4-mapped");
        assert!(!ten.contains("11.0.0.1".parse().unwrap()));
        assert!(!ten.contains("::1".parse().unwrap()));
        let host = CidrRange::new("127.0.0.1".parse().unwrap(), 32).unwrap();
        assert!(host.contains("127.0.0.1".parse().unwrap()) && !host.contains("127.0.0.2".parse().unwrap()));
        let all = CidrRange::new("::".parse().unwrap(), 0).unwrap();
        assert!(all.contains("fd00::1".parse().unwrap()));
        let ula = CidrRange::new("fd00::".parse().unwrap(), 8).unwrap();
        assert!(ula.contains("fd12::5".parse().unwrap()) && !ula.contains("fe80::1".parse().unwrap()));
        assert!(CidrRange::new("10.0.0.0".parse().unwrap(), 33).is_err());
    }
}

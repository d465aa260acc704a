//! IP networks in CIDR notation (`10.88.0.0/16`, `fd00:88::/64`), the one address type the
//! configuration, IPAM and the rule builders share.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An IPv4 or IPv6 network: an address with its host bits cleared and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

/// Why a string is not a CIDR.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid CIDR {input:?}: {reason}")]
pub struct CidrError {
    /// The rejected text.
    pub input: String,
    /// What was wrong with it.
    pub reason: &'static str,
}

impl Cidr {
    /// The network `addr/prefix`; host bits of `addr` must be zero.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Cidr, CidrError> {
        let err = |reason| CidrError {
            input: format!("{addr}/{prefix}"),
            reason,
        };
        if prefix > max_prefix(addr) {
            return Err(err("prefix length too long for the address family"));
        }
        let cidr = Cidr {
            network: addr,
            prefix,
        };
        if cidr.masked(addr) != addr {
            return Err(err("host bits are set"));
        }
        Ok(cidr)
    }

    /// The network address (host bits zero).
    pub fn network(&self) -> IpAddr {
        self.network
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether this is an IPv6 network.
    pub fn is_ipv6(&self) -> bool {
        self.network.is_ipv6()
    }

    /// Number of host bits (address bits outside the prefix).
    pub fn host_bits(&self) -> u8 {
        max_prefix(self.network) - self.prefix
    }

    /// Whether `addr` lies inside this network.
    pub fn contains(&self, addr: IpAddr) -> bool {
        addr.is_ipv6() == self.network.is_ipv6() && self.masked(addr) == self.network
    }

    /// The address at offset `n` from the network address, if it is inside the network.
    pub fn nth(&self, n: u128) -> Option<IpAddr> {
        let bits = self.host_bits();
        if bits < 128 && n >> bits != 0 {
            return None;
        }
        Some(match self.network {
            IpAddr::V4(a) => {
                let n = u32::try_from(n).ok()?;
                IpAddr::V4(Ipv4Addr::from(u32::from(a) | n))
            }
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) | n)),
        })
    }

    /// The offset of `addr` from the network address, if it is inside the network.
    pub fn offset_of(&self, addr: IpAddr) -> Option<u128> {
        if !self.contains(addr) {
            return None;
        }
        Some(to_u128(addr) - to_u128(self.network))
    }

    fn masked(&self, addr: IpAddr) -> IpAddr {
        match addr {
            IpAddr::V4(a) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - self.prefix)
                };
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - self.prefix)
                };
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
        }
    }
}

fn max_prefix(addr: IpAddr) -> u8 {
    if addr.is_ipv4() { 32 } else { 128 }
}

fn to_u128(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let err = |reason| CidrError {
            input: s.to_string(),
            reason,
        };
        let (addr, prefix) = s
            .trim()
            .split_once('/')
            .ok_or_else(|| err("missing /prefix"))?;
        let addr: IpAddr = addr.parse().map_err(|_| err("not an IP address"))?;
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| err("prefix length is not a number"))?;
        Cidr::new(addr, prefix).map_err(|e| err(e.reason))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl TryFrom<String> for Cidr {
    type Error = CidrError;

    fn try_from(s: String) -> Result<Cidr, CidrError> {
        s.parse()
    }
}

impl From<Cidr> for String {
    fn from(c: Cidr) -> String {
        c.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_v4_and_v6() {
        let c: Cidr = "10.88.0.0/16".parse().unwrap();
        assert_eq!(c.to_string(), "10.88.0.0/16");
        assert_eq!(c.host_bits(), 16);
        let c: Cidr = "fd00:88::/64".parse().unwrap();
        assert_eq!(c.to_string(), "fd00:88::/64");
        assert!(c.is_ipv6());
    }

    #[test]
    fn rejects_bad_input() {
        for bad in [
            "10.88.0.1/16",
            "10.88.0.0",
            "10.88.0.0/33",
            "x/8",
            "10.0.0.0/y",
            "::1/129",
            "",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn nth_and_offset_are_inverse_and_bounded() {
        let c: Cidr = "10.88.0.0/16".parse().unwrap();
        assert_eq!(c.nth(1), Some("10.88.0.1".parse().unwrap()));
        assert_eq!(c.nth(65535), Some("10.88.255.255".parse().unwrap()));
        assert_eq!(c.nth(65536), None);
        assert_eq!(c.offset_of("10.88.1.2".parse().unwrap()), Some(258));
        assert_eq!(c.offset_of("10.89.0.0".parse().unwrap()), None);
        assert_eq!(c.offset_of("::1".parse().unwrap()), None);
        let c: Cidr = "::/0".parse().unwrap();
        assert_eq!(
            c.nth(u128::MAX),
            Some("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap())
        );
    }
}

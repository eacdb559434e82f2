//! IP prefixes as the config writes them (`100.64.0.0/10`, `fd64::/64`).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An IP prefix such as `100.64.0.0/10` or `fd64::/64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl FromStr for Prefix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, len) =
            s.split_once('/').ok_or_else(|| format!("prefix {s:?} needs a length, e.g. 100.64.0.0/10"))?;
        let addr: IpAddr = addr.parse().map_err(|_| format!("{addr:?} is not an IP address"))?;
        let len: u8 = len.parse().map_err(|_| format!("prefix length {len:?} is not a number"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(format!("prefix length {len} is longer than {max}"));
        }
        let prefix = Prefix { addr, len };
        let network = prefix.network();
        if network != addr {
            // The kernel refuses such a route; say what was probably meant.
            return Err(format!("{s} has host bits set; did you mean {network}/{len}?"));
        }
        Ok(prefix)
    }
}

impl Prefix {
    /// The address with every bit past the prefix length cleared.
    pub fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => IpAddr::V4((u32::from(a) & mask_v4(self.len)).into()),
            IpAddr::V6(a) => IpAddr::V6((u128::from(a) & mask_v6(self.len)).into()),
        }
    }
}

fn mask_v4(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

fn mask_v6(len: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0)
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// Whether `ip` lies inside `prefix`.
pub fn prefix_contains(prefix: &Prefix, ip: IpAddr) -> bool {
    match (prefix.addr, ip) {
        (IpAddr::V4(p), IpAddr::V4(a)) => u32::from(p) & mask_v4(prefix.len) == u32::from(a) & mask_v4(prefix.len),
        (IpAddr::V6(p), IpAddr::V6(a)) => u128::from(p) & mask_v6(prefix.len) == u128::from(a) & mask_v6(prefix.len),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_contain_what_they_should() {
        let p: Prefix = "100.64.0.0/10".parse().unwrap();
        assert!(prefix_contains(&p, "100.127.255.255".parse().unwrap()));
        assert!(!prefix_contains(&p, "100.128.0.0".parse().unwrap()));
        let all: Prefix = "0.0.0.0/0".parse().unwrap();
        assert!(prefix_contains(&all, "198.18.0.1".parse().unwrap()));
        assert!("100.64.0.0/33".parse::<Prefix>().is_err());
        let err = "100.64.0.1/10".parse::<Prefix>().unwrap_err();
        assert!(err.contains("did you mean 100.64.0.0/10"), "{err}");
    }
}

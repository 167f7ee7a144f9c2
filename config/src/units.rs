//! Value parsers for PowerMTA units: sizes (`40K`), durations (`4d12h`), rates (`83/10m`),
//! booleans, CIDRs and `[host]:port` next hops. Each returns a message fit for a user.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

pub fn parse_bool(v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "yes" | "true" | "on" | "1" => Ok(true),
        "no" | "false" | "off" | "0" => Ok(false),
        _ => Err(format!("`{v}` is not a boolean; use yes or no")),
    }
}

pub fn parse_size(v: &str) -> Result<u64, String> {
    let (digits, mult) = match v.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let mult = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'B' => 1,
                _ => return Err(format!("`{v}`: unknown size unit `{c}`; use K, M or G")),
            };
            (&v[..i], mult)
        }
        _ => (v, 1),
    };
    let n: u64 = digits.parse().map_err(|_| format!("`{v}` is not a size; write e.g. 40K, 20M, 1G"))?;
    n.checked_mul(mult).ok_or_else(|| format!("`{v}` is too large"))
}

/// `30s`, `10m`, `4h`, `2d`, `4d12h`, `1w`; a bare number is seconds.
pub fn parse_duration(v: &str) -> Result<Duration, String> {
    let bad = || format!("`{v}` is not a duration; write e.g. 30s, 10m, 4h, 4d12h");
    if v.is_empty() {
        return Err(bad());
    }
    if let Ok(secs) = v.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total_ms: u64 = 0;
    let mut number = String::new();
    let mut chars = v.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let n: u64 = number.parse().map_err(|_| bad())?;
        number.clear();
        let unit_ms: u64 = match c {
            'm' if chars.peek() == Some(&'s') => {
                chars.next();
                1
            }
            's' => 1_000,
            'm' => 60_000,
            'h' => 3_600_000,
            'd' => 86_400_000,
            'w' => 7 * 86_400_000,
            _ => return Err(bad()),
        };
        total_ms = total_ms.checked_add(n.checked_mul(unit_ms).ok_or_else(bad)?).ok_or_else(bad)?;
    }
    if !number.is_empty() {
        return Err(bad());
    }
    Ok(Duration::from_millis(total_ms))
}

/// A rate: `count` events per `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub period: Duration,
}

pub fn parse_rate(v: &str) -> Result<Rate, String> {
    let bad = || format!("`{v}` is not a rate; write e.g. 100/h, 83/10m, 1/s");
    let (count, per) = v.split_once('/').ok_or_else(bad)?;
    let count: u32 = count.parse().map_err(|_| bad())?;
    let per = if per.starts_with(|c: char| c.is_ascii_digit()) { per.to_string() } else { format!("1{per}") };
    let period = parse_duration(&per).map_err(|_| bad())?;
    if period.is_zero() {
        return Err(bad());
    }
    Ok(Rate { count, period })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = if self.prefix == 0 { 0 } else { u32::MAX << (32 - self.prefix as u32) };
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = if self.prefix == 0 { 0 } else { u128::MAX << (128 - self.prefix as u32) };
                u128::from(net) & mask == u128::from(ip) & mask
            }
            // `0/0` matches every client, IPv4 or IPv6.
            _ => self.prefix == 0,
        }
    }
}

/// `127.0.0.1`, `10.0.0.0/8`, `0/0`, `::1/128`.
pub fn parse_cidr(v: &str) -> Result<Cidr, String> {
    let bad = || format!("`{v}` is not an address or CIDR; write e.g. 10.0.0.0/8 or 0/0");
    let (addr, prefix) = match v.split_once('/') {
        Some((a, p)) => (a, Some(p.parse::<u8>().map_err(|_| bad())?)),
        None => (v, None),
    };
    let addr: IpAddr = if addr == "0" { IpAddr::from([0, 0, 0, 0]) } else { addr.parse().map_err(|_| bad())? };
    let width = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = prefix.unwrap_or(width);
    if prefix > width {
        return Err(bad());
    }
    Ok(Cidr { addr, prefix })
}

/// A listener address: `IP:PORT`, `[v6]:PORT`, or PowerMTA's `0/0:25` for all addresses.
pub fn parse_listen(v: &str) -> Result<SocketAddr, String> {
    if let Some(port) = v.strip_prefix("0/0:") {
        let port: u16 = port.parse().map_err(|_| format!("`{v}`: bad port"))?;
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    v.parse().map_err(|_| format!("`{v}` is not IP:PORT; write e.g. 127.0.0.1:2525"))
}

/// One static next hop from `smtp-hosts`: `[127.0.0.1]:2526`, `[mx.example.com]`, `host:25`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

pub fn parse_hostport(v: &str) -> Result<HostPort, String> {
    let bad = || format!("`{v}` is not a next hop; write [IP]:PORT or host[:PORT]");
    let (host, port) = if let Some(rest) = v.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(bad)?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| bad())?,
            None if after.is_empty() => 25,
            None => return Err(bad()),
        };
        (host, port)
    } else {
        match v.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h, p.parse().map_err(|_| bad())?),
            _ => (v, 25),
        }
    };
    if host.is_empty() {
        return Err(bad());
    }
    Ok(HostPort { host: host.to_ascii_lowercase(), port })
}

/// `a,b;c` → preference levels `[[a, b], [c]]`.
pub fn parse_smtp_hosts(v: &str) -> Result<Vec<Vec<HostPort>>, String> {
    v.split(';')
        .map(|level| level.split(',').filter(|h| !h.trim().is_empty()).map(|h| parse_hostport(h.trim())).collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        for (input, expected) in [
            ("40K", Some(40 << 10)),
            ("20M", Some(20 << 20)),
            ("1G", Some(1 << 30)),
            ("512", Some(512)),
            ("1X", None),
            ("M", None),
        ] {
            assert_eq!(parse_size(input).ok(), expected, "{input}");
        }
    }

    #[test]
    fn durations() {
        let s = Duration::from_secs;
        for (input, expected) in [
            ("30s", Some(s(30))),
            ("10m", Some(s(600))),
            ("4d12h", Some(s(4 * 86400 + 12 * 3600))),
            ("90", Some(s(90))),
            ("250ms", Some(Duration::from_millis(250))),
            ("4x", None),
            ("h", None),
            ("1h3", None),
        ] {
            assert_eq!(parse_duration(input).ok(), expected, "{input}");
        }
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("100/h").unwrap(), Rate { count: 100, period: Duration::from_secs(3600) });
        assert_eq!(parse_rate("83/10m").unwrap(), Rate { count: 83, period: Duration::from_secs(600) });
        assert!(parse_rate("100").is_err());
        assert!(parse_rate("1/0s").is_err());
    }

    #[test]
    fn cidrs() {
        let c = parse_cidr("10.0.0.0/8").unwrap();
        assert!(c.contains("10.9.8.7".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(parse_cidr("0/0").unwrap().contains("::1".parse().unwrap()));
        assert!(parse_cidr("127.0.0.1").unwrap().contains("127.0.0.1".parse().unwrap()));
        assert!(!parse_cidr("127.0.0.1").unwrap().contains("127.0.0.2".parse().unwrap()));
        assert!(parse_cidr("10.0.0.0/33").is_err());
    }

    #[test]
    fn hosts() {
        let levels = parse_smtp_hosts("[127.0.0.1]:2526,[127.0.0.2];mx.b.test").unwrap();
        assert_eq!(levels.len(), 2);
        assert_eq!(levels[0][0], HostPort { host: "127.0.0.1".into(), port: 2526 });
        assert_eq!(levels[0][1].port, 25);
        assert_eq!(levels[1][0].host, "mx.b.test");
        assert!(parse_hostport("[1.2.3.4]x").is_err());
    }
}

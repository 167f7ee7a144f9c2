//! HAProxy's PROXY protocol header (v1 text, v2 binary), as a sender writes it first on a
//! connection to a proxy host: "connect from `source` to `destination` for me"
//! (haproxy.org/download/2.6/doc/proxy-protocol.txt). sluice sends through proxies
//! (`smtp-proxy-source-host`, `<proxy>`); it does not read the header.

use std::net::SocketAddr;

/// The v2 header's first twelve bytes.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The header for a TCP connection from `source` to `destination`, or None when their
/// address families differ (the protocol names one family for both).
pub fn header(version: u8, source: SocketAddr, destination: SocketAddr) -> Option<Vec<u8>> {
    if source.is_ipv4() != destination.is_ipv4() {
        return None;
    }
    if version == 1 {
        let family = if source.is_ipv4() { "TCP4" } else { "TCP6" };
        let line =
            format!("PROXY {family} {} {} {} {}\r\n", source.ip(), destination.ip(), source.port(), destination.port());
        return Some(line.into_bytes());
    }
    let mut h = V2_SIGNATURE.to_vec();
    h.push(0x21); // version 2, PROXY
    let addresses: Vec<u8> = match (source, destination) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            h.push(0x11); // TCP over IPv4
            [s.ip().octets().as_slice(), &d.ip().octets()].concat()
        }
        (SocketAddr::V6(s), SocketAddr::V6(d)) => {
            h.push(0x21); // TCP over IPv6
            [s.ip().octets().as_slice(), &d.ip().octets()].concat()
        }
        _ => unreachable!("families checked above"),
    };
    let len = addresses.len() + 4;
    h.extend_from_slice(&(len as u16).to_be_bytes());
    h.extend_from_slice(&addresses);
    h.extend_from_slice(&source.port().to_be_bytes());
    h.extend_from_slice(&destination.port().to_be_bytes());
    Some(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn version_1_is_one_line() {
        let h = header(1, a("203.0.113.7:0"), a("198.51.100.25:25")).unwrap();
        assert_eq!(h, b"PROXY TCP4 203.0.113.7 198.51.100.25 0 25\r\n");
        let h = header(1, a("[2001:db8::7]:0"), a("[2001:db8::25]:25")).unwrap();
        assert_eq!(h, b"PROXY TCP6 2001:db8::7 2001:db8::25 0 25\r\n");
    }

    #[test]
    fn version_2_is_the_specification_layout() {
        let h = header(2, a("203.0.113.7:1024"), a("198.51.100.25:25")).unwrap();
        // Section 2.2: signature, 0x21 (v2 PROXY), 0x11 (TCP4), length 12, addresses, ports.
        let mut want = V2_SIGNATURE.to_vec();
        want.extend_from_slice(&[0x21, 0x11, 0, 12, 203, 0, 113, 7, 198, 51, 100, 25, 4, 0, 0, 25]);
        assert_eq!(h, want);
        let h = header(2, a("[2001:db8::7]:0"), a("[2001:db8::25]:25")).unwrap();
        assert_eq!((h[13], u16::from_be_bytes([h[14], h[15]]), h.len()), (0x21, 36, 16 + 36));
    }

    #[test]
    fn mixed_families_have_no_header() {
        assert_eq!(header(1, a("203.0.113.7:0"), a("[2001:db8::25]:25")), None);
        assert_eq!(header(2, a("[2001:db8::7]:0"), a("198.51.100.25:25")), None);
    }
}

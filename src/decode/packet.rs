//! Decoding of the raw packet headers sFlow samples carry (sFlow v5 §5.2
//! `sampled_header`), with etherparse's lax slicer: sampled headers are truncated
//! (usually to 128 bytes), which the strict slicer refuses.
//!
//! Handles Ethernet II with VLAN and QinQ tags, and headers that start at IPv4 or IPv6
//! (header protocols 11 and 12, which pmacctd sends).
//!
//! Fast path: the usual header (Ethernet with up to two VLAN tags, IPv4 or IPv6 without
//! extension headers, carrying TCP, UDP or ICMP) is read here directly. etherparse's lax
//! slicer builds and moves a large result struct per packet, which was a quarter of the
//! CPU per sFlow sample. Anything else (IPv6 extension headers, IPv4 AH, MACsec, other
//! protocols, more tags, bad lengths or versions) goes to etherparse, which stays the
//! authority; tests check that both agree wherever the fast path answers.

use std::net::IpAddr;

use etherparse::{LaxNetSlice, LaxSlicedPacket};

use super::{be16, FlowRecord, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP};

/// What flowguard needs from one packet header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderInfo {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: u8,
    pub src_port: u16,
    pub dst_port: u16,
    pub tcp_flags: u8,
    /// IPv4 MF set or non-zero offset; IPv6 with a fragment header.
    pub fragment: bool,
    /// Length of the IP packet as its header states (before truncation).
    pub ip_len: u32,
}

impl HeaderInfo {
    /// The traffic one sampled packet with this header stands for at sampling rate
    /// `rate` (sFlow flow samples, IPFIX packet sections): `rate` packets of its IP
    /// length, and no flow count of its own.
    pub fn sampled(&self, rate: u32) -> FlowRecord {
        FlowRecord {
            src: self.src,
            dst: self.dst,
            src_port: self.src_port,
            dst_port: self.dst_port,
            protocol: self.protocol,
            tcp_flags: self.tcp_flags,
            fragment: self.fragment,
            packets: u64::from(rate),
            bytes: u64::from(self.ip_len) * u64::from(rate),
            flows: 0,
            end_age_ms: 0,
            duration_ms: 0,
        }
    }
}

/// sFlow `header_protocol` values we decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderStart {
    Ethernet,
    Ipv4,
    Ipv6,
}

pub fn decode_header(start: HeaderStart, bytes: &[u8]) -> Option<HeaderInfo> {
    fast_header(start, bytes).or_else(|| lax_header(start, bytes))
}

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86DD;
/// The tag ethertypes etherparse reads as VLAN headers (802.1Q, 802.1ad, old QinQ).
/// A `matches!`, not `[..].contains`: the slice search is not always inlined, and this
/// runs once per sampled packet.
fn is_vlan(ethertype: u16) -> bool {
    matches!(ethertype, 0x8100 | 0x88A8 | 0x9100)
}

/// The usual header read directly; None = not handled here (not "undecodable").
fn fast_header(start: HeaderStart, b: &[u8]) -> Option<HeaderInfo> {
    let ip = match start {
        HeaderStart::Ipv4 | HeaderStart::Ipv6 => b,
        HeaderStart::Ethernet => {
            let mut o = 12;
            let mut ethertype = be16(b, o)?;
            let mut tags = 0;
            while is_vlan(ethertype) {
                tags += 1;
                if tags > 2 {
                    return None;
                }
                o += 4;
                ethertype = be16(b, o)?;
            }
            if ethertype != ETHERTYPE_IPV4 && ethertype != ETHERTYPE_IPV6 {
                return None;
            }
            b.get(o + 2..)?
        }
    };
    // Like etherparse, the version nibble decides, not the ethertype.
    match ip.first()? >> 4 {
        4 => {
            let hl = usize::from(ip[0] & 0x0F) * 4;
            if hl < 20 || ip.len() < hl {
                return None;
            }
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            let protocol = ip[9];
            if !matches!(protocol, PROTO_TCP | PROTO_UDP | PROTO_ICMP) {
                return None;
            }
            // The payload ends where the header says, unless the slice is shorter (a
            // truncated sample) or the length is smaller than the header (TSO captures).
            let end = if total < hl || total > ip.len() {
                ip.len()
            } else {
                total
            };
            let flags_off = u16::from_be_bytes([ip[6], ip[7]]);
            let more = flags_off & 0x2000 != 0;
            let off = flags_off & 0x1FFF;
            let a = |o: usize| IpAddr::from([ip[o], ip[o + 1], ip[o + 2], ip[o + 3]]);
            Some(transport(
                a(12),
                a(16),
                protocol,
                &ip[hl..end],
                more || off != 0,
                off == 0,
                total as u32,
            ))
        }
        6 => {
            if ip.len() < 40 {
                return None;
            }
            let protocol = ip[6];
            // Extension headers (and anything unusual) are etherparse's.
            if !matches!(protocol, PROTO_TCP | PROTO_UDP | PROTO_ICMPV6) {
                return None;
            }
            let pl = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
            // A zero payload length (jumbogram) or a short slice: the rest of the slice.
            let end = if (pl == 0 && ip.len() > 40) || ip.len() < 40 + pl {
                ip.len()
            } else {
                40 + pl
            };
            let a = |o: usize| -> Option<IpAddr> {
                let x: [u8; 16] = ip.get(o..o + 16)?.try_into().ok()?;
                Some(IpAddr::from(x))
            };
            Some(transport(
                a(8)?,
                a(24)?,
                protocol,
                &ip[40..end],
                false,
                true,
                pl as u32 + 40,
            ))
        }
        _ => None,
    }
}

/// Ports and TCP flags from the transport header when it is there (first fragments and
/// unfragmented packets only).
fn transport(
    src: IpAddr,
    dst: IpAddr,
    protocol: u8,
    l4: &[u8],
    fragment: bool,
    first_fragment: bool,
    ip_len: u32,
) -> HeaderInfo {
    let (mut src_port, mut dst_port, mut tcp_flags) = (0, 0, 0);
    if first_fragment && (protocol == PROTO_TCP || protocol == PROTO_UDP) && l4.len() >= 4 {
        src_port = u16::from_be_bytes([l4[0], l4[1]]);
        dst_port = u16::from_be_bytes([l4[2], l4[3]]);
        if protocol == PROTO_TCP && l4.len() >= 14 {
            tcp_flags = l4[13];
        }
    }
    HeaderInfo {
        src,
        dst,
        protocol,
        src_port,
        dst_port,
        tcp_flags,
        fragment,
        ip_len,
    }
}

/// Any header etherparse's lax slicer understands.
fn lax_header(start: HeaderStart, bytes: &[u8]) -> Option<HeaderInfo> {
    let pkt = match start {
        HeaderStart::Ethernet => LaxSlicedPacket::from_ethernet(bytes).ok()?,
        HeaderStart::Ipv4 | HeaderStart::Ipv6 => LaxSlicedPacket::from_ip(bytes).ok()?,
    };
    let (src, dst, payload, fragment, first_fragment, ip_len) = match pkt.net.as_ref()? {
        LaxNetSlice::Ipv4(v4) => {
            let h = v4.header();
            let off = h.fragments_offset().value();
            (
                IpAddr::V4(h.source_addr()),
                IpAddr::V4(h.destination_addr()),
                v4.payload(),
                h.more_fragments() || off != 0,
                off == 0,
                u32::from(h.total_len()),
            )
        }
        LaxNetSlice::Ipv6(v6) => {
            let h = v6.header();
            let p = v6.payload();
            (
                IpAddr::V6(h.source_addr()),
                IpAddr::V6(h.destination_addr()),
                p,
                p.fragmented,
                // A non-first IPv6 fragment leaves the payload unparsed past the fragment
                // header; etherparse reports it as fragmented either way, so only trust
                // ports when the payload starts a transport header.
                !p.fragmented,
                u32::from(h.payload_length()) + 40,
            )
        }
        _ => return None,
    };
    Some(transport(
        src,
        dst,
        payload.ip_number.0,
        payload.payload,
        fragment,
        first_fragment,
        ip_len,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    fn tcp_syn_eth(vlans: &[u16]) -> Vec<u8> {
        let b = PacketBuilder::ethernet2([1; 6], [2; 6]);
        let mut out = Vec::new();
        match vlans {
            [] => b
                .ipv4([198, 51, 100, 7], [192, 0, 2, 1], 64)
                .tcp(4000, 80, 1, 1024)
                .syn()
                .write(&mut out, &[])
                .unwrap(),
            [v] => b
                .single_vlan((*v).try_into().unwrap())
                .ipv4([198, 51, 100, 7], [192, 0, 2, 1], 64)
                .tcp(4000, 80, 1, 1024)
                .syn()
                .write(&mut out, &[])
                .unwrap(),
            [o, i, ..] => b
                .double_vlan((*o).try_into().unwrap(), (*i).try_into().unwrap())
                .ipv4([198, 51, 100, 7], [192, 0, 2, 1], 64)
                .tcp(4000, 80, 1, 1024)
                .syn()
                .write(&mut out, &[])
                .unwrap(),
        }
        out
    }

    #[test]
    fn ethernet_vlan_and_qinq_reach_tcp_flags() {
        for vlans in [&[][..], &[100], &[100, 200]] {
            let h = decode_header(HeaderStart::Ethernet, &tcp_syn_eth(vlans)).unwrap();
            assert_eq!(h.dst, "192.0.2.1".parse::<IpAddr>().unwrap(), "{vlans:?}");
            assert_eq!((h.protocol, h.src_port, h.dst_port), (6, 4000, 80));
            assert_eq!(h.tcp_flags & 0x12, 0x02, "SYN without ACK");
            assert!(!h.fragment);
            assert_eq!(h.ip_len, 40);
        }
    }

    /// IPv4 from 198.51.100.7:5000 to 192.0.2.1:`dst_port`, UDP, `payload` zero bytes.
    fn udp4(dst_port: u16, payload: usize) -> Vec<u8> {
        let mut p = Vec::new();
        PacketBuilder::ipv4([198, 51, 100, 7], [192, 0, 2, 1], 64)
            .udp(5000, dst_port)
            .write(&mut p, &vec![0u8; payload])
            .unwrap();
        p
    }

    #[test]
    fn truncated_header_still_decodes() {
        let mut p = udp4(53, 1000);
        p.truncate(128);
        let h = decode_header(HeaderStart::Ipv4, &p).unwrap();
        assert_eq!((h.protocol, h.dst_port, h.ip_len), (17, 53, 1028));
    }

    #[test]
    fn ipv4_fragments_are_flagged_and_non_first_have_no_ports() {
        let p = udp4(123, 64);
        // First fragment: MF set (flags byte 6, bit 0x20).
        let mut first = p.clone();
        first[6] |= 0x20;
        let h = decode_header(HeaderStart::Ipv4, &first).unwrap();
        assert!(h.fragment);
        assert_eq!(h.dst_port, 123);
        // Non-first fragment: offset 32 (in 8-byte units), no L4 header to read.
        let mut later = p.clone();
        later[7] = 4;
        let h = decode_header(HeaderStart::Ipv4, &later).unwrap();
        assert!(h.fragment);
        assert_eq!((h.src_port, h.dst_port), (0, 0));
    }

    #[test]
    fn ipv6_icmp() {
        let mut p = Vec::new();
        PacketBuilder::ipv6(
            [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9],
            [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            64,
        )
        .icmpv6_echo_request(1, 1)
        .write(&mut p, &[0u8; 16])
        .unwrap();
        let h = decode_header(HeaderStart::Ipv6, &p).unwrap();
        assert_eq!(h.protocol, 58);
        assert_eq!(h.dst, "2001:db8::1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn garbage_is_none_not_panic() {
        assert!(decode_header(HeaderStart::Ethernet, &[0xff; 7]).is_none());
        assert!(decode_header(HeaderStart::Ipv4, &[0x45]).is_none());
    }

    /// Every packet kind flowguard expects, as (start, bytes).
    fn corpus() -> Vec<(HeaderStart, Vec<u8>)> {
        let v4 = ([198, 51, 100, 7], [192, 0, 2, 1]);
        let v6 = (
            [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9],
            [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        );
        let mut out = Vec::new();
        for link in 0..4 {
            for ip6 in [false, true] {
                for l4 in 0..3 {
                    for payload in [0usize, 1, 30, 200] {
                        let data = vec![0xA5u8; payload];
                        let mut p = Vec::new();
                        macro_rules! finish {
                            ($b:expr) => {{
                                let b = $b;
                                let b = if ip6 {
                                    b.ipv6(v6.0, v6.1, 64)
                                } else {
                                    b.ipv4(v4.0, v4.1, 64)
                                };
                                match (l4, ip6) {
                                    (0, _) => b.tcp(4000, 80, 1, 1024).syn().write(&mut p, &data),
                                    (1, _) => b.udp(5000, 53).write(&mut p, &data),
                                    (_, false) => b.icmpv4_echo_request(1, 1).write(&mut p, &data),
                                    (_, true) => b.icmpv6_echo_request(1, 1).write(&mut p, &data),
                                }
                                .unwrap();
                            }};
                        }
                        let start = match link {
                            0 => {
                                // Starts at IP: build with Ethernet and cut it off.
                                finish!(PacketBuilder::ethernet2([1; 6], [2; 6]));
                                p.drain(..14);
                                if ip6 {
                                    HeaderStart::Ipv6
                                } else {
                                    HeaderStart::Ipv4
                                }
                            }
                            1 => {
                                finish!(PacketBuilder::ethernet2([1; 6], [2; 6]));
                                HeaderStart::Ethernet
                            }
                            2 => {
                                finish!(PacketBuilder::ethernet2([1; 6], [2; 6])
                                    .single_vlan(100u16.try_into().unwrap()));
                                HeaderStart::Ethernet
                            }
                            _ => {
                                finish!(PacketBuilder::ethernet2([1; 6], [2; 6]).double_vlan(
                                    100u16.try_into().unwrap(),
                                    200u16.try_into().unwrap()
                                ));
                                HeaderStart::Ethernet
                            }
                        };
                        out.push((start, p));
                    }
                }
            }
        }
        out
    }

    /// The fast path against etherparse: wherever the fast path answers, on every
    /// truncation and on thousands of random byte mutations of every packet kind, it
    /// answers what etherparse does; and it does answer the usual packets.
    #[test]
    fn fast_path_agrees_with_etherparse() {
        let mut rng = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let (mut answered, mut checked) = (0, 0);
        let mut check = |start: HeaderStart, b: &[u8]| {
            checked += 1;
            if let Some(f) = fast_header(start, b) {
                answered += 1;
                assert_eq!(Some(f), lax_header(start, b), "{start:?} {b:02x?}");
            }
        };
        let corpus = corpus();
        for (start, p) in &corpus {
            assert!(fast_header(*start, p).is_some(), "{start:?} {p:02x?}");
            for cut in 0..=p.len() {
                check(*start, &p[..cut]);
            }
            for _ in 0..300 {
                let mut m = p.clone();
                // One to three bytes of the first 80 (the headers) replaced.
                for _ in 0..1 + next() % 3 {
                    let i = (next() as usize) % m.len().min(80);
                    m[i] = next() as u8;
                }
                check(*start, &m);
                // Fragment flags and offsets, header lengths, lengths: the fields the
                // fast path reads, set to edge values.
                let ip = if *start == HeaderStart::Ethernet {
                    m.len().min(14 + 4 * (next() as usize % 3))
                } else {
                    0
                };
                if m.len() > ip + 8 {
                    // IPv4 flags and fragment offset (IPv6: the next header).
                    if next() % 2 == 0 {
                        m[ip + 6] = [0u8, 0x20, 0x3F, 0xFF][next() as usize % 4];
                    }
                    // IPv4 total length (0 as in TSO captures, huge, or as built);
                    // IPv6 payload length (0 as in jumbograms, or as built).
                    match next() % 3 {
                        0 => (m[ip + 2], m[ip + 3]) = (0, 0),
                        1 => m[ip + 2] = 0xFF,
                        _ => {}
                    }
                    if next() % 2 == 0 {
                        (m[ip + 4], m[ip + 5]) = (0, 0);
                    }
                    check(*start, &m);
                }
            }
        }
        assert!(
            answered > corpus.len() * 50,
            "fast path answered {answered} of {checked}"
        );
    }

    #[test]
    fn ipv6_extension_headers_and_other_protocols_go_to_etherparse() {
        let mut p = udp4(53, 8);
        p[9] = 47; // GRE
        assert_eq!(fast_header(HeaderStart::Ipv4, &p), None);
        let h = decode_header(HeaderStart::Ipv4, &p).unwrap();
        assert_eq!((h.protocol, h.dst_port), (47, 0));
        let mut p = vec![0u8; 48];
        p[0] = 0x60;
        p[5] = 8;
        p[6] = 44; // fragment header
        assert_eq!(fast_header(HeaderStart::Ipv6, &p), None);
        assert!(decode_header(HeaderStart::Ipv6, &p).is_some());
    }
}

//! Decoding of the raw packet headers sFlow samples carry (sFlow v5 §5.2
//! `sampled_header`), with etherparse's lax slicer: sampled headers are truncated
//! (usually to 128 bytes), which the strict slicer refuses.
//!
//! Handles Ethernet II with VLAN and QinQ tags, and headers that start at IPv4 or IPv6
//! (header protocols 11 and 12, which pmacctd sends).

use std::net::IpAddr;

use etherparse::{LaxNetSlice, LaxSlicedPacket};

use super::{PROTO_TCP, PROTO_UDP};

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

/// sFlow `header_protocol` values we decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderStart {
    Ethernet,
    Ipv4,
    Ipv6,
}

pub fn decode_header(start: HeaderStart, bytes: &[u8]) -> Option<HeaderInfo> {
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
    let protocol = payload.ip_number.0;
    let l4 = payload.payload;
    let (mut src_port, mut dst_port, mut tcp_flags) = (0, 0, 0);
    if first_fragment && (protocol == PROTO_TCP || protocol == PROTO_UDP) && l4.len() >= 4 {
        src_port = u16::from_be_bytes([l4[0], l4[1]]);
        dst_port = u16::from_be_bytes([l4[2], l4[3]]);
        if protocol == PROTO_TCP && l4.len() >= 14 {
            tcp_flags = l4[13];
        }
    }
    Some(HeaderInfo {
        src,
        dst,
        protocol,
        src_port,
        dst_port,
        tcp_flags,
        fragment,
        ip_len,
    })
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

    #[test]
    fn truncated_header_still_decodes() {
        let mut p = Vec::new();
        PacketBuilder::ipv4([198, 51, 100, 7], [192, 0, 2, 1], 64)
            .udp(5000, 53)
            .write(&mut p, &[0u8; 1000])
            .unwrap();
        p.truncate(128);
        let h = decode_header(HeaderStart::Ipv4, &p).unwrap();
        assert_eq!((h.protocol, h.dst_port, h.ip_len), (17, 53, 1028));
    }

    #[test]
    fn ipv4_fragments_are_flagged_and_non_first_have_no_ports() {
        let mut p = Vec::new();
        PacketBuilder::ipv4([198, 51, 100, 7], [192, 0, 2, 1], 64)
            .udp(5000, 123)
            .write(&mut p, &[0u8; 64])
            .unwrap();
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
}

package bpf

import (
	"bytes"
	"encoding/binary"
	"net/netip"
)

// Frame builders for BPF_PROG_TEST_RUN. Checksums are left zero: the
// programs do not check them.

var (
	macA = []byte{0x02, 0, 0, 0, 0, 0xa}
	macB = []byte{0x02, 0, 0, 0, 0, 0xb}
	v4A  = netip.MustParseAddr("198.18.0.1")
	v4B  = netip.MustParseAddr("198.18.0.2")
	v6A  = netip.MustParseAddr("fd00::a")
	v6B  = netip.MustParseAddr("fd00::b")
)

const (
	etherIPv4 = 0x0800
	etherIPv6 = 0x86dd
	etherARP  = 0x0806
	ether1Q   = 0x8100
	ether1AD  = 0x88a8
)

func be16(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }

func cat(parts ...[]byte) []byte {
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

// eth returns an Ethernet header with VLAN tags (outermost first) for type.
func eth(etype uint16, tags ...uint16) []byte {
	b := cat(macB, macA)
	for i, vid := range tags {
		tpid := uint16(ether1Q)
		if i == 0 && len(tags) > 1 {
			tpid = ether1AD
		}
		b = cat(b, be16(tpid), be16(vid))
	}
	return cat(b, be16(etype))
}

// ipv4 returns an IPv4 header with optLen bytes of options (NOPs) for a
// payload of plen bytes; fragOff is in 8-byte units, mf sets more-fragments.
func ipv4(proto uint8, src, dst netip.Addr, plen, optLen int, fragOff uint16, mf bool) []byte {
	hl := 20 + optLen
	h := make([]byte, hl)
	h[0] = 0x40 | byte(hl/4)
	binary.BigEndian.PutUint16(h[2:], uint16(hl+plen))
	fo := fragOff
	if mf {
		fo |= 0x2000
	}
	binary.BigEndian.PutUint16(h[6:], fo)
	h[8] = 64
	h[9] = proto
	s, d := src.As4(), dst.As4()
	copy(h[12:], s[:])
	copy(h[16:], d[:])
	for i := 20; i < hl; i++ {
		h[i] = 1 // NOP option
	}
	return h
}

func ipv6(next uint8, src, dst netip.Addr, plen int) []byte {
	h := make([]byte, 40)
	h[0] = 0x60
	binary.BigEndian.PutUint16(h[4:], uint16(plen))
	h[6] = next
	h[7] = 64
	s, d := src.As16(), dst.As16()
	copy(h[8:], s[:])
	copy(h[24:], d[:])
	return h
}

// ext6 is a generic IPv6 extension header (hop-by-hop, routing,
// destination options) of 8*(1+units) bytes.
func ext6(next uint8, units uint8) []byte {
	h := make([]byte, 8*(1+int(units)))
	h[0] = next
	h[1] = units
	return h
}

// ah is an IPsec authentication header with a 12-byte ICV (HMAC-96):
// 24 bytes, its length field in 4-byte units minus 2.
func ah(next uint8) []byte {
	h := make([]byte, 24)
	h[0] = next
	h[1] = 24/4 - 2
	return h
}

// frag6 is an IPv6 fragment header; off is in 8-byte units.
func frag6(next uint8, off uint16, more bool) []byte {
	h := make([]byte, 8)
	h[0] = next
	v := off << 3
	if more {
		v |= 1
	}
	binary.BigEndian.PutUint16(h[2:], v)
	return h
}

func tcp(sport, dport uint16, flags uint8) []byte {
	h := make([]byte, 20)
	binary.BigEndian.PutUint16(h[0:], sport)
	binary.BigEndian.PutUint16(h[2:], dport)
	h[12] = 5 << 4
	h[13] = flags
	return h
}

func udp(sport, dport uint16, plen int) []byte {
	h := make([]byte, 8)
	binary.BigEndian.PutUint16(h[0:], sport)
	binary.BigEndian.PutUint16(h[2:], dport)
	binary.BigEndian.PutUint16(h[4:], uint16(8+plen))
	return h
}

func icmp(typ, code uint8) []byte { return []byte{typ, code, 0, 0, 0, 0, 0, 0} }

func zeros(n int) []byte { return make([]byte, n) }

// filled is n bytes of b.
func filled(n int, b byte) []byte { return bytes.Repeat([]byte{b}, n) }

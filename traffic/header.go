package traffic

import (
	"encoding/binary"
	"fmt"
)

// HeaderSize is the part of each UDP payload the generator uses: a tag
// identifying the flow, the stream index and a sequence number, so that
// received, lost and reordered datagrams are counted exactly.
const HeaderSize = 16

const maxUDPPayload = 65507

type header struct {
	tag    uint32
	stream uint32
	seq    uint64
}

func (h header) put(b []byte) {
	binary.LittleEndian.PutUint32(b[0:], h.tag)
	binary.LittleEndian.PutUint32(b[4:], h.stream)
	binary.LittleEndian.PutUint64(b[8:], h.seq)
}

func parseHeader(b []byte) (header, bool) {
	if len(b) < HeaderSize {
		return header{}, false
	}
	return header{
		tag:    binary.LittleEndian.Uint32(b[0:]),
		stream: binary.LittleEndian.Uint32(b[4:]),
		seq:    binary.LittleEndian.Uint64(b[8:]),
	}, true
}

// Frame overheads: Ethernet header and frame check sequence, IP and UDP
// headers. A veth carries no FCS, so the kernel's byte counters see a
// frame 4 bytes shorter than its nominal size.
const (
	EthernetHeader = 14
	EthernetFCS    = 4
	ipv4Header     = 20
	ipv6Header     = 40
	udpHeader      = 8
)

// PayloadForFrame returns the UDP payload size that makes an Ethernet
// frame of frame bytes, counting the 4-byte FCS as the usual "64-byte
// packet" does: 64 gives 18 bytes of payload over IPv4. IPv6's larger
// header makes the smallest frame 4+14+40+8+HeaderSize = 82 bytes.
func PayloadForFrame(frame int, ipv6 bool) (int, error) {
	ip := ipv4Header
	if ipv6 {
		ip = ipv6Header
	}
	p := frame - EthernetFCS - EthernetHeader - ip - udpHeader
	if p < HeaderSize {
		return 0, fmt.Errorf("frame size %d is too small: it leaves %d bytes of UDP payload, the generator needs %d (smallest %s frame: %d)",
			frame, p, HeaderSize, family(ipv6), frame-p+HeaderSize)
	}
	if p > maxUDPPayload {
		return 0, fmt.Errorf("frame size %d is too large for one UDP datagram", frame)
	}
	return p, nil
}

// WireBytes is the bytes the kernel's interface counters add for one UDP
// datagram of the given payload (Ethernet header, no FCS).
func WireBytes(payload int, ipv6 bool) int {
	ip := ipv4Header
	if ipv6 {
		ip = ipv6Header
	}
	return payload + udpHeader + ip + EthernetHeader
}

func family(ipv6 bool) string {
	if ipv6 {
		return "IPv6"
	}
	return "IPv4"
}

package bpf

import (
	"encoding/binary"
	"net"
	"os"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/nsflow/nsflow/internal/testenv"
)

// A GSO packet from an untrusted source (a tap or a packet socket with a
// virtio-net header: a VM's or a sandbox's traffic) carries gso_size but
// gso_segs 0 (SKB_GSO_DODGY): the kernel computes the segments only when
// it segments the packet. nsflow must count them all the same.
//
// The test writes such packets to a tap in namespace a, which forwards
// them out of a veth without TSO/GSO, so the kernel segments them there:
// the far end's interface statistics count the segments, as witness. In
// the tunnel cases a tc program encapsulates them first, as a tunnel
// built in BPF does, which leaves gso_segs 0 too: then the inner packet
// is what is segmented.

// virtio_net_hdr (linux/virtio_net.h): what a tap with IFF_VNET_HDR
// expects before each frame.
type virtioNetHdr struct {
	Flags      uint8
	GSOType    uint8
	HdrLen     uint16
	GSOSize    uint16
	CsumStart  uint16
	CsumOffset uint16
}

const (
	virtioNetHdrFNeedsCsum = 1
	virtioNetHdrGSOTCPv4   = 1
	virtioNetHdrGSOUDPL4   = 5
)

// openTap creates a tap with virtio-net headers in ns, up, with addr/24,
// and returns its file (closing it removes the tap) and its MAC.
func openTap(t *testing.T, ns *testNS, name string, addr net.IP) (*os.File, net.HardwareAddr) {
	t.Helper()
	var f *os.File
	var mac net.HardwareAddr
	ns.do(t, func() error {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		ifr, err := unix.NewIfreq(name)
		if err != nil {
			unix.Close(fd)
			return err
		}
		ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
		if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
			unix.Close(fd)
			return err
		}
		f = os.NewFile(uintptr(fd), "tap")
		l, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		mac = l.Attrs().HardwareAddr
		if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: addr, Mask: net.CIDRMask(24, 32)}}); err != nil {
			return err
		}
		return netlink.LinkSetUp(l)
	})
	t.Cleanup(func() { f.Close() })
	return f, mac
}

// gsoFrame builds a virtio-net header and an IPv4 TCP or UDP frame, which
// the kernel is to cut into c.gsoSize-byte segments.
func gsoFrame(c dodgyCase, dstMAC, srcMAC net.HardwareAddr, src, dst net.IP) []byte {
	l4len := 20 + c.tcpOpts
	h := virtioNetHdr{Flags: virtioNetHdrFNeedsCsum, GSOType: virtioNetHdrGSOTCPv4, GSOSize: uint16(c.gsoSize),
		CsumStart: 14 + 20, CsumOffset: 16}
	ipProto := byte(unix.IPPROTO_TCP)
	if c.proto == "udp" {
		l4len = 8
		h.GSOType, h.CsumOffset, ipProto = virtioNetHdrGSOUDPL4, 6, unix.IPPROTO_UDP
	}
	h.HdrLen = uint16(14 + 20 + l4len)
	var b []byte
	b, _ = binary.Append(b, binary.LittleEndian, h)
	b = append(b, dstMAC...)
	b = append(b, srcMAC...)
	b = append(b, 0x08, 0x00)
	ip := make([]byte, 20)
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+l4len+c.payload))
	ip[8], ip[9] = 64, ipProto
	copy(ip[12:], src.To4())
	copy(ip[16:], dst.To4())
	binary.BigEndian.PutUint16(ip[10:], ipChecksum(ip))
	b = append(b, ip...)
	l4 := make([]byte, l4len)
	binary.BigEndian.PutUint16(l4[0:], 40000)
	binary.BigEndian.PutUint16(l4[2:], 9) // discard
	if c.proto == "udp" {
		binary.BigEndian.PutUint16(l4[4:], uint16(8+c.payload))
	} else {
		binary.BigEndian.PutUint32(l4[4:], 1)
		l4[12] = byte(l4len/4) << 4
		l4[13] = 0x18 // PSH, ACK
		binary.BigEndian.PutUint16(l4[14:], 65535)
		for i := 20; i < l4len; i++ {
			l4[i] = 1 // NOP options
		}
	}
	b = append(b, l4...)
	return append(b, make([]byte, c.payload)...)
}

type dodgyCase struct {
	name             string
	proto            string
	tcpOpts          int // bytes of TCP options
	payload, gsoSize int
	segs             uint64 // the kernel's segments of one packet
	// tunnel puts the packets into an IP-in-UDP tunnel at the tap's
	// ingress, after nsflow, with bpf_skb_adjust_room: ea sends them
	// encapsulated, still GSO with gso_segs 0.
	tunnel bool
}

// encapProg returns a tc program that puts every packet into an outer
// IPv4/UDP header (IP-in-UDP, as a tunnel built in BPF does) with
// bpf_skb_adjust_room, which leaves a GSO packet with gso_segs 0 (and
// SKB_GSO_DODGY, SKB_GSO_UDP_TUNNEL), then writes outer, the outer
// headers. FIXED_GSO keeps gso_size.
func encapProg(t *testing.T, outer []byte) *ebpf.Program {
	t.Helper()
	const (
		adjRoomMAC = 1
		fixedGSO   = 1 << 0
		encapL3v4  = 1 << 1
		encapL4UDP = 1 << 4
	)
	buf := make([]byte, 32)
	copy(buf, outer)
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.Mov.Imm(asm.R2, int32(len(outer))),
		asm.Mov.Imm(asm.R3, adjRoomMAC),
		asm.Mov.Imm(asm.R4, fixedGSO|encapL3v4|encapL4UDP),
		asm.FnSkbAdjustRoom.Call(),
		asm.JNE.Imm(asm.R0, 0, "out"),
	}
	for i := 0; i < len(buf); i += 8 {
		insns = append(insns,
			asm.LoadImm(asm.R1, int64(binary.LittleEndian.Uint64(buf[i:])), asm.DWord),
			asm.StoreMem(asm.RFP, int16(i-32), asm.R1, asm.DWord))
	}
	insns = append(insns,
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Imm(asm.R2, 14),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, -32),
		asm.Mov.Imm(asm.R4, int32(len(outer))),
		asm.Mov.Imm(asm.R5, 0),
		asm.FnSkbStoreBytes.Call(),
		asm.Mov.Imm(asm.R0, -1).WithSymbol("out"), // TCX_NEXT
		asm.Return(),
	)
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, Instructions: insns, License: "GPL"})
	if err != nil {
		t.Fatalf("encap program: %v", err)
	}
	t.Cleanup(func() { prog.Close() })
	return prog
}

// udpTunnelHeader is an outer IPv4 and UDP header from src to dst for an
// inner IPv4 packet of innerLen bytes.
func udpTunnelHeader(src, dst net.IP, innerLen int) []byte {
	h := make([]byte, 28)
	h[0] = 0x45
	binary.BigEndian.PutUint16(h[2:], uint16(28+innerLen))
	h[8], h[9] = 64, unix.IPPROTO_UDP
	copy(h[12:], src.To4())
	copy(h[16:], dst.To4())
	binary.BigEndian.PutUint16(h[10:], ipChecksum(h[:20]))
	binary.BigEndian.PutUint16(h[20:], 40001)
	binary.BigEndian.PutUint16(h[22:], 5555)
	binary.BigEndian.PutUint16(h[24:], uint16(8+innerLen))
	return h
}

func ipChecksum(h []byte) uint16 {
	var sum uint32
	for i := 0; i < len(h); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(h[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

func TestExactDodgyGSO(t *testing.T) {
	const frames = 50
	for _, c := range []dodgyCase{
		{name: "tcp", proto: "tcp", payload: 4500, gsoSize: 1000, segs: 5},
		// Options are header, not payload: counted as payload they would
		// make a sixth segment.
		{name: "tcp-options", proto: "tcp", tcpOpts: 12, payload: 5000, gsoSize: 1000, segs: 5},
		{name: "udp", proto: "udp", payload: 4500, gsoSize: 1000, segs: 5},
		// The UDP header is not payload either (UDP segmentation: each
		// segment gets its own).
		{name: "udp-exact", proto: "udp", payload: 3000, gsoSize: 1000, segs: 3},
		// In a tunnel the inner packet is segmented: the outer and inner
		// headers are not payload either.
		{name: "tcp-in-udp-tunnel", proto: "tcp", payload: 5000, gsoSize: 1000, segs: 5, tunnel: true},
		{name: "udp-in-udp-tunnel", proto: "udp", payload: 3000, gsoSize: 1000, segs: 3, tunnel: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := loadForTest(t, Options{})
			a, b := newTestNS(t), newTestNS(t)
			ea, eb := vethPair(t, a, b, 3)
			ea.setMode(t, gsoOff) // the kernel segments what ea sends
			tapIP, vmIP := net.IPv4(198, 18, 4, 1), net.IPv4(198, 18, 4, 2)
			tap := &end{NS: a, Ifname: testenv.Name("tap"), IP: tapIP}
			f, mac := openTap(t, a, tap.Ifname, tapIP)
			tap.MAC = mac
			a.do(t, func() error { return sysctl("net/ipv4/ip_forward", "1") })

			ws := watch(t, d, tap, ea, eb)
			vmMAC := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x42}
			dst := eb.IP
			if c.tunnel {
				// The inner packet goes nowhere the namespace routes to:
				// only the outer one reaches eb.
				dst = net.IPv4(198, 18, 6, 2)
			}
			frame := gsoFrame(c, mac, vmMAC, vmIP, dst)
			if c.tunnel {
				inner := len(frame) - 10 - 14 // no virtio-net or Ethernet header
				prog := encapProg(t, udpTunnelHeader(vmIP, eb.IP, inner))
				a.do(t, func() error {
					l, err := link.AttachTCX(link.TCXOptions{Interface: mustIndex(tap.Ifname), Program: prog, Attach: ebpf.AttachTCXIngress})
					if err != nil {
						return err
					}
					t.Cleanup(func() { l.Close() })
					return nil
				})
			}
			baseline(t, d, ws)
			for range frames {
				if _, err := f.Write(frame); err != nil {
					t.Fatalf("write to tap: %v", err)
				}
			}
			ports := settle(t, d)
			l4 := TCP
			if c.proto == "udp" {
				l4 = UDP
			}
			outer := l4
			if c.tunnel {
				outer = UDP
			}
			for _, h := range []struct {
				w             *watched
				dir           Direction
				l4            L4
				packets, segs uint64
			}{
				{ws[0], Ingress, l4, frames, frames * c.segs},
				{ws[1], Egress, outer, frames, frames * c.segs},
				{ws[2], Ingress, outer, frames * c.segs, frames * c.segs},
			} {
				s := h.w.delta(ports[h.w.att.Key()])
				got := s.Get(h.dir, IPv4, h.l4)
				if got.Packets != h.packets || got.Segments != h.segs {
					t.Errorf("%s %s: %d packets, %d segments; want %d, %d", h.w.Ifname, h.dir, got.Packets, got.Segments, h.packets, h.segs)
				}
			}
			// The kernel's own counts: the tap received the packets whole,
			// ea sent their segments, eb received them.
			if got := ws[0].stats(t).RxPackets - ws[0].base.RxPackets; got != frames {
				t.Errorf("%s received %d packets, want %d", tap.Ifname, got, frames)
			}
			if got := ws[1].stats(t).TxPackets - ws[1].base.TxPackets; got != frames*c.segs {
				t.Errorf("%s sent %d packets, want %d", ea.Ifname, got, frames*c.segs)
			}
			if got := ws[2].stats(t).RxPackets - ws[2].base.RxPackets; got != frames*c.segs {
				t.Errorf("%s received %d packets, want %d", eb.Ifname, got, frames*c.segs)
			}
			checkFlowsMatchPorts(t, d, ports)
		})
	}
}

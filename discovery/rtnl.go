package discovery

import (
	"encoding/binary"
	"net/netip"
	"syscall"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// Link is what the agent needs to know about one interface.
type Link struct {
	Index int
	Name  string
	// Kind is the link type (IFLA_INFO_KIND): "veth", "bridge", ...; empty
	// for devices without one (loopback, physical NICs).
	Kind string
	// SlaveKind is "bridge" for a bridge port (IFLA_INFO_SLAVE_KIND).
	SlaveKind   string
	MasterIndex int
	// PeerIndex is IFLA_LINK: for a veth, the peer's ifindex, in the
	// namespace PeerNetnsID names (relative to this link's namespace), or in
	// this namespace when PeerNetnsID is -1.
	PeerIndex   int
	PeerNetnsID int
	Up          bool
}

// BridgePort reports whether the link is enslaved to a bridge.
func (l Link) BridgePort() bool { return l.SlaveKind == "bridge" }

// Addr is one address on a link, with the length of its subnet's prefix.
type Addr struct {
	Index int
	Addr  netip.Addr
	Bits  int
}

// SubnetBroadcast is the all-ones address of an IPv4 address's subnet,
// which the kernel delivers as a broadcast to every holder of the subnet
// (prefixes shorter than /31 only: /31 and /32 have no broadcast).
func (a Addr) SubnetBroadcast() (netip.Addr, bool) {
	if !a.Addr.Is4() || a.Bits >= 31 || a.Bits <= 0 {
		return netip.Addr{}, false
	}
	b := a.Addr.As4()
	host := ^uint32(0) >> a.Bits
	v := binary.BigEndian.Uint32(b[:]) | host
	binary.BigEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b), true
}

// parseLink decodes an RTM_NEWLINK/RTM_DELLINK payload. ok is false for
// messages that do not describe a link (the AF_BRIDGE port notifications
// that share the type, or malformed ones).
func parseLink(data []byte) (l Link, ok bool) {
	if len(data) < unix.SizeofIfInfomsg {
		return l, false
	}
	if data[0] == unix.AF_BRIDGE {
		return l, false
	}
	l.Index = int(int32(binary.NativeEndian.Uint32(data[4:8])))
	flags := binary.NativeEndian.Uint32(data[8:12])
	l.Up = flags&unix.IFF_UP != 0
	l.PeerNetnsID = -1
	attrs, err := nl.ParseRouteAttr(data[unix.SizeofIfInfomsg:])
	if err != nil {
		return l, false
	}
	for _, a := range attrs {
		switch a.Attr.Type {
		case unix.IFLA_IFNAME:
			l.Name = cstring(a.Value)
		case unix.IFLA_LINK:
			l.PeerIndex = int(int32(binary.NativeEndian.Uint32(a.Value)))
		case unix.IFLA_MASTER:
			l.MasterIndex = int(int32(binary.NativeEndian.Uint32(a.Value)))
		case unix.IFLA_LINK_NETNSID:
			l.PeerNetnsID = int(int32(binary.NativeEndian.Uint32(a.Value)))
		case unix.IFLA_LINKINFO:
			info, err := nl.ParseRouteAttr(a.Value)
			if err != nil {
				continue
			}
			for _, i := range info {
				switch i.Attr.Type {
				case unix.IFLA_INFO_KIND:
					l.Kind = cstring(i.Value)
				case unix.IFLA_INFO_SLAVE_KIND:
					l.SlaveKind = cstring(i.Value)
				}
			}
		}
	}
	return l, l.Name != ""
}

// parseAddr decodes an RTM_NEWADDR/RTM_DELADDR payload: the local address
// (IFA_LOCAL, else IFA_ADDRESS, as iproute2 does).
func parseAddr(data []byte) (a Addr, ok bool) {
	if len(data) < unix.SizeofIfAddrmsg {
		return a, false
	}
	a.Bits = int(data[1]) // ifa_prefixlen
	a.Index = int(binary.NativeEndian.Uint32(data[4:8]))
	attrs, err := nl.ParseRouteAttr(data[unix.SizeofIfAddrmsg:])
	if err != nil {
		return a, false
	}
	var local, address netip.Addr
	for _, at := range attrs {
		ip, ipOK := netip.AddrFromSlice(at.Value)
		if !ipOK {
			continue
		}
		switch at.Attr.Type {
		case unix.IFA_LOCAL:
			local = ip
		case unix.IFA_ADDRESS:
			address = ip
		}
	}
	a.Addr = local
	if !a.Addr.IsValid() {
		a.Addr = address
	}
	return a, a.Addr.IsValid()
}

func cstring(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}

// message is one decoded rtnetlink message of interest.
type message struct {
	typ  uint16
	link Link
	addr Addr
}

// decode turns a buffer of netlink messages into link and address
// messages; done reports an NLMSG_DONE (end of a dump), errno an
// NLMSG_ERROR with a non-zero code.
func decode(buf []byte, out []message) (_ []message, done bool, errno syscall.Errno) {
	msgs, err := syscall.ParseNetlinkMessage(buf)
	if err != nil {
		return out, false, 0
	}
	for _, m := range msgs {
		switch m.Header.Type {
		case unix.NLMSG_DONE:
			done = true
		case unix.NLMSG_ERROR:
			if len(m.Data) >= 4 {
				if code := int32(binary.NativeEndian.Uint32(m.Data)); code != 0 {
					errno = syscall.Errno(-code)
				}
			}
		case unix.RTM_NEWLINK, unix.RTM_DELLINK:
			if l, ok := parseLink(m.Data); ok {
				out = append(out, message{typ: m.Header.Type, link: l})
			}
		case unix.RTM_NEWADDR, unix.RTM_DELADDR:
			if a, ok := parseAddr(m.Data); ok {
				out = append(out, message{typ: m.Header.Type, addr: a})
			}
		}
	}
	return out, done, errno
}

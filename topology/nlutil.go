package topology

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/nsflow/nsflow/internal/nsenter"
)

// dumpRetries bounds retries of a netlink dump that the kernel interrupted
// because the table changed meanwhile (other namespaces being built).
const dumpRetries = 10

// retryDump calls dump until it returns something other than
// netlink.ErrDumpInterrupted, at most dumpRetries times.
func retryDump[T any](dump func() (T, error)) (T, error) {
	var (
		v   T
		err error
	)
	for try := range dumpRetries {
		v, err = dump()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return v, err
		}
		time.Sleep(time.Duration(try+1) * time.Millisecond)
	}
	return v, err
}

// linksByName dumps the namespace's interfaces into a map by name.
func linksByName(h *netlink.Handle) (map[string]netlink.Link, error) {
	links, err := retryDump(h.LinkList)
	if err != nil {
		return nil, err
	}
	m := make(map[string]netlink.Link, len(links))
	for _, l := range links {
		m[l.Attrs().Name] = l
	}
	return m, nil
}

// linksNamed looks up each of names on its own (RTM_GETLINK by name)
// and returns those that exist. Unlike a dump, a lookup cannot be
// interrupted by other tools changing interfaces at the same time, which
// in the host namespace they do all the time.
func linksNamed(h *netlink.Handle, names []string) (map[string]netlink.Link, error) {
	m := make(map[string]netlink.Link, len(names))
	for _, n := range names {
		l, err := h.LinkByName(n)
		if isNotFound(err) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("look up interface %s: %w", n, err)
		}
		m[n] = l
	}
	return m, nil
}

// ipNet converts a prefix (address with its prefix length) for netlink.
func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// nlAddr is the netlink address for p. IPv6 addresses skip duplicate
// address detection: the topology assigns them uniquely, and DAD would
// keep them unusable for seconds.
func nlAddr(p netip.Prefix) *netlink.Addr {
	a := &netlink.Addr{IPNet: ipNet(p)}
	if p.Addr().Is6() {
		a.Flags = unix.IFA_F_NODAD
	}
	return a
}

// isNotFound reports whether err means the object does not exist.
func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ENOENT)
}

// routeSocket opens a NETLINK_ROUTE socket in the namespace ns (the
// calling thread's own for netns.None()), for the requests that the
// netlink package does not build in one message.
func routeSocket(ns netns.NsHandle) (*nl.SocketHandle, error) {
	var s *nl.NetlinkSocket
	open := func() (err error) {
		s, err = nl.GetNetlinkSocketAt(netns.None(), netns.None(), unix.NETLINK_ROUTE)
		return err
	}
	var err error
	if ns == netns.None() {
		err = open()
	} else {
		// Not GetNetlinkSocketAt(ns, ...): it unlocks its thread even when
		// it could not switch it back.
		err = nsenter.DoHandle(ns, open)
	}
	if err != nil {
		return nil, err
	}
	return &nl.SocketHandle{Socket: s}, nil
}

// vethAdd creates a veth pair in one RTM_NEWLINK, under one hold of the
// rtnl lock: name up (and already a port of the bridge with ifindex
// master, if not 0) in the socket's namespace, and peer (down) born in
// the namespace of peerFd. It returns both ends' ifindexes, which the
// kernel echoes back (NLM_F_ECHO, Linux 6.3 or later; 0 on older ones).
// wantIndex and wantPeerIndex, if not 0, are the ends' ifindexes (see
// vethIndexes).
// netlink.LinkAdd would take three requests and a lookup per end for the
// same, which matters when other work on the host keeps rtnl busy.
func vethAdd(sock *nl.SocketHandle, name, peer string, mtu, master, peerFd, wantIndex, wantPeerIndex int) (index, peerIndex int, err error) {
	req := nl.NewNetlinkRequest(unix.RTM_NEWLINK, unix.NLM_F_CREATE|unix.NLM_F_EXCL|unix.NLM_F_ACK|unix.NLM_F_ECHO)
	req.Sockets = map[int]*nl.SocketHandle{unix.NETLINK_ROUTE: sock}
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Flags, msg.Change = unix.IFF_UP, unix.IFF_UP
	msg.Index = int32(wantIndex) // 0: the kernel picks
	req.AddData(msg)
	req.AddData(nl.NewRtAttr(unix.IFLA_IFNAME, nl.ZeroTerminated(name)))
	if mtu > 0 {
		req.AddData(nl.NewRtAttr(unix.IFLA_MTU, nl.Uint32Attr(uint32(mtu))))
	}
	if master > 0 {
		req.AddData(nl.NewRtAttr(unix.IFLA_MASTER, nl.Uint32Attr(uint32(master))))
	}
	info := nl.NewRtAttr(unix.IFLA_LINKINFO, nil)
	info.AddRtAttr(nl.IFLA_INFO_KIND, nl.NonZeroTerminated("veth"))
	data := info.AddRtAttr(nl.IFLA_INFO_DATA, nil)
	p := data.AddRtAttr(nl.VETH_INFO_PEER, nil)
	// The peer cannot be born up: veth refuses to open an end whose
	// pair is not linked yet (ENOTCONN), which it is not at that point.
	pm := nl.NewIfInfomsgChild(p, unix.AF_UNSPEC)
	pm.Index = int32(wantPeerIndex) // 0: the kernel picks
	p.AddRtAttr(unix.IFLA_IFNAME, nl.ZeroTerminated(peer))
	if mtu > 0 {
		p.AddRtAttr(unix.IFLA_MTU, nl.Uint32Attr(uint32(mtu)))
	}
	p.AddRtAttr(unix.IFLA_NET_NS_FD, nl.Uint32Attr(uint32(peerFd)))
	req.AddData(info)
	msgs, err := req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWLINK)
	if err != nil {
		return 0, 0, err
	}
	// The echo of the new end: its ifindex, and its peer's (IFLA_LINK).
	for _, m := range msgs {
		l, err := netlink.LinkDeserialize(nil, m)
		if err == nil && l.Attrs().Name == name {
			index, peerIndex = l.Attrs().Index, l.Attrs().ParentIndex
		}
	}
	return index, peerIndex, nil
}

// loopbackIndex is the loopback's ifindex in every network namespace.
const loopbackIndex = 1

// linkSet sets the link with ifindex index up and, if alias is not
// empty, its alias, in one RTM_NEWLINK (netlink.Handle takes one request
// for each).
func linkSet(sock *nl.SocketHandle, index int, alias string) error {
	return linkSetAlias(sock, index, alias, true)
}

// linkSetAlias sets the alias of the link with ifindex index, and sets it
// up too if up is true, in one RTM_NEWLINK.
func linkSetAlias(sock *nl.SocketHandle, index int, alias string, up bool) error {
	req := nl.NewNetlinkRequest(unix.RTM_NEWLINK, unix.NLM_F_ACK)
	req.Sockets = map[int]*nl.SocketHandle{unix.NETLINK_ROUTE: sock}
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(index)
	if up {
		msg.Flags, msg.Change = unix.IFF_UP, unix.IFF_UP
	}
	req.AddData(msg)
	if alias != "" {
		req.AddData(nl.NewRtAttr(unix.IFLA_IFALIAS, []byte(alias)))
	}
	_, err := req.Execute(unix.NETLINK_ROUTE, 0)
	return err
}

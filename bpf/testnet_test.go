package bpf

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/nsflow/nsflow/internal/nsenter"
	"github.com/nsflow/nsflow/internal/testenv"
)

// testNS is a named network namespace a test created and deletes at
// cleanup. Its interfaces have IPv6 disabled and static neighbours, so
// nothing but the test's own traffic crosses them.
type testNS struct {
	Name, Path string
}

func newTestNS(t testing.TB) *testNS {
	t.Helper()
	testenv.RequireRoot(t)
	name := testenv.Name("nsfbpf")
	errc := make(chan error, 1)
	go func() {
		// NewNamed moves the calling thread into the new namespace; the
		// thread goes back, or dies locked if it cannot.
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		h, err := netns.NewNamed(name)
		if err != nil {
			errc <- err
			return
		}
		h.Close()
		if err := netns.Set(orig); err != nil {
			errc <- err
			return
		}
		runtime.UnlockOSThread()
		errc <- nil
	}()
	if err := <-errc; err != nil {
		t.Fatalf("create netns %s: %v", name, err)
	}
	n := &testNS{Name: name, Path: filepath.Join("/run/netns", name)}
	t.Cleanup(func() {
		if _, err := os.Stat(n.Path); errors.Is(err, os.ErrNotExist) {
			return // the test deleted it itself
		}
		if err := netns.DeleteNamed(name); err != nil {
			t.Errorf("delete netns %s: %v", name, err)
		}
	})
	n.do(t, func() error {
		for _, f := range []string{"all", "default"} {
			if err := sysctl("net/ipv6/conf/"+f+"/disable_ipv6", "1"); err != nil {
				return err
			}
		}
		// A bridge reports its link-local IPv4 groups (IGMP) when it
		// comes up; nothing here needs them.
		if err := sysctl("net/ipv4/igmp_link_local_mcast_reports", "0"); err != nil {
			return err
		}
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(lo)
	})
	return n
}

// do runs fn inside the namespace and fails the test on error.
func (n *testNS) do(t testing.TB, fn func() error) {
	t.Helper()
	if err := nsenter.Do(n.Path, fn); err != nil {
		t.Fatalf("in %s: %v", n.Name, err)
	}
}

// sysctl writes a /proc/sys value of the calling thread's namespace.
func sysctl(key, val string) error {
	return os.WriteFile(filepath.Join("/proc/sys", key), []byte(val), 0o644)
}

// end is one end of a link: an interface in a namespace.
type end struct {
	NS     *testNS
	Ifname string
	IP     net.IP
	IP6    net.IP // set by enableIPv6
	MAC    net.HardwareAddr
}

// addr returns the end's IPv4 or IPv6 address.
func (e *end) addr(v6 bool) net.IP {
	if v6 {
		return e.IP6
	}
	return e.IP
}

// enableIPv6 turns IPv6 on for the ends of a veth pair, quietly: no
// link-local address, no duplicate address detection, no router
// solicitations, static neighbours, and the MLD reports for the
// solicited-node groups sent at once (the tests' baseline waits for them).
func enableIPv6(t testing.TB, net8 int, ends ...*end) {
	t.Helper()
	for i, e := range ends {
		e.IP6 = net.ParseIP(fmt.Sprintf("fd00:%x::%x", net8, i+1))
		e.NS.do(t, func() error {
			conf := "net/ipv6/conf/" + e.Ifname + "/"
			for _, kv := range [][2]string{
				{"addr_gen_mode", "1"}, {"accept_dad", "0"}, {"router_solicitations", "0"},
				{"mldv2_unsolicited_report_interval", "1"}, {"disable_ipv6", "0"},
			} {
				if err := sysctl(conf+kv[0], kv[1]); err != nil {
					return err
				}
			}
			l, err := netlink.LinkByName(e.Ifname)
			if err != nil {
				return err
			}
			addr := &netlink.Addr{IPNet: &net.IPNet{IP: e.IP6, Mask: net.CIDRMask(64, 128)}, Flags: unix.IFA_F_NODAD}
			return netlink.AddrAdd(l, addr)
		})
	}
	for _, e := range ends {
		for _, peer := range ends {
			if e == peer {
				continue
			}
			e.NS.do(t, func() error {
				l, err := netlink.LinkByName(e.Ifname)
				if err != nil {
					return err
				}
				return netlink.NeighSet(&netlink.Neigh{
					LinkIndex: l.Attrs().Index, Family: netlink.FAMILY_V6, State: netlink.NUD_PERMANENT,
					IP: peer.IP6, HardwareAddr: peer.MAC,
				})
			})
		}
	}
}

// vethPair creates a veth pair with one end in each namespace (created in
// place, never moved), up, with 198.18.<net>.1 and .2/24 addresses.
func vethPair(t testing.TB, a, b *testNS, net8 int) (ea, eb *end) {
	t.Helper()
	ea = &end{NS: a, Ifname: testenv.Name("va"), IP: net.IPv4(198, 18, byte(net8), 1)}
	eb = &end{NS: b, Ifname: testenv.Name("vb"), IP: net.IPv4(198, 18, byte(net8), 2)}
	bh, err := netns.GetFromPath(b.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer bh.Close()
	a.do(t, func() error {
		v := &netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: ea.Ifname},
			PeerName:      eb.Ifname,
			PeerNamespace: netlink.NsFd(int(bh)),
		}
		return netlink.LinkAdd(v)
	})
	for _, e := range []*end{ea, eb} {
		e.setup(t, 24)
	}
	ea.neigh(t, eb)
	eb.neigh(t, ea)
	return ea, eb
}

// setup brings the interface up with its address and reads its MAC.
func (e *end) setup(t testing.TB, plen int) {
	t.Helper()
	e.NS.do(t, func() error {
		l, err := netlink.LinkByName(e.Ifname)
		if err != nil {
			return err
		}
		e.MAC = l.Attrs().HardwareAddr
		if e.IP != nil {
			addr := &netlink.Addr{IPNet: &net.IPNet{IP: e.IP, Mask: net.CIDRMask(plen, 32)}}
			if err := netlink.AddrAdd(l, addr); err != nil {
				return fmt.Errorf("address %s on %s: %w", e.IP, e.Ifname, err)
			}
		}
		return netlink.LinkSetUp(l)
	})
}

// neigh adds a permanent neighbour entry for peer, so no ARP is sent.
func (e *end) neigh(t testing.TB, peer *end) {
	t.Helper()
	e.NS.do(t, func() error {
		l, err := netlink.LinkByName(e.Ifname)
		if err != nil {
			return err
		}
		return netlink.NeighSet(&netlink.Neigh{
			LinkIndex:    l.Attrs().Index,
			Family:       netlink.FAMILY_V4,
			State:        netlink.NUD_PERMANENT,
			IP:           peer.IP,
			HardwareAddr: peer.MAC,
		})
	})
}

// stats returns the kernel's interface statistics of the end.
func (e *end) stats(t testing.TB) netlink.LinkStatistics {
	t.Helper()
	var s netlink.LinkStatistics
	e.NS.do(t, func() error {
		l, err := netlink.LinkByName(e.Ifname)
		if err != nil {
			return err
		}
		s = *l.Attrs().Statistics
		return nil
	})
	return s
}

// bridged connects the namespaces to a bridge in br through veth pairs
// (bridge port in br, other end in each namespace with 198.18.<net8>.<i+1>).
func bridged(t testing.TB, br *testNS, net8 int, nss ...*testNS) (ends, ports []*end) {
	t.Helper()
	bname := testenv.Name("br")
	br.do(t, func() error {
		b := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: bname}}
		if err := netlink.LinkAdd(b); err != nil {
			return err
		}
		return netlink.LinkSetUp(b)
	})
	for i, ns := range nss {
		h, err := netns.GetFromPath(ns.Path)
		if err != nil {
			t.Fatal(err)
		}
		port := &end{NS: br, Ifname: testenv.Name("bp")}
		e := &end{NS: ns, Ifname: testenv.Name("be"), IP: net.IPv4(198, 18, byte(net8), byte(i+1))}
		br.do(t, func() error {
			v := &netlink.Veth{
				LinkAttrs:     netlink.LinkAttrs{Name: port.Ifname, MasterIndex: mustIndex(bname)},
				PeerName:      e.Ifname,
				PeerNamespace: netlink.NsFd(int(h)),
			}
			return netlink.LinkAdd(v)
		})
		h.Close()
		port.setup(t, 0)
		e.setup(t, 24)
		ends = append(ends, e)
		ports = append(ports, port)
	}
	for _, a := range ends {
		for _, b := range ends {
			if a != b {
				a.neigh(t, b)
			}
		}
	}
	return ends, ports
}

func mustIndex(name string) int {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return 0
	}
	return l.Attrs().Index
}

package traffic

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/nsflow/nsflow/internal/nsenter"
	"github.com/nsflow/nsflow/internal/testenv"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// pair is two fresh namespaces joined by one veth, with IPv4 and IPv6
// addresses and permanent neighbour entries so that no ARP or ND packet
// muddies the interface counters the tests compare with.
type pair struct {
	clientNS, serverNS string // netns paths
	clientIf, serverIf string
	client4, server4   netip.Addr
	client6, server6   netip.Addr
}

func newPair(t testing.TB) *pair {
	t.Helper()
	testenv.RequireRoot(t)
	base := testenv.Name("tfc")
	p := &pair{
		clientIf: "c" + base, serverIf: "s" + base,
		client4: netip.MustParseAddr("198.18.0.1"), server4: netip.MustParseAddr("198.18.0.2"),
		client6: netip.MustParseAddr("fd00:198:18::1"), server6: netip.MustParseAddr("fd00:198:18::2"),
	}
	p.clientNS = newNamedNS(t, base+"c")
	p.serverNS = newNamedNS(t, base+"s")
	cns, sns := openNS(t, p.clientNS), openNS(t, p.serverNS)
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: p.clientIf, Namespace: netlink.NsFd(cns)},
		PeerName:      p.serverIf,
		PeerNamespace: netlink.NsFd(sns),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		t.Fatalf("veth: %v", err)
	}
	cmac := configure(t, cns, p.clientIf, p.client4, p.client6)
	smac := configure(t, sns, p.serverIf, p.server4, p.server6)
	neighbour(t, cns, p.clientIf, p.server4, smac)
	neighbour(t, cns, p.clientIf, p.server6, smac)
	neighbour(t, sns, p.serverIf, p.client4, cmac)
	neighbour(t, sns, p.serverIf, p.client6, cmac)
	waitQuiet(t, p.serverNS, p.serverIf)
	return p
}

func newNamedNS(t testing.TB, name string) string {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	h, err := netns.NewNamed(name)
	if err != nil {
		t.Fatalf("netns %s: %v", name, err)
	}
	h.Close()
	if err := netns.Set(orig); err != nil {
		t.Fatalf("back to the original netns: %v", err)
	}
	t.Cleanup(func() {
		if err := netns.DeleteNamed(name); err != nil {
			t.Errorf("delete netns %s: %v", name, err)
		}
	})
	return filepath.Join("/run/netns", name)
}

func openNS(t testing.TB, path string) netns.NsHandle {
	t.Helper()
	h, err := netns.GetFromPath(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

func configure(t testing.TB, ns netns.NsHandle, ifname string, a4, a6 netip.Addr) net.HardwareAddr {
	t.Helper()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	link, err := h.LinkByName(ifname)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{a4.String() + "/24", a6.String() + "/64"} {
		addr, _ := netlink.ParseAddr(a)
		addr.Flags = 0x02 // IFA_F_NODAD: usable at once
		if err := h.AddrAdd(link, addr); err != nil {
			t.Fatalf("addr %s on %s: %v", a, ifname, err)
		}
	}
	// Before the link is up: no link-local address (so no DAD), no
	// router solicitations, and MLD's unsolicited reports repeated within
	// a millisecond so they are over by the time waitQuiet returns.
	for k, v := range map[string]string{
		"addr_gen_mode": "1", "accept_dad": "0", "router_solicitations": "0",
		"mldv1_unsolicited_report_interval": "1", "mldv2_unsolicited_report_interval": "1",
	} {
		if err := sysctl(ns, "ipv6/conf/"+ifname+"/"+k, v); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{"lo", ifname} {
		l, err := h.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		if err := h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	return link.Attrs().HardwareAddr
}

func sysctl(ns netns.NsHandle, key, value string) error {
	return nsenter.DoHandle(ns, func() error {
		return os.WriteFile("/proc/sys/net/"+key, []byte(value), 0o644)
	})
}

func neighbour(t testing.TB, ns netns.NsHandle, ifname string, ip netip.Addr, mac net.HardwareAddr) {
	t.Helper()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	link, err := h.LinkByName(ifname)
	if err != nil {
		t.Fatal(err)
	}
	n := &netlink.Neigh{LinkIndex: link.Attrs().Index, State: netlink.NUD_PERMANENT, IP: ip.AsSlice(), HardwareAddr: mac}
	if err := h.NeighSet(n); err != nil {
		t.Fatalf("neighbour %s on %s: %v", ip, ifname, err)
	}
}

// linkStats reads an interface's kernel counters inside a namespace.
func linkStats(t testing.TB, nsPath, ifname string) netlink.LinkStatistics {
	t.Helper()
	h, err := netlink.NewHandleAt(openNS(t, nsPath))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	l, err := h.LinkByName(ifname)
	if err != nil {
		t.Fatal(err)
	}
	return *l.Attrs().Statistics
}

// waitQuiet waits until the link's counters stop moving after bring-up
// (IPv6 multicast listener reports), so later deltas are the test's own.
func waitQuiet(t testing.TB, nsPath, ifname string) {
	t.Helper()
	prev := linkStats(t, nsPath, ifname)
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		time.Sleep(300 * time.Millisecond)
		cur := linkStats(t, nsPath, ifname)
		if cur.RxPackets == prev.RxPackets && cur.TxPackets == prev.TxPackets {
			return
		}
		prev = cur
	}
	t.Fatalf("%s never went quiet", ifname)
}

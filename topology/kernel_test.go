package topology

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nsflow/nsflow/internal/testenv"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

const seedFile = "../examples/seed.yaml"

// TestSeedUpDown brings the seed topology up in real namespaces, checks
// that linked endpoints reach each other (TCP connect, ICMP echo) and
// unlinked ones cannot, that two namespaces serve port 8080 at once and a
// pod namespace talks over its loopback; then that a second up changes
// nothing and down leaves the host as it was.
func TestSeedUpDown(t *testing.T) {
	s := prefixedSpec(t, seedFile)
	p := prefixOf(s)
	before := hostObjects(t, p)
	ctx := context.Background()

	res, err := Up(ctx, s, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if res.NamespacesCreated != 8 || res.InterfacesCreated != 13 {
		t.Errorf("created %d namespaces and %d interfaces, want 8 and 13", res.NamespacesCreated, res.InterfacesCreated)
	}
	st, err := Show(ctx, s, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Drift) != 0 {
		t.Errorf("drift right after up: %q", st.Drift)
	}
	ns := func(n string) string { return p + n }

	t.Run("reachable", func(t *testing.T) {
		tests := []struct{ from, to, addr string }{
			{"ns1", "ns2", "198.18.0.2"},
			{"ns2", "ns1", "198.18.0.1"},
			{"ns1", "ns2", "fd00:0:0:1::2"},
			{"c1", "c2", "198.18.1.12"},
			{"c2", "c3", "fd00:0:0:2::13"},
			{"c3", "pod", "198.18.1.20"},
			{"pod", "c1", "198.18.1.11"},
			{"srv1", "srv2", "198.18.2.2"},
			{"srv2", "srv1", "fd00:0:0:3::1"},
		}
		for _, tt := range tests {
			t.Run(tt.from+"-"+tt.to+"-"+tt.addr, func(t *testing.T) {
				ap := netip.AddrPortFrom(netip.MustParseAddr(tt.addr), 9000)
				serveTCP(t, s, ns(tt.to), ap.String(), tt.to)
				got, err := dialTCP(s, ns(tt.from), ap.String())
				if err != nil || got != tt.to {
					t.Errorf("TCP %s -> %s: got %q, %v", tt.from, ap, got, err)
				}
				if err := ping(s, ns(tt.from), ap.Addr()); err != nil {
					t.Errorf("ICMP %s -> %s: %v", tt.from, tt.addr, err)
				}
			})
		}
		// The containers' gateway is the host bridge's address. The host
		// answers only if its route back is this copy's bridge: another
		// copy of the seed up on this host (another test) shadows it.
		gw := netip.MustParseAddr("198.18.1.1")
		addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
		if err != nil {
			t.Fatal(err)
		}
		var holders []int
		for _, a := range addrs {
			if a.IP.Equal(gw.AsSlice()) {
				holders = append(holders, a.LinkIndex)
			}
		}
		if len(holders) != 1 || holders[0] != hostLinkIndex(t, s.Bridges[0].Name) {
			t.Logf("ICMP c1 -> gateway not probed: %s is on host interfaces %v (another copy of the seed is up)", gw, holders)
		} else if err := ping(s, ns("c1"), gw); err != nil {
			t.Errorf("ICMP c1 -> gateway: %v", err)
		}
	})

	t.Run("unreachable", func(t *testing.T) {
		// Probes start only in namespaces without a default route, so no
		// packet can leave through the host.
		tests := []struct{ from, to, addr string }{
			{"ns1", "c1", "198.18.1.11"},
			{"ns2", "srv2", "198.18.2.2"},
			{"srv1", "ns1", "198.18.0.1"},
			{"srv1", "pod", "fd00:0:0:2::20"},
		}
		for _, tt := range tests {
			t.Run(tt.from+"-"+tt.to, func(t *testing.T) {
				ap := netip.AddrPortFrom(netip.MustParseAddr(tt.addr), 9001)
				serveTCP(t, s, ns(tt.to), ap.String(), tt.to)
				// The listener is there; a connect that works from the
				// target's own link proves it, so a failure below is the
				// topology's doing.
				if got, err := dialTCP(s, ns(tt.to), ap.String()); err != nil || got != tt.to {
					t.Fatalf("listener check in %s: %q, %v", tt.to, got, err)
				}
				if got, err := dialTCP(s, ns(tt.from), ap.String()); err == nil {
					t.Errorf("TCP %s -> %s connected (%q); the namespaces share no link", tt.from, ap, got)
				}
				if err := ping(s, ns(tt.from), ap.Addr()); err == nil {
					t.Errorf("ICMP %s -> %s answered; the namespaces share no link", tt.from, tt.addr)
				}
			})
		}
	})

	t.Run("port 8080 in two namespaces", func(t *testing.T) {
		serveTCP(t, s, ns("srv1"), "0.0.0.0:8080", "srv1")
		serveTCP(t, s, ns("srv2"), "0.0.0.0:8080", "srv2")
		for _, tt := range []struct{ from, addr, want string }{
			{"srv1", "198.18.2.2:8080", "srv2"},
			{"srv2", "198.18.2.1:8080", "srv1"},
			{"srv1", "127.0.0.1:8080", "srv1"},
			{"srv2", "127.0.0.1:8080", "srv2"},
		} {
			if got, err := dialTCP(s, ns(tt.from), tt.addr); err != nil || got != tt.want {
				t.Errorf("from %s to %s: got %q, %v; want %q", tt.from, tt.addr, got, err, tt.want)
			}
		}
	})

	t.Run("pod localhost", func(t *testing.T) {
		ln := serveTCP(t, s, ns("pod"), "127.0.0.1:0", "pod")
		addr := ln.Addr().String()
		// Two "processes" in the pod share its loopback.
		var wg sync.WaitGroup
		for range 2 {
			wg.Go(func() {
				if got, err := dialTCP(s, ns("pod"), addr); err != nil || got != "pod" {
					t.Errorf("pod -> %s: %q, %v", addr, got, err)
				}
			})
		}
		wg.Wait()
		// Another namespace's loopback is its own.
		if got, err := dialTCP(s, ns("c1"), addr); err == nil {
			t.Errorf("c1 reached the pod's loopback listener %s: %q", addr, got)
		}
	})

	t.Run("second up changes nothing", func(t *testing.T) {
		res, err := Up(ctx, s, Options{})
		if err != nil {
			t.Fatal(err)
		}
		if !res.Unchanged() || !strings.Contains(res.String(), "nothing changed") {
			t.Errorf("second up: %+v", res)
		}
	})

	// The probes' listeners closed with their subtests: no socket holds
	// a namespace open.
	dres, err := Down(ctx, s, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if dres.NamespacesRemoved != 8 || dres.InterfacesRemoved != 5 {
		t.Errorf("down removed %d namespaces and %d host interfaces, want 8 and 5", dres.NamespacesRemoved, dres.InterfacesRemoved)
	}
	if after := hostObjects(t, p); !slices.Equal(after, before) {
		t.Errorf("host after down differs from before:\nbefore %q\nafter  %q", before, after)
	}
	dres, err = Down(ctx, s, Options{})
	if err != nil || dres.NamespacesRemoved+dres.InterfacesRemoved != 0 {
		t.Errorf("down when already down: %+v, %v", dres, err)
	}
}

// TestUpRollsBackInjectedFailure fails the build after a given number of
// created objects, from the first namespace to the middle of the links,
// and checks that nothing of the topology is left on the host.
func TestUpRollsBackInjectedFailure(t *testing.T) {
	for _, after := range []int64{1, 5, 8, 9, 12, 20} {
		t.Run(fmt.Sprintf("after %d objects", after), func(t *testing.T) {
			s := prefixedSpec(t, seedFile)
			before := hostObjects(t, prefixOf(s))
			_, err := Up(context.Background(), s, Options{failAfter: after})
			if err == nil || !strings.Contains(err.Error(), "injected failure") || !strings.Contains(err.Error(), "rolled back") {
				t.Fatalf("want the injected failure, rolled back; got %v", err)
			}
			if got := hostObjects(t, prefixOf(s)); !slices.Equal(got, before) {
				t.Errorf("left behind after rollback:\nbefore %q\nafter  %q", before, got)
			}
		})
	}
}

// TestUpRollsBackKernelFailure uses failures the kernel itself reports
// mid-build: a sysctl that does not exist (while creating namespaces) and
// a value the kernel refuses for the sysctl of an interface (written after the
// links, host-side veths included, exist).
func TestUpRollsBackKernelFailure(t *testing.T) {
	tests := []struct{ name, yaml, want string }{
		{"unknown sysctl", `
name: rb
namespaces:
  - {name: a}
  - {name: b}
  - {name: c, sysctls: {net.ipv4.no_such_sysctl: "1"}}
bridges: [{name: br}]
links:
  - endpoints: [{namespace: a, interface: eth0}, {bridge: br, interface: pa}]
`, "sysctl net.ipv4.no_such_sysctl"},
		{"sysctl value refused", `
name: rb
namespaces:
  - {name: a}
  - {name: b, sysctls: {net.ipv4.conf.eth0.rp_filter: "strict"}}
bridges: [{name: br, addresses: ["fd00:77::1/64"]}]
links:
  - endpoints: [{namespace: a, interface: eth0, addresses: ["fd00:77::10/64"]}, {bridge: br, interface: pa}]
  - endpoints: [{namespace: b, interface: eth0, addresses: ["fd00:77::11/64"]}, {bridge: br, interface: pb}]
`, "sysctl net.ipv4.conf.eth0.rp_filter"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := prefixedSpec(t, tt.yaml)
			before := hostObjects(t, prefixOf(s))
			_, err := Up(context.Background(), s, Options{Workers: 1})
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "rolled back") {
				t.Fatalf("want an error about %q, rolled back; got %v", tt.want, err)
			}
			if got := hostObjects(t, prefixOf(s)); !slices.Equal(got, before) {
				t.Errorf("left behind after rollback:\nbefore %q\nafter  %q", before, got)
			}
			if _, err := os.Stat(statePath(s.Name)); !os.IsNotExist(err) {
				t.Errorf("state record left behind: %v", err)
			}
		})
	}
}

// TestForeignObjectsAreNotAdopted puts a namespace and a host interface of
// declared names in place before up: up must refuse before creating
// anything, and down must leave both alone.
func TestForeignObjectsAreNotAdopted(t *testing.T) {
	t.Run("namespace", func(t *testing.T) {
		s := prefixedSpec(t, seedFile)
		name := s.Namespaces[1].Name
		c, err := createNetns(name, s.NetnsPath(name), "someone-else", nil)
		if err != nil {
			t.Fatal(err)
		}
		c.close()
		t.Cleanup(func() { unmountNetns(s.NetnsPath(name)) })
		want := []string{"netns " + name}
		testForeign(t, s, "namespace \""+name+"\" already exists and is not owned", want)
	})
	t.Run("host interface", func(t *testing.T) {
		s := prefixedSpec(t, seedFile)
		name := s.Bridges[0].Name
		la := netlink.NewLinkAttrs()
		la.Name = name
		foreign := &netlink.Bridge{LinkAttrs: la}
		if err := netlink.LinkAdd(foreign); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { netlink.LinkDel(foreign) })
		testForeign(t, s, "interface \""+name+"\" already exists in namespace \"host\" and is not owned", []string{"link " + name})
	})
}

func testForeign(t *testing.T, s *Spec, wantErr string, want []string) {
	t.Helper()
	_, err := Up(context.Background(), s, Options{})
	if err == nil || !strings.Contains(err.Error(), wantErr) {
		t.Fatalf("up: want %q, got %v", wantErr, err)
	}
	if got := hostObjects(t, prefixOf(s)); !slices.Equal(got, want) {
		t.Errorf("after refused up: %q, want only the foreign object %q", got, want)
	}
	res, err := Down(context.Background(), s, Options{})
	if err != nil {
		t.Fatalf("down: %v", err)
	}
	if len(res.Foreign) != 1 {
		t.Errorf("down should report the foreign object: %+v", res)
	}
	if got := hostObjects(t, prefixOf(s)); !slices.Equal(got, want) {
		t.Errorf("after down: %q, want the foreign object untouched %q", got, want)
	}
}

// TestShowDriftAndRepair changes the live state behind the topology's
// back: show reports each change, and up repairs them.
func TestShowDriftAndRepair(t *testing.T) {
	s := prefixedSpec(t, seedFile)
	ctx := context.Background()
	if _, err := Up(ctx, s, Options{}); err != nil {
		t.Fatal(err)
	}
	c1, srv1 := prefixOf(s)+"c1", prefixOf(s)+"srv1"
	for _, d := range []struct {
		ns string
		fn func(h *netlink.Handle) error
	}{
		{c1, func(h *netlink.Handle) error {
			l, err := h.LinkByName("eth0")
			if err != nil {
				return err
			}
			return h.AddrDel(l, nlAddr(netip.MustParsePrefix("198.18.1.11/24")))
		}},
		{srv1, func(h *netlink.Handle) error {
			l, err := h.LinkByName("eth0")
			if err != nil {
				return err
			}
			return h.LinkSetDown(l)
		}},
	} {
		c, err := openNetns(d.ns, s.NetnsPath(d.ns))
		if err != nil {
			t.Fatal(err)
		}
		err = d.fn(c.h)
		c.close()
		if err != nil {
			t.Fatal(err)
		}
	}
	pod := prefixOf(s) + "pod"
	inNS(t, s, pod, func() error {
		return os.WriteFile("/proc/sys/net/ipv4/ping_group_range", []byte("1 0"), 0)
	})
	st, err := Show(ctx, s, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		c1 + "/eth0: address 198.18.1.11/24 missing",
		c1 + ": route to default via 198.18.1.1 missing",
		srv1 + "/eth0: down",
		pod + `: sysctl net.ipv4.ping_group_range is "1\t0", declared "0 2147483647"`,
	} {
		if !slices.Contains(st.Drift, want) {
			t.Errorf("drift %q not reported; got %q", want, st.Drift)
		}
	}
	res, err := Up(ctx, s, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Changed < 4 {
		t.Errorf("repairing up changed %d things, want at least 4 (address, route, link state, sysctl)", res.Changed)
	}
	if st, err = Show(ctx, s, Options{}); err != nil || len(st.Drift) != 0 {
		t.Errorf("drift after repair: %q, %v", st.Drift, err)
	}
}

func hostLinkIndex(t *testing.T, name string) int {
	t.Helper()
	l, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return l.Attrs().Index
}

// routerSpec exercises what the seed does not: a bridge inside a
// namespace, a bridge-to-bridge link, a host endpoint, MTU, a router
// namespace forwarding between two others, and an interface with a dot in
// its name (wan.0, written wan/0 in a sysctl key as sysctl(8) does).
const routerSpec = `
name: rt
namespaces:
  - name: r
    sysctls: {net.ipv4.ip_forward: "1", net.ipv4.conf.wan/0.rp_filter: "2"}
  - name: a
    routes: [{to: default, via: 198.18.20.1}]
  - name: b
    routes: [{to: 198.18.20.0/24, via: 198.18.21.1}]
bridges:
  - {name: lan, namespace: r, mtu: 1400, addresses: [198.18.20.1/24]}
  - {name: lan2, namespace: r}
links:
  - mtu: 1400
    endpoints:
      - {namespace: a, interface: eth0, addresses: [198.18.20.10/24]}
      - {bridge: lan, interface: pa}
  - endpoints: [{bridge: lan, interface: l1}, {bridge: lan2, interface: l2}]
  - endpoints:
      - {namespace: r, interface: wan.0, addresses: [198.18.21.1/30]}
      - {namespace: b, interface: eth0, addresses: [198.18.21.2/30]}
  - endpoints:
      - {namespace: host, interface: h, addresses: [198.18.22.1/30]}
      - {namespace: r, interface: up0, addresses: [198.18.22.2/30]}
`

func TestRouterTopology(t *testing.T) {
	s := prefixedSpec(t, routerSpec)
	p := prefixOf(s)
	before := hostObjects(t, p)
	ctx := context.Background()
	if _, err := Up(ctx, s, Options{}); err != nil {
		t.Fatal(err)
	}
	st, err := Show(ctx, s, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Drift) != 0 {
		t.Errorf("drift after up: %q", st.Drift)
	}
	find := func(ns, name string) InterfaceState {
		for _, n := range st.Namespaces {
			for _, i := range n.Interfaces {
				if n.Name == ns && i.Name == name {
					return i
				}
			}
		}
		t.Fatalf("%s/%s not shown", ns, name)
		return InterfaceState{}
	}
	if i := find(p+"a", "eth0"); i.MTU != 1400 || i.Peer != p+"r:pa" {
		t.Errorf("a/eth0: %+v", i)
	}
	if i := find(p+"r", p+"lan"); !slices.Equal(i.Ports, []string{"l1", "pa"}) || i.MTU != 1400 {
		t.Errorf("bridge lan: %+v", i)
	}
	if i := find(p+"r", "l2"); i.Master != p+"lan2" || i.Peer != p+"r:l1" {
		t.Errorf("r/l2: %+v", i)
	}
	if i := find(HostNamespace, p+"h"); i.Peer != p+"r:up0" || !i.Owned {
		t.Errorf("host/h: %+v", i)
	}
	// The kernel's own view, read by another tool.
	if out, err := exec.Command("ip", "netns", "exec", p+"r", "cat", "/proc/sys/net/ipv4/conf/wan.0/rp_filter").CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "2" {
		t.Errorf("r: rp_filter of wan.0 is %q (%v), want 2", out, err)
	}
	t.Run("reachability", func(t *testing.T) {
		// a reaches b only through the router.
		serveTCP(t, s, p+"b", "198.18.21.2:9000", "b")
		if got, err := dialTCP(s, p+"a", "198.18.21.2:9000"); err != nil || got != "b" {
			t.Errorf("a -> b through r: %q, %v", got, err)
		}
		if err := ping(s, p+"a", netip.MustParseAddr("198.18.21.2")); err != nil {
			t.Errorf("ICMP a -> b through r: %v", err)
		}
		// The host reaches the router over its own veth end.
		if err := ping(s, HostNamespace, netip.MustParseAddr("198.18.22.2")); err != nil {
			t.Errorf("ICMP host -> r: %v", err)
		}
	})
	if res, err := Up(ctx, s, Options{}); err != nil || !res.Unchanged() {
		t.Errorf("second up: %+v, %v", res, err)
	}
	res, err := Down(ctx, s, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if res.NamespacesRemoved != 3 || res.InterfacesRemoved != 1 {
		t.Errorf("down: %+v", res)
	}
	if after := hostObjects(t, p); !slices.Equal(after, before) {
		t.Errorf("host after down differs:\nbefore %q\nafter  %q", before, after)
	}
}

// routesSpec declares, in namespace a: default routes of both families
// via gateways on eth0, a route via eth1 only, the subnet eth0 is on
// (which the kernel routes itself once the address is there), and a
// route via an IPv6 link-local gateway.
const routesSpec = `
name: routes
namespaces:
  - name: a
    routes:
      - {to: default, via: 198.18.30.2}
      - {to: default, via: "fd00:30::2"}
      - {to: 198.18.40.0/24, dev: eth1}
      - {to: 198.18.30.0/24, dev: eth0}
      - {to: "fd00:30::/64", dev: eth0}
      - {to: "fd00:39::/64", via: "fe80::1", dev: eth0}
  - name: b
    routes:
      - {to: 0.0.0.0/0, via: 198.18.30.1}
      - {to: "::/0", via: "fd00:30::1"}
  - name: c
    routes:
      - {to: default, dev: eth0}
      - {to: 198.18.41.0/24, dev: eth0}
links:
  - endpoints:
      - {namespace: a, interface: eth0, addresses: [198.18.30.1/24, "fd00:30::1/64"]}
      - {namespace: b, interface: eth0, addresses: [198.18.30.2/24, "fd00:30::2/64"]}
  - endpoints:
      - {namespace: a, interface: eth1, addresses: [198.18.31.1/24]}
      - {namespace: c, interface: eth0, addresses: [198.18.31.2/24]}
`

// TestRoutesConverge brings up routes that include the subnet of an
// interface (the kernel's own route), then changes gateways and devices
// behind the topology's back: show reports each change and one up puts
// the declared routes back.
func TestRoutesConverge(t *testing.T) {
	s := prefixedSpec(t, routesSpec)
	ctx := context.Background()
	if _, err := Up(ctx, s, Options{}); err != nil {
		t.Fatal(err)
	}
	noDrift := func(when string) {
		t.Helper()
		if st, err := Show(ctx, s, Options{}); err != nil || len(st.Drift) != 0 {
			t.Fatalf("drift %s: %q, %v", when, st.Drift, err)
		}
	}
	noDrift("after up")
	if res, err := Up(ctx, s, Options{}); err != nil || !res.Unchanged() {
		t.Fatalf("second up: %+v, %v", res, err)
	}
	// The declared IPv6 subnet route is the kernel's own, not a copy.
	if out := strings.TrimSpace(ipOut(t, "-n", prefixOf(s)+"a", "-6", "route", "show", "fd00:30::/64")); strings.Count(out, "\n") != 0 {
		t.Errorf("routes to fd00:30::/64:\n%s\nwant the kernel's only", out)
	}
	// 0.0.0.0/0 and ::/0 are the default routes the kernel has: prune
	// leaves them.
	if res, err := Up(ctx, s, Options{Prune: true}); err != nil || !res.Unchanged() || len(res.Pruned) != 0 {
		t.Fatalf("up --prune: %+v, %v", res, err)
	}

	a := prefixOf(s) + "a"
	c, err := openNetns(a, s.NetnsPath(a))
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	l, err := c.h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	eth0 := l.Attrs().Index
	for _, rt := range []*netlink.Route{
		{Gw: netip.MustParseAddr("198.18.30.3").AsSlice(), LinkIndex: eth0},
		{Gw: netip.MustParseAddr("fd00:30::3").AsSlice(), LinkIndex: eth0, Family: netlink.FAMILY_V6},
		{Dst: ipNet(netip.MustParsePrefix("198.18.40.0/24")), LinkIndex: eth0},
	} {
		if err := c.h.RouteReplace(rt); err != nil {
			t.Fatalf("replace %v: %v", rt, err)
		}
	}
	// An on-link route turned into one through a gateway is not the
	// declared one.
	cc, err := openNetns(prefixOf(s)+"c", s.NetnsPath(prefixOf(s)+"c"))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.close()
	if l, err = cc.h.LinkByName("eth0"); err != nil {
		t.Fatal(err)
	}
	if err := cc.h.RouteReplace(&netlink.Route{Dst: ipNet(netip.MustParsePrefix("198.18.41.0/24")),
		Gw: netip.MustParseAddr("198.18.31.1").AsSlice(), LinkIndex: l.Attrs().Index}); err != nil {
		t.Fatal(err)
	}
	st, err := Show(ctx, s, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		a + ": route to default via 198.18.30.2 missing",
		a + ": route to default via fd00:30::2 missing",
		a + ": route to 198.18.40.0/24 dev eth1 missing",
		prefixOf(s) + "c: route to 198.18.41.0/24 dev eth0 missing",
	} {
		if !slices.Contains(st.Drift, want) {
			t.Errorf("drift %q not reported; got %q", want, st.Drift)
		}
	}
	res, err := Up(ctx, s, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Changed != 4 || res.Unchanged() {
		t.Errorf("repairing up: %v; want 4 changes (two gateways, a device, an on-link route)", res)
	}
	noDrift("after the repairing up")
	if res, err := Up(ctx, s, Options{}); err != nil || !res.Unchanged() {
		t.Errorf("up after the repair: %+v, %v", res, err)
	}
}

// crashEnv names the stage at which a child process of
// TestUpKilledCreatingNamespace kills itself, and the prefix it runs with.
const (
	crashEnv       = "NSFLOW_TEST_CRASH_AT"
	crashPrefixEnv = "NSFLOW_TEST_CRASH_PREFIX"
	crashSpecEnv   = "NSFLOW_TEST_CRASH_SPEC"
	crashSpec      = "name: crash\nnamespaces: [{name: a}]\n"
)

// TestUpKilledCreatingNamespace runs up in a child process that kills
// itself (SIGKILL) while creating its namespace: once its file under
// /run/netns exists, and once the namespace is mounted there. What each
// crash leaves must be the topology's for up and down: a mounted
// namespace carries the marker already, and an empty file is removed.
func TestUpKilledCreatingNamespace(t *testing.T) {
	if stage := os.Getenv(crashEnv); stage != "" {
		crashChild(t, stage, os.Getenv(crashPrefixEnv))
		return
	}
	ctx := context.Background()
	t.Run("mounted", func(t *testing.T) {
		s := prefixedSpec(t, crashSpec)
		killUpAt(t, s, "mounted")
		res, err := Down(ctx, s, Options{})
		if err != nil || res.NamespacesRemoved != 1 || len(res.Foreign) != 0 {
			t.Fatalf("down after a kill at the mount: %+v, %v; want the namespace removed as owned", res, err)
		}
		if got := hostObjects(t, prefixOf(s)); len(got) != 0 {
			t.Errorf("left behind: %q", got)
		}
	})
	t.Run("created then down", func(t *testing.T) {
		s := prefixedSpec(t, crashSpec)
		path := s.NetnsPath(s.Namespaces[0].Name)
		killUpAt(t, s, "created")
		if fi, err := os.Lstat(path); err != nil || fi.Size() != 0 {
			t.Fatalf("want an empty file at %s after the kill: %v, %v", path, fi, err)
		}
		st, err := Show(ctx, s, Options{})
		if err != nil || !slices.Contains(st.Drift, "namespace "+s.Namespaces[0].Name+": missing") {
			t.Errorf("show with the empty file: %+v, %v; want the namespace missing", st, err)
		}
		if _, err := Down(ctx, s, Options{}); err != nil {
			t.Fatalf("down with the empty file: %v", err)
		}
		if got := hostObjects(t, prefixOf(s)); len(got) != 0 {
			t.Errorf("left behind: %q", got)
		}
	})
	t.Run("created then up", func(t *testing.T) {
		s := prefixedSpec(t, crashSpec)
		killUpAt(t, s, "created")
		if _, err := Up(ctx, s, Options{}); err != nil {
			t.Fatalf("up with the empty file: %v", err)
		}
		if st, err := Show(ctx, s, Options{}); err != nil || len(st.Drift) != 0 {
			t.Errorf("drift after up: %q, %v", st.Drift, err)
		}
	})
}

// crashVethSpec has host veth ends: bridge ports, the primary ends that
// the create request makes and that are marked after it.
const crashVethSpec = `
name: crashv
namespaces: [{name: a}, {name: b}]
bridges: [{name: br, addresses: [198.18.51.1/24]}]
links:
  - endpoints: [{namespace: a, interface: eth0, addresses: [198.18.51.10/24]}, {bridge: br, interface: pa}]
  - endpoints: [{namespace: b, interface: eth0, addresses: [198.18.51.11/24]}, {bridge: br, interface: pb}]
`

// TestUpKilledCreatingVeth kills up right after it created a veth whose
// host end it had not marked yet. That end's peer is in the topology's
// own namespace, so it is the topology's: up adopts and marks it, and
// down counts it as removed, not as someone else's left alone.
func TestUpKilledCreatingVeth(t *testing.T) {
	ctx := context.Background()
	unmarkedEnd := func(t *testing.T, s *Spec) string {
		t.Helper()
		for _, n := range []string{"pa", "pb"} {
			l, err := netlink.LinkByName(prefixOf(s) + n)
			if err == nil && l.Attrs().Alias == "" {
				return l.Attrs().Name
			}
		}
		t.Fatalf("no unmarked host end after the kill: %q", hostObjects(t, prefixOf(s)))
		return ""
	}
	t.Run("then up", func(t *testing.T) {
		s := prefixedSpec(t, crashVethSpec)
		killUpOf(t, s, crashVethSpec, "veth created")
		end := unmarkedEnd(t, s)
		if _, err := Up(ctx, s, Options{}); err != nil {
			t.Fatalf("up after the kill: %v", err)
		}
		if st, err := Show(ctx, s, Options{}); err != nil || len(st.Drift) != 0 {
			t.Errorf("drift after up: %q, %v", st.Drift, err)
		}
		if l, err := netlink.LinkByName(end); err != nil || l.Attrs().Alias != markerFor(s.Name) {
			t.Errorf("%s after up: %v, %v; want it marked", end, l, err)
		}
	})
	t.Run("then down", func(t *testing.T) {
		s := prefixedSpec(t, crashVethSpec)
		killUpOf(t, s, crashVethSpec, "veth created")
		unmarkedEnd(t, s)
		res, err := Down(ctx, s, Options{})
		if err != nil || len(res.Foreign) != 0 {
			t.Fatalf("down after the kill: %+v, %v; want no foreign object", res, err)
		}
		if got := hostObjects(t, prefixOf(s)); len(got) != 0 {
			t.Errorf("left behind: %q", got)
		}
	})
	t.Run("a foreign end stays foreign", func(t *testing.T) {
		// An unmarked host veth whose peer is not the declared one, here
		// in no namespace of the topology, is refused as before.
		s := prefixedSpec(t, crashVethSpec)
		la := netlink.NewLinkAttrs()
		la.Name = prefixOf(s) + "pa"
		v := &netlink.Veth{LinkAttrs: la, PeerName: prefixOf(s) + "xx"}
		if err := netlink.LinkAdd(v); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { netlink.LinkDel(v) })
		if _, err := Up(ctx, s, Options{}); err == nil || !strings.Contains(err.Error(), "not owned") {
			t.Fatalf("up with a foreign unmarked host end: %v, want refused", err)
		}
	})
}

// TestNotLeftoverNetnsFiles puts what is not a leftover of an interrupted
// up at a namespace's path: a file with content, an empty file with
// another mounted on it, and an empty file while the topology has no
// state record (another tool's, such as `ip netns add` between creating
// the file and mounting on it). Up must fail, and down too where the file
// could hold a namespace; both leave all alone.
func TestNotLeftoverNetnsFiles(t *testing.T) {
	ctx := context.Background()
	for _, tt := range []struct {
		name  string
		place func(t *testing.T, path string)
		// downOK: an empty file holds no namespace, and down has
		// nothing to do there.
		downOK bool
	}{
		{"file with content", func(t *testing.T, path string) {
			if err := os.WriteFile(path, []byte("x"), 0o444); err != nil {
				t.Fatal(err)
			}
		}, false},
		{"empty file, no record of ours", func(t *testing.T, path string) {
			if err := os.WriteFile(path, nil, 0o444); err != nil {
				t.Fatal(err)
			}
		}, true},
		{"empty file mounted on", func(t *testing.T, path string) {
			src := t.TempDir() + "/empty"
			for _, p := range []string{src, path} {
				if err := os.WriteFile(p, nil, 0o444); err != nil {
					t.Fatal(err)
				}
			}
			if err := unix.Mount(src, path, "", unix.MS_BIND, ""); err != nil {
				t.Fatal(err)
			}
		}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := prefixedSpec(t, crashSpec)
			path := s.NetnsPath(s.Namespaces[0].Name)
			if err := os.MkdirAll(NetnsDir, 0o755); err != nil {
				t.Fatal(err)
			}
			// Runs before prefixedSpec's down (the last cleanup
			// registered runs first), which then finds nothing there.
			t.Cleanup(func() { unmountNetns(path) })
			tt.place(t, path)
			var before unix.Statx_t
			if err := unix.Statx(unix.AT_FDCWD, path, 0, unix.STATX_INO, &before); err != nil {
				t.Fatal(err)
			}
			if _, err := Up(ctx, s, Options{}); err == nil {
				t.Error("up over a file that holds no namespace succeeded")
			}
			if _, err := Down(ctx, s, Options{}); (err == nil) != tt.downOK {
				t.Errorf("down over a file that holds no namespace: %v", err)
			}
			var after unix.Statx_t
			if err := unix.Statx(unix.AT_FDCWD, path, 0, unix.STATX_INO, &after); err != nil || after.Ino != before.Ino || after.Attributes != before.Attributes {
				t.Errorf("%s was touched: %v", path, err)
			}
		})
	}
}

// killUpAt runs up of s (crashSpec) in a child process that kills itself
// at stage.
func killUpAt(t *testing.T, s *Spec, stage string) { killUpOf(t, s, crashSpec, stage) }

// killUpOf is killUpAt for s made from the topology file text spec.
func killUpOf(t *testing.T, s *Spec, spec, stage string) {
	t.Helper()
	// Whatever the crash leaves goes, even if up or down do not take it.
	t.Cleanup(func() {
		for _, n := range s.Namespaces {
			unmountNetns(s.NetnsPath(n.Name))
		}
	})
	cmd := exec.Command(os.Args[0], "-test.run=^TestUpKilledCreatingNamespace$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashEnv+"="+stage, crashPrefixEnv+"="+prefixOf(s), crashSpecEnv+"="+spec)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("child up was not killed at %q: %v\n%s", stage, err, out)
	}
}

// crashChild is the child's side: up, killed at stage.
func crashChild(t *testing.T, stage, prefix string) {
	spec := os.Getenv(crashSpecEnv)
	if spec == "" {
		spec = crashSpec
	}
	s, err := Parse([]byte(spec))
	if err == nil {
		s, err = s.WithPrefix(prefix)
	}
	if err != nil {
		t.Fatal(err)
	}
	crashHook = func(at string) {
		if at == stage {
			syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {}
		}
	}
	_, err = Up(context.Background(), s, Options{})
	t.Fatalf("up returned instead of being killed at %q: %v", stage, err)
}

// bridgeMTUSpec has bridges whose MTU differs from their ports': the
// kernel gives a bridge its ports' smallest MTU as they attach, unless
// the bridge's MTU was set after its creation.
const bridgeMTUSpec = `
name: brmtu
namespaces: [{name: r}, {name: a}, {name: b}]
bridges:
  - {name: small, namespace: r, mtu: 1400, addresses: [198.18.50.1/24]}
  - {name: big, namespace: r, mtu: 9000}
links:
  - endpoints: [{namespace: a, interface: eth0, addresses: [198.18.50.10/24]}, {bridge: small, interface: pa}]
  - endpoints: [{namespace: b, interface: eth0}, {bridge: big, interface: pb}]
`

// TestBridgeMTU checks that one up leaves each bridge at its declared MTU,
// whether the bridge is created with its ports or existed before them.
func TestBridgeMTU(t *testing.T) {
	ctx := context.Background()
	check := func(t *testing.T, s *Spec) {
		t.Helper()
		st, err := Show(ctx, s, Options{})
		if err != nil {
			t.Fatal(err)
		}
		if len(st.Drift) != 0 {
			t.Errorf("drift after one up: %q", st.Drift)
		}
		if res, err := Up(ctx, s, Options{}); err != nil || !res.Unchanged() {
			t.Errorf("second up: %v, %v", res, err)
		}
	}
	t.Run("created with its ports", func(t *testing.T) {
		s := prefixedSpec(t, bridgeMTUSpec)
		if _, err := Up(ctx, s, Options{}); err != nil {
			t.Fatal(err)
		}
		check(t, s)
	})
	t.Run("ports attached later", func(t *testing.T) {
		s := prefixedSpec(t, bridgeMTUSpec)
		bare := *s
		bare.Links = nil
		if _, err := Up(ctx, &bare, Options{}); err != nil {
			t.Fatal(err)
		}
		res, err := Up(ctx, s, Options{})
		if err != nil {
			t.Fatal(err)
		}
		if res.InterfacesCreated != 4 {
			t.Errorf("up with the ports: %v; want 4 interfaces created", res)
		}
		check(t, s)
	})
}

// TestUpRefusesRewiredVeths brings a topology up, then a file of the same
// name whose links pair the same interfaces differently: every end
// exists, but not with the declared peer, which up must refuse.
func TestUpRefusesRewiredVeths(t *testing.T) {
	tests := []struct{ name, before, after string }{
		{"across namespaces", `
name: wire
namespaces: [{name: a}, {name: b}, {name: c}, {name: d}]
links:
  - endpoints: [{namespace: a, interface: eth0}, {namespace: b, interface: eth0}]
  - endpoints: [{namespace: c, interface: eth0}, {namespace: d, interface: eth0}]
`, `
name: wire
namespaces: [{name: a}, {name: b}, {name: c}, {name: d}]
links:
  - endpoints: [{namespace: a, interface: eth0}, {namespace: d, interface: eth0}]
  - endpoints: [{namespace: c, interface: eth0}, {namespace: b, interface: eth0}]
`},
		{"in one namespace", `
name: wire
namespaces: [{name: r}]
links:
  - endpoints: [{namespace: r, interface: x1}, {namespace: r, interface: x2}]
  - endpoints: [{namespace: r, interface: y1}, {namespace: r, interface: y2}]
`, `
name: wire
namespaces: [{name: r}]
links:
  - endpoints: [{namespace: r, interface: x1}, {namespace: r, interface: y2}]
  - endpoints: [{namespace: r, interface: y1}, {namespace: r, interface: x2}]
`},
	}
	ctx := context.Background()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := prefixedSpec(t, tt.before)
			if _, err := Up(ctx, s, Options{}); err != nil {
				t.Fatal(err)
			}
			rewired, err := Parse([]byte(tt.after))
			if err == nil {
				rewired, err = rewired.WithPrefix(prefixOf(s))
			}
			if err != nil {
				t.Fatal(err)
			}
			res, err := Up(ctx, rewired, Options{Workers: 1})
			if err == nil || !strings.Contains(err.Error(), "links[0]") || !strings.Contains(err.Error(), "run down first") {
				t.Fatalf("up of the rewired file: %v, %v; want an error naming links[0] and \"run down first\"", res, err)
			}
			if st, err := Show(ctx, s, Options{}); err != nil || len(st.Drift) != 0 {
				t.Errorf("the first file's topology changed: %q, %v", st.Drift, err)
			}
		})
	}
}

// TestUpRecreatesLoneMarkedEnd removes a namespace's name while something
// still holds the namespace, as `ip netns del` does while the kernel is
// still destroying it: the host end of its veth is left, with this
// topology's marker and no declared peer. up must replace the pair.
func TestUpRecreatesLoneMarkedEnd(t *testing.T) {
	s := prefixedSpec(t, `
name: lone
namespaces: [{name: a}]
links:
  - endpoints: [{namespace: host, interface: h}, {namespace: a, interface: eth0, addresses: [198.18.60.2/30]}]
`)
	ctx := context.Background()
	if _, err := Up(ctx, s, Options{}); err != nil {
		t.Fatal(err)
	}
	host := s.Links[0].Endpoints[0].Interface
	old := hostLinkIndex(t, host)
	a := s.Namespaces[0].Name
	held, err := netns.GetFromPath(s.NetnsPath(a))
	if err != nil {
		t.Fatal(err)
	}
	// Closed before the topology's down, which would otherwise wait for
	// the held namespace's veth.
	t.Cleanup(func() { held.Close() })
	if err := unmountNetns(s.NetnsPath(a)); err != nil {
		t.Fatal(err)
	}
	res, err := Up(ctx, s, Options{})
	if err != nil {
		t.Fatalf("up with the lone host end: %v", err)
	}
	if res.NamespacesCreated != 1 || res.InterfacesCreated != 2 {
		t.Errorf("up: %v; want the namespace and both ends created", res)
	}
	if idx := hostLinkIndex(t, host); idx == old {
		t.Errorf("host end %s is still the old one (ifindex %d)", host, idx)
	}
	if st, err := Show(ctx, s, Options{}); err != nil || len(st.Drift) != 0 {
		t.Errorf("drift after up: %q, %v", st.Drift, err)
	}
}

// TestUpKeepsLoneEndWithLivePeer: an end whose declared peer is missing
// but whose real peer lives on is not deleted, which would take the peer
// with it: up fails, naming the link, and the peer stays. The peer may be
// in one of the topology's namespaces under another name (renamed by
// hand; here the lone end is a marked host end, which up otherwise
// replaces), or in a namespace outside the topology (moved there).
func TestUpKeepsLoneEndWithLivePeer(t *testing.T) {
	for _, tc := range []struct {
		name, spec string
		// break makes the declared peer of links[0]'s first end
		// disappear, and returns the namespace and name it has now.
		breakPeer func(t *testing.T, s *Spec) (ns, name string)
	}{
		{"renamed in the topology", `
name: lonepeer
namespaces: [{name: a}]
links:
  - endpoints: [{namespace: host, interface: h}, {namespace: a, interface: eth0, addresses: [198.18.61.1/30]}]
`, func(t *testing.T, s *Spec) (string, string) {
			a := s.Namespaces[0].Name
			if out, err := exec.Command("ip", "-n", a, "link", "set", "eth0", "name", "renamed").CombinedOutput(); err != nil {
				t.Fatalf("rename: %v: %s", err, out)
			}
			return a, "renamed"
		}},
		{"moved out of the topology", `
name: lonepeer
namespaces: [{name: a}, {name: b}]
links:
  - endpoints: [{namespace: a, interface: eth0, addresses: [198.18.61.1/30]}, {namespace: b, interface: eth0, addresses: [198.18.61.2/30]}]
`, func(t *testing.T, s *Spec) (string, string) {
			other := testenv.Name("tlo")
			if out, err := exec.Command("ip", "netns", "add", other).CombinedOutput(); err != nil {
				t.Fatalf("add netns: %v: %s", err, out)
			}
			t.Cleanup(func() { exec.Command("ip", "netns", "del", other).Run() })
			if out, err := exec.Command("ip", "-n", s.Namespaces[1].Name, "link", "set", "eth0", "netns", other).CombinedOutput(); err != nil {
				t.Fatalf("move: %v: %s", err, out)
			}
			return other, "eth0"
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := prefixedSpec(t, tc.spec)
			ctx := context.Background()
			if _, err := Up(ctx, s, Options{}); err != nil {
				t.Fatal(err)
			}
			ns, name := tc.breakPeer(t, s)
			_, err := Up(ctx, s, Options{})
			if err == nil || !strings.Contains(err.Error(), "links[0]") || !strings.Contains(err.Error(), "run down first") {
				t.Fatalf("up: %v; want an error naming links[0] and saying to run down first", err)
			}
			if want := "is paired with " + ns + ":" + name; tc.name == "renamed in the topology" && !strings.Contains(err.Error(), want) {
				t.Errorf("up: %v; want it to say where the peer is (%q)", err, want)
			}
			if out, err := exec.Command("ip", "-n", ns, "link", "show", name).CombinedOutput(); err != nil {
				t.Errorf("the live peer went: %v: %s", err, out)
			}
		})
	}
}

// TestVethEndsDifferentIndexes: the two ends of a veth between two new
// namespaces get different ifindexes, so that the kernel reports their
// carrier at once instead of at its once-a-second link-state pass (which
// made every such up take a second).
func TestVethEndsDifferentIndexes(t *testing.T) {
	ctx := context.Background()
	s := prefixedSpec(t, `
name: idx
namespaces: [{name: a}, {name: b}, {name: c}]
links:
  - endpoints: [{namespace: a, interface: e1, addresses: [198.18.97.1/30]}, {namespace: b, interface: e1, addresses: [198.18.97.2/30]}]
  - endpoints: [{namespace: b, interface: e2}, {namespace: c, interface: e2}]
  - endpoints: [{namespace: c, interface: e3}, {namespace: a, interface: e3}]
`)
	if _, err := Up(ctx, s, Options{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { Down(ctx, s, Options{}) })
	for _, l := range s.Links {
		var idx [2]int
		for i, e := range l.Endpoints {
			inNS(t, s, e.Namespace, func() error {
				link, err := netlink.LinkByName(e.Interface)
				if err == nil {
					idx[i] = link.Attrs().Index
				}
				return err
			})
		}
		if idx[0] == idx[1] {
			t.Errorf("%s:%s and %s:%s both have ifindex %d", l.Endpoints[0].Namespace, l.Endpoints[0].Interface, l.Endpoints[1].Namespace, l.Endpoints[1].Interface, idx[0])
		}
	}
}

// TestLeftoverRemovalWaitsForCreation: another run's preflight, removing
// what looks like a leftover namespace file, must not remove one that a
// run is between creating and mounting (the same name in two topologies
// run at once): it waits, then finds the namespace mounted.
func TestLeftoverRemovalWaitsForCreation(t *testing.T) {
	testenv.RequireRoot(t)
	name := testenv.Name("tl")
	path := filepath.Join("/run/netns", name)
	created, proceed := make(chan struct{}), make(chan struct{})
	crashHook = func(at string) {
		if at == "created" {
			close(created)
			<-proceed
		}
	}
	defer func() { crashHook = func(string) {} }()
	made := make(chan error, 1)
	go func() {
		c, err := createNetns(name, path, "nsflow:test", nil)
		if err == nil {
			c.close()
		}
		made <- err
	}()
	<-created
	removed := make(chan error, 1)
	go func() { removed <- removeLeftoverNetns(path) }()
	select {
	case err := <-removed:
		t.Errorf("the removal did not wait for the creation in progress (%v)", err)
	case <-time.After(200 * time.Millisecond):
	}
	close(proceed)
	if err := <-made; err != nil {
		t.Fatal(err)
	}
	defer unmountNetns(path)
	if err := <-removed; err != nil {
		t.Fatal(err)
	}
	if leftover, err := leftoverNetnsFile(path); err != nil || leftover {
		t.Errorf("after both: leftover %v, %v", leftover, err)
	}
	if _, err := os.Stat(path); err != nil {
		t.Errorf("the namespace's file is gone: %v", err)
	}
}

// TestUpRightAfterNetnsDel: up recreates a namespace deleted with ip netns
// del at once, although the kernel may not have begun to destroy the old
// one (its veth end still in the other namespace, its id still alive).
func TestUpRightAfterNetnsDel(t *testing.T) {
	s := prefixedSpec(t, `
name: nsdel
namespaces: [{name: a}, {name: b}]
links:
  - endpoints: [{namespace: a, interface: e0, addresses: [198.18.87.1/30]}, {namespace: b, interface: e0, addresses: [198.18.87.2/30]}]
`)
	ctx := context.Background()
	for i := range 10 {
		if _, err := Up(ctx, s, Options{}); err != nil {
			t.Fatalf("up %d: %v", i, err)
		}
		if out, err := exec.Command("ip", "netns", "del", prefixOf(s)+"b").CombinedOutput(); err != nil {
			t.Fatalf("ip netns del: %v: %s", err, out)
		}
	}
	if _, err := Up(ctx, s, Options{}); err != nil {
		t.Fatalf("last up: %v", err)
	}
}

// TestUpRepairsFlushedRoutes: a route without via is on-link (scope link),
// so after the table is flushed one up puts back both it and the route
// whose gateway it reaches.
func TestUpRepairsFlushedRoutes(t *testing.T) {
	s := prefixedSpec(t, `
name: flush
namespaces:
  - name: a
    routes: [{to: 198.18.88.0/24, dev: eth0}, {to: default, via: 198.18.88.2}]
  - name: b
links:
  - endpoints: [{namespace: a, interface: eth0, addresses: [198.18.88.1/24]}, {namespace: b, interface: eth0, addresses: [198.18.88.2/24]}]
`)
	ctx := context.Background()
	if _, err := Up(ctx, s, Options{}); err != nil {
		t.Fatal(err)
	}
	a := prefixOf(s) + "a"
	if out, err := exec.Command("ip", "-n", a, "route", "flush", "table", "main").CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if _, err := Up(ctx, s, Options{}); err != nil {
		t.Fatalf("up after the flush: %v", err)
	}
	if st, err := Show(ctx, s, Options{}); err != nil || len(st.Drift) != 0 {
		t.Errorf("show after the repair: %q, %v", st.Drift, err)
	}
}

// TestUpRightAfterNetnsDelMany: several namespaces on a host bridge
// deleted at once, then up: the host ends' peers' namespace ids, read
// before the old namespaces died, may have gone to the new ones.
func TestUpRightAfterNetnsDelMany(t *testing.T) {
	spec := "name: nsdelm\nnamespaces: [{name: q0}, {name: q1}, {name: q2}, {name: q3}, {name: q4}, {name: q5}]\nbridges: [{name: hb}]\nlinks:\n"
	for i := range 6 {
		spec += fmt.Sprintf("  - endpoints: [{namespace: q%d, interface: eth0, addresses: [198.18.89.%d/24]}, {bridge: hb, interface: h%d}]\n", i, i+1, i)
	}
	s := prefixedSpec(t, spec)
	ctx := context.Background()
	for i := range 15 {
		if _, err := Up(ctx, s, Options{}); err != nil {
			t.Fatalf("up %d: %v", i, err)
		}
		for j := range 6 {
			if out, err := exec.Command("ip", "netns", "del", fmt.Sprintf("%sq%d", prefixOf(s), j)).CombinedOutput(); err != nil {
				t.Fatalf("ip netns del: %v: %s", err, out)
			}
		}
	}
	if _, err := Up(ctx, s, Options{}); err != nil {
		t.Fatalf("last up: %v", err)
	}
}

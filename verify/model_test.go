package verify

import (
	"errors"
	"github.com/nsflow/nsflow/bpf"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/nsflow/nsflow/topology"
	"golang.org/x/sys/unix"
)

func TestModelAnswerer(t *testing.T) {
	m := NewModel(labSpec(t, nil))
	for _, tc := range []struct {
		from, addr, want string
	}{
		{"a", "198.18.1.2", "b"},    // same bridge, same subnet
		{"a", "fd00:0:0:1::2", "b"}, // and over IPv6
		{"a", "198.18.2.1", "c"},    // routed through r, which forwards
		{"a", "fd00:0:0:2::1", "c"}, // IPv6 forwarding too
		{"c", "198.18.1.1", "a"},    // default route back through r
		{"b", "198.18.2.1", ""},     // b has no route to c's subnet
		{"c", "198.18.1.2", ""},     // delivered to b, but b cannot answer
		{"b", "198.18.2.254", ""},   // r's far address: no route in b
		{"b", "198.18.1.254", "r"},  // r's near address
		{"sw", "198.18.1.1", ""},    // the bridge namespace has no addresses
		{"a", "198.18.9.9", ""},     // nobody's
		{"c", "198.18.1.254", "r"},  // r answers for any of its addresses
	} {
		if got := m.Answerer(tc.from, netip.MustParseAddr(tc.addr)); got != tc.want {
			t.Errorf("Answerer(%s, %s) = %q, want %q", tc.from, tc.addr, got, tc.want)
		}
	}
	// One-way delivery: c's packets reach b though b's replies cannot return.
	if got, _ := m.Deliver("c", netip.MustParseAddr("198.18.1.2")); got != "b" {
		t.Errorf("Deliver(c, b) = %q, want b", got)
	}
}

func TestModelForwardingOff(t *testing.T) {
	m := NewModel(labSpec(t, func(s *topology.Spec) { noForwarding(s, "r") }))
	if got := m.Answerer("a", netip.MustParseAddr("198.18.2.1")); got != "" {
		t.Errorf("a -> c through a router that does not forward: answered by %q", got)
	}
}

// noForwarding drops the forwarding sysctls of ns and the intent that
// depends on them.
func noForwarding(s *topology.Spec, ns string) {
	for i := range s.Namespaces {
		if s.Namespaces[i].Name == ns {
			s.Namespaces[i].Sysctls = nil
		}
	}
	s.Isolation.Allow = nil
}

func TestCheckIntent(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(*topology.Spec)
		want []string // substrings of the error; none means valid
	}{
		{"lab", nil, nil},
		{"allow without a path", func(s *topology.Spec) {
			s.Isolation.Allow = append(s.Isolation.Allow, topology.Rule{From: []string{"b"}, To: []string{"c"}})
		}, []string{"isolation.allow[2]: b must reach c"}},
		{"deny on a shared segment", func(s *topology.Spec) {
			s.Isolation.Deny = append(s.Isolation.Deny, topology.Rule{From: []string{"a"}, To: []string{"b"}, Ports: []string{"tcp/22"}})
		}, []string{"isolation.deny[1]: a must not reach b"}},
		{"deny one way delivered", func(s *topology.Spec) {
			s.Isolation.Deny = append(s.Isolation.Deny, topology.Rule{From: []string{"c"}, To: []string{"b"}})
		}, []string{"isolation.deny[1]: c must not reach b"}},
		{"group expands", func(s *topology.Spec) {
			s.Isolation.Groups = map[string][]string{"lan": {"a", "b"}}
			s.Isolation.Deny = append(s.Isolation.Deny, topology.Rule{From: []string{"lan"}, To: []string{"r"}})
		}, []string{"isolation.deny[1]: a must not reach r", "isolation.deny[1]: b must not reach r"}},
		// Whatever the subnets and IPv6 settings: limited broadcast and
		// multicast reach every stack on the segment.
		{"deny on a shared segment without a common subnet", func(s *topology.Spec) {
			moveToSubnet(s, "b", "198.18.9.2/24", "fd00:0:0:9::2/64")
			s.Isolation.Deny = append(s.Isolation.Deny, topology.Rule{From: []string{"a"}, To: []string{"b"}})
		}, []string{"isolation.deny[1]: a must not reach b, but they share the L2 segment of b's eth0, where broadcast, multicast and IPv6 link-local packets reach every stack"}},
		{"deny on a shared segment without IPv6 there", func(s *topology.Spec) {
			moveToSubnet(s, "b", "198.18.9.2/24")
			setSysctl(s, "b", "net.ipv6.conf.eth0.disable_ipv6", "1")
			s.Isolation.Deny = append(s.Isolation.Deny, topology.Rule{From: []string{"a"}, To: []string{"b"}})
		}, []string{"isolation.deny[1]: a must not reach b, but they share the L2 segment"}},
		{"allow when forwarding is off", func(s *topology.Spec) {
			noForwarding(s, "r")
			s.Isolation.Allow = []topology.Rule{{From: []string{"a"}, To: []string{"c"}}}
		}, []string{"isolation.allow[0]: a must reach c"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := NewModel(labSpec(t, tc.edit)).CheckIntent()
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			var se *SpecError
			if !errors.As(err, &se) {
				t.Fatalf("got %v, want a *SpecError", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

// moveToSubnet gives namespace ns's eth0 these addresses instead.
func moveToSubnet(s *topology.Spec, ns string, addrs ...string) {
	for i, l := range s.Links {
		for j, e := range l.Endpoints {
			if e.Namespace == ns && e.Interface == "eth0" {
				s.Links[i].Endpoints[j].Addresses = addrs
			}
		}
	}
}

func setSysctl(s *topology.Spec, ns, key, value string) {
	for i := range s.Namespaces {
		if s.Namespaces[i].Name == ns {
			if s.Namespaces[i].Sysctls == nil {
				s.Namespaces[i].Sysctls = map[string]string{}
			}
			s.Namespaces[i].Sysctls[key] = value
		}
	}
}

func TestPortsIncludeRulePorts(t *testing.T) {
	m := NewModel(labSpec(t, func(s *topology.Spec) {
		s.Isolation.Allow[0].Ports = []string{"tcp/443"}
	}))
	var got []string
	for _, p := range m.Ports() {
		got = append(got, p.String())
	}
	if strings.Join(got, " ") != "icmp tcp/8080 udp/8080 tcp/443" {
		t.Errorf("ports = %v", got)
	}
}

func TestViolations(t *testing.T) {
	m := NewModel(labSpec(t, nil))
	a := func(s string) netip.Addr { return netip.MustParseAddr(s) }
	flows := []Flow{
		{Netns: "c", Src: a("198.18.1.1"), Dst: a("198.18.2.1"), Proto: 6, DstPort: 8080, Packets: 3, Bytes: 180}, // a -> c: allowed
		{Netns: "c", Src: a("198.18.1.2"), Dst: a("198.18.2.1"), Proto: 6, DstPort: 8080, Packets: 2, Bytes: 120}, // b -> c: no path
		{Netns: "c", Src: a("198.18.1.2"), Dst: a("198.18.2.1"), Proto: 1, Packets: 1, Bytes: 84},                 // and ICMP
		{Netns: "b", Src: a("198.18.2.1"), Dst: a("198.18.1.2"), Proto: 17, DstPort: 8080, Packets: 5},            // c -> b: delivered one way, allowed
		{Netns: "r", Src: a("198.18.1.2"), Dst: a("198.18.2.1"), Proto: 6, Packets: 7},                            // transit through r: not a delivery to r
		{Netns: "a", Src: a("198.18.77.7"), Dst: a("198.18.1.1"), Proto: 17, Packets: 4, Bytes: 400},              // from nobody's address
		{Netns: "a", Src: a("fe80::1"), Dst: a("198.18.1.1"), Packets: 9},                                         // link-local: not attributable
		{Netns: "b", Src: a("198.18.1.1"), Dst: a("ff02::1"), Packets: 9},                                         // multicast
	}
	got := m.Violations(flows)
	want := []Violation{{Src: "b", Dst: "c", Packets: 3, Bytes: 204}, {Src: Unknown, Dst: "a", Packets: 4, Bytes: 400}}
	if len(got) != len(want) {
		t.Fatalf("got %d violations %+v, want %d", len(got), got, len(want))
	}
	for _, w := range want {
		found := false
		for _, g := range got {
			if g.Src == w.Src && g.Dst == w.Dst {
				found = true
				if g.Packets != w.Packets || g.Bytes != w.Bytes {
					t.Errorf("%s -> %s: %d packets %d bytes, want %d and %d", w.Src, w.Dst, g.Packets, g.Bytes, w.Packets, w.Bytes)
				}
			}
		}
		if !found {
			t.Errorf("no violation %s -> %s in %+v", w.Src, w.Dst, got)
		}
	}
}

// The classifier the agent uses judges one ingress record the way
// Violations judges a flow; addresses the topology does not declare are
// judged by who holds them (a rogue link with addresses of its own).
func TestClassifier(t *testing.T) {
	classify := NewModel(labSpec(t, nil)).Classifier()
	a := func(s string) netip.Addr { return netip.MustParseAddr(s) }
	rogue := map[netip.Addr][]string{a("198.19.85.1"): {"b"}, a("198.19.85.2"): {"c"}}
	holders := func(ip netip.Addr) []string { return rogue[ip] }
	for _, tc := range []struct {
		name     string
		netns    string
		src, dst netip.Addr
		holders  func(netip.Addr) []string
		wantSrc  string
		want     bool
	}{
		{"allowed a to c", "c", a("198.18.1.1"), a("198.18.2.1"), nil, "", false},
		{"b to c has no path", "c", a("198.18.1.2"), a("198.18.2.1"), nil, "b", true},
		{"transit through r", "r", a("198.18.1.2"), a("198.18.2.1"), nil, "", false},
		{"from nobody's address", "a", a("198.18.77.7"), a("198.18.1.1"), nil, Unknown, true},
		{"rogue link b to c", "c", a("198.19.85.1"), a("198.19.85.2"), holders, "b", true},
		{"rogue link without holders", "c", a("198.19.85.1"), a("198.19.85.2"), nil, "", false},
		{"undeclared address c does not hold", "a", a("198.19.85.1"), a("198.19.85.2"), holders, "", false},
		{"declared address wins over holders", "c", a("198.18.1.1"), a("198.18.2.1"), func(netip.Addr) []string { return []string{"b"} }, "", false},
	} {
		k := bpf.FlowKey{Dir: bpf.Ingress, Proto: 17, Src: tc.src, Dst: tc.dst, SrcPort: 40000, DstPort: 8080}
		src, dst, ok := classify(k, tc.netns, tc.holders)
		if ok != tc.want || (ok && (src != tc.wantSrc || dst != tc.netns)) {
			t.Errorf("%s: got (%q, %q, %v), want (%q, %q, %v)", tc.name, src, dst, ok, tc.wantSrc, tc.netns, tc.want)
		}
	}
}

// IPv4 forwarding is decided by the receiving interface, with the
// namespace-wide keys written in key order before the interfaces exist.
func TestForwarding4(t *testing.T) {
	for _, tc := range []struct {
		sysctls map[string]string
		ifc     string
		want    bool
	}{
		{nil, "eth0", false},
		{map[string]string{"net.ipv4.ip_forward": "1"}, "eth0", true},
		{map[string]string{"net.ipv4.conf.all.forwarding": "1"}, "eth0", true},
		{map[string]string{"net.ipv4.conf.default.forwarding": "1"}, "eth0", true},
		// ip_forward comes after conf.default in key order, but passes
		// only a change on to it: 0 changes nothing.
		{map[string]string{"net.ipv4.conf.default.forwarding": "1", "net.ipv4.ip_forward": "0"}, "eth0", true},
		{map[string]string{"net.ipv4.conf.all.forwarding": "1", "net.ipv4.conf.default.forwarding": "0"}, "eth0", false},
		{map[string]string{"net.ipv4.ip_forward": "1", "net.ipv4.conf.eth1.forwarding": "0"}, "eth1", false},
		{map[string]string{"net.ipv4.ip_forward": "1", "net.ipv4.conf.eth1.forwarding": "0"}, "eth0", true},
		{map[string]string{"net.ipv4.conf.eth1.forwarding": "1"}, "eth1", true},
		{map[string]string{"net.ipv4.conf.eth0/100.forwarding": "1"}, "eth0.100", true}, // a dot in the name is a slash in the key
		{map[string]string{"net.ipv4.ip_forward": "1", "net.ipv4.conf.eth0/100.forwarding": "0"}, "eth0.100", false},
		{map[string]string{"net.ipv4.ip_forward": "1", "net.ipv4.conf.eth0/100.forwarding": "0"}, "eth0", true},
		{map[string]string{"net.ipv6.conf.all.forwarding": "1"}, "eth0", false},
	} {
		if got := forwarding4(tc.sysctls, tc.ifc); got != tc.want {
			t.Errorf("forwarding4(%v, %s) = %v, want %v", tc.sysctls, tc.ifc, got, tc.want)
		}
	}
}

// IPv6 forwards on conf.all.forwarding, or on the receiving interface's
// force_forwarding, which it takes from conf.default.
func TestForwarding6(t *testing.T) {
	for _, tc := range []struct {
		sysctls map[string]string
		want    bool
	}{
		{nil, false},
		{map[string]string{"net.ipv6.conf.all.forwarding": "1"}, true},
		{map[string]string{"net.ipv6.conf.default.forwarding": "1"}, false},
		{map[string]string{"net.ipv6.conf.eth0.forwarding": "1"}, false},
		{map[string]string{"net.ipv6.conf.default.force_forwarding": "1"}, true},
		{map[string]string{"net.ipv6.conf.default.force_forwarding": "1", "net.ipv6.conf.eth0.force_forwarding": "0"}, false},
		{map[string]string{"net.ipv6.conf.eth0.force_forwarding": "1"}, true},
		{map[string]string{"net.ipv6.conf.eth1.force_forwarding": "1"}, false},
	} {
		if got := forwarding6(tc.sysctls, "eth0"); got != tc.want {
			t.Errorf("forwarding6(%v, eth0) = %v, want %v", tc.sysctls, got, tc.want)
		}
	}
}

// IPv6 sends from an address of the destination's scope, the longest
// match with it; IPv4's 169.254.0.0/16 is a subnet like any other.
func TestModelSourceScopes(t *testing.T) {
	m := modelOf(t, `
name: t
namespaces:
  - name: a
  - name: b
links:
  - endpoints:
      - {namespace: a, interface: eth0, addresses: ["fe80::2/64", "fd00:0:0:7::2/64", "fd00:0:0:8::2/64", 169.254.10.1/24]}
      - {namespace: b, interface: eth0, addresses: ["fd00:0:0:7::1/64", "fd00:0:0:8::1/64", 169.254.10.2/24]}
isolation:
  allow: [{from: [a], to: [b]}]
`)
	if err := m.CheckIntent(); err != nil {
		t.Errorf("CheckIntent: %v", err)
	}
	for dst, want := range map[string]string{"fd00:0:0:8::1": "fd00:0:0:8::2", "fd00:0:0:7::1": "fd00:0:0:7::2", "169.254.10.2": "169.254.10.1"} {
		to, from := m.Deliver("a", netip.MustParseAddr(dst))
		if to != "b" || from.String() != want {
			t.Errorf("Deliver(a, %s) = %s from %s, want b from %s", dst, to, from, want)
		}
		if got := m.Answerer("a", netip.MustParseAddr(dst)); got != "b" {
			t.Errorf("Answerer(a, %s) = %q, want b", dst, got)
		}
	}
}

// The model sends from the address the kernel picks (the one on the next
// hop's subnet) and forwards as the receiving interface's sysctl says.
func TestModelSourceAndForwarding(t *testing.T) {
	m := modelOf(t, `
name: t
namespaces:
  - name: m
  - name: n
  - name: r
    sysctls: {net.ipv4.conf.default.forwarding: "1", net.ipv4.conf.in1.forwarding: "0"}
links:
  - endpoints:
      - {namespace: m, interface: eth0, addresses: [198.18.5.11/24, 198.18.6.130/30]}
      - {namespace: n, interface: eth0, addresses: [198.18.6.129/30]}
  - endpoints:
      - {namespace: m, interface: eth1, addresses: [198.18.8.1/24]}
      - {namespace: r, interface: in1, addresses: [198.18.8.254/24]}
  - endpoints:
      - {namespace: n, interface: eth1, addresses: [198.18.9.1/24]}
      - {namespace: r, interface: in2, addresses: [198.18.9.254/24]}
`)
	if to, from := m.Deliver("m", netip.MustParseAddr("198.18.6.129")); to != "n" || from != netip.MustParseAddr("198.18.6.130") {
		t.Errorf("Deliver(m, 198.18.6.129) = %s from %s, want n from 198.18.6.130", to, from)
	}
	if got := m.Answerer("m", netip.MustParseAddr("198.18.6.129")); got != "n" {
		t.Errorf("Answerer(m, 198.18.6.129) = %q, want n", got)
	}
	a := netip.MustParseAddr("198.18.1.1")
	if m.forwards("r", "in1", a) || !m.forwards("r", "in2", a) {
		t.Errorf("r forwards from in1 %v, from in2 %v; want false, true", m.forwards("r", "in1", a), m.forwards("r", "in2", a))
	}
}

// The evidence names the likeliest sender of an address: a declared
// holder, then a namespace that took it, then a declared owner that no
// longer holds it.
func TestEnvOwners(t *testing.T) {
	m := NewModel(labSpec(t, nil))
	c1, a1 := netip.MustParseAddr("198.18.2.1"), netip.MustParseAddr("198.18.1.1")
	for _, tc := range []struct {
		name     string
		observed map[string][]netip.Addr
		addr     netip.Addr
		want     []string
	}{
		{"declared and held", map[string][]netip.Addr{"c": {c1}}, c1, []string{"c"}},
		{"moved to r", map[string][]netip.Addr{"r": {c1}}, c1, []string{"r", "c"}},
		{"copied to b", map[string][]netip.Addr{"b": {c1}, "c": {c1}}, c1, []string{"c", "b"}},
		{"held by nobody", nil, a1, []string{"a"}},
		{"undeclared", map[string][]netip.Addr{"b": {netip.MustParseAddr("198.19.0.1")}}, netip.MustParseAddr("198.19.0.1"), []string{"b"}},
	} {
		e := &env{model: m, observed: tc.observed}
		if got := e.owners(tc.addr); !slices.Equal(got, tc.want) {
			t.Errorf("%s: owners(%s) = %q, want %q", tc.name, tc.addr, got, tc.want)
		}
	}
}

// onLinkSpec has on-link routes in x to an address y holds on its other
// interface.
const onLinkSpec = `
name: t
namespaces:
  - name: x
    routes: [{to: 198.18.5.0/24, dev: eth0}, {to: "fd00:0:0:5::/64", dev: eth0}]
  - name: y
  - name: z
links:
  - endpoints:
      - {namespace: x, interface: eth0, addresses: [198.18.4.1/30, "fd00:0:0:4::1/64"]}
      - {namespace: y, interface: eth0, addresses: [198.18.4.2/30, "fd00:0:0:4::2/64"]}
  - endpoints:
      - {namespace: y, interface: eth1, addresses: [198.18.5.1/24, "fd00:0:0:5::1/64"]}
      - {namespace: z, interface: eth0, addresses: [198.18.5.2/24, "fd00:0:0:5::2/64"]}
`

// An on-link route to an address held on the neighbour's other interface:
// ARP answers for it (unless arp_ignore says not to), NDP does not.
func TestModelNeighbourFallback(t *testing.T) {
	for _, tc := range []struct {
		arpIgnore string
		addr      string
		want      string
	}{
		{"", "198.18.5.1", "y"},
		{"", "fd00:0:0:5::1", ""},
		{"1", "198.18.5.1", ""},
		{"3", "198.18.5.1", "y"},
		{"5", "198.18.5.1", "y"}, // 4-7 and above 8 answer as 0 does
		{"9", "198.18.5.1", "y"},
		{"8", "198.18.5.1", ""},
		{"8", "198.18.4.2", ""},  // not even for the receiving interface's
		{"2", "198.18.4.2", "y"}, // x is on 198.18.4.0/30
		{"2", "198.18.5.1", ""},
	} {
		s, err := topology.Parse([]byte(onLinkSpec))
		if err != nil {
			t.Fatal(err)
		}
		if tc.arpIgnore != "" {
			setSysctl(s, "y", "net.ipv4.conf.all.arp_ignore", tc.arpIgnore)
		}
		if got, _ := NewModel(s).Deliver("x", netip.MustParseAddr(tc.addr)); got != tc.want {
			t.Errorf("arp_ignore %q: Deliver(x, %s) = %q, want %q", tc.arpIgnore, tc.addr, got, tc.want)
		}
	}
}

// A namespace that answers no ARP (arp_ignore 8) still gets answers: the
// peer learned its address from its own request.
func TestModelArpIgnoreOfTheAsker(t *testing.T) {
	s, err := topology.Parse([]byte(onLinkSpec))
	if err != nil {
		t.Fatal(err)
	}
	setSysctl(s, "x", "net.ipv4.conf.all.arp_ignore", "8")
	m := NewModel(s)
	if got := m.Answerer("x", netip.MustParseAddr("198.18.4.2")); got != "y" {
		t.Errorf("Answerer(x, y) = %q, want y", got)
	}
	// y's replies reach x (y learned x from the request): evidence must
	// not call them a crossing. z, which x never asks, cannot reach x.
	reply := Flow{Netns: "x", Src: netip.MustParseAddr("198.18.4.2"), Dst: netip.MustParseAddr("198.18.4.1"), Proto: 6, Packets: 3}
	if vs := m.violations([]Flow{reply}, m.Owners); len(vs) != 0 {
		t.Errorf("y's replies to x judged violations: %+v", vs)
	}
	fromZ := Flow{Netns: "x", Src: netip.MustParseAddr("198.18.5.2"), Dst: netip.MustParseAddr("198.18.4.1"), Proto: 6, Packets: 1}
	if vs := m.violations([]Flow{fromZ}, m.Owners); len(vs) != 1 {
		t.Errorf("z to x (x answers no ARP, and never asked z): violations %+v, want one", vs)
	}
}

// IPv6 source: on a tie the last declared address, and with only
// link-local addresses on the way out, the best of the namespace's others.
func TestModelSourceV6Ties(t *testing.T) {
	m := NewModel(&topology.Spec{})
	ifc := l3iface{prefixes: []netip.Prefix{netip.MustParsePrefix("fd00:e0:1::1/64"), netip.MustParsePrefix("fd00:e0:3::1/64")}}
	dst := netip.MustParseAddr("fd00:e0:a::5")
	if got, _ := m.source("n", ifc, dst, netip.MustParseAddr("fd00:e0:1::2")); got.String() != "fd00:e0:3::1" {
		t.Errorf("tie: source %s, want the last declared fd00:e0:3::1", got)
	}
	m.ifaces = map[string][]l3iface{"n": {
		{name: "u", prefixes: []netip.Prefix{netip.MustParsePrefix("fe80::1/64")}},
		{name: "a", prefixes: []netip.Prefix{netip.MustParsePrefix("fd00:e0:1::1/64")}},
		{name: "b", prefixes: []netip.Prefix{netip.MustParsePrefix("fd00:e0:9:ff::1/64")}},
	}}
	if got, _ := m.source("n", m.ifaces["n"][0], netip.MustParseAddr("fd00:e0:9::5"), netip.MustParseAddr("fe80::2")); got.String() != "fd00:e0:9:ff::1" {
		t.Errorf("unnumbered way out: source %s, want fd00:e0:9:ff::1", got)
	}
}

// Which interfaces have an IPv6 link-local address, from the sysctls in
// the order up writes them and the declared addresses.
func TestHasLinkLocal6(t *testing.T) {
	ll := []netip.Prefix{netip.MustParsePrefix("fe80::b/64")}
	for _, tc := range []struct {
		sysctls  map[string]string
		declared []netip.Prefix
		want     bool
	}{
		{nil, nil, true},
		{map[string]string{"net.ipv6.conf.eth0.disable_ipv6": "1"}, ll, false},
		{map[string]string{"net.ipv6.conf.all.disable_ipv6": "1"}, nil, false},
		{map[string]string{"net.ipv6.conf.default.addr_gen_mode": "1"}, nil, false},
		{map[string]string{"net.ipv6.conf.default.addr_gen_mode": "1"}, ll, true},
		// The interface's own key comes once it is up: 1 removes nothing,
		{map[string]string{"net.ipv6.conf.eth0.addr_gen_mode": "1"}, nil, true},
		// another mode makes one.
		{map[string]string{"net.ipv6.conf.default.addr_gen_mode": "1", "net.ipv6.conf.eth0.addr_gen_mode": "0"}, nil, true},
	} {
		if got := hasLinkLocal6(tc.sysctls, "eth0", tc.declared); got != tc.want {
			t.Errorf("hasLinkLocal6(%v, %v) = %v, want %v", tc.sysctls, tc.declared, got, tc.want)
		}
	}
}

// A declared route without via sends IPv4 from the interface's first
// address, whatever subnet the destination is in: s2, which knows only
// the second's subnet, cannot answer.
func TestModelSourceOfDevRoute(t *testing.T) {
	m := modelOf(t, devRouteSpec)
	if to, from := m.Deliver("s1", netip.MustParseAddr("198.18.171.42")); to != "s2" || from.String() != "198.18.171.49" {
		t.Errorf("Deliver(s1, s2) = %s from %s, want s2 from 198.18.171.49", to, from)
	}
	if got := m.Answerer("s1", netip.MustParseAddr("198.18.171.42")); got != "" {
		t.Errorf("Answerer(s1, s2) = %q, want none: s2 has no way back to 198.18.171.49", got)
	}
}

// devRouteSpec: s1 reaches s2 by a dev route, so from its interface's
// first address, which s2 can answer only if it is .41.
const devRouteSpec = `
name: t
namespaces:
  - name: s1
    routes: [{to: 198.18.171.42/32, dev: eth0}]
  - name: s2
links:
  - endpoints:
      - {namespace: s1, interface: eth0, addresses: [198.18.171.49/29, 198.18.171.41/29]}
      - {namespace: s2, interface: eth0, addresses: [198.18.171.42/29]}
`

// FollowLiveOrder takes the kernel's order of each interface's addresses:
// IPv4 first-listed first, IPv6 newest (first listed) last, where the
// model's tie-break looks for it; addresses not held keep their places
// behind the held ones of their family.
func TestFollowLiveOrder(t *testing.T) {
	m := modelOf(t, `
name: t
namespaces: [{name: a}, {name: b}]
links:
  - endpoints:
      - {namespace: a, interface: eth0, addresses: [198.18.1.1/24, "fd00:1::1/64", 198.18.2.1/24, "fd00:2::1/64", 198.18.3.1/24, "fd00:3::1/64"]}
      - {namespace: b, interface: eth0, addresses: [198.18.1.2/24]}
`)
	live := map[string][]netip.Addr{"eth0": {
		netip.MustParseAddr("198.18.2.1"), netip.MustParseAddr("198.18.1.1"), // .3.1 deleted
		netip.MustParseAddr("fd00:1::1"), netip.MustParseAddr("fd00:3::1"), // newest first; fd00:2::1 deleted
	}}
	if changed := m.FollowLiveOrder("a", live); !slices.Equal(changed, []string{"eth0"}) {
		t.Errorf("changed %v, want [eth0]", changed)
	}
	var got []string
	for _, p := range m.ifaces["a"][0].prefixes {
		got = append(got, p.Addr().String())
	}
	want := []string{"198.18.2.1", "fd00:2::1", "198.18.1.1", "fd00:3::1", "198.18.3.1", "fd00:1::1"}
	if !slices.Equal(got, want) {
		t.Errorf("order %v, want %v", got, want)
	}
	// The file's order, as a dump lists it: nothing changes.
	m = modelOf(t, `
name: t
namespaces: [{name: a}, {name: b}]
links:
  - endpoints:
      - {namespace: a, interface: eth0, addresses: [198.18.1.1/24, "fd00:1::1/64", 198.18.2.1/24, "fd00:2::1/64"]}
      - {namespace: b, interface: eth0, addresses: [198.18.1.2/24]}
`)
	live = map[string][]netip.Addr{"eth0": {
		netip.MustParseAddr("198.18.1.1"), netip.MustParseAddr("198.18.2.1"),
		netip.MustParseAddr("fd00:2::1"), netip.MustParseAddr("fd00:1::1"),
	}, "lo": {netip.MustParseAddr("198.18.2.1")}} // another interface's copy does not count
	if changed := m.FollowLiveOrder("a", live); changed != nil {
		t.Errorf("as declared: changed %v", changed)
	}
}

// A probe that found no source address is blocked when its namespace has
// no address of the family, and stays an error otherwise.
func TestNoSource(t *testing.T) {
	e := &env{observed: map[string][]netip.Addr{"v4only": {netip.MustParseAddr("198.18.0.1")}, "dual": {netip.MustParseAddr("198.18.0.2"), netip.MustParseAddr("fd00::2")}}}
	detail := "connect: " + unix.EADDRNOTAVAIL.Error()
	probes := []*Probe{
		{From: "v4only", Addr: netip.MustParseAddr("fd00::9"), Outcome: Failed, Detail: detail},
		{From: "dual", Addr: netip.MustParseAddr("fd00::9"), Outcome: Failed, Detail: detail},
	}
	e.noSource(probes)
	if probes[0].Outcome != Unreachable || probes[1].Outcome != Failed {
		t.Errorf("outcomes %s, %s; want unreachable (no IPv6 address), failed", probes[0].Outcome, probes[1].Outcome)
	}
}

// modelOf parses and validates a spec and returns its model.
func modelOf(t *testing.T, spec string) *Model {
	t.Helper()
	s, err := topology.Parse([]byte(spec))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	return NewModel(s)
}

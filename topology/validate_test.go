package topology

import (
	"errors"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
)

// validBase is a small valid topology the cases below break one way each.
const validBase = `
name: t
namespaces:
  - name: a
    routes: [{to: default, via: 198.18.0.2}]
  - name: b
  - name: c
bridges:
  - name: br0
    addresses: [198.18.1.1/24]
links:
  - endpoints:
      - {namespace: a, interface: e0, addresses: [198.18.0.1/30, "fd00::1/64"]}
      - {namespace: b, interface: e0, addresses: [198.18.0.2/30, "fd00::2/64"]}
  - endpoints:
      - {namespace: c, interface: eth0, addresses: [198.18.1.10/24]}
      - {bridge: br0, interface: vc}
`

func TestValidateBase(t *testing.T) {
	s, err := Parse([]byte(validBase))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Validate(); err != nil {
		t.Fatalf("valid base rejected: %v", err)
	}
}

// TestValidateAccepts lists valid specs near the rules: each must pass.
func TestValidateAccepts(t *testing.T) {
	tests := []struct{ name, yaml string }{
		{"route via link-local gateway with dev", `
name: t
namespaces:
  - name: a
    routes: [{to: "fd00:9::/64", via: "fe80::1", dev: e0}, {to: default, via: "fe80::2", dev: e0}]
  - name: b
links: [{endpoints: [{namespace: a, interface: e0, addresses: ["fd00::1/64"]}, {namespace: b, interface: e0, addresses: ["fd00::2/64"]}]}]`},
		{"route to an interface's own subnet through it", `
name: t
namespaces:
  - name: a
    routes: [{to: 198.18.12.0/24, dev: e0}, {to: "fd00:12::/64", via: "fd00:12::2"}]
  - name: b
links: [{endpoints: [{namespace: a, interface: e0, addresses: [198.18.12.1/24, "fd00:12::1/64"]}, {namespace: b, interface: e0, addresses: [198.18.12.2/24, "fd00:12::2/64"]}]}]`},
		{"small mtu on an IPv4-only link", `
name: t
namespaces: [{name: a}, {name: b}]
links: [{mtu: 576, endpoints: [{namespace: a, interface: e0, addresses: [198.18.0.1/30]}, {namespace: b, interface: e0, addresses: [198.18.0.2/30]}]}]`},
		{"small port mtu under a bridge with its own mtu", `
name: t
namespaces: [{name: a}]
bridges: [{name: br0, mtu: 1500, addresses: ["fd00::1/64"]}]
links: [{mtu: 1200, endpoints: [{namespace: a, interface: e0}, {bridge: br0, interface: p0}]}]`},
		{"sysctl of an interface with a dot in its name", `
name: t
namespaces:
  - name: a
    sysctls: {net.ipv4.conf.e0/1.rp_filter: "2", net.ipv6.neigh.e0/1.retrans_time_ms: "500", net.ipv4.conf.e+1.rp_filter: "1"}
  - name: b
links:
  - endpoints: [{namespace: a, interface: e0.1}, {namespace: b, interface: e0}]
  - endpoints: [{namespace: a, interface: e+1}, {namespace: b, interface: e1}]`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := Parse([]byte(tt.yaml))
			if err != nil {
				t.Fatalf("parse: %v", err)
			}
			if err := s.Validate(); err != nil {
				t.Errorf("valid spec rejected: %v", err)
			}
		})
	}
}

func TestValidateErrors(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want []string // substrings of the error, each naming path and problem
	}{
		{"missing name", `namespaces: [{name: a}]`, []string{"name: required"}},
		{"bad topology name", "name: a/b", []string{`name: "a/b"`}},
		{"namespace name missing", "name: t\nnamespaces: [{}]", []string{"namespaces[0].name: required"}},
		{"reserved host", "name: t\nnamespaces: [{name: host}]", []string{`namespaces[0].name: "host" is reserved`}},
		{"bad namespace name", "name: t\nnamespaces: [{name: ../x}]", []string{`namespaces[0].name: "../x"`}},
		{"duplicate namespace", "name: t\nnamespaces: [{name: a}, {name: a}]", []string{`namespaces[1].name: duplicate namespace "a" (also namespaces[0])`}},
		{"undeclared namespace in link", `
name: t
namespaces: [{name: a}]
links: [{endpoints: [{namespace: a, interface: e0}, {namespace: z, interface: e0}]}]`,
			[]string{`links[0].endpoints[1].namespace: undeclared namespace "z"`}},
		{"undeclared bridge", `
name: t
namespaces: [{name: a}]
links: [{endpoints: [{namespace: a, interface: e0}, {bridge: nob, interface: p0}]}]`,
			[]string{`links[0].endpoints[1].bridge: undeclared bridge "nob"`}},
		{"bridge in undeclared namespace", "name: t\nbridges: [{name: br0, namespace: z}]", []string{`bridges[0].namespace: undeclared namespace "z"`}},
		{"endpoint with namespace and bridge", `
name: t
namespaces: [{name: a}]
bridges: [{name: br0}]
links: [{endpoints: [{namespace: a, interface: e0}, {namespace: a, bridge: br0, interface: p0}]}]`,
			[]string{"links[0].endpoints[1]: has both namespace"}},
		{"endpoint with neither", `
name: t
namespaces: [{name: a}]
links: [{endpoints: [{namespace: a, interface: e0}, {interface: p0}]}]`,
			[]string{"links[0].endpoints[1]: needs namespace or bridge"}},
		{"three endpoints", `
name: t
namespaces: [{name: a}]
links: [{endpoints: [{namespace: a, interface: e0}, {namespace: a, interface: e1}, {namespace: a, interface: e2}]}]`,
			[]string{"links[0].endpoints: a veth pair has exactly 2 endpoints, got 3"}},
		{"duplicate interface", `
name: t
namespaces: [{name: a}, {name: b}]
links:
  - endpoints: [{namespace: a, interface: e0}, {namespace: b, interface: e0}]
  - endpoints: [{namespace: a, interface: e0}, {namespace: b, interface: e1}]`,
			[]string{`links[1].endpoints[0].interface: duplicate interface "e0" in namespace "a" (also links[0].endpoints[0].interface)`}},
		{"duplicate interface with bridge port", `
name: t
namespaces: [{name: a}]
bridges: [{name: br0}]
links: [{endpoints: [{namespace: a, interface: e0}, {bridge: br0, interface: br0}]}]`,
			[]string{`links[0].endpoints[1].interface: duplicate interface "br0" in namespace "host" (also bridges[0].name)`}},
		{"interface name too long", `
name: t
namespaces: [{name: a}, {name: b}]
links: [{endpoints: [{namespace: a, interface: abcdefghijklmnop}, {namespace: b, interface: e0}]}]`,
			[]string{`links[0].endpoints[0].interface: interface name "abcdefghijklmnop" is 16 bytes, the kernel allows at most 15`}},
		{"bridge name too long", "name: t\nbridges: [{name: bridge-name-too-long}]", []string{"bridges[0].name: interface name \"bridge-name-too-long\" is 20 bytes"}},
		{"interface named lo", `
name: t
namespaces: [{name: a}, {name: b}]
links: [{endpoints: [{namespace: a, interface: lo}, {namespace: b, interface: e0}]}]`,
			[]string{`links[0].endpoints[0].interface: "lo" is the loopback`}},
		{"interface with slash", `
name: t
namespaces: [{name: a}, {name: b}]
links: [{endpoints: [{namespace: a, interface: "e/0"}, {namespace: b, interface: e0}]}]`,
			[]string{`links[0].endpoints[0].interface: invalid interface name "e/0"`}},
		{"interface with a name pattern", `
name: t
namespaces: [{name: a}, {name: b}]
links: [{endpoints: [{namespace: a, interface: "e%d"}, {namespace: b, interface: e0}]}]`,
			[]string{`links[0].endpoints[0].interface: invalid interface name "e%d"`}},
		{"bridge with a name pattern", "name: t\nbridges: [{name: \"b%d\"}]", []string{`bridges[0].name: invalid interface name "b%d"`}},
		{"interface with colon", `
name: t
namespaces: [{name: a}, {name: b}]
links: [{endpoints: [{namespace: a, interface: "e:0"}, {namespace: b, interface: e0}]}]`,
			[]string{`links[0].endpoints[0].interface: invalid interface name "e:0"`}},
		{"interface with carriage return", "name: t\nnamespaces: [{name: a}, {name: b}]\nlinks: [{endpoints: [{namespace: a, interface: \"e\\r0\"}, {namespace: b, interface: e0}]}]",
			[]string{`links[0].endpoints[0].interface: invalid interface name "e\r0"`}},
		// The kernel's isspace matches the byte 0xA0: in U+00A0 (C2 A0)
		// and in UTF-8 letters such as "à" (C3 A0).
		{"interface named as ipip's fallback tunnel", "name: t\nnamespaces: [{name: a}, {name: b}]\nlinks: [{endpoints: [{namespace: a, interface: tunl0}, {namespace: b, interface: e0}]}]",
			[]string{`links[0].endpoints[0].interface: "tunl0" is the device the kernel's ipip module creates in every namespace once it is loaded`}},
		{"bridge named as ip_gre's fallback tunnel", "name: t\nbridges: [{name: gretap0}]",
			[]string{`bridges[0].name: "gretap0" is the device the kernel's ip_gre module creates`}},
		{"interface with a no-break space", "name: t\nnamespaces: [{name: a}, {name: b}]\nlinks: [{endpoints: [{namespace: a, interface: \"e\u00a00\"}, {namespace: b, interface: e0}]}]",
			[]string{`links[0].endpoints[0].interface: invalid interface name "e\u00a00"`}},
		{"interface with an a grave", "name: t\nnamespaces: [{name: a}, {name: b}]\nlinks: [{endpoints: [{namespace: a, interface: \"\u00e0\"}, {namespace: b, interface: e0}]}]",
			[]string{`links[0].endpoints[0].interface: invalid interface name "à"`}},
		{"interface with vertical tab", "name: t\nnamespaces: [{name: a}, {name: b}]\nlinks: [{endpoints: [{namespace: a, interface: \"e\\v0\"}, {namespace: b, interface: e0}]}]",
			[]string{`links[0].endpoints[0].interface: invalid interface name "e\v0"`}},
		{"interface with form feed", "name: t\nnamespaces: [{name: a}, {name: b}]\nlinks: [{endpoints: [{namespace: a, interface: \"e\\f0\"}, {namespace: b, interface: e0}]}]",
			[]string{`links[0].endpoints[0].interface: invalid interface name "e\f0"`}},
		{"interface named dot", `
name: t
namespaces: [{name: a}, {name: b}]
links: [{endpoints: [{namespace: a, interface: "."}, {namespace: b, interface: e0}]}]`,
			[]string{`links[0].endpoints[0].interface: invalid interface name "."`}},
		{"bridge named dot-dot", "name: t\nbridges: [{name: \"..\"}]", []string{`bridges[0].name: invalid interface name ".."`}},
		{"invalid CIDR", `
name: t
namespaces: [{name: a}, {name: b}]
links: [{endpoints: [{namespace: a, interface: e0, addresses: [198.18.0.300/24]}, {namespace: b, interface: e0}]}]`,
			[]string{`links[0].endpoints[0].addresses[0]: invalid CIDR "198.18.0.300/24"`}},
		{"address without prefix length", `
name: t
namespaces: [{name: a}, {name: b}]
links: [{endpoints: [{namespace: a, interface: e0, addresses: [198.18.0.1]}, {namespace: b, interface: e0}]}]`,
			[]string{`links[0].endpoints[0].addresses[0]: invalid CIDR "198.18.0.1"`}},
		{"multicast address", `
name: t
namespaces: [{name: a}, {name: b}]
links: [{endpoints: [{namespace: a, interface: e0, addresses: [224.0.0.1/24]}, {namespace: b, interface: e0}]}]`,
			[]string{`links[0].endpoints[0].addresses[0]: "224.0.0.1/24" is not a unicast interface address`}},
		{"duplicate address", `
name: t
namespaces: [{name: a}, {name: b}]
links: [{endpoints: [{namespace: a, interface: e0, addresses: [198.18.0.1/30]}, {namespace: b, interface: e0, addresses: [198.18.0.1/30]}]}]`,
			[]string{"links[0].endpoints[1].addresses[0]: address 198.18.0.1 is already used at links[0].endpoints[0].addresses[0]"}},
		{"overlapping subnets on different links", `
name: t
namespaces: [{name: a}, {name: b}, {name: c}]
links:
  - endpoints: [{namespace: a, interface: e0, addresses: [198.18.0.1/24]}, {namespace: b, interface: e0, addresses: [198.18.0.2/24]}]
  - endpoints: [{namespace: a, interface: e1, addresses: [198.18.0.129/25]}, {namespace: c, interface: e0, addresses: [198.18.0.130/25]}]`,
			[]string{"links[1].endpoints[0].addresses[0]: subnet 198.18.0.128/25 overlaps 198.18.0.0/24 at links[0].endpoints[0].addresses[0]"}},
		{"address on a bridge port", `
name: t
namespaces: [{name: a}]
bridges: [{name: br0}]
links: [{endpoints: [{namespace: a, interface: e0}, {bridge: br0, interface: p0, addresses: [198.18.0.1/24]}]}]`,
			[]string{`links[0].endpoints[1].addresses: a bridge port carries no addresses: put them on bridge "br0"`}},
		{"mtu out of range", `
name: t
namespaces: [{name: a}, {name: b}]
links: [{mtu: 70000, endpoints: [{namespace: a, interface: e0}, {namespace: b, interface: e0}]}]`,
			[]string{"links[0].mtu: 70000 out of range 68-65535"}},
		{"link mtu too small for IPv6", `
name: t
namespaces: [{name: a}, {name: b}]
links: [{mtu: 1200, endpoints: [{namespace: a, interface: e0, addresses: [198.18.0.1/30]}, {namespace: b, interface: e0, addresses: ["fd00::2/64"]}]}]`,
			[]string{`links[0].mtu: 1200 is below 1280, the minimum for IPv6, and links[0].endpoints[1].addresses[0] is IPv6`}},
		{"bridge mtu too small for IPv6", "name: t\nbridges: [{name: br0, mtu: 1000, addresses: [\"fd00::1/64\"]}]",
			[]string{`bridges[0].mtu: 1000 is below 1280, the minimum for IPv6, and bridges[0].addresses[0] is IPv6`}},
		{"bridge port mtu too small for the bridge's IPv6", `
name: t
namespaces: [{name: a}]
bridges: [{name: br0, addresses: ["fd00::1/64"]}]
links: [{mtu: 1200, endpoints: [{namespace: a, interface: e0}, {bridge: br0, interface: p0}]}]`,
			[]string{`links[0].mtu: 1200 is below 1280, the minimum for IPv6, and bridge "br0" (bridges[0].addresses[0] is IPv6) takes its ports' smallest MTU: give the bridge an mtu`}},
		{"IPv6 route through a link too small for IPv6", `
name: t
namespaces:
  - name: a
    routes: [{to: "fd00:9::/64", via: "fe80::2", dev: e0}]
  - name: b
links: [{mtu: 1200, endpoints: [{namespace: a, interface: e0, addresses: [198.18.9.1/30]}, {namespace: b, interface: e0, addresses: [198.18.9.2/30]}]}]`,
			[]string{`namespaces[0].routes[0].dev: an IPv6 route through e0, whose MTU (links[0].mtu: 1200) is below 1280, the minimum for IPv6: the kernel gives it no IPv6`}},
		{"IPv6 route through an interface with IPv6 disabled", `
name: t
namespaces:
  - name: a
    sysctls: {net.ipv6.conf.all.disable_ipv6: "1"}
    routes: [{to: "fd00:9::/64", dev: e0}]
  - name: b
links: [{endpoints: [{namespace: a, interface: e0, addresses: [198.18.9.1/30]}, {namespace: b, interface: e0, addresses: [198.18.9.2/30]}]}]`,
			[]string{`namespaces[0].routes[0].dev: an IPv6 route through e0, and namespaces[0].sysctls disable IPv6 on it`}},
		{"route via link-local gateway without dev", `
name: t
namespaces:
  - name: a
    routes: [{to: "fd00:9::/64", via: "fe80::1"}]
  - name: b
links: [{endpoints: [{namespace: a, interface: e0, addresses: ["fd00::1/64"]}, {namespace: b, interface: e0, addresses: ["fd00::2/64"]}]}]`,
			[]string{`namespaces[0].routes[0].dev: a link-local gateway (fe80::1) needs dev, the interface to reach it on`}},
		{"route via gateway with zone", `
name: t
namespaces:
  - name: a
    routes: [{to: "fd00:9::/64", via: "fe80::1%e0", dev: e0}]
  - name: b
links: [{endpoints: [{namespace: a, interface: e0, addresses: ["fd00::1/64"]}, {namespace: b, interface: e0, addresses: ["fd00::2/64"]}]}]`,
			[]string{`namespaces[0].routes[0].via: "fe80::1%e0": give the interface as dev, not as a zone`}},
		{"route to an interface's subnet via a gateway", `
name: t
namespaces:
  - name: a
    routes: [{to: 198.18.12.0/24, via: 198.18.12.2}]
  - name: b
links: [{endpoints: [{namespace: a, interface: e0, addresses: [198.18.12.1/24]}, {namespace: b, interface: e0, addresses: [198.18.12.2/24]}]}]`,
			[]string{`namespaces[0].routes[0].to: 198.18.12.0/24 is the subnet of interface "e0" (links[0].endpoints[0].addresses[0]), which the kernel routes itself: declare it with dev e0 and no via, or leave it out`}},
		{"route to an interface's subnet through another device", `
name: t
namespaces:
  - name: a
    routes: [{to: 198.18.12.0/24, dev: e1}]
  - name: b
links:
  - endpoints: [{namespace: a, interface: e0, addresses: [198.18.12.1/24]}, {namespace: b, interface: e0, addresses: [198.18.12.2/24]}]
  - endpoints: [{namespace: a, interface: e1, addresses: [198.18.13.1/24]}, {namespace: b, interface: e1, addresses: [198.18.13.2/24]}]`,
			[]string{`namespaces[0].routes[0].to: 198.18.12.0/24 is the subnet of interface "e0"`}},
		{"route via unreachable gateway", `
name: t
namespaces:
  - name: a
    routes: [{to: default, via: 198.18.9.1}]
  - name: b
links: [{endpoints: [{namespace: a, interface: e0, addresses: [198.18.0.1/30]}, {namespace: b, interface: e0, addresses: [198.18.0.2/30]}]}]`,
			[]string{`namespaces[0].routes[0].via: gateway 198.18.9.1 is not on a subnet of any interface in namespace "a": no interface can reach it`}},
		{"route via its own address", `
name: t
namespaces:
  - name: a
    routes: [{to: 198.18.4.0/24, via: 198.18.0.1}]
  - name: b
links: [{endpoints: [{namespace: a, interface: e0, addresses: [198.18.0.1/30]}, {namespace: b, interface: e0, addresses: [198.18.0.2/30]}]}]`,
			[]string{"namespaces[0].routes[0].via: gateway 198.18.0.1 is this namespace's own address (links[0].endpoints[0].addresses[0])"}},
		{"gateway at a subnet's edge", `
name: t
namespaces:
  - name: a
    routes: [{to: 198.18.4.0/24, via: 198.18.0.255}, {to: 198.18.5.0/24, via: 198.18.0.0}]
  - name: b
links: [{endpoints: [{namespace: a, interface: e0, addresses: [198.18.0.1/24]}, {namespace: b, interface: e0, addresses: [198.18.0.2/24]}]}]`,
			[]string{"namespaces[0].routes[0].via: gateway 198.18.0.255 is the broadcast address of 198.18.0.0/24",
				"namespaces[0].routes[1].via: gateway 198.18.0.0 is the network address of 198.18.0.0/24"}},
		{"IPv6 address where IPv6 is disabled", `
name: t
namespaces:
  - name: a
    sysctls: {net.ipv6.conf.e0.disable_ipv6: "1"}
  - name: b
    sysctls: {net.ipv6.conf.all.disable_ipv6: "1"}
links: [{endpoints: [{namespace: a, interface: e0, addresses: ["fd00:1::1/64"]}, {namespace: b, interface: e0, addresses: ["fd00:1::2/64"]}]}]`,
			[]string{"links[0].endpoints[0].addresses[0]: fd00:1::1/64 is IPv6, and namespaces[0].sysctls disable IPv6 on e0",
				"links[0].endpoints[1].addresses[0]: fd00:1::2/64 is IPv6, and namespaces[1].sysctls disable IPv6 on e0"}},
		{"network and broadcast addresses", `
name: t
namespaces: [{name: a}, {name: b}]
links: [{endpoints: [{namespace: a, interface: e0, addresses: [198.18.0.0/24]}, {namespace: b, interface: e0, addresses: [198.18.0.255/24]}]}]`,
			[]string{`links[0].endpoints[0].addresses[0]: "198.18.0.0/24" is the network address of 198.18.0.0/24`,
				`links[0].endpoints[1].addresses[0]: "198.18.0.255/24" is the broadcast address of 198.18.0.0/24`}},
		{"route via wrong dev", `
name: t
namespaces:
  - name: a
    routes: [{to: default, via: 198.18.0.2, dev: e1}]
  - name: b
links:
  - endpoints: [{namespace: a, interface: e0, addresses: [198.18.0.1/30]}, {namespace: b, interface: e0, addresses: [198.18.0.2/30]}]
  - endpoints: [{namespace: a, interface: e1, addresses: [198.18.0.5/30]}, {namespace: b, interface: e1, addresses: [198.18.0.6/30]}]`,
			[]string{`namespaces[0].routes[0].via: gateway 198.18.0.2 is not on a subnet of interface "e1"`}},
		{"route to unknown dev", `
name: t
namespaces:
  - name: a
    routes: [{to: 198.18.4.0/24, dev: nope}]`,
			[]string{`namespaces[0].routes[0].dev: no interface "nope" in namespace "a"`}},
		{"route without via or dev", "name: t\nnamespaces: [{name: a, routes: [{to: default}]}]", []string{"namespaces[0].routes[0]: needs via (a gateway address) or dev"}},
		{"route with host bits", "name: t\nnamespaces: [{name: a, routes: [{to: 198.18.4.1/24, dev: x}]}]", []string{`namespaces[0].routes[0].to: "198.18.4.1/24" has host bits set; did you mean 198.18.4.0/24?`}},
		{"route bad CIDR", "name: t\nnamespaces: [{name: a, routes: [{to: nowhere, dev: x}]}]", []string{`namespaces[0].routes[0].to: invalid CIDR "nowhere"`}},
		{"route family mismatch", `
name: t
namespaces:
  - name: a
    routes: [{to: "fd00:9::/64", via: 198.18.0.2}]
  - name: b
links: [{endpoints: [{namespace: a, interface: e0, addresses: [198.18.0.1/30]}, {namespace: b, interface: e0, addresses: [198.18.0.2/30]}]}]`,
			[]string{"namespaces[0].routes[0].via: gateway 198.18.0.2 and destination fd00:9::/64 are of different address families"}},
		{"duplicate route", `
name: t
namespaces:
  - name: a
    routes: [{to: default, via: 198.18.0.2}, {to: default, via: 198.18.0.2}]
  - name: b
links: [{endpoints: [{namespace: a, interface: e0, addresses: [198.18.0.1/30]}, {namespace: b, interface: e0, addresses: [198.18.0.2/30]}]}]`,
			[]string{"namespaces[0].routes[1].to: duplicate route to default (also routes[0])"}},
		{"default route written as /0", `
name: t
namespaces:
  - name: a
    routes: [{to: default, via: 198.18.0.2}, {to: 0.0.0.0/0, via: 198.18.0.2}, {to: "::/0", via: "fd00:9::2"}]
  - name: b
links: [{endpoints: [{namespace: a, interface: e0, addresses: [198.18.0.1/30, "fd00:9::1/64"]}, {namespace: b, interface: e0, addresses: [198.18.0.2/30, "fd00:9::2/64"]}]}]`,
			[]string{"namespaces[0].routes[1].to: duplicate route to 0.0.0.0/0 (also routes[0])"}},
		{"cycle of bridges", `
name: t
bridges: [{name: b1}, {name: b2}, {name: b3}]
links:
  - endpoints: [{bridge: b1, interface: p12}, {bridge: b2, interface: p21}]
  - endpoints: [{bridge: b2, interface: p23}, {bridge: b3, interface: p32}]
  - endpoints: [{bridge: b3, interface: p31}, {bridge: b1, interface: p13}]`,
			[]string{`links[2]: bridges "b3" and "b1" are already connected: this link closes a cycle of bridges`}},
		{"bridge looped to itself", `
name: t
bridges: [{name: b1}]
links: [{endpoints: [{bridge: b1, interface: p1}, {bridge: b1, interface: p2}]}]`,
			[]string{`links[0]: both ends are ports of bridge "b1": a loop`}},
		{"bad sysctl key", "name: t\nnamespaces: [{name: a, sysctls: {kernel.panic: \"1\"}}]", []string{"namespaces[0].sysctls.kernel.panic: want a key under net."}},
		{"sysctl key escaping", "name: t\nnamespaces: [{name: a, sysctls: {net.ipv4../x: \"1\"}}]", []string{"namespaces[0].sysctls.net.ipv4../x: want a key under net."}},
		{"sysctl of an unknown interface", "name: t\nnamespaces: [{name: a, sysctls: {net.ipv4.conf.eth9.rp_filter: \"0\", net.ipv6.conf.lo.disable_ipv6: \"0\", net.ipv4.neigh.default.gc_thresh1: \"64\"}}]",
			[]string{`namespaces[0].sysctls.net.ipv4.conf.eth9.rp_filter: no interface "eth9" in namespace "a"`}},
		{"sysctl of an interface written with its dot", `
name: t
namespaces:
  - name: a
    sysctls: {net.ipv4.conf.e0.1.rp_filter: "2", net.ipv6.neigh.e0/1: "1", net.ipv4.conf..rp_filter: "0"}
  - name: b
links:
  - endpoints: [{namespace: a, interface: e0.1}, {namespace: b, interface: e0}]
  - endpoints: [{namespace: a, interface: e0}, {namespace: b, interface: e1}]`,
			[]string{`namespaces[0].sysctls.net.ipv4.conf.e0.1.rp_filter: want net.ipv4.conf.IF.SETTING, e.g. net.ipv4.conf.eth0.rp_filter: an interface's directory there has no subdirectories; for "e0.1" write net.ipv4.conf.e0/1.rp_filter`,
				`namespaces[0].sysctls.net.ipv6.neigh.e0/1: want net.ipv6.neigh.IF.SETTING`,
				`namespaces[0].sysctls.net.ipv4.conf..rp_filter: want a key under net.`}},
		{"slash outside an interface's name", "name: t\nnamespaces: [{name: a, sysctls: {net.ipv4/ip_forward: \"1\", net.ipv4.conf.eth9/1.rp_filter: \"0\", net.ipv4.conf.//.rp_filter: \"0\"}}]",
			[]string{"namespaces[0].sysctls.net.ipv4/ip_forward: a '/' stands for a '.' in an interface's name",
				`namespaces[0].sysctls.net.ipv4.conf.//.rp_filter: no interface ".." in namespace "a"`,
				`namespaces[0].sysctls.net.ipv4.conf.eth9/1.rp_filter: no interface "eth9.1" in namespace "a"`}},
		{"interface named all", "name: t\nnamespaces: [{name: a}, {name: b}]\nlinks: [{endpoints: [{namespace: a, interface: all}, {namespace: b, interface: default}]}]",
			[]string{`links[0].endpoints[0].interface: "all" is reserved by the kernel`, `links[0].endpoints[1].interface: "default" is reserved by the kernel`}},
		{"empty sysctl value", "name: t\nnamespaces: [{name: a, sysctls: {net.ipv4.ip_forward: \"\"}}]", []string{"namespaces[0].sysctls.net.ipv4.ip_forward: value must be a non-empty single line"}},
		{"isolation port twice", "name: t\nnamespaces: [{name: a}]\nisolation: {ports: [udp/8080, icmp, udp/8080]}", []string{`isolation.ports[2]: udp/8080 listed twice (also ports[0])`}},
		{"isolation names undeclared namespace", "name: t\nnamespaces: [{name: a}]\nisolation: {allow: [{from: [a], to: [zz]}]}", []string{`isolation.allow[0].to[0]: undeclared namespace or group "zz"`}},
		{"several problems at once", `
name: t
namespaces: [{name: a}, {name: a}]
bridges: [{name: averyverylongbridgename}]`,
			[]string{"namespaces[1].name: duplicate", "bridges[0].name: interface name"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := Parse([]byte(tt.yaml))
			if err != nil {
				t.Fatalf("parse: %v", err)
			}
			err = s.Validate()
			if err == nil {
				t.Fatalf("Validate accepted an invalid spec; want errors %q", tt.want)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not contain %q:\n%v", w, err)
				}
			}
		})
	}
}

func TestParseRejectsUnknownFields(t *testing.T) {
	for _, tt := range []struct{ yaml, want string }{
		{"name: t\nnamespace: [{name: a}]", "namespace: unknown field (line 2)"},
		{"name: t\nnamespaces: [{name: a, sysctl: {}}]", "namespaces[0].sysctl: unknown field (line 2)"},
		{"name: t\nlinks: [{endpoints: [{namespace: a, iface: e0}]}]", "links[0].endpoints[0].iface: unknown field (line 2)"},
		{"name: t\nnamespaces:\n  - name: a\n  - name: b\n    routez: []", "namespaces[1].routez: unknown field (line 5)"},
		{"name: t\nlinks:\n  - mtu: big", "links[0].mtu: cannot unmarshal !!str `big` into int (line 3)"},
		{"name: t\nlinks:\n  - {endpoints: [{namespace: a, interface: e0}], mtu: xyz}", "links[0].mtu: cannot unmarshal !!str `xyz` into int (line 3)"},
		{"name: t\nlinks: [{endpoints: [{namespace: a, interface: e1, addresses: 198.19.100.1/24}]}]", "links[0].endpoints[0].addresses: cannot unmarshal !!str `198.19....` into a list of strings (line 2)"},
		{"name: t\nnamespaces: {}", "namespaces: cannot unmarshal !!map into a list of Namespace (line 2)"},
		{"name: t\nnamespaces: [{name: a, routes: {to: x}}]", "namespaces[0].routes: cannot unmarshal !!map into a list of Route (line 2)"},
		{"name: t\nnamespaces: [{name: a, sysctls: [x]}]", "namespaces[0].sysctls: cannot unmarshal !!seq into a mapping of strings (line 2)"},
		{"name: t\nnamespaces: [null, {name: a}, {name: a}]", "namespaces[0]: empty entry (line 2)"},
		{"name: t\nlinks:\n  -\n  - endpoints: []", "links[0]: empty entry (line 3)"},
		{"name: t\nlinks: [{mtu: [1], endpoints: [{namespace: a, interface: e1, addresses: [198.19.172.1/24]}]}]", "links[0].mtu: cannot unmarshal !!seq into int (line 2)"},
		{"name: t\nbridges: [{name: b1, mtu: abc}, {name: b2, mtu: abc}]", "bridges[0].mtu: cannot unmarshal !!str `abc` into int (line 2)\nbridges[1].mtu: cannot unmarshal !!str `abc` into int (line 2)"},
		{"name: t\nnamespaces: [{name: a, routes: [{to: [x], via: 1.2.3.4, dev: [y]}]}]", "namespaces[0].routes[0].to: cannot unmarshal !!seq into string (line 2)\nnamespaces[0].routes[0].dev: cannot unmarshal !!seq into string (line 2)"},
		{"name: t\nbridges: [{name: a, mtuu: 1}, {name: b, mtuu: 2}]", "bridges[0].mtuu: unknown field (line 2)\nbridges[1].mtuu: unknown field (line 2)"},
		{"- name: x", "line 1: cannot unmarshal !!seq into a topology file (a mapping of name, namespaces, bridges, links, isolation)"},
		{"name: t\n---\nname: u", "more than one YAML document: a topology file holds exactly one"},
		{"", "empty topology file"},
	} {
		if _, err := Parse([]byte(tt.yaml)); err == nil || err.Error() != tt.want {
			t.Errorf("Parse(%q): %v, want %q", tt.yaml, err, tt.want)
		}
	}
}

func TestLoadErrorsNameFileAndField(t *testing.T) {
	path := t.TempDir() + "/bad.yaml"
	data := "name: x\nnamespaces: [{name: a}]\nlinks: [{endpoints: [{namespace: a, interface: e0}, {namespace: zz, interface: averyveryverylongname}]}]\n"
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Load(path)
	if err == nil {
		t.Fatal("Load accepted an invalid file")
	}
	lines := strings.Split(err.Error(), "\n")
	want := []string{
		path + `: links[0].endpoints[1].namespace: undeclared namespace "zz"`,
		path + `: links[0].endpoints[1].interface: interface name "averyveryverylongname" is 21 bytes, the kernel allows at most 15`,
	}
	if !slices.Equal(lines, want) {
		t.Errorf("got\n%s\nwant\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
	}
}

// An MTU out of range is one error, not also one about IPv6's minimum.
func TestNegativeMTUReportedOnce(t *testing.T) {
	s, err := Parse([]byte(`
name: t
namespaces: [{name: a}, {name: b}]
links: [{mtu: -5, endpoints: [{namespace: a, interface: e0, addresses: ["fd00::1/64"]}, {namespace: b, interface: e0}]}]`))
	if err != nil {
		t.Fatal(err)
	}
	err = s.Validate()
	if err == nil || strings.Count(err.Error(), "links[0].mtu") != 1 || !strings.Contains(err.Error(), "links[0].mtu: -5 out of range 68-65535") {
		t.Errorf("Validate: %v, want one error: -5 out of range", err)
	}
}

// A router may have fe80::1 on each of its links, and every link has
// fe80::/64.
func TestLinkLocalOnSeveralLinks(t *testing.T) {
	s, err := Parse([]byte(`
name: t
namespaces: [{name: r}, {name: a}, {name: b}]
links:
  - endpoints: [{namespace: r, interface: e1, addresses: ["fe80::1/64"]}, {namespace: a, interface: e0, addresses: ["fe80::2/64"]}]
  - endpoints: [{namespace: r, interface: e2, addresses: ["fe80::1/64"]}, {namespace: b, interface: e0, addresses: ["fe80::2/64"]}]
`))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}
	s.Links[0].Endpoints[1].Addresses = []string{"fe80::1/64"} // twice on one link
	if err := s.Validate(); err == nil || !strings.Contains(err.Error(), "address fe80::1 is already used") {
		t.Errorf("Validate with fe80::1 twice on a link: %v", err)
	}
}

// Syntax errors name the line where the problem is found, counted from
// 1: the decoder counts its parser's errors from 0 and from where the
// enclosing block starts (line 2 for a problem on line 8 below its
// comments), its scanner's right.
func TestParseSyntaxErrorLines(t *testing.T) {
	for _, tt := range []struct{ yaml, want string }{
		{"name: t\nnamespaces: [{name: a}, {name: b}}\n", "yaml: line 2: did not find expected ',' or ']'"},
		{"name: t\nlinks:\n  - endpoints:\n      - {namespace: a, interface: eth0\n      - {namespace: b}\n", "yaml: line 5: did not find expected ',' or '}'"},
		{"name: t\nnamespaces:\n  - name: a\n routes: []\n", "yaml: line 4: did not find expected key"},
		{"name: t\n- x\n", "yaml: line 2: did not find expected key"},
		{"# a comment\n# another\nname: t\nnamespaces:\n  - name: a\n    routes: []\n  - name: b\n routes: []\n", "yaml: line 8: did not find expected key"},
		// Found at the end: the last line, not one past it.
		{"name: t\nnamespaces: [a,\n", "yaml: line 2: did not find expected node content"},
		{"name: t\nnamespaces: [a, b", "yaml: line 2: did not find expected ',' or ']'"},
		// Scanner errors were right already.
		{"name: t\nnamespaces: @x\n", "yaml: line 2: found character that cannot start any token"},
		{"name: t\nnamespaces: a: b\n", "yaml: line 2: mapping values are not allowed in this context"},
	} {
		if _, err := Parse([]byte(tt.yaml)); err == nil || err.Error() != tt.want {
			t.Errorf("Parse(%q): %v, want %q", tt.yaml, err, tt.want)
		}
	}
}

// A permission error on the lock says that nsflow needs root; others
// pass unchanged.
func TestNeedsRoot(t *testing.T) {
	denied := &os.PathError{Op: "open", Path: "/run/nsflow/topology/x.lock", Err: syscall.EACCES}
	if err := needsRoot(denied); !errors.Is(err, os.ErrPermission) || !strings.HasSuffix(err.Error(), "permission denied: run nsflow as root (it needs CAP_NET_ADMIN, CAP_SYS_ADMIN and, for eBPF, CAP_BPF and CAP_PERFMON)") {
		t.Errorf("needsRoot(EACCES) = %v", err)
	}
	other := &os.PathError{Op: "open", Path: "x", Err: syscall.ENOSPC}
	if err := needsRoot(other); err != error(other) {
		t.Errorf("needsRoot(ENOSPC) = %v, want it unchanged", err)
	}
}

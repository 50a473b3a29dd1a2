package bench

import (
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/nsflow/nsflow/topology"
)

func TestScaleSteps(t *testing.T) {
	for _, tc := range []struct {
		n    int
		want []int
	}{
		{1, []int{1}}, {2, []int{1, 2}}, {4, []int{1, 2, 4}}, {6, []int{1, 2, 4, 6}}, {8, []int{1, 2, 4, 8}},
	} {
		if got := scaleSteps(tc.n); !slices.Equal(got, tc.want) {
			t.Errorf("scaleSteps(%d) = %v, want %v", tc.n, got, tc.want)
		}
	}
}

func TestParsePaths(t *testing.T) {
	for in, want := range map[string][]Path{"veth": {Veth}, "bridge": {Bridge}, "both": {Veth, Bridge}} {
		got, err := ParsePaths(in)
		if err != nil || !slices.Equal(got, want) {
			t.Errorf("ParsePaths(%q) = %v, %v", in, got, err)
		}
	}
	var fe *FieldError
	if _, err := ParsePaths("wifi"); !errors.As(err, &fe) || fe.Field != "path" {
		t.Errorf("ParsePaths(wifi): %v, want a FieldError of path", err)
	}
}

// TestRunSpec checks that the run topology is valid under the longest
// prefix bench uses, and that findPairs finds every pair it declares,
// crossing the interfaces bench must instrument.
func TestRunSpec(t *testing.T) {
	for _, n := range []int{1, 3, maxPairs} {
		s, err := runSpec([]Path{Veth, Bridge}, n).WithPrefix("nbabcdef-")
		if err != nil {
			t.Fatalf("pairs=%d: %v", n, err)
		}
		veth, bridge := findPairs(s, Veth), findPairs(s, Bridge)
		if len(veth) != n || len(bridge) != n {
			t.Fatalf("pairs=%d: found %d veth and %d bridge pairs", n, len(veth), len(bridge))
		}
		if p := veth[0]; p.client.Namespace != "nbabcdef-vc1" || p.server.Namespace != "nbabcdef-vs1" ||
			p.serverAddr.String() != "198.18.1.2" || len(p.ifaces) != 2 || p.server.netns != "/run/netns/nbabcdef-vs1" {
			t.Errorf("veth pair 1: %+v", p)
		}
		if f := bridge[0].forward(); len(f) != 2 || f[0] != bridge[0].client || f[1].Name != "ps1" {
			t.Errorf("bridge pair 1 forward interfaces %+v", f)
		}
		if f := veth[0].forward(); len(f) != 1 || f[0] != veth[0].client {
			t.Errorf("veth pair 1 forward interfaces %+v", f)
		}
		if p := bridge[n-1]; len(p.ifaces) != 4 || p.ifaces[1].Namespace != "nbabcdef-bbr" ||
			p.ifaces[2].Name != fmt.Sprintf("ps%d", n) || p.serverAddr.Is6() {
			t.Errorf("bridge pair %d: %+v", n, p)
		}
	}
}

// TestFindPairsSeed finds the seed example's pairs: ns1-ns2 and srv1-srv2
// over veth; c1-c2 and c3-pod over bridge br0 (in the host namespace).
func TestFindPairsSeed(t *testing.T) {
	s, err := topology.Load("../examples/seed.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, path := range []Path{Veth, Bridge} {
		for _, p := range findPairs(s, path) {
			got = append(got, string(path)+":"+p.String())
		}
	}
	want := []string{
		"veth:ns1 -> ns2 (198.18.0.2)", "veth:srv1 -> srv2 (198.18.2.2)",
		"bridge:c1 -> c2 (198.18.1.12)", "bridge:c3 -> pod (198.18.1.20)",
	}
	if !slices.Equal(got, want) {
		t.Errorf("pairs %q, want %q", got, want)
	}
}

// Pairs never share a namespace (each pair's counts are checked against
// its namespaces' own), a veth with both ends in one namespace is none
// (that traffic takes lo), and a pair is found in whichever family both
// ends have. On a bridge, a namespace counts by its first port (the
// kernel sends by it), a member pairs with the first later one it shares
// a family with, and the MTU is the ports' (the bridge forwards by them).
func TestFindPairsDisjoint(t *testing.T) {
	s, err := topology.Parse([]byte(`
name: t
namespaces: [{name: a}, {name: b}, {name: c}, {name: d}, {name: e}, {name: f}, {name: g}, {name: h}, {name: i}, {name: j}]
bridges: [{name: br, mtu: 1400}, {name: br2}]
links:
  - endpoints: [{namespace: a, interface: e0, addresses: [198.18.9.1/30]}, {namespace: b, interface: e0, addresses: [198.18.9.2/30]}]
  - endpoints: [{namespace: a, interface: e1, addresses: [198.18.9.5/30]}, {namespace: b, interface: e1, addresses: [198.18.9.6/30]}]
  - mtu: 1280
    endpoints: [{namespace: c, interface: e0, addresses: ["fd00:9::1/64", 198.18.9.9/30]}, {namespace: d, interface: e0, addresses: [198.18.9.10/30]}]
  - endpoints: [{namespace: j, interface: e0, addresses: [198.18.9.13/30]}, {namespace: j, interface: e1, addresses: [198.18.9.14/30]}]
  - endpoints: [{namespace: e, interface: e0, addresses: [198.18.10.1/24]}, {bridge: br, interface: pe}]
  - endpoints: [{namespace: e, interface: e1, addresses: [198.18.10.2/24]}, {bridge: br, interface: pe1}]
  - endpoints: [{namespace: f, interface: e0, addresses: [198.18.10.3/24]}, {bridge: br, interface: pf}]
  - endpoints: [{namespace: g, interface: e0, addresses: [198.18.11.1/24]}, {bridge: br2, interface: pg}]
  - endpoints: [{namespace: h, interface: e0, addresses: ["fd00:11::2/64"]}, {bridge: br2, interface: ph}]
  - endpoints: [{namespace: i, interface: e0, addresses: [198.18.11.3/24]}, {bridge: br2, interface: pi}]
`))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, path := range []Path{Veth, Bridge} {
		for _, p := range findPairs(s, path) {
			var ifs []string
			for _, i := range p.ifaces {
				ifs = append(ifs, i.Namespace+":"+i.Name)
			}
			got = append(got, fmt.Sprintf("%s:%s %v mtu %d", path, p, ifs, p.mtu))
		}
	}
	want := []string{
		"veth:a -> b (198.18.9.2) [a:e0 b:e0] mtu 1500", "veth:c -> d (198.18.9.10) [c:e0 d:e0] mtu 1280",
		"bridge:e -> f (198.18.10.3) [e:e0 host:pe host:pf f:e0] mtu 1500",
		"bridge:g -> i (198.18.11.3) [g:e0 host:pg host:pi i:e0] mtu 1500",
	}
	if !slices.Equal(got, want) {
		t.Errorf("pairs\n  %q\nwant\n  %q", got, want)
	}
}

package demo

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"

	"github.com/nsflow/nsflow/topology"
)

// The embedded default topology is valid.
func TestDefaultSpec(t *testing.T) {
	if _, err := DefaultSpec(); err != nil {
		t.Fatal(err)
	}
}

// Every demo flow resolves on the seed, and only to addresses nsflow may
// send to: the benchmarking and ULA ranges, or the namespace's loopback.
func TestTrafficFlows(t *testing.T) {
	s, err := DefaultSpec()
	if err != nil {
		t.Fatal(err)
	}
	p, err := s.WithPrefix("t-")
	if err != nil {
		t.Fatal(err)
	}
	flows, err := trafficFlows(p, "t-", seedFlows)
	if err != nil {
		t.Fatal(err)
	}
	if len(flows) != len(seedFlows) {
		t.Fatalf("%d of %d flows resolved", len(flows), len(seedFlows))
	}
	allowed := []netip.Prefix{netip.MustParsePrefix("198.18.0.0/15"), netip.MustParsePrefix("fd00::/8")}
	for i, rf := range flows {
		f := rf.Flow
		a := f.Server.Addr()
		ok := a.IsLoopback() && f.ServerNetns == f.ClientNetns
		for _, pfx := range allowed {
			ok = ok || pfx.Contains(a)
		}
		if !ok {
			t.Errorf("flow %d sends to %v, outside the ranges nsflow may use", i, f.Server)
		}
		if f.ServerNetns == "" || f.ClientNetns == "" {
			t.Errorf("flow %d runs in the host namespace", i)
		}
		if a.Is6() != seedFlows[i].IPv6 {
			t.Errorf("flow %d: address %v, want IPv6=%v", i, a, seedFlows[i].IPv6)
		}
	}

	// A topology without the seed's namespaces gets no flows, not an error.
	other := *p
	other.Namespaces = nil
	if got, err := trafficFlows(&other, "t-", seedFlows); err != nil || len(got) != 0 {
		t.Errorf("got %d flows, %v; want none", len(got), err)
	}
}

// A file that is not the seed gets traffic between its own neighbours:
// each direct link's ends, and consecutive ports of each bridge, in a
// family both ends share a subnet of. Seed flows whose family a namespace
// lacks are left out, not an error.
func TestFileFlows(t *testing.T) {
	s, err := topology.Parse([]byte(`
name: custom
namespaces: [{name: ns1}, {name: ns2}, {name: a}, {name: b}, {name: c}, {name: d}]
bridges: [{name: br}]
links:
  - endpoints: [{namespace: ns1, interface: e, addresses: [198.18.9.1/30]}, {namespace: ns2, interface: e, addresses: [198.18.9.2/30]}]
  - endpoints: [{namespace: a, interface: e, addresses: [198.18.10.1/24]}, {bridge: br, interface: pa}]
  - endpoints: [{namespace: b, interface: e, addresses: [198.18.10.2/24, "fd00:10::2/64"]}, {bridge: br, interface: pb}]
  - endpoints: [{namespace: c, interface: e, addresses: ["fd00:10::3/64"]}, {bridge: br, interface: pc}]
  - endpoints: [{namespace: d, interface: e, addresses: [198.18.11.4/24]}, {bridge: br, interface: pd}]
`))
	if err == nil {
		err = s.Validate()
	}
	if err != nil {
		t.Fatal(err)
	}
	type flow struct {
		from, to, server string
		port             uint16
	}
	flowsOf := func() (got []flow) {
		for _, f := range fileFlows(s) {
			got = append(got, flow{f.From, f.To, f.Server.String(), f.Port})
		}
		return got
	}
	want := []flow{
		{"ns1", "ns2", "198.18.9.2", 5001},
		{"a", "b", "198.18.10.2", 5002},
		{"b", "c", "fd00:10::3", 5003},
		// c and d share no subnet: no flow.
	}
	if got := flowsOf(); !slices.Equal(got, want) {
		t.Errorf("flows %v, want %v", got, want)
	}
	// Ports verify probes are left to its responders.
	s.Isolation = &topology.Isolation{Ports: []string{"udp/5001", "tcp/5002", "udp/5003"}}
	want[0].port, want[1].port, want[2].port = 5002, 5004, 5005
	if got := flowsOf(); !slices.Equal(got, want) {
		t.Errorf("flows with udp/5001 and udp/5003 probed: %v, want %v", got, want)
	}
	s.Isolation = nil

	// The seed's flows on it: ns1 to ns2 over IPv4 resolves; the way
	// back over IPv6 has no address to go to and is left out.
	flows, err := trafficFlows(s, "", seedFlows)
	if err != nil || len(flows) != 1 || flows[0].Src != "ns1" || flows[0].Flow.Server.Addr().String() != "198.18.9.2" {
		t.Fatalf("seed flows on the custom file: %+v, %v; want only ns1 to ns2", flows, err)
	}
	// Not on a port verify probes: that flow is left out.
	s.Isolation = &topology.Isolation{Ports: []string{fmt.Sprintf("udp/%d", flows[0].Port)}}
	if flows, err := trafficFlows(s, "", seedFlows); err != nil || len(flows) != 0 {
		t.Errorf("seed flows with their port probed: %+v, %v; want none", flows, err)
	}
	s.Isolation = nil
}

// A file that reuses the seed's names but not its wiring gets no seed
// flow that cannot arrive: ns1 and ns2 each reach only r here, which does
// not forward, so their flow is left out (and the file's own neighbours
// get traffic instead).
func TestTrafficFlowsUnreachable(t *testing.T) {
	s, err := topology.Parse([]byte(`
name: seedish
namespaces: [{name: ns1}, {name: ns2}, {name: r}]
links:
  - endpoints: [{namespace: ns1, interface: e0, addresses: [198.18.55.1/30]}, {namespace: r, interface: e0, addresses: [198.18.55.2/30]}]
  - endpoints: [{namespace: ns2, interface: e0, addresses: [198.18.56.1/30]}, {namespace: r, interface: e1, addresses: [198.18.56.2/30]}]
`))
	if err != nil {
		t.Fatal(err)
	}
	flows, err := trafficFlows(s, "", seedFlows)
	if err != nil || len(flows) != 0 {
		t.Errorf("got %d seed flows (%v), want none: ns1 cannot reach ns2", len(flows), err)
	}
	if own, err := trafficFlows(s, "", fileFlows(s)); err != nil || len(own) == 0 {
		t.Errorf("got %d flows of the file's own (%v), want some", len(own), err)
	}
}

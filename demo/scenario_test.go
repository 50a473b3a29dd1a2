package demo

import (
	"net/netip"
	"testing"
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

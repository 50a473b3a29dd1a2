package demo

import (
	"testing"

	"github.com/nsflow/nsflow/collector"
	"github.com/nsflow/nsflow/verify"
)

type fakeFlows struct{ pairs []collector.PairSample }

func (f fakeFlows) Flows() (*collector.FlowSummary, error) {
	return &collector.FlowSummary{Pairs: f.pairs}, nil
}

func TestViolations(t *testing.T) {
	s, err := DefaultSpec()
	if err != nil {
		t.Fatal(err)
	}
	f := violations(verify.NewModel(s), fakeFlows{[]collector.PairSample{
		{Src: "ns1", Dst: "ns2", Protocol: "udp", Packets: 100},   // one veth: reachable
		{Src: "c1", Dst: "c2", Protocol: "udp", Packets: 50},      // one bridge: reachable
		{Src: "ns1", Dst: "c1", Protocol: "udp", Packets: 7},      // no path in the topology
		{Src: "ns1", Dst: "c1", Protocol: "icmp", Packets: 3},     // summed over protocols
		{Src: "srv1", Dst: "pod", Protocol: "tcp", Packets: 2},    // no path
		{Src: "ns1", Dst: "unknown", Protocol: "udp", Packets: 9}, // not a namespace of the topology
		{Src: "pod", Dst: "pod", Protocol: "udp", Packets: 4},     // itself
	}})
	got, err := f()
	if err != nil {
		t.Fatal(err)
	}
	want := map[[2]string]uint64{{"ns1", "c1"}: 10, {"srv1", "pod"}: 2}
	if len(got) != len(want) {
		t.Fatalf("got %+v, want %v", got, want)
	}
	for _, v := range got {
		if want[[2]string{v.Src, v.Dst}] != v.Packets {
			t.Errorf("got %+v, want %v", v, want)
		}
	}
}

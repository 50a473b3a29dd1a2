package bpf

import (
	"testing"
)

// More flows than cache entries, interleaved so that entries are evicted
// and written back all the time, with deletions in between: every packet
// is in exactly one flow record, and every cache entry sits at the index
// the Go side computes for its key.
func TestFlowCacheWriteBack(t *testing.T) {
	d := loadForTest(t, Options{})
	in, _ := d.Programs()
	const flows, rounds = 3 * flowCacheSize, 3
	frame := func(i int) []byte {
		return cat(eth(etherIPv4), ipv4(17, v4A, v4B, 8, 0, 0, false), udp(uint16(i), uint16(i>>16)+1, 0))
	}
	for r := range rounds {
		for i := range flows {
			runFrame(t, in, frame(i))
		}
		if r == 0 {
			// Delete every other flow: their cache entries must not count
			// on into the next record of the same key.
			var keys []FlowKey
			_ = d.Flows(func(k FlowKey, _ FlowStats) bool {
				if k.SrcPort%2 == 0 {
					keys = append(keys, k)
				}
				return true
			})
			if n, err := d.DeleteFlows(keys); err != nil || n != flows/2 {
				t.Fatalf("DeleteFlows = %d, %v; want %d", n, err, flows/2)
			}
		}
	}
	got := map[uint16]uint64{}
	if err := d.Flows(func(k FlowKey, s FlowStats) bool {
		got[k.SrcPort] += s.Packets
		if s.Bytes != s.Packets*uint64(len(frame(0))) || s.Segments != s.Packets {
			t.Errorf("flow %+v: %+v", k, s)
		}
		return true
	}); err != nil {
		t.Fatal(err)
	}
	for i := range flows {
		want := uint64(rounds)
		if i%2 == 0 {
			want = rounds - 1 // deleted after the first round
		}
		if got[uint16(i)] != want {
			t.Errorf("flow %d: %d packets, want %d", i, got[uint16(i)], want)
		}
	}

	cache, err := d.readCache()
	if err != nil {
		t.Fatal(err)
	}
	used := 0
	for idx, es := range cache {
		for _, e := range es {
			if e.Id == 0 {
				continue
			}
			used++
			if k := e.Key; flowCacheIndex(&k) != uint32(idx) {
				t.Fatalf("entry at %d has a key Go indexes at %d", idx, flowCacheIndex(&k))
			}
		}
	}
	if used == 0 {
		t.Error("flow cache unused")
	}
}

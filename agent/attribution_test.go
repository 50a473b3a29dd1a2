package agent

import (
	"net/netip"
	"slices"
	"testing"
)

// TestHoldersAt: who held an address when a record began, from the live
// holders (and since when the agent knew), the removed namespaces and
// the addresses live namespaces dropped.
func TestHoldersAt(t *testing.T) {
	ip := netip.MustParseAddr("198.18.7.1")
	const t0, t1, t2 = 100, 200, 300 // a record begins at t1
	type state struct {
		live    map[uint64]uint64 // cookie -> since
		gone    map[uint64]uint64 // cookie -> removed at
		dropped map[uint64]uint64 // cookie -> dropped at
	}
	for _, tt := range []struct {
		name string
		st   state
		want []string
	}{
		{"held all along", state{live: map[uint64]uint64{1: 0}}, []string{"n1"}},
		{"moved after the record began: the former holder",
			state{live: map[uint64]uint64{2: t2}, dropped: map[uint64]uint64{1: t2}}, []string{"n1"}},
		{"moved before the record began: the new holder",
			state{live: map[uint64]uint64{2: t0}, dropped: map[uint64]uint64{1: t0}}, []string{"n2"}},
		{"a new holder heard of late, nobody else: still it",
			state{live: map[uint64]uint64{2: t2}}, []string{"n2"}},
		{"duplicates, one dropped it since: both",
			state{live: map[uint64]uint64{2: 0}, dropped: map[uint64]uint64{1: t2}}, []string{"n1", "n2"}},
		{"removed after the record began", state{gone: map[uint64]uint64{3: t2}}, []string{"n3"}},
		{"removed before the record began", state{gone: map[uint64]uint64{3: t0}}, nil},
		{"dropped and held again: once",
			state{live: map[uint64]uint64{1: t0}, dropped: map[uint64]uint64{1: t2}}, []string{"n1"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			a := &Agent{byCookie: map[uint64]*nsState{}, gone: map[uint64]goneNetns{},
				owners: map[netip.Addr]map[uint64]uint64{}, dropped: map[netip.Addr][]droppedAddr{}}
			label := func(c uint64) string { return "n" + string(rune('0'+c)) }
			if tt.st.live != nil {
				a.owners[ip] = tt.st.live
				for c := range tt.st.live {
					a.byCookie[c] = &nsState{label: label(c), cookie: c}
				}
			}
			for c, at := range tt.st.gone {
				a.gone[c] = goneNetns{label: label(c), addrs: map[netip.Addr]bool{ip: true}, at: at}
			}
			for c, at := range tt.st.dropped {
				if a.byCookie[c] == nil {
					a.byCookie[c] = &nsState{label: label(c), cookie: c}
				}
				a.dropped[ip] = append(a.dropped[ip], droppedAddr{cookie: c, at: at})
			}
			if got := a.holdersAtLocked(ip, t1); !slices.Equal(got, tt.want) {
				t.Errorf("holders %q, want %q", got, tt.want)
			}
		})
	}
}

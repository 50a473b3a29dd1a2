package bench

import "testing"

// TestLostCheck: device drops may explain lost datagrams, but only up to
// how many packets the devices toward the server dropped.
func TestLostCheck(t *testing.T) {
	c, s := Iface{Namespace: "c", Name: "eth0"}, Iface{Namespace: "s", Name: "eth0"}
	p := pair{client: c, server: s, ifaces: []Iface{c, s}}
	for _, tc := range []struct {
		name                    string
		lost, inErrors, dropped uint64
		reverseDropped          uint64
		ok                      bool
		diff                    int64
	}{
		{name: "nothing lost", ok: true},
		{name: "socket drops", lost: 5, inErrors: 5, ok: true},
		{name: "a dropped ARP request", dropped: 1, ok: true},
		{name: "device drops", lost: 3, inErrors: 1, dropped: 2, ok: true},
		{name: "unexplained", lost: 3, inErrors: 1, dropped: 1, diff: 1},
		{name: "drops the other way explain nothing", lost: 1, reverseDropped: 1, diff: 1},
		{name: "more socket drops than lost", inErrors: 1, diff: -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := snapshot{kernel: map[Iface]linkCounters{c: {}, s: {}}}
			after := snapshot{kernel: map[Iface]linkCounters{c: {TxDropped: tc.dropped}, s: {TxDropped: tc.reverseDropped}}}
			got := lostCheck(p, tc.lost, tc.inErrors, before, after)
			if got.OK != tc.ok || got.PacketsDiff != tc.diff {
				t.Errorf("ok %v diff %d, want ok %v diff %d (%+v)", got.OK, got.PacketsDiff, tc.ok, tc.diff, got)
			}
		})
	}
}

package bench

import (
	"errors"
	"fmt"
	"testing"

	"github.com/nsflow/nsflow/traffic"
)

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

// TestTCPStreamCheck: a TCP stream that came up short is a difference the
// report lists, and the generator's error for it does not end the run
// before the reconciliation can show it; any other error still does.
func TestTCPStreamCheck(t *testing.T) {
	c, s := Iface{Namespace: "c", Name: "eth0"}, Iface{Namespace: "s", Name: "eth0"}
	p := pair{client: c, server: s, ifaces: []Iface{c, s}}
	for _, tc := range []struct {
		name       string
		sent, read uint64
		diff       int64
	}{
		{"whole", 1 << 20, 1 << 20, 0},
		{"short", 1 << 20, 1<<20 - 100, -100},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := []traffic.Result{{Sent: traffic.Counts{Bytes: tc.sent}, Received: traffic.Counts{Bytes: tc.read}}}
			checks := reconcile(traffic.TCP, []pair{p}, res, snapshot{}, snapshot{}, false)
			if len(checks) != 1 {
				t.Fatalf("%d checks, want the tcp stream one: %+v", len(checks), checks)
			}
			if got := checks[0]; got.OK != (tc.diff == 0) || got.BytesDiff != tc.diff || got.PacketsDiff != 0 {
				t.Errorf("check %+v: want bytes diff %d", got, tc.diff)
			}
		})
	}

	short := fmt.Errorf("tcp: sent 5 bytes but the server read 4: %w", traffic.ErrShortStream)
	other := errors.New("read: connection reset")
	for _, tc := range []struct {
		name string
		err  error
		want []error // what must remain
	}{
		{"nil", nil, nil},
		{"short only", short, nil},
		{"short, joined", errors.Join(nil, short), nil},
		{"other only", other, []error{other}},
		{"both", errors.Join(other, short), []error{other}},
		{"nested", errors.Join(errors.Join(short, other)), []error{other}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := withoutShortStream(tc.err)
			if errors.Is(got, traffic.ErrShortStream) {
				t.Errorf("%v: the short stream stayed", got)
			}
			if (got == nil) != (tc.want == nil) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
			for _, w := range tc.want {
				if !errors.Is(got, w) {
					t.Errorf("got %v: lost %v", got, w)
				}
			}
		})
	}
}

package verify

import (
	"net/netip"
	"testing"
)

// The retry probes again only what may have been a lost packet or a
// hiccup: expected to reach and not answered, or not run. A probe answered
// where it must not be is proof of a breach and stands, whatever a second
// try would see.
func TestRetrySelection(t *testing.T) {
	for _, tc := range []struct {
		name  string
		probe Probe
		again bool
	}{
		{"must not reach, replied", Probe{To: "c", Outcome: Replied, By: "c", Claimed: "c"}, false},
		{"must not reach, refused by the target", Probe{To: "c", Outcome: Refused}, false},
		{"must not reach, answered by another namespace", Probe{To: "c", Outcome: Replied, By: "r", Claimed: "r"}, false},
		{"must not reach, blocked", Probe{To: "c", Outcome: Blocked}, false},
		{"must not reach, unreachable", Probe{To: "c", Outcome: Unreachable}, false},
		{"must not reach, could not run", Probe{To: "c", Outcome: Failed, Detail: "boom"}, true},
		{"must reach, replied", Probe{To: "c", Expect: "c", Outcome: Replied, By: "c", Claimed: "c"}, false},
		{"must reach, refused by the target", Probe{To: "c", Expect: "c", Outcome: Refused}, false},
		{"must reach, blocked", Probe{To: "c", Expect: "c", Outcome: Blocked}, true},
		{"must reach, unreachable", Probe{To: "c", Expect: "c", Outcome: Unreachable, Detail: "from 198.18.1.254"}, true},
		{"must reach, could not run", Probe{To: "c", Expect: "c", Outcome: Failed, Detail: "boom"}, true},
		{"must reach, answered by the wrong namespace", Probe{To: "c", Expect: "c", Outcome: Replied, By: "r", Claimed: "r"}, false},
		{"must reach, responder running in another namespace", Probe{To: "c", Expect: "c", Outcome: Replied, By: "r", Claimed: "c"}, false},
		{"must reach, connected but no identity yet", Probe{To: "c", Expect: "c", Outcome: Replied, Detail: noIdentity}, true},
		{"must not reach, connected but no identity", Probe{To: "c", Outcome: Replied, Detail: noIdentity}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			first := tc.probe
			first.From, first.Addr, first.Port, first.Try = "a", netip.MustParseAddr("198.18.2.1"), "tcp/8080", 1
			var ran []*Probe
			// The second try sees nothing at all, as when a packet is lost
			// or a leak is intermittent.
			run := func(ps []*Probe) {
				ran = append(ran, ps...)
				for _, p := range ps {
					p.Outcome = Blocked
				}
			}
			out, n := retry(run, []*Probe{&first})
			if got := len(ran) == 1; got != tc.again || n != len(ran) {
				t.Fatalf("probed again: %v (retried %d), want %v", got, n, tc.again)
			}
			if !tc.again {
				if out[0] != &first {
					t.Errorf("the first result was replaced by %+v", *out[0])
				}
				return
			}
			q := ran[0]
			if out[0] != q || q.Try != 2 || q.From != first.From || q.To != first.To || q.Addr != first.Addr ||
				q.Port != first.Port || q.Expect != first.Expect {
				t.Errorf("second try %+v, reported %+v; want the same probe, try 2, reported", *q, *out[0])
			}
		})
	}
}

// A breach seen on the first try keeps the verdict at violation even when
// the second try of the retried probes around it sees nothing.
func TestRetryKeepsBreach(t *testing.T) {
	breach := &Probe{From: "b", To: "c", Addr: netip.MustParseAddr("198.18.2.1"), Port: "tcp/8080", Outcome: Replied, By: "c", Claimed: "c", Try: 1}
	lost := &Probe{From: "a", To: "c", Addr: netip.MustParseAddr("198.18.2.1"), Port: "tcp/8080", Expect: "c", Outcome: Blocked, Try: 1}
	out, n := retry(func(ps []*Probe) {
		for _, p := range ps {
			p.Outcome, p.By, p.Claimed = Blocked, "", ""
			if p.Expect != "" {
				p.Outcome, p.By, p.Claimed = Replied, p.Expect, p.Expect
			}
		}
	}, []*Probe{breach, lost})
	rep := &Report{Namespaces: []string{"a", "b", "c"}, Ports: []string{"tcp/8080"}, Probes: out}
	if n != 1 || out[0] != breach || out[1].Try != 2 || !out[1].Match() {
		t.Errorf("retried %d: %+v, %+v; want only the lost probe probed again, and matching", n, *out[0], *out[1])
	}
	if s := rep.Summary(); rep.Verdict() != 1 || s.Mismatches != 1 {
		t.Errorf("verdict %d, %+v; want 1 with the breach", rep.Verdict(), s)
	}
}

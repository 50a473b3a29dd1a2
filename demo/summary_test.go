package demo

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/nsflow/nsflow/verify"
)

// report is a verify report of two namespaces that reach each other as
// intended, changed by edit.
func report(edit func(*verify.Report)) *verify.Report {
	r := &verify.Report{Topology: "t", Namespaces: []string{"ns1", "ns2"}, Ports: []string{"tcp/8080"},
		Evidence: &verify.Evidence{Ports: 2, Flows: 4}}
	for _, p := range [][2]string{{"ns1", "ns2"}, {"ns2", "ns1"}} {
		r.Probes = append(r.Probes, &verify.Probe{From: p[0], To: p[1], Addr: netip.MustParseAddr("198.18.5.1"), Port: "tcp/8080",
			Expect: p[1], Outcome: verify.Replied, By: p[1], Claimed: p[1], Try: 1})
	}
	r.Stack = []verify.Check{{Netns: "ns1", Kind: "routes", Pass: true}, {Netns: "ns2", Kind: "routes", Pass: true}}
	if edit != nil {
		edit(r)
	}
	return r
}

// The view's verdict is verify's: evidence violations, incomplete
// evidence and checks that could not run count as they do there.
func TestVerdictOf(t *testing.T) {
	for _, tc := range []struct {
		name    string
		rep     *verify.Report
		err     error
		want    string
		finding string
	}{
		{"holds", report(nil), nil, "isolation: HOLDS: 2 probes and 2 stack checks, all as declared", ""},
		{"probe disagrees", report(func(r *verify.Report) { r.Probes[0].Expect = "" }), nil,
			"isolation: VIOLATED: 1 finding", "ns1 → ns2 tcp/8080 (198.18.5.1): reachable, expected blocked"},
		{"evidence violation only", report(func(r *verify.Report) {
			r.Evidence.Violations = []verify.Violation{{Src: "ns1", Dst: "ns2", Packets: 3, Bytes: 180}}
		}), nil, "isolation: VIOLATED: 1 finding", "eBPF evidence ns1 → ns2: 3 packets delivered where none may arrive"},
		{"evidence incomplete", report(func(r *verify.Report) { r.Evidence.Overflow = 9 }), nil,
			"isolation: COULD NOT CHECK: 1 finding", "eBPF evidence incomplete: 9 flows not recorded (flow table full)"},
		{"check could not run", report(func(r *verify.Report) { r.Stack[1].Error = "netlink: boom" }), nil,
			"isolation: COULD NOT CHECK: 1 finding", "ns2 routes: check could not run: netlink: boom"},
		{"verify failed", nil, errors.New("boom"), "isolation: verify failed: boom", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := verdictOf(tc.rep, tc.err)
			if tc.rep != nil && v.Status != tc.rep.Verdict() {
				t.Errorf("status %d, verify's verdict %d", v.Status, tc.rep.Verdict())
			}
			s := &screen{Verdict: v, Cur: newReading(time.Now(), nil)}
			var b strings.Builder
			s.renderVerdict(&b)
			if !strings.Contains(b.String(), tc.want) || !strings.Contains(b.String(), tc.finding) {
				t.Errorf("view:\n%s\nwant %q and %q", b.String(), tc.want, tc.finding)
			}
		})
	}
}

// The closing summary counts the evidence violations that make the verdict.
func TestSummaryLines(t *testing.T) {
	sum := &Summary{Verify: report(func(r *verify.Report) {
		r.Evidence.Violations = []verify.Violation{{Src: "ns1", Dst: "ns2", Packets: 3}}
	})}
	want := "verify: isolation VIOLATED: 2 probes, 0 disagree with intent, 0 could not run, 0 checks failed, 1 evidence violation"
	if got := sum.lines(); len(got) != 1 || got[0] != want {
		t.Errorf("lines %q, want %q", got, want)
	}
}

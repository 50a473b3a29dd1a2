package verify

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/nsflow/nsflow/topology"
)

// An anonymous answer where verify's responder listens was given by
// another stack: it cannot prove the packet arrived. Where no responder
// listens (another process holds the port, or ICMP, which has no
// responder), and wherever the answer carries an identity or no answer
// may come, the probe stands.
func TestImpostors(t *testing.T) {
	tcp := topology.Port{Proto: "tcp", Number: 8080}
	udp := topology.Port{Proto: "udp", Number: 8080}
	icmp := topology.Port{Proto: "icmp"}
	v4, v6 := netip.MustParseAddr("198.18.1.2"), netip.MustParseAddr("fd00:1::2")
	resp := map[string]*Responder{
		"c": {listening: map[string]bool{"tcp4/8080": true, "udp4/8080": true, "udp6/8080": true}, Busy: []string{"tcp6/8080"}},
	}
	for _, tc := range []struct {
		name   string
		p      Probe
		judged bool // stands as observed
	}{
		{"TCP reset where the responder listens", Probe{To: "c", Expect: "c", Addr: v4, port: tcp, Outcome: Refused}, false},
		{"port unreachable where the responder listens", Probe{To: "c", Expect: "c", Addr: v6, port: udp, Outcome: Refused}, false},
		{"a listener that is not a responder", Probe{To: "c", Expect: "c", Addr: v4, port: udp, Outcome: Replied}, false},
		{"the responder's own answer", Probe{To: "c", Expect: "c", Addr: v4, port: tcp, Outcome: Replied, By: "c", Claimed: "c"}, true},
		{"a reset where another process holds the port", Probe{To: "c", Expect: "c", Addr: v6, port: tcp, Outcome: Refused}, true},
		{"ICMP echo, which has no responder", Probe{To: "c", Expect: "c", Addr: v4, port: icmp, Outcome: Replied}, true},
		{"expected blocked: a breach stays one", Probe{To: "c", Addr: v4, port: tcp, Outcome: Refused}, true},
		{"blocked as expected", Probe{To: "c", Addr: v4, port: tcp, Outcome: Blocked}, true},
		{"no responder in the namespace", Probe{To: "d", Expect: "d", Addr: v4, port: tcp, Outcome: Refused}, true},
	} {
		p := tc.p
		p.Port = p.port.String()
		before := p.Outcome
		impostors([]*Probe{&p}, resp)
		if tc.judged {
			if p.Outcome != before {
				t.Errorf("%s: %s became %s (%s)", tc.name, before, p.Outcome, p.Detail)
			}
			continue
		}
		if p.Outcome != Failed || p.Match() || !strings.Contains(p.Detail, "does not prove the packet reached c") {
			t.Errorf("%s: %s (%s), want a probe that could not be judged", tc.name, p.Outcome, p.Detail)
		}
	}
}

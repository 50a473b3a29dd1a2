package verify

import (
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/nsflow/nsflow/bpf"
	"github.com/nsflow/nsflow/internal/nsenter"
	"github.com/nsflow/nsflow/topology"
)

const semanticsTimeout = time.Second

// probeOnce runs single probes from the lab's namespace from, with no
// responders unless the test starts them.
func (l *lab) probeOnce(t *testing.T, from string, addr string, ports ...string) []*Probe {
	t.Helper()
	paths, names := map[string]string{}, map[uint64]string{}
	for _, ns := range l.spec.Namespaces {
		paths[ns.Name] = l.spec.NetnsPath(ns.Name)
		c, err := bpf.NetnsCookie(paths[ns.Name])
		if err != nil {
			t.Fatal(err)
		}
		names[c] = ns.Name
	}
	paths["nowhere"] = "/run/netns/" + l.prefix + "does-not-exist"
	var probes []*Probe
	for _, s := range ports {
		p, err := topology.ParsePort(s)
		if err != nil {
			t.Fatal(err)
		}
		probes = append(probes, &Probe{From: from, Addr: netip.MustParseAddr(addr), Port: s, port: p, Try: 1})
	}
	newProber(paths, names, semanticsTimeout).run(probes)
	return probes
}

// settle waits until the lab forwards: the first packets through a freshly
// created router can be lost while its links come up, and the semantics
// tests probe once, without the matrix's retry.
func (l *lab) settle(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		p := l.probeOnce(t, l.ns("a"), "198.18.2.1", "tcp/9")
		q := l.probeOnce(t, l.ns("a"), "fd00:0:0:2::1", "tcp/9")
		if p[0].Outcome == Refused && q[0].Outcome == Refused {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the lab does not forward a -> c: %s, %s", p[0].Outcome, q[0].Outcome)
		}
	}
}

func timed(fn func()) time.Duration {
	start := time.Now()
	fn()
	return time.Since(start)
}

// UDP is reachable only when a reply comes back: a listener that swallows
// the request reads as blocked, however open its port is.
func TestProbeUDPNeedsReply(t *testing.T) {
	l := upLab(t, nil)
	l.settle(t)
	var sink net.PacketConn
	err := nsenter.Do(l.path("c"), func() (err error) {
		sink, err = net.ListenPacket("udp", ":9999")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	for _, addr := range []string{"198.18.2.1", "fd00:0:0:2::1"} {
		var p []*Probe
		d := timed(func() { p = l.probeOnce(t, l.ns("a"), addr, "udp/9999") })
		if p[0].Outcome != Blocked || d < semanticsTimeout {
			t.Errorf("%s udp/9999 to a silent listener: %s after %v (%s), want blocked after the timeout", addr, p[0].Outcome, d, p[0].Detail)
		}
	}
}

// A silently dropped packet (blackhole route in r) reads as blocked, and
// only once the timeout has passed.
func TestProbeSilentDropIsBlocked(t *testing.T) {
	l := upLab(t, nil)
	l.settle(t)
	ip(t, "-n", l.ns("r"), "route", "add", "blackhole", "198.18.2.1/32")
	ip(t, "-n", l.ns("r"), "-6", "route", "add", "blackhole", "fd00:0:0:2::1/128")
	for _, addr := range []string{"198.18.2.1", "fd00:0:0:2::1"} {
		var probes []*Probe
		d := timed(func() { probes = l.probeOnce(t, l.ns("a"), addr, all3...) })
		if d < semanticsTimeout {
			t.Errorf("%s: finished in %v, before the timeout", addr, d)
		}
		for _, p := range probes {
			if p.Outcome != Blocked {
				t.Errorf("%s %s: %s (%s), want blocked", addr, p.Port, p.Outcome, p.Detail)
			}
		}
	}
}

// An ICMP unreachable from a router on the way reads as blocked at once,
// and names the router.
func TestProbeRouterUnreachableIsBlockedAtOnce(t *testing.T) {
	l := upLab(t, nil)
	l.settle(t)
	ip(t, "-n", l.ns("r"), "route", "add", "unreachable", "198.18.2.1/32")
	ip(t, "-n", l.ns("r"), "-6", "route", "add", "unreachable", "fd00:0:0:2::1/128")
	for _, tc := range []struct{ addr, router string }{{"198.18.2.1", "198.18.1.254"}, {"fd00:0:0:2::1", "fd00:0:0:1::fe"}} {
		for i, port := range all3 {
			// The router rate-limits its ICMP errors per source (for
			// IPv4 both ip_error and icmp_send take from one bucket of
			// about three), so the IPv4 probes are spaced out.
			if i > 0 && netip.MustParseAddr(tc.addr).Is4() {
				time.Sleep(2 * time.Second)
			}
			var p *Probe
			d := timed(func() { p = l.probeOnce(t, l.ns("a"), tc.addr, port)[0] })
			if d >= semanticsTimeout/2 {
				t.Errorf("%s %s: took %v, want an answer well before the %v timeout", tc.addr, port, d, semanticsTimeout)
			}
			if p.Outcome != Unreachable || p.Outcome.Reachable() || !strings.Contains(p.Detail, "from "+tc.router) {
				t.Errorf("%s %s: %s (%s), want unreachable from %s", tc.addr, p.Port, p.Outcome, p.Detail, tc.router)
			}
		}
	}
}

// A TCP reset or an ICMP port unreachable from the target proves that the
// packet arrived: reachable, and the cell says it was refused.
func TestProbeRefusedByTargetIsReachable(t *testing.T) {
	l := upLab(t, nil)
	l.settle(t)
	for _, addr := range []string{"198.18.2.1", "fd00:0:0:2::1"} {
		probes := l.probeOnce(t, l.ns("a"), addr, "tcp/9998", "udp/9998")
		for _, p := range probes {
			want := map[string]string{"tcp/9998": "TCP reset from the target", "udp/9998": "ICMP port unreachable from the target"}[p.Port]
			if p.Outcome != Refused || !p.Outcome.Reachable() || p.Detail != want || p.Outcome.Symbol() != 'r' {
				t.Errorf("%s %s: %s (%s), want refused: %s", addr, p.Port, p.Outcome, p.Detail, want)
			}
		}
	}
}

// A probe that could not run is an error ('!'), never blocked.
func TestProbeErrorIsNotBlocked(t *testing.T) {
	l := upLab(t, nil)
	l.settle(t)
	probes := l.probeOnce(t, "nowhere", "198.18.2.1", all3...)
	for _, p := range probes {
		if p.Outcome != Failed || p.Outcome.Symbol() != '!' || p.Match() {
			t.Errorf("%s from a missing namespace: %s (%s), want a probe error", p.Port, p.Outcome, p.Detail)
		}
		p.To, p.Expect = "c", "" // even where blocked is expected
		if p.Match() {
			t.Errorf("%s: a probe error matches an expected block", p.Port)
		}
	}
	rep := &Report{Namespaces: []string{"nowhere", "c"}, Ports: all3, Probes: probes}
	if v := rep.Verdict(); v != 2 {
		t.Errorf("verdict of a report with only probe errors: %d, want 2", v)
	}
	if c := rep.Matrix("tcp/8080")[0][1]; c.Observed != '!' || c.Diff != '!' {
		t.Errorf("cell observed %c diff %c, want !", c.Observed, c.Diff)
	}
}

package verify

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/nsflow/nsflow/topology"
)

var loopbacks = []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::1")}

// portSpace checks that every namespace has its own port space: the
// responders bound the same ports in all of them at once, and a client in
// each namespace, connecting to its own loopback, is answered by its own
// namespace's responder and nobody else's.
func (e *env) portSpace(ports []topology.Port, resp map[string]*Responder) []Check {
	var probes []*Probe
	for _, ns := range e.model.Namespaces {
		for _, p := range ports {
			if p.Proto == "icmp" {
				continue
			}
			for _, lo := range e.loopbacks(ns) {
				probes = append(probes, &Probe{From: ns, To: ns, Addr: lo, Port: p.String(), Expect: ns, port: p, Try: 1})
			}
		}
	}
	pr := newProber(e.paths, e.names, e.timeout)
	pr.run(probes)

	byCookie := map[uint64][]string{}
	for _, ns := range e.model.Namespaces {
		byCookie[e.cookies[ns]] = append(byCookie[e.cookies[ns]], ns)
	}
	var out []Check
	i := 0
	for _, ns := range e.model.Namespaces {
		for _, p := range ports {
			if p.Proto == "icmp" {
				continue
			}
			c := Check{Netns: ns, Kind: p.String()}
			if same := byCookie[e.cookies[ns]]; len(same) > 1 {
				c.Problems = append(c.Problems, fmt.Sprintf("%v are one network namespace: they share one port space", same))
			}
			for _, b := range busyOn(resp[ns], p) {
				c.Info = append(c.Info, b+" was already bound by another process in "+ns)
			}
			for range e.loopbacks(ns) {
				pb := probes[i]
				i++
				b, silent := resp[ns].silent(p, pb.Addr)
				_, held := resp[ns].held(p, pb.Addr)
				switch {
				case pb.Outcome == Blocked && silent:
					c.Info = append(c.Info, fmt.Sprintf("%s %s: not checked, %s is another process's", pb.Addr, p, b))
				case pb.Outcome != Replied && pb.Outcome != Failed && held:
					// Its holder closed it since the responder started:
					// nobody of ours listens there to be checked.
					c.Info = append(c.Info, fmt.Sprintf("%s %s: not checked, another process held it and no longer answers (%s)", pb.Addr, p, pb.Outcome))
				case pb.Outcome == Failed:
					c.Error = pb.Detail
				case pb.Outcome != Replied:
					c.Problems = append(c.Problems, fmt.Sprintf("%s %s: no listener answered (%s)", pb.Addr, p, pb.Outcome))
				case pb.Claimed == "":
					c.Info = append(c.Info, fmt.Sprintf("%s %s: answered by a listener that is not nsflow's", pb.Addr, p))
				case pb.Claimed != ns || pb.By != ns:
					c.Problems = append(c.Problems, fmt.Sprintf("%s %s: answered by the responder of %s running in %s", pb.Addr, p, pb.Claimed, pb.By))
				}
			}
			out = append(out, finish(c))
		}
	}
	return out
}

// loopbacks are the loopback addresses of ns to check its port space on:
// ::1 only where IPv6 is on.
func (e *env) loopbacks(ns string) []netip.Addr {
	if e.noLoopback6[ns] {
		return loopbacks[:1]
	}
	return loopbacks
}

// busyOn lists the entries of r.Busy ("udp4/8080") that are port p, of
// either family: a port's check tells of its own port's holders, not of
// every port's.
func busyOn(r *Responder, p topology.Port) []string {
	if r == nil {
		return nil
	}
	var out []string
	for _, fam := range []string{"4", "6"} {
		if b := fmt.Sprintf("%s%s/%d", p.Proto, fam, p.Number); slices.Contains(r.Busy, b) {
			out = append(out, b)
		}
	}
	return out
}

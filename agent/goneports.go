package agent

import (
	"time"

	"github.com/nsflow/nsflow/bpf"
	"github.com/nsflow/nsflow/discovery"
)

// An interface's series outlive it: when its counters are deleted (the
// interface or its namespace went, or it is no longer watched), their
// last values are kept under its labels for --netns.gone-retention, so
// the packets since the last scrape are not lost. A port that comes back
// under the same labels (moved away and back, a namespace recreated under
// its name) adds to them, so the series continues instead of restarting.

// portLabel is what an interface series is labelled with, but family.
type portLabel struct{ netns, ifname string }

// gonePort is what deleted ports counted under one label.
type gonePort struct {
	stats bpf.PortStats
	at    time.Time // when the last of them was deleted
}

// retainPortLocked keeps the last counts of a port about to be deleted.
// Callers hold a.mu.
func (a *Agent) retainPortLocked(l portLabel, st bpf.PortStats, now time.Time) {
	g := a.gonePorts[l]
	if g == nil {
		g = &gonePort{}
		a.gonePorts[l] = g
	}
	g.stats.Add(&st)
	g.at = now
}

// retirePortsLocked forgets the ports gone longer than the retention,
// unless a live port carries their labels. Callers hold a.mu.
func (a *Agent) retirePortsLocked(now time.Time) {
	if a.cfg.GoneRetention < 0 || len(a.gonePorts) == 0 {
		return
	}
	live := map[portLabel]bool{}
	for _, s := range a.byInode {
		for _, p := range s.links {
			live[portLabel{s.label, p.link.Name}] = true
		}
	}
	for l, g := range a.gonePorts {
		switch {
		case live[l]:
			g.at = now // its clock starts when the live one goes too
		case now.Sub(g.at) >= a.cfg.GoneRetention:
			delete(a.gonePorts, l)
		}
	}
}

// deletePort keeps the port's last counts, then deletes its counters.
func (a *Agent) deletePort(s *nsState, idx int, l discovery.Link) {
	k := bpf.PortKey{NetnsCookie: s.cookie, Ifindex: uint32(idx)}
	if st, ok, err := a.dp.Port(k); err != nil {
		a.log.Debug("read the last counts of a port", "netns", s.label, "interface", l.Name, "err", err)
	} else if ok {
		a.mu.Lock()
		a.retainPortLocked(portLabel{s.label, l.Name}, st, time.Now())
		a.mu.Unlock()
	}
	if err := a.dp.DeletePort(k); err != nil {
		a.log.Debug("delete port counters", "netns", s.label, "interface", l.Name, "err", err)
	}
}

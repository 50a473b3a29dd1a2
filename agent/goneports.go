package agent

import (
	"time"

	"github.com/nsflow/nsflow/bpf"
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

// gonePortEntry is a gonePort as the state file keeps it, so that a
// restart does not take the kept counts out of a series that continues.
type gonePortEntry struct {
	Netns, Interface string
	Stats            bpf.PortStats
	At               time.Time
}

// portLabelEntry is an attached port's key and labels as the state file
// keeps them: an interface deleted while the agent is down is one it
// never sees go, and its next start keeps its counts under these labels.
type portLabelEntry struct {
	Cookie           uint64
	Ifindex          uint32
	Netns, Interface string
	// Base is the port's base (portState.base), when it has one.
	Base *bpf.PortStats `json:",omitempty"`
}

// startPort is an attached port as the last save before this start had
// it: its labels and base.
type startPort struct {
	label portLabel
	base  bpf.PortStats
}

// stashGonePortsLocked copies the kept counts, and the labels of the
// attached ports, into the state for its next save. Callers hold a.mu
// (write) and book.mu.
func (a *Agent) stashGonePortsLocked() {
	out := make([]gonePortEntry, 0, len(a.gonePorts))
	for l, g := range a.gonePorts {
		out = append(out, gonePortEntry{Netns: l.netns, Interface: l.ifname, Stats: g.stats, At: g.at})
	}
	a.book.st.GonePorts = out
	var labels []portLabelEntry
	for _, s := range a.byInode {
		for idx, p := range s.links {
			if p.att != nil {
				e := portLabelEntry{Cookie: s.cookie, Ifindex: uint32(idx), Netns: s.label, Interface: p.link.Name}
				if p.base != (bpf.PortStats{}) {
					e.Base = &p.base
				}
				labels = append(labels, e)
			}
		}
	}
	a.book.st.PortLabels = labels
	a.gonePortsDirty = false
}

// startPortsOf is the ports attached when the state file was saved.
func startPortsOf(entries []portLabelEntry) map[bpf.PortKey]startPort {
	out := make(map[bpf.PortKey]startPort, len(entries))
	for _, e := range entries {
		sp := startPort{label: portLabel{e.Netns, e.Interface}}
		if e.Base != nil {
			sp.base = *e.Base
		}
		out[bpf.PortKey{NetnsCookie: e.Cookie, Ifindex: e.Ifindex}] = sp
	}
	return out
}

// resumeBaseLocked gives a port attached again after a restart the base
// it had, so that its series goes on where it was. A base from counters
// that did not survive (the pins were lost: some count is below the
// base) is dropped, or the series would stand still. A port that took
// other labels while the agent was down is relabelled from the saved
// ones. Callers hold a.mu.
func (a *Agent) resumeBaseLocked(s *nsState, idx int, p *portState) {
	k := bpf.PortKey{NetnsCookie: s.cookie, Ifindex: uint32(idx)}
	sp, ok := a.startBases[k]
	if !ok {
		return
	}
	delete(a.startBases, k)
	st, ok, err := a.dp.Port(k)
	if err != nil || !ok || !covers(&st, &sp.base) {
		return
	}
	p.base = sp.base
	a.keepRelabelledLocked(s, idx, p, sp.label)
}

// retireStartPortsLocked keeps, under their labels, the counts of ports
// attached before the start that are gone now (deleted while the agent
// was down), then deletes their counters; once, at the first pass.
// Callers hold a.mu.
func (a *Agent) retireStartPortsLocked(now time.Time) {
	for k, sp := range a.startPorts {
		if a.portLiveLocked(k) {
			continue
		}
		delete(a.startBases, k)
		if st, ok, err := a.dp.Port(k); err == nil && ok {
			if covers(&st, &sp.base) {
				subStats(&st, &sp.base)
			}
			a.retainPortLocked(sp.label, st, now)
		}
		if err := a.deletePort(k); err != nil {
			a.log.Debug("delete port counters", "netns", sp.label.netns, "interface", sp.label.ifname, "err", err)
		}
	}
	a.startPorts = nil
}

// gonePortsOf is the kept counts of a state file.
func gonePortsOf(entries []gonePortEntry) map[portLabel]*gonePort {
	out := make(map[portLabel]*gonePort, len(entries))
	for _, e := range entries {
		out[portLabel{e.Netns, e.Interface}] = &gonePort{stats: e.Stats, at: e.At}
	}
	return out
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
	a.gonePortsDirty = true
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
			a.gonePortsDirty = true
		}
	}
}

// retirePortLocked marks detached ports so, keeps their last counts under
// their labels and deletes their counters, all under a.mu (callers hold
// it): a scrape sees a port either live or gone, never neither nor both.
// The kept counts are saved before the counters go: a crash in between
// would lose them (the next start keeps the counters of gone ports it
// finds, under the labels of the last save).
//
// Until its counters are deleted (a failed save or delete leaves them to
// a later pass), a port's base is what was kept, so that a scrape does
// not show its counts both kept and live.
func (a *Agent) retirePortLocked(s *nsState, ports map[int]*portState) {
	for idx, p := range ports {
		p.att = nil
		k := bpf.PortKey{NetnsCookie: s.cookie, Ifindex: uint32(idx)}
		if st, ok, err := a.dp.Port(k); err != nil {
			a.log.Debug("read the last counts of a port", "netns", s.label, "interface", p.link.Name, "err", err)
		} else if ok {
			a.retainPortLocked(portLabel{s.label, p.link.Name}, p.since(st), time.Now())
			p.base = st
		}
	}
	if a.gonePortsDirty {
		a.book.mu.Lock()
		a.stashGonePortsLocked()
		err := a.book.st.save()
		a.book.mu.Unlock()
		if err != nil {
			// The counters stay until a pass finds them stale.
			a.log.Error("save the last counts of deleted ports", "err", err)
			a.gonePortsDirty = true
			return
		}
	}
	for idx, p := range ports {
		if err := a.deletePort(bpf.PortKey{NetnsCookie: s.cookie, Ifindex: uint32(idx)}); err != nil {
			a.log.Debug("delete port counters", "netns", s.label, "ifindex", idx, "err", err)
			continue
		}
		p.base = bpf.PortStats{}
	}
}

// keepRelabelledLocked is for an attached port whose labels change (the
// interface renamed, its namespace's label changed). A series with kept
// counts of gone ports must go on where it was, not take in a history
// counted under other labels:
//   - if the old labels have kept counts, their series showed them plus
//     the port's: what the port counted under them is kept there too, so
//     the series stays (and retires as any other);
//   - if the new labels have kept counts, their series goes on from them:
//     the port's counts so far become its base, and only what it counts
//     from now adds to the series (also when it comes back to labels it
//     left counts under, which would otherwise count them twice).
//
// A new series (no kept counts under the new labels) starts with the
// port's whole counts, as a renamed interface's kernel counters do.
// Callers hold a.mu.
func (a *Agent) keepRelabelledLocked(s *nsState, idx int, p *portState, old portLabel) {
	cur := portLabel{s.label, p.link.Name}
	if p.att == nil || old == cur {
		return
	}
	k := bpf.PortKey{NetnsCookie: s.cookie, Ifindex: uint32(idx)}
	st, ok, err := a.dp.Port(k)
	if err != nil {
		a.log.Warn("read the counts of a relabelled port; its series may jump", "netns", cur.netns, "interface", cur.ifname, "err", err)
		return
	}
	if !ok {
		st = bpf.PortStats{} // nothing counted yet
	}
	now := time.Now()
	if a.gonePorts[old] != nil {
		a.retainPortLocked(old, p.since(st), now)
	}
	if a.gonePorts[cur] != nil {
		p.base = st
	} else {
		p.base = bpf.PortStats{}
	}
	a.gonePortsDirty = true // the port's labels and base
}

// since is what the port counted toward its current series: its counts
// st less its base.
func (p *portState) since(st bpf.PortStats) bpf.PortStats {
	subStats(&st, &p.base)
	return st
}

// covers reports whether every count of s is at least o's.
func covers(s, o *bpf.PortStats) bool {
	for d := range s.C {
		for f := range s.C[d] {
			for l := range s.C[d][f] {
				c, oc := s.C[d][f][l], o.C[d][f][l]
				if c.Packets < oc.Packets || c.Segments < oc.Segments || c.Bytes < oc.Bytes {
					return false
				}
			}
		}
	}
	return true
}

// subStats takes o's counts out of s (never below zero).
func subStats(s, o *bpf.PortStats) {
	for d := range s.C {
		for f := range s.C[d] {
			for l := range s.C[d][f] {
				c, oc := &s.C[d][f][l], o.C[d][f][l]
				c.Packets -= min(c.Packets, oc.Packets)
				c.Segments -= min(c.Segments, oc.Segments)
				c.Bytes -= min(c.Bytes, oc.Bytes)
			}
		}
	}
}

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

// portLabelEntry is the key, labels and base of a port whose counters
// the agent keeps (attached, or with a base: see stashGonePortsLocked) as
// the state file keeps them: an interface deleted while the agent is down
// is one it never sees go, and its next start keeps its counts under
// these labels.
type portLabelEntry struct {
	Cookie           uint64
	Ifindex          uint32
	Netns, Interface string
	// Base is the port's base (portState.base), when it has one.
	Base *bpf.PortStats `json:",omitempty"`
	// Unread: a port retired while its last counts could not be read
	// (see retryUnreadLocked); the next start keeps them as it would.
	Unread bool `json:",omitempty"`
}

// startPort is a port's labels and base, as the last save before this
// start had them, or as the agent keeps them for counters whose port
// state it dropped (keptBases).
type startPort struct {
	label  portLabel
	base   bpf.PortStats
	unread bool
}

// stashGonePortsLocked copies the kept counts, and the labels and bases
// of the attached ports (and of counters whose kept counts hold their
// counts: see keptBases), into the state for its next save. Callers hold
// a.mu (write) and book.mu.
func (a *Agent) stashGonePortsLocked() {
	out := make([]gonePortEntry, 0, len(a.gonePorts))
	for l, g := range a.gonePorts {
		out = append(out, gonePortEntry{Netns: l.netns, Interface: l.ifname, Stats: g.stats, At: g.at})
	}
	a.book.st.GonePorts = out
	var labels []portLabelEntry
	entry := func(k bpf.PortKey, l portLabel, base bpf.PortStats) portLabelEntry {
		e := portLabelEntry{Cookie: k.NetnsCookie, Ifindex: k.Ifindex, Netns: l.netns, Interface: l.ifname}
		if base != (bpf.PortStats{}) {
			e.Base = &base // a copy: saves until the next stash must not see later bases
		}
		return e
	}
	for _, s := range a.byInode {
		for idx, p := range s.links {
			k := bpf.PortKey{NetnsCookie: s.cookie, Ifindex: uint32(idx)}
			// A detached port with a base has counters its kept counts
			// hold: the next start must not count them again. Counters
			// that wait for an unread port's read are that port's.
			if (p.att != nil || p.base != (bpf.PortStats{})) && !a.lingering[k].unread {
				labels = append(labels, entry(k, portLabel{s.label, p.link.Name}, p.base))
			}
		}
	}
	for k, lp := range a.lingering {
		e := entry(k, lp.label, lp.p.base)
		e.Unread = lp.unread
		labels = append(labels, e)
	}
	for k, kb := range a.keptBases {
		if _, lingers := a.lingering[k]; lingers {
			continue
		}
		if p := a.portStateLocked(k); p == nil || (p.att == nil && p.base == (bpf.PortStats{})) {
			labels = append(labels, entry(k, kb.label, kb.base))
		}
	}
	a.book.st.PortLabels = labels
	a.gonePortsDirty = false
}

// startPortsOf is the ports the state file had when it was saved.
func startPortsOf(entries []portLabelEntry) map[bpf.PortKey]startPort {
	out := make(map[bpf.PortKey]startPort, len(entries))
	for _, e := range entries {
		sp := startPort{label: portLabel{e.Netns, e.Interface}, unread: e.Unread}
		if e.Base != nil {
			sp.base = *e.Base
		}
		k := bpf.PortKey{NetnsCookie: e.Cookie, Ifindex: e.Ifindex}
		if out[k].unread {
			continue // the counters are the unread port's
		}
		out[k] = sp
	}
	return out
}

// settleBaseLocked gives a port that was just attached the base its
// counters have: the one saved before a restart, or kept when its port
// state was dropped while its counters could not be deleted (keptBases),
// so that its series goes on where it was; a port that took other labels
// meanwhile is relabelled from those. A base its counters do not cover
// belongs to counters that were deleted since (the pins lost, a later
// delete that worked): they began anew, and so does the base, or the
// series would stand still. Callers hold a.mu.
func (a *Agent) settleBaseLocked(s *nsState, idx int, p *portState) {
	k := bpf.PortKey{NetnsCookie: s.cookie, Ifindex: uint32(idx)}
	st, ok, err := a.readPort(k)
	if err != nil {
		// Unread, a kept base is taken as it is: a count shown twice
		// would be worse than one that waits.
		a.log.Debug("read the counts of an attached port", "netns", s.label, "interface", p.link.Name, "err", err)
		if kb, found := a.keptBases[k]; found && p.base == (bpf.PortStats{}) {
			delete(a.keptBases, k)
			p.base = kb.base
		}
		return
	}
	if !ok {
		st = bpf.PortStats{}
	}
	if a.settleUnreadLocked(k, st, p, time.Now()) {
		return
	}
	if kb, found := a.keptBases[k]; found {
		delete(a.keptBases, k)
		if p.base == (bpf.PortStats{}) && covers(&st, &kb.base) {
			p.base = kb.base
			a.keepRelabelledLocked(s, idx, p, kb.label)
			return
		}
	}
	if !covers(&st, &p.base) {
		p.base = bpf.PortStats{}
	}
}

// dropCountersLocked deletes a port's counters once what they counted is
// kept (kept: its counts at the time, or zero if none were read) and
// saved: while kept counts wait for a save, the counters wait too
// (awaitSave, deleted by drainAwaitSaveLocked after the save), since a
// crash in between would lose them. Until the counters are deleted, kept
// is their base (setBaseLocked), so that no series shows those counts
// again if the counters are reused (an attach of the same port, a
// restart). Callers hold a.mu (write).
func (a *Agent) dropCountersLocked(k bpf.PortKey, p *portState, label portLabel, kept bpf.PortStats) {
	if a.lingering[k].unread {
		return // they hold an unread port's counts: retryUnreadLocked
	}
	// What they counted is kept now: the first pass must not keep it
	// again as a port of the last run's (retireStartPortsLocked).
	delete(a.startPorts, k)
	if a.gonePortsDirty {
		a.setBaseLocked(k, p, label, kept)
		a.awaitSave[k] = startPort{label: label, base: kept}
		return
	}
	if err := a.deletePort(k); err != nil {
		a.log.Debug("delete port counters", "netns", label.netns, "interface", label.ifname, "err", err)
		a.setBaseLocked(k, p, label, kept)
		a.gonePortsDirty = true // the base is saved
		return
	}
	delete(a.keptBases, k)
	if p != nil {
		p.base = bpf.PortStats{}
	}
}

// setBaseLocked makes kept the base of k's counters: the port's, while
// its state is the one at k, else in keptBases under its last labels.
func (a *Agent) setBaseLocked(k bpf.PortKey, p *portState, label portLabel, kept bpf.PortStats) {
	if kept == (bpf.PortStats{}) {
		return
	}
	if cur := a.portStateLocked(k); cur != nil && (cur == p || p == nil) {
		cur.base = kept
		return
	}
	a.keptBases[k] = startPort{label: label, base: kept}
}

// portStateLocked is the port state at k, or nil.
func (a *Agent) portStateLocked(k bpf.PortKey) *portState {
	if s := a.byCookie[k.NetnsCookie]; s != nil {
		return s.links[int(k.Ifindex)]
	}
	return nil
}

// baseLocked is what of k's counters st a series must not show: the
// base of its port state p (if any), or a kept one its counters cover.
func (a *Agent) baseLocked(k bpf.PortKey, p *portState, st *bpf.PortStats) bpf.PortStats {
	if p != nil && p.base != (bpf.PortStats{}) {
		return p.base
	}
	if kb, ok := a.keptBases[k]; ok && covers(st, &kb.base) {
		return kb.base
	}
	return bpf.PortStats{}
}

// retireStartPortsLocked keeps, under their labels, the counts (less
// their bases) of the ports the state file had that are not attached now
// (deleted while the agent was down, or no longer watched), then deletes
// their counters (dropCountersLocked); once, at the first pass. Callers
// hold a.mu.
func (a *Agent) retireStartPortsLocked(now time.Time) {
	for k, sp := range a.startPorts {
		if a.portLiveLocked(k) {
			continue
		}
		delete(a.keptBases, k)
		var kept bpf.PortStats
		st, ok, err := a.readPort(k)
		if err != nil {
			a.log.Warn("read the counts of a port of the last run; trying again at each eviction pass", "netns", sp.label.netns, "interface", sp.label.ifname, "err", err)
			a.lingerUnreadLocked(k, lingerPort{label: sp.label, p: &portState{base: sp.base}, unread: true})
			continue
		}
		if !ok {
			st = bpf.PortStats{}
		}
		if a.settleUnreadLocked(k, st, nil, now) {
			a.dropCountersLocked(k, a.portStateLocked(k), sp.label, st)
			continue
		}
		if ok {
			kept = st
			if covers(&st, &sp.base) {
				subStats(&st, &sp.base)
			}
			if st != (bpf.PortStats{}) {
				a.retainPortLocked(sp.label, st, now)
			}
		}
		a.dropCountersLocked(k, a.portStateLocked(k), sp.label, kept)
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
	for _, lp := range a.lingering {
		live[lp.label] = true // its series shows its counters
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
	kept := make(map[int]bpf.PortStats, len(ports))
	for idx, p := range ports {
		p.att = nil
		k := bpf.PortKey{NetnsCookie: s.cookie, Ifindex: uint32(idx)}
		label := portLabel{s.label, p.link.Name}
		st, ok, err := a.readPort(k)
		if err != nil {
			// Deleted unread, its counts would be lost: the port
			// lingers until a pass reads them (retryUnreadLocked).
			a.log.Warn("read the last counts of a port; trying again at each eviction pass", "netns", s.label, "interface", p.link.Name, "err", err)
			// Its base as of now: the port may come back and change its own.
			a.lingerUnreadLocked(k, lingerPort{label: label, p: &portState{base: p.base}, unread: true})
			continue
		}
		if !ok {
			st = bpf.PortStats{} // nothing counted
		}
		if !a.settleUnreadLocked(k, st, p, time.Now()) && ok {
			a.retainPortLocked(label, p.since(st), time.Now())
		}
		kept[idx] = st
	}
	a.saveGonePortsLocked()
	for idx, p := range ports {
		if _, read := kept[idx]; !read {
			continue
		}
		// Unsaved (a.gonePortsDirty), the counters wait for a save.
		a.dropCountersLocked(bpf.PortKey{NetnsCookie: s.cookie, Ifindex: uint32(idx)}, p, portLabel{s.label, p.link.Name}, kept[idx])
	}
}

// retryUnreadLocked retires the ports whose last counts could not be read
// (lingering, unread) once a read works. A port attached at the same index
// meanwhile, whose attach could not read them either, counts in the same
// counters: what they hold when read is kept under the unread port's
// labels (its series showed it), and the attached port's series starts
// from there. Callers hold a.mu (write).
func (a *Agent) retryUnreadLocked(now time.Time) {
	for k, lp := range a.lingering {
		if !lp.unread {
			continue
		}
		cur := a.portStateLocked(k)
		if cur != nil && cur.attaching || a.detachPendingAt(k) {
			// Its attach reads them (settleBaseLocked); or programs
			// still count into them, and the retire after their
			// detach does (retryDetaches).
			continue
		}
		st, ok, err := a.readPort(k)
		if err != nil {
			a.log.Debug("read the last counts of a port, again", "netns", lp.label.netns, "interface", lp.label.ifname, "err", err)
			continue
		}
		if !ok {
			st = bpf.PortStats{} // nothing counted
		}
		a.settleUnreadLocked(k, st, cur, now)
		if cur == nil || cur.att == nil {
			a.dropCountersLocked(k, cur, lp.label, st)
		}
	}
}

// lingerUnreadLocked keeps the counters at k, which could not be read as
// their port was retired, for retryUnreadLocked. Counters another entry
// lingers on already stay that entry's: its series shows them.
func (a *Agent) lingerUnreadLocked(k bpf.PortKey, lp lingerPort) {
	if _, ok := a.lingering[k]; !ok {
		a.lingering[k] = lp
		a.gonePortsDirty = true // its labels, for a restart
	}
}

// settleUnreadLocked is for every read of the counters at k that works
// (st): if a retired port's last counts wait there for one (an unread
// lingering entry), they are kept under its labels now, and the port
// state p, if any, counts on from st. It reports whether it did, in
// which case st is accounted for.
func (a *Agent) settleUnreadLocked(k bpf.PortKey, st bpf.PortStats, p *portState, now time.Time) bool {
	lp, ok := a.lingering[k]
	if !ok || !lp.unread {
		return false
	}
	delete(a.lingering, k)
	a.retainUnreadLocked(k, lp, st, now)
	delete(a.keptBases, k)
	if p != nil {
		p.base = st
	}
	a.gonePortsDirty = true
	return true
}

// retainUnreadLocked keeps what a port retired unread counted (its
// counters st, less its base, unless they were deleted since the base
// was set and do not cover it) under its labels.
func (a *Agent) retainUnreadLocked(k bpf.PortKey, lp lingerPort, st bpf.PortStats, now time.Time) {
	if base := a.baseLocked(k, lp.p, &st); covers(&st, &base) {
		subStats(&st, &base)
	}
	if st != (bpf.PortStats{}) {
		a.retainPortLocked(lp.label, st, now)
	}
}

// saveGonePortsLocked saves the kept counts, port labels and bases if
// they changed (a failed save is tried again at the next pass), then
// deletes the counters that waited for it. Callers hold a.mu (write).
func (a *Agent) saveGonePortsLocked() {
	if a.gonePortsDirty {
		a.book.mu.Lock()
		a.stashGonePortsLocked()
		err := a.book.st.save()
		a.book.mu.Unlock()
		if err != nil {
			a.log.Error("save the last counts of deleted ports", "err", err)
			a.gonePortsDirty = true
		}
	}
	if !a.gonePortsDirty {
		a.drainAwaitSaveLocked()
	}
}

// drainAwaitSaveLocked deletes the counters that waited for their kept
// counts to be saved, once they are, unless the port is attached again
// and counts on in them; and forgets the bases of counters that are
// gone. Callers hold a.mu (write), after a save.
func (a *Agent) drainAwaitSaveLocked() {
	for k, w := range a.awaitSave {
		delete(a.awaitSave, k)
		if a.portLiveLocked(k) {
			continue
		}
		a.dropCountersLocked(k, a.portStateLocked(k), w.label, w.base)
	}
	for k := range a.keptBases {
		if _, ok, err := a.readPort(k); err == nil && !ok && !a.portLiveLocked(k) {
			delete(a.keptBases, k)
		}
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
// port's counts less its base, as a renamed interface's kernel counters
// do: its whole counts, unless some are kept elsewhere already.
// Callers hold a.mu.
func (a *Agent) keepRelabelledLocked(s *nsState, idx int, p *portState, old portLabel) {
	cur := portLabel{s.label, p.link.Name}
	if p.att == nil || old == cur {
		return
	}
	k := bpf.PortKey{NetnsCookie: s.cookie, Ifindex: uint32(idx)}
	st, ok, err := a.readPort(k)
	if err != nil {
		a.log.Warn("read the counts of a relabelled port; its series may jump", "netns", cur.netns, "interface", cur.ifname, "err", err)
		return
	}
	if !ok {
		st = bpf.PortStats{} // nothing counted yet
	}
	now := time.Now()
	if a.settleUnreadLocked(k, st, p, now) {
		return // its series starts from here
	}
	if a.gonePorts[old] != nil {
		a.retainPortLocked(old, p.since(st), now)
	}
	if a.gonePorts[cur] != nil {
		p.base = st
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

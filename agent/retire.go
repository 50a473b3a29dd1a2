package agent

import "time"

// DefaultGoneRetention is how long the series of a removed namespace stay.
const DefaultGoneRetention = 5 * time.Minute

// retire drops the series of namespaces gone for longer than the
// retention: a pair's totals, its port series and slots, and the
// violations that name such a namespace. Without it, every namespace a
// host ever had would stay in /metrics and in the state file. A dropped
// series ends as any series of a vanished target does; a namespace that
// comes back under the same label starts its series anew.
func (a *Agent) retire(now time.Time, folded ...string) {
	if a.cfg.GoneRetention < 0 {
		return
	}
	a.mu.RLock()
	defer a.mu.RUnlock()
	b := a.book
	b.mu.Lock()
	defer b.mu.Unlock()

	live := map[string]bool{UnknownNetns: true}
	for _, s := range a.byInode {
		live[s.label] = true
	}
	for _, g := range a.gone { // records not folded yet
		live[g.label] = true
	}
	for _, l := range folded { // folded in this pass
		live[l] = true
	}
	// A label's clock starts at the first pass that finds it gone.
	expired := map[string]bool{}
	seen := map[string]bool{}
	check := func(label string) {
		if live[label] || seen[label] {
			return
		}
		seen[label] = true
		since, ok := b.goneSince[label]
		if !ok {
			b.goneSince[label] = now
		} else if now.Sub(since) >= a.cfg.GoneRetention {
			expired[label] = true
		}
	}
	for k := range b.st.Pairs {
		check(k.Src)
		check(k.Dst)
	}
	for k := range b.st.Violations {
		check(k[0])
		check(k[1])
	}
	for label := range b.goneSince {
		if !seen[label] { // live again, or nothing left to drop
			delete(b.goneSince, label)
		}
	}
	// A record that may still count toward a label keeps it until the
	// record is folded, or dropping the series would restart it: a live
	// record's decision, one restored after a restart and not yet taken
	// up, and one whose eviction is not finished.
	keep := func(counted bool, pair pairKey, violation *[2]string) {
		if counted {
			delete(expired, pair.Src)
			delete(expired, pair.Dst)
		}
		if violation != nil {
			delete(expired, violation[0])
			delete(expired, violation[1])
		}
	}
	for _, d := range b.decisions {
		keep(d.counted, d.pair, d.violation)
	}
	for _, d := range b.restored {
		keep(d.Counted, d.Pair, d.Violation)
	}
	for _, f := range b.st.Inflight {
		keep(f.Counted, f.Pair, f.Violation)
	}
	if len(expired) == 0 {
		return
	}
	for k := range b.st.Pairs {
		if expired[k.Src] || expired[k.Dst] {
			delete(b.st.Pairs, k)
			delete(b.st.Slots, k)
		}
	}
	for k := range b.st.Ports {
		if expired[k.Src] || expired[k.Dst] {
			delete(b.st.Ports, k)
		}
	}
	for k := range b.st.Violations {
		if expired[k[0]] || expired[k[1]] {
			delete(b.st.Violations, k)
		}
	}
	for label := range expired {
		delete(b.goneSince, label)
	}
	if err := b.st.save(); err != nil {
		a.log.Error("retire the series of removed namespaces: save state", "err", err)
	}
}

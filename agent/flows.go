package agent

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"time"

	"github.com/nsflow/nsflow/bpf"
	"github.com/nsflow/nsflow/collector"
	"golang.org/x/sys/unix"
)

// errNotReady is a scrape before the initial discovery is done: flow
// records cannot be attributed yet, and attributing them wrongly would make
// counters jump between series.
var errNotReady = noData("initial discovery not done yet")

// errStopped is a scrape after the agent stopped and closed its maps.
var errStopped = noData("agent stopped")

// noData is an error of the normal course of things: collector.ErrNoData.
type noData string

func (e noData) Error() string        { return string(e) }
func (e noData) Is(target error) bool { return target == collector.ErrNoData }

// uncountedIdle is the idle time after which a record that counts toward
// nothing (a bridge port in transit, multicast flooded to every port) is
// evicted: a thousand namespaces on a bridge flood tens of thousands of
// such records at link-up, and every scrape walks the table.
const uncountedIdle = uint64(5 * time.Second)

// summaryTTL lets the collectors of one scrape share one table walk.
const summaryTTL = 200 * time.Millisecond

// Flows implements collector.Source: pair totals are the folded counts
// of evicted records plus the live records counted by the attribution
// rule.
func (a *Agent) Flows() (*collector.FlowSummary, error) {
	if !a.Ready() {
		return nil, errNotReady
	}
	a.sumMu.Lock()
	defer a.sumMu.Unlock()
	// While an eviction pass holds the tables, the last summary (taken
	// before it, so still consistent) answers rather than waiting.
	if a.sum != nil && (time.Since(a.sumAt) < summaryTTL || a.evicting.Load()) {
		return a.sum, nil
	}
	sum, err := a.summarize()
	if err != nil {
		return nil, err
	}
	a.sum, a.sumAt = sum, time.Now()
	return sum, nil
}

// topKey labels a series of nsflow_top_flow_bytes_total. Records that
// share it (two records of one 5-tuple on two ports of a namespace
// recreated under its name) are one series: Prometheus refuses two
// series with one label set.
type topKey struct {
	pair             pairKey
	src, dst         netip.Addr
	srcPort, dstPort uint16
	ports            bool // TCP, UDP and SCTP ports; ICMP type and code
}

func topKeyOf(k bpf.FlowKey, d *decision) topKey {
	t := topKey{pair: d.pair, src: k.Src, dst: k.Dst}
	// The datapath reads a type and code only for ICMP over IPv4 and
	// ICMPv6 over IPv6.
	icmp := k.Proto == unix.IPPROTO_ICMP && k.Src.Is4() || k.Proto == unix.IPPROTO_ICMPV6 && k.Src.Is6()
	if hasPorts(k.Proto) || icmp && k.SrcPort != bpf.ICMPUnknown {
		t.srcPort, t.dstPort, t.ports = k.SrcPort, k.DstPort, true
	}
	return t
}

type liveFlow struct {
	k     topKey
	bytes uint64
}

func (a *Agent) summarize() (*collector.FlowSummary, error) {
	now := time.Now()
	a.mu.RLock()
	defer a.mu.RUnlock()
	if a.stopped {
		return nil, errStopped
	}
	b := a.book
	b.mu.Lock()
	defer b.mu.Unlock()

	pairs := make(map[pairKey]counter, len(b.st.Pairs))
	for k, c := range b.st.Pairs {
		pairs[k] = c
	}
	ports := make(map[portPairKey]counter, len(b.st.Ports))
	for k, c := range b.st.Ports {
		ports[k] = c
	}
	viol := make(map[[2]string]uint64, len(b.st.Violations))
	for k, v := range b.st.Violations {
		viol[k] = v
	}
	topBytes := map[topKey]uint64{}
	entries := 0
	inflight := b.inflightLocked()
	err := a.dp.Flows(func(k bpf.FlowKey, s bpf.FlowStats) bool {
		entries++
		recordBytes := s.Bytes // the top flows show the record whole
		var d *decision
		if i, ok := inflight[k]; ok && b.st.Inflight[i].sameRecord(s) {
			f := b.st.Inflight[i]
			// Folded by an eviction whose delete failed: its counts are
			// in the totals already, and the next pass folds only what
			// it gained since.
			s.Packets, s.Bytes = s.Packets-f.Packets, s.Bytes-f.Bytes
			d = &decision{counted: f.Counted, pair: f.Pair, port: f.Port, violation: f.Violation}
		} else {
			d = a.decideLocked(k, s, now, false)
		}
		if d != nil && d.violation != nil {
			viol[*d.violation] += s.Packets
		}
		if d == nil || !d.counted {
			return true
		}
		c := pairs[d.pair]
		c.add(s.Packets, s.Bytes)
		pairs[d.pair] = c
		pk := portPairKey{d.pair, d.port}
		pc := ports[pk]
		pc.add(s.Packets, s.Bytes)
		ports[pk] = pc
		if a.cfg.TopFlows > 0 {
			// The record's own bytes, not what it gained since a fold
			// whose delete failed: its series must not drop to that.
			topBytes[topKeyOf(k, d)] += recordBytes
		}
		return true
	})
	if err != nil {
		return nil, err
	}
	b.walkedLocked()
	// What a scrape shows is saved first, or a restart could count it
	// toward other series: unsaved, the flow metrics are withheld (their
	// collectors report failure) and the next scrape tries again.
	var cerr *compactError
	if err := b.persistLocked(); errors.As(err, &cerr) {
		a.log.Warn("compact the decisions journal", "err", err)
	} else if err != nil {
		return nil, fmt.Errorf("save new decisions and port slots: %w", err)
	}
	overflow, err := a.dp.FlowOverflow()
	if err != nil {
		return nil, err
	}

	sum := &collector.FlowSummary{Table: collector.FlowTableSample{
		Entries: entries, Capacity: a.dp.FlowCapacity(), Evictions: b.st.Evictions, OverflowPackets: overflow,
	}}
	for k, c := range pairs {
		sum.Pairs = append(sum.Pairs, collector.PairSample{Src: k.Src, Dst: k.Dst, Protocol: k.Protocol, Bytes: c.Bytes, Packets: c.Packets})
	}
	for k, c := range ports {
		sum.PortPairs = append(sum.PortPairs, collector.PortPairSample{Src: k.Src, Dst: k.Dst, Protocol: k.Protocol, Port: k.Port, Bytes: c.Bytes, Packets: c.Packets})
	}
	for k, v := range viol {
		sum.Violations = append(sum.Violations, collector.Violation{Src: k[0], Dst: k[1], Packets: v})
	}
	var top []liveFlow
	for k, b := range topBytes {
		top = keepTop(top, liveFlow{k, b}, a.cfg.TopFlows)
	}
	for _, f := range top {
		t := collector.TopFlowSample{Src: f.k.pair.Src, Dst: f.k.pair.Dst, Protocol: f.k.pair.Protocol,
			SrcAddr: f.k.src.String(), DstAddr: f.k.dst.String(), Bytes: f.bytes}
		if f.k.ports {
			t.SrcPort, t.DstPort = strconv.Itoa(int(f.k.srcPort)), strconv.Itoa(int(f.k.dstPort))
		}
		sum.Top = append(sum.Top, t)
	}
	return sum, nil
}

// keepTop keeps the n largest flows by bytes, sorted descending; n is
// small (tens), so insertion into a sorted slice is cheapest.
func keepTop(top []liveFlow, f liveFlow, n int) []liveFlow {
	if n == 0 || (len(top) == n && f.bytes <= top[n-1].bytes) {
		return top
	}
	i, _ := slices.BinarySearchFunc(top, f, func(x, y liveFlow) int { return cmp.Compare(y.bytes, x.bytes) })
	top = slices.Insert(top, i, f)
	if len(top) > n {
		top = top[:n]
	}
	return top
}

// evict removes from the kernel table the records that are idle or whose
// port is gone, after folding their counts into the saved totals; it also
// drops the port counters of ports that no longer exist.
func (a *Agent) evict() {
	a.retryDetaches()
	a.mu.Lock()
	gone := slices.Collect(maps.Keys(a.gone))
	a.pruneDroppedLocked(monotonicNow())
	dropped := len(a.dropped) > 0
	a.mu.Unlock()
	a.evicting.Store(true)
	ok := a.evictPass(len(gone) > 0 || dropped)
	if !ok {
		// The kept counts' retention runs on while passes fail.
		a.mu.Lock()
		a.retryUnreadLocked(time.Now())
		a.retirePortsLocked(time.Now())
		a.saveGonePortsLocked()
		a.mu.Unlock()
		a.evicting.Store(false)
		return
	}
	// The records of namespaces removed before this pass are folded now:
	// their labels are no longer needed. They count as live in this
	// pass's retire, which starts their retention from now: a label
	// reused by a namespace that came and went between two passes would
	// otherwise run on the clock of its earlier holder, and its totals,
	// just folded, could be dropped at once.
	a.mu.Lock()
	folded := make([]string, 0, len(gone))
	for _, c := range gone {
		if g, ok := a.gone[c]; ok {
			folded = append(folded, g.label)
		}
		delete(a.gone, c)
	}
	a.mu.Unlock()
	now := time.Now()
	a.retire(now, folded...)
	a.mu.Lock()
	a.retireStartPortsLocked(now)
	a.retryUnreadLocked(now)
	a.retirePortsLocked(now)
	a.saveGonePortsLocked()
	a.mu.Unlock()
	// The cached summary still adds up (it predates the eviction), but
	// the next scrape should see the smaller table. sumMu is taken only
	// after a.mu and book.mu are released: Flows takes it first.
	a.sumMu.Lock()
	a.sum = nil
	a.evicting.Store(false)
	a.sumMu.Unlock()
}

// evictPass does the eviction under a.mu (read) and book.mu; false when it
// could not complete. With decideAll, every record is decided, also those
// that stay: the pass is the last to know the removed namespaces.
func (a *Agent) evictPass(decideAll bool) bool {
	now := time.Now()
	mono := monotonicNow()
	idle := uint64(a.cfg.FlowIdleTimeout.Nanoseconds())

	a.mu.RLock()
	defer a.mu.RUnlock()
	b := a.book
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.recoverLocked(a.dp, a.deleteFlows); err != nil {
		a.log.Error("eviction: settle the records of a failed delete", "err", err)
		return false
	}

	var victims []inflightFlow
	err := a.dp.Flows(func(k bpf.FlowKey, s bpf.FlowStats) bool {
		live := a.portLiveLocked(k.Port())
		idleFor := mono - min(s.LastSeen, mono)
		if live && idleFor < min(uncountedIdle, idle) {
			if decideAll {
				a.decideLocked(k, s, now, false)
			}
			return true
		}
		// A record that leaves now (its port is gone, or it idled out) is
		// decided for good: there is no later pass to wait for.
		final := !live || idleFor >= idle
		d := a.decideLocked(k, s, now, final)
		if d == nil || (!final && (d.counted || d.violation != nil)) {
			return true
		}
		victims = append(victims, inflightFlow{Key: k, ID: s.ID, Packets: s.Packets, Bytes: s.Bytes,
			Counted: d.counted, Pair: d.pair, Port: d.port, Violation: d.violation})
		return true
	})
	if err != nil {
		a.log.Error("eviction: read flows", "err", err)
		return false
	}
	if decideAll {
		// Before the removed namespaces are forgotten, so that a restart
		// takes these decisions rather than making them without them.
		if err := b.persistLocked(); err != nil {
			a.log.Error("eviction: save decisions", "err", err)
		}
	}
	if len(victims) == 0 {
		a.dropStalePortsLocked()
		return true
	}
	// Only records that count toward something need the save-then-delete
	// protocol; the rest (transit, multicast floods) are simply deleted.
	var folded []inflightFlow
	for _, v := range victims {
		if v.Counted || v.Violation != nil {
			folded = append(folded, v)
		}
	}
	for _, v := range folded {
		if v.Counted {
			b.fold(v.Pair, v.Port, v.Packets, v.Bytes)
		}
		if v.Violation != nil {
			b.st.Violations[*v.Violation] += v.Packets
		}
	}
	// Saved before the delete, so that a crash in between can only count
	// an eviction twice, never lose one.
	b.st.Evictions += uint64(len(victims))
	b.st.Inflight = folded
	if err := b.st.save(); err != nil {
		// Without the saved totals a restart would lose these counts:
		// undo and keep the records in the kernel.
		a.log.Error("eviction: save state", "err", err)
		for _, v := range folded {
			if v.Counted {
				b.unfold(v.Pair, v.Port, v.Packets, v.Bytes)
			}
			if v.Violation != nil {
				b.st.Violations[*v.Violation] -= v.Packets
			}
		}
		b.st.Evictions -= uint64(len(victims))
		b.st.Inflight = nil
		return false
	}
	keys := make([]bpf.FlowKey, len(victims))
	for i, v := range victims {
		keys[i] = v.Key
		delete(b.decisions, v.Key)
	}
	if _, err := a.deleteFlows(keys); err != nil {
		// The saved Inflight list stays: the next pass (or a restart)
		// folds only what these records gained since, then deletes them,
		// so nothing is folded twice.
		a.log.Error("eviction: delete flows", "err", err)
		a.dropStalePortsLocked()
		return true
	}
	if len(folded) > 0 {
		b.st.Inflight = nil
		if err := b.st.save(); err != nil {
			a.log.Error("eviction: save state", "err", err)
		}
	}
	a.dropStalePortsLocked()
	return true
}

func (b *flowBook) unfold(p pairKey, port string, packets, bytes uint64) {
	c := b.st.Pairs[p]
	c.Packets -= packets
	c.Bytes -= bytes
	b.st.Pairs[p] = c
	pk := portPairKey{p, port}
	pc := b.st.Ports[pk]
	pc.Packets -= packets
	pc.Bytes -= bytes
	b.st.Ports[pk] = pc
}

// portLiveLocked reports whether a port is an existing interface that is
// attached or being attached (the kernel may count before the attach
// result reaches the event loop).
func (a *Agent) portLiveLocked(k bpf.PortKey) bool {
	s := a.byCookie[k.NetnsCookie]
	if s == nil {
		return false
	}
	p := s.links[int(k.Ifindex)]
	return p != nil && (p.att != nil || p.attaching)
}

// dropStalePortsLocked deletes port counters (and so their pinned
// entries) of interfaces that are gone or no longer watched, e.g. after
// the agent was down while they vanished.
func (a *Agent) dropStalePortsLocked() {
	ports, err := a.dp.Ports()
	if err != nil {
		a.log.Error("eviction: read ports", "err", err)
		return
	}
	// A port whose detach failed is still counted: its counts are kept
	// when the detach works (retryDetaches, on this goroutine).
	pending := map[bpf.PortKey]bool{}
	for _, pd := range a.undetached {
		if pd.p != nil {
			pending[bpf.PortKey{NetnsCookie: pd.s.cookie, Ifindex: uint32(pd.idx)}] = true
		}
	}
	for k := range ports {
		// Those: retireStartPortsLocked, retryDetaches, drainAwaitSaveLocked,
		// retryUnreadLocked.
		_, started := a.startPorts[k]
		_, lingers := a.lingering[k]
		if _, waits := a.awaitSave[k]; !a.portLiveLocked(k) && !started && !pending[k] && !waits && !lingers {
			if err := a.deletePort(k); err != nil {
				a.log.Debug("delete stale port", "err", err)
			}
		}
	}
}

// Violations returns the isolation-violation packet counts (folded plus
// live), for nsflow_isolation_violation_packets_total.
func (a *Agent) Violations() ([]collector.Violation, error) {
	sum, err := a.Flows()
	if err != nil {
		return nil, err
	}
	return sum.Violations, nil
}

// monotonicNow is CLOCK_MONOTONIC in nanoseconds: the clock of the flow
// records' times. The call cannot fail with this clock id.
func monotonicNow() uint64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return uint64(ts.Nano())
}

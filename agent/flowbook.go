package agent

import (
	"strconv"
	"sync"
	"time"

	"github.com/nsflow/nsflow/bpf"
)

// ephemeralPorts starts the range clients pick source ports from (Linux
// default 32768-60999): replies go to such ports, which would otherwise
// take the per-pair port slots.
const ephemeralPorts = 32768

// flowBook holds the per-record decisions and what survives evictions and
// restarts: the folded counts of evicted records and the port slots.
type flowBook struct {
	mu        sync.Mutex
	topPorts  int
	decisions map[bpf.FlowKey]*decision
	st        *state
	// restored are the decisions saved by the previous run, until the
	// first full table walk adopts those whose record is still there.
	restored map[bpf.FlowKey]savedDecision
	journal  *decisionJournal
	// Port slots handed out (slotsDirty, in the state file) and records
	// decided (unsaved, for the journal) are saved before a scrape shows
	// them, so that a restart, even after kill -9, hands every port the
	// same series again and counts every record toward the same pair, even
	// if its namespaces went meanwhile.
	slotsDirty bool
	unsaved    []savedDecision
	// goneSince is when a label in the totals was first found to name no
	// namespace (see retire).
	goneSince map[string]time.Time
}

func newFlowBook(cfg Config) (*flowBook, error) {
	st, err := loadState(cfg.PinPath != "", cfg.StateFile)
	if err != nil {
		return nil, err
	}
	j := newDecisionJournal(st.persist, cfg.StateFile)
	saved, err := j.load()
	if err != nil {
		return nil, err
	}
	b := &flowBook{topPorts: cfg.TopPorts, decisions: map[bpf.FlowKey]*decision{}, st: st,
		restored: map[bpf.FlowKey]savedDecision{}, journal: j, goneSince: map[string]time.Time{}}
	for _, d := range saved {
		b.restored[d.Key] = d
	}
	return b, nil
}

func (b *flowBook) settle(k bpf.FlowKey, id uint64, d *decision) *decision {
	d.id = id
	b.decisions[k] = d
	if b.journal.path != "" {
		b.unsaved = append(b.unsaved, savedOf(k, d))
	}
	return d
}

func savedOf(k bpf.FlowKey, d *decision) savedDecision {
	return savedDecision{Key: k, ID: d.id, Counted: d.counted, Pair: d.pair, Port: d.port, Violation: d.violation}
}

// restoredLocked adopts the saved decision of a record, if the previous
// run decided this very record (same key, same id).
func (b *flowBook) restoredLocked(k bpf.FlowKey, id uint64) *decision {
	r, ok := b.restored[k]
	if !ok {
		return nil
	}
	delete(b.restored, k)
	if r.ID != id {
		return nil // a later record with the same key: decide it afresh
	}
	d := &decision{counted: r.Counted, pair: r.Pair, port: r.Port, violation: r.Violation, id: id}
	b.decisions[k] = d
	return d
}

// walkedLocked is called after a walk of the whole table: saved decisions
// not adopted by then belong to records that are gone.
func (b *flowBook) walkedLocked() {
	if len(b.restored) > 0 {
		b.restored = map[bpf.FlowKey]savedDecision{}
	}
}

// persistLocked saves what a scrape is about to show: new port slots in
// the state file, new decisions in the journal, which it compacts when
// entries of evicted records have piled up. A failed compaction loses
// nothing (the journal has every decision): it is a *compactError.
func (b *flowBook) persistLocked() error {
	if b.slotsDirty {
		if err := b.st.save(); err != nil {
			return err
		}
		b.slotsDirty = false
	}
	if err := b.journal.append(b.unsaved); err != nil {
		return err
	}
	b.unsaved = b.unsaved[:0]
	if !b.journal.compactDue(len(b.decisions)) {
		return nil
	}
	ds := make([]savedDecision, 0, len(b.decisions)+len(b.restored))
	for k, d := range b.decisions {
		if d.pendingSince.IsZero() {
			ds = append(ds, savedOf(k, d))
		}
	}
	for _, r := range b.restored {
		ds = append(ds, r)
	}
	if err := b.journal.rewrite(ds); err != nil {
		return &compactError{err}
	}
	return nil
}

// compactError is a journal compaction that failed, after everything
// was saved.
type compactError struct{ err error }

func (e *compactError) Error() string { return "compact: " + e.err.Error() }
func (e *compactError) Unwrap() error { return e.err }

// portBucket returns the destination-port label of a record: its port
// when the pair has (or gets) a slot for it, "other" when the pair's slots
// are taken, "none" for protocols without ports. Slots are never given
// back, so no port's counts ever move to "other" or back.
func (b *flowBook) portBucket(p pairKey, k bpf.FlowKey) string {
	if !hasPorts(k.Proto) {
		return "none"
	}
	port := strconv.Itoa(int(k.DstPort))
	slots := b.st.Slots[p]
	for _, s := range slots {
		if s == port {
			return port
		}
	}
	if len(slots) < b.topPorts && k.DstPort < ephemeralPorts && k.DstPort != 0 {
		b.st.Slots[p] = append(slots, port)
		b.slotsDirty = true
		return port
	}
	return "other"
}

package agent

import (
	"strconv"
	"sync"

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
	// slotsDirty marks port slots handed out but not saved yet; they are
	// saved before a scrape shows them, so a restart (even kill -9) hands
	// every port the same series again.
	slotsDirty bool
}

func newFlowBook(cfg Config) (*flowBook, error) {
	st, err := loadState(cfg.PinPath != "", cfg.StateFile)
	if err != nil {
		return nil, err
	}
	return &flowBook{topPorts: cfg.TopPorts, decisions: map[bpf.FlowKey]*decision{}, st: st}, nil
}

func (b *flowBook) settle(k bpf.FlowKey, d *decision) *decision {
	b.decisions[k] = d
	return d
}

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

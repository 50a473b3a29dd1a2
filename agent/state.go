package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/nsflow/nsflow/bpf"
)

// counter is a packets and bytes pair.
type counter struct {
	Packets, Bytes uint64
}

func (c *counter) add(packets, bytes uint64) {
	c.Packets += packets
	c.Bytes += bytes
}

type portPairKey struct {
	pairKey
	Port string
}

// state is what the kernel maps cannot keep: the counts of evicted flow
// records, the port slots, and the eviction in progress. It is written
// atomically (temp file, fsync, rename) before records leave the kernel,
// so a kill -9 at any point neither loses nor double-counts them.
type state struct {
	path    string
	persist bool
	Pairs   map[pairKey]counter
	Ports   map[portPairKey]counter
	Slots   map[pairKey][]string
	// Violations are the folded isolation-violation packet counts.
	Violations map[[2]string]uint64
	Evictions  uint64
	// Inflight are records folded into Pairs but maybe still in the
	// kernel table (the agent died between saving and deleting them).
	Inflight []inflightFlow
	// GonePorts are the agent's kept last counts of deleted ports
	// (goneports.go), and PortLabels its attached ports' labels, as of the
	// last save.
	GonePorts  []gonePortEntry
	PortLabels []portLabelEntry
}

type inflightFlow struct {
	Key bpf.FlowKey
	// ID is the record's id (0 in state files of older versions, whose
	// records are told apart by their counts only).
	ID             uint64 `json:",omitzero"`
	Packets, Bytes uint64
	Counted        bool
	Pair           pairKey
	Port           string
	Violation      *[2]string `json:",omitempty"`
}

// stateFile is the JSON form (JSON has no struct map keys).
type stateFile struct {
	Version    int              `json:"version"`
	Pairs      []pairCount      `json:"pairs"`
	Ports      []pairCount      `json:"ports"`
	Slots      []slotList       `json:"slots"`
	Violations []violationCount `json:"violations,omitempty"`
	Evictions  uint64           `json:"evictions"`
	Inflight   []inflightFlow   `json:"inflight,omitempty"`
	GonePorts  []gonePortEntry  `json:"gone_ports,omitempty"`
	PortLabels []portLabelEntry `json:"port_labels,omitempty"`
}

type pairCount struct {
	pairKey
	Port string `json:",omitempty"`
	counter
}

type violationCount struct {
	Src, Dst string
	Packets  uint64
}

type slotList struct {
	pairKey
	Ports []string
}

const stateVersion = 1

func newState(path string, persist bool) *state {
	return &state{path: path, persist: persist, Pairs: map[pairKey]counter{},
		Ports: map[portPairKey]counter{}, Slots: map[pairKey][]string{}, Violations: map[[2]string]uint64{}}
}

// loadState reads the state file; a missing file is a fresh start.
func loadState(persist bool, path string) (*state, error) {
	st := newState(path, persist)
	if !persist {
		return st, nil
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return nil, fmt.Errorf("state file: %w", err)
	}
	var f stateFile
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("state file %s: %w (remove it to start the evicted-flow totals over)", path, err)
	}
	if f.Version != stateVersion {
		return nil, fmt.Errorf("state file %s: version %d, want %d (remove it to start over)", path, f.Version, stateVersion)
	}
	for _, p := range f.Pairs {
		st.Pairs[p.pairKey] = p.counter
	}
	for _, p := range f.Ports {
		st.Ports[portPairKey{p.pairKey, p.Port}] = p.counter
	}
	for _, s := range f.Slots {
		st.Slots[s.pairKey] = s.Ports
	}
	for _, v := range f.Violations {
		st.Violations[[2]string{v.Src, v.Dst}] = v.Packets
	}
	st.Evictions, st.Inflight, st.GonePorts, st.PortLabels = f.Evictions, f.Inflight, f.GonePorts, f.PortLabels
	return st, nil
}

func (st *state) save() error {
	if !st.persist {
		return nil
	}
	f := stateFile{Version: stateVersion, Evictions: st.Evictions, Inflight: st.Inflight, GonePorts: st.GonePorts, PortLabels: st.PortLabels}
	for k, c := range st.Pairs {
		f.Pairs = append(f.Pairs, pairCount{pairKey: k, counter: c})
	}
	for k, c := range st.Ports {
		f.Ports = append(f.Ports, pairCount{pairKey: k.pairKey, Port: k.Port, counter: c})
	}
	for k, s := range st.Slots {
		f.Slots = append(f.Slots, slotList{k, s})
	}
	for k, v := range st.Violations {
		f.Violations = append(f.Violations, violationCount{k[0], k[1], v})
	}
	data, err := json.Marshal(f)
	if err != nil {
		return err
	}
	if err := writeAtomic(st.path, data); err != nil {
		return fmt.Errorf("state file: %w", err)
	}
	return nil
}

// writeAtomic replaces path with data: a temp file beside it, synced, then
// renamed over it, so that a crash leaves the old file or the new one,
// never half of either.
func writeAtomic(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+"-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	_, werr := tmp.Write(data)
	if werr == nil {
		werr = tmp.Sync()
	}
	if err := errors.Join(werr, tmp.Close()); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// recover finishes an eviction that a crash or a failed delete
// interrupted: records saved as in flight and still in the table are
// folded for what they gained since and deleted. A record with another id
// (in older state files: smaller than saved) is a new one and stays.
func (b *flowBook) recover(dp *bpf.Datapath) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.recoverLocked(dp, dp.DeleteFlows)
}

// recoverLocked is recover with b.mu held; del deletes records (the
// agent's deleteFlows). What it folds is saved, with the in-flight list
// raised to match, before the delete: a delete that fails again leaves a
// list from which the next attempt folds only what is new.
func (b *flowBook) recoverLocked(dp *bpf.Datapath, del func([]bpf.FlowKey) (int, error)) error {
	if len(b.st.Inflight) == 0 {
		return nil
	}
	at := b.inflightLocked()
	var done []bpf.FlowKey
	err := dp.Flows(func(k bpf.FlowKey, s bpf.FlowStats) bool {
		i, ok := at[k]
		if !ok || !b.st.Inflight[i].sameRecord(s) {
			return true
		}
		f := &b.st.Inflight[i]
		if f.Counted {
			b.fold(f.Pair, f.Port, s.Packets-f.Packets, s.Bytes-f.Bytes)
		}
		if f.Violation != nil {
			b.st.Violations[*f.Violation] += s.Packets - f.Packets
		}
		f.Packets, f.Bytes = s.Packets, s.Bytes
		done = append(done, k)
		return true
	})
	if err != nil {
		return err
	}
	if err := b.st.save(); err != nil {
		return err
	}
	if _, err := del(done); err != nil {
		return err
	}
	b.st.Inflight = nil
	return b.st.save()
}

// sameRecord reports whether s is the record that was folded as f, not a
// later one with the same key.
func (f inflightFlow) sameRecord(s bpf.FlowStats) bool {
	if f.ID != 0 {
		return s.ID == f.ID
	}
	return s.Packets >= f.Packets && s.Bytes >= f.Bytes
}

// inflightLocked indexes, by key, the records folded by an eviction
// whose delete did not happen (yet): their positions in st.Inflight.
func (b *flowBook) inflightLocked() map[bpf.FlowKey]int {
	if len(b.st.Inflight) == 0 {
		return nil
	}
	m := make(map[bpf.FlowKey]int, len(b.st.Inflight))
	for i, f := range b.st.Inflight {
		m[f.Key] = i
	}
	return m
}

func (b *flowBook) fold(p pairKey, port string, packets, bytes uint64) {
	c := b.st.Pairs[p]
	c.add(packets, bytes)
	b.st.Pairs[p] = c
	pk := portPairKey{p, port}
	pc := b.st.Ports[pk]
	pc.add(packets, bytes)
	b.st.Ports[pk] = pc
}

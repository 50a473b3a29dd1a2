package agent

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/nsflow/nsflow/bpf"
	"github.com/nsflow/nsflow/internal/testenv"
	"github.com/nsflow/nsflow/internal/topotest"
)

// TestDecisionJournal: a load sees every appended decision, the later
// entry for a key winning; survives a torn last line, also across a
// second restart; refuses a corrupt
// line before it, naming file and line; and a compaction keeps only what
// it is given.
func TestDecisionJournal(t *testing.T) {
	key := func(port uint16) bpf.FlowKey {
		return bpf.FlowKey{NetnsCookie: 7, Ifindex: 2, Dir: bpf.Ingress, Proto: 17,
			Src: netip.MustParseAddr("198.18.0.1"), Dst: netip.MustParseAddr("198.18.0.2"), SrcPort: 40000, DstPort: port}
	}
	ab := pairKey{"a", "b", "udp"}
	dec := func(port uint16, id uint64) savedDecision {
		return savedDecision{Key: key(port), ID: id, Counted: true, Pair: ab, Port: "53", Violation: &[2]string{"a", "b"}}
	}
	restoredOf := func(t *testing.T, stateFile string) (map[bpf.FlowKey]savedDecision, error) {
		t.Helper()
		b, err := newFlowBook(Config{PinPath: "/unused", StateFile: stateFile})
		if err != nil {
			return nil, err
		}
		return b.restored, nil
	}

	for _, tc := range []struct {
		name    string
		write   func(j *decisionJournal) error
		want    map[uint16]uint64 // port -> id restored
		wantErr string
	}{
		{"none", func(*decisionJournal) error { return nil }, map[uint16]uint64{}, ""},
		{"appends, the later entry winning", func(j *decisionJournal) error {
			return errors.Join(j.append([]savedDecision{dec(53, 1), dec(54, 2)}), j.append([]savedDecision{dec(53, 3)}))
		}, map[uint16]uint64{53: 3, 54: 2}, ""},
		{"torn last line", func(j *decisionJournal) error {
			return errors.Join(j.append([]savedDecision{dec(53, 1)}), appendRaw(j.path, `{"Key":{"NetnsCookie":7`))
		}, map[uint16]uint64{53: 1}, ""},
		{"whole object without its newline", func(j *decisionJournal) error {
			d, err := encodeDecisions([]savedDecision{dec(54, 2)})
			return errors.Join(err, j.append([]savedDecision{dec(53, 1)}), appendRaw(j.path, strings.TrimSuffix(string(d), "\n")))
		}, map[uint16]uint64{53: 1}, ""},
		// A crash's torn line must not spoil the next restart: the first
		// load cuts it off, so what the agent appends then starts a line.
		{"torn last line, loaded, then appended to", func(j *decisionJournal) error {
			if err := errors.Join(j.append([]savedDecision{dec(53, 1)}), appendRaw(j.path, `{"Key":{"NetnsCookie":7`)); err != nil {
				return err
			}
			if _, err := j.load(); err != nil {
				return err
			}
			return j.append([]savedDecision{dec(54, 2)})
		}, map[uint16]uint64{53: 1, 54: 2}, ""},
		{"corrupt line", func(j *decisionJournal) error {
			return errors.Join(j.append([]savedDecision{dec(53, 1)}), appendRaw(j.path, "not json\n"),
				j.append([]savedDecision{dec(54, 2)}))
		}, nil, "line 2"},
		{"compacted", func(j *decisionJournal) error {
			return errors.Join(j.append([]savedDecision{dec(53, 1), dec(54, 2), dec(55, 3)}), j.rewrite([]savedDecision{dec(55, 3)}))
		}, map[uint16]uint64{55: 3}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stateFile := filepath.Join(t.TempDir(), "state.json")
			if err := tc.write(newDecisionJournal(true, stateFile)); err != nil {
				t.Fatal(err)
			}
			got, err := restoredOf(t, stateFile)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), stateFile+".decisions") {
					t.Fatalf("error %v, want one naming %s.decisions and %q", err, stateFile, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tc.want) {
				t.Errorf("restored %d decisions, want %d: %+v", len(got), len(tc.want), got)
			}
			for port, id := range tc.want {
				d, ok := got[key(port)]
				if want := dec(port, id); !ok || d.ID != id || d.Pair != want.Pair || d.Port != want.Port ||
					!d.Counted || d.Violation == nil || *d.Violation != *want.Violation {
					t.Errorf("port %d: restored %+v (found %v), want %+v", port, d, ok, want)
				}
			}
		})
	}
}

// appendRaw appends text to a file as it is, as a crash mid-write or a
// damaged disk might leave it.
func appendRaw(path, text string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(text)
	return errors.Join(err, f.Close())
}

// TestDecisionJournalCompaction: the journal is rewritten with the live
// decisions once evicted records' entries pile up, not before.
func TestDecisionJournalCompaction(t *testing.T) {
	stateFile := filepath.Join(t.TempDir(), "state.json")
	b, err := newFlowBook(Config{PinPath: "/unused", StateFile: stateFile})
	if err != nil {
		t.Fatal(err)
	}
	key := func(i int) bpf.FlowKey {
		return bpf.FlowKey{NetnsCookie: 1, Ifindex: 2, Proto: 17, Src: netip.MustParseAddr("198.18.0.1"),
			Dst: netip.MustParseAddr("198.18.0.2"), SrcPort: uint16(i), DstPort: 53}
	}
	// 5000 records decided and evicted, then 10 live ones.
	for i := range 5000 {
		b.settle(key(i), uint64(i+1), &decision{})
	}
	if err := b.persistLocked(); err != nil {
		t.Fatal(err)
	}
	if b.journal.entries != 5000 {
		t.Fatalf("%d entries after 5000 decisions", b.journal.entries)
	}
	clear(b.decisions)
	for i := range 10 {
		b.settle(key(10000+i), uint64(10000+i), &decision{counted: true, pair: pairKey{"a", "b", "udp"}})
	}
	if err := b.persistLocked(); err != nil {
		t.Fatal(err)
	}
	if b.journal.entries != 10 {
		t.Errorf("%d entries after compaction, want the 10 live ones", b.journal.entries)
	}
	saved, err := newDecisionJournal(true, stateFile).load()
	if err != nil || len(saved) != 10 {
		t.Errorf("journal holds %d decisions (%v), want 10", len(saved), err)
	}
}

// TestDecisionJournalFullDisk: an append that runs out of space part way
// leaves no torn line behind: the next append starts a line of its own,
// and the next start loads every whole decision.
func TestDecisionJournalFullDisk(t *testing.T) {
	testenv.RequireRoot(t)
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=8k"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	dec := func(id uint64) savedDecision {
		return savedDecision{Key: bpf.FlowKey{NetnsCookie: 7, Ifindex: 2, Proto: 17, DstPort: uint16(id),
			Src: netip.MustParseAddr("198.18.0.1"), Dst: netip.MustParseAddr("198.18.0.2")}, ID: id, Counted: true, Pair: pairKey{"a", "b", "udp"}}
	}
	state := filepath.Join(dir, "state.json")
	j := newDecisionJournal(true, state)
	if err := j.append([]savedDecision{dec(1)}); err != nil {
		t.Fatal(err)
	}
	var many []savedDecision
	for id := range uint64(200) { // far more than 8 KB
		many = append(many, dec(100+id))
	}
	if err := j.append(many); err == nil {
		t.Fatal("an append larger than the file system succeeded")
	}
	if err := j.append([]savedDecision{dec(2)}); err != nil {
		t.Fatal(err)
	}
	ds, err := newDecisionJournal(true, state).load()
	if err != nil {
		t.Fatalf("load after a full disk: %v", err)
	}
	if len(ds) != 2 || ds[0].ID != 1 || ds[1].ID != 2 {
		t.Errorf("loaded %d decisions %+v, want ids 1 and 2", len(ds), ds)
	}
}

// TestUnsavedDecisionsWithheld: the attribution of a record is saved
// before a scrape first shows its counts. When it cannot be saved (here
// the journal's path is a directory), the flow collectors fail rather
// than show counts a restart could count elsewhere; once it can, the
// counts appear, whole.
func TestUnsavedDecisionsWithheld(t *testing.T) {
	testenv.RequireRoot(t)
	p := testenv.Name("aj")
	s := topotest.Up(t, parseSpec(t, `
name: journal
namespaces: [{name: a}, {name: b}]
links:
  - endpoints: [{namespace: a, interface: eth0, addresses: [198.18.47.1/30]}, {namespace: b, interface: eth0, addresses: [198.18.47.2/30]}]
`), p)
	pin, state := pins(t)
	r := startAgent(t, p, Config{PinPath: pin, StateFile: state})
	waitReady(t, r)
	journal := state + ".decisions"
	if err := os.Remove(journal); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	if err := os.Mkdir(journal, 0o700); err != nil {
		t.Fatal(err)
	}
	const n = 10
	sendUDP(t, s, p+"a", p+"b", netip.MustParseAddrPort("198.18.47.2:5402"), n, 100)
	series := fmt.Sprintf(`nsflow_netns_flow_packets_total{dst_netns=%q,protocol="udp",src_netns=%q} %d`, p+"b", p+"a", n)
	text := scrape(t, r.url)
	if !strings.Contains(text, `nsflow_scrape_collector_success{collector="netns_flow"} 0`) || strings.Contains(text, "nsflow_netns_flow_packets_total{") {
		t.Errorf("with the journal unwritable, want the flow collector failed and no pair series:\n%s",
			grepLines(text, "nsflow_"))
	}
	if err := os.Remove(journal); err != nil {
		t.Fatal(err)
	}
	text = scrape(t, r.url)
	if !strings.Contains(text, `nsflow_scrape_collector_success{collector="netns_flow"} 1`) || !strings.Contains(text, series) {
		t.Errorf("with the journal writable again, want %s:\n%s", series, grepLines(text, "netns_flow"))
	}
}

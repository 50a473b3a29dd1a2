package agent

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nsflow/nsflow/bpf"
)

// TestDecisionJournal: decisions reach the state through full saves and
// through the journal in between; a load sees both, the later entry for a
// key winning, survives a torn last line, refuses a corrupt one in the
// middle, and a full save takes the journal in.
func TestDecisionJournal(t *testing.T) {
	key := func(port uint16) bpf.FlowKey {
		return bpf.FlowKey{NetnsCookie: 7, Ifindex: 2, Dir: bpf.Ingress, Proto: 17,
			Src: netip.MustParseAddr("198.18.0.1"), Dst: netip.MustParseAddr("198.18.0.2"), SrcPort: 40000, DstPort: port}
	}
	ab := pairKey{"a", "b", "udp"}
	dec := func(port uint16, id uint64, counted bool) savedDecision {
		d := savedDecision{Key: key(port), ID: id, Counted: counted}
		if counted {
			d.Pair, d.Port = ab, "53"
		}
		return d
	}
	restoredOf := func(t *testing.T, path string) map[bpf.FlowKey]savedDecision {
		t.Helper()
		b, err := newFlowBook(Config{PinPath: "/unused", StateFile: path})
		if err != nil {
			t.Fatal(err)
		}
		return b.restored
	}

	for _, tc := range []struct {
		name    string
		journal func(path string) error // after a snapshot with 53/id 1 and 54/id 2
		want    map[uint16]uint64       // port -> id restored
		wantErr string
	}{
		{"snapshot only", func(string) error { return nil }, map[uint16]uint64{53: 1, 54: 2}, ""},
		{"journal adds and overrides", func(p string) error {
			st := newState(p, true)
			if err := st.appendDecisions([]savedDecision{dec(55, 3, true)}); err != nil {
				return err
			}
			return st.appendDecisions([]savedDecision{dec(53, 4, false)})
		}, map[uint16]uint64{53: 4, 54: 2, 55: 3}, ""},
		{"torn last line", func(p string) error {
			if err := newState(p, true).appendDecisions([]savedDecision{dec(55, 3, true)}); err != nil {
				return err
			}
			f, err := os.OpenFile(p+".decisions", os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				return err
			}
			_, err = f.WriteString(`{"Key":{"NetnsCookie":7`)
			return errors.Join(err, f.Close())
		}, map[uint16]uint64{53: 1, 54: 2, 55: 3}, ""},
		{"corrupt line", func(p string) error {
			return os.WriteFile(p+".decisions", []byte("{\"Key\":\nnot json\n"), 0o600)
		}, nil, "line 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "state.json")
			st := newState(path, true)
			st.Decisions = []savedDecision{dec(53, 1, true), dec(54, 2, false)}
			if err := st.save(); err != nil {
				t.Fatal(err)
			}
			if err := tc.journal(path); err != nil {
				t.Fatal(err)
			}
			if tc.wantErr != "" {
				_, err := newFlowBook(Config{PinPath: "/unused", StateFile: path})
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), path+".decisions") {
					t.Fatalf("error %v, want one naming %s.decisions and %q", err, path, tc.wantErr)
				}
				return
			}
			got := restoredOf(t, path)
			if len(got) != len(tc.want) {
				t.Errorf("restored %d decisions, want %d: %+v", len(got), len(tc.want), got)
			}
			for port, id := range tc.want {
				if d, ok := got[key(port)]; !ok || d.ID != id {
					t.Errorf("port %d: restored %+v (found %v), want id %d", port, d, ok, id)
				}
			}
			if d := got[key(53)]; d.ID == 1 && (!d.Counted || d.Pair != ab || d.Port != "53") {
				t.Errorf("decision fields lost on the way: %+v", d)
			}

			// A full save takes the journal in and removes it.
			b, err := newFlowBook(Config{PinPath: "/unused", StateFile: path})
			if err != nil {
				t.Fatal(err)
			}
			if err := b.saveLocked(); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(path + ".decisions"); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("journal left after a full save: %v", err)
			}
			if again := restoredOf(t, path); len(again) != len(tc.want) {
				t.Errorf("after a full save: %d decisions, want %d", len(again), len(tc.want))
			}
		})
	}
}

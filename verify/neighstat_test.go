package verify

import (
	"os"
	"path/filepath"
	"testing"
)

func TestStatColumn(t *testing.T) {
	p := filepath.Join(t.TempDir(), "arp_cache")
	os.WriteFile(p, []byte("entries  allocs table_fulls\n00000009 0000001a 0000000f\n00000009 00000002 00000011\n"), 0o644)
	if n, err := statColumn(p, "table_fulls"); err != nil || n != 0x0f+0x11 {
		t.Errorf("table_fulls = %d, %v; want 32", n, err)
	}
	if _, err := statColumn(p, "nope"); err == nil {
		t.Error("a missing column is not an error")
	}
	if _, err := neighTableFulls(); err != nil {
		t.Errorf("this kernel's counters: %v", err)
	}
}

// While the neighbour table overflows, a timeout proves nothing: the probe
// becomes an error; answers and router errors stay what they are.
func TestDistrustTimeouts(t *testing.T) {
	mk := func() []*Probe {
		return []*Probe{{Outcome: Blocked}, {Outcome: Replied}, {Outcome: Unreachable, Detail: "ICMP host unreachable from 198.18.1.254"}, {Outcome: Refused}}
	}
	calm := mk()
	distrustTimeouts(calm, 7, 7)
	if calm[0].Outcome != Blocked {
		t.Errorf("no overflow: %s", calm[0].Outcome)
	}
	busy := mk()
	distrustTimeouts(busy, 7, 9)
	want := []Outcome{Failed, Replied, Unreachable, Refused}
	for i, p := range busy {
		if p.Outcome != want[i] {
			t.Errorf("probe %d: %s, want %s", i, p.Outcome, want[i])
		}
	}
}

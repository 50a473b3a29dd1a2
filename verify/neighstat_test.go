package verify

import (
	"os"
	"path/filepath"
	"strings"
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

// Without an NDP table (IPv6 disabled) the ARP table alone is watched;
// without the ARP table's statistics (outside the initial namespace) the
// run says that it could not watch.
func TestNeighTableUnwatched(t *testing.T) {
	saved := neighStatFiles
	t.Cleanup(func() { neighStatFiles = saved })
	dir := t.TempDir()
	arp := filepath.Join(dir, "arp_cache")
	os.WriteFile(arp, []byte("entries table_fulls\n00000001 00000003\n"), 0o644)
	neighStatFiles = [2]string{arp, filepath.Join(dir, "ndisc_cache")}
	if n, err := neighTableFulls(); err != nil || n != 3 {
		t.Errorf("no NDP table: %d, %v; want 3", n, err)
	}
	pr := newProber(nil, nil, 0)
	pr.runChecked(nil)
	if pr.unwatched != "" {
		t.Errorf("watched, yet: %s", pr.unwatched)
	}
	neighStatFiles = [2]string{filepath.Join(dir, "none"), filepath.Join(dir, "ndisc_cache")}
	pr.runChecked(nil)
	if !strings.Contains(pr.unwatched, "could not be watched") {
		t.Errorf("unwatched %q, want the reason", pr.unwatched)
	}
}

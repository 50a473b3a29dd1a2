package bpf

import (
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The programs' jiffies convert to CLOCK_MONOTONIC: a flow seen just now
// was last seen about now. Jiffies can lag on a starved host, hence the
// tolerance behind; ahead means a wrong conversion.
func TestJiffyClock(t *testing.T) {
	d := loadForTest(t, Options{})
	in, _ := d.Programs()
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	before := uint64(ts.Nano())
	runFrame(t, in, cat(eth(etherIPv4), ipv4(17, v4A, v4B, 8, 0, 0, false), udp(1, 2, 0)))
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	after := uint64(ts.Nano())
	tick := uint64(time.Second) / d.clock.hz
	n := 0
	_ = d.Flows(func(k FlowKey, s FlowStats) bool {
		n++
		if s.FirstSeen != s.LastSeen || s.LastSeen > after+tick || s.LastSeen+uint64(time.Second) < before {
			t.Errorf("flow first/last seen %d/%d, sent between %d and %d (tick %d ns)", s.FirstSeen, s.LastSeen, before, after, tick)
		}
		return true
	})
	if n != 1 {
		t.Errorf("%d flows, want 1", n)
	}
	if hz := d.clock.hz; hz != 100 && hz != 250 && hz != 300 && hz != 1000 {
		t.Errorf("HZ %d", hz)
	}
}

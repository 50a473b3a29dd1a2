package bpf

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/nsflow/nsflow/internal/testenv"
)

// Pinned maps survive Close and are reused by the next Load; pins of an
// incompatible layout are replaced; RemovePins removes only ours.
func TestPinning(t *testing.T) {
	testenv.RequireBPFFS(t)
	dir := filepath.Join("/sys/fs/bpf", testenv.Name("nsflow-test-"))
	t.Cleanup(func() {
		if err := RemovePins(dir); err != nil {
			t.Errorf("RemovePins: %v", err)
		}
	})
	frame := cat(eth(etherIPv4), ipv4(17, v4A, v4B, 8, 0, 0, false), udp(1, 2, 0))
	cookie, err := NetnsCookie("")
	if err != nil {
		t.Fatal(err)
	}
	lo := PortKey{NetnsCookie: cookie, Ifindex: 1}

	load := func(opts Options) *Datapath {
		t.Helper()
		opts.PinPath = dir
		d, err := Load(opts)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	packets := func(d *Datapath) uint64 {
		t.Helper()
		s, _, err := d.Port(lo)
		if err != nil {
			t.Fatal(err)
		}
		return s.Get(Ingress, IPv4, UDP).Packets
	}

	d := load(Options{})
	in, _ := d.Programs()
	runFrame(t, in, frame)
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	for _, name := range mapNames {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Errorf("pin %s: %v", name, err)
		}
	}

	d = load(Options{})
	if d.PinsReset {
		t.Error("compatible pins were reset")
	}
	in, _ = d.Programs()
	runFrame(t, in, frame)
	if n := packets(d); n != 2 {
		t.Errorf("%d packets after reload, want 2 (1 before Close, 1 after)", n)
	}
	d.Close()

	// Another table size is another layout: the old pins are replaced.
	d = load(Options{MaxFlows: 1024})
	if !d.PinsReset {
		t.Error("incompatible pins were not reported as reset")
	}
	if n := packets(d); n != 0 {
		t.Errorf("%d packets after reset, want 0", n)
	}
	if d.FlowCapacity() != 1024 {
		t.Errorf("FlowCapacity %d, want 1024", d.FlowCapacity())
	}
	d.Close()

	// Someone else's file in the directory survives RemovePins.
	other := filepath.Join(dir, "not-ours")
	if err := os.Mkdir(other, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := RemovePins(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(other); err != nil {
		t.Errorf("RemovePins removed a foreign entry: %v", err)
	}
	if err := os.Remove(other); err != nil {
		t.Fatal(err)
	}
	if err := RemovePins(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pin directory still there: %v", err)
	}
}

// The flow table is bounded: when it is full, packets still count per
// port and in the overflow counter.
func TestFlowTableFull(t *testing.T) {
	const capacity = 16
	d := loadForTest(t, Options{MaxFlows: capacity})
	in, _ := d.Programs()
	const sent = 40
	for i := range sent {
		runFrame(t, in, cat(eth(etherIPv4), ipv4(17, v4A, v4B, 8, 0, 0, false), udp(uint16(1000+i), 53, 0)))
	}
	n := 0
	if err := d.Flows(func(FlowKey, FlowStats) bool { n++; return true }); err != nil {
		t.Fatal(err)
	}
	if n != capacity {
		t.Errorf("%d flows, want %d", n, capacity)
	}
	over, err := d.FlowOverflow()
	if err != nil {
		t.Fatal(err)
	}
	if over != sent-capacity {
		t.Errorf("overflow %d, want %d", over, sent-capacity)
	}
	ports, err := d.Ports()
	if err != nil {
		t.Fatal(err)
	}
	var total uint64
	for _, s := range ports {
		total += s.Get(Ingress, IPv4, UDP).Packets
	}
	if total != sent {
		t.Errorf("port counters %d packets, want %d", total, sent)
	}

	// Deleting flows makes room again.
	var keys []FlowKey
	_ = d.Flows(func(k FlowKey, _ FlowStats) bool { keys = append(keys, k); return true })
	deleted, err := d.DeleteFlows(append(keys, keys[0])) // one twice: not there the second time
	if err != nil || deleted != capacity {
		t.Errorf("DeleteFlows = %d, %v; want %d", deleted, err, capacity)
	}
	runFrame(t, in, cat(eth(etherIPv4), ipv4(17, v4A, v4B, 8, 0, 0, false), udp(1, 53, 0)))
	n = 0
	_ = d.Flows(func(FlowKey, FlowStats) bool { n++; return true })
	if n != 1 {
		t.Errorf("%d flows after delete and one packet, want 1", n)
	}
}

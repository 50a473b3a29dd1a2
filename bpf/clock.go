package bpf

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// The programs time flows in jiffies: bpf_jiffies64 is inlined into a
// single load, while reading a clock costs about 10 ns per packet, half
// the budget. jiffyClock converts jiffies to CLOCK_MONOTONIC nanoseconds
// from samples of both taken in the kernel.
type jiffyClock struct {
	mu     sync.Mutex
	j0, t0 uint64 // the freshest sample: jiffies and monotonic ns
	lead   int64  // j0 ticks in ns minus t0
	hz     uint64
	prog   *ebpf.Program // samples both clocks into sample
	sample *ebpf.Map
}

// hzCandidates are the tick rates Linux can be built with.
var hzCandidates = []uint64{100, 250, 300, 1000}

func newJiffyClock() (*jiffyClock, error) {
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 16, MaxEntries: 1})
	if err != nil {
		return nil, fmt.Errorf("bpf: clock sample map: %w", err)
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:    ebpf.SchedCLS,
		License: "GPL",
		Instructions: asm.Instructions{
			asm.FnJiffies64.Call(),
			asm.Mov.Reg(asm.R6, asm.R0),
			asm.FnKtimeGetNs.Call(),
			asm.Mov.Reg(asm.R7, asm.R0),
			asm.StoreImm(asm.RFP, -4, 0, asm.Word),
			asm.Mov.Reg(asm.R2, asm.RFP),
			asm.Add.Imm(asm.R2, -4),
			asm.LoadMapPtr(asm.R1, m.FD()),
			asm.FnMapLookupElem.Call(),
			asm.JEq.Imm(asm.R0, 0, "out"),
			asm.StoreMem(asm.R0, 0, asm.R6, asm.DWord),
			asm.StoreMem(asm.R0, 8, asm.R7, asm.DWord),
			asm.Mov.Imm(asm.R0, -1).WithSymbol("out"),
			asm.Return(),
		},
	})
	if err != nil {
		m.Close()
		return nil, fmt.Errorf("bpf: clock sample program: %w", err)
	}
	c := &jiffyClock{prog: prog, sample: m}
	for i := range 4 {
		if i > 0 {
			time.Sleep(time.Millisecond)
		}
		if err := c.refresh(); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

// refresh takes one more sample. On a tickless kernel jiffies can lag
// the clock until some CPU catches them up (hundreds of ms on a starved
// VM), while in step they trail it by a constant: the freshest sample is
// the one whose jiffies lead its time the most, and refreshing at each
// read converges on it.
func (c *jiffyClock) refresh() error {
	if _, err := c.prog.Run(&ebpf.RunOptions{Data: make([]byte, 64)}); err != nil {
		return fmt.Errorf("bpf: clock sample: %w", err)
	}
	var v [2]uint64
	if err := c.sample.Lookup(uint32(0), &v); err != nil {
		return fmt.Errorf("bpf: clock sample: %w", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.hz == 0 {
		c.hz = pickHZ(v[0], v[1])
	}
	lead := int64(v[0])*int64(1e9/c.hz) - int64(v[1])
	if c.t0 == 0 || lead > c.lead {
		c.lead, c.j0, c.t0 = lead, v[0], v[1]
	}
	return nil
}

// Close releases the sampler.
func (c *jiffyClock) Close() error {
	return errors.Join(c.prog.Close(), c.sample.Close())
}

// pickHZ finds the tick rate from one sample: jiffies start at
// INITIAL_JIFFIES (300 s before wrapping 32 bits) at boot, when the
// monotonic clock starts at 0, so only the right HZ predicts the sample
// (within seconds, while the candidates differ by days).
func pickHZ(j, t uint64) uint64 {
	best, bestErr := hzCandidates[0], uint64(1<<63)
	for _, hz := range hzCandidates {
		initial := uint64(uint32(-int32(300 * hz)))
		predicted := initial + t/1e9*hz + (t%1e9)*hz/1e9
		e := max(j, predicted) - min(j, predicted)
		if e < bestErr {
			best, bestErr = hz, e
		}
	}
	return best
}

// ns converts a jiffies value to CLOCK_MONOTONIC nanoseconds (0 stays 0).
func (c *jiffyClock) ns(j uint64) uint64 {
	if j == 0 {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	d := int64(j - c.j0) // signed: j may precede the sample
	return uint64(int64(c.t0) + d*int64(1e9/c.hz) + d*int64(1e9%c.hz)/int64(c.hz))
}

package bpf

import (
	"fmt"
	"io"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// EnableRunStats turns on the kernel's BPF run-time statistics until the
// returned Closer is closed. It uses the fd-based BPF_ENABLE_STATS, so it
// does not fight other tools over the kernel.bpf_stats_enabled sysctl.
// Statistics add some ns per program run while enabled.
func (d *Datapath) EnableRunStats() (io.Closer, error) {
	c, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		return nil, fmt.Errorf("bpf: enable run stats: %w", err)
	}
	return c, nil
}

// RunStats returns the number of runs and their total time in ns, over
// both programs, counted while statistics were enabled.
func (d *Datapath) RunStats() (runCount, runTimeNs uint64, err error) {
	done, err := d.use()
	if err != nil {
		return 0, 0, fmt.Errorf("bpf: run stats: %w", err)
	}
	defer done()
	for _, p := range []*ebpf.Program{d.objs.NsflowIngress, d.objs.NsflowEgress} {
		s, err := p.Stats()
		if err != nil {
			return 0, 0, fmt.Errorf("bpf: run stats: %w", err)
		}
		runCount += s.RunCount
		runTimeNs += uint64(s.Runtime.Nanoseconds())
	}
	return runCount, runTimeNs, nil
}

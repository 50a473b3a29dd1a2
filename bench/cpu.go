package bench

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// CPU is CPU time used during a sample, in cores (CPU-seconds per second
// of wall time). Process is this nsflow process (generator and bench,
// user plus system, which includes softirq work the kernel charged to
// it). Softirq and HostBusy come from /proc/stat and cover the whole
// host, other processes included: veth delivery runs in softirq context.
// HostBusy is user, nice, system, irq and softirq time; not steal.
// /proc/stat is sampled at the timer tick, so HostBusy can read a little
// below Process, which the kernel accounts exactly.
type CPU struct {
	Process  float64 `json:"process_cores"`
	Softirq  float64 `json:"host_softirq_cores"`
	HostBusy float64 `json:"host_busy_cores"`
}

type cpuSnap struct {
	at      time.Time
	process time.Duration
	softirq uint64 // USER_HZ ticks
	busy    uint64
}

// clkTck is USER_HZ, the unit of /proc/stat; 100 on every Linux ABI Go
// supports.
const clkTck = 100

func readCPU() (cpuSnap, error) {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return cpuSnap{}, err
	}
	s := cpuSnap{at: time.Now(), process: time.Duration(ru.Utime.Nano() + ru.Stime.Nano())}
	f, err := os.Open("/proc/stat")
	if err != nil {
		return cpuSnap{}, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	if !sc.Scan() {
		return cpuSnap{}, fmt.Errorf("/proc/stat: empty")
	}
	// cpu  user nice system idle iowait irq softirq steal guest guest_nice
	fields := strings.Fields(sc.Text())
	if len(fields) < 8 || fields[0] != "cpu" {
		return cpuSnap{}, fmt.Errorf("/proc/stat: unexpected first line %q", sc.Text())
	}
	var v [7]uint64
	for i := range v {
		v[i], _ = strconv.ParseUint(fields[i+1], 10, 64)
	}
	s.softirq = v[6]
	// Not steal: time the hypervisor gave other guests is no work here.
	s.busy = v[0] + v[1] + v[2] + v[5] + v[6]
	return s, nil
}

func (s cpuSnap) since(o cpuSnap) CPU {
	wall := s.at.Sub(o.at).Seconds()
	if wall <= 0 {
		return CPU{}
	}
	return CPU{
		Process:  (s.process - o.process).Seconds() / wall,
		Softirq:  float64(s.softirq-o.softirq) / clkTck / wall,
		HostBusy: float64(s.busy-o.busy) / clkTck / wall,
	}
}

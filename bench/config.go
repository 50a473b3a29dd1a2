// Package bench measures the throughput of veth and bridge paths between
// network namespaces with nsflow's datapath attached and detached, and
// reconciles the generator's counts, nsflow's counters and the kernel's
// interface statistics with each other.
package bench

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nsflow/nsflow/topology"
	"github.com/nsflow/nsflow/traffic"
)

// Defaults for zero Config fields.
const (
	DefaultDuration = 5 * time.Second
	DefaultRounds   = 3
	DefaultUDPFrame = 64
	DefaultSlices   = 60
)

// Config is what to measure.
type Config struct {
	// Spec, when set, is a topology file whose namespaces are used
	// instead of a topology built for the run; SpecFile names it in the
	// report. If its namespaces do not exist, bench brings it up and
	// removes it afterwards.
	Spec     *topology.Spec
	SpecFile string

	Paths []Path
	// Pairs is the most client/server pairs run at once; cases run with
	// 1, 2, 4, ... up to Pairs.
	Pairs    int
	Streams  int
	Duration time.Duration
	Protos   []traffic.Proto
	// Size is the Ethernet frame size with FCS for UDP (default 64) and
	// the write size for TCP (default traffic.DefaultTCPWrite).
	Size int
	// Rounds is how many uninstrumented/instrumented sample pairs each
	// case takes, interleaved.
	Rounds int
	// Slices is how many instrumented slices of SliceLength the overhead
	// ratio of a case is measured over, each between two uninstrumented
	// ones, under one continuous run of the generator.
	Slices int
	// HookCost also measures a no-op tc program on the same hooks, in as
	// many slices of its own: what any tc program costs there, which
	// splits the overhead into the hook's share and nsflow's own. It
	// doubles the slices' time and needs tcx (Linux 6.6).
	HookCost bool
	// NoIperf3 skips the iperf3 sanity measurement.
	NoIperf3 bool
	// Progress, if set, is told what runs next.
	Progress func(Progress)
}

// Progress is one step of a run.
type Progress struct {
	Step, Steps  int
	Case         string
	Round        int
	Instrumented bool
	Phase        string // "topology", "warm-up", "sample", "slices", "bpf cost", "iperf3", "cleanup"
	// Built names the topology bench built for the run, once it is up
	// ("" before, and for a -f file's): what a run killed before its
	// cleanup leaves behind.
	Built string
}

func (p Progress) String() string {
	switch p.Phase {
	case "sample":
		mode := "uninstrumented"
		if p.Instrumented {
			mode = "instrumented"
		}
		return fmt.Sprintf("[%d/%d] %s round %d %s", p.Step, p.Steps, p.Case, p.Round, mode)
	case "warm-up", "slices", "bpf cost":
		return fmt.Sprintf("[%d/%d] %s %s", p.Step, p.Steps, p.Case, p.Phase)
	}
	return p.Phase + " " + p.Case
}

// FieldError is a value of a Config field, or of the --path that
// ParsePaths reads, that Run refuses. Field is the field's name in lower
// case, which is also the name of nsflow bench's flag for it.
type FieldError struct {
	Field string
	Err   error
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Err.Error() }
func (e *FieldError) Unwrap() error { return e.Err }

func fieldErr(field, format string, args ...any) error {
	return &FieldError{field, fmt.Errorf(format, args...)}
}

// Check returns what Run would refuse in c, before anything is built: the
// errors.Join of a *FieldError per field.
func (c Config) Check() error { return c.normalize() }

func (c *Config) normalize() error {
	var errs []error
	if len(c.Paths) == 0 {
		c.Paths = []Path{Veth}
	}
	if len(c.Protos) == 0 {
		c.Protos = []traffic.Proto{traffic.TCP}
	}
	if c.Pairs == 0 {
		c.Pairs = 1
	}
	if c.Pairs < 0 || c.Pairs > maxPairs {
		errs = append(errs, fieldErr("pairs", "%d is outside 1..%d", c.Pairs, maxPairs))
	}
	if c.Streams == 0 {
		c.Streams = 1
	}
	if c.Streams < 0 || c.Streams > 128 {
		errs = append(errs, fieldErr("streams", "%d is outside 1..128", c.Streams))
	}
	if c.Duration == 0 {
		c.Duration = DefaultDuration
	}
	if c.Duration < 100*time.Millisecond {
		errs = append(errs, fieldErr("duration", "%v is shorter than 100ms", c.Duration))
	}
	if c.Rounds == 0 {
		c.Rounds = DefaultRounds
	}
	if c.Rounds < 0 {
		errs = append(errs, fieldErr("rounds", "%d is negative", c.Rounds))
	}
	if c.Slices == 0 {
		c.Slices = DefaultSlices
	}
	if c.Slices < 0 || c.Slices > 10000 {
		errs = append(errs, fieldErr("slices", "%d is outside 1..10000", c.Slices))
	}
	if c.Size < 0 {
		errs = append(errs, fieldErr("size", "%d is negative", c.Size))
	}
	for _, p := range c.Protos {
		if _, err := c.payload(p, false); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// maxTCPWrite bounds a TCP write: one larger than the socket buffers
// moves in bursts that a short sample quantizes, or not at all.
const maxTCPWrite = 16 << 20

// CheckSpec tells, before anything is built, whether the topology of -f
// (c.Spec; nil passes) can be measured as configured: a pair for every
// path, and UDP frames that fit the MTU of the pairs to be used (a larger
// one is fragmented, and its counts cannot reconcile).
func (c Config) CheckSpec() error {
	if c.Spec == nil {
		return nil
	}
	if err := c.normalize(); err != nil {
		return err
	}
	var errs []error
	for _, path := range c.Paths {
		pairs := findPairs(c.Spec, path)
		if len(pairs) == 0 {
			errs = append(errs, noPairs(c.Spec.Name, path))
			continue
		}
		if !slices.Contains(c.Protos, traffic.UDP) {
			continue
		}
		frame := c.frame(traffic.UDP)
		for _, p := range pairs[:min(len(pairs), c.Pairs)] {
			// normalize checked the frame over IPv4; IPv6 needs 20 more.
			if _, err := c.payload(traffic.UDP, p.serverAddr.Is6()); err != nil {
				errs = append(errs, err)
				break
			}
			if ip := frame - 18; ip > p.mtu {
				errs = append(errs, fieldErr("size", "a %d-byte frame carries %d bytes of IP, more than the %d-byte MTU between %s:%s and %s:%s", frame, ip, p.mtu, p.client.Namespace, p.client.Name, p.server.Namespace, p.server.Name))
			}
		}
	}
	return errors.Join(errs...)
}

func noPairs(topo string, path Path) error {
	what := "a veth link between two declared namespaces"
	if path == Bridge {
		what = "two declared namespaces on one bridge"
	}
	return fmt.Errorf("topology %s has no %s pair to measure: that needs %s, with addresses of one family on both ends, and each namespace in one pair only", topo, path, what)
}

// payload is the traffic.Flow Size for a protocol: UDP payload from the
// frame size, or the TCP write size.
func (c *Config) payload(p traffic.Proto, ipv6 bool) (int, error) {
	switch p {
	case traffic.UDP:
		frame := c.Size
		if frame == 0 {
			frame = DefaultUDPFrame
		}
		if frame > 1518 {
			return 0, fieldErr("size", "UDP frame %d is larger than a 1500-byte MTU allows (1518 with FCS)", frame)
		}
		n, err := traffic.PayloadForFrame(frame, ipv6)
		if err != nil {
			return 0, &FieldError{"size", err}
		}
		return n, nil
	case traffic.TCP:
		if c.Size == 0 {
			return traffic.DefaultTCPWrite, nil
		}
		if c.Size > maxTCPWrite {
			return 0, fieldErr("size", "TCP write %d is larger than %d", c.Size, maxTCPWrite)
		}
		return c.Size, nil
	}
	return 0, fieldErr("proto", "unknown %q (want tcp or udp)", p)
}

// sizes is what Settings reports as Size and Sizes: the size each
// protocol uses (frame for UDP, write for TCP, defaults applied), and that
// size if it is the same for all of them, else 0.
func (c *Config) sizes() (int, map[traffic.Proto]int) {
	each := map[traffic.Proto]int{}
	one := 0
	for i, p := range c.Protos {
		n := c.frame(p)
		if p == traffic.TCP {
			n, _ = c.payload(p, false)
		}
		each[p] = n
		switch {
		case i == 0:
			one = n
		case n != one:
			one = 0
		}
	}
	return one, each
}

func (c *Config) frame(p traffic.Proto) int {
	if p != traffic.UDP {
		return 0
	}
	if c.Size == 0 {
		return DefaultUDPFrame
	}
	return c.Size
}

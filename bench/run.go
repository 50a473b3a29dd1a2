package bench

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/nsflow/nsflow/bpf"
	"github.com/nsflow/nsflow/topology"
	"github.com/nsflow/nsflow/traffic"
	"golang.org/x/sys/unix"
)

// costDuration bounds the sample that measures the datapath's cost.
const costDuration = 2 * time.Second

// runner holds what one Run shares across cases.
type runner struct {
	cfg    Config
	in     *instrument
	kr     *kernelReader
	step   int
	steps  int
	report *Report
	built  string // the topology built for the run, once up
	// hookChecked is set once the no-op of --hook-cost attached.
	hookChecked bool
}

// Run measures every case of cfg and returns the report. It builds (or
// reuses) the topology, and removes what it built on return, also when
// ctx is cancelled; the report then holds the cases finished so far.
func Run(ctx context.Context, cfg Config) (rep *Report, err error) {
	if err := cfg.normalize(); err != nil {
		return nil, err
	}
	if err := cfg.CheckSpec(); err != nil {
		return nil, err
	}
	if cfg.Spec != nil {
		// The run's own topology has a name of its own; a file's may be
		// measured or verified by another run, whose traffic would mix.
		unlock, err := topology.LockRun(cfg.Spec.Name)
		if err != nil {
			return nil, err
		}
		defer unlock()
	}
	rep = &Report{SchemaVersion: SchemaVersion, Started: time.Now().UTC(), Host: hostInfo(), Iperf3: []Iperf3{}}
	rep.Settings = Settings{Topology: "built", Paths: cfg.Paths, Pairs: scaleSteps(cfg.Pairs), Streams: cfg.Streams,
		Duration: cfg.Duration, Protos: cfg.Protos, Rounds: cfg.Rounds,
		Slices: cfg.Slices, SliceLength: SliceLength, HookCost: cfg.HookCost}
	rep.Settings.Size, rep.Settings.Sizes = cfg.sizes()
	if cfg.SpecFile != "" {
		rep.Settings.Topology = cfg.SpecFile
	}
	r := &runner{cfg: cfg, kr: newKernelReader(), report: rep}
	defer r.kr.close()

	r.progress(Progress{Phase: "topology"})
	env, err := prepare(ctx, cfg)
	if err != nil {
		return nil, err
	}
	rep.Topology = env.spec.Name
	if env.built {
		r.built = env.spec.Name
		// Said at once: a Ctrl-C from now on names what it is removing.
		r.progress(Progress{Phase: "topology"})
	}
	defer func() {
		r.progress(Progress{Phase: "cleanup"})
		// The kernel reader's netlink sockets hold the measured namespaces
		// alive: taken down with them open, a namespace would keep its
		// host-side veth ends, which down then waits for.
		r.kr.close()
		err = errors.Join(err, env.release())
	}()

	r.in, err = loadInstrument()
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, r.in.close()) }()

	type planned struct {
		path  Path
		proto traffic.Proto
		pairs []pair
	}
	var plan []planned
	rep.Settings.Pairs = nil // the steps the topology allows, set below
	for _, path := range cfg.Paths {
		avail := findPairs(env.spec, path)
		if len(avail) == 0 {
			return nil, noPairs(env.spec.Name, path)
		}
		for _, proto := range cfg.Protos {
			for _, k := range scaleSteps(min(cfg.Pairs, len(avail))) {
				plan = append(plan, planned{path, proto, avail[:k]})
				if !slices.Contains(rep.Settings.Pairs, k) {
					rep.Settings.Pairs = append(rep.Settings.Pairs, k)
				}
			}
		}
	}
	slices.Sort(rep.Settings.Pairs)
	r.steps = len(plan) * (3 + 2*cfg.Rounds) // warm-up, rounds, slices, cost
	for _, p := range plan {
		c, err := r.runCase(ctx, p.path, p.proto, p.pairs)
		rep.Host.AttachMode = string(r.in.mode) // known once attached, also in a partial report
		if err != nil {
			return rep, err
		}
		rep.Cases = append(rep.Cases, *c)
		rep.Differences += c.Differences
	}
	if !cfg.NoIperf3 {
		r.iperf3(ctx, env)
	}
	rep.Complete = ctx.Err() == nil
	return rep, ctx.Err()
}

func (r *runner) progress(p Progress) {
	if r.cfg.Progress != nil {
		p.Steps, p.Built = r.steps, r.built
		r.cfg.Progress(p)
	}
}

func (r *runner) runCase(ctx context.Context, path Path, proto traffic.Proto, pairs []pair) (*Case, error) {
	// Each pair's payload fills the frame in its own family: an IPv6
	// header is 20 bytes longer.
	pairs = slices.Clone(pairs)
	var err error
	for i := range pairs {
		if pairs[i].size, err = r.cfg.payload(proto, pairs[i].serverAddr.Is6()); err != nil {
			return nil, err
		}
	}
	payload := pairs[0].size
	c := &Case{Name: fmt.Sprintf("%s/%s/%d", path, proto, len(pairs)), Path: path, Proto: proto, Pairs: len(pairs),
		Streams: r.cfg.Streams, Payload: payload, Frame: r.cfg.frame(proto)}

	if r.cfg.HookCost && !r.hookChecked {
		// The no-op needs tcx, and nsflow on tcx to compare with: found
		// out now, not after the rounds.
		first := pathIfaces(pairs)[:1]
		if err := r.in.attachNoop(first); err != nil {
			return nil, fmt.Errorf("--hook-cost: %w", err)
		}
		if err := r.in.detach(); err != nil {
			return nil, err
		}
		if err := r.in.attach(first); err != nil {
			return nil, err
		}
		mode := r.in.mode
		if err := r.in.detach(); err != nil {
			return nil, err
		}
		if err := hookComparable(mode); err != nil {
			return nil, err
		}
		r.hookChecked = true
	}

	// A warm-up run, not counted, so that the first sample does not pay
	// for cold caches, neighbour resolution or TCP's first slow start.
	r.step++
	r.progress(Progress{Step: r.step, Case: c.Name, Phase: "warm-up"})
	if err := r.in.detach(); err != nil {
		return nil, err
	}
	if _, err := r.flows(ctx, proto, pairs, min(r.cfg.Duration, 500*time.Millisecond)); err != nil {
		return nil, fmt.Errorf("%s warm-up: %w", c.Name, err)
	}

	for round := 1; round <= r.cfg.Rounds; round++ {
		// Which mode goes first alternates (off on, on off, ...), so
		// that whatever favours the first or second sample of a round
		// favours neither mode.
		order := []bool{false, true}
		if round%2 == 0 {
			order = []bool{true, false}
		}
		for _, on := range order {
			r.step++
			r.progress(Progress{Step: r.step, Case: c.Name, Round: round, Instrumented: on, Phase: "sample"})
			s, _, err := r.sample(ctx, proto, pairs, on, r.cfg.Duration)
			if err != nil {
				return nil, fmt.Errorf("%s round %d: %w", c.Name, round, err)
			}
			s.Round = round
			c.Samples = append(c.Samples, s)
			c.Differences += s.differences()
		}
	}

	r.step++
	r.progress(Progress{Step: r.step, Case: c.Name, Phase: "slices"})
	if c.SliceRatio, c.HookRatio, err = r.sliceRatio(ctx, proto, pairs); err != nil {
		return nil, fmt.Errorf("%s slices: %w", c.Name, err)
	}

	// The datapath's cost comes from one more instrumented sample with
	// BPF run-time statistics on.
	r.step++
	r.progress(Progress{Step: r.step, Case: c.Name, Instrumented: true, Phase: "bpf cost"})
	var s Sample
	var rs runStats
	err = r.in.withRunStats(func() error {
		var err error
		s, rs, err = r.sample(ctx, proto, pairs, true, min(r.cfg.Duration, costDuration))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("%s cost sample: %w", c.Name, err)
	}
	if err := r.in.detach(); err != nil {
		return nil, err
	}
	c.Differences += s.differences()
	c.BPF = BPFCost{Runs: rs.count, RunTimeNs: rs.ns, Sample: &s}
	if rs.count > 0 {
		c.BPF.NsPerRun = float64(rs.ns) / float64(rs.count)
	}
	var serverPkts uint64
	for _, kd := range s.Kernel {
		for _, p := range pairs {
			if kd.Iface == p.server {
				serverPkts += kd.Rx.Packets
			}
		}
	}
	if serverPkts > 0 {
		c.BPF.NsPerPacket = float64(rs.ns) / float64(serverPkts)
	}
	c.Uninstrumented = summarize(c.Samples, false)
	c.Instrumented = summarize(c.Samples, true)
	c.Ratio = pairedRatio(c.Samples)
	return c, nil
}

// hookComparable refuses --hook-cost where nsflow's programs are not on
// tcx, as the no-op is: filters a killed run left in tc mode make nsflow
// take their place there, and a tc hook is not a tcx one.
func hookComparable(nsflowMode bpf.AttachMode) error {
	if nsflowMode != bpf.ModeTCX {
		return fmt.Errorf("--hook-cost: nsflow's programs are attached with %s here, the no-op with tcx: the two would not compare", nsflowMode)
	}
	return nil
}

// pairedRatio is the median over rounds of the instrumented sample's
// throughput over the uninstrumented one's.
func pairedRatio(ss []Sample) float64 {
	off := map[int]float64{}
	for _, s := range ss {
		if !s.Instrumented {
			off[s.Round] = s.Gbps
		}
	}
	var rs []float64
	for _, s := range ss {
		if o := off[s.Round]; s.Instrumented && o > 0 {
			rs = append(rs, s.Gbps/o)
		}
	}
	if len(rs) == 0 {
		return 0
	}
	return median(rs)
}

func summarize(ss []Sample, on bool) Summary {
	var g, m, cp, cs, cb []float64
	for _, s := range ss {
		if s.Instrumented != on {
			continue
		}
		g, m = append(g, s.Gbps), append(m, s.Mpps)
		cp, cs, cb = append(cp, s.CPU.Process), append(cs, s.CPU.Softirq), append(cb, s.CPU.HostBusy)
	}
	return Summary{Gbps: spread(g), Mpps: spread(m), CPU: CPU{Process: median(cp), Softirq: median(cs), HostBusy: median(cb)}}
}

// flows runs one flow per pair at once and returns their results.
func (r *runner) flows(ctx context.Context, proto traffic.Proto, pairs []pair, d time.Duration) ([]traffic.Result, error) {
	runs := make([]*traffic.Run, len(pairs))
	var err error
	for i, p := range pairs {
		runs[i], err = traffic.Start(ctx, traffic.Flow{
			Proto: proto, ClientNetns: p.client.netns, ServerNetns: p.server.netns,
			Server: netip.AddrPortFrom(p.serverAddr, 0), Streams: r.cfg.Streams, Size: p.size, Duration: d,
		})
		if err != nil {
			for _, run := range runs[:i] {
				_, _ = run.Stop()
			}
			return nil, fmt.Errorf("%s: %w", p, err)
		}
	}
	res := make([]traffic.Result, len(pairs))
	errs := make([]error, len(pairs))
	var wg sync.WaitGroup
	for i, run := range runs {
		wg.Go(func() { res[i], errs[i] = run.Wait() })
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return res, errors.Join(errs...)
}

// withoutShortStream drops traffic.ErrShortStream from err: in a sample,
// a TCP stream whose bytes read and written differ is a difference the
// reconciliation lists (its "tcp stream" check), not a failure of the run.
// Any other error in err stays. Elsewhere (warm-up, the iperf3 line),
// where nothing reconciles, the error stands.
func withoutShortStream(err error) error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var keep []error
		for _, e := range j.Unwrap() {
			keep = append(keep, withoutShortStream(e))
		}
		return errors.Join(keep...)
	}
	if errors.Is(err, traffic.ErrShortStream) {
		return nil
	}
	return err
}

// snapshot is every counter bench compares, read at one moment.
type snapshot struct {
	kernel map[Iface]linkCounters
	ports  map[Iface]bpf.PortStats
	udp    map[string]traffic.UDPStats // by server netns path
	cpu    cpuSnap
	run    runStats
}

// snap reads the kernel's statistics and nsflow's counters so that they
// describe the same moment: the kernel is read before and after nsflow,
// and the read is repeated if a packet slipped in between.
func (r *runner) snap(pairs []pair, on bool) (snapshot, error) {
	ifs := pathIfaces(pairs)
	var s snapshot
	var err error
	for try := 0; ; try++ {
		if s.kernel, err = r.kr.readAll(ifs); err != nil {
			return s, err
		}
		if !on {
			break
		}
		if s.ports, err = r.in.ports(ifs); err != nil {
			return s, err
		}
		again, err := r.kr.readAll(ifs)
		if err != nil {
			return s, err
		}
		if equalCounters(s.kernel, again) || try == 20 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	s.udp = map[string]traffic.UDPStats{}
	for _, p := range pairs {
		if s.udp[p.server.netns], err = traffic.ReadUDPStats(p.server.netns); err != nil {
			return s, err
		}
	}
	if s.cpu, err = readCPU(); err != nil {
		return s, err
	}
	if on {
		if s.run, err = r.in.runStats(); err != nil {
			return s, err
		}
	}
	return s, nil
}

func equalCounters(a, b map[Iface]linkCounters) bool {
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// quiesce waits until the interfaces' counters stop moving (the last
// acknowledgements and FINs of the flows), for at most a second.
func (r *runner) quiesce(pairs []pair) error {
	ifs := pathIfaces(pairs)
	prev, err := r.kr.readAll(ifs)
	if err != nil {
		return err
	}
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
		cur, err := r.kr.readAll(ifs)
		if err != nil {
			return err
		}
		if equalCounters(prev, cur) {
			return nil
		}
		prev = cur
	}
	return nil
}

func pathIfaces(pairs []pair) []Iface {
	var out []Iface
	for _, p := range pairs {
		out = append(out, p.ifaces...)
	}
	return out
}

// sample measures the pairs once, with nsflow attached or not.
func (r *runner) sample(ctx context.Context, proto traffic.Proto, pairs []pair, on bool, d time.Duration) (Sample, runStats, error) {
	ifs := pathIfaces(pairs)
	var err error
	if on {
		err = r.in.attach(ifs)
	} else {
		err = r.in.detach()
	}
	if err != nil {
		return Sample{}, runStats{}, err
	}
	if err := r.quiesce(pairs); err != nil {
		return Sample{}, runStats{}, err
	}
	before, err := r.snap(pairs, on)
	if err != nil {
		return Sample{}, runStats{}, err
	}
	res, err := r.flows(ctx, proto, pairs, d)
	err = withoutShortStream(err)
	if err != nil {
		return Sample{}, runStats{}, err
	}
	for i, x := range res {
		// A sample without traffic would read as a throughput of 0 and a
		// ratio of 0 or infinity: a failed measurement, not a figure.
		if x.Received.Bytes == 0 && ctx.Err() == nil {
			return Sample{}, runStats{}, fmt.Errorf("%s: no traffic arrived in %v (%d bytes sent)", pairs[i], d, x.Sent.Bytes)
		}
	}
	if err := r.quiesce(pairs); err != nil {
		return Sample{}, runStats{}, err
	}
	after, err := r.snap(pairs, on)
	if err != nil {
		return Sample{}, runStats{}, err
	}

	s := Sample{Instrumented: on, CPU: after.cpu.since(before.cpu)}
	for _, x := range res {
		s.Sent.Packets += x.Sent.Packets
		s.Sent.Bytes += x.Sent.Bytes
		s.Received.Packets += x.Received.Packets
		s.Received.Bytes += x.Received.Bytes
		s.Lost += x.Lost
		s.Reordered += x.Reordered
		s.Elapsed = max(s.Elapsed, x.Elapsed)
	}
	if s.Elapsed > 0 {
		s.Gbps = float64(s.Received.Bytes) * 8 / s.Elapsed.Seconds() / 1e9
		s.Mpps = float64(s.Received.Packets) / s.Elapsed.Seconds() / 1e6
	}
	for _, i := range ifs {
		d := after.kernel[i].sub(before.kernel[i])
		s.Kernel = append(s.Kernel, KernelDelta{Iface: i, Rx: traffic.Counts{Packets: d.RxPackets, Bytes: d.RxBytes},
			Tx: traffic.Counts{Packets: d.TxPackets, Bytes: d.TxBytes}, RxDropped: d.RxDropped, TxDropped: d.TxDropped})
	}
	s.Checks = reconcile(proto, pairs, res, before, after, on)
	rs := runStats{after.run.count - before.run.count, after.run.ns - before.run.ns}
	return s, rs, nil
}

func hostInfo() Host {
	var u unix.Utsname
	_ = unix.Uname(&u)
	return Host{Kernel: unix.ByteSliceToString(u.Release[:]), CPUs: runtime.NumCPU()}
}

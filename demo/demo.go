// Package demo runs nsflow end to end on one host for people to watch: it
// builds a topology (the embedded seed scenarios by default), starts the
// agent on it, generates traffic, verifies isolation, and shows per-namespace
// rates, the namespace-to-namespace matrix and the isolation verdict while
// serving /metrics. When its context ends it tears everything down and
// leaves the host as it was.
package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"regexp"
	"sync"
	"time"

	"github.com/nsflow/nsflow/agent"
	"github.com/nsflow/nsflow/collector"
	"github.com/nsflow/nsflow/topology"
	"github.com/nsflow/nsflow/traffic"
	"github.com/nsflow/nsflow/verify"
)

// Defaults for Options' zero fields.
const (
	DefaultPrefix        = "demo-"
	DefaultListenAddress = "127.0.0.1:9995"
	DefaultRefresh       = time.Second
	DefaultSnapshotEvery = 5 * time.Second
	// readyTimeout bounds the agent's initial discovery and attach.
	readyTimeout = 30 * time.Second
	// countWait bounds how long the final counts may take to settle: the
	// agent reuses one flow table walk for a short while.
	countWait = 2 * time.Second
	// teardownTimeout bounds the whole teardown, which must finish even
	// when the run was interrupted.
	teardownTimeout = 60 * time.Second
)

// Options configure Run.
type Options struct {
	// Spec is the topology; nil means the embedded seed (DefaultSpec).
	Spec *topology.Spec
	// Prefix is put in front of every name the demo creates, so that it
	// never touches objects of the same names that are not its own.
	Prefix string
	// Duration ends the demo this long after everything is up; 0 runs
	// until ctx ends.
	Duration time.Duration
	// ListenAddress serves /metrics while the demo runs.
	ListenAddress string
	// Out receives the view; Interactive redraws it in place (a terminal),
	// otherwise progress is printed line by line with a snapshot of the
	// view every SnapshotEvery and at the end.
	Out         io.Writer
	Interactive bool
	// TerminalHeight, if set, returns the terminal's rows: an interactive
	// frame is cut to fit.
	TerminalHeight func() int
	Refresh        time.Duration
	SnapshotEvery  time.Duration
	Logger         *slog.Logger
	// Started, if set, is called once the topology, the agent, the
	// traffic and /metrics are up, before the live view starts.
	Started func(Info)
}

// Info says where a running demo is.
type Info struct {
	// Spec is the topology as built, with the prefix applied.
	Spec *topology.Spec
	// MetricsURL is where /metrics is served.
	MetricsURL string
}

func (o *Options) setDefaults() error {
	if o.Prefix == "" {
		o.Prefix = DefaultPrefix
	}
	if o.ListenAddress == "" {
		o.ListenAddress = DefaultListenAddress
	}
	if o.Refresh <= 0 {
		o.Refresh = DefaultRefresh
	}
	if o.SnapshotEvery <= 0 {
		o.SnapshotEvery = DefaultSnapshotEvery
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Duration < 0 {
		return fmt.Errorf("duration %v: must not be negative", o.Duration)
	}
	if o.Spec == nil {
		s, err := DefaultSpec()
		if err != nil {
			return err
		}
		o.Spec = s
	}
	return nil
}

// Summary is what a demo run did.
type Summary struct {
	Topology string
	// Flows is what each generated flow moved, counted by the generator,
	// and what the agent counted for it.
	Flows []FlowCount
	// Verify is the isolation report; nil if verify could not run.
	Verify *verify.Report
	// Down is the teardown's account of what it removed.
	Down *topology.DownResult
}

// Run runs the demo until ctx ends or Duration passes, then tears down.
// Teardown runs whatever happened before, and its failure is returned too.
func Run(ctx context.Context, o Options) (sum *Summary, err error) {
	if err := o.setDefaults(); err != nil {
		return nil, err
	}
	spec, err := o.Spec.WithPrefix(o.Prefix)
	if err != nil {
		return nil, err
	}
	// Bind the metrics port first: a port in use is found before anything
	// is built.
	ln, err := net.Listen("tcp", o.ListenAddress)
	if err != nil {
		return nil, fmt.Errorf("metrics listener: %w", err)
	}

	d := newDisplay(o, spec)
	sum = &Summary{Topology: spec.Name}
	var teardown []func() error
	defer func() {
		// Undo in reverse, each step on its own, whatever failed before.
		var errs []error
		for i := len(teardown) - 1; i >= 0; i-- {
			errs = append(errs, teardown[i]())
		}
		ln.Close() // in case serving never started; closing twice is harmless
		d.finish(sum)
		err = errors.Join(err, errors.Join(errs...))
	}()
	// The demo's own work stops with ctx; teardown gets a fresh deadline.
	cleanupCtx := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.WithoutCancel(ctx), teardownTimeout)
	}

	// 1. The topology.
	up := d.step("topology up")
	teardown = append(teardown, func() error {
		down := d.step("topology down")
		cctx, cancel := cleanupCtx()
		defer cancel()
		res, err := topology.Down(cctx, spec, topology.Options{Progress: down.progress})
		sum.Down = res
		if err == nil {
			down.done("%d namespaces and %d host interfaces removed", res.NamespacesRemoved, res.InterfacesRemoved)
		}
		return down.fail(err)
	})
	res, err := topology.Up(ctx, spec, topology.Options{Progress: up.progress})
	if err != nil {
		return sum, up.fail(err)
	}
	up.done("%d namespaces, %d interfaces", res.NamespacesCreated, res.InterfacesCreated)

	// 2. The agent, restricted to the demo's namespaces, and /metrics.
	start := d.step("agent")
	a, err := agent.New(agent.Config{
		Logger: o.Logger,
		Netns:  agent.Filter{Include: regexp.MustCompile("^" + regexp.QuoteMeta(o.Prefix))},
	})
	if err != nil {
		return sum, start.fail(err)
	}
	actx, stopAgent := context.WithCancel(context.WithoutCancel(ctx))
	var agentErr error
	agentDone := make(chan struct{})
	go func() { defer close(agentDone); agentErr = a.Run(actx) }()
	teardown = append(teardown, func() error {
		st := d.step("agent stop")
		stopAgent()
		<-agentDone
		if agentErr == nil {
			st.done("programs detached")
		}
		return st.fail(agentErr)
	})
	reg := collector.NewRegistry(o.Logger, a, collector.Options{Violations: violations(verify.NewModel(spec), a)})
	web := agent.WebConfig{ListenAddress: o.ListenAddress, TelemetryPath: "/metrics"}
	h, err := agent.Handler(o.Logger, reg, web, a.Ready)
	if err != nil {
		return sum, start.fail(err)
	}
	sctx, stopServing := context.WithCancel(context.WithoutCancel(ctx))
	served := make(chan error, 1)
	go func() { served <- agent.Serve(sctx, o.Logger, ln, h, web) }()
	teardown = append(teardown, func() error {
		stopServing()
		return <-served
	})
	if err := waitReady(ctx, a, agentDone, &agentErr); err != nil {
		return sum, start.fail(err)
	}
	metricsURL := d.metricsURL(ln.Addr())
	start.done("attached; metrics on %s", metricsURL)

	// 3. Traffic. When it stops, the agent's counts for each flow are read
	// before the agent stops, to show they match the generator's.
	gen := d.step("traffic")
	flows, err := trafficFlows(spec, o.Prefix, seedFlows)
	if err != nil {
		return sum, gen.fail(err)
	}
	var runs []*traffic.Run
	teardown = append(teardown, func() error {
		if len(runs) == 0 {
			return nil
		}
		st := d.step("traffic stop")
		var errs []error
		for i, r := range runs {
			res, err := r.Stop()
			sum.Flows = append(sum.Flows, FlowCount{Src: flows[i].Src, Dst: flows[i].Dst,
				Port: flows[i].Flow.Server.Port(), Loopback: flows[i].Loopback, Result: res})
			errs = append(errs, err)
		}
		errs = append(errs, sum.countFlows(a, countWait))
		if err := errors.Join(errs...); err != nil {
			return st.fail(err)
		}
		st.done("%d flows stopped", len(runs))
		return nil
	})
	for _, f := range flows {
		r, err := traffic.Start(ctx, f.Flow)
		if err != nil {
			return sum, gen.fail(fmt.Errorf("flow %s→%s: %w", f.Src, f.Dst, err))
		}
		runs = append(runs, r)
	}
	gen.done("%d flows", len(runs))

	// 4. Verify, in the background: the view shows it probing.
	check := d.step("verify isolation")
	var wg sync.WaitGroup
	wg.Go(func() {
		rep, err := verify.Run(ctx, spec, verify.Options{})
		sum.Verify = rep
		v := verdictOf(rep, err)
		d.setVerdict(v)
		if err != nil {
			check.fail(err)
			return
		}
		check.done("%d probes, %d disagree with intent", v.Probes, len(v.Mismatches))
	})
	teardown = append(teardown, func() error { wg.Wait(); return nil })

	if o.Started != nil {
		o.Started(Info{Spec: spec, MetricsURL: metricsURL})
	}

	// 5. The live view until the end. Duration counts from here, so that a
	// slow start-up does not eat the time to watch.
	if o.Duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.Duration)
		defer cancel()
	}
	d.live(ctx, reg)
	return sum, nil
}

// waitReady waits for the agent's initial discovery, or its failure.
func waitReady(ctx context.Context, a *agent.Agent, done <-chan struct{}, runErr *error) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for !a.Ready() {
		select {
		case <-done:
			return fmt.Errorf("agent stopped: %v", *runErr)
		case <-ctx.Done():
			return fmt.Errorf("agent not ready: %w", context.Cause(ctx))
		case <-tick.C:
		}
	}
	return nil
}

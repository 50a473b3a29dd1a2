package demo

import (
	"context"
	"errors"
	"fmt"
	"net"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/nsflow/nsflow/agent"
	"github.com/nsflow/nsflow/collector"
	"github.com/nsflow/nsflow/internal/english"
	"github.com/nsflow/nsflow/topology"
	"github.com/nsflow/nsflow/traffic"
	"github.com/nsflow/nsflow/verify"
	"github.com/prometheus/client_golang/prometheus"
)

// runner is one demo run: each start-up step registers how to undo
// itself, and teardown undoes them in reverse.
type runner struct {
	o    Options
	spec *topology.Spec
	d    *display
	sum  *Summary
	undo []func() error
	// metricsURL is where the agent's metrics are served, once they are.
	metricsURL string
	// verified is closed when startVerify's check has finished.
	verified chan struct{}
}

// teardown runs every undo step, newest first, each whatever the others
// returned.
func (r *runner) teardown() error {
	var errs []error
	for i := len(r.undo) - 1; i >= 0; i-- {
		errs = append(errs, r.undo[i]())
	}
	return errors.Join(errs...)
}

// cleanupCtx is the context of an undo step: the demo's own work stops
// with ctx, but teardown must run to its end, within a bound.
func cleanupCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), teardownTimeout)
}

func (r *runner) topologyUp(ctx context.Context) error {
	up := r.d.step("topology up")
	r.undo = append(r.undo, func() error {
		down := r.d.step("topology down")
		cctx, cancel := cleanupCtx(ctx)
		defer cancel()
		res, err := topology.Down(cctx, r.spec, topology.Options{Progress: down.progress})
		if err == nil {
			// Only then: the summary says nothing of the demo is left.
			r.sum.Down = res
			down.done("%s and %s removed", english.Count(res.NamespacesRemoved, "namespace"), english.Count(res.InterfacesRemoved, "host interface"))
		}
		return down.fail(err)
	})
	res, err := topology.Up(ctx, r.spec, topology.Options{Progress: up.progress})
	if err != nil {
		return up.fail(err)
	}
	up.done("%s, %s", english.Count(res.NamespacesCreated, "namespace"), english.Count(res.InterfacesCreated, "interface"))
	// What works against the topology from outside it (a host address
	// that another host interface has too) is the user's to know.
	for _, w := range res.Warnings {
		r.d.step("topology up").warn("%s", w)
	}
	return nil
}

// startAgent runs the agent on the demo's namespaces only (no pins, so
// nothing outlives the demo) and serves its metrics on ln, as `nsflow
// agent` does, plus the violation counter from verify's model.
func (r *runner) startAgent(ctx context.Context, ln net.Listener) (*agent.Agent, *prometheus.Registry, error) {
	st := r.d.step("agent")
	// Exactly the demo's namespaces: a prefix alone would also take in
	// others' (another demo's, a user's demo-foo).
	names := make([]string, 0, len(r.spec.Namespaces))
	for _, n := range r.spec.Namespaces {
		names = append(names, regexp.QuoteMeta(n.Name))
	}
	a, err := agent.New(agent.Config{
		Logger: r.o.Logger,
		Netns:  agent.Filter{Include: regexp.MustCompile("^(" + strings.Join(names, "|") + ")$")},
	})
	if err != nil {
		return nil, nil, st.fail(err)
	}
	actx, stopAgent := context.WithCancel(context.WithoutCancel(ctx))
	var agentErr error
	agentDone := make(chan struct{})
	go func() { defer close(agentDone); agentErr = a.Run(actx) }()
	r.undo = append(r.undo, func() error {
		stop := r.d.step("agent stop")
		stopAgent()
		<-agentDone
		if agentErr == nil {
			stop.done("programs detached")
		}
		return stop.fail(agentErr)
	})

	reg := collector.NewRegistry(r.o.Logger, a, collector.Options{Violations: violations(verify.NewModel(r.spec), a)})
	web := agent.WebConfig{ListenAddress: r.o.ListenAddress, TelemetryPath: "/metrics"}
	h, err := agent.Handler(r.o.Logger, reg, web, a.Ready)
	if err != nil {
		return nil, nil, st.fail(err)
	}
	sctx, stopServing := context.WithCancel(context.WithoutCancel(ctx))
	served := make(chan error, 1)
	go func() { served <- agent.Serve(sctx, r.o.Logger, ln, h, web) }()
	r.undo = append(r.undo, func() error {
		stopServing()
		err := <-served
		r.d.metricsStopped()
		return err
	})
	if err := waitReady(ctx, a, agentDone, &agentErr); err != nil {
		return nil, nil, st.fail(err)
	}
	r.metricsURL = r.d.metricsURL(ln.Addr())
	st.done("attached; metrics on %s", r.metricsURL)
	return a, reg, nil
}

// startTraffic starts the demo flows. When they stop, the agent's count
// for each is read before the agent stops, to show they match the
// generator's.
func (r *runner) startTraffic(ctx context.Context, a *agent.Agent) error {
	st := r.d.step("traffic")
	flows, err := trafficFlows(r.spec, r.o.Prefix, seedFlows)
	if err == nil && len(flows) == 0 {
		// Not the seed: traffic between neighbours of the file's own.
		flows, err = trafficFlows(r.spec, "", fileFlows(r.spec))
	}
	if err != nil {
		return st.fail(err)
	}
	var runs []*traffic.Run
	r.undo = append(r.undo, func() error {
		if len(runs) == 0 {
			return nil
		}
		stop := r.d.step("traffic stop")
		var errs []error
		for i, run := range runs {
			res, err := run.Stop()
			f := flows[i]
			r.sum.Flows = append(r.sum.Flows, FlowCount{Src: f.Src, Dst: f.Dst,
				Port: f.Flow.Server.Port(), Loopback: f.Loopback, Result: res})
			errs = append(errs, err)
		}
		errs = append(errs, r.sum.countFlows(a, countWait))
		if err := errors.Join(errs...); err != nil {
			return stop.fail(err)
		}
		stop.done("%s stopped", english.Count(len(runs), "flow"))
		return nil
	})
	for _, f := range flows {
		run, err := traffic.Start(ctx, f.Flow)
		if err != nil {
			return st.fail(fmt.Errorf("flow %s→%s: %w", f.Src, f.Dst, err))
		}
		runs = append(runs, run)
	}
	st.done("%s", english.Count(len(runs), "flow"))
	return nil
}

// startVerify runs verify in the background; its result becomes the
// view's verdict. Teardown waits for it.
func (r *runner) startVerify(ctx context.Context) {
	st := r.d.step("verify isolation")
	r.verified = make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		defer close(r.verified)
		rep, err := verify.Run(ctx, r.spec, verify.Options{})
		r.sum.Verify, r.sum.VerifyErr = rep, err
		v := verdictOf(rep, err)
		r.d.setVerdict(v)
		if err != nil {
			st.fail(err)
			return
		}
		st.done("%s, %s", english.Count(v.Probes, "probe"), english.Count(len(v.Mismatches), "finding"))
	})
	r.undo = append(r.undo, func() error { wg.Wait(); return nil })
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

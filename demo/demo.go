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
	"os"
	"time"

	"github.com/nsflow/nsflow/topology"
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
	// Verified is closed when the isolation check, which runs in the
	// background, has finished: its probes send nothing more.
	Verified <-chan struct{}
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
	// Verify is the isolation report; nil if verify could not run, or
	// did not finish, for the reason in VerifyErr.
	Verify    *verify.Report
	VerifyErr error
	// Down is the teardown's account of what it removed.
	Down *topology.DownResult
}

// SetupError is a demo refused before anything was built: a bad prefix,
// file or listen address, or a topology that is up or busy already.
type SetupError struct{ Err error }

func (e *SetupError) Error() string { return e.Err.Error() }
func (e *SetupError) Unwrap() error { return e.Err }

// Run runs the demo until ctx ends or Duration passes, then tears down.
// Teardown undoes whatever was done, in reverse, even after a failure, and
// its own failures are returned too.
func Run(ctx context.Context, o Options) (sum *Summary, err error) {
	if err := o.setDefaults(); err != nil {
		return nil, err
	}
	spec, err := o.Spec.WithPrefix(o.Prefix)
	if err != nil {
		// Names too long with the prefix: a shorter one helps.
		return nil, &SetupError{fmt.Errorf("prefix %q: %w", o.Prefix, err)}
	}
	// Refused before anything is built: what verify would reject, a
	// topology that is up already (another demo's, or one brought up by
	// hand, which the teardown would remove), a port in use.
	if len(spec.Namespaces) == 0 {
		return nil, &SetupError{fmt.Errorf("topology %s declares no namespaces: nothing to show", spec.Name)}
	}
	if err := verify.NewModel(spec).CheckIntent(); err != nil {
		return nil, &SetupError{err}
	}
	unlock, err := topology.LockDemo(spec.Name)
	if err != nil {
		return nil, &SetupError{err}
	}
	defer unlock()
	for _, n := range spec.Namespaces {
		if _, err := os.Stat(spec.NetnsPath(n.Name)); err == nil {
			return nil, &SetupError{fmt.Errorf("topology %s is up already (namespace %s exists: left by a demo that was killed, or brought up by hand), and the demo's teardown would remove it: take it down first (printf 'name: %s\\n' > t.yaml && nsflow topology down -f t.yaml), or use another --prefix",
				spec.Name, n.Name, spec.Name)}
		}
	}
	ln, err := net.Listen("tcp", o.ListenAddress)
	if err != nil {
		return nil, &SetupError{fmt.Errorf("metrics listener: %w", err)}
	}
	r := &runner{o: o, spec: spec, d: newDisplay(o, spec), sum: &Summary{Topology: spec.Name}}
	defer func() {
		err = errors.Join(err, r.teardown())
		ln.Close() // in case serving never started; closing twice is harmless
		r.d.finish(r.sum)
	}()

	if err := r.topologyUp(ctx); err != nil {
		return r.sum, err
	}
	a, reg, err := r.startAgent(ctx, ln)
	if err != nil {
		return r.sum, err
	}
	if err := r.startTraffic(ctx, a); err != nil {
		return r.sum, err
	}
	// Verify runs in the background: the view shows it probing.
	r.startVerify(ctx)
	if o.Started != nil {
		o.Started(Info{Spec: spec, MetricsURL: r.metricsURL, Verified: r.verified})
	}
	// Duration counts from here, so that a slow start-up does not eat the
	// time to watch.
	if o.Duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.Duration)
		defer cancel()
	}
	r.d.live(ctx, reg)
	return r.sum, nil
}

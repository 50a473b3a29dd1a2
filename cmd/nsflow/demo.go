package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/nsflow/nsflow/demo"
	"github.com/nsflow/nsflow/topology"
	"github.com/spf13/cobra"
	"golang.org/x/term"
)

func init() { subcommands = append(subcommands, newDemoCmd) }

func newDemoCmd() *cobra.Command {
	var (
		o     demo.Options
		file  string
		plain bool
	)
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Build the seed topology, run the agent, traffic and verify, and watch it live",
		Long: `demo brings up the embedded seed topology (a veth pair, a Docker-style
bridge network, two servers on one port in two namespaces, a pod-style shared
namespace), starts the agent on it, generates traffic, verifies isolation and
shows per-namespace rates, the namespace-to-namespace matrix and the isolation
verdict, while serving /metrics. Ctrl-C (or --duration) tears everything down
and leaves the host as it was. Needs root.

Exit status, as verify's: 0 isolation holds, 1 a violation, 2 verify could
not check (or did not finish: stopped before it did); 1 also when the demo
itself fails. 2 too when the demo is refused before anything is built: a
bad flag or file (intent its wiring contradicts, no namespaces, a prefix
that makes names too long), the metrics address in use, another demo of
the topology running, or the topology up already (the demo would remove
it at the end).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch {
			case o.Duration < 0:
				return &exitError{2, fmt.Errorf("--duration %v: must not be negative", o.Duration)}
			case o.Prefix == "":
				return &exitError{2, errors.New("--prefix: must not be empty (the demo's names must be its own)")}
			case o.ListenAddress == "":
				return &exitError{2, errors.New("--web.listen-address: must not be empty")}
			case o.SnapshotEvery <= 0:
				return &exitError{2, fmt.Errorf("--snapshot-every %v: must be more than 0", o.SnapshotEvery)}
			}
			if file != "" {
				s, err := topology.Load(file)
				if err != nil {
					return &exitError{2, err}
				}
				o.Spec = s
			}
			o.Out = cmd.OutOrStdout()
			o.Interactive = !plain && isTerminal(cmd.OutOrStdout())
			if !o.Interactive {
				// Warnings of the agent and the others go to stderr; on a
				// terminal they would smear the view.
				o.Logger = slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: slog.LevelWarn}))
			}
			if f, ok := cmd.OutOrStdout().(*os.File); ok && o.Interactive {
				o.TerminalHeight = func() int {
					_, h, err := term.GetSize(int(f.Fd()))
					if err != nil {
						return 0
					}
					return h
				}
			}
			ctx, stop := interruptContext(cmd.Context(), cmd.ErrOrStderr())
			defer stop()
			sum, err := demo.Run(ctx, o)
			var setup *demo.SetupError
			switch {
			case errors.As(err, &setup):
				return &exitError{2, err}
			case err != nil && ctx.Err() != nil && (sum == nil || sum.Verify == nil):
				// Stopped before verify finished: it could not check. (Ctrl-C
				// is how a demo without --duration ends: a teardown that
				// failed after verify reported is the demo failing, 1.)
				return &exitError{2, fmt.Errorf("interrupted: %w", err)}
			}
			return demoExit(sum, err)
		},
	}
	fl := cmd.Flags()
	fl.DurationVar(&o.Duration, "duration", 0, "stop after this long (0: run until Ctrl-C)")
	fl.StringVar(&o.Prefix, "prefix", demo.DefaultPrefix, "prefix of every name the demo creates")
	fl.StringVar(&o.ListenAddress, "web.listen-address", demo.DefaultListenAddress, "address to serve /metrics on while the demo runs")
	fl.StringVarP(&file, "file", "f", "", "topology file to use instead of the embedded seed")
	fl.BoolVar(&plain, "plain", false, "print progress and snapshots line by line even on a terminal")
	fl.DurationVar(&o.SnapshotEvery, "snapshot-every", demo.DefaultSnapshotEvery, "without a terminal, print the view this often")
	return cmd
}

// demoExit is the demo's result as verify would give it: a failing demo
// is an error of its own; otherwise the verify verdict decides, and a
// verify that did not report could not check.
func demoExit(sum *demo.Summary, err error) error {
	if err != nil || sum == nil {
		return err
	}
	if sum.Verify == nil {
		why := sum.VerifyErr
		if why == nil {
			why = errors.New("no report")
		}
		return &exitError{2, fmt.Errorf("isolation not verified: %w", why)}
	}
	if v := sum.Verify.Verdict(); v != 0 {
		return &exitError{v, errors.New(sum.Verify.VerdictLine())}
	}
	return nil
}

func isTerminal(w any) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// interruptContext is cancelled by the first SIGINT, SIGTERM or SIGHUP
// (unless hangups were ignored from the start, as under nohup). Later
// signals are reported and otherwise ignored, so that a second Ctrl-C does
// not kill the process halfway through the teardown.
func interruptContext(parent context.Context, w interface{ Write([]byte) (int, error) }) (context.Context, func()) {
	ctx, cancel := context.WithCancel(parent)
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	if hup := hangups(); hup != nil {
		signal.Notify(sig, hup)
	}
	done := make(chan struct{})
	go func() {
		first := true
		for {
			select {
			case <-done:
				return
			case s := <-sig:
				if first {
					cancel()
					first = false
					continue
				}
				fmt.Fprintf(w, "nsflow: %v: tearing down, please wait (at most %v)\n", s, time.Minute)
			}
		}
	}()
	return ctx, func() {
		signal.Stop(sig)
		close(done)
		cancel()
	}
}

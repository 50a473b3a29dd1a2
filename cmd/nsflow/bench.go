package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sync/atomic"

	"github.com/nsflow/nsflow/bench"
	"github.com/nsflow/nsflow/topology"
	"github.com/nsflow/nsflow/traffic"
	"github.com/spf13/cobra"
	"golang.org/x/term"
)

func init() { subcommands = append(subcommands, newBenchCmd) }

func newBenchCmd() *cobra.Command {
	var (
		tf                        topologyFlags
		path, proto, output, plot string
		cfg                       bench.Config
	)
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure veth and bridge throughput with and without nsflow, and reconcile the counters",
		Long: `bench builds a topology for the run (or uses the namespaces of -f FILE,
or of the copy "nsflow topology up -f FILE --prefix P" built with --prefix P),
drives traffic with the built-in generator, and runs every case uninstrumented
and instrumented, interleaved. It reports median throughput, the overhead
ratio, CPU used and nsflow's cost per packet, and reconciles the generator's,
nsflow's and the kernel's counts. --size is the Ethernet frame size for UDP
(FCS included: 64 is the classic 64-byte packet) and the write size for TCP.

Exit status: 0 every count reconciles, 1 a count does not reconcile (or the
run failed), 2 a bad flag or topology file (also: no pair to measure, UDP
frames larger than a link's MTU), another bench or verify of the topology
running, or a run interrupted by Ctrl-C (what was built is removed; the
cases measured so far are reported).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// Bad flags are usage errors (status 2), found before
			// anything is built: 1 means a count that does not reconcile.
			// bench.Config reads zero as "the default"; on the command
			// line the defaults are the flags' own, so zero is a mistake.
			for _, name := range []string{"pairs", "streams", "duration", "rounds", "slices"} {
				if fl := cmd.Flags().Lookup(name); fl.Changed && (fl.Value.String() == "0" || fl.Value.String() == "0s") {
					return usage(fmt.Errorf("--%s: %s must be more than 0", name, fl.Value))
				}
			}
			var err error
			if cfg.Paths, err = bench.ParsePaths(path); err != nil {
				return benchUsage(err)
			}
			if cfg.Protos, err = benchProtos(proto); err != nil {
				return usage(err)
			}
			write, err := benchWriter(output)
			if err != nil {
				return usage(err)
			}
			if err := cfg.Check(); err != nil {
				return benchUsage(err)
			}
			// Checked before measuring: a chart that cannot be written
			// must not cost the run.
			if plot != "" {
				if err := bench.CheckPlotPath(plot); err != nil {
					return usage(fmt.Errorf("--plot: %w", err))
				}
			}
			switch {
			case tf.file != "":
				if cfg.Spec, err = tf.load(); err != nil {
					return err
				}
				cfg.SpecFile = tf.file
				if err := cfg.CheckSpec(); err != nil {
					return benchUsage(err)
				}
			case tf.prefix != "":
				return usage(errors.New("--prefix: needs -f FILE (the topology bench builds has a random prefix of its own)"))
			}
			stderr := cmd.ErrOrStderr()
			clearProgress, show := func() {}, func(bench.Progress) {}
			if f, ok := stderr.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
				show = func(p bench.Progress) { fmt.Fprintf(stderr, "\r\033[K%s", p) }
				// Cleared before the report: stdout and stderr are often
				// the one terminal.
				clearProgress = func() { fmt.Fprint(stderr, "\r\033[K") }
			}
			// On Ctrl-C, say what is being removed: a second one kills
			// bench and leaves it, and its name was never shown.
			var built atomic.Value
			cfg.Progress = func(p bench.Progress) {
				if p.Built != "" {
					built.Store(p.Built)
				}
				show(p)
			}
			done := make(chan struct{})
			defer close(done)
			go func() {
				select {
				case <-cmd.Context().Done():
					if name, _ := built.Load().(string); name != "" {
						clearProgress()
						fmt.Fprintf(stderr, "stopping: removing topology %s; a second Ctrl-C leaves it, to be removed with: printf 'name: %s\\n' > t.yaml && nsflow topology down -f t.yaml\n", name, name)
					}
				case <-done:
				}
			}()
			// main cancels cmd.Context() on Ctrl-C; bench.Run then removes
			// what it built, and a second Ctrl-C kills the process. An
			// interrupted run exits 2, as verify's does: its counts were
			// not all taken, so neither 0 nor 1 would be true.
			rep, err := bench.Run(cmd.Context(), cfg)
			clearProgress()
			var busy *topology.BusyError
			switch {
			case err != nil && cmd.Context().Err() != nil:
				err = &exitError{2, fmt.Errorf("interrupted, what was built is removed: %w", err)}
			case errors.As(err, &busy) && rep == nil:
				err = &exitError{2, err} // nothing measured: not a count that failed
			}
			if rep == nil || len(rep.Cases) == 0 {
				return err
			}
			// Cases measured before an interruption or a failed cleanup
			// are still reported; the error follows them. The report goes
			// first: it is what a failed chart must not take with it.
			if most := slices.Max(append([]int{0}, rep.Settings.Pairs...)); most > 0 && most < cfg.Pairs {
				fmt.Fprintf(stderr, "note: --pairs %d: the topology allows %d at once\n", cfg.Pairs, most)
			}
			werr := write(cmd.OutOrStdout(), rep)
			if plot != "" {
				if perr := bench.SavePlot(plot, rep); perr != nil {
					werr = errors.Join(werr, fmt.Errorf("--plot: %w", perr))
				}
			}
			if werr != nil || err != nil {
				return errors.Join(err, werr)
			}
			if rep.Differences > 0 {
				return &exitError{1, fmt.Errorf("reconciliation: %d checks did not match", rep.Differences)}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVarP(&tf.file, "file", "f", "", "topology file whose namespaces to measure (default: build one for the run)")
	f.StringVar(&tf.prefix, "prefix", "", "with -f: "+prefixUsage)
	f.StringVar(&path, "path", "veth", "path to measure: veth, bridge or both")
	f.IntVar(&cfg.Pairs, "pairs", 1, "most client/server pairs at once (at most 250); runs 1, 2, 4, ... up to N")
	f.IntVar(&cfg.Streams, "streams", 1, "TCP connections or UDP sockets per pair")
	f.DurationVar(&cfg.Duration, "duration", bench.DefaultDuration, "length of each sample")
	f.StringVar(&proto, "proto", "tcp", "traffic: tcp, udp or both")
	f.IntVar(&cfg.Size, "size", 0, "UDP: Ethernet frame bytes with FCS (default 64); TCP: bytes per write (default 131072, at most 16 MiB)")
	f.IntVar(&cfg.Rounds, "rounds", bench.DefaultRounds, "uninstrumented/instrumented sample pairs per case")
	f.IntVar(&cfg.Slices, "slices", bench.DefaultSlices, "instrumented slices per case for the overhead ratio, each "+bench.SliceLength.String()+" and between two uninstrumented ones")
	f.BoolVar(&cfg.HookCost, "hook-cost", false, "also measure a no-op tc program on the same hooks, in as many slices: the hook's share of the overhead (needs tcx)")
	f.BoolVar(&cfg.NoIperf3, "no-iperf3", false, "skip the iperf3 sanity measurement")
	f.StringVarP(&output, "output", "o", "table", "output format: table, json or csv")
	f.StringVar(&plot, "plot", "", "write an SVG chart of throughput and overhead per case to this file")
	return cmd
}

func benchProtos(s string) ([]traffic.Proto, error) {
	if s == "both" {
		return []traffic.Proto{traffic.TCP, traffic.UDP}, nil
	}
	p, err := traffic.ParseProto(s)
	if err != nil {
		return nil, fmt.Errorf("--proto: unknown %q (want tcp, udp or both)", s)
	}
	return []traffic.Proto{p}, nil
}

func benchWriter(format string) (func(io.Writer, *bench.Report) error, error) {
	switch format {
	case "table":
		return bench.WriteTable, nil
	case "json":
		return bench.WriteJSON, nil
	case "csv":
		return bench.WriteCSV, nil
	}
	return nil, fmt.Errorf("--output: unknown format %q (want table, json or csv)", format)
}

// benchUsage makes what bench.ParsePaths or bench.Config.Check refuse a
// usage error, each *bench.FieldError naming its flag: the fields and the
// flags have the same names.
func benchUsage(err error) error {
	all := []error{err}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		all = j.Unwrap()
	}
	var errs []error
	for _, e := range all {
		var fe *bench.FieldError
		if errors.As(e, &fe) {
			e = fmt.Errorf("--%s: %w", fe.Field, fe.Err)
		}
		errs = append(errs, e)
	}
	return usage(errors.Join(errs...))
}

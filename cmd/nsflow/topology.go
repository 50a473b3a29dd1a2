package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/nsflow/nsflow/topology"
	"github.com/spf13/cobra"
	"golang.org/x/term"
)

func init() { subcommands = append(subcommands, newTopologyCmd) }

// topologyFlags are shared by every topology subcommand, and by verify
// and bench, which work on what `topology up` built.
type topologyFlags struct {
	file   string
	prefix string
}

// prefixUsage is --prefix's help: one meaning on every command that takes
// it, so that verify and bench find the copy `topology up --prefix` built.
const prefixUsage = "prefix for the topology, namespace, bridge and host interface names (a copy side by side; host addresses stay the same)"

// load reads and validates the file; a bad file exits with status 2.
func (f *topologyFlags) load() (*topology.Spec, error) {
	if f.file == "" {
		return nil, &exitError{2, fmt.Errorf("--file is required")}
	}
	s, err := topology.LoadWithPrefix(f.file, f.prefix)
	if err != nil {
		return nil, &exitError{2, err}
	}
	return s, nil
}

func newTopologyCmd() *cobra.Command {
	f := &topologyFlags{}
	cmd := &cobra.Command{
		Use:   "topology",
		Short: "Build, remove, inspect and draw a topology of network namespaces",
	}
	cmd.PersistentFlags().StringVarP(&f.file, "file", "f", "", "topology file (YAML)")
	cmd.PersistentFlags().StringVar(&f.prefix, "prefix", "", prefixUsage)
	_ = cmd.MarkPersistentFlagFilename("file", "yaml", "yml")
	cmd.AddCommand(newTopologyUpCmd(f), newTopologyDownCmd(f), newTopologyShowCmd(f), newTopologyGraphCmd(f))
	return cmd
}

// progressLine draws one updating line on a terminal and nothing
// otherwise, so scripts see only the final summary.
func progressLine(w *os.File) (topology.ProgressFunc, func()) {
	if !term.IsTerminal(int(w.Fd())) {
		return nil, func() {}
	}
	drawn := false
	report := func(p topology.Progress) {
		// Redraw at most ~100 times per phase.
		if p.Total >= 100 && p.Done%(p.Total/100) != 0 && p.Done != p.Total {
			return
		}
		fmt.Fprintf(w, "\r\033[K%s %d/%d", p.Phase, p.Done, p.Total)
		drawn = true
	}
	clear := func() {
		if drawn {
			fmt.Fprint(w, "\r\033[K")
		}
	}
	return report, clear
}

// apply loads the file and runs op (topology.Up or topology.Down) with a
// progress line on a terminal, then prints op's summary.
func apply[R any](cmd *cobra.Command, f *topologyFlags, opts topology.Options,
	op func(context.Context, *topology.Spec, topology.Options) (R, error)) error {
	s, err := f.load()
	if err != nil {
		return err
	}
	report, clear := progressLine(os.Stderr)
	opts.Progress = report
	res, err := op(cmd.Context(), s, opts)
	clear()
	if err != nil {
		return err
	}
	fmt.Fprintln(cmd.OutOrStdout(), res)
	return nil
}

func newTopologyUpCmd(f *topologyFlags) *cobra.Command {
	var (
		workers int
		prune   bool
	)
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Create the topology (idempotent; rolls back on failure)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if workers < 0 {
				return &exitError{2, fmt.Errorf("--workers: %d is negative", workers)}
			}
			return apply(cmd, f, topology.Options{Workers: workers, Prune: prune}, topology.Up)
		},
	}
	cmd.Flags().IntVar(&workers, "workers", 0, "namespaces built at once (0: a default for this machine)")
	cmd.Flags().BoolVar(&prune, "prune", false, "also delete what the topology owns but the file no longer declares: namespaces and host interfaces, static routes and permanent addresses")
	return cmd
}

func newTopologyDownCmd(f *topologyFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "down",
		Short: "Delete what the topology owns (succeeds when already down)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return apply(cmd, f, topology.Options{}, topology.Down)
		},
	}
}

func newTopologyShowCmd(f *topologyFlags) *cobra.Command {
	var (
		output   string
		exitCode bool
	)
	cmd := &cobra.Command{
		Use:   "show",
		Short: "Show the live state of the topology and any drift from the file",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "table" && output != "json" {
				return &exitError{2, fmt.Errorf("--output: unknown format %q (want table or json)", output)}
			}
			s, err := f.load()
			if err != nil {
				return err
			}
			st, err := topology.Show(cmd.Context(), s, topology.Options{})
			if err != nil && exitCode {
				return &exitError{2, err} // 1 is drift
			}
			if err != nil {
				return err
			}
			if err := writeState(cmd.OutOrStdout(), st, output); err != nil {
				return err
			}
			if exitCode && len(st.Drift) > 0 {
				return &exitError{1, fmt.Errorf("topology %s: %d difference(s) from the file", s.Name, len(st.Drift))}
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	cmd.Flags().BoolVar(&exitCode, "exit-code", false, "exit with status 1 when the live state differs from the file, 2 when it cannot tell (for scripts and CI)")
	_ = cmd.RegisterFlagCompletionFunc("output", cobra.FixedCompletions([]string{"table", "json"}, cobra.ShellCompDirectiveNoFileComp))
	return cmd
}

func writeState(w io.Writer, st *topology.State, output string) error {
	if output == "json" {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(st)
	}
	return st.WriteTable(w)
}

func newTopologyGraphCmd(f *topologyFlags) *cobra.Command {
	var format string
	cmd := &cobra.Command{
		Use:   "graph",
		Short: "Draw the topology as a mermaid flowchart or a Graphviz dot graph",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !slices.Contains(topology.GraphFormats, format) {
				return &exitError{2, fmt.Errorf("--format: unknown graph format %q (want %s)", format, strings.Join(topology.GraphFormats, " or "))}
			}
			s, err := f.load()
			if err != nil {
				return err
			}
			return topology.WriteGraph(cmd.OutOrStdout(), s, format)
		},
	}
	cmd.Flags().StringVar(&format, "format", topology.GraphMermaid, "graph format: mermaid or dot")
	_ = cmd.RegisterFlagCompletionFunc("format", cobra.FixedCompletions(topology.GraphFormats, cobra.ShellCompDirectiveNoFileComp))
	return cmd
}

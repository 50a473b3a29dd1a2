package main

import (
	"errors"
	"fmt"

	"github.com/nsflow/nsflow/verify"
	"github.com/spf13/cobra"
)

func init() { subcommands = append(subcommands, newVerifyCmd) }

func newVerifyCmd() *cobra.Command {
	var (
		tf         topologyFlags
		output     string
		opts       verify.Options
		noEvidence bool
	)
	cmd := &cobra.Command{
		Use:   "verify -f FILE [--prefix P]",
		Short: "Prove that the namespaces of a running topology are isolated as declared",
		Long: `verify probes every address of every namespace from every other one (TCP,
UDP and ICMP on the declared ports), checks that each namespace has its own
port space and sees only its own interfaces, addresses, routes, neighbours,
firewall rules and sockets, and reads the eBPF datapath for packets that
must not have arrived. The topology must be up; --prefix P verifies the copy
that "nsflow topology up -f FILE --prefix P" built.

Exit status: 0 every check passes, 1 a violation, 2 a spec or environment
error (intent the topology contradicts, a namespace missing, no BPF), a
probe or check that could not run, incomplete eBPF evidence, a --load that
did not hold to the end, or an interrupted run (no report).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch output {
			case "table", "json", "junit":
			default:
				return &exitError{2, fmt.Errorf("--output: unknown format %q (want table, json or junit)", output)}
			}
			// verify.Options reads a zero timeout as the default; on the
			// command line the default is the flag's own, so a value
			// that is not positive is a mistake, not a request for 2s.
			if opts.Timeout < verify.MinTimeout {
				return usage(fmt.Errorf("--timeout: %v is below %v: a probe's own scheduling would read as a lost packet", opts.Timeout, verify.MinTimeout))
			}
			spec, err := tf.load()
			if err != nil {
				return err
			}
			opts.NoEvidence = noEvidence
			rep, err := verify.Run(cmd.Context(), spec, opts)
			if err != nil {
				return &exitError{2, err}
			}
			w := cmd.OutOrStdout()
			switch output {
			case "json":
				err = rep.WriteJSON(w)
			case "junit":
				err = rep.WriteJUnit(w)
			default:
				err = rep.WriteTable(w)
			}
			if err != nil {
				// A violation outranks an output that could not be
				// written (a closed pipe): the verdict stands.
				if rep.Verdict() == 1 {
					return &exitError{1, errors.Join(errors.New(rep.VerdictLine()), fmt.Errorf("write the report: %w", err))}
				}
				return &exitError{2, err}
			}
			if v := rep.Verdict(); v != 0 {
				err = &exitError{v, errors.New(rep.VerdictLine())}
				if output == "table" {
					// The table ends with the verdict line; JSON and
					// JUnit have no such line, so stderr gives it.
					err = shown{err}
				}
				return err
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVarP(&tf.file, "file", "f", "", "topology file (YAML)")
	f.StringVar(&tf.prefix, "prefix", "", prefixUsage)
	f.StringVarP(&output, "output", "o", "table", "output format: table, json or junit")
	f.BoolVar(&opts.Load, "load", false, "saturate allowed paths with bulk TCP while verifying, and report the throughput")
	f.DurationVar(&opts.Timeout, "timeout", verify.DefaultTimeout, "how long each probe waits for an answer")
	f.BoolVar(&noEvidence, "no-evidence", false, "skip the eBPF evidence (hosts without BPF)")
	return cmd
}

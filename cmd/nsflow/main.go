// Command nsflow builds network-namespace topologies, observes the traffic
// between them with tc eBPF programs, exports it to Prometheus and proves
// that namespace isolation holds.
//
// This package is wiring only: flags, output and exit codes. The work lives
// in the topology, collector and bpf packages.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

// subcommands is filled by the init functions of this package's other files,
// one file per subcommand, so that adding one touches no shared list.
var subcommands []func() *cobra.Command

// exitError carries a specific exit status (verify uses 1 for a violation
// and 2 for a spec or environment error).
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// usage marks a bad flag value or argument: exit status 2.
func usage(err error) error { return &exitError{2, err} }

// shown marks an error whose message the command's output already gave
// (verify's verdict line ends its table): main exits with its status but
// does not print it again.
type shown struct{ error }

func (s shown) Unwrap() error { return s.error }

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "nsflow",
		Short:         "See and prove traffic and isolation between Linux network namespaces",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	for _, sub := range subcommands {
		root.AddCommand(sub())
	}
	usageErrors(root)
	return root
}

// usageErrors gives bad flags and arguments, on every command, exit status
// 2: for verify and demo 1 means a violation, and a typo is none. A
// command that only groups others (nsflow, nsflow topology) shows its
// help without arguments and refuses unknown ones.
func usageErrors(c *cobra.Command) {
	c.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &exitError{2, err} })
	if c.HasSubCommands() && !c.Runnable() {
		c.Args = cobra.ArbitraryArgs
		c.RunE = func(c *cobra.Command, args []string) error {
			if len(args) == 0 {
				return c.Help()
			}
			return &exitError{2, fmt.Errorf("unknown command %q for %q (see %s --help)", args[0], c.CommandPath(), c.CommandPath())}
		}
		for _, sub := range c.Commands() {
			usageErrors(sub)
		}
		return
	}
	if args := c.Args; args != nil {
		c.Args = func(c *cobra.Command, a []string) error {
			if err := args(c, a); err != nil {
				return &exitError{2, err}
			}
			return nil
		}
	}
	for _, sub := range c.Commands() {
		usageErrors(sub)
	}
}

func main() {
	// Ctrl-C, SIGTERM or a hangup (the terminal closed) cancels the
	// command's context, so a long `topology up` rolls back and a verify
	// removes its responders. After the first signal the handler is
	// dropped: a second Ctrl-C kills the process. Hangups are ignored
	// from then on (a dropped session sends more than one), and not
	// caught at all under nohup, which asked for them to be ignored.
	sigs := []os.Signal{os.Interrupt, syscall.SIGTERM}
	hup := hangups()
	if hup != nil {
		sigs = append(sigs, hup)
	}
	ctx, stop := signal.NotifyContext(context.Background(), sigs...)
	go func() {
		<-ctx.Done()
		if hup != nil {
			signal.Ignore(hup)
		}
		stop()
	}()
	err := newRootCmd().ExecuteContext(ctx)
	stop()
	os.Exit(exitStatus(err, os.Stderr))
}

// hangups is SIGHUP, or nil when the process was started with it ignored
// (nohup): catching it would undo that.
func hangups() os.Signal {
	if signal.Ignored(syscall.SIGHUP) {
		return nil
	}
	return syscall.SIGHUP
}

// exitStatus prints err to stderr, unless the output already showed it,
// and returns the exit status it carries: 1 unless it says otherwise.
func exitStatus(err error, stderr io.Writer) int {
	if err == nil {
		return 0
	}
	if !errors.As(err, new(shown)) {
		fmt.Fprintln(stderr, "nsflow:", err)
	}
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	return 1
}

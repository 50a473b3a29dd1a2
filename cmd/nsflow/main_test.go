package main

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

// Bad flags and arguments exit with status 2 on every command, before
// anything runs: for verify and demo 1 means an isolation violation.
func TestUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"topology", "up", "-f", "x.yaml", "--workers", "-3"}, "--workers: -3 is negative"},
		{[]string{"topology", "up", "--bogus"}, "unknown flag: --bogus"},
		{[]string{"topology", "down", "-f", "x.yaml", "extra"}, `unknown command "extra"`},
		{[]string{"topology", "graph", "--format"}, "flag needs an argument"},
		{[]string{"agent", "--netns.gone-retention", "soon"}, "invalid argument"},
		{[]string{"bench", "--pairs", "two"}, "invalid argument"},
		{[]string{"demo", "--duration", "x"}, "invalid argument"},
		{[]string{"version", "extra"}, `unknown command "extra"`},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			root := newRootCmd()
			var out bytes.Buffer
			root.SetOut(&out)
			root.SetErr(&out)
			root.SetArgs(tc.args)
			err := root.Execute()
			var ee *exitError
			if !errors.As(err, &ee) || ee.code != 2 || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v; want exit status 2 with %q", err, tc.want)
			}
		})
	}
}

package main

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/nsflow/nsflow/internal/testenv"
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
		{[]string{"agent", "--flows.max=0"}, "--flows.max: 0 is no flow table"},
		{[]string{"agent", "--flows.max=4294967295"}, "--flows.max: 4294967295 is more than 16777216"},
		{[]string{"agent", "--bpf.attach-mode=xdp"}, "--bpf.attach-mode: unknown mode"},
		{[]string{"agent", "--netns.include=("}, "--netns.include"},
		{[]string{"agent", "--bpf.pin-path="}, "--bpf.pin-path: must not be empty (--bpf.pin=false turns pinning off)"},
		{[]string{"agent", "--state.file="}, "--state.file: must not be empty"},
		{[]string{"agent", "--web.listen-address="}, "--web.listen-address: must not be empty"},
		{[]string{"agent", "--topology", "/nonexistent/nsflow-topology.yaml"}, "--topology: "},
		{[]string{"topology", "graph", "-f", "/nonexistent/x.yaml", "--format", "svg"}, `--format: unknown graph format "svg" (want mermaid or dot)`},
		{[]string{"bench", "--pairs", "two"}, "invalid argument"},
		{[]string{"demo", "--duration", "x"}, "invalid argument"},
		{[]string{"version", "extra"}, `unknown command "extra"`},
		{[]string{"bogus"}, `unknown command "bogus" for "nsflow"`},
		{[]string{"topology", "dwon"}, `unknown command "dwon" for "nsflow topology"`},
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

// exitStatus prints an error once: not at all when the output already
// showed it (verify's verdict line), and exits with the status it carries.
func TestExitStatus(t *testing.T) {
	for _, tc := range []struct {
		name   string
		err    error
		code   int
		stderr string
	}{
		{"success", nil, 0, ""},
		{"plain error", errors.New("boom"), 1, "nsflow: boom\n"},
		{"usage", usage(errors.New("--x: bad")), 2, "nsflow: --x: bad\n"},
		{"shown verdict", shown{&exitError{1, errors.New("FAIL: 1 probe not as expected")}}, 1, ""},
		{"shown, wrapped", fmt.Errorf("x: %w", shown{&exitError{2, errors.New("ERROR: ...")}}), 2, ""},
	} {
		var b bytes.Buffer
		if code := exitStatus(tc.err, &b); code != tc.code || b.String() != tc.stderr {
			t.Errorf("%s: exit %d, stderr %q; want %d, %q", tc.name, code, b.String(), tc.code, tc.stderr)
		}
	}
}

// show --exit-code exits 1 when the live state differs from the file
// (here: a topology that is not up); without it, show exits 0.
func TestShowExitCode(t *testing.T) {
	testenv.RequireRoot(t)
	file := writeFile(t, strings.Replace(twoNamespaces, "%s", testenv.Name("nsfs"), 1))
	for _, tc := range []struct {
		args []string
		code int
	}{
		{[]string{"topology", "show", "-f", file}, 0},
		{[]string{"topology", "show", "-f", file, "--exit-code"}, 1},
	} {
		root := newRootCmd()
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetArgs(tc.args)
		err := root.Execute()
		var ee *exitError
		switch {
		case tc.code == 0 && err != nil:
			t.Errorf("%v: %v, want success", tc.args, err)
		case tc.code != 0 && (!errors.As(err, &ee) || ee.code != tc.code || !strings.Contains(err.Error(), "difference(s) from the file")):
			t.Errorf("%v: %v, want exit status %d", tc.args, err, tc.code)
		}
		if !strings.Contains(out.String(), "missing") {
			t.Errorf("%v: output lacks the drift:\n%s", tc.args, out.String())
		}
	}
}

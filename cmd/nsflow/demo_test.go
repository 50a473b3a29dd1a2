package main

import (
	"bytes"
	"errors"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/nsflow/nsflow/demo"
	"github.com/nsflow/nsflow/internal/testenv"
	"github.com/nsflow/nsflow/internal/topotest"
	"github.com/nsflow/nsflow/topology"
	"github.com/nsflow/nsflow/verify"
)

// demoReport is a verify report of two namespaces that reach each other as
// intended, changed by edit.
func demoReport(edit func(*verify.Report)) *verify.Report {
	r := &verify.Report{Namespaces: []string{"x", "y"}, Ports: []string{"tcp/8080"}, Evidence: &verify.Evidence{Ports: 2}}
	for _, p := range [][2]string{{"x", "y"}, {"y", "x"}} {
		r.Probes = append(r.Probes, &verify.Probe{From: p[0], To: p[1], Addr: netip.MustParseAddr("198.18.5.1"), Port: "tcp/8080",
			Expect: p[1], Outcome: verify.Replied, By: p[1], Claimed: p[1], Try: 1})
	}
	if edit != nil {
		edit(r)
	}
	return r
}

// The demo exits as verify would on its final verdict.
func TestDemoExit(t *testing.T) {
	boom := errors.New("topology up: boom")
	for _, tc := range []struct {
		name string
		sum  *demo.Summary
		err  error
		code int // 0: no error; -1: the demo's own error
		want string
	}{
		{"holds", &demo.Summary{Verify: demoReport(nil)}, nil, 0, ""},
		{"probe violation", &demo.Summary{Verify: demoReport(func(r *verify.Report) { r.Probes[0].Expect = "" })}, nil, 1, "FAIL: 1 probe not as expected"},
		{"evidence violation", &demo.Summary{Verify: demoReport(func(r *verify.Report) {
			r.Evidence.Violations = []verify.Violation{{Src: "x", Dst: "y", Packets: 2}}
		})}, nil, 1, "1 evidence violation (2 packets)"},
		{"could not check", &demo.Summary{Verify: demoReport(func(r *verify.Report) { r.Probes[1].Outcome = verify.Failed })}, nil, 2, "ERROR: 1 probe and 0 checks could not run"},
		{"verify did not report", &demo.Summary{VerifyErr: verify.ErrInterrupted}, nil, 2, "isolation not verified: " + verify.ErrInterrupted.Error()},
		{"the demo failed", &demo.Summary{}, boom, -1, "topology up: boom"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := demoExit(tc.sum, tc.err)
			var ee *exitError
			switch {
			case tc.code == 0 && err != nil:
				t.Errorf("exit error %v, want none", err)
			case tc.code == -1 && (err != tc.err):
				t.Errorf("error %v, want the demo's own %v", err, tc.err)
			case tc.code > 0 && (!errors.As(err, &ee) || ee.code != tc.code || !strings.Contains(ee.Error(), tc.want)):
				t.Errorf("error %v, want exit status %d with %q", err, tc.code, tc.want)
			}
		})
	}
}

// `nsflow demo` on a topology whose intent verify rejects ends with status
// 2 before anything is built.
func TestDemoCLIExitsOnVerdict(t *testing.T) {
	testenv.RequireBPFFS(t)
	prefix := testenv.Name("dc") + "-"
	file := writeFile(t, strings.Replace(twoNamespaces, "%s", "democli", 1)+`
isolation:
  deny: [{from: [x], to: [y]}]
`)
	spec, err := topology.Load(file)
	if err != nil {
		t.Fatal(err)
	}
	topotest.DownAtCleanup(t, spec, prefix)
	root := newRootCmd()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs([]string{"demo", "-f", file, "--prefix", prefix, "--duration", "1s", "--web.listen-address", "127.0.0.1:0"})
	err = root.Execute()
	var ee *exitError
	if !errors.As(err, &ee) || ee.code != 2 || !strings.Contains(err.Error(), "isolation.deny[0]") || !strings.Contains(err.Error(), "must not reach") {
		t.Errorf("demo: %v; want exit status 2 naming the rule\n%s", err, out.String())
	}
	if strings.Contains(out.String(), "topology up") {
		t.Errorf("the demo built the topology first:\n%s", out.String())
	}
	for _, ns := range []string{"x", "y"} {
		if _, err := os.Stat(topology.NetnsDir + "/" + prefix + ns); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("namespace %s%s left behind: %v", prefix, ns, err)
		}
	}
}

// Flags whose empty or zero value the demo cannot use are refused, exit
// 2, before anything is built, rather than silently replaced.
func TestDemoBadFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--duration", "-1s"}, "--duration -1s: must not be negative"},
		{[]string{"--prefix", ""}, "--prefix: must not be empty"},
		{[]string{"--web.listen-address", ""}, "--web.listen-address: must not be empty"},
		{[]string{"--snapshot-every", "0s"}, "--snapshot-every 0s: must be more than 0"},
	} {
		root := newRootCmd()
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetErr(&out)
		root.SetArgs(append([]string{"demo"}, tc.args...))
		err := root.Execute()
		var ee *exitError
		if !errors.As(err, &ee) || ee.code != 2 || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("demo %q: %v, want exit status 2 with %q", tc.args, err, tc.want)
		}
	}
}

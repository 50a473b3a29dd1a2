package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nsflow/nsflow/internal/testenv"
	"github.com/nsflow/nsflow/internal/topotest"
	"github.com/nsflow/nsflow/topology"
)

// TestBenchCLIErrors: bad flags are refused before anything is measured
// or built, naming the flag, with exit status 2 (1 is a count that does
// not reconcile).
func TestBenchCLIErrors(t *testing.T) {
	dir := t.TempDir()
	file := func(name, yaml string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(yaml), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	busy := testenv.Name("bcb")
	unlock, err := topology.LockRun(busy)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	pair := "\nnamespaces: [{name: a}, {name: b}]\nlinks: [{mtu: 1280, endpoints: [{namespace: a, interface: e0, addresses: [198.18.9.1/30]}, {namespace: b, interface: e0, addresses: [198.18.9.2/30]}]}]\n"
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--pairs", "0"}, "--pairs: 0 must be more than 0"},
		{[]string{"--streams", "0"}, "--streams: 0 must be more than 0"},
		{[]string{"--duration", "0"}, "--duration: 0s must be more than 0"},
		{[]string{"--rounds", "0"}, "--rounds: 0 must be more than 0"},
		{[]string{"--slices", "0"}, "--slices: 0 must be more than 0"},
		{[]string{"--pairs", "1000"}, "--pairs: 1000 is outside 1.."},
		{[]string{"--streams", "-1"}, "--streams: -1 is outside 1..128"},
		{[]string{"--duration", "1ms"}, "--duration: 1ms is shorter than 100ms"},
		{[]string{"--rounds", "-3"}, "--rounds: -3 is negative"},
		{[]string{"--slices", "20000"}, "--slices: 20000 is outside 1..10000"},
		{[]string{"--size", "-1"}, "--size: -1 is negative"},
		{[]string{"--proto", "udp", "--size", "9000"}, "--size: UDP frame 9000 is larger than a 1500-byte MTU allows"},
		{[]string{"--proto", "both", "--size", "40"}, "--size: frame size 40 is too small"},
		{[]string{"--path", "foo"}, `--path: unknown "foo" (want veth, bridge or both)`},
		{[]string{"--proto", "sctp"}, `--proto: unknown "sctp" (want tcp, udp or both)`},
		{[]string{"-o", "xml"}, `--output: unknown format "xml" (want table, json or csv)`},
		{[]string{"--plot", filepath.Join(dir, "chart.png")}, "--plot: " + filepath.Join(dir, "chart.png") + ": the chart is SVG"},
		{[]string{"--plot", filepath.Join(dir, "none", "chart.svg")}, "--plot: directory " + filepath.Join(dir, "none") + ": no such file or directory"},
		{[]string{"--prefix", "p-"}, "--prefix: needs -f FILE"},
		{[]string{"-f", filepath.Join(dir, "none.yaml")}, "no such file"},
		{[]string{"--plot", dir}, "--plot: " + dir + ": not a regular file (a directory)"},
		{[]string{"-f", file("nopair.yaml", "name: np\nnamespaces: [{name: a}]\n")}, "topology np has no veth pair to measure"},
		{[]string{"-f", file("mtu.yaml", "name: mtu"+pair), "--proto", "udp", "--size", "1518"}, "--size: a 1518-byte frame carries 1500 bytes of IP, more than the 1280-byte MTU between a:e0 and b:e0"},
		{[]string{"-f", file("busy.yaml", "name: "+busy+pair)}, "another nsflow verify or bench of topology " + busy + " is running"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			root := newRootCmd()
			root.SetArgs(append([]string{"bench"}, tc.args...))
			err := root.Execute()
			var ee *exitError
			if !errors.As(err, &ee) || ee.code != 2 || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want exit status 2 and one containing %q", err, tc.want)
			}
		})
	}
}

// TestBenchCLIInterrupted: Ctrl-C (main cancels the context) ends bench
// with status 2, as it does verify: 1 would claim a count that does not
// reconcile, 0 that all of them do.
func TestBenchCLIInterrupted(t *testing.T) {
	testenv.RequireBPFFS(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	time.AfterFunc(2*time.Second, cancel)
	root := newRootCmd()
	var out bytes.Buffer
	root.SetOut(&out)
	// A file: bench writes to it from two goroutines.
	errOut, err := os.Create(filepath.Join(t.TempDir(), "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	defer errOut.Close()
	root.SetErr(errOut)
	root.SetArgs([]string{"bench", "--duration", "1m", "--no-iperf3"})
	err = root.ExecuteContext(ctx)
	var ee *exitError
	if !errors.As(err, &ee) || ee.code != 2 || !strings.Contains(err.Error(), "interrupted") {
		t.Fatalf("interrupted bench: %v, want exit status 2 saying it was interrupted\n%s", err, out.String())
	}
	// It said what it was removing, and how to remove it if killed.
	said, _ := os.ReadFile(errOut.Name())
	if !regexp.MustCompile(`stopping: removing topology (nb[0-9a-f]{6}-bench); .* printf 'name: nb[0-9a-f]{6}-bench\\n' > t.yaml && nsflow topology down -f t.yaml`).Match(said) {
		t.Errorf("stderr does not name the topology being removed:\n%s", said)
	}
}

// TestBenchCLIPrefix measures the copy that `topology up --prefix` built,
// from the file as it is, and leaves it up: it was there before.
func TestBenchCLIPrefix(t *testing.T) {
	testenv.RequireBPFFS(t)
	s, err := topology.Parse([]byte(strings.Replace(twoNamespaces, "%s", "bench", 1)))
	if err != nil {
		t.Fatal(err)
	}
	prefix := testenv.Name("nbc") + "-"
	up := topotest.Up(t, s, prefix)
	file := writeFile(t, strings.Replace(twoNamespaces, "%s", "bench", 1))
	root := newRootCmd()
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut) // not a terminal: written from the command's goroutine only
	root.SetArgs([]string{"bench", "-f", file, "--prefix", prefix, "--pairs", "3", "--duration", "200ms", "--rounds", "1", "--slices", "1", "--no-iperf3", "-o", "json"})
	if err := root.Execute(); err != nil {
		t.Fatalf("bench -f --prefix: %v\n%s", err, out.String())
	}
	// Asked for more pairs than the file has: said, not silent.
	if !strings.Contains(errOut.String(), "note: --pairs 3: the topology allows 1 at once") {
		t.Errorf("stderr %q, want a note that the file has 1 pair", errOut.String())
	}
	var rep struct {
		Topology string `json:"topology"`
		Settings struct {
			Size  int            `json:"size"`
			Sizes map[string]int `json:"sizes"`
		} `json:"settings"`
		Cases []struct{ Name string }
	}
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("json: %v\n%s", err, out.String())
	}
	if rep.Topology != up.Name || len(rep.Cases) != 1 {
		t.Errorf("measured topology %q with %d cases, want %q with 1", rep.Topology, len(rep.Cases), up.Name)
	}
	// TCP's default write size, as used: not 0 for "not given".
	if rep.Settings.Size != 131072 || rep.Settings.Sizes["tcp"] != 131072 {
		t.Errorf("settings size %d, sizes %v; want 131072 for TCP", rep.Settings.Size, rep.Settings.Sizes)
	}
	if _, err := os.Stat(up.NetnsPath(up.Namespaces[0].Name)); err != nil {
		t.Errorf("the copy was taken down: %v", err)
	}
}

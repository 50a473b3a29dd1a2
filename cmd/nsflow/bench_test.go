package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nsflow/nsflow/internal/testenv"
	"github.com/nsflow/nsflow/internal/topotest"
	"github.com/nsflow/nsflow/topology"
)

// TestBenchCLIErrors: bad flags are refused before anything is measured
// or built, naming the flag.
func TestBenchCLIErrors(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--pairs", "0"}, "--pairs: must be more than 0"},
		{[]string{"--streams", "0"}, "--streams: must be more than 0"},
		{[]string{"--duration", "0"}, "--duration: must be more than 0"},
		{[]string{"--rounds", "0"}, "--rounds: must be more than 0"},
		{[]string{"--slices", "0"}, "--slices: must be more than 0"},
		{[]string{"--plot", filepath.Join(dir, "chart.png")}, "--plot: " + filepath.Join(dir, "chart.png") + ": the chart is SVG"},
		{[]string{"--plot", filepath.Join(dir, "none", "chart.svg")}, "--plot: open " + filepath.Join(dir, "none")},
		{[]string{"--prefix", "p-"}, "--prefix: needs -f FILE"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			root := newRootCmd()
			root.SetArgs(append([]string{"bench"}, tc.args...))
			err := root.Execute()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
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
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetArgs([]string{"bench", "-f", file, "--prefix", prefix, "--duration", "200ms", "--rounds", "1", "--slices", "1", "--no-iperf3", "-o", "json"})
	if err := root.Execute(); err != nil {
		t.Fatalf("bench -f --prefix: %v\n%s", err, out.String())
	}
	var rep struct {
		Topology string `json:"topology"`
		Cases    []struct{ Name string }
	}
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("json: %v\n%s", err, out.String())
	}
	if rep.Topology != up.Name || len(rep.Cases) != 1 {
		t.Errorf("measured topology %q with %d cases, want %q with 1", rep.Topology, len(rep.Cases), up.Name)
	}
	if _, err := os.Stat(up.NetnsPath(up.Namespaces[0].Name)); err != nil {
		t.Errorf("the copy was taken down: %v", err)
	}
}

package main

import (
	"path/filepath"
	"strings"
	"testing"
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

package bench

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestPlotPathErrors: an error writing the chart names what the user gave
// (the file, or its directory), never the temporary file beside it.
func TestPlotPathErrors(t *testing.T) {
	dir := t.TempDir()
	taken := filepath.Join(dir, "taken.svg")
	if err := os.MkdirAll(filepath.Join(taken, "x"), 0o755); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "none", "b.svg")
	for _, tc := range []struct {
		name string
		err  error
		want string
	}{
		{"check, no directory", CheckPlotPath(missing), "directory " + filepath.Dir(missing) + ": no such file or directory"},
		{"check, not svg", CheckPlotPath(filepath.Join(dir, "b.png")), filepath.Join(dir, "b.png") + ": the chart is SVG"},
		{"save, no directory", SavePlot(missing, &Report{}), "directory " + filepath.Dir(missing) + ": no such file or directory"},
		{"save over a directory", SavePlot(taken, &Report{}), taken + ": "},
	} {
		if tc.err == nil || !strings.HasPrefix(tc.err.Error(), tc.want) || strings.Contains(tc.err.Error(), ".nsflow-plot") {
			t.Errorf("%s: error %v, want one starting %q and not naming the temporary file", tc.name, tc.err, tc.want)
		}
	}
	if err := CheckPlotPath(filepath.Join(dir, "b.svg")); err != nil {
		t.Errorf("writable directory: %v", err)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".nsflow-plot-*")); len(left) > 0 {
		t.Errorf("temporary files left behind: %v", left)
	}
}

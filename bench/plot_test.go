package bench

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
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

// The chart replaces only a regular file: a device (here a named pipe,
// so that a regression cannot replace the host's /dev/null), a directory
// or a dangling link is refused before the run, untouched; a link to a
// file stays a link, and the file it leads to gets the chart.
func TestPlotPathKinds(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo.svg")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ path, want string }{
		{fifo, fifo + ": not a regular file (a named pipe)"},
		{dir, dir + ": not a regular file (a directory)"},
	} {
		if err := CheckPlotPath(tc.path); err == nil || err.Error() != tc.want+"; the chart is written to a file" {
			t.Errorf("CheckPlotPath(%s): %v, want %q", tc.path, err, tc.want)
		}
		if err := SavePlot(tc.path, &Report{}); err == nil {
			t.Errorf("SavePlot(%s) wrote over it", tc.path)
		}
	}
	if st, err := os.Lstat(fifo); err != nil {
		t.Fatal(err)
	} else if st.Mode()&os.ModeNamedPipe == 0 {
		t.Fatalf("the named pipe was replaced: %v", st.Mode())
	}
	dangling := filepath.Join(dir, "dangling.svg")
	if err := os.Symlink(filepath.Join(dir, "none.svg"), dangling); err != nil {
		t.Fatal(err)
	}
	if err := CheckPlotPath(dangling); err == nil || !strings.Contains(err.Error(), "a symbolic link that leads to no file") {
		t.Errorf("dangling link: %v", err)
	}
	target, link := filepath.Join(dir, "target.svg"), filepath.Join(dir, "link.svg")
	if err := os.WriteFile(target, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	if err := CheckPlotPath(link); err != nil {
		t.Fatal(err)
	}
	if err := SavePlot(link, &Report{}); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Lstat(link); err != nil {
		t.Fatal(err)
	} else if st.Mode()&os.ModeSymlink == 0 {
		t.Errorf("the link was replaced: %v", st.Mode())
	}
	if b, err := os.ReadFile(target); err != nil || !strings.HasPrefix(string(b), "<svg") && !strings.HasPrefix(string(b), "<?xml") {
		t.Errorf("the link's target has no chart: %.40q %v", b, err)
	}
}

package deploy

import (
	"bytes"
	"os"
	"os/exec"
	"testing"

	"github.com/nsflow/nsflow/internal/testenv"
)

// readFile returns a deployment file's contents (paths relative to deploy/).
func readFile(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// requireTool returns the path of an external tool the test uses as an
// independent checker; without it the test fails under CI and skips elsewhere.
func requireTool(t *testing.T, name, pkg string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		testenv.Unavailable(t, "%s not found (Debian package %s)", name, pkg)
	}
	return path
}

// run runs a tool and fails the test with its output when it fails.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	var out bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out.String())
	}
	return out.String()
}

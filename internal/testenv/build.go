package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

// buildNsflow builds the command once per test binary; buildDir is what
// RemoveBuilt deletes.
var (
	buildDir    string
	buildNsflow = sync.OnceValues(func() (string, error) {
		dir, err := os.MkdirTemp("", "nsflow-test")
		if err != nil {
			return "", err
		}
		buildDir = dir
		bin := filepath.Join(dir, "nsflow")
		// "go" is the toolchain running the test: go test puts its GOROOT/bin
		// first in PATH. The package path, not a relative one, so that any
		// package of the module can build it; static, as `make build` does.
		cmd := exec.Command("go", "build", "-o", bin, "github.com/nsflow/nsflow/cmd/nsflow")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", fmt.Errorf("go build: %v\n%s", err, out)
		}
		return bin, nil
	})
)

// NsflowBinary returns the path of the nsflow command, built on first use
// in this test binary. Call RemoveBuilt from TestMain to delete it.
func NsflowBinary(t testing.TB) string {
	t.Helper()
	bin, err := buildNsflow()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// RemoveBuilt deletes what NsflowBinary built, if anything.
func RemoveBuilt() {
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
}

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nsflow/nsflow/internal/testenv"
	"github.com/nsflow/nsflow/internal/topotest"
	"github.com/nsflow/nsflow/topology"
	"go.yaml.in/yaml/v3"
)

// runVerify runs `nsflow verify ARGS` and returns what it prints, stdout
// then stderr as main writes it, and its exit status.
func runVerify(t *testing.T, args ...string) (string, int) {
	t.Helper()
	return runVerifyContext(t, context.Background(), args...)
}

// runVerifyContext is runVerify under ctx, which main cancels on Ctrl-C.
func runVerifyContext(t *testing.T, ctx context.Context, args ...string) (string, int) {
	t.Helper()
	root := newRootCmd()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetArgs(append([]string{"verify"}, args...))
	err := root.ExecuteContext(ctx)
	if ee := (*exitError)(nil); err != nil && !errors.As(err, &ee) {
		t.Fatalf("verify %v: %v (no exit status)", args, err)
	}
	var stderr bytes.Buffer
	code := exitStatus(err, &stderr)
	return out.String() + stderr.String(), code
}

func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "topo.yaml")
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

const twoNamespaces = `
name: %s
namespaces: [{name: x}, {name: y}]
links:
  - endpoints:
      - {namespace: x, interface: eth0, addresses: [198.18.5.1/24]}
      - {namespace: y, interface: eth0, addresses: [198.18.5.2/24]}
`

func TestVerifyCLIErrors(t *testing.T) {
	contradicts := writeFile(t, strings.Replace(twoNamespaces, "%s", "clitest", 1)+`
isolation:
  deny: [{from: [x], to: [y]}]
`)
	notUp := writeFile(t, strings.Replace(twoNamespaces, "%s", testenv.Name("nsfv"), 1))
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no file", nil, "--file is required"},
		{"unknown flag", []string{"--bogus", "x"}, "unknown flag: --bogus"},
		{"bad prefix", []string{"-f", notUp, "--prefix", "a/"}, notUp + `: with prefix "a/": `},
		{"bad flag value", []string{"-f", notUp, "--timeout", "soon"}, "invalid argument"},
		{"zero timeout", []string{"-f", notUp, "--timeout", "0s"}, "--timeout: 0s is below 100ms"},
		{"negative timeout", []string{"-f", notUp, "--timeout=-5s"}, "--timeout: -5s is below 100ms"},
		{"short timeout", []string{"-f", notUp, "--timeout=1ms"}, "--timeout: 1ms is below 100ms"},
		{"argument", []string{"-f", notUp, "extra"}, "extra"},
		{"unknown format", []string{"-f", notUp, "-o", "xml"}, `unknown format "xml"`},
		{"missing file", []string{"-f", filepath.Join(t.TempDir(), "none.yaml")}, "no such file"},
		{"intent contradicts wiring", []string{"-f", contradicts}, "isolation.deny[0]: x must not reach y"},
		{"topology not up", []string{"-f", notUp, "--no-evidence"}, "is the topology up?"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, code := runVerify(t, tc.args...)
			if code != 2 || !strings.Contains(out, tc.want) {
				t.Errorf("exit %d, output %q; want 2 and %q", code, out, tc.want)
			}
		})
	}
}

// upLab brings up a unique copy of verify's lab and writes it to a file.
func upLab(t *testing.T) (*topology.Spec, string) {
	t.Helper()
	testenv.RequireRoot(t)
	data, err := os.ReadFile("../../verify/testdata/lab.yaml")
	if err != nil {
		t.Fatal(err)
	}
	s, err := topology.Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	s = topotest.Up(t, s, testenv.Name("c"))
	b, err := yaml.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	return s, writeFile(t, string(b))
}

// --prefix verifies the copy that `topology up --prefix` built, from the
// file as it is: without it, verify would look for the file's own names.
func TestVerifyCLIPrefix(t *testing.T) {
	testenv.RequireRoot(t)
	data, err := os.ReadFile("../../verify/testdata/lab.yaml")
	if err != nil {
		t.Fatal(err)
	}
	s, err := topology.Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	prefix := testenv.Name("c")
	topotest.Up(t, s, prefix)
	file := writeFile(t, string(data))
	out, code := runVerify(t, "-f", file, "--prefix", prefix, "-o", "json")
	var rep struct {
		Topology string `json:"topology"`
		Probes   []struct{ From string }
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("json: %v\n%s", err, out)
	}
	if code != 0 || rep.Topology != prefix+s.Name || len(rep.Probes) == 0 || !strings.HasPrefix(rep.Probes[0].From, prefix) {
		t.Fatalf("verify --prefix %s: exit %d, topology %q, %d probes\n%s", prefix, code, rep.Topology, len(rep.Probes), out)
	}
}

// Exit status 0 and 1 with each output format on a live lab.
func TestVerifyCLIVerdicts(t *testing.T) {
	s, file := upLab(t)
	out, code := runVerify(t, "-f", file, "-o", "json")
	var rep struct {
		Topology string `json:"topology"`
		Verdict  int    `json:"verdict"`
		Probes   []struct {
			From, To, Port, Outcome string
		} `json:"probes"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("json: %v\n%s", err, out)
	}
	if code != 0 || rep.Verdict != 0 || rep.Topology != s.Name || len(rep.Probes) == 0 {
		t.Fatalf("clean lab: exit %d, verdict %d, topology %q, %d probes", code, rep.Verdict, rep.Topology, len(rep.Probes))
	}

	b := s.Namespaces[1].Name
	if out, err := exec.Command("ip", "-n", b, "route", "add", "198.18.2.0/24", "via", "198.18.1.254").CombinedOutput(); err != nil {
		t.Fatalf("route leak: %v: %s", err, out)
	}
	out, code = runVerify(t, "-f", file, "-o", "junit")
	var suites struct {
		Failures int `xml:"failures,attr"`
	}
	if err := xml.Unmarshal([]byte(out[:strings.LastIndex(out, "</testsuites>")+len("</testsuites>")]), &suites); err != nil {
		t.Fatalf("junit: %v\n%s", err, out)
	}
	if code != 1 || suites.Failures == 0 {
		t.Fatalf("route leak: exit %d, %d junit failures; want 1 and some", code, suites.Failures)
	}
	// JUnit has no verdict line: stderr gives it.
	if !strings.Contains(out, "\nnsflow: FAIL:") {
		t.Errorf("junit: no verdict on stderr:\n%s", out)
	}
	// The table ends with its verdict line, and stderr does not repeat it.
	out, code = runVerify(t, "-f", file)
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if code != 1 || strings.Count(out, "FAIL:") != 1 || !strings.HasPrefix(lines[len(lines)-1], "FAIL: ") ||
		!strings.Contains(out, "unexpected route 198.18.2.0/24 via 198.18.1.254") {
		t.Fatalf("table: exit %d, want 1 with one verdict line, the last\n%s", code, out)
	}
}

// Ctrl-C during `verify --load` ends it with status 2 and no verdict: the
// checks did not all run, and the load's figures are not worth printing.
func TestVerifyCLIInterrupted(t *testing.T) {
	_, file := upLab(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	time.AfterFunc(time.Second, cancel)
	out, code := runVerifyContext(t, ctx, "-f", file, "--load")
	if code != 2 || strings.Contains(out, "PASS") || strings.Contains(out, "Gbit/s") || !strings.Contains(out, "interrupted") {
		t.Fatalf("interrupted verify --load: exit %d\n%s\nwant 2, no verdict, no throughput", code, out)
	}
}

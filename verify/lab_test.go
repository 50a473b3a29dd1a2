package verify

import (
	"bytes"
	"context"
	"os"
	"testing"

	"github.com/nsflow/nsflow/internal/testenv"
	"github.com/nsflow/nsflow/internal/topotest"
	"github.com/nsflow/nsflow/topology"
)

// lab is a live copy of testdata/lab.yaml under a unique prefix, removed
// when the test ends.
type lab struct {
	spec   *topology.Spec
	prefix string
}

// labSpec parses the lab file and applies edit (nil for none).
func labSpec(t testing.TB, edit func(*topology.Spec)) *topology.Spec {
	t.Helper()
	data, err := os.ReadFile("testdata/lab.yaml")
	if err != nil {
		t.Fatal(err)
	}
	s, err := topology.Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	if edit != nil {
		edit(s)
	}
	return s
}

func upLab(t testing.TB, edit func(*topology.Spec)) *lab {
	t.Helper()
	testenv.RequireRoot(t)
	return upSpec(t, labSpec(t, edit))
}

func upSpec(t testing.TB, s *topology.Spec) *lab {
	t.Helper()
	prefix := testenv.Name("v")
	return &lab{spec: topotest.Up(t, s, prefix), prefix: prefix}
}

func (l *lab) ns(name string) string   { return l.prefix + name }
func (l *lab) path(name string) string { return l.spec.NetnsPath(l.ns(name)) }

// run verifies the lab and logs the table when the verdict is not want.
func (l *lab) run(t testing.TB, opts Options) *Report {
	t.Helper()
	rep, err := Run(context.Background(), l.spec, opts)
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	return rep
}

func logTable(t testing.TB, rep *Report) {
	t.Helper()
	var b bytes.Buffer
	rep.WriteTable(&b)
	t.Log("\n" + b.String())
}

// upGreen brings the spec up under a unique prefix and verifies it green.
func upGreen(t *testing.T, spec string) (*lab, *Report) {
	t.Helper()
	testenv.RequireRoot(t)
	s, err := topology.Parse([]byte(spec))
	if err != nil {
		t.Fatal(err)
	}
	l := upSpec(t, s)
	rep := l.run(t, Options{})
	if rep.Verdict() != 0 {
		logTable(t, rep)
		t.Fatalf("verdict %d, want 0", rep.Verdict())
	}
	return l, rep
}

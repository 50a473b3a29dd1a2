package verify

import (
	"testing"
	"time"

	"github.com/nsflow/nsflow/internal/testenv"
	"github.com/nsflow/nsflow/topology"
)

// A clean topology verifies green, every time.
func TestCleanLabIsGreen(t *testing.T) {
	l := upLab(t, nil)
	for i := range 3 {
		rep := l.run(t, Options{})
		if v := rep.Verdict(); v != 0 || i == 0 {
			logTable(t, rep)
			if v != 0 {
				t.Fatalf("run %d: verdict %d, want 0", i+1, v)
			}
		}
	}
}

// With --load, the allowed paths carry bulk TCP while every check runs,
// and the verdict still holds.
func TestLoadKeepsIsolation(t *testing.T) {
	l := upLab(t, nil)
	rep := l.run(t, Options{Load: true, LoadDuration: time.Second})
	if v := rep.Verdict(); v != 0 {
		logTable(t, rep)
		t.Fatalf("verdict under load: %d", v)
	}
	if rep.Load == nil || len(rep.Load.Flows) == 0 {
		t.Fatalf("no load report: %+v", rep.Load)
	}
	for _, f := range rep.Load.Flows {
		if f.Error != "" || f.Bytes == 0 || f.Gbps <= 0 {
			t.Errorf("load %s -> %s: %d bytes, %.2f Gbit/s, error %q", f.From, f.To, f.Bytes, f.Gbps, f.Error)
		}
		if NewModel(l.spec).Answerer(f.From, f.Addr) != f.To {
			t.Errorf("load %s -> %s (%s) is not an allowed path", f.From, f.To, f.Addr)
		}
	}
	t.Logf("load: %.2f Gbit/s over %d flows", rep.Load.TotalGbps, len(rep.Load.Flows))
}

// The seed topology, with its intent (groups, allow and deny per port),
// verifies green: the model agrees with the kernel on a host bridge with a
// gateway, a plain veth pair and a namespace shared by processes.
func TestSeedIsGreen(t *testing.T) {
	testenv.RequireRoot(t)
	s, err := topology.Load("../examples/seed.yaml")
	if err != nil {
		t.Fatal(err)
	}
	l := upSpec(t, s)
	rep := l.run(t, Options{})
	if v := rep.Verdict(); v != 0 {
		logTable(t, rep)
		t.Fatalf("verdict %d, want 0", v)
	}
}

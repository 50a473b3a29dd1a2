package verify

import "testing"

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

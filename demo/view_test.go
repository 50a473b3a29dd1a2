package demo

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

func TestHumanRate(t *testing.T) {
	for _, tt := range []struct {
		v    float64
		unit string
		want string
	}{
		{0, "B/s", "0B/s"}, {950, "", "950"}, {1000, "", "1.0k"}, {1234567, "B/s", "1.2MB/s"}, {2.5e9, "", "2.5G"},
	} {
		if got := humanRate(tt.v, tt.unit); got != tt.want {
			t.Errorf("humanRate(%v, %q) = %q, want %q", tt.v, tt.unit, got, tt.want)
		}
	}
}

func TestRates(t *testing.T) {
	prev := map[string]float64{"a": 100, "b": 50, "gone": 7}
	cur := map[string]float64{"a": 300, "b": 10, "new": 40}
	got := rates(prev, cur, 2*time.Second)
	want := map[string]float64{"a": 100, "new": 20}
	if len(got) != len(want) || got["a"] != want["a"] || got["new"] != want["new"] {
		t.Errorf("rates = %v, want %v (b was reset, gone is gone)", got, want)
	}
	if len(rates(prev, cur, 0)) != 0 {
		t.Error("no interval must give no rates")
	}
}

// gather builds metric families as the agent's registry would give them.
func gather(t *testing.T, pairBytes, rx, violations float64) []*dto.MetricFamily {
	t.Helper()
	reg := prometheus.NewRegistry()
	pair := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "nsflow_netns_flow_bytes_total"}, []string{"src_netns", "dst_netns", "protocol"})
	pair.WithLabelValues("d-ns1", "d-ns2", "udp").Add(pairBytes)
	recv := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "nsflow_interface_receive_bytes_total"}, []string{"netns", "interface", "family"})
	recv.WithLabelValues("d-ns2", "eth-n2", "ipv4").Add(rx)
	recv.WithLabelValues("d-ns2", "eth-n2", "ipv6").Add(rx)
	viol := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "nsflow_isolation_violation_packets_total"}, []string{"src_netns", "dst_netns"})
	viol.WithLabelValues("d-ns1", "d-c1").Add(violations)
	att := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "nsflow_attached_programs"}, []string{"mode"})
	att.WithLabelValues("tcx").Set(12)
	reg.MustRegister(pair, recv, viol, att)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	return mfs
}

func TestScreenRender(t *testing.T) {
	t0 := time.Unix(1000, 0)
	s := &screen{
		Title:      "nsflow demo",
		MetricsURL: "http://127.0.0.1:9995/metrics",
		Uptime:     3 * time.Second,
		Steps:      []step{{Name: "topology up", State: stepDone, Detail: "9 namespaces"}, {Name: "verify", State: stepRunning}},
		Namespaces: []string{"ns1", "ns2", "c1"},
		Prefix:     "d-",
		Prev:       newReading(t0, gather(t, 1000, 500, 0)),
		Cur:        newReading(t0.Add(time.Second), gather(t, 3000, 1500, 2)),
		Verdict:    verdict{Ran: true, Status: 1, Probes: 10, Mismatches: []string{"ns1 → c1 tcp/8080: reachable, expected blocked"}},
	}
	var b strings.Builder
	s.render(&b)
	out := b.String()
	for _, want := range []string{
		" ✓ topology up: 9 namespaces",
		" … verify",
		// 1000 B/s per family, summed over both families of ns2.
		"ns2               2.0kB/s",
		// The matrix: ns1 → ns2 at 2000 B/s, nothing else.
		"ns1           .   2.0k      .",
		"datapath: 12 programs attached",
		"isolation: VIOLATED: 1 finding from 10 probes",
		"datapath saw 2 packets between denied pairs: ns1→c1 2",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("render lacks %q:\n%s", want, out)
		}
	}

	s.Verdict = verdict{Err: errors.New("boom")}
	b.Reset()
	s.render(&b)
	if !strings.Contains(b.String(), "isolation: verify failed: boom") {
		t.Errorf("a verify error must show:\n%s", b.String())
	}

	s.Prev = nil
	b.Reset()
	s.render(&b)
	if !strings.Contains(b.String(), "waiting for the first counts") {
		t.Errorf("before two readings there are no rates:\n%s", b.String())
	}
}

// On a terminal the frame is redrawn in place and cut to its height; off
// one, each step is a line and no escape is written.
func TestDisplayModes(t *testing.T) {
	s, err := DefaultSpec()
	if err != nil {
		t.Fatal(err)
	}
	var tty strings.Builder
	d := newDisplay(Options{Out: &tty, Interactive: true, Prefix: "", TerminalHeight: func() int { return 5 }}, s)
	d.step("topology up").done("ok")
	d.step("agent")
	frames := strings.Split(tty.String(), "\x1b[H")
	last := frames[len(frames)-1]
	if n := strings.Count(last, "\n"); n > 4 {
		t.Errorf("frame of %d lines on a 5-row terminal:\n%s", n, last)
	}
	if !strings.Contains(last, " ✓ topology up: ok") || !strings.HasSuffix(last, "\x1b[J") {
		t.Errorf("last frame %q", last)
	}

	var plain strings.Builder
	d = newDisplay(Options{Out: &plain}, s)
	d.step("topology up").fail(errors.New("boom"))
	if got := plain.String(); strings.Contains(got, "\x1b") || !strings.Contains(got, "✗ topology up: boom") {
		t.Errorf("plain output %q", got)
	}
}

// On a terminal too small for the frame, the verdict (the last block)
// stays and the cut is said, above it; before there is a verdict, the
// frame is cut from the bottom.
func TestFitHeight(t *testing.T) {
	frame := strings.SplitAfter("title\n\n step 1\n step 2\n\nrates 1\nrates 2\nrates 3\n\ndatapath: ok\nisolation: HOLDS\n", "\n")
	got := strings.Join(fitHeight(frame, 8), "")
	want := "title\n\n step 1\n step 2\n… 5 lines not shown: enlarge the terminal\ndatapath: ok\nisolation: HOLDS\n"
	if got != want {
		t.Errorf("fitHeight(8):\n%q\nwant\n%q", got, want)
	}
	if got := strings.Join(fitHeight(frame, 40), ""); got != strings.Join(frame, "") {
		t.Errorf("a frame that fits changed:\n%q", got)
	}
	if got := fitHeight(frame, 3); len(got) != 2 {
		t.Errorf("no room for the verdict: %d lines, want the first 2", len(got))
	}
}

package collector

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
)

// staticSource returns fixed data; failing makes Ports and Flows fail.
type staticSource struct{ failing bool }

func (s staticSource) Ports() ([]PortSample, error) {
	ps := []PortSample{{Netns: "a", Interface: "veth0", Family: "ipv4", ReceiveBytes: 98, ReceivePackets: 1, TransmitBytes: 196, TransmitPackets: 2}}
	if s.failing {
		return ps[:0], errors.New("port table unreadable")
	}
	return ps, nil
}

func (s staticSource) Flows() (*FlowSummary, error) {
	if s.failing {
		return nil, errors.New("flow table unreadable")
	}
	return &FlowSummary{
		Pairs:     []PairSample{{Src: "a", Dst: "b", Protocol: "udp", Bytes: 1000, Packets: 10}},
		PortPairs: []PortPairSample{{Src: "a", Dst: "b", Protocol: "udp", Port: "53", Bytes: 1000, Packets: 10}},
		Top:       []TopFlowSample{{Src: "a", Dst: "b", Protocol: "udp", SrcAddr: "198.18.0.1", DstAddr: "198.18.0.2", SrcPort: "4000", DstPort: "53", Bytes: 1000}},
		Table:     FlowTableSample{Entries: 1, Capacity: 1024},
	}, nil
}

func (staticSource) Namespaces() []NetnsInfo {
	return []NetnsInfo{{Netns: "a", Inode: "4026532000", Path: "/run/netns/a", Pids: "", Comm: ""}}
}

func (staticSource) Self() SelfSample {
	return SelfSample{AttachedPrograms: map[string]int{"tcx": 2}, DiscoveryEvents: map[DiscoveryKey]uint64{{"netns", "add"}: 3}}
}

func TestCollectors(t *testing.T) {
	for _, tc := range []struct {
		name        string
		src         staticSource
		wantSuccess map[string]string // collector -> success value
		wantPresent []string
	}{
		{
			name:        "healthy",
			src:         staticSource{},
			wantSuccess: map[string]string{"interface": "1", "netns_flow": "1", "top_flows": "1", "flow_table": "1", "self": "1", "isolation": "1"},
			wantPresent: []string{"nsflow_interface_receive_bytes_total", "nsflow_netns_flow_port_bytes_total", "nsflow_top_flow_bytes_total", "nsflow_flow_table_capacity", "nsflow_build_info", "nsflow_isolation_violation_packets_total", "go_goroutines", "process_resident_memory_bytes"},
		},
		{
			// A failing source costs its collectors, never the scrape.
			name:        "failing source",
			src:         staticSource{failing: true},
			wantSuccess: map[string]string{"interface": "0", "netns_flow": "0", "flow_table": "0", "self": "1", "netns_info": "1"},
			wantPresent: []string{"nsflow_netns_info", "nsflow_attached_programs"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg := NewRegistry(slog.New(slog.DiscardHandler), tc.src, Options{
				Violations: func() ([]Violation, error) { return []Violation{{Src: "a", Dst: "b", Packets: 1}}, nil },
			})
			mfs, err := reg.Gather()
			if err != nil {
				t.Fatalf("gather: %v", err)
			}
			got := map[string]bool{}
			success := map[string]string{}
			for _, mf := range mfs {
				got[mf.GetName()] = true
				if mf.GetName() == "nsflow_scrape_collector_success" {
					for _, m := range mf.GetMetric() {
						success[m.GetLabel()[0].GetValue()] = strconv.FormatFloat(m.GetGauge().GetValue(), 'g', -1, 64)
					}
				}
			}
			for _, name := range tc.wantPresent {
				if !got[name] {
					t.Errorf("metric %s missing", name)
				}
			}
			for c, want := range tc.wantSuccess {
				if success[c] != want {
					t.Errorf("collector %s success = %q, want %s", c, success[c], want)
				}
			}
			problems, err := promlint.NewWithMetricFamilies(mfs).Lint()
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range problems {
				t.Errorf("promlint: %s: %s", p.Metric, p.Text)
			}
			if n, err := testutil.GatherAndCount(reg, "nsflow_top_flow_bytes_total"); err != nil || (n != 1 && !tc.src.failing) {
				t.Errorf("top flow series = %d, %v", n, err)
			}
		})
	}
}

type failingCollector struct{ err error }

func (c failingCollector) Update(chan<- prometheus.Metric) error { return c.err }

// A collector without data yet (ErrNoData) reports success 0 like a failed
// one, but is logged at debug level, not as an error.
func TestSetLogsNoDataAtDebug(t *testing.T) {
	for _, tc := range []struct {
		name  string
		err   error
		level string
	}{
		{"no data", fmt.Errorf("starting: %w", ErrNoData), "DEBUG"},
		{"failure", errors.New("map unreadable"), "ERROR"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var log bytes.Buffer
			logger := slog.New(slog.NewTextHandler(&log, &slog.HandlerOptions{Level: slog.LevelDebug}))
			set := NewSet(logger, []string{"x"}, map[string]Collector{"x": failingCollector{tc.err}})
			want := "# HELP nsflow_scrape_collector_success Whether a collector succeeded (1) or failed (0) in this scrape.\n# TYPE nsflow_scrape_collector_success gauge\nnsflow_scrape_collector_success{collector=\"x\"} 0\n"
			if err := testutil.CollectAndCompare(set, strings.NewReader(want), "nsflow_scrape_collector_success"); err != nil {
				t.Error(err)
			}
			if !strings.Contains(log.String(), "level="+tc.level) || strings.Count(log.String(), "level=") != strings.Count(log.String(), "level="+tc.level) {
				t.Errorf("log, want only level %s:\n%s", tc.level, log.String())
			}
		})
	}
}

// hostBytesSource reports names as the host may have them: not UTF-8
// (a process's comm is whatever bytes it wrote there).
type hostBytesSource struct{ staticSource }

func (hostBytesSource) Ports() ([]PortSample, error) {
	return []PortSample{{Netns: "n\xff", Interface: "e\xfe0", Family: "ipv4", ReceivePackets: 1}}, nil
}

func (hostBytesSource) Namespaces() []NetnsInfo {
	return []NetnsInfo{{Netns: "n\xff", Inode: "4026532001", Path: "/run/netns/n\xff", Pids: "7", Comm: "x\xff\xfey"}}
}

// Label values that are not UTF-8 are escaped, not a panic that would
// kill the agent; valid ones are left as they are.
func TestLabelValuesNotUTF8(t *testing.T) {
	reg := NewRegistry(slog.New(slog.DiscardHandler), hostBytesSource{}, Options{})
	var out bytes.Buffer
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				fmt.Fprintf(&out, "%s=%s\n", l.GetName(), l.GetValue())
			}
		}
	}
	for _, want := range []string{`netns=n\xff`, `interface=e\xfe0`, `comm=x\xff\xfey`, `path=/run/netns/n\xff`, `collector=interface`} {
		if !strings.Contains(out.String(), want+"\n") {
			t.Errorf("no label %s in:\n%s", want, out.String())
		}
	}
	// Every metric of the interface has the same labels: a value is
	// escaped once, however many metrics share it.
	if n := strings.Count(out.String(), "interface=e\\xfe0\n"); n != 4 {
		t.Errorf("%d metrics labelled interface=e\\xfe0, want the interface's 4:\n%s", n, out.String())
	}
	for _, tc := range []struct{ in, want string }{
		{"veth0", "veth0"}, {"ünïcode", "ünïcode"}, {"a\xffb", `a\xffb`}, {"\xe2\x82", `\xe2\x82`}, {"", ""},
		// A backslash is escaped too, so that a name spelling \xff
		// and a name holding the byte stay apart.
		{`a\xffb`, `a\\xffb`}, {`c:\`, `c:\\`},
	} {
		if got := LabelValue(tc.in); got != tc.want {
			t.Errorf("LabelValue(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// A collector that panics fails its own scrape, not the process.
func TestCollectorPanic(t *testing.T) {
	set := NewSet(slog.New(slog.DiscardHandler), []string{"x"}, map[string]Collector{"x": panicking{}})
	reg := prometheus.NewRegistry()
	reg.MustRegister(set)
	want := "# HELP nsflow_scrape_collector_success Whether a collector succeeded (1) or failed (0) in this scrape.\n# TYPE nsflow_scrape_collector_success gauge\nnsflow_scrape_collector_success{collector=\"x\"} 0\n"
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "nsflow_scrape_collector_success"); err != nil {
		t.Error(err)
	}
}

type panicking struct{}

func (panicking) Update(chan<- prometheus.Metric) error { panic("bug") }

package bench

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"encoding/xml"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nsflow/nsflow/traffic"
)

// sampleReport is a small report as Run fills it, for the writers' tests.
func sampleReport() *Report {
	c := Case{Name: "veth/udp/1", Path: Veth, Proto: traffic.UDP, Pairs: 1, Streams: 1, Payload: 18, Frame: 64,
		Uninstrumented: Summary{Gbps: Spread{0.5, 0.4, 0.6}, Mpps: Spread{1, 0.9, 1.1}},
		Instrumented:   Summary{Gbps: Spread{0.49, 0.4, 0.6}, Mpps: Spread{0.98, 0.9, 1.1}},
		Ratio:          0.98, SliceRatio: SliceRatio{Median: 0.97, Q25: 0.96, Q75: 0.98, Ratios: []float64{0.96, 0.97, 0.98}},
		BPF: BPFCost{Runs: 10, RunTimeNs: 300, NsPerRun: 30, NsPerPacket: 60},
		Samples: []Sample{{Round: 1, Instrumented: true, Gbps: 0.49, Elapsed: time.Second,
			Kernel: []KernelDelta{{Iface: Iface{Namespace: "a", Name: "eth0"}}},
			Checks: []Check{newCheck("a/eth0 rx", "nsflow", "kernel rx", traffic.Counts{Packets: 1}, traffic.Counts{Packets: 1}, true, true)}}},
	}
	cost := c.Samples[0] // the BPF cost sample is one more instrumented sample
	cost.Round = 0
	c.BPF.Sample = &cost
	// The second case shares nothing with the first, so a test can change it.
	c2 := c
	c2.Name, c2.Path, c2.Differences = "bridge/tcp/2 <&>", Bridge, 1
	c2.Samples = []Sample{c.Samples[0]}
	c2.Samples[0].Checks = slices.Clone(c.Samples[0].Checks)
	cost2 := cost
	cost2.Checks = slices.Clone(cost.Checks)
	c2.BPF.Sample = &cost2
	c2.HookRatio = &SliceRatio{Median: 0.99, Q25: 0.985, Q75: 0.995, Ratios: []float64{0.985, 0.99, 0.995}}
	return &Report{SchemaVersion: SchemaVersion, Cases: []Case{c, c2}, Iperf3: []Iperf3{{Path: Veth, Proto: traffic.UDP, Gbps: 0.3}}, Differences: 1}
}

// checkSVG fails unless data is well-formed XML with an svg root and a
// group for every case.
func checkSVG(t *testing.T, data []byte, r *Report) {
	t.Helper()
	dec := xml.NewDecoder(bytes.NewReader(data))
	var root string
	cases := map[string]bool{}
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("chart is not valid XML: %v", err)
		}
		if se, ok := tok.(xml.StartElement); ok {
			if root == "" {
				root = se.Name.Local
			}
			for _, a := range se.Attr {
				if a.Name.Local == "data-case" {
					cases[a.Value] = true
				}
			}
		}
	}
	if root != "svg" {
		t.Errorf("root element %q, want svg", root)
	}
	for _, c := range r.Cases {
		if !cases[c.Name] {
			t.Errorf("chart has no group for case %q", c.Name)
		}
	}
}

func TestWriteSVG(t *testing.T) {
	r := sampleReport()
	var b bytes.Buffer
	if err := WriteSVG(&b, r); err != nil {
		t.Fatal(err)
	}
	checkSVG(t, b.Bytes(), r)
	if err := WriteSVG(&b, &Report{}); err != nil {
		t.Fatal(err)
	}
}

func TestWriteCSV(t *testing.T) {
	var b bytes.Buffer
	if err := WriteCSV(&b, sampleReport()); err != nil {
		t.Fatal(err)
	}
	rows, err := csv.NewReader(&b).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 3 || len(rows[1]) != len(csvHeader) || rows[2][0] != "bridge/tcp/2 <&>" {
		t.Fatalf("csv rows %q", rows)
	}
	// The hook ratio's columns are empty where it was not measured.
	col := slices.Index(csvHeader, "hook_ratio")
	if col < 0 || rows[1][col] != "" || rows[2][col] != "0.9900" || rows[2][col+1] != "0.9850" || rows[2][col+2] != "0.9950" {
		t.Errorf("hook ratio columns: %q and %q", rows[1], rows[2])
	}
}

func TestWriteTable(t *testing.T) {
	r := sampleReport()
	differ := newCheck("b/eth0 tx", "nsflow", "kernel tx", traffic.Counts{Packets: 2}, traffic.Counts{Packets: 1}, true, true)
	r.Cases[1].Samples[0].Checks[0] = differ
	r.Cases[1].BPF.Sample.Checks[0] = differ
	r.Cases[1].Differences, r.Differences = 2, 2
	var b bytes.Buffer
	if err := WriteTable(&b, r); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	if strings.Contains(out, "no-op ratio") {
		t.Errorf("table has a no-op column without --hook-cost:\n%s", out)
	}
	r.Settings.HookCost = true
	b.Reset()
	if err := WriteTable(&b, r); err != nil {
		t.Fatal(err)
	}
	out = b.String()
	for _, want := range []string{"no-op ratio", "0.990 (0.98..0.99)", "veth/udp/1", "0.980", "iperf3 veth/udp/1: 0.30 Gbit/s",
		"DIFFERENCE bridge/tcp/2 <&> round 1 instrumented: b/eth0 tx", "DIFFERENCE bridge/tcp/2 <&> BPF cost sample: b/eth0 tx",
		"4 checks, 2 differences"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
}

// jsonKeys are the documented fields of -o json, per object; the README
// promises them to scripts.
var jsonKeys = map[string][]string{
	"report":   {"schema_version", "started", "host", "settings", "topology", "cases", "iperf3", "differences", "complete"},
	"host":     {"kernel", "cpus", "attach_mode"},
	"settings": {"topology", "paths", "pairs", "streams", "duration_ns", "protos", "size", "sizes", "rounds", "slices", "slice_length_ns", "hook_cost"},
	"case": {"name", "path", "proto", "pairs", "streams", "payload", "frame", "uninstrumented", "instrumented",
		"ratio", "slice_ratio", "hook_ratio", "bpf", "differences", "samples"},
	"slice_ratio": {"median", "q25", "q75", "ratios"},
	"summary":     {"gbps", "mpps", "cpu"},
	"spread":      {"median", "min", "max"},
	"cpu":         {"process_cores", "host_softirq_cores", "host_busy_cores"},
	"bpf":         {"runs", "run_time_ns", "ns_per_run", "ns_per_packet", "sample"},
	"sample": {"round", "instrumented", "gbps", "mpps", "elapsed_ns", "sent", "received", "lost", "reordered",
		"cpu", "kernel", "checks"},
	"counts": {"packets", "bytes"},
	"kernel": {"namespace", "interface", "rx", "tx", "rx_dropped", "tx_dropped"},
	"check": {"subject", "left", "right", "left_count", "right_count", "packets_diff", "bytes_diff",
		"compare_packets", "compare_bytes", "ok"},
	"iperf3": {"path", "proto", "gbps", "mpps", "generator_gbps", "ratio"},
}

// checkJSON fails unless every documented field is present at every level.
func checkJSON(t *testing.T, data []byte) {
	t.Helper()
	var rep map[string]any
	if err := json.Unmarshal(data, &rep); err != nil {
		t.Fatal(err)
	}
	has := func(what string, v any) map[string]any {
		m, ok := v.(map[string]any)
		if !ok {
			t.Fatalf("%s is %T, not an object", what, v)
		}
		for _, k := range jsonKeys[what] {
			if _, ok := m[k]; !ok {
				t.Errorf("%s has no field %q", what, k)
			}
		}
		return m
	}
	list := func(v any) []any { l, _ := v.([]any); return l }
	has("report", rep)
	has("host", rep["host"])
	has("settings", rep["settings"])
	for _, p := range list(rep["iperf3"]) {
		has("iperf3", p)
	}
	if len(list(rep["cases"])) == 0 {
		t.Fatal("no cases")
	}
	for _, c := range list(rep["cases"]) {
		cm := has("case", c)
		has("slice_ratio", cm["slice_ratio"])
		if cm["hook_ratio"] != nil { // null without --hook-cost
			has("slice_ratio", cm["hook_ratio"])
		}
		has("sample", has("bpf", cm["bpf"])["sample"])
		for _, s := range []string{"uninstrumented", "instrumented"} {
			sm := has("summary", cm[s])
			has("spread", sm["gbps"])
			has("spread", sm["mpps"])
			has("cpu", sm["cpu"])
		}
		for _, s := range list(cm["samples"]) {
			sm := has("sample", s)
			has("counts", sm["sent"])
			has("counts", sm["received"])
			has("cpu", sm["cpu"])
			for _, k := range list(sm["kernel"]) {
				km := has("kernel", k)
				has("counts", km["rx"])
			}
			for _, ch := range list(sm["checks"]) {
				cm := has("check", ch)
				has("counts", cm["left_count"])
			}
		}
	}
}

func TestWriteJSON(t *testing.T) {
	var b bytes.Buffer
	if err := WriteJSON(&b, sampleReport()); err != nil {
		t.Fatal(err)
	}
	checkJSON(t, b.Bytes())
}

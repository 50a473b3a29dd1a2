package verify

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

// fakeReport is a 50-namespace report in which every namespace reaches
// every other, except that n07 -> n42 on tcp/8080 was reached but must
// not have been.
func fakeReport() *Report {
	r := &Report{Topology: "fake", Ports: []string{"icmp", "tcp/8080"}, Timeout: time.Second, Elapsed: 3 * time.Second}
	for i := range 50 {
		r.Namespaces = append(r.Namespaces, fmt.Sprintf("tenant-namespace-%02d", i))
	}
	for i, from := range r.Namespaces {
		for j, to := range r.Namespaces {
			if i == j {
				continue
			}
			for _, port := range r.Ports {
				p := &Probe{From: from, To: to, Addr: netip.AddrFrom4([4]byte{198, 18, 0, byte(j + 1)}), Port: port, Expect: to, Outcome: Replied, By: to, Claimed: to, Try: 1}
				if i == 7 && j == 42 && port == "tcp/8080" {
					p.Expect = ""
				}
				r.Probes = append(r.Probes, p)
			}
		}
	}
	r.Stack = []Check{{Netns: r.Namespaces[3], Kind: "routes", Problems: []string{"unexpected route 198.19.0.0/16 via 198.18.0.9 dev eth0"}}}
	r.Evidence = &Evidence{Ports: 50, Flows: 100, Violations: []Violation{{Src: r.Namespaces[7], Dst: r.Namespaces[42], Packets: 3, Bytes: 180}}}
	return r
}

func TestTableFor50Namespaces(t *testing.T) {
	r := fakeReport()
	var b bytes.Buffer
	if err := r.WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	lines := strings.Split(out, "\n")
	for _, l := range lines {
		if len(l) > maxSideBySide {
			t.Errorf("line of %d characters: %q", len(l), l)
		}
	}
	// icmp is all green: one table. tcp/8080 has the three, one below the
	// other, and the difference marks exactly row 7, column 42 ('G').
	if !strings.Contains(out, "icmp: every cell as expected") {
		t.Error("the all-green port is not summarized")
	}
	i := slices.Index(lines, "tcp/8080 difference")
	if i < 0 {
		t.Fatalf("no difference table for tcp/8080:\n%s", out)
	}
	var marked []string
	for _, l := range lines[i+2 : i+52] {
		cells := l[len(l)-50:]
		for col, c := range cells {
			if c == 'X' {
				marked = append(marked, fmt.Sprintf("%s>%c", strings.Fields(l)[0], keyChars[col]))
			}
		}
	}
	if want := []string{"7>G"}; !slices.Equal(marked, want) {
		t.Errorf("difference marks %v, want %v", marked, want)
	}
	for _, want := range []string{"G tenant-namespace-42", "tcp/8080  tenant-namespace-07 -> tenant-namespace-42 198.18.0.43: reachable, expected blocked",
		"routes    tenant-namespace-03: unexpected route", "FAIL: 1 probe not as expected, 1 check failed, 1 evidence violation (3 packets)",
		"tenant-namespace-07 -> tenant-namespace-42: 3 packets, 180 bytes in 0 flows",
		"7 " + trunc("tenant-namespace-07", 16) + "  " + strings.Repeat(".", 7) + "-" + strings.Repeat(".", 34) + "X" + strings.Repeat(".", 7)} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q", want)
		}
	}
}

// A port that another process holds passes port space only as far as it
// could be checked: the table marks it 'i', not '.', and says why under
// the matrix, as JSON's info does. Other checks' information (an empty
// firewall table) keeps its '.'.
func TestTablePortSpaceInfo(t *testing.T) {
	r := &Report{Topology: "t", Namespaces: []string{"a", "b", "c"}, Ports: []string{"tcp/8080", "udp/8080"}}
	for _, ns := range r.Namespaces {
		for _, port := range r.Ports {
			r.PortSpace = append(r.PortSpace, Check{Netns: ns, Kind: port, Pass: true})
		}
		r.Stack = append(r.Stack, Check{Netns: ns, Kind: "firewall", Pass: true, Info: []string{"iptables filter: no rules"}})
	}
	r.PortSpace[1].Pass, r.PortSpace[1].Problems = false, []string{"[a b] are one network namespace: they share one port space"}
	held := []string{"udp4/8080 was already bound by another process in c", "127.0.0.1 udp/8080: not checked, udp4/8080 is another process's"}
	r.PortSpace[5].Info = held
	var b bytes.Buffer
	if err := r.WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	section := out[strings.Index(out, "Port space"):strings.Index(out, "Stack")]
	marks := map[string]string{}
	for _, l := range strings.Split(section, "\n") {
		if f := strings.Fields(l); len(f) == 4 && slices.Contains(r.Namespaces, f[1]) {
			marks[f[1]] = f[2] + f[3]
		}
	}
	if want := map[string]string{"a": ".X", "b": "..", "c": ".i"}; !maps.Equal(marks, want) {
		t.Errorf("port-space marks %v, want %v:\n%s", marks, want, section)
	}
	for _, want := range []string{portSpaceInfo, "  udp/8080  c: " + held[0], "  udp/8080  c: " + held[1]} {
		if !strings.Contains(section, want+"\n") {
			t.Errorf("port space lacks %q:\n%s", want, section)
		}
	}
	if stack := out[strings.Index(out, "Stack"):]; strings.Contains(stack, " i ") || strings.Contains(stack, "iptables filter") {
		t.Errorf("the stack's information is marked:\n%s", stack)
	}
}

func TestJSONFieldsAreStable(t *testing.T) {
	var b bytes.Buffer
	if err := fakeReport().WriteJSON(&b); err != nil {
		t.Fatal(err)
	}
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(b.Bytes(), &doc); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"topology", "namespaces", "ports", "timeout_ns", "probes", "retried", "port_space", "stack", "evidence", "elapsed_ns", "phases", "summary", "verdict"} {
		if _, ok := doc[k]; !ok {
			t.Errorf("no field %q", k)
		}
	}
	var probes []map[string]any
	json.Unmarshal(doc["probes"], &probes)
	want := map[string]any{"from": "tenant-namespace-00", "to": "tenant-namespace-01", "addr": "198.18.0.2", "port": "icmp",
		"expect": "tenant-namespace-01", "outcome": "replied", "by": "tenant-namespace-01", "claimed": "tenant-namespace-01", "try": 1.0}
	for k, v := range want {
		if probes[0][k] != v {
			t.Errorf("probes[0].%s = %v, want %v", k, probes[0][k], v)
		}
	}
	if string(doc["verdict"]) != "1" {
		t.Errorf("verdict %s, want 1", doc["verdict"])
	}
}

func TestJUnit(t *testing.T) {
	var b bytes.Buffer
	r := fakeReport()
	r.Notes = []string{"first note", "second <note>"}
	if err := r.WriteJUnit(&b); err != nil {
		t.Fatal(err)
	}
	var doc junitSuites
	if err := xml.Unmarshal(b.Bytes(), &doc); err != nil {
		t.Fatal(err)
	}
	// 2 ports x 50 x 49 cells, 1 stack check, the evidence summary and pair.
	if doc.Tests != 2*50*49+1+2 || doc.Failures != 4 || doc.Errors != 0 {
		t.Errorf("tests %d failures %d errors %d", doc.Tests, doc.Failures, doc.Errors)
	}
	var failed []string
	for _, s := range doc.Suites {
		if want := "note: first note\nnote: second <note>\n"; s.Out != want {
			t.Errorf("suite %q: system-out %q, want the notes %q", s.Name, s.Out, want)
		}
		for _, c := range s.Cases {
			if c.Failure != nil {
				failed = append(failed, c.Class+" "+c.Name)
			}
		}
	}
	want := []string{"reachability.tcp/8080 tenant-namespace-07 -> tenant-namespace-42", "stack.routes tenant-namespace-03",
		"evidence no packet delivered where none may arrive", "evidence tenant-namespace-07 -> tenant-namespace-42"}
	if !slices.Equal(failed, want) {
		t.Errorf("failed cases %q, want %q", failed, want)
	}
}

// cleanReport is a two-namespace report in which everything is as
// expected, with the eBPF evidence ev (nil: not collected).
func cleanReport(ev *Evidence) *Report {
	r := &Report{Topology: "clean", Namespaces: []string{"x", "y"}, Ports: []string{"tcp/8080"}, Timeout: time.Second, Evidence: ev}
	r.Probes = []*Probe{
		{From: "x", To: "y", Addr: netip.MustParseAddr("198.18.5.2"), Port: "tcp/8080", Expect: "y", Outcome: Replied, By: "y", Claimed: "y", Try: 1},
		{From: "y", To: "x", Addr: netip.MustParseAddr("198.18.5.1"), Port: "tcp/8080", Expect: "x", Outcome: Replied, By: "x", Claimed: "x", Try: 1},
	}
	r.Stack = []Check{{Netns: "x", Kind: "routes", Pass: true}, {Netns: "y", Kind: "routes", Pass: true}}
	return r
}

// The verdict claims only what was checked: without evidence it does not
// say that no packet arrived, and with evidence the datapath could not
// record in full (flow table overflow) nothing is proven: could not check.
func TestVerdictEvidence(t *testing.T) {
	violation := []Violation{{Src: "x", Dst: "y", Packets: 2, Bytes: 120}}
	for _, tc := range []struct {
		name     string
		ev       *Evidence
		verdict  int
		line     string
		notLine  string
		junitErr int
	}{
		{"not collected", nil, 0, "PASS: isolation holds (2 probes, 2 checks; no eBPF evidence collected)", "no packet where none may arrive", 0},
		{"complete and clean", &Evidence{Ports: 2, Flows: 4}, 0, "PASS: isolation holds (2 probes, 2 checks, no packet where none may arrive)", "", 0},
		{"flow table overflow", &Evidence{Ports: 2, Flows: 4, Overflow: 7}, 2,
			"ERROR: eBPF evidence incomplete: 7 flows not recorded (flow table full)", "PASS", 1},
		{"violation and overflow", &Evidence{Ports: 2, Flows: 4, Overflow: 7, Violations: violation}, 1,
			"FAIL: 0 probes not as expected, 0 checks failed, 1 evidence violation (2 packets); 0 probe errors; eBPF evidence incomplete: 7 flows not recorded", "", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := cleanReport(tc.ev)
			if v := r.Verdict(); v != tc.verdict {
				t.Errorf("verdict %d, want %d", v, tc.verdict)
			}
			line := r.VerdictLine()
			if !strings.Contains(line, tc.line) || (tc.notLine != "" && strings.Contains(line, tc.notLine)) {
				t.Errorf("verdict line %q: want %q, not %q", line, tc.line, tc.notLine)
			}
			out := renderAll(t, r)
			if !strings.HasSuffix(out.table, line+"\n") {
				t.Errorf("the table does not end with the verdict line:\n%s", out.table)
			}
			if tc.ev != nil && tc.ev.Overflow > 0 && !strings.Contains(out.table, "incomplete: 7 flows not recorded") {
				t.Errorf("the table does not say the evidence is incomplete:\n%s", out.table)
			}
			if out.json.Verdict != tc.verdict || (tc.ev != nil && out.json.Summary.EvidenceOverflow != tc.ev.Overflow) {
				t.Errorf("json verdict %d, summary %+v", out.json.Verdict, out.json.Summary)
			}
			if out.junit.Errors != tc.junitErr || (out.junit.Failures > 0) != (tc.verdict == 1) {
				t.Errorf("junit: %d errors, %d failures; want %d errors, failures only for a violation", out.junit.Errors, out.junit.Failures, tc.junitErr)
			}
		})
	}
}

// A load flow that failed, or ended before the checks did, leaves the
// checks not all run under load: could not check, in every output.
func TestVerdictLoad(t *testing.T) {
	ok := LoadFlow{From: "x", To: "y", Addr: netip.MustParseAddr("198.18.5.2"), Bytes: 1 << 30, Gbps: 4.3, Elapsed: 2 * time.Second}
	ended := ok
	ended.Bytes, ended.Gbps, ended.Elapsed, ended.Error = 1<<27, 4.3, 250*time.Millisecond, "ended after 0.2s, before the checks did"
	for _, tc := range []struct {
		name     string
		flows    []LoadFlow
		mismatch bool
		verdict  int
		line     string
		junitErr int
	}{
		{"held", []LoadFlow{ok}, false, 0, "PASS: isolation holds", 0},
		{"a flow ended early", []LoadFlow{ok, ended}, false, 2, "ERROR: 1 load flow failed or ended before the checks did", 1},
		{"violation under a failed load", []LoadFlow{ended}, true, 1, "FAIL: 1 probe not as expected", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := cleanReport(&Evidence{Ports: 2})
			r.Load = &LoadReport{Flows: tc.flows, Elapsed: 2 * time.Second}
			if tc.mismatch {
				r.Probes[0].Expect = ""
			}
			if v := r.Verdict(); v != tc.verdict || !strings.HasPrefix(r.VerdictLine(), tc.line) {
				t.Errorf("verdict %d, %q; want %d, %q", v, r.VerdictLine(), tc.verdict, tc.line)
			}
			out := renderAll(t, r)
			for _, f := range tc.flows {
				want := fmt.Sprintf("x -> y (198.18.5.2): %.2f Gbit/s over %.1fs%s", f.Gbps, f.Elapsed.Seconds(), errSuffix(f.Error))
				if !strings.Contains(out.table, want) {
					t.Errorf("table lacks %q:\n%s", want, out.table)
				}
			}
			if out.junit.Errors != tc.junitErr {
				t.Errorf("junit: %d errors, want %d", out.junit.Errors, tc.junitErr)
			}
			doc := out.json
			if doc.Verdict != tc.verdict || doc.Summary.LoadErrors != tc.junitErr || len(doc.Load.Flows) == 0 || doc.Load.Flows[0]["elapsed_ns"] == nil {
				t.Errorf("json verdict %d, summary %+v, load %v", doc.Verdict, doc.Summary, doc.Load)
			}
		})
	}
}

// rendered is a report in every output format, read back.
type rendered struct {
	table string
	json  struct {
		Verdict int     `json:"verdict"`
		Summary Summary `json:"summary"`
		Load    struct {
			Flows []map[string]any `json:"flows"`
		} `json:"load"`
	}
	junit junitSuites
}

func renderAll(t *testing.T, r *Report) rendered {
	t.Helper()
	var out rendered
	var b bytes.Buffer
	if err := r.WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	out.table = b.String()
	b.Reset()
	if err := r.WriteJSON(&b); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b.Bytes(), &out.json); err != nil {
		t.Fatal(err)
	}
	b.Reset()
	if err := r.WriteJUnit(&b); err != nil {
		t.Fatal(err)
	}
	if err := xml.Unmarshal(b.Bytes(), &out.junit); err != nil {
		t.Fatal(err)
	}
	return out
}

// Cell symbols: a blocked probe whose packets still arrive is '>' in the
// expected matrix, and a probe answered only by another namespace is 'w'
// in the observed one.
func TestCellSymbols(t *testing.T) {
	a := netip.MustParseAddr("198.18.0.1")
	for _, tc := range []struct {
		name          string
		probes        []*Probe
		exp, obs, dif byte
	}{
		{"reachable", []*Probe{{Expect: "b", Outcome: Replied, By: "b", Claimed: "b"}}, '.', '.', '.'},
		{"blocked", []*Probe{{Outcome: Blocked}}, 'X', 'X', '.'},
		{"one way", []*Probe{{OneWay: true, Outcome: Blocked}}, '>', 'X', '.'},
		{"one way, one not", []*Probe{{OneWay: true, Outcome: Blocked}, {Outcome: Blocked}}, 'X', 'X', '.'},
		{"wrong answerer", []*Probe{{Expect: "b", Outcome: Replied, By: "r", Claimed: "r"}}, '.', 'w', 'X'},
		{"refused", []*Probe{{Expect: "b", Outcome: Refused, By: "b", Claimed: "b"}}, '.', 'r', '.'},
	} {
		for _, p := range tc.probes {
			p.From, p.To, p.Addr = "a", "b", a
		}
		c := Cell{Probes: tc.probes}
		c.fill("b")
		if c.Expected != tc.exp || c.Observed != tc.obs || c.Diff != tc.dif {
			t.Errorf("%s: %c %c %c, want %c %c %c", tc.name, c.Expected, c.Observed, c.Diff, tc.exp, tc.obs, tc.dif)
		}
	}
}

package bench

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/nsflow/nsflow/internal/testenv"
	"github.com/nsflow/nsflow/internal/topotest"
	"github.com/nsflow/nsflow/topology"
	"github.com/nsflow/nsflow/traffic"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// TestRun runs every path and protocol with two pairs for a fraction of
// a second each and checks the mechanics: traffic flowed in every sample,
// every count reconciles exactly, the JSON has every field, the chart is
// valid, and the topology is gone afterwards. No throughput threshold:
// those belong to the README's figures.
func TestRun(t *testing.T) {
	testenv.RequireBPFFS(t)
	var steps []Progress
	rep, err := Run(context.Background(), Config{
		Paths: []Path{Veth, Bridge}, Protos: []traffic.Proto{traffic.TCP, traffic.UDP},
		Pairs: 2, Duration: 300 * time.Millisecond, Rounds: 1, Slices: 2,
		Progress: func(p Progress) { steps = append(steps, p) },
	})
	if err != nil {
		t.Fatal(err)
	}
	assertGone(t, rep.Topology)

	if len(rep.Cases) != 8 {
		t.Fatalf("%d cases, want 8 (2 paths x 2 protocols x 1 and 2 pairs)", len(rep.Cases))
	}
	for _, c := range rep.Cases {
		if len(c.Samples) != 2 || c.Samples[0].Instrumented || !c.Samples[1].Instrumented {
			t.Errorf("%s: samples not interleaved uninstrumented, instrumented: %+v", c.Name, c.Samples)
		}
		for _, s := range c.Samples {
			if s.Received.Bytes == 0 || s.Gbps <= 0 {
				t.Errorf("%s %s: no traffic: %+v", c.Name, mode(s.Instrumented), s)
			}
			if c.Proto == traffic.UDP && (s.Received.Packets+s.Lost != s.Sent.Packets || s.Mpps <= 0) {
				t.Errorf("%s: sent %d, received %d + lost %d", c.Name, s.Sent.Packets, s.Received.Packets, s.Lost)
			}
			// Every interface on the path is checked both ways when
			// instrumented, plus the generator's own checks.
			want := c.Pairs
			if c.Proto == traffic.UDP {
				want = 2 * c.Pairs
				if s.Instrumented {
					want += 2 * c.Pairs
				}
			}
			if s.Instrumented {
				perPair := 2
				if c.Path == Bridge {
					perPair = 4
				}
				want += 2 * perPair * c.Pairs
			}
			if len(s.Checks) != want {
				t.Errorf("%s %s: %d checks, want %d", c.Name, mode(s.Instrumented), len(s.Checks), want)
			}
			for _, ch := range s.Checks {
				if !ch.OK {
					t.Errorf("%s %s: difference: %+v", c.Name, mode(s.Instrumented), ch)
				}
			}
		}
		if c.BPF.Runs == 0 || c.BPF.NsPerPacket <= 0 || c.Ratio <= 0 {
			t.Errorf("%s: no datapath cost or ratio: %+v ratio %v", c.Name, c.BPF, c.Ratio)
		}
		if sr := c.SliceRatio; len(sr.Ratios) != 2 || sr.Median <= 0 || sr.Q25 > sr.Median || sr.Median > sr.Q75 {
			t.Errorf("%s: slice ratio %+v, want two slices measured", c.Name, sr)
		}
	}
	if !rep.Complete {
		t.Error("the report of a whole run says it is not complete")
	}
	if rep.Differences != 0 {
		t.Errorf("%d differences", rep.Differences)
	}
	if _, err := exec.LookPath("iperf3"); err == nil {
		if len(rep.Iperf3) != 4 {
			t.Errorf("iperf3 lines %+v, want one per path and protocol", rep.Iperf3)
		}
		for _, p := range rep.Iperf3 {
			if p.Error != "" || p.Gbps <= 0 {
				t.Errorf("iperf3 %s/%s: %+v", p.Path, p.Proto, p)
			}
		}
	} else if testenv.InCI() {
		t.Error("iperf3 is not installed (make deps installs it)")
	}
	if len(steps) == 0 || steps[len(steps)-1].Phase != "cleanup" {
		t.Errorf("progress: %+v", steps)
	}

	var js, svg bytes.Buffer
	if err := WriteJSON(&js, rep); err != nil {
		t.Fatal(err)
	}
	checkJSON(t, js.Bytes())
	plot := filepath.Join(t.TempDir(), "bench.svg")
	if err := SavePlot(plot, rep); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(plot)
	if err != nil {
		t.Fatal(err)
	}
	svg.Write(data)
	checkSVG(t, svg.Bytes(), rep)
}

// TestRunCancel interrupts a run in its first sample, as Ctrl-C does, and
// checks that it stops soon and removes everything it built.
func TestRunCancel(t *testing.T) {
	testenv.RequireBPFFS(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	start := time.Now()
	rep, err := Run(ctx, Config{Paths: []Path{Bridge}, Protos: []traffic.Proto{traffic.UDP}, Duration: time.Minute,
		Progress: func(p Progress) {
			if p.Phase == "sample" {
				go func() { time.Sleep(300 * time.Millisecond); cancel() }()
			}
		}})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("error %v, want context.Canceled", err)
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("took %v to stop", d)
	}
	if rep == nil {
		t.Fatal("no partial report")
	}
	if rep.Complete {
		t.Error("the partial report says it is complete")
	}
	assertGone(t, rep.Topology)
}

// TestRunFile measures the namespaces of a topology file that is already
// up, and leaves it up; it refuses a file that is partly up.
func TestRunFile(t *testing.T) {
	testenv.RequireBPFFS(t)
	s, err := runSpec([]Path{Veth}, 1).WithPrefix(testenv.Name("nbt") + "-")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := topology.Up(context.Background(), s, topology.Options{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := topology.Down(context.Background(), s, topology.Options{}); err != nil {
			t.Error(err)
		}
		assertGone(t, s.Name)
	})
	// No iperf3 on the PATH: the report says why there is no sanity line.
	t.Setenv("PATH", t.TempDir())
	rep, err := Run(context.Background(), Config{Spec: s, SpecFile: "test.yaml", Duration: 200 * time.Millisecond,
		Rounds: 1, Slices: 1, Pairs: 4})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Topology != s.Name || len(rep.Cases) != 1 || rep.Cases[0].Pairs != 1 || rep.Differences != 0 {
		t.Errorf("report: topology %s, %d cases, differences %d", rep.Topology, len(rep.Cases), rep.Differences)
	}
	if len(rep.Iperf3) != 1 || !strings.Contains(rep.Iperf3[0].Error, "iperf3 is not installed") {
		t.Errorf("iperf3 lines %+v, want one saying iperf3 is not installed", rep.Iperf3)
	}
	if !slices.Equal(rep.Settings.Pairs, []int{1}) {
		t.Errorf("settings.pairs %v, want [1]: the file has one veth pair", rep.Settings.Pairs)
	}
	// While another bench or a verify runs on the file: refused at once.
	unlock, err := topology.LockRun(s.Name)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Run(context.Background(), Config{Spec: s, Duration: 200 * time.Millisecond, Rounds: 1, Slices: 1, NoIperf3: true})
	var busy *topology.BusyError
	if !errors.As(err, &busy) || !strings.Contains(err.Error(), "another nsflow verify or bench of topology "+s.Name+" is running") {
		t.Errorf("run while the topology is locked: %v", err)
	}
	unlock()
	for _, n := range s.Namespaces {
		if _, err := os.Stat(s.NetnsPath(n.Name)); err != nil {
			t.Errorf("bench removed namespace %s of a topology it did not build: %v", n.Name, err)
		}
	}

	// Partly up: refused, and what is there stays (bringing the file up
	// for the run and down after it would remove it all).
	gone := s.Namespaces[0].Name
	if err := netns.DeleteNamed(gone); err != nil {
		t.Fatal(err)
	}
	_, err = Run(context.Background(), Config{Spec: s, SpecFile: "test.yaml", Duration: 200 * time.Millisecond,
		Rounds: 1, Slices: 1, NoIperf3: true})
	if err == nil || !strings.Contains(err.Error(), "partly up") || !strings.Contains(err.Error(), gone) {
		t.Errorf("run on a topology partly up: error %v, want one saying so and naming %s", err, gone)
	}
	for _, n := range s.Namespaces[1:] {
		if _, err := os.Stat(s.NetnsPath(n.Name)); err != nil {
			t.Errorf("bench removed namespace %s of a topology partly up: %v", n.Name, err)
		}
	}
}

// assertGone checks that no namespace, host interface or state record of
// topology name is left. Bench's names all start with the topology's
// prefix, the part of its name before "bench".
func assertGone(t *testing.T, name string) {
	t.Helper()
	prefix, _, ok := strings.Cut(name, "bench")
	if !ok || prefix == "" {
		t.Fatalf("topology name %q has no prefix", name)
	}
	entries, err := os.ReadDir(topology.NetnsDir)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			t.Errorf("namespace %s left behind", e.Name())
		}
	}
	// A dump is interrupted when links change meanwhile, which other
	// tests on this host do all the time: retry.
	links, err := netlink.LinkList()
	for try := 0; errors.Is(err, netlink.ErrDumpInterrupted) && try < 20; try++ {
		links, err = netlink.LinkList()
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, prefix) {
			t.Errorf("host interface %s left behind", l.Attrs().Name)
		}
	}
	if _, err := os.Stat(filepath.Join(topology.StateDir, name+".json")); !os.IsNotExist(err) {
		t.Errorf("state record of %s left behind (%v)", name, err)
	}
}

// A file with an IPv4 and an IPv6 pair, at the largest UDP frame: each
// pair's payload fills the frame in its own family. (The IPv6 pair once
// got the IPv4 payload, 20 bytes too many: fragmented, and every count
// differed.)
func TestRunMixedFamilies(t *testing.T) {
	testenv.RequireBPFFS(t)
	spec, err := topology.Parse([]byte(`
name: mixed
namespaces: [{name: a}, {name: b}, {name: c}, {name: d}]
links:
  - endpoints: [{namespace: a, interface: e0, addresses: [198.18.211.1/30]}, {namespace: b, interface: e0, addresses: [198.18.211.2/30]}]
  - endpoints: [{namespace: c, interface: e0, addresses: ["fd00:b7:6::1/64"]}, {namespace: d, interface: e0, addresses: ["fd00:b7:6::2/64"]}]
`))
	if err != nil {
		t.Fatal(err)
	}
	s := topotest.Up(t, spec, testenv.Name("nbm"))
	rep, err := Run(context.Background(), Config{Spec: s, SpecFile: "mixed.yaml", Protos: []traffic.Proto{traffic.UDP},
		Size: 1518, Pairs: 2, Duration: 200 * time.Millisecond, Rounds: 1, Slices: 1, NoIperf3: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Cases) != 2 || rep.Cases[1].Pairs != 2 {
		t.Fatalf("cases %d, want 2 (1 and 2 pairs)", len(rep.Cases))
	}
	if rep.Differences != 0 {
		for _, c := range rep.Cases {
			for _, s := range c.Samples {
				for _, ch := range s.Checks {
					if !ch.OK {
						t.Logf("%s: %+v", c.Name, ch)
					}
				}
			}
		}
		t.Errorf("%d differences, want 0", rep.Differences)
	}
}

// The iperf3 sanity line measures bench's own iperf3 server: with the
// user's iperf3 server on the default port in the server's namespace,
// bench's listens on the next, and the user's sees no client.
func TestIperf3BesideAnother(t *testing.T) {
	testenv.RequireBPFFS(t)
	if _, err := exec.LookPath("iperf3"); err != nil {
		t.Fatal("iperf3 is needed (Debian package iperf3)")
	}
	s := topotest.Up(t, runSpec([]Path{Veth}, 1), testenv.Name("nbi")+"-")
	pairs := findPairs(s, Veth)
	if len(pairs) != 1 {
		t.Fatalf("%d pairs", len(pairs))
	}
	// A file, not a buffer: the test reads it while iperf3 writes.
	out, err := os.Create(filepath.Join(t.TempDir(), "iperf3.out"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	other := exec.Command("ip", "netns", "exec", pairs[0].server.Namespace, "iperf3", "-s", "-p", "5201")
	other.Stdout, other.Stderr = out, out
	if err := other.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { other.Process.Kill(); other.Wait() })
	said := func() string { b, _ := os.ReadFile(out.Name()); return string(b) }
	for try := 0; ; try++ {
		if ports, err := listeningPorts(pairs[0]); err == nil && ports[5201] {
			break
		} else if try == 100 {
			t.Fatalf("the other iperf3 server does not listen: %v %s", err, said())
		}
		time.Sleep(20 * time.Millisecond)
	}
	rep, err := Run(context.Background(), Config{Spec: s, Duration: time.Second, Rounds: 1, Slices: 1})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Iperf3) != 1 || rep.Iperf3[0].Error != "" || rep.Iperf3[0].Gbps <= 0 {
		t.Errorf("iperf3 line %+v, want a measurement", rep.Iperf3)
	}
	if s := said(); strings.Contains(s, "Accepted connection") {
		t.Errorf("bench's iperf3 client measured the other server:\n%s", s)
	}
}

// A sample in which no traffic arrives (here a firewall in the server's
// namespace drops it all) fails the run: it is not a throughput of 0.
func TestRunNoTraffic(t *testing.T) {
	testenv.RequireBPFFS(t)
	s := topotest.Up(t, runSpec([]Path{Veth}, 1), testenv.Name("nbz")+"-")
	server := findPairs(s, Veth)[0].server.Namespace
	if out, err := exec.Command("ip", "netns", "exec", server, "nft",
		"add table inet t; add chain inet t in { type filter hook input priority 0; policy accept; }; add rule inet t in udp dport != 0 drop").CombinedOutput(); err != nil {
		t.Fatalf("nft: %v: %s", err, out)
	}
	_, err := Run(context.Background(), Config{Spec: s, Protos: []traffic.Proto{traffic.UDP}, Duration: 200 * time.Millisecond,
		Rounds: 1, Slices: 1, NoIperf3: true})
	if err == nil || !strings.Contains(err.Error(), "no traffic arrived") {
		t.Errorf("run without traffic: %v, want an error saying no traffic arrived", err)
	}
}

// TestRunHookCost: with HookCost, every case also has the no-op's slice
// ratio, from as many slices as nsflow's, and the no-op program is gone
// after the run.
func TestRunHookCost(t *testing.T) {
	testenv.RequireBPFFS(t)
	before := noopProgs(t)
	rep, err := Run(context.Background(), Config{Protos: []traffic.Proto{traffic.UDP}, Duration: 200 * time.Millisecond,
		Rounds: 1, Slices: 3, HookCost: true, NoIperf3: true})
	if err != nil {
		t.Fatal(err)
	}
	assertGone(t, rep.Topology)
	if !rep.Settings.HookCost || len(rep.Cases) != 1 {
		t.Fatalf("settings.hook_cost %v, %d cases", rep.Settings.HookCost, len(rep.Cases))
	}
	c := rep.Cases[0]
	if h := c.HookRatio; h == nil || len(h.Ratios) != 3 || h.Median <= 0 || len(c.SliceRatio.Ratios) != 3 {
		t.Errorf("hook ratio %+v and slice ratio %+v, want 3 slices each", h, c.SliceRatio)
	}
	if rep.Differences != 0 {
		t.Errorf("%d differences", rep.Differences)
	}
	deadline := time.Now().Add(5 * time.Second)
	for left := noopProgs(t); len(left) > len(before); left = noopProgs(t) {
		if time.Now().After(deadline) {
			t.Fatalf("no-op programs left: %v (before the run: %v)", left, before)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// noopProgs lists the loaded programs named as bpf.LoadNoop names its.
func noopProgs(t *testing.T) (ids []ebpf.ProgramID) {
	t.Helper()
	var id ebpf.ProgramID
	for {
		next, err := ebpf.ProgramGetNextID(id)
		if errors.Is(err, os.ErrNotExist) {
			return ids
		}
		if err != nil {
			t.Fatal(err)
		}
		id = next
		p, err := ebpf.NewProgramFromID(id)
		if errors.Is(err, os.ErrNotExist) {
			continue // gone meanwhile
		}
		if err != nil {
			t.Fatal(err)
		}
		info, err := p.Info()
		p.Close()
		if err != nil {
			t.Fatal(err)
		}
		if info.Name == "nsflow_noop" {
			ids = append(ids, id)
		}
	}
}

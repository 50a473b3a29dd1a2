package demo

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/nsflow/nsflow/internal/nsenter"
	"github.com/nsflow/nsflow/internal/testenv"
	"github.com/nsflow/nsflow/internal/topotest"
	"github.com/nsflow/nsflow/topology"
	"github.com/vishvananda/netlink"
)

// syncBuffer is an io.Writer safe for the display's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// leftovers lists what of a prefix exists on the host: namespaces under
// /run/netns, host interfaces, and the topology's state record.
func leftovers(t *testing.T, prefix string) []string {
	t.Helper()
	var out []string
	entries, err := os.ReadDir(topology.NetnsDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			out = append(out, "netns "+e.Name())
		}
	}
	links, err := linkList()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, prefix) {
			out = append(out, "link "+l.Attrs().Name)
		}
	}
	state, _ := filepath.Glob(filepath.Join(topology.StateDir, prefix+"*"))
	for _, s := range state {
		out = append(out, "state "+s)
	}
	return out
}

// linkList lists the host's interfaces, dumping again when other tests
// changed links during the dump (netlink then flags it as interrupted).
func linkList() ([]netlink.Link, error) {
	for range 20 {
		links, err := netlink.LinkList()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return links, err
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil, errors.New("link dump interrupted 20 times in a row")
}

// attachedPrograms returns the IDs of the tcx programs attached to the
// interfaces of the topology's namespaces.
func attachedPrograms(t *testing.T, s *topology.Spec) []ebpf.ProgramID {
	var ids []ebpf.ProgramID
	for _, ifc := range s.Interfaces() {
		if ifc.Namespace == topology.HostNamespace {
			continue
		}
		err := nsenter.Do(s.NetnsPath(ifc.Namespace), func() error {
			l, err := netlink.LinkByName(ifc.Name)
			if err != nil {
				return err
			}
			for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
				res, err := link.QueryPrograms(link.QueryOptions{Target: l.Attrs().Index, Attach: at})
				if err != nil {
					return err
				}
				for _, p := range res.Programs {
					ids = append(ids, p.ID)
				}
			}
			return nil
		})
		if err != nil {
			t.Errorf("query programs on %s/%s: %v", ifc.Namespace, ifc.Name, err)
		}
	}
	return ids
}

func scrape(t *testing.T, url string) string {
	t.Helper()
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get(url)
	if err != nil {
		t.Errorf("scrape %s: %v", url, err)
		return ""
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Errorf("scrape %s: %s", url, resp.Status)
	}
	return string(body)
}

// runDemo runs the demo under a unique prefix and checks afterwards that
// it left nothing behind: no namespace, interface or state record of its
// prefix, none of the programs it attached, and no listener. before, if
// set, runs first and returns the objects it made that must stay.
func runDemo(t *testing.T, ctx context.Context, o Options, before func(prefix string) []string) (*Summary, *observed, error) {
	t.Helper()
	testenv.RequireBPFFS(t)
	prefix := testenv.Name("dm") + "-"
	if got := leftovers(t, prefix); len(got) > 0 {
		t.Fatalf("before the demo: %v", got)
	}
	var keep []string
	if before != nil {
		keep = before(prefix)
	}
	spec, err := DefaultSpec()
	if err != nil {
		t.Fatal(err)
	}
	// If the demo's own teardown fails, the test's must not.
	topotest.DownAtCleanup(t, spec, prefix)

	out := &syncBuffer{}
	obs := &observed{out: out}
	o.Prefix, o.Out, o.ListenAddress = prefix, out, "127.0.0.1:0"
	started := o.Started
	o.Started = func(i Info) {
		obs.url = i.MetricsURL
		obs.programs = attachedPrograms(t, i.Spec)
		if started != nil {
			started(i)
		}
	}
	sum, runErr := Run(ctx, o)
	t.Logf("demo output:\n%s", out.String())

	if got := leftovers(t, prefix); !slices.Equal(got, keep) {
		t.Errorf("after the demo: %v, want only %v", got, keep)
	}
	for _, id := range obs.programs {
		if p, err := ebpf.NewProgramFromID(id); err == nil {
			p.Close()
			t.Errorf("program %d the demo attached still exists", id)
		} else if !errors.Is(err, os.ErrNotExist) {
			t.Errorf("program %d: %v", id, err)
		}
	}
	if obs.url != "" {
		host := strings.TrimSuffix(strings.TrimPrefix(obs.url, "http://"), "/metrics")
		if c, err := net.DialTimeout("tcp", host, time.Second); err == nil {
			c.Close()
			t.Errorf("%s still accepts connections after the demo", host)
		}
	}
	return sum, obs, runErr
}

// observed is what the test saw while the demo ran.
type observed struct {
	out      *syncBuffer
	url      string
	programs []ebpf.ProgramID
}

// TestDemo runs the demo for a few seconds, non-interactively, as the
// README's command does, and checks what it shows, serves and leaves.
func TestDemo(t *testing.T) {
	// While it runs, /metrics serves the traffic between the demo's
	// namespaces (polled: the first packets take a moment).
	var metrics string
	var missing []string
	verified := false
	started := func(i Info) {
		defer func() {
			// Info.Verified says when verify is done.
			select {
			case <-i.Verified:
				verified = true
			case <-time.After(30 * time.Second):
			}
		}()
		prefix := strings.TrimSuffix(i.Spec.Name, "seed")
		want := []string{
			`nsflow_netns_flow_bytes_total{dst_netns="` + prefix + `ns2",protocol="udp",src_netns="` + prefix + `ns1"}`,
			`nsflow_interface_receive_packets_total{family="ipv4",interface="eth0",netns="` + prefix + `c2"}`,
			`nsflow_attached_programs{mode=`,
		}
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			metrics = scrape(t, i.MetricsURL)
			missing = slices.DeleteFunc(slices.Clone(want), func(w string) bool { return strings.Contains(metrics, w) })
			if len(missing) == 0 || time.Now().After(deadline) {
				return
			}
		}
	}
	sum, obs, err := runDemo(t, context.Background(), Options{Duration: 6 * time.Second, SnapshotEvery: 2 * time.Second, Started: started}, nil)
	if err != nil {
		t.Fatalf("demo: %v", err)
	}
	if len(obs.programs) == 0 {
		t.Error("no tcx program was attached to the demo's interfaces")
	}
	for _, m := range missing {
		t.Errorf("/metrics lacks %s", m)
	}

	// Verify ran and the seed's isolation holds.
	if !verified {
		t.Error("Info.Verified was not closed within 30s")
	}
	if sum.Verify == nil {
		t.Fatal("verify did not report")
	}
	if v := sum.Verify.Verdict(); v != 0 {
		t.Errorf("verify verdict %d, want 0: %+v\n%s", v, sum.Verify.Summary(),
			strings.Join(verdictOf(sum.Verify, nil).Mismatches, "\n"))
	}
	// Every flow moved traffic, and the agent counted each exactly.
	if len(sum.Flows) != len(seedFlows) {
		t.Errorf("%d flows, want %d", len(sum.Flows), len(seedFlows))
	}
	for _, f := range sum.Flows {
		if f.Result.Sent.Packets == 0 {
			t.Errorf("flow %s→%s sent nothing", f.Src, f.Dst)
		}
		if !f.Loopback && !f.Exact() {
			t.Errorf("flow %s→%s: agent counted %d, generator sent %d, received %d",
				f.Src, f.Dst, f.Counted, f.Result.Sent.Packets, f.Result.Received.Packets)
		}
	}
	if sum.Down == nil || sum.Down.NamespacesRemoved != len(sum.Verify.Namespaces) {
		t.Errorf("teardown %+v: want every namespace removed", sum.Down)
	}

	// Non-interactive output: progress lines and snapshots, no escapes.
	out := obs.out.String()
	if strings.Contains(out, "\x1b[") {
		t.Error("non-interactive output contains terminal escapes")
	}
	for _, want := range []string{
		"✓ topology up: 8 namespaces",
		"✓ agent: attached; metrics on http://127.0.0.1:",
		"✓ traffic: 7 flows",
		"✓ verify isolation: ",
		"bytes/s from namespace (row) to namespace (column)",
		"isolation: HOLDS",
		"✓ topology down: 8 namespaces",
		"agent counted",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	// The last snapshot comes after the server stopped and must say so.
	if i := strings.LastIndex(out, "nsflow demo: topology"); i < 0 {
		t.Error("no snapshot in the output")
	} else if title, _, _ := strings.Cut(out[i:], "\n"); !strings.HasSuffix(title, "metrics: (stopped)") {
		t.Errorf("last snapshot's title %q: want the metrics shown as stopped", title)
	}
}

// TestDemoInterrupted ends the demo as Ctrl-C does, right after start-up:
// it must still tear everything down.
func TestDemoInterrupted(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sum, _, err := runDemo(t, ctx, Options{Started: func(Info) { cancel() }}, nil)
	if err != nil {
		t.Fatalf("an interrupted demo must still end cleanly: %v", err)
	}
	if sum.Down == nil || sum.Down.NamespacesRemoved != 8 {
		t.Errorf("teardown %+v: want the 8 namespaces removed", sum.Down)
	}
}

// A host address the demo's topology shares with another topology's (two
// seeds under different prefixes put one subnet on two host bridges) is
// shown as a warning of topology up, not dropped.
func TestDemoWarnsOfHostOverlap(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	other := func(string) []string {
		seed, err := DefaultSpec()
		if err != nil {
			t.Fatal(err)
		}
		topotest.Up(t, seed, testenv.Name("dw")+"-")
		return nil
	}
	_, obs, err := runDemo(t, ctx, Options{Started: func(Info) { cancel() }}, other)
	if err != nil {
		t.Fatalf("demo: %v", err)
	}
	if !regexp.MustCompile(`! topology up: .*198\.18\.1\.`).MatchString(obs.out.String()) {
		t.Errorf("no warning of the shared host subnet in the output")
	}
}

// TestDemoFails checks that a demo that cannot start says why and builds
// nothing, or removes what it built.
func TestDemoFails(t *testing.T) {
	refused := func(t *testing.T, o Options, want string) {
		t.Helper()
		_, err := Run(context.Background(), o)
		var setup *SetupError
		if !errors.As(err, &setup) || !strings.Contains(err.Error(), want) {
			t.Errorf("got %v, want a SetupError containing %q", err, want)
		}
	}
	t.Run("port in use", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		refused(t, Options{Prefix: testenv.Name("dm") + "-", ListenAddress: l.Addr().String()}, "metrics listener")
	})
	t.Run("no namespaces", func(t *testing.T) {
		s, err := topology.Parse([]byte("name: none\nnamespaces: []\n"))
		if err != nil {
			t.Fatal(err)
		}
		refused(t, Options{Spec: s, Prefix: testenv.Name("dm") + "-"}, "declares no namespaces")
	})
	t.Run("intent the wiring contradicts", func(t *testing.T) {
		s, err := topology.Parse([]byte(`
name: deny
namespaces: [{name: a}, {name: b}]
links: [{endpoints: [{namespace: a, interface: e0, addresses: [198.18.9.1/30]}, {namespace: b, interface: e0, addresses: [198.18.9.2/30]}]}]
isolation: {deny: [{from: [a], to: [b]}]}
`))
		if err != nil {
			t.Fatal(err)
		}
		refused(t, Options{Spec: s, Prefix: testenv.Name("dm") + "-"}, "isolation.deny[0]")
	})
	t.Run("up already", func(t *testing.T) {
		// Another demo's topology, or one brought up by hand under the
		// demo's prefix: the demo would take it over and remove it.
		seed, err := DefaultSpec()
		if err != nil {
			t.Fatal(err)
		}
		prefix := testenv.Name("dm") + "-"
		up := topotest.Up(t, seed, prefix)
		refused(t, Options{Prefix: prefix}, "is up already")
		for _, n := range up.Namespaces {
			if _, err := os.Stat(up.NetnsPath(n.Name)); err != nil {
				t.Errorf("namespace %s of the topology that was up is gone: %v", n.Name, err)
			}
		}
	})
	t.Run("another demo running", func(t *testing.T) {
		prefix := testenv.Name("dm") + "-"
		unlock, err := topology.LockDemo(prefix + "seed")
		if err != nil {
			t.Fatal(err)
		}
		defer unlock()
		refused(t, Options{Prefix: prefix}, "another nsflow demo of topology "+prefix+"seed is running")
	})
	t.Run("name taken", func(t *testing.T) {
		// A host interface of a name the demo wants, not the demo's own:
		// topology up refuses, and the demo leaves it and the host alone.
		foreign := func(prefix string) []string {
			name := prefix + "vc1"
			if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { netlink.LinkDel(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}) })
			return []string{"link " + name}
		}
		sum, _, err := runDemo(t, context.Background(), Options{Duration: time.Second}, foreign)
		if err == nil || !strings.Contains(err.Error(), "vc1") {
			t.Errorf("got %v, want an error naming the taken interface", err)
		}
		if sum != nil && len(sum.Flows) > 0 {
			t.Error("traffic started although the topology failed")
		}
	})
}

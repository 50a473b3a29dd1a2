package verify

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nsflow/nsflow/internal/nsenter"
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

// A run whose context ends (Ctrl-C) before it does proves nothing: no
// report, an error, with or without load.
func TestInterruptedRunReportsNothing(t *testing.T) {
	l := upLab(t, nil)
	for _, tc := range []struct {
		name  string
		opts  Options
		after time.Duration // when the context ends
		max   time.Duration // how long the run may take
	}{
		// Well inside the run: the lab's probes take about 2 s. Under
		// load, the 5 s minimum is not waited out.
		{"probes only", Options{}, time.Second, 4 * time.Second},
		{"under load", Options{Load: true, LoadDuration: 5 * time.Second}, time.Second, 4 * time.Second},
		// Blocked probes would wait 10 s: they are not waited for.
		{"long probe timeout", Options{Timeout: 10 * time.Second}, time.Second, 4 * time.Second},
		// Ended before it started: no probe is sent.
		{"before the probes", Options{}, 0, DefaultTimeout},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if tc.after == 0 {
				cancel()
			} else {
				time.AfterFunc(tc.after, cancel)
			}
			start := time.Now()
			rep, err := Run(ctx, l.spec, tc.opts)
			if !errors.Is(err, ErrInterrupted) || !errors.Is(err, context.Canceled) || rep != nil {
				if rep != nil {
					logTable(t, rep)
				}
				t.Fatalf("interrupted run: report %v, error %v; want no report and ErrInterrupted", rep != nil, err)
			}
			if d := time.Since(start); d > tc.max {
				t.Errorf("the interrupted run took %v, want at most %v", d, tc.max)
			}
		})
	}
}

// A load whose flows end before the checks do (here by its context) is
// reported with the time it really ran, and each flow with an error, so
// the verdict is could-not-check; stop does not wait out the minimum.
func TestLoadEndedEarly(t *testing.T) {
	l := upLab(t, nil)
	m := NewModel(l.spec)
	e, err := openEnv(m, l.spec, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ld, err := startLoad(ctx, e, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	cancel()
	time.Sleep(time.Second) // the checks would still be running
	var lr *LoadReport
	if d := timed(func() { lr = ld.stop() }); d > 3*time.Second {
		t.Errorf("stop took %v after the load ended", d)
	}
	if len(lr.Flows) == 0 {
		t.Fatal("no flows")
	}
	for _, f := range lr.Flows {
		if f.Error == "" || f.Elapsed <= 0 || f.Elapsed > time.Second || f.Elapsed > lr.Elapsed {
			t.Errorf("flow %s -> %s: over %v (load %v), error %q; want the time it ran, well under 1s, and an error", f.From, f.To, f.Elapsed, lr.Elapsed, f.Error)
		}
		if f.Bytes > 0 && f.Gbps <= 0 {
			t.Errorf("flow %s -> %s: %d bytes at %.2f Gbit/s", f.From, f.To, f.Bytes, f.Gbps)
		}
	}
	if lr.Elapsed > time.Second {
		t.Errorf("load reported over %v; it ran for about 0.5s", lr.Elapsed)
	}
	t.Logf("load %+v", *lr)
	rep := &Report{Load: lr}
	if v := rep.Verdict(); v != 2 || !strings.Contains(rep.VerdictLine(), "failed or ended before the checks did") {
		t.Errorf("verdict %d, %q; want 2, naming the load", v, rep.VerdictLine())
	}
}

// A UDP port that another process holds in a namespace, and never
// answers on, makes the probes of it unjudgeable: a timeout there cannot
// tell blocked from delivered. They are errors (status 2), not findings,
// and the port-space check of that port says it was not checked.
func TestForeignSilentUDPListener(t *testing.T) {
	l := upLab(t, nil)
	err := nsenter.Do(l.path("c"), func() error {
		for _, network := range []string{"udp4", "udp6"} {
			c, err := net.ListenPacket(network, ":8080")
			if err != nil {
				return err
			}
			t.Cleanup(func() { c.Close() })
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	rep := l.run(t, Options{})
	if v, s := rep.Verdict(), rep.Summary(); v != 2 || s.Mismatches != 0 || s.CheckFailed != 0 || s.ProbeErrors == 0 {
		logTable(t, rep)
		t.Fatalf("verdict %d (%+v), want 2 with probe errors and no finding", v, s)
	}
	for _, p := range rep.Probes {
		toC := p.To == l.ns("c") && p.Port == "udp/8080"
		switch {
		case toC && p.Outcome != Failed && p.Outcome != Unreachable:
			t.Errorf("%s -> c %s %s: %s, want an error or an ICMP error on the way", p.From, p.Addr, p.Port, p.Outcome)
		case toC && p.Outcome == Failed && !strings.Contains(p.Detail, "held by another process"):
			t.Errorf("%s -> c %s: error %q does not say why", p.From, p.Addr, p.Detail)
		case !toC && p.Outcome == Failed:
			t.Errorf("%s -> %s %s %s could not run: %s", p.From, p.To, p.Addr, p.Port, p.Detail)
		}
	}
	found := false
	for _, c := range rep.PortSpace {
		if c.Netns == l.ns("c") && c.Kind == "udp/8080" {
			found = true
			if !c.Pass || !strings.Contains(strings.Join(c.Info, "; "), "not checked") {
				t.Errorf("port space of c udp/8080: %+v", c)
			}
		}
		// Only UDP is held: tcp/8080's check has nothing to tell.
		if c.Netns == l.ns("c") && c.Kind == "tcp/8080" && len(c.Info) > 0 {
			t.Errorf("port space of c tcp/8080 tells of another port: %q", c.Info)
		}
	}
	if !found {
		t.Error("no port-space check of c udp/8080")
	}
	// The table says so too, instead of a plain pass.
	var b bytes.Buffer
	if err := rep.WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	if want := "udp/8080  " + l.ns("c") + ": 127.0.0.1 udp/8080: not checked, udp4/8080 is another process's"; !strings.Contains(b.String(), portSpaceInfo+"\n") || !strings.Contains(b.String(), want) {
		t.Errorf("table does not tell %q under %q:\n%s", want, portSpaceInfo, b.String())
	}
}

// A chain whose policy drops filters with no rule at all: the firewall
// check names it, for nftables and for legacy iptables and ip6tables.
func TestFirewallDropPolicies(t *testing.T) {
	l := upLab(t, nil)
	for _, cmd := range [][]string{
		{"nft", "add table inet nsfv; add chain inet nsfv in { type filter hook input priority 0; policy drop; }; add chain inet nsfv plain"},
		{"iptables-legacy", "-P", "FORWARD", "DROP"},
		{"ip6tables-legacy", "-t", "mangle", "-P", "OUTPUT", "DROP"},
	} {
		args := append([]string{"netns", "exec", l.ns("b")}, cmd...)
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", strings.Join(cmd, " "), err, out)
		}
	}
	var tables []firewallTable
	if err := nsenter.Do(l.path("b"), func() (err error) { tables, err = readFirewall(); return err }); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, tb := range tables {
		got[tb.kind+" "+tb.name] = strings.Join(tb.drops, ",")
	}
	for table, drops := range map[string]string{
		"nftables inet nsfv": "in",
		"iptables filter":    "FORWARD",
		"ip6tables mangle":   "OUTPUT",
	} {
		if got[table] != drops {
			t.Errorf("%s: drop policies %q, want %q (all tables: %+v)", table, got[table], drops, tables)
		}
	}
	c := checkFirewall(l.ns("b"), &snapshot{firewall: tables}, nil)
	if c.Pass || len(c.Problems) != 3 {
		t.Errorf("firewall check: %+v, want the three tables as problems", c)
	}
}

// Two verifies of one topology at once would bind each other's probe
// ports: the second fails at once, naming the first, and leaves no lock
// file once the first is done.
func TestConcurrentVerifyRefused(t *testing.T) {
	testenv.RequireRoot(t)
	s, err := topology.Parse([]byte("name: " + testenv.Name("vl") + "\nnamespaces: [{name: a}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	unlock, err := topology.LockRun(s.Name)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Run(context.Background(), s, Options{})
	var env *EnvError
	if !errors.As(err, &env) || !strings.Contains(err.Error(), "another nsflow verify or bench of topology "+s.Name+" is running") {
		t.Errorf("second verify: %v, want an environment error naming the running one", err)
	}
	unlock()
	if _, err := os.Stat(filepath.Join(topology.RunLockDir, s.Name+".lock")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("lock file left: %v", err)
	}
}

// A TCP port another process held when the responders started, and that
// has closed it since, cannot be checked for port space: that is
// information, not a violation.
func TestForeignTCPListenerGone(t *testing.T) {
	l := upLab(t, nil)
	var lns []net.Listener
	err := nsenter.Do(l.path("c"), func() error {
		for _, network := range []string{"tcp4", "tcp6"} {
			ln, err := net.Listen(network, ":8080")
			if err != nil {
				return err
			}
			lns = append(lns, ln)
			t.Cleanup(func() { ln.Close() })
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	beforePortSpace = func() {
		for _, ln := range lns {
			ln.Close()
		}
	}
	defer func() { beforePortSpace = nil }()
	rep := l.run(t, Options{})
	for _, c := range rep.PortSpace {
		if c.Netns == l.ns("c") && c.Kind == "tcp/8080" {
			if !c.Pass || !strings.Contains(strings.Join(c.Info, "; "), "another process held it and no longer answers") {
				logTable(t, rep)
				t.Errorf("port space of c tcp/8080: %+v", c)
			}
		}
	}
	if s := rep.Summary(); s.CheckFailed != 0 {
		logTable(t, rep)
		t.Errorf("%d checks failed, want none", s.CheckFailed)
	}
}

// A router that forwards through conf.default.forwarding (its interfaces
// take it when they are made) verifies green: the model forwards per
// receiving interface as the kernel does.
func TestDefaultForwardingIsGreen(t *testing.T) {
	l := upLab(t, func(s *topology.Spec) {
		for i := range s.Namespaces {
			if s.Namespaces[i].Name == "r" {
				s.Namespaces[i].Sysctls = map[string]string{
					"net.ipv4.conf.default.forwarding": "1",
					"net.ipv6.conf.all.forwarding":     "1",
				}
			}
		}
	})
	if rep := l.run(t, Options{}); rep.Verdict() != 0 {
		logTable(t, rep)
		t.Fatalf("verdict %d, want 0", rep.Verdict())
	}
}

// A router declared with a link-local address, the gateway of its
// neighbour's default route: verify is green. (The declared link-local
// address must be there, its subnet route is the kernel's, and it is not
// probed: it is reachable only on its own segment.)
func TestLinkLocalGatewayIsGreen(t *testing.T) {
	_, rep := upGreen(t, `
name: llgw
namespaces:
  - name: lr
    sysctls: {net.ipv6.conf.all.forwarding: "1"}
  - name: l1
    routes: [{to: default, via: "fe80::1", dev: eth0}]
  - name: l2
    routes: [{to: default, via: "fd00:0:0:32::1"}]
links:
  - endpoints:
      - {namespace: lr, interface: eth0, addresses: ["fe80::1/64", "fd00:0:0:31::1/64"]}
      - {namespace: l1, interface: eth0, addresses: ["fd00:0:0:31::2/64"]}
  - endpoints:
      - {namespace: lr, interface: eth1, addresses: ["fd00:0:0:32::1/64"]}
      - {namespace: l2, interface: eth0, addresses: ["fd00:0:0:32::2/64"]}
isolation:
  allow:
    - {from: [l1], to: [l2]}
    - {from: [l2], to: [l1]}
`)
	for _, p := range rep.Probes {
		if p.Addr.IsLinkLocalUnicast() {
			t.Errorf("probed a link-local address: %s -> %s %s", p.From, p.To, p.Addr)
		}
	}
}

// On-link routes to addresses the neighbour holds on its other interface
// verify green: ARP answers for them and NDP does not, as the model says,
// and the neighbour entry ARP leaves is the one the model expects.
func TestOnLinkNeighbourIsGreen(t *testing.T) {
	upGreen(t, onLinkSpec)
}

// verify judges only its own topology's namespaces: a file whose names
// lead to another topology's namespaces, or to namespaces nsflow did not
// make, is an environment error, not a verdict on someone else's wiring.
func TestVerifyRefusesOtherNamespaces(t *testing.T) {
	l := upLab(t, nil)
	other := *l.spec
	other.Name = l.prefix + "other"
	_, err := Run(context.Background(), &other, Options{})
	var env *EnvError
	if !errors.As(err, &env) || !strings.Contains(err.Error(), "belongs to topology "+l.spec.Name+", not to "+other.Name) {
		t.Errorf("verify of another file over the lab: %v", err)
	}
	plain := testenv.Name("vp")
	if out, err := exec.Command("ip", "netns", "add", plain).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", plain).Run() })
	s, err := topology.Parse([]byte("name: " + plain + "\nnamespaces: [{name: " + plain + "}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err = Run(context.Background(), s, Options{}); !errors.As(err, &env) || !strings.Contains(err.Error(), "was not made by nsflow topology up") {
		t.Errorf("verify of a plain namespace: %v", err)
	}
}

// A namespace with IPv6 off verifies green: it cannot send IPv6 (blocked,
// not a probe error) and has no ::1 to check its port space on.
func TestNamespaceWithoutIPv6IsGreen(t *testing.T) {
	upGreen(t, `
name: no6
namespaces:
  - name: x
    sysctls: {net.ipv6.conf.all.disable_ipv6: "1"}
  - name: y
links:
  - endpoints:
      - {namespace: x, interface: eth0, addresses: [198.18.90.1/24]}
      - {namespace: y, interface: eth0, addresses: [198.18.90.2/24, "fd00:0:0:90::2/64"]}
`)
}

// After up repairs an address deleted by hand, the kernel holds the
// addresses in another order than the file's, and sends from another one:
// verify follows the kernel's order. s1 reaches s2 by a dev route, from
// its interface's first address: .49 as declared (s2 cannot answer it),
// .41 once .49 was deleted and added again (s2 answers).
func TestAddressOrderAfterRepair(t *testing.T) {
	l, rep := upGreen(t, devRouteSpec)
	dst := "198.18.171.42"
	expect := func(rep *Report) (n int, want string) {
		for _, p := range rep.Probes {
			if p.From == l.ns("s1") && p.Addr.String() == dst {
				if n > 0 && p.Expect != want {
					t.Fatalf("probes to %s disagree: expect %q and %q", dst, want, p.Expect)
				}
				n, want = n+1, p.Expect
			}
		}
		return n, want
	}
	if n, want := expect(rep); n == 0 || want != "" {
		t.Fatalf("as declared: %d probes s1 -> %s expect %q, want blocked", n, dst, want)
	}
	ip(t, "-n", l.ns("s1"), "addr", "del", "198.18.171.49/29", "dev", "eth0")
	if _, err := topology.Up(context.Background(), l.spec, topology.Options{}); err != nil {
		t.Fatalf("up (repair): %v", err)
	}
	rep = l.run(t, Options{})
	if rep.Verdict() != 0 {
		logTable(t, rep)
		t.Fatalf("after the repair: verdict %d, want 0", rep.Verdict())
	}
	if n, want := expect(rep); n == 0 || want != l.ns("s2") {
		t.Fatalf("after the repair: %d probes s1 -> %s expect %q, want %s", n, dst, want, l.ns("s2"))
	}
}

// The same repair the other way round, under an allow rule: declared
// .41 first, s1 reaches s2 as the rule says; repaired, the kernel sends
// from .49 and s2 cannot answer. The probes agree with the kernel's
// order, so the addresses check tells that it breaks the rule.
func TestAddressOrderBreaksIntent(t *testing.T) {
	spec := strings.Replace(devRouteSpec, "[198.18.171.49/29, 198.18.171.41/29]", "[198.18.171.41/29, 198.18.171.49/29]", 1) +
		"isolation:\n  allow: [{from: [s1], to: [s2]}]\n"
	l, _ := upGreen(t, spec)
	ip(t, "-n", l.ns("s1"), "addr", "del", "198.18.171.41/29", "dev", "eth0")
	if _, err := topology.Up(context.Background(), l.spec, topology.Options{}); err != nil {
		t.Fatalf("up (repair): %v", err)
	}
	rep := l.run(t, Options{})
	l.expectRed(t, rep, "stack s1 addresses")
	want := "the kernel holds the addresses of eth0 in another order than the file, and picks other source addresses: isolation.allow[0]: " +
		l.ns("s1") + " must reach " + l.ns("s2") + ", but the topology gives it no path to any address of " + l.ns("s2")
	for _, c := range rep.Stack {
		if c.Netns == l.ns("s1") && c.Kind == "addresses" && !slices.Equal(c.Problems, []string{want}) {
			t.Errorf("s1 addresses: %q, want %q", c.Problems, want)
		}
	}
}

// A topology without namespaces has nothing to verify: a spec error, not
// a report (whose tables have no rows) and not a pass.
func TestNoNamespacesIsSpecError(t *testing.T) {
	s, err := topology.Parse([]byte("name: empty\nnamespaces: []\n"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = Run(context.Background(), s, Options{})
	var spec *SpecError
	if !errors.As(err, &spec) || !strings.Contains(err.Error(), "declares no namespaces") {
		t.Errorf("verify of no namespaces: %v, want a spec error", err)
	}
}

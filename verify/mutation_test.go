package verify

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nsflow/nsflow/internal/nsenter"
	"github.com/nsflow/nsflow/internal/testenv"
	"github.com/nsflow/nsflow/topology"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Each mutation breaks the isolation of a fresh lab in one way, with ip(8)
// as an independent tool, and asserts exactly which cells and checks turn
// red: the ones the mutation explains, and no other.

// ip runs ip(8) and fails the test if it fails.
func ip(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// red lists what is not green in a report, with the lab prefix removed:
// "a>c tcp/8080" for matrix cells, "stack b routes" and "port c udp/8080"
// for checks, "ebpf b>c" for evidence.
func (l *lab) red(rep *Report) []string {
	var out []string
	short := func(ns string) string { return strings.TrimPrefix(ns, l.prefix) }
	for _, port := range rep.Ports {
		for i, row := range rep.Matrix(port) {
			for j, c := range row {
				if i != j && c.Diff != '.' && c.Diff != ' ' {
					out = append(out, short(rep.Namespaces[i])+">"+short(rep.Namespaces[j])+" "+port)
				}
			}
		}
	}
	for _, c := range rep.Stack {
		if !c.Pass {
			out = append(out, "stack "+short(c.Netns)+" "+c.Kind)
		}
	}
	for _, c := range rep.PortSpace {
		if !c.Pass {
			out = append(out, "port "+short(c.Netns)+" "+c.Kind)
		}
	}
	if rep.Evidence != nil {
		for _, v := range rep.Evidence.Violations {
			out = append(out, "ebpf "+short(v.Src)+">"+short(v.Dst))
		}
	}
	slices.Sort(out)
	return out
}

func (l *lab) expectRed(t *testing.T, rep *Report, want ...string) {
	t.Helper()
	slices.Sort(want)
	if got := l.red(rep); !slices.Equal(got, want) {
		logTable(t, rep)
		t.Fatalf("red:\n  got  %q\n  want %q", got, want)
	}
	if rep.Verdict() != 1 {
		t.Errorf("verdict %d, want 1", rep.Verdict())
	}
}

var all3 = []string{"icmp", "tcp/8080", "udp/8080"}

func cells(pair string, ports ...string) []string {
	var out []string
	for _, p := range ports {
		out = append(out, pair+" "+p)
	}
	return out
}

// A veth between b and c, which must not talk, with addresses of its own.
func TestMutationStrayVeth(t *testing.T) {
	l := upLab(t, nil)
	ip(t, "link", "add", "stray0", "netns", l.ns("b"), "type", "veth", "peer", "name", "stray1", "netns", l.ns("c"))
	ip(t, "-n", l.ns("b"), "addr", "add", "198.19.0.1/30", "dev", "stray0")
	ip(t, "-n", l.ns("c"), "addr", "add", "198.19.0.2/30", "dev", "stray1")
	ip(t, "-n", l.ns("b"), "link", "set", "stray0", "up")
	ip(t, "-n", l.ns("c"), "link", "set", "stray1", "up")
	rep := l.run(t, Options{})
	want := slices.Concat(cells("b>c", all3...), cells("c>b", all3...), []string{
		"stack b interfaces", "stack b addresses", "stack b routes", "stack b neighbours",
		"stack c interfaces", "stack c addresses", "stack c routes", "stack c neighbours",
		"ebpf b>c", "ebpf c>b",
	})
	l.expectRed(t, rep, want...)
}

// A route in b to c's subnet through r: b now reaches c, and r's far side.
func TestMutationRouteLeak(t *testing.T) {
	l := upLab(t, nil)
	ip(t, "-n", l.ns("b"), "route", "add", "198.18.2.0/24", "via", "198.18.1.254")
	ip(t, "-n", l.ns("b"), "-6", "route", "add", "fd00:0:0:2::/64", "via", "fd00:0:0:1::fe")
	rep := l.run(t, Options{})
	// c's packets always reached b; now b can answer them too.
	want := slices.Concat(cells("b>c", all3...), cells("b>r", all3...), cells("c>b", all3...), []string{
		"stack b routes", "ebpf b>c", "ebpf b>r",
	})
	l.expectRed(t, rep, want...)
}

// r is declared as not forwarding; turning ip_forward on joins a and c.
func TestMutationForwarding(t *testing.T) {
	l := upLab(t, func(s *topology.Spec) { noForwarding(s, "r") })
	clean := l.run(t, Options{})
	if clean.Verdict() != 0 {
		logTable(t, clean)
		t.Fatalf("before the mutation: verdict %d", clean.Verdict())
	}
	out, err := exec.Command("ip", "netns", "exec", l.ns("r"), "sysctl", "-w", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1").CombinedOutput()
	if err != nil {
		t.Fatalf("sysctl: %v: %s", err, out)
	}
	rep := l.run(t, Options{})
	// The stack check names the sysctls too.
	want := slices.Concat(cells("a>c", all3...), cells("c>a", all3...), []string{
		"ebpf a>c", "ebpf c>a", "ebpf c>b", "stack r routes",
	})
	l.expectRed(t, rep, want...)
}

// A rule in b that sends only TCP to port 8080 through another table,
// with a route to c's subnet via r: a leak the main table does not show.
// The routes check names the rule and the table's route.
func TestMutationPolicyRouting(t *testing.T) {
	l := upLab(t, nil)
	ip(t, "-n", l.ns("b"), "route", "add", "198.18.2.0/24", "via", "198.18.1.254", "table", "200")
	ip(t, "-n", l.ns("b"), "rule", "add", "pref", "100", "ipproto", "tcp", "dport", "8080", "lookup", "200")
	rep := l.run(t, Options{})
	// TCP from b to c's subnet (c, and r's far address) now goes through
	// r; the answers come back as they always could (r is on b's bridge).
	want := []string{"b>c tcp/8080", "b>r tcp/8080", "stack b routes", "ebpf b>c", "ebpf b>r"}
	l.expectRed(t, rep, want...)
	var problems []string
	for _, c := range rep.Stack {
		if c.Netns == l.ns("b") && c.Kind == "routes" {
			problems = c.Problems
		}
	}
	for _, w := range []string{"policy routing rule 100: from all ipproto 6 dport 8080-8080 table 200", "unexpected route 198.18.2.0/24 via 198.18.1.254 dev eth0 in table 200"} {
		if !slices.ContainsFunc(problems, func(p string) bool { return strings.HasPrefix(p, w) }) {
			t.Errorf("routes check of b lacks %q: %q", w, problems)
		}
	}
}

// The route leak of TestMutationRouteLeak put in the local table, which
// the kernel looks up first, and a rule that claims to be the kernel's:
// the routes check names both.
func TestMutationLocalTableRoute(t *testing.T) {
	l := upLab(t, nil)
	ip(t, "-n", l.ns("b"), "route", "add", "198.18.2.0/24", "via", "198.18.1.254", "table", "local")
	ip(t, "-n", l.ns("b"), "-6", "route", "add", "fd00:0:0:2::/64", "via", "fd00:0:0:1::fe", "table", "local")
	ip(t, "-n", l.ns("b"), "rule", "add", "pref", "200", "ipproto", "tcp", "dport", "9", "lookup", "main", "protocol", "kernel")
	// A blackhole shaped like the default rule to main: only its action,
	// which the netlink package does not report, differs.
	ip(t, "-n", l.ns("b"), "rule", "add", "pref", "32766", "table", "main", "blackhole", "protocol", "kernel")
	rep := l.run(t, Options{})
	want := slices.Concat(cells("b>c", all3...), cells("b>r", all3...), cells("c>b", all3...), []string{
		"stack b routes", "ebpf b>c", "ebpf b>r",
	})
	l.expectRed(t, rep, want...)
	for _, c := range rep.Stack {
		if c.Netns == l.ns("b") && c.Kind == "routes" {
			for _, w := range []string{"unexpected route 198.18.2.0/24 via 198.18.1.254 dev eth0 in table 255", "policy routing rule 200:", "policy routing rule 32766:"} {
				if !slices.ContainsFunc(c.Problems, func(p string) bool { return strings.HasPrefix(p, w) }) {
					t.Errorf("routes check of b lacks %q: %q", w, c.Problems)
				}
			}
		}
	}
}

// c's address added in r: a's probes of c are answered by r, and c's
// traffic to a is answered to r instead of c. The evidence records the
// packets a sent to c's address that r took.
func TestMutationAddressInWrongNamespace(t *testing.T) {
	l := upLab(t, nil)
	ip(t, "-n", l.ns("r"), "addr", "add", "198.18.2.1/32", "dev", "eth0")
	rep := l.run(t, Options{})
	var answeredByR bool
	for _, p := range rep.Probes {
		if p.From == l.ns("a") && p.To == l.ns("c") && p.Addr.String() == "198.18.2.1" && p.Port == "tcp/8080" {
			answeredByR = p.By == l.ns("r") && strings.Contains(p.Reason(), "answered by "+l.ns("r"))
		}
	}
	if !answeredByR {
		logTable(t, rep)
		t.Errorf("a's TCP probe of c's address is not reported as answered by r")
	}
	want := slices.Concat(cells("a>c", "tcp/8080", "udp/8080"), cells("a>r", all3...), cells("c>r", all3...),
		cells("r>c", "tcp/8080", "udp/8080"), cells("c>a", all3...), []string{"stack r addresses", "ebpf a>r"})
	l.expectRed(t, rep, want...)
}

// b's namespace path leads to c's stack (a bind mount over it): two names,
// one port space, so b's client reaches c's listener.
func TestMutationSharedPortSpace(t *testing.T) {
	l := upLab(t, nil)
	if err := unix.Mount(l.path("c"), l.path("b"), "", unix.MS_BIND, ""); err != nil {
		t.Fatalf("bind mount: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(l.path("b"), unix.MNT_DETACH); err != nil {
			t.Errorf("unmount: %v", err)
		}
	})
	rep := l.run(t, Options{})
	var ports []string
	for _, c := range rep.PortSpace {
		if !c.Pass {
			ports = append(ports, strings.TrimPrefix(c.Netns, l.prefix)+" "+c.Kind)
			if !slices.ContainsFunc(c.Problems, func(p string) bool { return strings.Contains(p, "are one network namespace") }) {
				t.Errorf("port space %s: problems %q do not name the shared namespace", c.Netns, c.Problems)
			}
		}
	}
	if want := []string{"b tcp/8080", "b udp/8080", "c tcp/8080", "c udp/8080"}; !slices.Equal(ports, want) {
		logTable(t, rep)
		t.Errorf("port space red: %q, want %q", ports, want)
	}
	if rep.Verdict() != 1 {
		t.Errorf("verdict %d, want 1", rep.Verdict())
	}
}

// A responder for b started in c by mistake: c's port is taken, and what
// answers there says it is b's while its socket lives in c.
func TestMutationProcessInWrongNamespace(t *testing.T) {
	l := upLab(t, nil)
	cmd := exec.Command("ip", "netns", "exec", l.ns("c"), os.Args[0])
	cmd.Env = append(os.Environ(), helperEnv+"="+l.ns("b"))
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		cmd.Wait()
	})
	if line, _ := bufio.NewReader(stdout).ReadString('\n'); !strings.HasPrefix(line, "ready") {
		t.Fatalf("helper responder: %q", line)
	}
	rep := l.run(t, Options{})
	want := slices.Concat(cells("a>c", "tcp/8080", "udp/8080"), cells("r>c", "tcp/8080", "udp/8080"),
		[]string{"port c tcp/8080", "port c udp/8080"})
	l.expectRed(t, rep, want...)
}

// A firewall rule added in a shows in a's stack and in no other
// namespace's; an accepting rule changes no reachability.
func TestMutationFirewallRule(t *testing.T) {
	l := upLab(t, nil)
	out, err := exec.Command("ip", "netns", "exec", l.ns("a"), "nft",
		"add table inet nsfv; add chain inet nsfv in { type filter hook input priority 0; }; add rule inet nsfv in accept").CombinedOutput()
	if err != nil {
		t.Fatalf("nft: %v: %s", err, out)
	}
	rep := l.run(t, Options{})
	l.expectRed(t, rep, "stack a firewall")
}

// A tc filter in b that redirects what comes in for port 22 (a port the
// probes do not cover): an undeclared packet filter, which the firewall
// check names.
func TestMutationTCFilter(t *testing.T) {
	l := upLab(t, nil)
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", append([]string{"netns", "exec", l.ns("b"), "tc"}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("tc %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	ip("qdisc", "add", "dev", "eth0", "clsact")
	ip("filter", "add", "dev", "eth0", "ingress", "protocol", "ip", "u32", "match", "ip", "dport", "22", "0xffff", "action", "mirred", "egress", "redirect", "dev", "eth0")
	rep := l.run(t, Options{})
	l.expectRed(t, rep, "stack b firewall")
	for _, c := range rep.Stack {
		if c.Netns == l.ns("b") && c.Kind == "firewall" {
			if !slices.ContainsFunc(c.Problems, func(p string) bool { return strings.HasPrefix(p, "eth0: tc clsact filter u32") }) {
				t.Errorf("firewall check of b: %q, want the u32 filter", c.Problems)
			}
		}
	}
}

// A filter running nsflow's own program, without direct-action, with a
// mirror action: the name and the program say nsflow, what it does does
// not. And a tc filter on a host bridge port the file declares.
func TestMutationLookalikeAndHostFilters(t *testing.T) {
	testenv.RequireRoot(t)
	l, _ := upGreen(t, `
name: hf
namespaces: [{name: a}, {name: b}]
bridges: [{name: br, addresses: [198.18.3.254/24]}]
links:
  - endpoints: [{namespace: a, interface: eth0, addresses: [198.18.3.1/24]}, {bridge: br, interface: pa}]
  - endpoints: [{namespace: b, interface: eth0, addresses: [198.18.3.2/24]}, {bridge: br, interface: pb}]
`)
	obj, err := filepath.Abs("../bpf/nsflow_bpfel.o")
	if err != nil {
		t.Fatal(err)
	}
	tc := func(ns string, args ...string) {
		t.Helper()
		cmd := append([]string{"tc"}, args...)
		if ns != "" {
			cmd = append([]string{"ip", "netns", "exec", ns}, cmd...)
		}
		if out, err := exec.Command(cmd[0], cmd[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", strings.Join(cmd, " "), err, out)
		}
	}
	tc(l.ns("a"), "qdisc", "add", "dev", "eth0", "clsact")
	// Mirrored to loopback, where they do no harm: only the checks must
	// turn red, not the probes.
	tc(l.ns("a"), "filter", "add", "dev", "eth0", "ingress", "prio", "1", "bpf", "obj", obj, "sec", "tc", "action", "mirred", "egress", "mirror", "dev", "lo")
	port := l.prefix + "pb"
	t.Cleanup(func() { exec.Command("tc", "qdisc", "del", "dev", port, "clsact").Run() })
	tc("", "qdisc", "add", "dev", port, "clsact")
	tc("", "filter", "add", "dev", port, "ingress", "prio", "5", "protocol", "arp", "u32", "match", "u32", "0", "0", "action", "mirred", "egress", "mirror", "dev", "lo")
	rep := l.run(t, Options{})
	l.expectRed(t, rep, "stack a firewall", "stack b firewall")
	for _, c := range rep.Stack {
		if c.Kind != "firewall" || c.Pass {
			continue
		}
		want := "host:" + port + ": tc clsact filter u32"
		if c.Netns == l.ns("a") {
			want = "eth0: tc clsact filter bpf"
		}
		if !slices.ContainsFunc(c.Problems, func(p string) bool { return strings.HasPrefix(p, want) }) {
			t.Errorf("%s firewall: %q, want %q", c.Netns, c.Problems, want)
		}
	}
}

// A REJECT rule in b's own output sends b a TCP reset as if a had: the
// refusal proves nothing, so b's TCP probes of a could not be judged
// (not "reachable"), and the firewall check names the rule.
func TestMutationLocalReject(t *testing.T) {
	l := upLab(t, nil)
	out, err := exec.Command("ip", "netns", "exec", l.ns("b"), "nft",
		"add table inet nsfv; add chain inet nsfv out { type filter hook output priority 0; }; add rule inet nsfv out ip daddr 198.18.1.1 tcp dport 8080 reject with tcp reset").CombinedOutput()
	if err != nil {
		t.Fatalf("nft: %v: %s", err, out)
	}
	rep := l.run(t, Options{})
	l.expectRed(t, rep, "stack b firewall", "b>a tcp/8080")
	for _, p := range rep.Probes {
		if p.From == l.ns("b") && p.Addr.String() == "198.18.1.1" && p.Port == "tcp/8080" {
			if p.Outcome != Failed || !strings.Contains(p.Detail, "firewall rules") {
				t.Errorf("b -> a tcp/8080: %s (%s), want an error naming the firewall", p.Outcome, p.Detail)
			}
		}
	}
}

// Addresses that are not global scope count as much as global ones: c's
// address on b's loopback with scope link, and an undeclared one on a's
// eth0 with scope link. Both are probed like any address a namespace
// holds: b's copy of c's address answers b's own probes of c, every
// other namespace's probe of it goes to c, and a answers its extra one
// on the segment (and through r), which the neighbour tables and the
// evidence record.
func TestMutationAddressOfAnyScope(t *testing.T) {
	l := upLab(t, nil)
	ip(t, "-n", l.ns("b"), "addr", "add", "198.18.2.1/32", "dev", "lo", "scope", "link")
	ip(t, "-n", l.ns("a"), "addr", "add", "198.18.1.77/32", "dev", "eth0", "scope", "link")
	rep := l.run(t, Options{})
	problems := map[string][]string{}
	for _, c := range rep.Stack {
		if c.Kind == "addresses" {
			problems[strings.TrimPrefix(c.Netns, l.prefix)] = c.Problems
		}
	}
	for ns, want := range map[string]string{
		"a": "unexpected address 198.18.1.77/32 on eth0 (scope link)",
		"b": "unexpected address 198.18.2.1/32 on lo (scope link), declared by " + l.ns("c"),
	} {
		if !slices.Equal(problems[ns], []string{want}) {
			t.Errorf("addresses of %s: %q, want %q", ns, problems[ns], want)
		}
	}
	want := slices.Concat(cells("b>c", all3...), cells("a>b", all3...), cells("r>b", all3...), cells("c>b", all3...),
		cells("b>a", all3...), cells("r>a", all3...), cells("c>a", all3...), []string{
			"stack a addresses", "stack b addresses", "stack b neighbours", "stack r neighbours",
			"ebpf b>a", "ebpf r>a", "ebpf c>a",
		})
	l.expectRed(t, rep, want...)
}

// The veth between r and c replaced by two, each to the host and joined
// there by a bridge of nobody's: same names, same addresses, the same
// reachability, but the wire goes through the host, where anything can
// join it. The interfaces checks of r and c say so.
func TestMutationRewiredVeth(t *testing.T) {
	l := upLab(t, nil)
	br, x1, x2 := l.prefix+"rb", l.prefix+"x1", l.prefix+"x2"
	t.Cleanup(func() {
		for _, n := range []string{x1, x2, br} {
			exec.Command("ip", "link", "del", n).Run()
		}
	})
	ip(t, "-n", l.ns("r"), "link", "del", "eth1")
	ip(t, "link", "add", br, "type", "bridge")
	ip(t, "link", "set", br, "up")
	for _, end := range []struct{ ns, name, host, addr4, addr6 string }{
		{l.ns("r"), "eth1", x1, "198.18.2.254/24", "fd00:0:0:2::fe/64"},
		{l.ns("c"), "eth0", x2, "198.18.2.1/24", "fd00:0:0:2::1/64"},
	} {
		ip(t, "link", "add", end.host, "master", br, "type", "veth", "peer", "name", end.name, "netns", end.ns)
		ip(t, "link", "set", end.host, "up")
		ip(t, "-n", end.ns, "addr", "add", end.addr4, "dev", end.name)
		ip(t, "-n", end.ns, "addr", "add", end.addr6, "dev", end.name, "nodad")
		ip(t, "-n", end.ns, "link", "set", end.name, "up")
	}
	ip(t, "-n", l.ns("c"), "route", "add", "default", "via", "198.18.2.254")
	ip(t, "-n", l.ns("c"), "-6", "route", "add", "default", "via", "fd00:0:0:2::fe")
	rep := l.run(t, Options{})
	l.expectRed(t, rep, "stack r interfaces", "stack c interfaces")
	for _, c := range rep.Stack {
		if c.Kind == "interfaces" && (c.Netns == l.ns("r") || c.Netns == l.ns("c")) {
			if !slices.ContainsFunc(c.Problems, func(p string) bool { return strings.Contains(p, "is not the peer of") }) {
				t.Errorf("%s interfaces: %q, want a wrong peer", c.Netns, c.Problems)
			}
		}
	}
}

// A host veth end the file declares without a bridge, put on a bridge of
// nobody's: what else joins that bridge reaches the namespace behind it.
func TestMutationHostEndOnForeignBridge(t *testing.T) {
	testenv.RequireRoot(t)
	s, err := topology.Parse([]byte(`
name: he
namespaces: [{name: a}]
links:
  - endpoints: [{namespace: a, interface: eth0, addresses: [198.18.3.1/30]}, {namespace: host, interface: h0, addresses: [198.18.3.2/30]}]
`))
	if err != nil {
		t.Fatal(err)
	}
	l := upSpec(t, s)
	br := l.prefix + "fb"
	t.Cleanup(func() { exec.Command("ip", "link", "del", br).Run() })
	ip(t, "link", "add", br, "type", "bridge")
	ip(t, "link", "set", l.prefix+"h0", "master", br)
	rep := l.run(t, Options{})
	l.expectRed(t, rep, "stack a interfaces")
	for _, c := range rep.Stack {
		if c.Kind == "interfaces" && !c.Pass {
			want := "host:" + l.prefix + "h0 is a port of " + br + ", which the file does not make it"
			if !slices.Contains(c.Problems, want) {
				t.Errorf("%s interfaces: %q, want %q", c.Netns, c.Problems, want)
			}
		}
	}
}

// A namespace of nobody's joined to a host bridge the file declares: the
// namespaces on that bridge are told of the port.
func TestMutationHostBridgePort(t *testing.T) {
	l, _ := upGreen(t, `
name: hb
namespaces: [{name: a}, {name: b}]
bridges: [{name: br, addresses: [198.18.3.254/24]}]
links:
  - endpoints: [{namespace: a, interface: eth0, addresses: [198.18.3.1/24]}, {bridge: br, interface: pa}]
  - endpoints: [{namespace: b, interface: eth0, addresses: [198.18.3.2/24]}, {bridge: br, interface: pb}]
`)
	rogue, port := l.prefix+"rg", l.prefix+"rp"
	t.Cleanup(func() {
		exec.Command("ip", "link", "del", port).Run()
		exec.Command("ip", "netns", "del", rogue).Run()
	})
	ip(t, "netns", "add", rogue)
	ip(t, "link", "add", port, "master", l.prefix+"br", "type", "veth", "peer", "name", "eth0", "netns", rogue)
	ip(t, "link", "set", port, "up")
	rep := l.run(t, Options{})
	l.expectRed(t, rep, "stack a interfaces", "stack b interfaces")
	for _, c := range rep.Stack {
		if c.Kind == "interfaces" && !c.Pass {
			want := "bridge host:" + l.prefix + "br has a port the file does not declare: " + port
			if !slices.Contains(c.Problems, want) {
				t.Errorf("%s interfaces: %q, want %q", c.Netns, c.Problems, want)
			}
		}
	}
}

// Silent devices stacked on declared interfaces from namespaces of
// nobody's and from the host: macvlans on c's and b's veth ends and on
// sw's bridge (in a namespace only a descriptor holds) and a macvtap on
// a's, without addresses, so no probe meets them. They see
// their segments' traffic, and each segment's namespace is told.
func TestMutationStackedStranger(t *testing.T) {
	l := upLab(t, nil)
	rogue := l.prefix + "rg"
	t.Cleanup(func() { exec.Command("ip", "netns", "del", rogue).Run() })
	ip(t, "netns", "add", rogue)
	for _, d := range []struct{ ns, name, kind string }{{"c", "mv0", "macvlan"}, {"a", "tap0", "macvtap"}} {
		ip(t, "-n", l.ns(d.ns), "link", "add", d.name, "link", "eth0", "type", d.kind)
		ip(t, "-n", l.ns(d.ns), "link", "set", d.name, "netns", rogue)
		ip(t, "-n", rogue, "link", "set", d.name, "up")
	}
	// One in a namespace only an open descriptor holds (no name, no
	// process inside), stacked on sw's bridge.
	hidden := l.prefix + "hd"
	ip(t, "netns", "add", hidden)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", hidden).Run() }) // if the test fails before it does
	ip(t, "-n", l.ns("sw"), "link", "add", "mv1", "link", l.prefix+"br1", "type", "macvlan")
	ip(t, "-n", l.ns("sw"), "link", "set", "mv1", "netns", hidden)
	holder := exec.Command("sleep", "600")
	f, err := os.Open("/run/netns/" + hidden)
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	hiddenLabel := "netns-" + strconv.FormatUint(st.Ino, 10)
	holder.ExtraFiles = []*os.File{f}
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	t.Cleanup(func() { holder.Process.Kill(); holder.Wait() })
	ip(t, "netns", "del", hidden)
	// One in the host, which a host snapshot lists like the host's own.
	hostDev := l.prefix + "mv"
	t.Cleanup(func() { exec.Command("ip", "link", "del", hostDev).Run() })
	ip(t, "-n", l.ns("b"), "link", "add", hostDev, "link", "eth0", "type", "macvlan")
	ip(t, "-n", l.ns("b"), "link", "set", hostDev, "netns", strconv.Itoa(os.Getpid()))
	rep := l.run(t, Options{})
	l.expectRed(t, rep, "stack a interfaces", "stack b interfaces", "stack c interfaces", "stack sw interfaces")
	want := map[string]string{
		l.ns("sw"): "macvlan mv1 in namespace " + hiddenLabel + " is stacked on " + l.ns("sw") + ":" + l.prefix + "br1 and sees its segment",
		l.ns("b"):  "macvlan " + hostDev + " in namespace host is stacked on " + l.ns("b") + ":eth0 and sees its segment",
		l.ns("a"):  "macvtap tap0 in namespace " + rogue + " is stacked on " + l.ns("a") + ":eth0 and sees its segment",
		l.ns("c"):  "macvlan mv0 in namespace " + rogue + " is stacked on " + l.ns("c") + ":eth0 and sees its segment",
	}
	for _, c := range rep.Stack {
		if c.Kind == "interfaces" && !c.Pass && !slices.Equal(c.Problems, []string{want[c.Netns]}) {
			t.Errorf("%s interfaces: %q, want %q", c.Netns, c.Problems, want[c.Netns])
		}
	}
}

// b has no IPv6 on its bridge port. IPv6 turned back on by hand gives it
// a link-local address the others reach: the addresses check tells.
func TestMutationLinkLocalWhereIPv6IsOff(t *testing.T) {
	l := upLab(t, func(s *topology.Spec) {
		moveToSubnet(s, "b", "198.18.1.2/24")
		setSysctl(s, "b", "net.ipv6.conf.eth0.disable_ipv6", "1")
	})
	if rep := l.run(t, Options{}); rep.Verdict() != 0 {
		logTable(t, rep)
		t.Fatalf("before the mutation: verdict %d", rep.Verdict())
	}
	if out, err := exec.Command("ip", "netns", "exec", l.ns("b"), "sysctl", "-w", "net.ipv6.conf.eth0.disable_ipv6=0").CombinedOutput(); err != nil {
		t.Fatalf("sysctl: %v: %s", err, out)
	}
	// The link-local address appears once duplicate address detection
	// is done.
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(ipOutput(t, "-n", l.ns("b"), "-6", "addr", "show", "dev", "eth0", "scope", "link"), "fe80") || strings.Contains(ipOutput(t, "-n", l.ns("b"), "-6", "addr", "show", "dev", "eth0"), "tentative") {
		if time.Now().After(deadline) {
			t.Fatal("no link-local address on b's eth0 after 5s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	rep := l.run(t, Options{})
	l.expectRed(t, rep, "stack b addresses")
}

func ipOutput(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// readForwarding reads an interface whose name has a dot (a VLAN's, say)
// from its own /proc/sys directory, under the key the file would use.
func TestReadForwardingDottedName(t *testing.T) {
	testenv.RequireRoot(t)
	ns := testenv.Name("vd")
	ip(t, "netns", "add", ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	ip(t, "-n", ns, "link", "add", "e.1", "type", "veth", "peer", "name", "e2")
	if out, err := exec.Command("ip", "netns", "exec", ns, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/conf/e.1/forwarding").CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	var got map[string]string
	err := nsenter.Do("/run/netns/"+ns, func() error {
		links, err := netlink.LinkList()
		if err != nil {
			return err
		}
		got, err = readForwarding(links)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if got["ipv4.conf.e/1.forwarding"] != "1" {
		t.Errorf("forwarding of e.1: %q (all: %v)", got["ipv4.conf.e/1.forwarding"], got)
	}
}

// Routes that keep a declared route's destination and gateway: in c, the
// connected route replaced by a local one (c then takes its whole subnet's
// traffic, r's address included); in a, the declared route to c's subnet
// twice (another metric). The routes check names both.
func TestMutationRouteTypeAndDuplicate(t *testing.T) {
	l := upLab(t, nil)
	ip(t, "-n", l.ns("c"), "route", "replace", "local", "198.18.2.0/24", "dev", "eth0", "table", "main")
	ip(t, "-n", l.ns("a"), "route", "add", "198.18.2.0/24", "via", "198.18.1.254", "metric", "50")
	rep := l.run(t, Options{})
	if rep.Verdict() == 0 {
		t.Error("verdict 0 with c taking its whole subnet")
	}
	for ns, w := range map[string]string{
		"c": "route 198.18.2.0/24 dev eth0 of type local",
		"a": "duplicate route 198.18.2.0/24 via 198.18.1.254 dev eth0",
	} {
		var problems []string
		for _, c := range rep.Stack {
			if c.Netns == l.ns(ns) && c.Kind == "routes" {
				problems = c.Problems
			}
		}
		if !slices.ContainsFunc(problems, func(p string) bool { return strings.HasPrefix(p, w) }) {
			t.Errorf("routes check of %s lacks %q: %q", ns, w, problems)
		}
	}
}

package topology

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nsflow/nsflow/internal/nsenter"
	"github.com/nsflow/nsflow/internal/testenv"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The topology before and after an edit: namespace c, its link to a and
// the host bridge with its port are dropped from the file.
const (
	orphanBefore = `
name: orph
namespaces: [{name: a}, {name: b}, {name: c}]
bridges:
  - {name: br, addresses: [198.18.79.1/24]}
links:
  - endpoints:
      - {namespace: a, interface: e1, addresses: [198.18.77.1/30]}
      - {namespace: b, interface: e1, addresses: [198.18.77.2/30]}
  - endpoints:
      - {namespace: a, interface: e2, addresses: [198.18.77.5/30]}
      - {namespace: c, interface: e1, addresses: [198.18.77.6/30]}
  - endpoints:
      - {namespace: c, interface: e2, addresses: [198.18.79.2/24]}
      - {bridge: br, interface: v}
`
	orphanAfter = `
name: orph
namespaces: [{name: a}, {name: b}]
links:
  - endpoints:
      - {namespace: a, interface: e1, addresses: [198.18.77.1/30]}
      - {namespace: b, interface: e1, addresses: [198.18.77.2/30]}
`
)

// prefixedCopy parses text (an edited version of a file under test) as a
// copy with the given prefix, that of the spec it edits.
func prefixedCopy(t *testing.T, text, prefix string) *Spec {
	t.Helper()
	s, err := Parse([]byte(text))
	if err == nil {
		s, err = s.WithPrefix(prefix)
	}
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// editedSpecs returns the two files as copies with one unique prefix,
// and downs the larger one when the test ends.
func editedSpecs(t *testing.T) (before, after *Spec) {
	t.Helper()
	before = prefixedSpec(t, orphanBefore)
	return before, prefixedCopy(t, orphanAfter, prefixOf(before))
}

func TestUpPrune(t *testing.T) {
	ctx := context.Background()
	before, after := editedSpecs(t)
	p := prefixOf(before)
	if _, err := Up(ctx, before, Options{}); err != nil {
		t.Fatal(err)
	}
	wantOrphans := []string{"namespace " + p + "c", "host interface " + p + "br", "host interface " + p + "v"}

	// Without --prune: listed, shown as drift, left in place.
	res, err := Up(ctx, after, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Unchanged() || !slices.Equal(res.Orphans, wantOrphans) || len(res.Pruned) != 0 {
		t.Errorf("up of the edited file: %+v, want nothing changed and orphans %q", res, wantOrphans)
	}
	if !strings.Contains(res.String(), "up --prune") {
		t.Errorf("summary does not say how to remove the orphans:\n%s", res)
	}
	st, err := Show(ctx, after, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range wantOrphans {
		want := o + ": owned by topology " + after.Name + " but no longer declared"
		if !slices.Contains(st.Drift, want) {
			t.Errorf("show: drift %q missing; got %q", want, st.Drift)
		}
	}
	if got := hostObjects(t, p); !slices.Contains(got, "netns "+p+"c") || !slices.Contains(got, "link "+p+"br") {
		t.Fatalf("up without --prune removed orphans: %q", got)
	}

	// With --prune: deleted, the veth end in a with them, and the record
	// forgets them.
	res, err = Up(ctx, after, Options{Prune: true})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(res.Pruned, wantOrphans) || len(res.Orphans) != 0 || res.Unchanged() {
		t.Errorf("up --prune: %+v, want pruned %q", res, wantOrphans)
	}
	want := []string{"netns " + p + "a", "netns " + p + "b"}
	if got := hostObjects(t, p); !slices.Equal(got, want) {
		t.Errorf("after up --prune: %q, want %q", got, want)
	}
	c, err := openNetns(p+"a", after.NetnsPath(p+"a"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.h.LinkByName("e2")
	c.close()
	if !isNotFound(err) {
		t.Errorf("a/e2, whose peer was in the pruned namespace, is still there right after up --prune (err %v)", err)
	}
	rec, err := readState(after.Name)
	if err != nil || rec == nil {
		t.Fatalf("state record: %v, %v", rec, err)
	}
	if !slices.Equal(rec.Namespaces, []string{p + "a", p + "b"}) || len(rec.HostInterfaces) != 0 {
		t.Errorf("state record after prune: %+v", rec)
	}
	if st, err = Show(ctx, after, Options{}); err != nil || len(st.Drift) != 0 {
		t.Errorf("drift after prune: %q, %v", st.Drift, err)
	}
	if res, err = Up(ctx, after, Options{Prune: true}); err != nil || !res.Unchanged() {
		t.Errorf("second up --prune: %+v, %v; want nothing changed", res, err)
	}
}

// TestPruneSparesForeign: prune deletes only what carries the topology's
// marker, and nothing at all when the run is refused.
func TestPruneSparesForeign(t *testing.T) {
	ctx := context.Background()
	t.Run("recorded names now someone else's", func(t *testing.T) {
		before, after := editedSpecs(t)
		p := prefixOf(before)
		if _, err := Up(ctx, before, Options{}); err != nil {
			t.Fatal(err)
		}
		// Namespace c and bridge br go behind the topology's back, and
		// others take their names.
		if err := unmountNetns(before.NetnsPath(p + "c")); err != nil {
			t.Fatal(err)
		}
		fc, err := createNetns(p+"c", before.NetnsPath(p+"c"), "someone-else", nil)
		if err != nil {
			t.Fatal(err)
		}
		fc.close()
		t.Cleanup(func() { unmountNetns(before.NetnsPath(p + "c")) })
		if l, err := netlink.LinkByName(p + "br"); err != nil || netlink.LinkDel(l) != nil {
			t.Fatalf("delete bridge: %v", err)
		}
		la := netlink.NewLinkAttrs()
		la.Name = p + "br"
		foreign := &netlink.Bridge{LinkAttrs: la}
		if err := netlink.LinkAdd(foreign); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { netlink.LinkDel(foreign) })

		res, err := Up(ctx, after, Options{Prune: true})
		if err != nil {
			t.Fatal(err)
		}
		// Only v (the host end of c's old link) may still be ours: it
		// went with c's namespace, or is pruned if the kernel had not
		// destroyed it yet.
		for _, pr := range res.Pruned {
			if pr != "host interface "+p+"v" {
				t.Errorf("up --prune removed %s, which the topology does not own", pr)
			}
		}
		got := hostObjects(t, p)
		for _, w := range []string{"netns " + p + "c", "link " + p + "br"} {
			if !slices.Contains(got, w) {
				t.Errorf("foreign %s was removed: %q", w, got)
			}
		}
	})
	t.Run("refused run", func(t *testing.T) {
		before, after := editedSpecs(t)
		p := prefixOf(before)
		if _, err := Up(ctx, before, Options{}); err != nil {
			t.Fatal(err)
		}
		// The edited file also declares a namespace someone else has.
		d := p + "d"
		fc, err := createNetns(d, after.NetnsPath(d), "someone-else", nil)
		if err != nil {
			t.Fatal(err)
		}
		fc.close()
		t.Cleanup(func() { unmountNetns(after.NetnsPath(d)) })
		after.Namespaces = append(after.Namespaces, Namespace{Name: d})
		_, err = Up(ctx, after, Options{Prune: true})
		if err == nil || !strings.Contains(err.Error(), "not owned") {
			t.Fatalf("up --prune with a foreign declared namespace: %v, want refused", err)
		}
		if _, err := os.Stat(before.NetnsPath(p + "c")); err != nil {
			t.Errorf("a refused up --prune removed namespace c: %v", err)
		}
		if _, err := netlink.LinkByName(p + "br"); err != nil {
			t.Errorf("a refused up --prune removed bridge br: %v", err)
		}
	})
}

// The file before and after an edit that moves b's address within its
// subnet and drops a's route; by hand, a gains a route and b an address
// on its loopback.
const (
	strayBefore = `
name: stray
namespaces:
  - name: a
    routes: [{to: 198.18.90.0/24, via: 198.18.80.2}]
  - name: b
links:
  - endpoints:
      - {namespace: a, interface: e1, addresses: [198.18.80.1/24]}
      - {namespace: b, interface: e1, addresses: [198.18.80.2/24]}
`
	strayAfter = `
name: stray
namespaces: [{name: a}, {name: b}]
links:
  - endpoints:
      - {namespace: a, interface: e1, addresses: [198.18.80.1/24]}
      - {namespace: b, interface: e1, addresses: [198.18.80.4/24]}
`
)

// TestUpPruneStrays: routes and addresses in the topology's namespaces
// that the file does not declare are drift, listed by up and deleted by
// up --prune, which keeps the new address although it was a secondary of
// the deleted one (the kernel deletes those with their primary).
func TestUpPruneStrays(t *testing.T) {
	ctx := context.Background()
	before := prefixedSpec(t, strayBefore)
	p := prefixOf(before)
	after := prefixedCopy(t, strayAfter, p)
	if _, err := Up(ctx, before, Options{}); err != nil {
		t.Fatal(err)
	}
	a, b := p+"a", p+"b"
	ip(t, "-n", a, "route", "add", "198.18.81.0/24", "via", "198.18.80.2")
	// The declared route to 198.18.90.0/24 again, with another metric: not
	// the declared one (whose metric is the default).
	ip(t, "-n", a, "route", "add", "198.18.90.0/24", "via", "198.18.80.2", "metric", "10")
	ip(t, "-n", b, "addr", "add", "198.18.82.9/32", "dev", "lo")
	// Not strays: a routing daemon's route and an address with a lifetime
	// (SLAAC, DHCP) are theirs.
	ip(t, "-n", a, "route", "add", "198.18.86.0/24", "via", "198.18.80.2", "proto", "zebra")
	ip(t, "-n", b, "addr", "add", "198.18.87.9/32", "dev", "lo", "valid_lft", "600", "preferred_lft", "600")
	// Nor a route through an interface the file does not declare (which
	// nothing proves is ours, so it stays, with its routes).
	ip(t, "-n", a, "link", "add", "zz1", "type", "veth", "peer", "name", "zz2")
	ip(t, "-n", a, "addr", "add", "198.18.88.1/24", "dev", "zz1")
	ip(t, "-n", a, "link", "set", "zz1", "up")
	ip(t, "-n", a, "route", "add", "198.18.89.0/24", "via", "198.18.88.2", "dev", "zz1", "onlink")
	want := []string{
		"address 198.18.80.2/24 on " + b + "/e1",
		"address 198.18.82.9/32 on " + b + "/lo",
		"route to 198.18.81.0/24 via 198.18.80.2 dev e1 in namespace " + a,
		"route to 198.18.90.0/24 via 198.18.80.2 dev e1 in namespace " + a,
		"route to 198.18.90.0/24 via 198.18.80.2 dev e1 metric 10 in namespace " + a,
	}
	res, err := Up(ctx, after, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(res.Orphans, want) || len(res.Pruned) != 0 {
		t.Errorf("up of the edited file: orphans %q, pruned %q; want orphans %q", res.Orphans, res.Pruned, want)
	}
	st, err := Show(ctx, after, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{
		b + "/e1: address 198.18.80.2/24 not declared",
		b + "/lo: address 198.18.82.9/32 not declared",
		a + ": route to 198.18.81.0/24 via 198.18.80.2 dev e1 not declared",
		a + ": route to 198.18.90.0/24 via 198.18.80.2 dev e1 not declared",
	} {
		if !slices.Contains(st.Drift, d) {
			t.Errorf("show: drift %q missing; got %q", d, st.Drift)
		}
	}

	res, err = Up(ctx, after, Options{Prune: true})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(res.Pruned, want) || len(res.Orphans) != 0 {
		t.Errorf("up --prune: pruned %q, orphans %q; want pruned %q", res.Pruned, res.Orphans, want)
	}
	// ip(8) as the witness: b keeps only its new address, and no
	// namespace has a route that is not the kernel's.
	if out := ipOut(t, "-n", b, "-4", "-o", "addr", "show", "dev", "e1"); strings.Count(out, "inet ") != 1 || !strings.Contains(out, "198.18.80.4/24") {
		t.Errorf("b/e1 after prune:\n%s", out)
	}
	for _, ns := range []string{a, b} {
		for _, r := range strings.Split(strings.TrimSpace(ipOut(t, "-n", ns, "route", "show", "proto", "boot")), "\n") {
			if r != "" && !strings.Contains(r, "dev zz1") {
				t.Errorf("%s keeps a route after prune: %q", ns, r)
			}
		}
	}
	if out := ipOut(t, "-n", a, "route", "show", "proto", "zebra"); !strings.Contains(out, "198.18.86.0/24") {
		t.Errorf("prune deleted the routing daemon's route:\n%s", out)
	}
	if out := ipOut(t, "-n", b, "addr", "show", "dev", "lo"); !strings.Contains(out, "198.18.87.9/32") {
		t.Errorf("prune deleted the address with a lifetime:\n%s", out)
	}
	if out := ipOut(t, "-n", a, "route", "show", "dev", "zz1"); !strings.Contains(out, "198.18.89.0/24") {
		t.Errorf("prune deleted a route through an undeclared interface:\n%s", out)
	}
	ip(t, "-n", a, "link", "del", "zz1")
	if st, err = Show(ctx, after, Options{}); err != nil || len(st.Drift) != 0 {
		t.Errorf("drift after prune: %q, %v", st.Drift, err)
	}
	if res, err = Up(ctx, after, Options{Prune: true}); err != nil || !res.Unchanged() || len(res.Orphans) != 0 {
		t.Errorf("second up --prune: %+v, %v; want nothing changed", res, err)
	}
}

// ip runs ip(8), a witness independent of nsflow, and fails the test if it
// fails; ipOut returns its output.
func ip(t *testing.T, args ...string) { t.Helper(); ipOut(t, args...) }

func ipOut(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestUpRollsBackSysctls: a failed up that changed sysctls in namespaces
// that existed before it puts the old values back, and a key the kernel
// lacks fails before any value is written. A write-only key (route.flush)
// is written without being read.
func TestUpRollsBackSysctls(t *testing.T) {
	ctx := context.Background()
	s := prefixedSpec(t, "name: sysrb\nnamespaces: [{name: a}, {name: b}]\n")
	if _, err := Up(ctx, s, Options{}); err != nil {
		t.Fatal(err)
	}
	forwarding := func(ns string) string {
		return strings.TrimSpace(ipOut(t, "netns", "exec", ns, "cat", "/proc/sys/net/ipv4/ip_forward"))
	}
	before := map[string]string{}
	for _, n := range s.Namespaces {
		before[n.Name] = forwarding(n.Name)
	}
	flip := map[string]string{"0": "1", "1": "0"}[before[s.Namespaces[0].Name]]
	s.Namespaces[0].Sysctls = map[string]string{"net.ipv4.ip_forward": flip}
	s.Namespaces[1].Sysctls = map[string]string{"net.ipv4.ip_forward": flip, "net.ipv4.conf.all.nsflow_no_such_key": "1"}
	_, err := Up(ctx, s, Options{})
	if err == nil || !strings.Contains(err.Error(), "nsflow_no_such_key: no such key") || !strings.Contains(err.Error(), "rolled back") {
		t.Fatalf("up with a key the kernel lacks: %v", err)
	}
	for _, n := range s.Namespaces {
		if got := forwarding(n.Name); got != before[n.Name] {
			t.Errorf("%s: ip_forward %q after the rolled back up, want %q as before", n.Name, got, before[n.Name])
		}
	}

	s.Namespaces[1].Sysctls = map[string]string{"net.ipv4.route.flush": "1"}
	for i := range 2 {
		if _, err := Up(ctx, s, Options{}); err != nil {
			t.Fatalf("up %d with a write-only key: %v", i+1, err)
		}
	}
	if got := forwarding(s.Namespaces[0].Name); got != flip {
		t.Errorf("ip_forward %q after up, want %q", got, flip)
	}
	if st, err := Show(ctx, s, Options{}); err != nil || len(st.Drift) != 0 {
		t.Errorf("show with a write-only key: drift %q, %v", st.Drift, err)
	}
}

// TestHostAddressOverlap: two copies of one file (--prefix) give their
// host bridges the same subnet, and the host can route it through one
// only. up warns and show reports it, naming the other interface.
func TestHostAddressOverlap(t *testing.T) {
	ctx := context.Background()
	const spec = `
name: ovl
namespaces: [{name: a}]
bridges: [{name: br, addresses: [198.18.83.1/24]}]
links:
  - endpoints: [{namespace: a, interface: eth0, addresses: [198.18.83.10/24]}, {bridge: br, interface: pa}]
`
	first, second := prefixedSpec(t, spec), prefixedSpec(t, spec)
	// Wider and narrower subnets on other host interfaces are routed by
	// the longest match: no overlap. (A veth pair left down, so that its
	// addresses route nothing.)
	la := netlink.NewLinkAttrs()
	la.Name = prefixOf(first) + "w"
	pair := &netlink.Veth{LinkAttrs: la, PeerName: prefixOf(first) + "n"}
	if err := netlink.LinkAdd(pair); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { netlink.LinkDel(pair) })
	for _, d := range []struct{ name, addr string }{{prefixOf(first) + "w", "198.18.0.1/16"}, {prefixOf(first) + "n", "198.18.83.77/32"}} {
		l, err := netlink.LinkByName(d.name)
		if err == nil {
			err = netlink.AddrAdd(l, nlAddr(netip.MustParsePrefix(d.addr)))
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	res, err := Up(ctx, first, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Warnings) != 0 {
		t.Fatalf("first copy: warnings %q", res.Warnings)
	}
	if res, err = Up(ctx, second, Options{}); err != nil {
		t.Fatal(err)
	}
	want := "host interface " + prefixOf(second) + "br: 198.18.83.1/24 overlaps 198.18.83.1/24 on host interface " + prefixOf(first) + "br"
	if len(res.Warnings) != 1 || !strings.HasPrefix(res.Warnings[0], want) || !strings.Contains(res.String(), "warning: "+want) {
		t.Errorf("second copy: warnings %q, want one starting %q", res.Warnings, want)
	}
	st, err := Show(ctx, first, Options{})
	if err != nil {
		t.Fatal(err)
	}
	// A problem of the host, not a difference from the file: show --exit-code
	// stays 0 for it.
	if len(st.Drift) != 0 || len(st.Warnings) != 1 || !strings.Contains(st.Warnings[0], "on host interface "+prefixOf(second)+"br") {
		t.Errorf("show of the first copy: drift %q, warnings %q; want no drift and the overlap with the second as a warning", st.Drift, st.Warnings)
	}
	if _, err := Down(ctx, second, Options{}); err != nil {
		t.Fatal(err)
	}
	if st, err = Show(ctx, first, Options{}); err != nil || len(st.Drift) != 0 || len(st.Warnings) != 0 {
		t.Errorf("show after the second copy is down: drift %q, warnings %q, %v", st.Drift, st.Warnings, err)
	}
}

// TestPruneFlushesNeighbours: after a prune, the namespaces that stay do
// not keep neighbour entries for the addresses of what went.
func TestPruneFlushesNeighbours(t *testing.T) {
	ctx := context.Background()
	const before = `
name: neigh
namespaces: [{name: sw}, {name: x}, {name: z}]
bridges: [{name: br, namespace: sw}]
links:
  - endpoints: [{namespace: x, interface: eth0, addresses: [198.18.84.1/24]}, {bridge: br, interface: px}]
  - endpoints: [{namespace: z, interface: eth0, addresses: [198.18.84.3/24]}, {bridge: br, interface: pz}]
`
	const after = `
name: neigh
namespaces: [{name: sw}, {name: x}]
bridges: [{name: br, namespace: sw}]
links:
  - endpoints: [{namespace: x, interface: eth0, addresses: [198.18.84.1/24]}, {bridge: br, interface: px}]
`
	b := prefixedSpec(t, before)
	a := prefixedCopy(t, after, prefixOf(b))
	if _, err := Up(ctx, b, Options{}); err != nil {
		t.Fatal(err)
	}
	x := prefixOf(b) + "x"
	if err := ping(b, x, netip.MustParseAddr("198.18.84.3")); err != nil {
		t.Fatal(err)
	}
	if out := ipOut(t, "-n", x, "neigh", "show", "198.18.84.3"); !strings.Contains(out, "lladdr") {
		t.Fatalf("no neighbour entry for z after the ping: %q", out)
	}
	if _, err := Up(ctx, a, Options{Prune: true}); err != nil {
		t.Fatal(err)
	}
	if out := ipOut(t, "-n", x, "neigh", "show", "198.18.84.3"); strings.TrimSpace(out) != "" {
		t.Errorf("x keeps a neighbour entry for pruned z: %q", out)
	}
}

// TestConcurrentRunsRefused: while one up or down of a topology runs
// (holds its lock), another fails at once and changes nothing; the lock
// file goes when the topology is down.
func TestConcurrentRunsRefused(t *testing.T) {
	ctx := context.Background()
	s := prefixedSpec(t, "name: lock\nnamespaces: [{name: a}]\n")
	unlock, err := lockTopology(s.Name)
	if err != nil {
		t.Fatal(err)
	}
	for name, run := range map[string]func() error{
		"up":   func() error { _, err := Up(ctx, s, Options{}); return err },
		"down": func() error { _, err := Down(ctx, s, Options{}); return err },
	} {
		if err := run(); err == nil || !strings.Contains(err.Error(), "another nsflow up or down of topology "+s.Name+" is running") {
			t.Errorf("%s while another run holds the lock: %v", name, err)
		}
	}
	if got := hostObjects(t, prefixOf(s)); len(got) != 0 {
		t.Errorf("a refused run changed the host: %q", got)
	}
	if _, err := Show(ctx, s, Options{}); err == nil || !strings.Contains(err.Error(), "is running: its state is changing") {
		t.Errorf("show while a run holds the lock: %v", err)
	}
	unlock()
	// A show's probe of the lock (shared, for moments) makes an up wait,
	// not fail.
	probe, err := os.OpenFile(lockPath(s.Name), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Flock(int(probe.Fd()), unix.LOCK_SH); err != nil {
		t.Fatal(err)
	}
	time.AfterFunc(50*time.Millisecond, func() { probe.Close() })
	if _, err := Up(ctx, s, Options{}); err != nil {
		t.Fatalf("up during a show's probe of the lock: %v", err)
	}
	if _, err := os.Stat(lockPath(s.Name)); err != nil {
		t.Errorf("lock file of a topology that is up: %v", err)
	}
	if _, err := Down(ctx, s, Options{}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(lockPath(s.Name)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("lock file left after down: %v", err)
	}
}

// TestRenamedNamespaceSaysPrune renames a namespace in the file: a plain
// up cannot rewire the veth whose far end is in the old namespace, and
// says that up --prune (not down) is the way; up --prune then converges.
func TestRenamedNamespaceSaysPrune(t *testing.T) {
	ctx := context.Background()
	const before = `
name: ren
namespaces: [{name: a}, {name: b}]
links:
  - endpoints: [{namespace: a, interface: e1, addresses: [198.18.92.1/30]}, {namespace: b, interface: e1, addresses: [198.18.92.2/30]}]
`
	s := prefixedSpec(t, before)
	after := prefixedCopy(t, strings.NewReplacer("name: b", "name: d", "namespace: b", "namespace: d").Replace(before), prefixOf(s))
	if _, err := Up(ctx, s, Options{}); err != nil {
		t.Fatal(err)
	}
	_, err := Up(ctx, after, Options{})
	want := "in namespace " + prefixOf(s) + "b, which the topology owns but no longer declares: run up --prune"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("up after the rename: %v; want it to say %q", err, want)
	}
	if _, err := Up(ctx, after, Options{Prune: true}); err != nil {
		t.Fatalf("up --prune after the rename: %v", err)
	}
	if st, err := Show(ctx, after, Options{}); err != nil || len(st.Drift) != 0 {
		t.Errorf("drift after up --prune: %q, %v", st.Drift, err)
	}
}

// TestUpRollsBackAddresses: a failed up removes the addresses it added
// to interfaces that existed before it, not only what it created.
func TestUpRollsBackAddresses(t *testing.T) {
	ctx := context.Background()
	const before = `
name: rba
namespaces: [{name: a}, {name: b}]
links:
  - endpoints: [{namespace: a, interface: e1, addresses: [198.18.93.1/30]}, {namespace: b, interface: e1, addresses: [198.18.93.2/30]}]
`
	s := prefixedSpec(t, before)
	if _, err := Up(ctx, s, Options{}); err != nil {
		t.Fatal(err)
	}
	// The edit adds an address to a's existing e1 (link 0), then a link
	// between two new namespaces (link 1), after which the injected
	// failure hits; one worker keeps that order.
	after := prefixedCopy(t, `
name: rba
namespaces: [{name: a}, {name: b}, {name: c}, {name: d}]
links:
  - endpoints: [{namespace: a, interface: e1, addresses: [198.18.93.1/30, 198.18.94.1/24]}, {namespace: b, interface: e1, addresses: [198.18.93.2/30]}]
  - endpoints: [{namespace: c, interface: e1}, {namespace: d, interface: e1}]
`, prefixOf(s))
	_, err := Up(ctx, after, Options{Workers: 1, failAfter: 4})
	if err == nil || !strings.Contains(err.Error(), "rolled back") {
		t.Fatalf("up with an injected failure: %v", err)
	}
	if out := ipOut(t, "-n", prefixOf(s)+"a", "-4", "-o", "addr", "show", "dev", "e1"); strings.Contains(out, "198.18.94.1") {
		t.Errorf("the address added to an existing interface survived the rollback:\n%s", out)
	}
	if st, err := Show(ctx, s, Options{}); err != nil || len(st.Drift) != 0 {
		t.Errorf("drift of the old file after the rollback: %q, %v", st.Drift, err)
	}
}

// TestFailedRollbackKeepsRecord: a rollback that cannot remove everything
// the run created leaves the run's state record, which names it, so that
// down with the file as it was before the run still finds it.
func TestFailedRollbackKeepsRecord(t *testing.T) {
	ctx := context.Background()
	s := prefixedSpec(t, `
name: rbk
namespaces: [{name: a}, {name: b}]
links:
  - endpoints: [{namespace: a, interface: e1, addresses: [198.18.95.1/30]}, {namespace: b, interface: e1, addresses: [198.18.95.2/30]}]
`)
	if _, err := Up(ctx, s, Options{}); err != nil {
		t.Fatal(err)
	}
	p := prefixOf(s)
	after := prefixedCopy(t, `
name: rbk
namespaces: [{name: a}, {name: b}, {name: c}, {name: d}]
links:
  - endpoints: [{namespace: a, interface: e1, addresses: [198.18.95.1/30]}, {namespace: b, interface: e1, addresses: [198.18.95.2/30]}]
  - endpoints: [{namespace: c, interface: e1}, {namespace: d, interface: e1}]
`, p)
	t.Cleanup(func() { _, _ = Down(context.Background(), after, Options{}) })
	_, err := Up(ctx, after, Options{Workers: 1, failAfter: 2, keepCreatedNS: true})
	if err == nil || !strings.Contains(err.Error(), "rolling back failed") {
		t.Fatalf("up with a failing rollback: %v", err)
	}
	for _, ns := range []string{"c", "d"} {
		if _, err := os.Stat(filepath.Join(NetnsDir, p+ns)); err != nil {
			t.Fatalf("namespace %s: %v; the failed rollback was to leave it", p+ns, err)
		}
	}
	if _, err := Down(ctx, s, Options{}); err != nil {
		t.Fatal(err)
	}
	if got := hostObjects(t, p); len(got) != 0 {
		t.Errorf("left after down with the file from before the run: %q", got)
	}
	if _, err := os.Stat(statePath(s.Name)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state record after down: %v, want none", err)
	}
}

// TestUpRollsBackIPv6Route: a failed up removes the IPv6 route it added
// to an existing namespace by its exact metric, and keeps a route to the
// same destination that was there before with another metric.
func TestUpRollsBackIPv6Route(t *testing.T) {
	ctx := context.Background()
	const spec = `
name: rb6
namespaces: [{name: a}, {name: b}]
links:
  - endpoints: [{namespace: a, interface: e1, addresses: ["fd00:97::1/64"]}, {namespace: b, interface: e1, addresses: ["fd00:97::2/64"]}]
`
	s := prefixedSpec(t, spec)
	if _, err := Up(ctx, s, Options{}); err != nil {
		t.Fatal(err)
	}
	a := prefixOf(s) + "a"
	ip(t, "-n", a, "-6", "route", "add", "fd00:96::/64", "via", "fd00:97::2", "metric", "10")
	s.Namespaces[0].Routes = []Route{{To: "fd00:96::/64", Via: "fd00:97::2"}}
	if _, err := Up(ctx, s, Options{Workers: 1, failRoutes: true}); err == nil || !strings.Contains(err.Error(), "rolled back") {
		t.Fatalf("up with a failure after the routes: %v", err)
	}
	out := ipOut(t, "-n", a, "-6", "route", "show", "fd00:96::/64")
	if !strings.Contains(out, "metric 10") || strings.Contains(out, "metric 1024") {
		t.Errorf("routes to fd00:96::/64 after the rollback, want only the one from before (metric 10):\n%s", out)
	}
}

// TestUpRollsBackLinkChanges: a failed up puts back what it changed on
// interfaces and routes that existed before it: an interface it set up
// goes down again, an MTU and a bridge port's bridge are restored, and a
// route it replaced (same destination and metric) comes back.
func TestUpRollsBackLinkChanges(t *testing.T) {
	ctx := context.Background()
	const before = `
name: rbl
namespaces:
  - {name: a, routes: [{to: 198.18.96.0/24, dev: e1}]}
  - {name: b}
bridges: [{name: br1, namespace: b}, {name: br2, namespace: b}]
links:
  - endpoints: [{namespace: a, interface: e1, addresses: [198.18.95.1/30]}, {namespace: b, interface: e1, addresses: [198.18.95.2/30]}]
  - endpoints: [{namespace: a, interface: e2}, {bridge: br1, interface: p2}]
`
	s := prefixedSpec(t, before)
	if _, err := Up(ctx, s, Options{}); err != nil {
		t.Fatal(err)
	}
	a, b := prefixOf(s)+"a", prefixOf(s)+"b"
	ip(t, "-n", a, "link", "set", "e2", "down")
	// What up sets, not what the kernel derives (a bridge's carrier and
	// address follow its ports): name, admin state, MTU and bridge.
	links := func(ns string) string {
		var out strings.Builder
		for _, line := range strings.Split(strings.TrimSpace(ipOut(t, "-n", ns, "-o", "link", "show")), "\n") {
			f := strings.Fields(line)
			flags := strings.Split(strings.Trim(f[2], "<>"), ",")
			fmt.Fprintf(&out, "%s up=%v", f[1], slices.Contains(flags, "UP"))
			for i := 3; i+1 < len(f); i++ {
				if f[i] == "mtu" || f[i] == "master" {
					fmt.Fprintf(&out, " %s %s", f[i], f[i+1])
				}
			}
			out.WriteString("\n")
		}
		return out.String()
	}
	snapshot := func() string {
		return links(a) + links(b) + ipOut(t, "-n", a, "route", "show", "198.18.96.0/24")
	}
	was := snapshot()

	after := prefixedCopy(t, `
name: rbl
namespaces:
  - {name: a, routes: [{to: 198.18.96.0/24, via: 198.18.95.2}]}
  - {name: b}
bridges: [{name: br1, namespace: b}, {name: br2, namespace: b}]
links:
  - mtu: 1400
    endpoints: [{namespace: a, interface: e1, addresses: [198.18.95.1/30]}, {namespace: b, interface: e1, addresses: [198.18.95.2/30]}]
  - endpoints: [{namespace: a, interface: e2}, {bridge: br2, interface: p2}]
`, prefixOf(s))
	if _, err := Up(ctx, after, Options{Workers: 1, failRoutes: true}); err == nil || !strings.Contains(err.Error(), "rolled back") {
		t.Fatalf("up with a failure after the routes: %v", err)
	}
	if now := snapshot(); now != was {
		t.Errorf("after the rolled back up:\n%s\nwant as before:\n%s", now, was)
	}
	// The edit does apply, and the comparison above is not blind to it.
	if _, err := Up(ctx, after, Options{}); err != nil {
		t.Fatal(err)
	}
	if now := snapshot(); now == was {
		t.Errorf("the edit changed nothing:\n%s", now)
	}
}

// TestInterfaceSysctls: sysctls of interfaces the file creates (eth0's
// arp_ignore, a bridge's accept_ra) are written once those exist, in a new
// namespace and for a link added to an existing one, and show agrees.
func TestInterfaceSysctls(t *testing.T) {
	ctx := context.Background()
	s := prefixedSpec(t, `
name: ifsys
namespaces:
  - name: a
    sysctls: {net.ipv4.conf.eth0.arp_ignore: "1", net.ipv6.conf.br0.accept_ra: "0", net.ipv4.conf.default.arp_announce: "2", net.ipv4.ip_forward: "1", net.ipv4.conf.default.proxy_arp: "1"}
  - name: b
bridges: [{name: br0, namespace: a}]
links:
  - endpoints: [{namespace: a, interface: eth0, addresses: [198.18.86.1/30]}, {namespace: b, interface: eth0, addresses: [198.18.86.2/30]}]
`)
	if _, err := Up(ctx, s, Options{}); err != nil {
		t.Fatal(err)
	}
	a, b := prefixOf(s)+"a", prefixOf(s)+"b"
	read := func(ns, file string) string {
		t.Helper()
		return strings.TrimSpace(ipOut(t, "netns", "exec", ns, "cat", "/proc/sys/net/"+file))
	}
	// The bridge's name, and so its key, carries the test's prefix.
	for file, want := range map[string]string{"ipv4/conf/eth0/arp_ignore": "1", "ipv6/conf/" + prefixOf(s) + "br0/accept_ra": "0",
		"ipv4/conf/default/arp_announce": "2", "ipv4/conf/eth0/arp_announce": "2",
		// The file's values win over the kernel defaults up writes first.
		"ipv4/conf/eth0/forwarding": "1", "ipv4/conf/eth0/proxy_arp": "1"} {
		if got := read(a, file); got != want {
			t.Errorf("%s: %s is %q, want %q", a, file, got, want)
		}
	}
	// A link added to the existing namespace b, with a sysctl of its own.
	s.Namespaces[1].Sysctls = map[string]string{"net.ipv4.conf.eth1.arp_ignore": "2"}
	s.Links = append(s.Links, Link{Endpoints: []Endpoint{
		{Namespace: a, Interface: "eth1", Addresses: []string{"198.18.86.5/30"}},
		{Namespace: b, Interface: "eth1", Addresses: []string{"198.18.86.6/30"}}}})
	if _, err := Up(ctx, s, Options{}); err != nil {
		t.Fatal(err)
	}
	if got := read(b, "ipv4/conf/eth1/arp_ignore"); got != "2" {
		t.Errorf("%s: eth1 arp_ignore %q, want 2", b, got)
	}
	if st, err := Show(ctx, s, Options{}); err != nil || len(st.Drift) != 0 {
		t.Errorf("show: drift %q, %v", st.Drift, err)
	}
	if res, err := Up(ctx, s, Options{}); err != nil || !res.Unchanged() {
		t.Errorf("up again: %+v, %v", res, err)
	}
}

// TestWriteBaseline: what a namespace copies from the host (here set by
// hand) goes back to the kernel's defaults, and keys already at their
// default are not written.
func TestWriteBaseline(t *testing.T) {
	testenv.RequireRoot(t)
	name := testenv.Name("tb")
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	for _, kv := range []string{"net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=1", "net.ipv4.conf.default.arp_ignore=2"} {
		if out, err := exec.Command("ip", "netns", "exec", name, "sysctl", "-qw", kv).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", kv, err, out)
		}
	}
	if err := nsenter.Do("/run/netns/"+name, func() error { return writeBaseline(name) }); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"net.ipv4.ip_forward", "net.ipv4.conf.default.forwarding", "net.ipv4.conf.all.rp_filter", "net.ipv4.conf.default.arp_ignore"} {
		out, err := exec.Command("ip", "netns", "exec", name, "sysctl", "-n", k).CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != "0" {
			t.Errorf("%s = %q (%v), want 0", k, out, err)
		}
	}
}

// TestUpRollsBackSysctlsPastNewInterface: a failed up that set sysctls of
// an interface it created (aux, deleted first by the rollback) and of one
// that existed (e1) puts e1's back, though aux's key is gone by then and
// sorts first.
func TestUpRollsBackSysctlsPastNewInterface(t *testing.T) {
	ctx := context.Background()
	s := prefixedSpec(t, `
name: rbs
namespaces: [{name: a}, {name: b}]
links:
  - endpoints: [{namespace: a, interface: e1, addresses: [198.18.97.1/30]}, {namespace: b, interface: e1, addresses: [198.18.97.2/30]}]
`)
	if _, err := Up(ctx, s, Options{}); err != nil {
		t.Fatal(err)
	}
	a := prefixOf(s) + "a"
	read := func() string {
		return strings.TrimSpace(ipOut(t, "netns", "exec", a, "cat", "/proc/sys/net/ipv4/conf/e1/rp_filter"))
	}
	was := read()
	after := prefixedCopy(t, `
name: rbs
namespaces:
  - name: a
    sysctls: {net.ipv4.conf.aux.rp_filter: "2", net.ipv4.conf.e1.rp_filter: "2"}
  - name: b
links:
  - endpoints: [{namespace: a, interface: e1, addresses: [198.18.97.1/30]}, {namespace: b, interface: e1, addresses: [198.18.97.2/30]}]
  - endpoints: [{namespace: a, interface: aux}, {namespace: b, interface: aux}]
`, prefixOf(s))
	if was == "2" {
		t.Fatalf("e1's rp_filter is 2 already: the test proves nothing")
	}
	_, err := Up(ctx, after, Options{Workers: 1, failRoutes: true})
	if err == nil || !strings.Contains(err.Error(), "rolled back") || strings.Contains(err.Error(), "restore sysctls") {
		t.Fatalf("up with a failure after the routes: %v, want a clean rollback", err)
	}
	if now := read(); now != was {
		t.Errorf("e1's rp_filter %s after the rollback, want %s as before", now, was)
	}
}

// TestSysctlsGoToTheCheckedNamespace: a's name is taken by another
// namespace between the run's ownership check and its sysctls. They go
// to the namespace that was checked (held open by the run), and the
// newcomer, not the topology's, is left as it was.
func TestSysctlsGoToTheCheckedNamespace(t *testing.T) {
	ctx := context.Background()
	s := prefixedSpec(t, `
name: sxh
namespaces: [{name: a}, {name: b}]
links:
  - endpoints: [{namespace: a, interface: e1, addresses: [198.18.91.1/30]}, {namespace: b, interface: e1, addresses: [198.18.91.2/30]}]
`)
	if _, err := Up(ctx, s, Options{}); err != nil {
		t.Fatal(err)
	}
	a := prefixOf(s) + "a"
	t.Cleanup(func() { exec.Command("ip", "netns", "del", a).Run() })
	s.Namespaces[0].Sysctls = map[string]string{"net.ipv4.ip_forward": "1"}
	_, _ = Up(ctx, s, Options{afterPreflight: func() {
		ip(t, "netns", "del", a)
		ip(t, "netns", "add", a)
	}})
	if got := strings.TrimSpace(ipOut(t, "netns", "exec", a, "cat", "/proc/sys/net/ipv4/ip_forward")); got != "0" {
		t.Errorf("the namespace that took a's name has ip_forward %s: the run wrote to it", got)
	}
}

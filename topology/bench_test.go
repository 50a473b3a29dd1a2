package topology

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nsflow/nsflow/internal/testenv"
	"github.com/vishvananda/netlink"
)

// starSpec is n namespaces, each with eth0 on one host bridge and an
// address in 198.19.0.0/16 (the upper half of the benchmarking range).
func starSpec(prefix string, n int) *Spec {
	br := prefix + "br"
	s := &Spec{Name: prefix + "star", Bridges: []Bridge{{Name: br, Addresses: []string{"198.19.0.1/16"}}}}
	for i := range n {
		ns := fmt.Sprintf("%ss%d", prefix, i)
		s.Namespaces = append(s.Namespaces, Namespace{Name: ns})
		s.Links = append(s.Links, Link{Endpoints: []Endpoint{
			{Namespace: ns, Interface: "eth0", Addresses: []string{starAddr(i)}},
			{Bridge: br, Interface: fmt.Sprintf("%sp%d", prefix, i)},
		}})
	}
	return s
}

func starAddr(i int) string { return fmt.Sprintf("198.19.%d.%d/16", (i+2)/256, (i+2)%256) }

// starScripts writes the same star as ip(8) commands, one per line, the
// way a shell script would build it, and the script that removes it.
func starScripts(s *Spec) (up, down string) {
	var u, d strings.Builder
	br := s.Bridges[0].Name
	u.WriteString("set -e\n")
	fmt.Fprintf(&u, "ip link add %s type bridge\nip link set %s up\nip addr add %s dev %s\n", br, br, s.Bridges[0].Addresses[0], br)
	for i, n := range s.Namespaces {
		port := s.Links[i].Endpoints[1].Interface
		fmt.Fprintf(&u, "ip netns add %s\n", n.Name)
		fmt.Fprintf(&u, "ip link add %s type veth peer name eth0 netns %s\n", port, n.Name)
		fmt.Fprintf(&u, "ip link set %s master %s up\n", port, br)
		fmt.Fprintf(&u, "ip -n %s link set lo up\n", n.Name)
		fmt.Fprintf(&u, "ip -n %s link set eth0 up\n", n.Name)
		fmt.Fprintf(&u, "ip -n %s addr add %s dev eth0\n", n.Name, s.Links[i].Endpoints[0].Addresses[0])
		fmt.Fprintf(&d, "ip netns del %s\n", n.Name)
	}
	fmt.Fprintf(&d, "ip link del %s\n", br)
	return u.String(), d.String()
}

// BenchmarkStar builds and removes a star of N namespaces on one bridge
// with nsflow and with the equivalent ip(8) script, in the same run, and
// reports seconds for each step and nsflow's speedup.
//
//	go test -run '^$' -bench Star -benchtime 1x ./topology/
func BenchmarkStar(b *testing.B) {
	testenv.RequireRoot(b)
	if _, err := exec.LookPath("ip"); err != nil {
		testenv.Unavailable(b, "the ip(8) baseline needs iproute2: %v", err)
	}
	for _, n := range []int{10, 100, 1000} {
		b.Run(fmt.Sprintf("N=%d", n), func(b *testing.B) {
			var upT, downT, ipUpT, ipDownT time.Duration
			for b.Loop() {
				s := starSpec(testPrefix(), n)
				u, d := benchNsflow(b, s)
				upT, downT = upT+u, downT+d
				s = starSpec(testPrefix(), n)
				u, d = benchScript(b, s)
				ipUpT, ipDownT = ipUpT+u, ipDownT+d
			}
			runs := float64(b.N)
			b.ReportMetric(upT.Seconds()/runs, "up-s")
			b.ReportMetric(downT.Seconds()/runs, "down-s")
			b.ReportMetric(ipUpT.Seconds()/runs, "ip-up-s")
			b.ReportMetric(ipDownT.Seconds()/runs, "ip-down-s")
			b.ReportMetric(ipUpT.Seconds()/upT.Seconds(), "up-speedup")
			b.ReportMetric(ipDownT.Seconds()/downT.Seconds(), "down-speedup")
		})
	}
}

func benchNsflow(b *testing.B, s *Spec) (up, down time.Duration) {
	ctx := context.Background()
	b.Cleanup(func() { Down(ctx, s, Options{}) })
	start := time.Now()
	if _, err := Up(ctx, s, Options{}); err != nil {
		b.Fatal(err)
	}
	up = time.Since(start)
	start = time.Now()
	if _, err := Down(ctx, s, Options{}); err != nil {
		b.Fatal(err)
	}
	return up, time.Since(start)
}

// benchScript times the ip(8) scripts. Down counts until the host-side
// veth ends are really gone, as nsflow's Down does.
func benchScript(b *testing.B, s *Spec) (up, down time.Duration) {
	upScript, downScript := starScripts(s)
	dir := b.TempDir()
	run := func(name, script string) time.Duration {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		if out, err := exec.Command("sh", path).CombinedOutput(); err != nil {
			b.Fatalf("%s: %v\n%s", name, err, out)
		}
		return time.Since(start)
	}
	prefix := strings.TrimSuffix(s.Name, "star")
	b.Cleanup(func() {
		// Best effort if the run failed midway; errors are expected for
		// what was never created.
		exec.Command("sh", "-c", downScript).Run()
	})
	up = run("up.sh", upScript)
	start := time.Now()
	run("down.sh", downScript)
	for hostHasPrefix(b, prefix) {
		if time.Since(start) > time.Minute {
			b.Fatalf("host interfaces %s* still there a minute after the down script", prefix)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return up, time.Since(start)
}

func hostHasPrefix(b *testing.B, prefix string) bool {
	links, err := retryDump(netlink.LinkList)
	if err != nil {
		b.Fatal(err)
	}
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, prefix) {
			return true
		}
	}
	return false
}

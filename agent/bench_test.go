package agent

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nsflow/nsflow/internal/nsenter"
	"github.com/nsflow/nsflow/internal/testenv"
	"github.com/nsflow/nsflow/topology"
)

// benchNamespaces is the scale the issue sets: 1000 namespaces on a bridge.
const benchNamespaces = 1000

// quietIPv6 stops IPv6 router solicitations, which without a router go
// on (with backoff) on every interface and are flooded by the bridge to all
// ports: with them a thousand namespaces keep the flow table full and
// nothing is idle. A network with a router answers them instead.
var quietIPv6 = map[string]string{
	"net.ipv6.conf.all.router_solicitations":     "0",
	"net.ipv6.conf.default.router_solicitations": "0",
}

// bridgeSpec returns n namespaces, each with one veth on a bridge that
// lives in its own namespace, addressed in 198.18.0.0/15.
func bridgeSpec(n int) *topology.Spec {
	s := &topology.Spec{Name: "bench", Bridges: []topology.Bridge{{Name: "br0", Namespace: "sw"}},
		Namespaces: []topology.Namespace{{Name: "sw", Sysctls: quietIPv6}}}
	for i := range n {
		name := "n" + strconv.Itoa(i)
		s.Namespaces = append(s.Namespaces, topology.Namespace{Name: name, Sysctls: quietIPv6})
		s.Links = append(s.Links, topology.Link{Endpoints: []topology.Endpoint{
			{Namespace: name, Interface: "eth0", Addresses: []string{benchAddr(i).String() + "/15"}},
			{Bridge: "br0", Interface: "p" + strconv.Itoa(i)},
		}})
	}
	return s
}

func benchAddr(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{198, 18, byte(i / 250), byte(i%250 + 1)})
}

// procStat returns a process's resident set in bytes and CPU time.
func procStat(pid int) (rss uint64, cpu time.Duration, err error) {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, l := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			rss = kb << 10
		}
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+2:]))
	ut, _ := strconv.ParseUint(f[11], 10, 64)
	st, _ := strconv.ParseUint(f[12], 10, 64)
	return rss, time.Duration(ut+st) * time.Second / 100, nil // USER_HZ is 100 on Linux
}

// timeScrape returns the best of a few scrapes, in the spirit of a
// latency floor rather than a noisy single sample.
func timeScrape(b *testing.B, url string) time.Duration {
	best := time.Duration(1 << 62)
	for range 5 {
		start := time.Now()
		resp, err := http.Get(url + "/metrics")
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		best = min(best, time.Since(start))
	}
	return best
}

// agentFigures starts the agent binary restricted to prefix and measures
// time to ready, scrape time, RSS and idle CPU.
func agentFigures(b *testing.B, prefix string, extra ...string) (ready, scrape time.Duration, rss uint64, idleCPU float64) {
	pin := "/sys/fs/bpf/" + testenv.Name("nsflowb")
	defer func() {
		if err := os.RemoveAll(pin); err != nil {
			b.Error(err)
		}
	}()
	bin := testenv.NsflowBinary(b)
	addr := "127.0.0.1:" + strconv.Itoa(freePort(b))
	start := time.Now()
	p := startBenchProc(b, bin, addr, append([]string{"--netns.include=^" + prefix, "--bpf.pin-path=" + pin,
		"--state.file=" + b.TempDir() + "/state.json", "--log.level=warn"}, extra...)...)
	defer p.stop()
	for {
		resp, err := http.Get("http://" + addr + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Since(start) > 10*time.Minute {
			b.Fatal("agent not ready within 10 minutes")
		}
		time.Sleep(5 * time.Millisecond)
	}
	ready = time.Since(start)
	scrape = timeScrape(b, "http://"+addr)
	time.Sleep(2 * time.Second) // let startup garbage be collected
	_, cpu0, err := procStat(p.pid())
	if err != nil {
		b.Fatal(err)
	}
	const idle = 10 * time.Second
	time.Sleep(idle)
	rss, cpu1, err := procStat(p.pid())
	if err != nil {
		b.Fatal(err)
	}
	return ready, scrape, rss, 100 * (cpu1 - cpu0).Seconds() / idle.Seconds()
}

// BenchmarkAgent1000Namespaces measures the agent on 1000 namespaces on a
// bridge (2000 ports): time from start to every port attached, one scrape
// with traffic in the tables, RSS and idle CPU. The baseline is the same
// agent in the same run with nothing to watch.
//
//	go test -run '^$' -bench Agent1000 -benchtime 1x -timeout 30m ./agent/
func BenchmarkAgent1000Namespaces(b *testing.B) {
	testenv.RequireBPFFS(b)
	p := testenv.Name("ab")
	s, err := bridgeSpec(benchNamespaces).WithPrefix(p)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	defer func() {
		if _, err := topology.Down(ctx, s, topology.Options{}); err != nil {
			b.Error(err)
		}
	}()
	t0 := time.Now()
	if _, err := topology.Up(ctx, s, topology.Options{}); err != nil {
		b.Fatal(err)
	}
	b.Logf("topology up: %v", time.Since(t0))
	// One datagram from every namespace to the next fills the port and
	// flow tables the way light real traffic does.
	for i := range benchNamespaces {
		dst := netip.AddrPortFrom(benchAddr((i+1)%benchNamespaces), 9)
		err := nsenter.Do(s.NetnsPath(fmt.Sprintf("%sn%d", p, i)), func() error {
			c, err := net.Dial("udp", dst.String())
			if err != nil {
				return err
			}
			defer c.Close()
			_, err = c.Write([]byte("nsflow bench"))
			return err
		})
		if err != nil {
			b.Fatal(err)
		}
	}

	baseReady, baseScrape, baseRSS, baseCPU := agentFigures(b, "^$")
	b.Logf("baseline (no namespaces): ready %v, scrape %v, RSS %.1f MiB, idle CPU %.2f%%",
		baseReady, baseScrape, float64(baseRSS)/(1<<20), baseCPU)
	// tcx is left out by default: each tcx attach waits for an RCU grace
	// period under the RTNL lock, so 2000 ports take minutes on a busy
	// host (NSFLOW_BENCH_MODES=tc,tcx to measure it anyway).
	modes := []string{"tc"}
	if m := os.Getenv("NSFLOW_BENCH_MODES"); m != "" {
		modes = strings.Split(m, ",")
	}
	for _, mode := range modes {
		b.Run(mode, func(b *testing.B) {
			for b.Loop() {
				ready, scrape, rss, cpu := agentFigures(b, p, "--bpf.attach-mode="+mode)
				b.ReportMetric(ready.Seconds(), "ready_s")
				b.ReportMetric(float64(scrape.Microseconds())/1000, "scrape_ms")
				b.ReportMetric(float64(rss)/(1<<20), "rss_MiB")
				b.ReportMetric(cpu, "idle_cpu_%")
				b.ReportMetric(scrape.Seconds()/baseScrape.Seconds(), "scrape_x_baseline")
				b.ReportMetric(float64(rss)/float64(baseRSS), "rss_x_baseline")
				b.Logf("%s, 1000 namespaces: ready %v, scrape %v, RSS %.1f MiB, idle CPU %.2f%%",
					mode, ready, scrape, float64(rss)/(1<<20), cpu)
			}
		})
	}
}

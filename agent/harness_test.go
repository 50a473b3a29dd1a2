package agent

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nsflow/nsflow/bpf"
	"github.com/nsflow/nsflow/collector"
	"github.com/nsflow/nsflow/internal/nsenter"
	"github.com/nsflow/nsflow/internal/promtest"
	"github.com/nsflow/nsflow/internal/testenv"
)

// pins returns a unique pin directory and state file, removed at the end.
func pins(t *testing.T) (pinPath, stateFile string) {
	t.Helper()
	testenv.RequireBPFFS(t)
	pinPath = "/sys/fs/bpf/" + testenv.Name("nsflowt")
	stateFile = filepath.Join(t.TempDir(), "state.json")
	t.Cleanup(func() {
		if err := bpf.RemovePins(pinPath); err != nil {
			t.Errorf("remove pins: %v", err)
		}
	})
	return pinPath, stateFile
}

// running is an in-process agent with its HTTP server.
type running struct {
	a    *Agent
	url  string // metrics URL
	stop func()
}

// startAgent runs an agent restricted to namespaces starting with prefix.
func startAgent(t *testing.T, prefix string, cfg Config) *running {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: testLogLevel()}))
	}
	cfg.Netns.Include = regexp.MustCompile("^" + regexp.QuoteMeta(prefix))
	a, err := New(cfg)
	if err != nil {
		t.Fatalf("agent: %v", err)
	}
	reg := collector.NewRegistry(cfg.Logger, a, a.CollectorOptions())
	web := WebConfig{TelemetryPath: "/metrics"}
	h, err := Handler(cfg.Logger, reg, web, a.Ready)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	runErr, srvErr := make(chan error, 1), make(chan error, 1)
	go func() { runErr <- a.Run(ctx) }()
	go func() { srvErr <- Serve(ctx, cfg.Logger, l, h, web) }()
	stopped := false
	r := &running{a: a, url: "http://" + l.Addr().String() + "/metrics"}
	r.stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-runErr; err != nil {
			t.Errorf("agent run: %v", err)
		}
		if err := <-srvErr; err != nil {
			t.Errorf("agent serve: %v", err)
		}
	}
	t.Cleanup(r.stop)
	deadline := time.Now().Add(30 * time.Second)
	for !a.Ready() {
		if time.Now().After(deadline) {
			t.Fatal("agent not ready within 30s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return r
}

// waitUntil polls cond until it holds, and fails the test with what if
// d passes first.
func waitUntil(t *testing.T, d time.Duration, cond func() bool, what string) {
	t.Helper()
	for deadline := time.Now().Add(d); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal(what)
		}
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}

// freePort returns a loopback port that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// prom is a real Prometheus server scraping one target every second.
type prom struct{ *promtest.Server }

func startPrometheus(t *testing.T, target string, scheme string) *prom {
	t.Helper()
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		testenv.Unavailable(t, "prometheus not installed (Debian package prometheus)")
	}
	cfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 900ms
scrape_configs:
  - job_name: nsflow
    scheme: %s
    static_configs:
      - targets: [%q]
`, scheme, target)
	return &prom{promtest.Start(t, bin, []byte(cfg), "--log.level=warn")}
}

// query runs an instant query and returns the single value, or ok=false
// when the result is empty.
func (p *prom) query(t *testing.T, expr string) (v float64, ok bool) {
	t.Helper()
	var data struct {
		Result []struct {
			Value [2]any `json:"value"`
		} `json:"result"`
	}
	if err := p.API("/api/v1/query", url.Values{"query": {expr}}, &data); err != nil {
		t.Fatalf("query %s: %v", expr, err)
	}
	switch len(data.Result) {
	case 0:
		return 0, false
	case 1:
	default:
		t.Fatalf("query %s: %d series, want one", expr, len(data.Result))
	}
	f, err := strconv.ParseFloat(data.Result[0].Value[1].(string), 64)
	if err != nil {
		t.Fatal(err)
	}
	return f, true
}

// waitValue polls a query until it returns want; Prometheus scrapes every
// second, so a settled counter shows up within a few.
func (p *prom) waitValue(t *testing.T, expr string, want float64) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	var got float64
	var ok bool
	for time.Now().Before(deadline) {
		if got, ok = p.query(t, expr); ok && got == want {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("%s = %v (present %v), want %v", expr, got, ok, want)
}

// scrape fetches the agent's metrics text.
func scrape(t *testing.T, u string) string {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", u, resp.Status)
	}
	return string(b)
}

// testLogLevel is info, or debug with NSFLOW_TEST_DEBUG=1.
func testLogLevel() slog.Level {
	if os.Getenv("NSFLOW_TEST_DEBUG") == "1" {
		return slog.LevelDebug
	}
	return slog.LevelInfo
}

// waitLine polls the agent's metrics at url until they hold the line want
// (a series and its value), up to 20 s; on failure it shows the lines
// with grep in them.
func waitLine(t *testing.T, url, want, grep string) {
	t.Helper()
	var text string
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if text = scrape(t, url); strings.Contains(text, want+"\n") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("want %s; have:\n%s", want, grepLines(text, grep))
		}
	}
}

// rewireDirect gives a new eth-d pair between a and b (made by the
// caller) the addresses and state pairTopology gives its direct link.
func rewireDirect(t *testing.T, a, b string) {
	t.Helper()
	for _, args := range [][]string{
		{"-n", a, "addr", "add", "198.18.40.1/30", "dev", "eth-d"},
		{"-n", b, "addr", "add", "198.18.40.2/30", "dev", "eth-d"},
		{"-n", a, "link", "set", "eth-d", "up"},
		{"-n", b, "link", "set", "eth-d", "up"},
	} {
		if err := ipCmd(args...); err != nil {
			t.Fatal(err)
		}
	}
	waitOperUp(t, a, "eth-d", b, "eth-d")
}

// waitOperUp waits until each (namespace, interface) pair given is
// operationally up. A veth made by hand whose two ends have the same
// ifindex drops what it is given until then, for up to a second: the
// kernel activates its queue at its once-a-second link-state pass.
func waitOperUp(t *testing.T, nsIfnames ...string) {
	t.Helper()
	for i := 0; i+1 < len(nsIfnames); i += 2 {
		ns, ifname := nsIfnames[i], nsIfnames[i+1]
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			out, err := exec.Command("ip", "netns", "exec", ns, "cat", "/sys/class/net/"+ifname+"/operstate").Output()
			if err == nil && strings.TrimSpace(string(out)) == "up" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s in %s not operationally up: %s %v", ifname, ns, out, err)
			}
		}
	}
}

// sendDatagrams sends n datagrams from the namespace at path to dst,
// without a receiver (multicast, broadcast, an address nobody holds).
func sendDatagrams(t *testing.T, path string, dst netip.AddrPort, n int) {
	t.Helper()
	err := nsenter.Do(path, func() error {
		c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(dst))
		if err != nil {
			return err
		}
		defer c.Close()
		for range n {
			if _, err := c.Write([]byte("nsflow")); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("send to %v: %v", dst, err)
	}
}

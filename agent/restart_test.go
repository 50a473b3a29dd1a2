package agent

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nsflow/nsflow/internal/testenv"
	"github.com/nsflow/nsflow/internal/topotest"
	"github.com/nsflow/nsflow/traffic"
)

// TestMain removes the nsflow binary the tests built.
func TestMain(m *testing.M) {
	code := m.Run()
	testenv.RemoveBuilt()
	os.Exit(code)
}

// proc is an agent subprocess.
type proc struct {
	cmd *exec.Cmd
	url string
}

func startProc(t *testing.T, args ...string) *proc {
	t.Helper()
	bin := testenv.NsflowBinary(t)
	addr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	cmd := exec.Command(bin, append([]string{"agent", "--web.listen-address=" + addr}, args...)...)
	cmd.Stdout, cmd.Stderr = testWriter{t}, testWriter{t}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, url: "http://" + addr}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(p.url + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent subprocess not ready: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// monotonic scrapes an agent URL over and over and records every counter
// that goes backwards.
type monotonic struct {
	mu       sync.Mutex
	url      string
	last     map[string]float64
	backward []string
	scrapes  int
}

func (m *monotonic) setURL(u string) {
	m.mu.Lock()
	m.url = u
	m.mu.Unlock()
}

func (m *monotonic) run(ctx context.Context) {
	for ctx.Err() == nil {
		m.mu.Lock()
		u := m.url
		m.mu.Unlock()
		if resp, err := http.Get(u + "/metrics"); err == nil {
			if resp.StatusCode == http.StatusOK {
				m.check(bufio.NewScanner(resp.Body))
			}
			resp.Body.Close()
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (m *monotonic) check(sc *bufio.Scanner) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.scrapes++
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "nsflow_") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		series := line[:i]
		if !strings.Contains(series, "_total") || strings.HasPrefix(series, "nsflow_top_flow") {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		if old, ok := m.last[series]; ok && v < old {
			m.backward = append(m.backward, fmt.Sprintf("%s: %v -> %v", series, old, v))
		}
		m.last[series] = v
	}
}

// TestRestartKill9 kills the agent with SIGKILL under traffic, twice, and
// restarts it, the second time with a larger flow table (--flows.max, the
// fix for a full one): no counter ever goes backwards, and flows evicted
// before a kill stay counted.
func TestRestartKill9(t *testing.T) {
	testenv.RequireRoot(t)
	p := testenv.Name("ar")
	s := topotest.Up(t, parseSpec(t, pairTopology), p)
	pin, state := pins(t)
	args := []string{"--netns.include=^" + p, "--bpf.pin-path=" + pin, "--state.file=" + state,
		"--flows.idle-timeout=2s", "--log.level=warn"}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ag := startProc(t, args...)
	m := &monotonic{url: ag.url, last: map[string]float64{}}
	var wg sync.WaitGroup
	wg.Go(func() { m.run(ctx) })

	// A steady flow for the whole test, and short ones that go idle and
	// are evicted (folded into the saved totals) between kills.
	steady, err := traffic.Start(ctx, traffic.Flow{Proto: traffic.UDP, ClientNetns: s.NetnsPath(p + "a"),
		ServerNetns: s.NetnsPath(p + "b"), Server: netip.MustParseAddrPort("198.18.40.2:5401"), Size: 100, Rate: 2000})
	if err != nil {
		t.Fatal(err)
	}
	bursts := func() {
		for i := range 3 {
			sendUDP(t, s, p+"a", p+"b", netip.MustParseAddrPort(fmt.Sprintf("198.18.41.2:%d", 5410+i)), 200, 100)
		}
	}
	for round := range 2 {
		bursts()
		time.Sleep(3500 * time.Millisecond) // the bursts go idle and get evicted
		ag.cmd.Process.Signal(syscall.SIGKILL)
		ag.cmd.Wait()
		if round == 1 {
			args = append(args, "--flows.max=131072")
		}
		ag = startProc(t, args...)
		m.setURL(ag.url)
		time.Sleep(time.Second)
		m.mu.Lock()
		t.Logf("round %d: %d scrapes so far", round, m.scrapes)
		m.mu.Unlock()
	}
	if _, err := steady.Stop(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)

	// A clean stop detaches every program: no tcx link is left on the
	// test's interfaces (bpftool as the independent witness).
	ag.cmd.Process.Signal(syscall.SIGTERM)
	if err := ag.cmd.Wait(); err != nil {
		t.Errorf("agent exit after SIGTERM: %v", err)
	}
	cancel()
	wg.Wait()
	for _, ns := range []string{p + "a", p + "b", p + "sw"} {
		out, err := exec.Command("ip", "netns", "exec", ns, "bpftool", "net", "show").CombinedOutput()
		if err != nil {
			t.Fatalf("bpftool net show in %s: %v: %s", ns, err, out)
		}
		if strings.Contains(string(out), "nsflow") {
			t.Errorf("programs left in %s after SIGTERM:\n%s", ns, out)
		}
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	if m.scrapes < 20 {
		t.Errorf("only %d scrapes", m.scrapes)
	}
	for _, b := range m.backward {
		t.Errorf("counter went backwards: %s", b)
	}
	pair := fmt.Sprintf(`nsflow_netns_flow_packets_total{dst_netns="%sb",protocol="udp",src_netns="%sa"}`, p, p)
	if v := m.last[pair]; v < 1200 {
		t.Errorf("%s = %v, want at least the 1200 burst packets", pair, v)
	}
	if v := m.last["nsflow_flow_table_evictions_total"]; v == 0 {
		t.Errorf("no evictions happened: the test did not exercise folding")
	}
}

// startBenchProc starts an agent subprocess for a benchmark.
func startBenchProc(b *testing.B, bin, addr string, args ...string) *benchProcess {
	cmd := exec.Command(bin, append([]string{"agent", "--web.listen-address=" + addr}, args...)...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	return &benchProcess{cmd}
}

type benchProcess struct{ cmd *exec.Cmd }

func (p *benchProcess) pid() int { return p.cmd.Process.Pid }

func (p *benchProcess) stop() {
	p.cmd.Process.Signal(syscall.SIGTERM)
	p.cmd.Wait()
}

// TestRestartNamespaceGoneWhileDown removes a namespace while the agent is
// down (killed): the restarted agent counts its records where the killed
// one did, from the decisions in the state file. Without them the
// restarted agent cannot tell whose the records were: the pair series
// would drop their counts, and the sender's egress records would count
// again as traffic to an unknown destination.
func TestRestartNamespaceGoneWhileDown(t *testing.T) {
	testenv.RequireRoot(t)
	p := testenv.Name("ag")
	s := topotest.Up(t, parseSpec(t, pairTopology), p)
	pin, state := pins(t)
	args := []string{"--netns.include=^" + p, "--bpf.pin-path=" + pin, "--state.file=" + state,
		"--flows.idle-timeout=10m", "--log.level=warn"}

	const n = 300
	pair := fmt.Sprintf(`nsflow_netns_flow_packets_total{dst_netns="%sb",protocol="udp",src_netns="%sa"}`, p, p)
	unknown := fmt.Sprintf(`nsflow_netns_flow_packets_total{dst_netns=%q,protocol="udp",src_netns="%sa"}`, UnknownNetns, p)
	value := func(text, series string) string {
		for _, line := range strings.Split(text, "\n") {
			if v, ok := strings.CutPrefix(line, series+" "); ok {
				return v
			}
		}
		return ""
	}
	waitPair := func(ag *proc, want string) string {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		var text string
		for time.Now().Before(deadline) {
			text = scrape(t, ag.url+"/metrics")
			if value(text, pair) == want {
				return text
			}
			time.Sleep(200 * time.Millisecond)
		}
		t.Fatalf("want %s %s; have:\n%s", pair, want, grepLines(text, "nsflow_netns_flow_packets_total"))
		return ""
	}

	ag := startProc(t, args...)
	// The first flow's decisions are saved with the state (the pair gets
	// a port slot), the second's (a new source port, the same slot) go to
	// the journal.
	sendUDP(t, s, p+"a", p+"b", netip.MustParseAddrPort("198.18.40.2:5402"), n, 100)
	waitPair(ag, strconv.Itoa(n))
	sendUDP(t, s, p+"a", p+"b", netip.MustParseAddrPort("198.18.40.2:5402"), n, 100)
	waitPair(ag, strconv.Itoa(2*n))
	if _, err := os.Stat(state + ".decisions"); err != nil {
		t.Errorf("no decisions journal: %v", err)
	}
	ag.cmd.Process.Signal(syscall.SIGKILL)
	ag.cmd.Wait()

	// b goes, and with it the veth pair: every record of the flow is on a
	// port that no longer exists.
	if err := exec.Command("ip", "netns", "del", p+"b").Run(); err != nil {
		t.Fatal(err)
	}
	ag = startProc(t, args...)
	// The pass that follows the first discovery folds the records of the
	// gone ports; scrapes before and after it must agree.
	waitPair(ag, strconv.Itoa(2*n))
	time.Sleep(2 * time.Second)
	text := waitPair(ag, strconv.Itoa(2*n))
	if u := value(text, unknown); u != "" && u != "0" {
		t.Errorf("%s %s: the sender's records counted a second time", unknown, u)
	}
}

// TestRestartNarrowerRemovesDeadFilters: an agent in tc mode killed with
// SIGKILL leaves its filters, counting into the pinned tables. Restarted
// to watch fewer namespaces and interfaces, it removes them from what it
// no longer watches (they would count for good, and twice once watched
// again), and leaves nothing after SIGTERM.
func TestRestartNarrowerRemovesDeadFilters(t *testing.T) {
	testenv.RequireRoot(t)
	p := testenv.Name("ag")
	topotest.Up(t, parseSpec(t, pairTopology), p)
	pin, state := pins(t)
	common := []string{"--bpf.attach-mode=tc", "--bpf.pin-path=" + pin, "--state.file=" + state, "--log.level=warn"}
	filters := func(ns, dev string) string {
		var out strings.Builder
		for _, dir := range []string{"ingress", "egress"} {
			b, _ := exec.Command("tc", "-n", ns, "filter", "show", "dev", dev, dir).CombinedOutput()
			out.Write(b)
		}
		return out.String()
	}
	ag := startProc(t, append(common, "--netns.include=^"+p)...)
	for _, w := range [][2]string{{p + "b", "eth-d"}, {p + "a", "eth-br"}} {
		if !strings.Contains(filters(w[0], w[1]), "nsflow") {
			t.Fatalf("%s %s: no nsflow filter while the first agent runs:\n%s", w[0], w[1], filters(w[0], w[1]))
		}
	}
	ag.cmd.Process.Signal(syscall.SIGKILL)
	ag.cmd.Wait()

	// Now only a, and there only eth-d.
	ag = startProc(t, append(common, "--netns.include=^"+p+"a$", "--interface.include=^eth-d$")...)
	for _, w := range [][2]string{{p + "b", "eth-d"}, {p + "a", "eth-br"}, {p + "sw", "pa"}} {
		if f := filters(w[0], w[1]); strings.Contains(f, "nsflow") {
			t.Errorf("%s %s: the dead run's filter is still there:\n%s", w[0], w[1], f)
		}
	}
	if !strings.Contains(filters(p+"a", "eth-d"), "nsflow") {
		t.Errorf("%s eth-d: not attached", p+"a")
	}
	ag.cmd.Process.Signal(syscall.SIGTERM)
	ag.cmd.Wait()
	for _, w := range [][2]string{{p + "a", "eth-d"}, {p + "a", "eth-br"}, {p + "b", "eth-d"}} {
		if f := filters(w[0], w[1]); strings.Contains(f, "nsflow") {
			t.Errorf("%s %s: a filter left after SIGTERM:\n%s", w[0], w[1], f)
		}
	}
}

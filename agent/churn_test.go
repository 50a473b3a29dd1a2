package agent

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/nsflow/nsflow/bpf"
	"github.com/nsflow/nsflow/discovery"
	"github.com/nsflow/nsflow/internal/testenv"
	"github.com/nsflow/nsflow/internal/topotest"
	"github.com/nsflow/nsflow/traffic"
	"golang.org/x/sys/unix"
)

func ipCmd(args ...string) error {
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

// attachedPort reports whether the agent has attached to ifname in the
// namespace labelled label, and that namespace's cookie.
func (a *Agent) attachedPort(label, ifname string) (cookie uint64, ok bool) {
	a.mu.RLock()
	defer a.mu.RUnlock()
	for _, s := range a.byInode {
		if s.label != label {
			continue
		}
		for _, p := range s.links {
			if p.link.Name == ifname && p.att != nil {
				return s.cookie, true
			}
		}
	}
	return 0, false
}

func (a *Agent) tracked(label string) bool {
	a.mu.RLock()
	defer a.mu.RUnlock()
	for _, s := range a.byInode {
		if s.label == label {
			return true
		}
	}
	return false
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestChurn creates and deletes 200 namespaces, each with a veth to a
// bridge, while traffic flows and the agent runs: every new port is
// attached within seconds, and at the end no program, port counter,
// goroutine or file descriptor of the agent is left.
func TestChurn(t *testing.T) {
	testenv.RequireRoot(t)
	p := testenv.Name("ac")
	s := topotest.Up(t, parseSpec(t, pairTopology), p)
	pin, state := pins(t)
	sw := p + "sw"

	goroutines, fds := runtime.NumGoroutine(), openFDs(t)
	r := startAgent(t, p, Config{PinPath: pin, StateFile: state, FlowIdleTimeout: 2 * time.Second})
	ingress, egress := r.a.dp.Programs()
	var progIDs []ebpf.ProgramID
	for _, prog := range []*ebpf.Program{ingress, egress} {
		info, err := prog.Info()
		if err != nil {
			t.Fatal(err)
		}
		id, _ := info.ID()
		progIDs = append(progIDs, id)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	steady, err := traffic.Start(ctx, traffic.Flow{Proto: traffic.UDP, ClientNetns: s.NetnsPath(p + "a"),
		ServerNetns: s.NetnsPath(p + "b"), Server: netip.MustParseAddrPort("198.18.40.2:5501"), Size: 100, Rate: 5000})
	if err != nil {
		t.Fatal(err)
	}

	// Scrapes run all along, racing the evictions (every second here).
	scrapes := make(chan error, 1)
	go func() {
		client := &http.Client{Timeout: 20 * time.Second}
		defer client.CloseIdleConnections()
		for ctx.Err() == nil {
			resp, err := client.Get(r.url)
			if err != nil {
				scrapes <- err
				return
			}
			resp.Body.Close()
			time.Sleep(20 * time.Millisecond)
		}
		scrapes <- nil
	}()

	const total, workers = 200, 4
	var (
		mu       sync.Mutex
		worst    time.Duration
		cookies  []uint64
		failures []error
	)
	names := make(chan int)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for i := range names {
				ns := fmt.Sprintf("%sc%d", p, i)
				host := fmt.Sprintf("%sh%d", p, i)
				t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
				err := errors.Join(
					ipCmd("netns", "add", ns),
					ipCmd("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", host, "netns", sw),
					ipCmd("-n", sw, "link", "set", host, "master", p+"br0", "up"),
					ipCmd("-n", ns, "link", "set", "eth0", "up"),
				)
				created := time.Now()
				var cookie uint64
				for err == nil {
					c, ok1 := r.a.attachedPort(ns, "eth0")
					_, ok2 := r.a.attachedPort(sw, host)
					if ok1 && ok2 {
						cookie = c
						break
					}
					if time.Since(created) > 10*time.Second {
						err = fmt.Errorf("%s: ports not attached within 10s (namespace side %v, bridge side %v): %s", ns, ok1, ok2, r.a.describe(ns))
					}
					time.Sleep(5 * time.Millisecond)
				}
				lat := time.Since(created)
				err = errors.Join(err, ipCmd("netns", "del", ns))
				mu.Lock()
				worst = max(worst, lat)
				cookies = append(cookies, cookie)
				if err != nil {
					failures = append(failures, err)
				}
				mu.Unlock()
			}
		})
	}
	for i := range total {
		names <- i
	}
	close(names)
	wg.Wait()
	for _, err := range failures {
		t.Error(err)
	}
	// Latency is measured, not asserted: it depends on the host's load
	// (a tcx attach waits for RCU grace periods under the RTNL lock). The
	// 10s bound above catches ports that are never attached.
	t.Logf("%d namespaces created and deleted; slowest attach %v", total, worst)
	if _, err := steady.Stop(); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := <-scrapes; err != nil {
		t.Errorf("scrape during churn: %v", err)
	}

	// Every churned namespace is forgotten and its port counters removed.
	deadline := time.Now().Add(10 * time.Second)
	for i := 0; i < total; i++ {
		for r.a.tracked(fmt.Sprintf("%sc%d", p, i)) {
			if time.Now().After(deadline) {
				t.Fatalf("namespace %sc%d still tracked", p, i)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	gone := map[uint64]bool{}
	for _, c := range cookies {
		gone[c] = true
	}
	// Attach results still queued for vanished namespaces undo their
	// attachment when they land, and the eviction pass drops any stale
	// port counters: give both a moment.
	deadline = time.Now().Add(5 * time.Second)
	for {
		ports, err := r.a.dp.Ports()
		if err != nil {
			t.Fatal(err)
		}
		var left []string
		for k := range ports {
			if gone[k.NetnsCookie] {
				left = append(left, fmt.Sprintf("%+v", k))
			}
		}
		if len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("port counters of deleted namespaces left: %v", left)
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if text := scrape(t, r.url); !strings.Contains(text, fmt.Sprintf(`nsflow_netns_flow_packets_total{dst_netns="%sb",protocol="udp",src_netns="%sa"}`, p, p)) {
		t.Errorf("steady flow not counted during churn")
	}
	http.DefaultClient.CloseIdleConnections()

	r.stop()
	for _, id := range progIDs {
		if prog, err := ebpf.NewProgramFromID(id); err == nil {
			prog.Close()
			t.Errorf("program %d still loaded after the agent stopped", id)
		}
	}
	deadline = time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > goroutines || openFDs(t) > fds {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("leak: goroutines %d -> %d, fds %d -> %d\n%s", goroutines, runtime.NumGoroutine(),
				fds, openFDs(t), buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// describe says what the agent knows of a namespace, for failure messages.
func (a *Agent) describe(label string) string {
	a.mu.RLock()
	defer a.mu.RUnlock()
	for _, s := range a.byInode {
		if s.label != label {
			continue
		}
		var links []string
		for _, p := range s.links {
			links = append(links, fmt.Sprintf("%s(kind %s, attached %v, attaching %v)", p.link.Name, p.link.Kind, p.att != nil, p.attaching))
		}
		return fmt.Sprintf("inode %d cookie %d path %s links %v early %d", s.ns.Inode, s.cookie, s.ns.Path, links, len(s.early))
	}
	return "not tracked"
}

// attachment returns the agent's attachment to ifname in the namespace
// labelled label, if any.
func (a *Agent) attachment(label, ifname string) *bpf.Attachment {
	a.mu.RLock()
	defer a.mu.RUnlock()
	for _, s := range a.byInode {
		for _, p := range s.links {
			if s.label == label && p.link.Name == ifname && p.att != nil {
				return p.att
			}
		}
	}
	return nil
}

// TestResyncReattachesReplacedInterface: notifications about a namespace
// are lost (a netlink overflow, here by dropping the subscription) while
// its veth is deleted and created anew at the same index. The resync that
// follows an overflow shows the same index; the agent sees that its
// programs went with the old device, attaches again, and counts.
func TestResyncReattachesReplacedInterface(t *testing.T) {
	testenv.RequireRoot(t)
	p := testenv.Name("ar")
	s := topotest.Up(t, parseSpec(t, pairTopology), p)
	pin, state := pins(t)
	r := startAgent(t, p, Config{PinPath: pin, StateFile: state})
	a, b := p+"a", p+"b"
	waitAttached(t, r.a, a, "eth-d")
	old := r.a.attachment(a, "eth-d")
	var st unix.Stat_t
	if err := unix.Stat(s.NetnsPath(a), &st); err != nil {
		t.Fatal(err)
	}
	r.a.mon.Remove(st.Ino) // what a's subscription would report is lost

	ib := func() int {
		out, err := exec.Command("ip", "-n", b, "-o", "link", "show", "eth-d").Output()
		if err != nil {
			t.Fatal(err)
		}
		i, _ := strconv.Atoi(strings.SplitN(string(out), ":", 2)[0])
		return i
	}()
	for _, args := range [][]string{
		{"-n", a, "link", "del", "eth-d"},
		{"-n", a, "link", "add", "eth-d", "index", strconv.Itoa(old.Ifindex), "type", "veth", "peer", "name", "eth-d", "netns", b, "index", strconv.Itoa(ib)},
	} {
		if err := ipCmd(args...); err != nil {
			t.Fatal(err)
		}
	}
	rewireDirect(t, a, b)
	m, err := discovery.NewMonitor(make(chan discovery.LinkEvent, 1))
	if err != nil {
		t.Fatal(err)
	}
	snap, err := m.Add(st.Ino, s.NetnsPath(a))
	if err != nil {
		t.Fatal(err)
	}
	m.Remove(st.Ino)
	r.a.linkEvents <- discovery.LinkEvent{Netns: st.Ino, Type: discovery.Resync, State: snap}

	var att *bpf.Attachment
	waitUntil(t, 15*time.Second, func() bool {
		if att = r.a.attachment(a, "eth-d"); att == nil || att == old {
			return false
		}
		alive, err := att.Alive()
		return alive && err == nil
	}, "the replaced eth-d was not attached again")
	const n = 100
	sendUDP(t, s, a, b, netip.MustParseAddrPort("198.18.40.2:5201"), n, 64)
	ps, ok, err := r.a.dp.Port(att.Key())
	if err != nil || !ok {
		t.Fatalf("port counters of the new eth-d: %v, %v", ok, err)
	}
	if got := ps.Get(bpf.Egress, bpf.IPv4, bpf.UDP).Packets; got != n {
		t.Errorf("the new eth-d sent %d UDP packets by nsflow's count, want %d", got, n)
	}
}

// TestVanished: the errors of attaching to an interface or namespace that
// is gone are told apart from real failures, which count as attach errors.
func TestVanished(t *testing.T) {
	testenv.RequireRoot(t)
	d, err := bpf.Load(bpf.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	name := testenv.Name("av")
	if err := ipCmd("netns", "add", name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ipCmd("netns", "del", name) })
	_, noIndex := d.AttachIndex("/run/netns/"+name, 9999)
	_, noNetns := d.AttachIndex("/run/netns/"+name+"-gone", 1)
	for _, tt := range []struct {
		what string
		err  error
		want bool
	}{
		{"no such index", noIndex, true},
		{"no such namespace", noNetns, true},
		{"device gone during a tcx attach", fmt.Errorf("bpf: attach: tcx TCXEgress: %w", unix.ENODEV), true},
		{"no capability", fmt.Errorf("bpf: attach: tcx TCXEgress: %w", unix.EPERM), false},
		{"anything else", errors.New("bpf: attach: datapath is closed"), false},
	} {
		if tt.err == nil {
			t.Fatalf("%s: no error", tt.what)
		}
		if got := vanished(tt.err); got != tt.want {
			t.Errorf("%s (%v): vanished %v, want %v", tt.what, tt.err, got, tt.want)
		}
	}
}

// TestFailedDetachKeepsPort: in tc mode a port is renamed out of the
// interface filter and its detach fails (netlink); it stays attached and
// counted. Renamed back before the retry, it is simply still attached:
// no second attach (which would fail on the filter still there), no
// attach error, every packet counted once.
func TestFailedDetachKeepsPort(t *testing.T) {
	testenv.RequireRoot(t)
	p := testenv.Name("af")
	s := topotest.Up(t, parseSpec(t, pairTopology), p)
	pin, state := pins(t)
	r := startAgent(t, p, Config{PinPath: pin, StateFile: state, AttachMode: bpf.ModeTC,
		Interface: Filter{Include: regexp.MustCompile(`^(eth|p)`)}, FlowIdleTimeout: 2 * time.Second})
	waitReady(t, r)
	a, b := p+"a", p+"b"
	waitAttached(t, r.a, a, "eth-d")
	att := r.a.attachment(a, "eth-d")

	bpf.FailNextTCDetach(errors.New("injected netlink failure"))
	if err := ipCmd("-n", a, "link", "set", "eth-d", "name", "zz-d"); err != nil {
		t.Fatal(err)
	}
	// The failed detach leaves the port attached, under its new name.
	waitUntil(t, 10*time.Second, func() bool { return r.a.attachment(a, "zz-d") == att }, "the port was not kept attached after its detach failed")
	if err := ipCmd("-n", a, "link", "set", "zz-d", "name", "eth-d"); err != nil {
		t.Fatal(err)
	}
	waitAttached(t, r.a, a, "eth-d")
	time.Sleep(2 * r.a.evictInterval()) // the retry's passes
	if got := r.a.attachment(a, "eth-d"); got != att {
		t.Errorf("attachment %p after the retry passes, want the first one %p, kept", got, att)
	}
	if n := r.a.attachErr.Load(); n != 0 {
		t.Errorf("%d attach errors", n)
	}
	const n = 40
	before, _, err := r.a.dp.Port(att.Key())
	if err != nil {
		t.Fatal(err)
	}
	sendUDP(t, s, a, b, netip.MustParseAddrPort("198.18.40.2:5801"), n, 64)
	after, _, err := r.a.dp.Port(att.Key())
	if err != nil {
		t.Fatal(err)
	}
	if got := after.Get(bpf.Egress, bpf.IPv4, bpf.UDP).Packets - before.Get(bpf.Egress, bpf.IPv4, bpf.UDP).Packets; got != n {
		t.Errorf("eth-d sent %d UDP packets by nsflow's count, want %d", got, n)
	}
}

// TestFailedDetachOfDeletedPortKeepsCounts: an interface is deleted and
// its detach fails twice; until a retry works, its series shows its
// counts (no dip) and the passes between must not delete its counters,
// which the retry then keeps under its labels.
func TestFailedDetachOfDeletedPortKeepsCounts(t *testing.T) {
	testenv.RequireRoot(t)
	p := testenv.Name("ag")
	s := topotest.Up(t, parseSpec(t, pairTopology), p)
	pin, state := pins(t)
	r := startAgent(t, p, Config{PinPath: pin, StateFile: state, AttachMode: bpf.ModeTC, FlowIdleTimeout: 2 * time.Second})
	waitReady(t, r)
	a, b := p+"a", p+"b"
	waitAttached(t, r.a, a, "eth-d")
	const n = 25
	sendUDP(t, s, a, b, netip.MustParseAddrPort("198.18.40.2:5802"), n, 64)
	value := func() string {
		if v, ok := sentIPv4(t, r, a, "eth-d"); ok {
			return strconv.FormatUint(v, 10)
		}
		return ""
	}
	if v := value(); v != strconv.Itoa(n) {
		t.Fatalf("before: eth-d sent %q IPv4 packets, want %d", v, n)
	}

	bpf.FailNextTCDetach(errors.New("injected netlink failure"))
	if err := ipCmd("-n", a, "link", "del", "eth-d"); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, func() bool { return r.a.attachment(a, "eth-d") == nil }, "eth-d still known after its deletion")
	// Until a retry works, its series shows its counts: no dip, which a
	// rate would read as a reset.
	if v := value(); v != strconv.Itoa(n) {
		t.Errorf("deleted, its detach failed: eth-d sent %q IPv4 packets, want its %d", v, n)
	}
	bpf.FailNextTCDetach(errors.New("injected netlink failure, again")) // the first retry's
	lingering := func() int {
		r.a.mu.RLock()
		defer r.a.mu.RUnlock()
		return len(r.a.lingering)
	}
	waitUntil(t, 3*r.a.evictInterval(), func() bool { return lingering() == 0 }, "the deleted eth-d was not detached by the retries")
	if v := value(); v != strconv.Itoa(n) {
		t.Errorf("after the retries: eth-d sent %q IPv4 packets, want its %d kept", v, n)
	}
}

// TestRetryDetachOfDiscardedAttachment: an attachment the agent discarded
// (its port went, or stopped being watched, while it attached) whose
// detach failed has no port state; the next pass detaches it. The retry
// used to read the missing namespace state, and brought the agent down.
func TestRetryDetachOfDiscardedAttachment(t *testing.T) {
	testenv.RequireRoot(t)
	p := testenv.Name("ar")
	s := topotest.Up(t, parseSpec(t, pairTopology), p)
	pin, state := pins(t)
	r := startAgent(t, p, Config{PinPath: pin, StateFile: state, FlowIdleTimeout: 2 * time.Second,
		Interface: Filter{Include: regexp.MustCompile(`^eth`)}})
	waitReady(t, r)
	a := p + "a"
	// An interface the agent does not watch, attached by hand, stands in
	// for the discarded port.
	if err := ipCmd("-n", a, "link", "add", "zz-x", "type", "veth", "peer", "name", "zz-y"); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("ip", "netns", "exec", a, "cat", "/sys/class/net/zz-x/ifindex").Output()
	if err != nil {
		t.Fatal(err)
	}
	idx, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatal(err)
	}
	att, err := r.a.dp.AttachIndex(s.NetnsPath(a), idx)
	if err != nil {
		t.Fatal(err)
	}
	r.a.results <- func() { r.a.pendDetach(pendingDetach{att: att}) } // on the event loop, as discard does
	waitUntil(t, 3*r.a.evictInterval(), func() bool {
		alive, err := att.Alive()
		if err != nil {
			t.Fatal(err)
		}
		return !alive
	}, "the discarded attachment was not detached by the passes")
	if !r.a.Ready() {
		t.Error("the agent is not ready after the retry")
	}
}

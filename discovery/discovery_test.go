package discovery

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nsflow/nsflow/internal/nsenter"
	"github.com/nsflow/nsflow/internal/testenv"
	"golang.org/x/sys/unix"
)

// ip runs ip(8): the tests build their objects with an independent tool.
func ip(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

func addNetns(t *testing.T, name string) {
	t.Helper()
	ip(t, "netns", "add", name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
}

// collect runs WatchNetns and records events until the test ends.
type collect struct {
	mu  sync.Mutex
	evs []NetnsEvent
}

func (c *collect) wait(t *testing.T, what string, timeout time.Duration, ok func(NetnsEvent) bool) NetnsEvent {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		c.mu.Lock()
		for _, e := range c.evs {
			if ok(e) {
				c.mu.Unlock()
				return e
			}
		}
		c.mu.Unlock()
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("no %s event within %v", what, timeout)
	return NetnsEvent{}
}

func startWatch(t *testing.T, cfg WatchConfig) *collect {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan NetnsEvent)
	c := &collect{}
	done := make(chan error, 1)
	go func() { done <- WatchNetns(ctx, cfg, ch) }()
	go func() {
		for e := range ch {
			c.mu.Lock()
			c.evs = append(c.evs, e)
			c.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("WatchNetns: %v", err)
		}
		close(ch)
	})
	return c
}

func TestWatchNamedAndUnnamed(t *testing.T) {
	testenv.RequireRoot(t)
	c := startWatch(t, WatchConfig{Interval: 200 * time.Millisecond})
	c.wait(t, "host", 2*time.Second, func(e NetnsEvent) bool { return e.Type == Added && e.Namespace.Host })

	// Named: seen through inotify plus the bind-mount retry, well within
	// one scan interval of a second.
	name := testenv.Name("dsc")
	start := time.Now()
	addNetns(t, name)
	added := c.wait(t, "named add", time.Second, func(e NetnsEvent) bool { return e.Type == Added && e.Namespace.Name == name })
	t.Logf("named namespace seen after %v", time.Since(start))
	if added.Namespace.Label() != name || added.Namespace.Path != "/run/netns/"+name {
		t.Errorf("named namespace = %+v", added.Namespace)
	}

	// Unnamed: a process in a fresh namespace (unshare -n) that nobody
	// bind-mounted, found through /proc and labelled by inode.
	cmd, ino := startUnshared(t)
	un := c.wait(t, "unnamed add", 2*time.Second, func(e NetnsEvent) bool { return e.Type == Added && e.Namespace.Inode == ino })
	if un.Namespace.Name != "" || un.Namespace.Label() != "netns-"+itoa(ino) ||
		len(un.Namespace.Pids) == 0 || un.Namespace.Pids[0] != cmd.Process.Pid || un.Namespace.Comms[0] != "sleep" {
		t.Errorf("unnamed namespace = %+v", un.Namespace)
	}

	// Both go away.
	ip(t, "netns", "del", name)
	c.wait(t, "named remove", 2*time.Second, func(e NetnsEvent) bool { return e.Type == Removed && e.Namespace.Name == name })
	cmd.Process.Kill()
	cmd.Wait()
	c.wait(t, "unnamed remove", 2*time.Second, func(e NetnsEvent) bool { return e.Type == Removed && e.Namespace.Inode == ino })
}

// A namespace that only a bind mount outside the named directory holds
// (a runtime's own directory, `unshare --net=FILE`) is watched like any
// other: seen as soon as the mount is there, under the mount's path, kept
// while the mount holds it, and removed with the mount. With a scan
// interval of a minute, only the mount table's notification can make
// these changes seen in time.
func TestWatchBindMountedElsewhere(t *testing.T) {
	testenv.RequireRoot(t)
	c := startWatch(t, WatchConfig{Interval: time.Minute})
	c.wait(t, "synced", 2*time.Second, func(e NetnsEvent) bool { return e.Type == Synced })
	dir := t.TempDir()
	mount := func(t *testing.T, from, file string) {
		t.Helper()
		if err := os.WriteFile(file, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := unix.Mount(from, file, "", unix.MS_BIND, ""); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Unmount(file, unix.MNT_DETACH) })
	}
	// release unmounts file, which alone holds namespace ino, and checks
	// that the namespace is removed then and not before.
	release := func(t *testing.T, file string, ino uint64) {
		t.Helper()
		c.mu.Lock()
		n := len(c.evs)
		c.mu.Unlock()
		if err := unix.Unmount(file, unix.MNT_DETACH); err != nil {
			t.Fatal(err)
		}
		c.wait(t, "remove", 2*time.Second, func(e NetnsEvent) bool { return e.Type == Removed && e.Namespace.Inode == ino })
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, e := range c.evs[:n] {
			if e.Namespace.Inode == ino && e.Type == Removed {
				t.Errorf("removed while a mount held it: %+v", e)
			}
		}
	}

	// mountedOnly makes a namespace that a process creates and leaves
	// bind-mounted at file when it exits, and returns its inode.
	mountedOnly := func(t *testing.T, file string) uint64 {
		t.Helper()
		if err := os.WriteFile(file, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("unshare", "--net="+file, "true").CombinedOutput(); err != nil {
			t.Fatalf("unshare --net=%s: %v: %s", file, err, out)
		}
		t.Cleanup(func() { unix.Unmount(file, unix.MNT_DETACH) })
		return inodeOf(t, file)
	}

	t.Run("held by a mount from the start", func(t *testing.T) {
		file := filepath.Join(dir, "only")
		ino := mountedOnly(t, file)
		added := c.wait(t, "add", 2*time.Second, func(e NetnsEvent) bool { return e.Type == Added && e.Namespace.Inode == ino })
		if added.Namespace.Path != file || added.Namespace.Name != "" || added.Namespace.Label() != "netns-"+itoa(ino) {
			t.Errorf("held by a mount at %s: %+v", file, added.Namespace)
		}
		// Another such namespace: once it is seen, the mount table was
		// read again, and the first must still be there.
		otherIno := mountedOnly(t, filepath.Join(dir, "other"))
		c.wait(t, "second add", 2*time.Second, func(e NetnsEvent) bool { return e.Type == Added && e.Namespace.Inode == otherIno })
		release(t, file, ino)
	})

	t.Run("named, then held by a mount elsewhere", func(t *testing.T) {
		name := testenv.Name("dsb")
		addNetns(t, name)
		ino := inodeOf(t, "/run/netns/"+name)
		c.wait(t, "named add", time.Second, func(e NetnsEvent) bool { return e.Type == Added && e.Namespace.Inode == ino })
		file := filepath.Join(dir, "held")
		mount(t, "/run/netns/"+name, file)
		// The name goes; the mount elsewhere keeps the namespace, which
		// stays known, now under the mount's path.
		ip(t, "netns", "del", name)
		held := c.wait(t, "update to the mount's path", 2*time.Second, func(e NetnsEvent) bool {
			return e.Type == Updated && e.Namespace.Inode == ino && e.Namespace.Name == ""
		})
		if held.Namespace.Path != file || inodeOf(t, held.Namespace.Path) != ino {
			t.Errorf("held by a mount at %s: %+v", file, held.Namespace)
		}
		release(t, file, ino)
	})
}

// startUnshared starts a process in a fresh namespace (unshare -n) that
// nobody bind-mounted, killed when the test ends, and returns it with its
// namespace's inode.
func startUnshared(t *testing.T) (*exec.Cmd, uint64) {
	t.Helper()
	cmd := exec.Command("unshare", "-n", "sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	ino, err := nsInodeEventually(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	return cmd, ino
}

// nsInodeEventually waits until unshare has switched namespaces.
func nsInodeEventually(pid int) (uint64, error) {
	self, err := nsInode("/proc/self/ns/net")
	if err != nil {
		return 0, err
	}
	for range 200 {
		ino, err := nsInode("/proc/" + itoa(uint64(pid)) + "/ns/net")
		if err == nil && ino != self {
			return ino, nil
		}
		time.Sleep(5 * time.Millisecond)
	}
	return 0, err
}

func itoa(v uint64) string { return strconv.FormatUint(v, 10) }

// inodeOf is the inode of the namespace at path ("" for the current one).
func inodeOf(t *testing.T, path string) uint64 {
	t.Helper()
	if path == "" {
		path = "/proc/self/ns/net"
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// startMonitor runs m until the test ends.
func startMonitor(t *testing.T, m *Monitor) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

func TestMonitorLinksAndAddrs(t *testing.T) {
	testenv.RequireRoot(t)
	a, b := testenv.Name("dma"), testenv.Name("dmb")
	addNetns(t, a)
	addNetns(t, b)
	ip(t, "-n", a, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", b)
	ip(t, "-n", a, "addr", "add", "198.18.7.1/24", "dev", "va")

	events := make(chan LinkEvent, 64)
	m, err := NewMonitor(events)
	if err != nil {
		t.Fatal(err)
	}
	startMonitor(t, m)
	// A subscription is for the namespace with the inode given only.
	if _, err := m.Add(inodeOf(t, "/run/netns/"+b), "/run/netns/"+a); !errors.Is(err, nsenter.ErrReplaced) {
		t.Errorf("subscribing to %s under %s's inode: %v, want ErrReplaced", a, b, err)
	}
	snap, err := m.Add(inodeOf(t, "/run/netns/"+a), "/run/netns/"+a)
	if err != nil {
		t.Fatal(err)
	}
	var va Link
	for _, l := range snap.Links {
		if l.Name == "va" {
			va = l
		}
	}
	if va.Kind != "veth" || va.PeerIndex == 0 || va.PeerNetnsID < 0 || va.BridgePort() {
		t.Errorf("va in snapshot = %+v", va)
	}
	want := Addr{Index: va.Index, Addr: netip.MustParseAddr("198.18.7.1"), Bits: 24}
	found := false
	for _, ad := range snap.Addrs {
		found = found || ad == want
	}
	if !found {
		t.Errorf("snapshot addresses %v lack %v", snap.Addrs, want)
	}

	// Live changes: a bridge with a port, an address, then deletions.
	ip(t, "-n", a, "link", "add", "br0", "type", "bridge")
	ip(t, "-n", a, "link", "add", "p0", "type", "veth", "peer", "name", "p1")
	ip(t, "-n", a, "link", "set", "p0", "master", "br0")
	ip(t, "-n", a, "addr", "add", "fd00:7::1/64", "dev", "va", "nodad")
	ip(t, "-n", a, "link", "del", "p0")
	wantSeen := map[string]bool{"port p0": false, "addr fd00:7::1": false, "del p0": false}
	deadline := time.After(3 * time.Second)
	for !allTrue(wantSeen) {
		select {
		case e := <-events:
			if e.Netns != inodeOf(t, "/run/netns/"+a) {
				t.Errorf("event for netns %d", e.Netns)
			}
			switch {
			case e.Type == LinkChanged && e.Link.Name == "p0" && e.Link.BridgePort() && e.Link.MasterIndex != 0:
				wantSeen["port p0"] = true
			case e.Type == AddrAdded && e.Addr.Addr == netip.MustParseAddr("fd00:7::1"):
				wantSeen["addr fd00:7::1"] = true
			case e.Type == LinkDeleted && e.Link.Name == "p0":
				wantSeen["del p0"] = true
			}
		case <-deadline:
			t.Fatalf("events missing: %v", wantSeen)
		}
	}

	m.Remove(inodeOf(t, "/run/netns/"+a))
	if m.Len() != 0 {
		t.Errorf("Len after Remove = %d", m.Len())
	}
}

func allTrue(m map[string]bool) bool {
	for _, v := range m {
		if !v {
			return false
		}
	}
	return true
}

// TestWatchStops checks that cancelling leaves no goroutine behind.
func TestWatchStops(t *testing.T) {
	testenv.RequireRoot(t)
	before := runtime.NumGoroutine()
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan NetnsEvent, 1024)
	done := make(chan error)
	go func() { done <- WatchNetns(ctx, WatchConfig{}, ch) }()
	events := make(chan LinkEvent)
	m, err := NewMonitor(events)
	if err != nil {
		t.Fatal(err)
	}
	mdone := make(chan error)
	go func() { mdone <- m.Run(ctx) }()
	if _, err := m.Add(inodeOf(t, ""), ""); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	cancel()
	<-done
	<-mdone
	time.Sleep(20 * time.Millisecond)
	if after := runtime.NumGoroutine(); after > before {
		t.Errorf("goroutines: %d before, %d after", before, after)
	}
}

// TestFailedProcScanKeepsNamespaces: a scan of /proc that fails (here
// /proc is gone; in life EMFILE or ENOMEM) reports no namespace removed,
// and the next good scan reports no change.
func TestFailedProcScanKeepsNamespaces(t *testing.T) {
	testenv.RequireRoot(t)
	name := testenv.Name("dps")
	addNetns(t, name)
	var st unix.Stat_t
	if err := unix.Stat("/run/netns/"+name, &st); err != nil {
		t.Fatal(err)
	}
	ino := st.Ino
	// A process in it, as /proc shows one: ns/net reads as net:[inode].
	proc := filepath.Join(t.TempDir(), "proc")
	for _, err := range []error{
		os.MkdirAll(filepath.Join(proc, "100", "ns"), 0o755),
		os.Symlink("net:["+itoa(ino)+"]", filepath.Join(proc, "100", "ns", "net")),
		os.Symlink("/proc/self", filepath.Join(proc, "self")),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	cfg := WatchConfig{ProcRoot: proc, NamedDir: t.TempDir()}.withDefaults()
	w := &watcher{cache: newNamedCache(), cfg: cfg, known: map[uint64]Namespace{}, pendingSince: map[string]time.Time{}}
	evs, _ := w.scan(true)
	if !slices.ContainsFunc(evs, func(e NetnsEvent) bool { return e.Type == Added && e.Namespace.Inode == ino }) {
		t.Fatalf("first scan: %+v, want the namespace added", evs)
	}
	if err := os.Rename(proc, proc+".away"); err != nil {
		t.Fatal(err)
	}
	if evs, _ := w.scan(true); len(evs) != 0 || !w.procsFailed {
		t.Errorf("scan without /proc: events %+v, failed %v; want none, and a failure to retry", evs, w.procsFailed)
	}
	if err := os.Rename(proc+".away", proc); err != nil {
		t.Fatal(err)
	}
	if evs, _ := w.scan(true); len(evs) != 0 {
		t.Errorf("scan with /proc back: %+v, want no change", evs)
	}
}

// TestMonitorOverflowResyncs: a burst of link changes that overflows the
// subscription socket while the consumer is slow is recovered from: once
// the burst ends, the view built from the events (resyncs included)
// matches the kernel's links, with none lost for good.
func TestMonitorOverflowResyncs(t *testing.T) {
	testenv.RequireRoot(t)
	name := testenv.Name("dmo")
	addNetns(t, name)
	const pairs = 1500
	var batch strings.Builder
	for i := range pairs {
		fmt.Fprintf(&batch, "link add a%d type veth peer name b%d\n", i, i)
	}

	events := make(chan LinkEvent, 16)
	m, err := NewMonitor(events)
	if err != nil {
		t.Fatal(err)
	}
	snap, err := m.Add(inodeOf(t, "/run/netns/"+name), "/run/netns/"+name)
	if err != nil {
		t.Fatal(err)
	}
	startMonitor(t, m)
	view := map[int]bool{}
	for _, l := range snap.Links {
		view[l.Index] = true
	}
	apply := func(e LinkEvent) (resync bool) {
		switch e.Type {
		case LinkChanged:
			view[e.Link.Index] = true
		case LinkDeleted:
			delete(view, e.Link.Index)
		case Resync:
			clear(view)
			for _, l := range e.State.Links {
				view[l.Index] = true
			}
			return true
		}
		return false
	}

	cmd := exec.Command("ip", "-n", name, "-batch", "-")
	cmd.Stdin = strings.NewReader(batch.String())
	burst := make(chan error, 1)
	go func() { burst <- cmd.Run() }()
	// A slow consumer during the burst, so that the socket overflows.
	resyncs := 0
	for slow := true; slow; {
		select {
		case err := <-burst:
			if err != nil {
				t.Fatalf("ip -batch: %v", err)
			}
			slow = false
		case e := <-events:
			time.Sleep(200 * time.Microsecond)
			if apply(e) {
				resyncs++
			}
		}
	}
	out, err := exec.Command("ip", "-n", name, "-o", "link", "show").Output()
	if err != nil {
		t.Fatal(err)
	}
	kernel := map[int]bool{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		idx, _, _ := strings.Cut(line, ":")
		i, err := strconv.Atoi(idx)
		if err != nil {
			t.Fatalf("ip -o link: %q", line)
		}
		kernel[i] = true
	}
	want := len(kernel)
	for deadline := time.After(10 * time.Second); !maps.Equal(view, kernel); {
		select {
		case e := <-events:
			if apply(e) {
				resyncs++
			}
		case <-deadline:
			t.Fatalf("the view has %d links after the burst, the kernel %d (%d resyncs)", len(view), want, resyncs)
		}
	}
	if resyncs == 0 {
		t.Errorf("the burst never overflowed the socket: the test proves nothing")
	}
	t.Logf("%d links, %d resyncs", want, resyncs)
}

// TestSyncedWaitsForProcScan: when the first scans of /proc fail, Synced
// (after which the agent drops the counters of ports it does not know)
// waits until one works, and the namespaces found through /proc come
// before it.
func TestSyncedWaitsForProcScan(t *testing.T) {
	testenv.RequireRoot(t)
	fails := 3
	scanProcs = func(root string) (map[uint64][]int, error) {
		if fails > 0 {
			fails--
			return nil, syscall.EMFILE
		}
		return procNamespaces(root)
	}
	t.Cleanup(func() { scanProcs = procNamespaces })
	_, ino := startUnshared(t)
	c := startWatch(t, WatchConfig{Interval: time.Hour}) // only the retries rescan
	c.wait(t, "synced", 5*time.Second, func(e NetnsEvent) bool { return e.Type == Synced })
	c.mu.Lock()
	defer c.mu.Unlock()
	found := false
	for _, e := range c.evs {
		if e.Type == Synced {
			break
		}
		found = found || (e.Type == Added && e.Namespace.Inode == ino)
	}
	if !found || fails != 0 {
		t.Errorf("synced after %d failed scans left; the unnamed namespace came before it: %v", fails, found)
	}
}

// List finds, at once, the host first, a named namespace by its name, an
// unnamed one by a process inside, and those the watch does not see: one
// held only by an open file descriptor, by a thread, or by a bind mount
// elsewhere.
func TestList(t *testing.T) {
	testenv.RequireRoot(t)
	name := testenv.Name("dsl")
	addNetns(t, name)
	cmd, ino := startUnshared(t)

	// Held by a descriptor: named, opened, then the name removed.
	held := testenv.Name("dsh")
	addNetns(t, held)
	f, err := os.Open("/run/netns/" + held)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	heldIno := inodeOf(t, "/run/netns/"+held)
	ip(t, "netns", "del", held)

	// Bind-mounted outside the named directory.
	mounted := testenv.Name("dsm")
	addNetns(t, mounted)
	mountedIno := inodeOf(t, "/run/netns/"+mounted)
	target := filepath.Join(t.TempDir(), "net ns") // a space, escaped in mountinfo
	if err := os.WriteFile(target, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("/run/netns/"+mounted, target, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(target, unix.MNT_DETACH) })
	ip(t, "netns", "del", mounted)

	// Held by a thread only: a child whose one other thread unshared.
	thread := exec.Command(os.Args[0])
	thread.Env = append(os.Environ(), "NSFLOW_THREAD_HOLDER=1")
	out, err := thread.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := thread.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { thread.Process.Kill(); thread.Wait() })
	var tIno uint64
	if _, err := fmt.Fscan(out, &tIno); err != nil || tIno == 0 {
		t.Fatalf("thread holder: %v", err)
	}

	got, err := List(WatchConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) == 0 || !got[0].Host || got[0].Inode != inodeOf(t, "") {
		t.Fatalf("first of %d namespaces is not the host: %+v", len(got), got)
	}
	find := func(ino uint64) *Namespace {
		for i := range got {
			if got[i].Inode == ino {
				return &got[i]
			}
		}
		return nil
	}
	if n := find(inodeOf(t, "/run/netns/"+name)); n == nil || n.Name != name || n.Path != "/run/netns/"+name {
		t.Errorf("named %s: %+v", name, n)
	}
	if n := find(ino); n == nil || n.Path != "/proc/"+itoa(uint64(cmd.Process.Pid))+"/ns/net" {
		t.Errorf("unnamed netns-%d: %+v", ino, n)
	}
	if n := find(heldIno); n == nil || inodeOf(t, n.Path) != heldIno {
		t.Errorf("held by a descriptor, netns-%d: %+v", heldIno, n)
	}
	if n := find(tIno); n == nil || !strings.Contains(n.Path, "/task/") {
		t.Errorf("held by a thread, netns-%d: %+v", tIno, n)
	}
	if n := find(mountedIno); n == nil || n.Path != target {
		t.Errorf("bind-mounted at %q, netns-%d: %+v", target, mountedIno, n)
	}
	if _, err := List(WatchConfig{ProcRoot: t.TempDir() + "/none"}); err == nil {
		t.Error("List with no procfs: no error")
	}
}

func TestMain(m *testing.M) {
	if os.Getenv("NSFLOW_THREAD_HOLDER") != "" {
		threadHolder()
		return
	}
	os.Exit(m.Run())
}

// threadHolder is TestList's child: its main thread stays in the
// namespace it started in, another thread enters a new one and holds it,
// and the child prints that namespace's inode.
func threadHolder() {
	ino := make(chan uint64)
	var hold func()
	hold = func() {
		runtime.LockOSThread() // never unlocked: the thread dies with its namespace
		if unix.Gettid() == unix.Getpid() {
			// The main thread: keep it, so that the next goroutine
			// gets another.
			go hold()
			select {}
		}
		var st unix.Stat_t
		if unix.Unshare(unix.CLONE_NEWNET) != nil || unix.Stat("/proc/thread-self/ns/net", &st) != nil {
			ino <- 0
			return
		}
		ino <- st.Ino
		select {}
	}
	go hold()
	fmt.Println(<-ino)
	time.Sleep(time.Minute)
}

// TestMonitorRetriesStale: a resync that failed (here by injection, after
// an overflow) is tried again within staleRetry, though no notification
// comes to trigger it: a namespace that went quiet gets its view back.
func TestMonitorRetriesStale(t *testing.T) {
	testenv.RequireRoot(t)
	name := testenv.Name("dms")
	addNetns(t, name)
	events := make(chan LinkEvent, 16)
	m, err := NewMonitor(events)
	if err != nil {
		t.Fatal(err)
	}
	ino := inodeOf(t, "/run/netns/"+name)
	if _, err := m.Add(ino, "/run/netns/"+name); err != nil {
		t.Fatal(err)
	}
	// As after an overflow: the next read resyncs, and that resync fails.
	m.mu.Lock()
	m.subs[m.byNs[ino]].stale = true
	m.failResyncs = 1
	m.mu.Unlock()
	startMonitor(t, m)
	ip(t, "-n", name, "link", "add", "d0", "type", "veth", "peer", "name", "d1")
	deadline := time.After(5 * time.Second)
	for {
		select {
		case e := <-events:
			if e.Type == Resync && slices.ContainsFunc(e.State.Links, func(l Link) bool { return l.Name == "d0" }) {
				return
			}
		case <-deadline:
			t.Fatal("no resync within 5 s of a failed one, with no notification since")
		}
	}
}

// TestWatchUnmountedName: a name unmounted in place (its file left, so no
// inotify event) is noticed with the mount table's change, not at the
// next full scan.
func TestWatchUnmountedName(t *testing.T) {
	testenv.RequireRoot(t)
	c := startWatch(t, WatchConfig{Interval: time.Minute})
	c.wait(t, "synced", 2*time.Second, func(e NetnsEvent) bool { return e.Type == Synced })
	name := testenv.Name("dsu")
	addNetns(t, name)
	file := "/run/netns/" + name
	ino := inodeOf(t, file)
	c.wait(t, "add", 2*time.Second, func(e NetnsEvent) bool { return e.Type == Added && e.Namespace.Inode == ino })
	if err := unix.Unmount(file, unix.MNT_DETACH); err != nil {
		t.Fatal(err)
	}
	c.wait(t, "remove", 3*time.Second, func(e NetnsEvent) bool { return e.Type == Removed && e.Namespace.Inode == ino })
}

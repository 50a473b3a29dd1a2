package agent

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nsflow/nsflow/discovery"
	"github.com/nsflow/nsflow/internal/testenv"
)

// TestSetupResumesOnNewPath: an unnamed namespace is opened through one
// of its processes. When the process discovery named it by has exited by
// the time the agent sets the namespace up, the setup fails; the next
// scan names it by a live process, and the agent then sets it up and
// attaches its veth.
//
// A procfs of the test's own stands in for /proc: pid 100's ns/net is a
// link to the namespace's "net:[INODE]" that cannot be opened (the
// process is gone), pid 200 is the real process holding the namespace.
func TestSetupResumesOnNewPath(t *testing.T) {
	testenv.RequireRoot(t)
	holder := exec.Command("unshare", "-n", "sleep", "600")
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { holder.Process.Kill(); holder.Wait() })
	pid := strconv.Itoa(holder.Process.Pid)
	var target string
	for range 200 { // until unshare has switched namespaces
		self, _ := os.Readlink("/proc/self/ns/net")
		if l, err := os.Readlink("/proc/" + pid + "/ns/net"); err == nil && l != self {
			target = l
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if target == "" {
		t.Fatal("unshare did not enter a new namespace")
	}
	ino := strings.TrimSuffix(strings.TrimPrefix(target, "net:["), "]")

	proc := filepath.Join(t.TempDir(), "proc")
	for _, err := range []error{
		os.MkdirAll(filepath.Join(proc, "100", "ns"), 0o755),
		os.Symlink(target, filepath.Join(proc, "100", "ns", "net")),
		os.Symlink("/proc/"+pid, filepath.Join(proc, "200")),
		os.Symlink("/proc/self", filepath.Join(proc, "self")),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	host := testenv.Name("ar")
	if err := ipCmd("link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", pid); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ipCmd("link", "del", host) })

	pin, state := pins(t)
	r := startAgent(t, "netns-"+ino, Config{PinPath: pin, StateFile: state,
		Discovery: discovery.WatchConfig{ProcRoot: proc, NamedDir: t.TempDir(), Interval: 100 * time.Millisecond}})
	if n := r.a.attachedCount(); n != 0 {
		t.Fatalf("%d ports attached through a process that is gone", n)
	}
	// Pid 100 exits: the next scan names the namespace by pid 200.
	if err := os.RemoveAll(filepath.Join(proc, "100")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for r.a.attachedCount() != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("the namespace's veth is not attached 10 s after it was named by a live process; metrics:\n%s",
				grepLines(scrape(t, r.url), "nsflow_netns_info"))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestSetupRetried: a namespace whose setup fails while it is still there
// (here: reading its cookie fails, twice) is counted as an attach error
// and set up again on the following ticks, until its veth is attached.
func TestSetupRetried(t *testing.T) {
	testenv.RequireRoot(t)
	prefix := testenv.Name("asr")
	ns, host := prefix+"-a", prefix+"h"
	if err := ipCmd("netns", "add", ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ipCmd("netns", "del", ns) })
	if err := ipCmd("link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ipCmd("link", "del", host) })

	var fails atomic.Int32
	fails.Store(2)
	orig := netnsCookieAt
	t.Cleanup(func() { netnsCookieAt = orig }) // after the agent stops
	netnsCookieAt = func(path string, ino uint64) (uint64, error) {
		if filepath.Base(path) == ns && fails.Add(-1) >= 0 {
			return 0, errors.New("injected failure")
		}
		return orig(path, ino)
	}
	pin, state := pins(t)
	r := startAgent(t, prefix, Config{PinPath: pin, StateFile: state, FlowIdleTimeout: 2 * time.Second})
	deadline := time.Now().Add(15 * time.Second)
	for r.a.attachedCount() != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("the namespace's veth is not attached 15 s after its setup failed (%d failures left to inject)", fails.Load())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if n := r.a.attachErr.Load(); n != 2 {
		t.Errorf("attach errors %d, want 2: one a failed setup", n)
	}
	waitLine(t, r.url, "nsflow_attach_errors_total 2", "nsflow_attach_errors_total")
}

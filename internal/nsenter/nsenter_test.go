package nsenter

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/nsflow/nsflow/internal/testenv"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// inode returns the inode of the calling thread's network namespace.
func inode(t *testing.T) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// newNamed creates the named namespace name and returns its path and
// inode; the caller deletes it.
func newNamed(t *testing.T, name string) (path string, ino uint64) {
	t.Helper()
	// NewNamed switches the calling thread into the new namespace: keep
	// the thread, and bring it home before anything else runs on it.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	home, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer home.Close()
	h, err := netns.NewNamed(name)
	if err != nil {
		t.Fatal(err)
	}
	h.Close()
	if err := netns.Set(home); err != nil {
		t.Fatal(err)
	}
	path = filepath.Join("/run/netns", name)
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return path, st.Ino
}

func TestDo(t *testing.T) {
	testenv.RequireRoot(t)
	name := testenv.Name("nsent")
	path, want := newNamed(t, name)
	t.Cleanup(func() { _ = netns.DeleteNamed(name) })
	before := inode(t)
	if before == want {
		t.Fatal("test thread is already in the target namespace")
	}

	var inside uint64
	if err := Do(path, func() error {
		inside = inode(t)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if inside != want {
		t.Errorf("fn ran in namespace inode %d, want %d", inside, want)
	}
	if got := inode(t); got != before {
		t.Errorf("caller's namespace changed from %d to %d", before, got)
	}

	// fn's error comes back unchanged.
	sentinel := errors.New("sentinel")
	if err := Do(path, func() error { return sentinel }); !errors.Is(err, sentinel) {
		t.Errorf("Do returned %v, want the sentinel", err)
	}
	// "" runs in the current namespace.
	var here uint64
	if err := Do("", func() error { here = inode(t); return nil }); err != nil || here != before {
		t.Errorf("Do(\"\") ran in %d (err %v), want %d", here, err, before)
	}
	// A missing namespace is an error naming the path, and fn never runs.
	missing := filepath.Join(t.TempDir(), "missing")
	ran := false
	err := Do(missing, func() error { ran = true; return nil })
	if err == nil || ran {
		t.Fatalf("Do(%s) = %v, ran=%v; want an error and no run", missing, err, ran)
	}
	if _, statErr := os.Stat(missing); !os.IsNotExist(statErr) {
		t.Fatal(statErr)
	}
}

// TestDoInode: DoInode runs fn in the namespace at a path only while that
// is the namespace with the inode given; once the name is deleted and
// made anew, the path leads to another namespace and fn does not run.
func TestDoInode(t *testing.T) {
	testenv.RequireRoot(t)
	name := testenv.Name("nsino")
	path, first := newNamed(t, name)
	t.Cleanup(func() { netns.DeleteNamed(name) })
	var in uint64
	if err := DoInode(path, first, func() error { in = inode(t); return nil }); err != nil || in != first {
		t.Fatalf("DoInode in its own namespace: ran in %d, %v; want %d", in, err, first)
	}
	if err := netns.DeleteNamed(name); err != nil {
		t.Fatal(err)
	}
	_, second := newNamed(t, name)
	ran := false
	if err := DoInode(path, first, func() error { ran = true; return nil }); !errors.Is(err, ErrReplaced) || ran {
		t.Errorf("DoInode after %s was made anew (inode %d, was %d): %v, ran %v; want ErrReplaced, not run", name, second, first, err, ran)
	}
	if err := DoInode("", inode(t), func() error { return nil }); err != nil {
		t.Errorf("DoInode in the current namespace: %v", err)
	}
}

// TestNewHandle: the handle's socket lives in the target namespace (a
// fresh one has lo alone), and the caller's thread stays where it was.
func TestNewHandle(t *testing.T) {
	testenv.RequireRoot(t)
	name := testenv.Name("nsenh")
	path, _ := newNamed(t, name)
	t.Cleanup(func() { _ = netns.DeleteNamed(name) })
	target, err := netns.GetFromPath(path)
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()
	before := inode(t)
	h, err := NewHandle(target, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	if len(links) != 1 || links[0].Attrs().Name != "lo" {
		names := []string{}
		for _, l := range links {
			names = append(names, l.Attrs().Name)
		}
		t.Errorf("links seen through the handle: %v, want [lo] (a fresh namespace's)", names)
	}
	if got := inode(t); got != before {
		t.Errorf("caller's namespace changed from %d to %d", before, got)
	}
}

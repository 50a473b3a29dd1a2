// Package nsenter runs Go code inside another network namespace.
//
// setns(2) changes the namespace of one OS thread only, and the Go runtime
// moves goroutines between threads freely. So the work runs on a dedicated
// goroutine whose thread is locked for its whole life: if switching back to
// the original namespace fails, the thread stays locked and the runtime
// destroys it when the goroutine exits, so no other goroutine ever runs in
// the wrong namespace.
//
// Goroutines that fn starts do not inherit the namespace, but sockets and
// netlink handles opened inside fn stay bound to it after fn returns.
package nsenter

import (
	"errors"
	"fmt"
	"runtime"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Do runs fn with the calling thread in the network namespace at path
// (for example /run/netns/ns1 or /proc/1234/ns/net). An empty path means
// the namespace of the current process, and fn runs directly.
func Do(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	h, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open network namespace %s: %w", path, err)
	}
	defer h.Close()
	return DoHandle(h, fn)
}

// ErrReplaced means the namespace at a path is not the one expected: it
// was deleted and another was made under its path (`ip netns del` and
// `add` of one name), or a pid was reused.
var ErrReplaced = errors.New("another namespace is there now")

// DoInode is Do for the namespace with inode ino only: if the namespace at
// path is another, it returns ErrReplaced without running fn. The inode
// is read from the opened namespace, so no other can come in between.
func DoInode(path string, ino uint64, fn func() error) error {
	if path == "" {
		// This thread's, which is the host's: the goroutine is not
		// locked. /proc/self is the main thread's, which may be another
		// goroutine's, inside a namespace, at this very moment.
		path = "/proc/thread-self/ns/net"
	}
	h, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open network namespace %s: %w", path, err)
	}
	defer h.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(h), &st); err != nil {
		return fmt.Errorf("network namespace %s: %w", path, err)
	}
	if st.Ino != ino {
		return fmt.Errorf("network namespace %s: inode %d, not %d: %w", path, st.Ino, ino, ErrReplaced)
	}
	return DoHandle(h, fn)
}

// DoHandle is Do for an already opened namespace handle.
func DoHandle(target netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// The thread is unlocked only once it is back home; otherwise
		// exiting the goroutine with the lock held makes the runtime
		// discard the thread.
		orig, err := netns.Get()
		if err != nil {
			errc <- fmt.Errorf("get current network namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(target); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter network namespace: %w", err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			if ferr == nil {
				ferr = fmt.Errorf("return to original network namespace: %w", err)
			}
			errc <- ferr
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// NewHandle opens a netlink handle whose sockets live in the namespace
// target (all families, or those given). netlink.NewHandleAt does the
// same on a thread it unlocks even when it could not switch back; this
// goes through DoHandle, which retires such a thread.
func NewHandle(target netns.NsHandle, families ...int) (*netlink.Handle, error) {
	var h *netlink.Handle
	err := DoHandle(target, func() (err error) {
		h, err = netlink.NewHandle(families...)
		return err
	})
	return h, err
}

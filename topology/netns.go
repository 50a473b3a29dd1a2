package topology

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/nsflow/nsflow/internal/nsenter"
)

// nsConn is an open network namespace: a file descriptor (to place veth
// peers there) and a netlink handle whose socket lives there.
type nsConn struct {
	name string // declared name; HostNamespace for the host
	fd   int
	h    *netlink.Handle
	// sock is a second route socket there, for vethAdd.
	sock *nl.SocketHandle
}

// do runs fn inside the namespace.
func (c *nsConn) do(fn func() error) error {
	return nsenter.DoHandle(netns.NsHandle(c.fd), fn)
}

func (c *nsConn) close() {
	if c == nil {
		return
	}
	if c.h != nil {
		c.h.Close()
	}
	if c.sock != nil {
		c.sock.Close()
	}
	if c.fd >= 0 {
		unix.Close(c.fd)
	}
}

// openHost opens the host namespace, which every goroutine not locked to
// a thread is in.
func openHost() (*nsConn, error) {
	// This thread's (/proc/self is the main thread's, which another
	// goroutine may have inside a namespace just now).
	fd, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open host network namespace: %w", err)
	}
	c := &nsConn{name: HostNamespace, fd: fd}
	if c.h, err = netlink.NewHandle(unix.NETLINK_ROUTE); err == nil {
		c.sock, err = routeSocket(netns.None())
	}
	if err != nil {
		c.close()
		return nil, fmt.Errorf("netlink: %w", err)
	}
	return c, nil
}

// openNetns opens an existing named namespace at path (without the
// second socket: see openSock).
func openNetns(name, path string) (*nsConn, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open namespace %s: %w", path, err)
	}
	c := &nsConn{name: name, fd: fd}
	if c.h, err = nsenter.NewHandle(netns.NsHandle(fd), unix.NETLINK_ROUTE); err != nil {
		c.close()
		return nil, fmt.Errorf("namespace %s: %w", path, err)
	}
	return c, nil
}

// openIfPresent is openNetns for a namespace that may not exist (a
// topology partly or not up): it returns nil, nil when path is missing or
// is a leftover empty file, which holds no namespace.
func openIfPresent(name, path string) (*nsConn, error) {
	if _, err := os.Lstat(path); errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if leftover, err := leftoverNetnsFile(path); err != nil || leftover {
		return nil, err
	}
	return openNetns(name, path)
}

// createNetns creates a network namespace bind-mounted at path, with its
// loopback up and marked with the owner's alias and sysctls applied. The
// work happens on a locked thread that unshares into the new namespace,
// so the namespace is configured without another setns per step.
func createNetns(name, path, marker string, sysctls map[string]string) (*nsConn, error) {
	type result struct {
		c   *nsConn
		err error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			done <- result{err: fmt.Errorf("get current network namespace: %w", err)}
			return
		}
		defer orig.Close()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			done <- result{err: fmt.Errorf("unshare network namespace: %w", err)}
			return
		}
		c, err := setupNetns(name, path, marker, sysctls)
		if serr := netns.Set(orig); serr != nil {
			// The thread stays locked: the runtime discards it on exit
			// rather than let other goroutines run in the new namespace.
			if err == nil {
				err = fmt.Errorf("return to original network namespace: %w", serr)
				c.close()
				unmountNetns(path)
			}
			done <- result{err: err}
			return
		}
		runtime.UnlockOSThread()
		done <- result{c, err}
	}()
	r := <-done
	return r.c, r.err
}

// setupNetns runs on the locked thread inside the new namespace. The
// namespace is fully set up (loopback up and marked, sysctls written)
// before it gets its name under /run/netns: a run killed at any point
// leaves either nothing (the namespace dies with the process), an empty
// file (see leftoverNetnsFile), or a namespace that carries the marker,
// which up and down then take as the topology's.
func setupNetns(name, path, marker string, sysctls map[string]string) (c *nsConn, err error) {
	c = &nsConn{name: name, fd: -1}
	defer func() {
		if err != nil {
			c.close()
			c = nil
		}
	}()
	self := fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid())
	if c.fd, err = unix.Open(self, unix.O_RDONLY|unix.O_CLOEXEC, 0); err != nil {
		return c, fmt.Errorf("namespace %s: open: %w", name, err)
	}
	// A socket opened here stays in this namespace.
	if c.h, err = netlink.NewHandle(unix.NETLINK_ROUTE); err != nil {
		return c, fmt.Errorf("namespace %s: netlink: %w", name, err)
	}
	if c.sock, err = routeSocket(netns.None()); err != nil {
		return c, fmt.Errorf("namespace %s: netlink: %w", name, err)
	}
	// The loopback's alias marks the namespace as owned by this topology.
	if err := linkSet(c.sock, loopbackIndex, marker); err != nil {
		return c, fmt.Errorf("namespace %s: loopback up and marked: %w", name, err)
	}
	// This thread is in the new namespace: its /proc/sys/net is the new one.
	// The kernel's defaults first, then the file's.
	if err := writeBaseline(name); err != nil {
		return c, err
	}
	if err := writeSysctls(name, sysctls); err != nil {
		return c, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return c, err
	}
	// Between the file's creation and the mount it looks like a leftover:
	// the shared lock keeps another run from removing it meanwhile.
	release, err := lockNetnsFiles(unix.LOCK_SH)
	if err != nil {
		return c, err
	}
	defer release()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_RDONLY, 0o444)
	if errors.Is(err, os.ErrExist) {
		return c, fmt.Errorf("namespace %s: %s appeared while this run made it (another run of a topology with that namespace?)", name, path)
	}
	if err != nil {
		return c, fmt.Errorf("namespace %s: %w", path, err)
	}
	f.Close()
	crashHook("created")
	if err := unix.Mount(self, path, "none", unix.MS_BIND, ""); err != nil {
		os.Remove(path)
		return c, fmt.Errorf("bind-mount namespace at %s: %w", path, err)
	}
	crashHook("mounted")
	return c, nil
}

// baselineSysctls are the kernel's own defaults of what decides where a
// namespace's packets go. A new namespace copies the host's IPv4 conf.all
// and conf.default (and with net.core.devconf_inherit_init_net 1 its IPv6
// ones), so on a host that forwards (a Docker or Kubernetes node), or
// filters by reverse path, every namespace would do so too, whatever the
// file says. up sets them in each namespace it creates, before the file's
// sysctls (writeBaseline).
var baselineSysctls = [][2]string{
	{"net.ipv4.conf.all.forwarding", "0"}, // also ip_forward, and conf.default if it changes
	{"net.ipv4.conf.default.forwarding", "0"},
	{"net.ipv4.conf.all.rp_filter", "0"},
	{"net.ipv4.conf.default.rp_filter", "0"},
	{"net.ipv4.conf.all.arp_ignore", "0"},
	{"net.ipv4.conf.default.arp_ignore", "0"},
	{"net.ipv4.conf.all.arp_announce", "0"},
	{"net.ipv4.conf.default.arp_announce", "0"},
	{"net.ipv4.conf.all.arp_filter", "0"},
	{"net.ipv4.conf.default.arp_filter", "0"},
	{"net.ipv4.conf.all.proxy_arp", "0"},
	{"net.ipv4.conf.default.proxy_arp", "0"},
	{"net.ipv4.conf.all.accept_local", "0"},
	{"net.ipv4.conf.default.accept_local", "0"},
	{"net.ipv4.conf.all.route_localnet", "0"},
	{"net.ipv4.conf.default.route_localnet", "0"},
	{"net.ipv6.conf.all.forwarding", "0"},
	{"net.ipv6.conf.default.forwarding", "0"},
	{"net.ipv6.conf.all.disable_ipv6", "0"},
	{"net.ipv6.conf.default.disable_ipv6", "0"},
	{"net.ipv6.conf.default.addr_gen_mode", "0"},
	{"net.ipv6.conf.default.force_forwarding", "0"}, // kernel 6.17 and later
}

// writeBaseline sets baselineSysctls in the calling thread's namespace.
// Only values that differ are written, so a read-only /proc/sys (some
// containers) fails only where it must; a key the kernel lacks (no IPv6,
// an older kernel) is skipped.
func writeBaseline(ns string) error {
	for _, kv := range baselineSysctls {
		b, err := os.ReadFile(sysctlFile(kv[0]))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("namespace %s: sysctl %s: %w", ns, kv[0], err)
		}
		if sysctlEqual(string(b), kv[1]) {
			continue
		}
		if err := os.WriteFile(sysctlFile(kv[0]), []byte(kv[1]), 0); err != nil {
			return fmt.Errorf("namespace %s: sysctl %s=%q (the kernel's default; the host's differs): %w", ns, kv[0], kv[1], err)
		}
	}
	return nil
}

// netnsFilesLock is taken shared by every namespace being created, from
// its file's creation to its mount, and exclusively by the removal of a
// leftover file, which so never takes a namespace another run is making.
// A run that dies releases it.
const netnsFilesLock = "/run/nsflow/netns-files.lock"

func lockNetnsFiles(how int) (release func(), err error) {
	if err := os.MkdirAll(filepath.Dir(netnsFilesLock), 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(netnsFilesLock, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", netnsFilesLock, err)
	}
	if err := unix.Flock(int(f.Fd()), how); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", netnsFilesLock, err)
	}
	return func() { f.Close() }, nil
}

// leftoverNetnsFile reports whether path is what a run killed between
// creating a namespace's file and mounting the namespace on it leaves: a
// plain empty file with nothing mounted on it. (A mounted namespace also
// looks like an empty regular file to stat, but it is a mount root, as
// anything mounted there is.) A missing path is not one. Only a creator
// of the same name caught between its own create and mount would look
// the same; the name is the topology's to use.
func leftoverNetnsFile(path string) (bool, error) {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return false, nil
		}
		return false, fmt.Errorf("stat %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Size != 0 {
		return false, nil
	}
	var stx unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, path, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_TYPE, &stx); err != nil {
		return false, fmt.Errorf("statx %s: %w", path, err)
	}
	// A kernel that cannot tell a mount root (before 5.8) gets the benefit
	// of the doubt: the file stays.
	if stx.Attributes_mask&unix.STATX_ATTR_MOUNT_ROOT == 0 || stx.Attributes&unix.STATX_ATTR_MOUNT_ROOT != 0 {
		return false, nil
	}
	return true, nil
}

// removeLeftoverNetns removes path if it is a leftover empty file (see
// leftoverNetnsFile), so that the namespace counts as missing.
func removeLeftoverNetns(path string) error {
	release, err := lockNetnsFiles(unix.LOCK_EX)
	if err != nil {
		return err
	}
	defer release()
	leftover, err := leftoverNetnsFile(path)
	if err != nil || !leftover {
		return err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove the empty file %s left by an interrupted up: %w", path, err)
	}
	return nil
}

// crashHook, when a test sets it, is called at the steps of creating a
// namespace ("created": its file exists; "mounted": the namespace is
// mounted on it): the tests' way to kill up at a chosen point.
var crashHook = func(stage string) {}

// unmountNetns removes a namespace's bind mount; the kernel destroys the
// namespace, and the interfaces in it, once nothing else holds it.
// A mount or file already gone is success.
func unmountNetns(path string) error {
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil &&
		!errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// openSock opens c's second route socket, which building needs.
func (c *nsConn) openSock() (err error) {
	c.sock, err = routeSocket(netns.NsHandle(c.fd))
	if err != nil {
		return fmt.Errorf("namespace %s: netlink: %w", c.name, err)
	}
	return nil
}

// netnsOwner returns the owner marker on a namespace's loopback ("" when
// there is none: the namespace was not created by nsflow).
func netnsOwner(c *nsConn) (string, error) {
	lo, err := c.h.LinkByName("lo")
	if err != nil {
		return "", fmt.Errorf("namespace %s: loopback: %w", c.name, err)
	}
	return lo.Attrs().Alias, nil
}

// markerFor is the alias nsflow puts on every interface (and namespace
// loopback) that topology name creates: the proof of ownership for down.
func markerFor(name string) string { return "nsflow:" + name }

// OwnerOf names the topology that made the namespace whose loopback alias
// is alias: "" when nsflow did not make it.
func OwnerOf(alias string) string {
	owner, _ := strings.CutPrefix(alias, "nsflow:")
	if owner == alias {
		return ""
	}
	return owner
}

package topology

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// TestUpRefusesIPv6WhereTheHostDisablesIt: on a host that disables IPv6,
// a declared host-side IPv6 address is refused before anything is built,
// naming the sysctl that disables it: conf.default's for an interface up
// would create, the interface's own for one that exists. The host here
// is a fresh namespace that the test's thread enters: the host of Up is
// the namespace of the thread that calls it.
func TestUpRefusesIPv6WhereTheHostDisablesIt(t *testing.T) {
	ctx := context.Background()
	const v4 = `
name: v6off
namespaces: [{name: a}]
bridges: [{name: br, addresses: [198.18.96.1/24]}]
links:
  - endpoints: [{namespace: a, interface: eth0, addresses: [198.18.96.2/24]}, {bridge: br, interface: pa}]
`
	s4 := prefixedSpec(t, v4)
	p := prefixOf(s4)
	s6 := prefixedCopy(t, strings.Replace(v4, "[198.18.96.1/24]", `[198.18.96.1/24, "fd00:96::1/64"]`, 1), p)

	if _, err := os.Stat("/proc/sys/net/ipv6"); err != nil {
		t.Fatalf("this test needs a kernel with IPv6: %v", err)
	}
	setIPv6 := func(key, v string) {
		if err := os.WriteFile(sysctlFile("net.ipv6.conf."+key+".disable_ipv6"), []byte(v), 0); err != nil {
			t.Error(err)
		}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		// Never unlocked: the thread ends with the goroutine, and its
		// namespace with it.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			t.Error(err)
			return
		}
		setIPv6("all", "1") // which sets default too
		_, err := Up(ctx, s6, Options{})
		want := "bridges[0].addresses[1]: fd00:96::1/64 is IPv6, and the host disables IPv6 for new host interfaces such as " + p + "br (net.ipv6.conf.default.disable_ipv6 = 1) (nothing was created)"
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("up with IPv6 off in the host: %v\nwant %q", err, want)
		}
		// Not hostObjects, which may t.Fatal: this is not the test's
		// goroutine. Nothing is created, the state record included.
		if ents, _ := os.ReadDir(NetnsDir); slices.ContainsFunc(ents, func(e os.DirEntry) bool { return strings.HasPrefix(e.Name(), p) }) {
			t.Errorf("a namespace named %s... was created", p)
		}
		if links, err := netlink.LinkList(); err != nil || slices.ContainsFunc(links, func(l netlink.Link) bool { return strings.HasPrefix(l.Attrs().Name, p) }) {
			t.Errorf("an interface named %s... was created in the host (or: %v)", p, err)
		}
		if _, err := os.Stat(statePath(s6.Name)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("state record of the refused run: %v, want none", err)
		}

		setIPv6("all", "0")
		if _, err := Up(ctx, s4, Options{}); err != nil {
			t.Error(err)
			return
		}
		setIPv6(p+"br", "1")
		_, err = Up(ctx, s6, Options{})
		want = "bridges[0].addresses[1]: fd00:96::1/64 is IPv6, and the host disables IPv6 on host interface " + p + "br (net.ipv6.conf." + p + "br.disable_ipv6 = 1)"
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("up with IPv6 off on the existing bridge: %v\nwant %q", err, want)
		}
		setIPv6(p+"br", "0")
		if _, err := Up(ctx, s6, Options{}); err != nil {
			t.Errorf("up once IPv6 is back on: %v", err)
		}
		if _, err := Down(ctx, s6, Options{}); err != nil {
			t.Error(err)
		}
	}()
	<-done
}

// TestUpRefusesIPv6OnARecreatedHostEnd: a host veth end whose namespace
// was deleted (ip netns del; here something still holds the namespace,
// so the end lives on) is made anew by up, and the new end starts with
// conf.default's disable_ipv6, not the old end's: an IPv6 address on it
// is refused when the host disables IPv6 for new interfaces, although
// the old end allows it.
func TestUpRefusesIPv6OnARecreatedHostEnd(t *testing.T) {
	ctx := context.Background()
	const v4 = `
name: v6re
namespaces: [{name: a}]
links:
  - endpoints: [{namespace: a, interface: eth0, addresses: [198.18.97.2/30]}, {namespace: host, interface: ha, addresses: [198.18.97.1/30]}]
`
	s4 := prefixedSpec(t, v4)
	p := prefixOf(s4)
	s6 := prefixedCopy(t, strings.Replace(v4, "[198.18.97.1/30]", `[198.18.97.1/30, "fd00:97::1/64"]`, 1), p)
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // never unlocked: the thread ends with its namespace
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			t.Error(err)
			return
		}
		if _, err := Up(ctx, s4, Options{}); err != nil {
			t.Error(err)
			return
		}
		held, err := os.Open(s4.NetnsPath(p + "a"))
		if err != nil {
			t.Error(err)
			return
		}
		defer held.Close()
		if err := exec.Command("ip", "netns", "del", p+"a").Run(); err != nil {
			t.Error(err)
			return
		}
		if err := os.WriteFile(sysctlFile(defaultDisableIPv6), []byte("1"), 0); err != nil {
			t.Error(err)
			return
		}
		_, err = Up(ctx, s6, Options{})
		want := "links[0].endpoints[1].addresses[1]: fd00:97::1/64 is IPv6, and the host disables IPv6 for new host interfaces such as " + p + "ha (net.ipv6.conf.default.disable_ipv6 = 1) (nothing was created)"
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("up over the lone host end: %v\nwant %q", err, want)
		}
		held.Close()
		if _, err := Down(ctx, s4, Options{}); err != nil {
			t.Error(err)
		}
	}()
	<-done
}

package topology

import (
	"context"
	"os"
	"runtime"
	"strings"
	"testing"

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
		if got := hostObjects(t, p); len(got) != 0 {
			t.Errorf("created: %q", got)
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

package topology

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nsflow/nsflow/internal/nsenter"
	"github.com/nsflow/nsflow/internal/testenv"
	"github.com/vishvananda/netlink"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// probeTimeout bounds one reachability probe. Inside a topology a reply
// takes microseconds; the bound only decides how long "unreachable" waits.
const probeTimeout = 3 * time.Second

// testPrefix returns a unique prefix ("t" + 6 hex digits + "-", 8 bytes),
// short enough that the seed's host interface names stay under 16 bytes.
func testPrefix() string { return testenv.Name("t") + "-" }

// prefixedSpec loads a topology file or YAML text as a copy with a unique
// prefix, and registers a Down of it that runs even if the test fails.
func prefixedSpec(t *testing.T, yamlOrPath string) *Spec {
	t.Helper()
	testenv.RequireRoot(t)
	var (
		s   *Spec
		err error
	)
	if strings.HasSuffix(yamlOrPath, ".yaml") {
		s, err = Load(yamlOrPath)
	} else if s, err = Parse([]byte(yamlOrPath)); err == nil {
		err = s.Validate()
	}
	if err != nil {
		t.Fatal(err)
	}
	p, err := s.WithPrefix(testPrefix())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := Down(context.Background(), p, Options{}); err != nil {
			t.Errorf("cleanup: down %s: %v", p.Name, err)
		}
	})
	return p
}

// hostObjects lists what exists on the host under the test's unique
// prefix: named namespaces, host interfaces and state records. Other
// tests run on this host at the same time, so nothing else is counted.
func hostObjects(t *testing.T, prefix string) []string {
	t.Helper()
	var out []string
	entries, err := os.ReadDir(NetnsDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			out = append(out, "netns "+e.Name())
		}
	}
	links, err := retryDump(netlink.LinkList)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, prefix) {
			out = append(out, "link "+l.Attrs().Name)
		}
	}
	for _, f := range []string{statePath(prefix + "seed"), lockPath(prefix + "seed")} {
		if _, err := os.Stat(f); err == nil {
			out = append(out, "state "+f)
		}
	}
	slices.Sort(out)
	return out
}

// prefixOf returns the unique prefix of a spec made by prefixedSpec.
func prefixOf(s *Spec) string { return s.Name[:8] }

// inNS runs fn in the named namespace of s (the host for HostNamespace).
func inNS(t *testing.T, s *Spec, ns string, fn func() error) {
	t.Helper()
	if err := nsenter.Do(s.NetnsPath(ns), fn); err != nil {
		t.Fatalf("in namespace %s: %v", ns, err)
	}
}

// serveTCP listens on addr inside namespace ns and answers every
// connection with reply. The listener closes when the test ends (before
// the topology's Down, which a live socket would otherwise delay).
func serveTCP(t *testing.T, s *Spec, ns, addr, reply string) net.Listener {
	t.Helper()
	var ln net.Listener
	inNS(t, s, ns, func() (err error) {
		ln, err = net.Listen("tcp", addr)
		return err
	})
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, reply)
			c.Close()
		}
	}()
	return ln
}

// dialTCP connects from namespace ns to addr and returns what the server
// says.
func dialTCP(s *Spec, ns, addr string) (string, error) {
	var c net.Conn
	err := nsenter.Do(s.NetnsPath(ns), func() (err error) {
		c, err = net.DialTimeout("tcp", addr, probeTimeout)
		return err
	})
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(probeTimeout))
	b, err := io.ReadAll(c)
	return string(b), err
}

// ping sends one ICMP or ICMPv6 echo request from namespace ns to dst on
// a raw socket and waits for the matching reply.
func ping(s *Spec, ns string, dst netip.Addr) error {
	network, listen, proto := "ip4:icmp", "0.0.0.0", 1
	var typ, reply icmp.Type = ipv4.ICMPTypeEcho, ipv4.ICMPTypeEchoReply
	if dst.Is6() {
		network, listen, proto = "ip6:ipv6-icmp", "::", 58
		typ, reply = ipv6.ICMPTypeEchoRequest, ipv6.ICMPTypeEchoReply
	}
	var c *icmp.PacketConn
	if err := nsenter.Do(s.NetnsPath(ns), func() (err error) {
		c, err = icmp.ListenPacket(network, listen)
		return err
	}); err != nil {
		return err
	}
	defer c.Close()
	id, seq := os.Getpid()&0xffff, int(time.Now().UnixNano()&0x7fff)
	msg, err := (&icmp.Message{Type: typ, Body: &icmp.Echo{ID: id, Seq: seq, Data: []byte("nsflow")}}).Marshal(nil)
	if err != nil {
		return err
	}
	if _, err := c.WriteTo(msg, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
		return err
	}
	c.SetReadDeadline(time.Now().Add(probeTimeout))
	buf := make([]byte, 1500)
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			return fmt.Errorf("no echo reply from %s: %w", dst, err)
		}
		m, err := icmp.ParseMessage(proto, buf[:n])
		if err != nil || m.Type != reply {
			continue
		}
		if e, ok := m.Body.(*icmp.Echo); ok && e.Seq == seq && from.(*net.IPAddr).IP.Equal(dst.AsSlice()) {
			return nil
		}
	}
}

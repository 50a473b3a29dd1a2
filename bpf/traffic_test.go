package bpf

import (
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Minimal traffic for the exactness tests: known counts and sizes, sent
// from sockets opened inside the namespaces.

// udpTransfer sends count datagrams of size payload bytes from src to dst
// and waits until dst received them all. With gsoSegs > 1 each send is one
// UDP GSO super-packet of gsoSegs datagrams (UDP_SEGMENT).
func udpTransfer(t testing.TB, v6 bool, src, dst *end, port, count, size, gsoSegs int) {
	t.Helper()
	var rx *net.UDPConn
	dst.NS.do(t, func() (err error) {
		rx, err = net.ListenUDP("udp", &net.UDPAddr{IP: dst.addr(v6), Port: port})
		return err
	})
	defer rx.Close()
	var tx *net.UDPConn
	src.NS.do(t, func() (err error) {
		tx, err = net.DialUDP("udp", &net.UDPAddr{IP: src.addr(v6)}, &net.UDPAddr{IP: dst.addr(v6), Port: port})
		return err
	})
	defer tx.Close()
	if gsoSegs < 1 {
		gsoSegs = 1
	}
	if count%gsoSegs != 0 {
		t.Fatalf("count %d is not a multiple of gsoSegs %d", count, gsoSegs)
	}
	if gsoSegs > 1 {
		setsockopt(t, tx, unix.SOL_UDP, unix.UDP_SEGMENT, size)
	}

	// The sender stays at most window datagrams ahead of the receiver, so
	// no socket buffer overflows: a lost datagram would make the sender's
	// count wrong, not nsflow's.
	const window = 32
	var received atomic.Int64
	got := make(chan error, 1)
	go func() {
		buf := make([]byte, 65536)
		_ = rx.SetReadDeadline(time.Now().Add(10 * time.Second))
		for n := 0; n < count; n++ {
			m, err := rx.Read(buf)
			if err != nil {
				got <- fmt.Errorf("received %d of %d datagrams: %w", n, count, err)
				return
			}
			if m != size {
				got <- fmt.Errorf("datagram of %d bytes, want %d", m, size)
				return
			}
			received.Add(1)
		}
		got <- nil
	}()
	msg := make([]byte, size*gsoSegs)
	deadline := time.Now().Add(10 * time.Second)
	for sent := 0; sent < count; sent += gsoSegs {
		for int64(sent)-received.Load() > window {
			if time.Now().After(deadline) {
				t.Fatalf("receiver stuck at %d of %d datagrams sent", received.Load(), sent)
			}
			time.Sleep(50 * time.Microsecond)
		}
		if _, err := tx.Write(msg); err != nil {
			t.Fatalf("send: %v", err)
		}
	}
	if err := <-got; err != nil {
		t.Fatal(err)
	}
}

func setsockopt(t testing.TB, c syscall.Conn, level, opt, val int) {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), level, opt, val) }); err != nil {
		t.Fatal(err)
	}
	if serr != nil {
		t.Fatalf("setsockopt(%d, %d): %v", level, opt, serr)
	}
}

// tcpPair is a TCP connection from a to b, kept open so that its
// segment counters can be read once the test has checked nsflow.
type tcpPair struct {
	a, b *net.TCPConn
}

// tcpTransfer connects a to b and moves n bytes each way.
func tcpTransfer(t testing.TB, v6 bool, a, b *end, port, n int) *tcpPair {
	t.Helper()
	var ln *net.TCPListener
	b.NS.do(t, func() (err error) {
		ln, err = net.ListenTCP("tcp", &net.TCPAddr{IP: b.addr(v6), Port: port})
		return err
	})
	defer ln.Close()
	p := &tcpPair{}
	a.NS.do(t, func() error {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: a.addr(v6)}, Timeout: 5 * time.Second}
		c, err := d.Dial("tcp", net.JoinHostPort(b.addr(v6).String(), fmt.Sprint(port)))
		if err != nil {
			return err
		}
		p.a = c.(*net.TCPConn)
		return nil
	})
	c, err := ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	p.b = c
	t.Cleanup(func() { p.a.Close(); p.b.Close() })

	errc := make(chan error, 2)
	for _, c := range []*net.TCPConn{p.a, p.b} {
		go func() {
			_, err := c.Write(make([]byte, n))
			errc <- err
		}()
	}
	for _, c := range []*net.TCPConn{p.a, p.b} {
		_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
		if _, err := io.ReadFull(c, make([]byte, n)); err != nil {
			t.Fatalf("read: %v", err)
		}
	}
	for range 2 {
		if err := <-errc; err != nil {
			t.Fatalf("write: %v", err)
		}
	}
	return p
}

// segs returns the connection's segments out and in, as TCP counts them:
// a GSO or GRO super-packet counts as its gso_segs.
func segs(t testing.TB, c *net.TCPConn) (out, in uint64) {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var info *unix.TCPInfo
	var ierr error
	if err := rc.Control(func(fd uintptr) { info, ierr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO) }); err != nil {
		t.Fatal(err)
	}
	if ierr != nil {
		t.Fatal(ierr)
	}
	return uint64(info.Segs_out), uint64(info.Segs_in)
}

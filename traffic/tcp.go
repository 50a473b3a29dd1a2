package traffic

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// tcpDrainMax bounds how long the server may take to read what is left
// in the socket buffers after the clients stopped writing.
const tcpDrainMax = 10 * time.Second

type tcpFlow struct {
	f       Flow
	ln      *net.TCPListener
	clients []net.Conn
	// ours are the clients' local addresses: the server counts only
	// connections from them, so a stray connection cannot inflate it.
	ours map[netip.AddrPort]int
}

func openTCP(f Flow) (flowRunner, error) {
	ln, err := listenTCP(f.ServerNetns, f.Server)
	if err != nil {
		return nil, fmt.Errorf("tcp server in %s on %s: %w", nsName(f.ServerNetns), f.Server, err)
	}
	dst := ln.Addr().(*net.TCPAddr).AddrPort()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	clients, err := dial(ctx, f.ClientNetns, TCP, f.Source, dst, f.Streams)
	if err != nil {
		_ = ln.Close()
		return nil, fmt.Errorf("tcp client in %s to %s: %w", nsName(f.ClientNetns), dst, err)
	}
	ours := map[netip.AddrPort]int{}
	for i, c := range clients {
		ours[unmap(c.LocalAddr().(*net.TCPAddr).AddrPort())] = i
	}
	return &tcpFlow{f: f, ln: ln, clients: clients, ours: ours}, nil
}

func unmap(a netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
}

type tcpSide struct {
	bytes uint64
	calls uint64
	last  time.Time
	err   error
}

func (t *tcpFlow) run(ctx context.Context, stop <-chan struct{}) (Result, error) {
	defer closeAll(t.clients)
	var res Result

	// Server: accept the clients' connections (they are already queued)
	// and read each to EOF.
	recv := make([]tcpSide, len(t.clients))
	abort := make(chan struct{})
	var rwg sync.WaitGroup
	var acceptErr error
	accepted := 0
	_ = t.ln.SetDeadline(time.Now().Add(5 * time.Second))
	for accepted < len(t.clients) {
		c, err := t.ln.Accept()
		if err != nil {
			acceptErr = fmt.Errorf("accept: %w", err)
			break
		}
		i, ok := t.ours[unmap(c.RemoteAddr().(*net.TCPAddr).AddrPort())]
		if !ok {
			res.Foreign++
			_ = c.Close()
			continue
		}
		accepted++
		rwg.Go(func() { recv[i] = readAll(c, abort) })
	}
	_ = t.ln.Close()
	if acceptErr != nil {
		close(abort)
		closeAll(t.clients)
		rwg.Wait()
		return res, acceptErr
	}

	start := time.Now()
	sctx, cancel := sendWindow(ctx, t.f)
	defer cancel()
	send := make([]tcpSide, len(t.clients))
	var swg sync.WaitGroup
	for i, c := range t.clients {
		swg.Go(func() { send[i] = writeUntil(sctx, stop, c, t.f.Size) })
	}
	swg.Wait()

	// The readers end at EOF; a reader still busy after tcpDrainMax is
	// cut off and its shortfall shows in the result.
	done := make(chan struct{})
	go func() { rwg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(tcpDrainMax):
		close(abort)
		<-done
	}

	var errs []error
	var last time.Time
	for i := range send {
		res.Sent.Bytes += send[i].bytes
		res.SendCalls += send[i].calls
		res.Received.Bytes += recv[i].bytes
		if recv[i].last.After(last) {
			last = recv[i].last
		}
		errs = append(errs, send[i].err, recv[i].err)
	}
	res.Elapsed = time.Since(start)
	if !last.IsZero() {
		res.Elapsed = last.Sub(start)
	}
	if res.Received.Bytes != res.Sent.Bytes {
		errs = append(errs, fmt.Errorf("tcp: sent %d bytes but the server read %d: %w", res.Sent.Bytes, res.Received.Bytes, ErrShortStream))
	}
	return res, errors.Join(errs...)
}

// ErrShortStream is in a TCP run's error when the server read another
// number of bytes than the client wrote, the counts being in the Result;
// a caller that reports the difference itself can tell it from a failure.
var ErrShortStream = errors.New("stream bytes differ")

// ioTimeout bounds each blocking read or write so the loops notice a
// stop request; it is not a deadline for the data.
var ioTimeout = unix.Timeval{Usec: 100_000}

// blocking runs fn with c's descriptor switched to blocking mode, with
// SO_SNDTIMEO and SO_RCVTIMEO set to ioTimeout. The hot loops then make
// one plain system call per chunk, as iperf3 does, instead of parking in
// the Go netpoller whenever the socket buffer is full or empty, which
// costs a wake-up per buffer on a busy two-core host.
func blocking(c net.Conn, fn func(fd int) error) error {
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	err = rc.Control(func(fd uintptr) {
		if ferr = unix.SetNonblock(int(fd), false); ferr != nil {
			return
		}
		for _, o := range []int{unix.SO_SNDTIMEO, unix.SO_RCVTIMEO} {
			if ferr = unix.SetsockoptTimeval(int(fd), unix.SOL_SOCKET, o, &ioTimeout); ferr != nil {
				return
			}
		}
		ferr = fn(int(fd))
	})
	return errors.Join(err, ferr)
}

func stopped(ctx context.Context, stop <-chan struct{}) bool {
	select {
	case <-ctx.Done():
		return true
	case <-stop:
		return true
	default:
		return false
	}
}

// writeUntil writes size-byte chunks until ctx or stop ends, then shuts
// its side down so the reader sees EOF after the last byte. Partial
// writes count: the bytes the kernel took are what the reader must get.
func writeUntil(ctx context.Context, stop <-chan struct{}, c net.Conn, size int) tcpSide {
	var s tcpSide
	buf := make([]byte, size)
	err := blocking(c, func(fd int) error {
		for !stopped(ctx, stop) {
			n, err := unix.Write(fd, buf)
			s.calls++
			if n > 0 {
				s.bytes += uint64(n)
			}
			if err != nil && err != unix.EAGAIN && err != unix.EINTR {
				return fmt.Errorf("tcp write: %w", err)
			}
		}
		if err := unix.Shutdown(fd, unix.SHUT_WR); err != nil {
			return fmt.Errorf("tcp shutdown: %w", err)
		}
		return nil
	})
	s.err = err
	return s
}

// readAll reads c to EOF, counting bytes, unless abort closes first.
func readAll(c net.Conn, abort <-chan struct{}) tcpSide {
	defer c.Close()
	var s tcpSide
	buf := make([]byte, 256<<10)
	s.err = blocking(c, func(fd int) error {
		for {
			n, err := unix.Read(fd, buf)
			switch {
			case n > 0:
				s.bytes += uint64(n)
				s.last = time.Now()
			case err == nil: // EOF
				return nil
			case err == unix.EAGAIN || err == unix.EINTR:
				select {
				case <-abort:
					return errors.New("tcp read: gave up waiting for the rest of the stream")
				default:
				}
			default:
				return fmt.Errorf("tcp read: %w", err)
			}
		}
	})
	return s
}

package traffic

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"
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
		rwg.Go(func() { recv[i] = readAll(c) })
	}
	_ = t.ln.Close()
	if acceptErr != nil {
		closeAll(t.clients)
		rwg.Wait()
		return res, acceptErr
	}

	start := time.Now()
	send := make([]tcpSide, len(t.clients))
	var swg sync.WaitGroup
	for i, c := range t.clients {
		swg.Go(func() { send[i] = writeUntil(ctx, stop, c.(*net.TCPConn), t.f.Size) })
	}
	swg.Wait()

	// The readers end at EOF; a reader still busy after tcpDrainMax is
	// cut off and its shortfall shows in the result.
	done := make(chan struct{})
	go func() { rwg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(tcpDrainMax):
		closeAll(t.clients)
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
	res.Elapsed = last.Sub(start)
	if res.Received.Bytes != res.Sent.Bytes {
		errs = append(errs, fmt.Errorf("tcp: sent %d bytes but the server read %d", res.Sent.Bytes, res.Received.Bytes))
	}
	return res, errors.Join(errs...)
}

// writeUntil writes size-byte chunks until ctx or stop ends, then closes
// its side so the reader sees EOF after the last byte.
func writeUntil(ctx context.Context, stop <-chan struct{}, c *net.TCPConn, size int) tcpSide {
	var s tcpSide
	buf := make([]byte, size)
	// A blocked Write is cut short by a deadline in the past; the bytes
	// it already handed to the kernel are still counted.
	quit := make(chan struct{})
	defer close(quit)
	go func() {
		select {
		case <-ctx.Done():
		case <-stop:
		case <-quit:
			return
		}
		_ = c.SetWriteDeadline(time.Unix(1, 0))
	}()
	for {
		n, err := c.Write(buf)
		s.calls++
		s.bytes += uint64(n)
		if err != nil {
			if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, net.ErrClosed) {
				var ne net.Error
				if !errors.As(err, &ne) || !ne.Timeout() {
					s.err = fmt.Errorf("tcp write: %w", err)
				}
			}
			break
		}
		select {
		case <-ctx.Done():
		case <-stop:
		default:
			continue
		}
		break
	}
	if err := c.CloseWrite(); err != nil && s.err == nil {
		s.err = fmt.Errorf("tcp close: %w", err)
	}
	return s
}

// readAll reads c to EOF, counting bytes.
func readAll(c net.Conn) tcpSide {
	defer c.Close()
	var s tcpSide
	buf := make([]byte, 256<<10)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			s.bytes += uint64(n)
			s.last = time.Now()
		}
		if err == io.EOF {
			return s
		}
		if err != nil {
			s.err = fmt.Errorf("tcp read: %w", err)
			return s
		}
	}
}

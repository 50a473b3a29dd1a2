package traffic

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Draining: after the last send, the server is read until every datagram
// arrived, or until nothing arrived for quietFor while no socket holds an
// unread datagram (the rest were lost), and at most drainMax.
const (
	quietFor = 50 * time.Millisecond
	drainMax = 5 * time.Second
)

type udpFlow struct {
	f       Flow
	tag     uint32
	servers []*net.UDPConn
	clients []net.Conn
}

func openUDP(f Flow) (flowRunner, error) {
	servers, err := listenUDP(f.ServerNetns, f.Server, f.Streams)
	if err != nil {
		return nil, fmt.Errorf("udp server in %s on %s: %w", nsName(f.ServerNetns), f.Server, err)
	}
	dst := servers[0].LocalAddr().(*net.UDPAddr).AddrPort()
	clients, err := dial(context.Background(), f.ClientNetns, UDP, f.Source, dst, f.Streams)
	if err != nil {
		closeAll(servers)
		return nil, fmt.Errorf("udp client in %s to %s: %w", nsName(f.ClientNetns), dst, err)
	}
	var tag [4]byte
	_, _ = rand.Read(tag[:])
	return &udpFlow{f: f, tag: binary.LittleEndian.Uint32(tag[:]), servers: servers, clients: clients}, nil
}

// udpStream is what one receiver saw of one stream.
type udpStream struct {
	next      uint64 // highest sequence number seen + 1
	packets   uint64
	bytes     uint64
	reordered uint64
}

// udpReceiver reads one server socket. Its totals are atomic so the
// drain loop can watch progress; the per-stream detail is read only after
// the receiver stopped.
type udpReceiver struct {
	streams  []udpStream
	foreign  uint64
	received atomic.Uint64
	lastRecv atomic.Int64 // unix ns
	err      error
}

func (u *udpFlow) run(ctx context.Context, stop <-chan struct{}) (Result, error) {
	defer closeAll(u.clients)
	recvs := make([]*udpReceiver, len(u.servers))
	var rwg sync.WaitGroup
	for i, c := range u.servers {
		recvs[i] = &udpReceiver{streams: make([]udpStream, u.f.Streams)}
		rwg.Go(func() { recvs[i].loop(c, u.tag, u.f) })
	}

	start := time.Now()
	sctx, cancel := sendWindow(ctx, u.f)
	defer cancel()
	sent := make([]Counts, len(u.clients))
	calls := make([]uint64, len(u.clients))
	serrs := make([]error, len(u.clients))
	var swg sync.WaitGroup
	for i, c := range u.clients {
		quota := u.f.Packets / uint64(len(u.clients))
		if uint64(i) < u.f.Packets%uint64(len(u.clients)) {
			quota++
		}
		swg.Go(func() {
			sent[i], calls[i], serrs[i] = u.send(sctx, stop, c, uint32(i), quota, start)
		})
	}
	swg.Wait()
	sendEnd := time.Now()

	var res Result
	for i := range sent {
		res.Sent.Packets += sent[i].Packets
		res.Sent.Bytes += sent[i].Bytes
		res.SendCalls += calls[i]
	}
	drain(res.Sent.Packets, recvs, u.servers)
	closeAll(u.servers)
	rwg.Wait()

	var last int64
	errs := serrs
	for _, r := range recvs {
		for _, s := range r.streams {
			res.Received.Packets += s.packets
			res.Received.Bytes += s.bytes
			res.Reordered += s.reordered
		}
		res.Foreign += r.foreign
		last = max(last, r.lastRecv.Load())
		errs = append(errs, r.err)
	}
	res.Elapsed = sendEnd.Sub(start)
	if last > 0 {
		res.Elapsed = time.Unix(0, last).Sub(start)
	}
	if res.Received.Packets < res.Sent.Packets {
		res.Lost = res.Sent.Packets - res.Received.Packets
	}
	return res, errors.Join(errs...)
}

// drain waits until the receivers got want datagrams, or stopped making
// progress with nothing left to read: a receiver that is merely slow to
// be scheduled must not have its datagrams counted as lost.
func drain(want uint64, recvs []*udpReceiver, socks []*net.UDPConn) {
	deadline := time.Now().Add(drainMax)
	var prev uint64
	quietSince := time.Now()
	for time.Now().Before(deadline) {
		var got uint64
		for _, r := range recvs {
			got += r.received.Load()
		}
		if got >= want {
			return
		}
		if got != prev {
			prev, quietSince = got, time.Now()
		} else if time.Since(quietSince) > quietFor && !pending(socks) {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// pending reports whether any socket has a datagram queued: SIOCINQ gives
// the size of the next one, and the generator's are never empty.
func pending(socks []*net.UDPConn) bool {
	for _, c := range socks {
		rc, err := c.SyscallConn()
		if err != nil {
			continue
		}
		var queued bool
		_ = rc.Control(func(fd uintptr) {
			n, err := unix.IoctlGetInt(int(fd), unix.SIOCINQ)
			queued = err == nil && n > 0
		})
		if queued {
			return true
		}
	}
	return false
}

// send writes sequence-numbered datagrams in sendmmsg batches until the
// quota (0: none), the context or stop ends it.
func (u *udpFlow) send(ctx context.Context, stop <-chan struct{}, c net.Conn, stream uint32, quota uint64, start time.Time) (Counts, uint64, error) {
	rc, err := c.(*net.UDPConn).SyscallConn()
	if err != nil {
		return Counts{}, 0, err
	}
	size := u.f.Size
	n := u.f.Batch
	// Per-stream rate; batches are kept to about a millisecond of traffic
	// so a rate limit does not turn into bursts.
	var rate float64
	if u.f.Rate > 0 {
		rate = u.f.Rate / float64(u.f.Streams)
		n = max(1, min(n, int(rate/1000)))
	}
	b := newBatch(n, size)
	var (
		seq   uint64
		calls uint64
		werr  error
	)
	for quota == 0 || seq < quota {
		select {
		case <-ctx.Done():
			return Counts{Packets: seq, Bytes: seq * uint64(size)}, calls, nil
		case <-stop:
			return Counts{Packets: seq, Bytes: seq * uint64(size)}, calls, nil
		default:
		}
		k := n
		if quota > 0 {
			k = int(min(uint64(n), quota-seq))
		}
		if rate > 0 {
			due := start.Add(time.Duration(float64(seq) / rate * 1e9))
			if d := time.Until(due); d > 0 {
				time.Sleep(d)
			}
		}
		for i := range k {
			header{tag: u.tag, stream: stream, seq: seq + uint64(i)}.put(b.bufs[i])
		}
		var sentK int
		err := rc.Write(func(fd uintptr) bool {
			calls++
			r, e := b.sendmmsg(fd, k)
			switch e {
			case 0:
				sentK = r
				return true
			case unix.EAGAIN:
				return false // wait for room in the socket buffer
			case unix.ENOBUFS:
				// The device queue is full; the socket may still
				// be writable, so the poller would not wake us.
				// Retry after yielding.
				return true
			default:
				werr = e
				return true
			}
		})
		seq += uint64(sentK)
		if sentK == 0 && err == nil && werr == nil {
			runtime.Gosched()
		}
		if err != nil || werr != nil {
			return Counts{Packets: seq, Bytes: seq * uint64(size)}, calls, errors.Join(err, werr)
		}
	}
	return Counts{Packets: seq, Bytes: seq * uint64(size)}, calls, nil
}

// loop reads datagrams until the socket is closed.
func (r *udpReceiver) loop(c *net.UDPConn, tag uint32, f Flow) {
	rc, err := c.SyscallConn()
	if err != nil {
		r.err = err
		return
	}
	// One byte more than expected, so a larger datagram shows as
	// truncated instead of being counted as ours.
	b := newBatch(f.Batch, f.Size+1)
	err = rc.Read(func(fd uintptr) bool {
		for {
			n, e := b.recvmmsg(fd)
			if e == unix.EAGAIN {
				return false
			}
			if e != 0 {
				if e != syscall.EINTR {
					r.err = e
					return true
				}
				continue
			}
			var got uint64
			for i := range n {
				l := int(b.hdrs[i].Len)
				h, ok := parseHeader(b.bufs[i][:l])
				if !ok || l != f.Size || h.tag != tag || h.stream >= uint32(len(r.streams)) {
					r.foreign++
					continue
				}
				s := &r.streams[h.stream]
				if h.seq < s.next {
					s.reordered++
				} else {
					s.next = h.seq + 1
				}
				s.packets++
				s.bytes += uint64(l)
				got++
			}
			if got > 0 {
				r.lastRecv.Store(time.Now().UnixNano())
				r.received.Add(got)
			}
		}
	})
	if err != nil && !errors.Is(err, net.ErrClosed) && r.err == nil {
		r.err = err
	}
}

func nsName(path string) string {
	if path == "" {
		return "the current namespace"
	}
	return path
}

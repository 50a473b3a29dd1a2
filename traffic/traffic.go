// Package traffic is nsflow's built-in traffic generator: a server and a
// client, each with its sockets opened inside its own network namespace,
// that move TCP bulk data or sequence-numbered UDP datagrams between them
// and count exactly what was sent and what arrived.
//
// Sockets are opened on a thread inside the namespace (internal/nsenter)
// and stay bound to it, so all I/O runs from ordinary goroutines. UDP uses
// sendmmsg/recvmmsg batches so that small packets are not capped by the
// cost of one system call per datagram.
package traffic

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"
)

// Proto is the transport a Flow uses.
type Proto string

// Transports the generator speaks.
const (
	TCP Proto = "tcp"
	UDP Proto = "udp"
)

// ParseProto parses "tcp" or "udp".
func ParseProto(s string) (Proto, error) {
	switch p := Proto(s); p {
	case TCP, UDP:
		return p, nil
	}
	return "", fmt.Errorf("unknown protocol %q (want tcp or udp)", s)
}

// Defaults applied by Start to zero fields of a Flow.
const (
	DefaultTCPWrite = 128 << 10 // bytes per write(2), as iperf3 does
	DefaultUDPSize  = 1472      // UDP payload filling a 1500-byte MTU over IPv4
	DefaultBatch    = 64        // datagrams per sendmmsg/recvmmsg
)

// Flow describes one run of traffic from a client namespace to a server
// namespace.
type Flow struct {
	Proto Proto
	// ServerNetns and ClientNetns are paths of network namespaces (for
	// example /run/netns/a); empty means the current namespace.
	ServerNetns string
	ClientNetns string
	// Server is the address the server binds and the client sends to. Port
	// 0 picks a free port.
	Server netip.AddrPort
	// Source optionally binds the client's sockets to one address.
	Source netip.Addr
	// Streams is the number of TCP connections or UDP sockets (default 1).
	Streams int
	// Size is, for UDP, the payload of each datagram in bytes (at least
	// HeaderSize; see PayloadForFrame to size by Ethernet frame), and for
	// TCP the size of each write.
	Size int
	// Batch is the number of datagrams per sendmmsg/recvmmsg (UDP only).
	Batch int
	// Rate caps UDP sending at this many datagrams per second over all
	// streams; 0 sends as fast as possible. TCP is never rate limited.
	Rate float64
	// Duration stops sending after this long; Packets stops UDP sending
	// after this many datagrams in total. With neither set, sending goes
	// on until Stop or until the context ends.
	Duration time.Duration
	Packets  uint64
}

// Counts is a number of packets (UDP datagrams) and payload bytes.
type Counts struct {
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
}

// Result is what one Flow moved. Every number is counted, none estimated.
type Result struct {
	Proto   Proto `json:"proto"`
	Streams int   `json:"streams"`
	// Elapsed runs from the start of sending to the last byte received.
	Elapsed time.Duration `json:"elapsed_ns"`
	// Sent is what the client handed to the kernel; Received what the
	// server read. For TCP, Packets is zero: the generator sees a byte
	// stream, not segments, and Received.Bytes equals Sent.Bytes once
	// every connection has been closed cleanly.
	Sent     Counts `json:"sent"`
	Received Counts `json:"received"`
	// Lost is UDP datagrams sent but never received. Reordered counts
	// datagrams that arrived after a higher sequence number of their
	// stream. Foreign counts datagrams on the server's port that did not
	// belong to this flow (they are not in Received).
	Lost      uint64 `json:"lost"`
	Reordered uint64 `json:"reordered"`
	Foreign   uint64 `json:"foreign"`
	// SendCalls is the number of write or sendmmsg system calls made.
	SendCalls uint64 `json:"send_calls"`
}

// Gbps is received payload throughput in Gbit/s.
func (r Result) Gbps() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Received.Bytes) * 8 / r.Elapsed.Seconds() / 1e9
}

// Mpps is received datagrams per second in millions (zero for TCP).
func (r Result) Mpps() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Received.Packets) / r.Elapsed.Seconds() / 1e6
}

// Run is a flow in progress.
type Run struct {
	stopOnce sync.Once
	stop     chan struct{}
	done     chan struct{}
	cancel   context.CancelFunc
	res      Result
	err      error
}

// flowRunner is the per-protocol half of a Run: it sends until told to
// stop or for Flow.Duration (timed from its first send, not from the
// set-up before it, so a run sends for as long as it was asked to), then
// drains the server and reports.
type flowRunner interface {
	run(ctx context.Context, stop <-chan struct{}) (Result, error)
}

// Start opens the server and the client sockets in their namespaces and
// begins sending. Errors opening sockets are returned here, before any
// traffic flows.
func Start(ctx context.Context, f Flow) (*Run, error) {
	if err := f.normalize(); err != nil {
		return nil, err
	}
	var (
		fr  flowRunner
		err error
	)
	switch f.Proto {
	case TCP:
		fr, err = openTCP(f)
	case UDP:
		fr, err = openUDP(f)
	}
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	r := &Run{stop: make(chan struct{}), done: make(chan struct{}), cancel: cancel}
	go func() {
		defer close(r.done)
		r.res, r.err = fr.run(ctx, r.stop)
		r.res.Proto, r.res.Streams = f.Proto, f.Streams
	}()
	return r, nil
}

// Wait blocks until sending ends (Duration, Packets or the context) and
// the server has drained, and returns the counts.
func (r *Run) Wait() (Result, error) {
	<-r.done
	r.cancel()
	return r.res, r.err
}

// Stop ends sending now and returns the counts once the server drained.
func (r *Run) Stop() (Result, error) {
	r.stopOnce.Do(func() { close(r.stop) })
	return r.Wait()
}

// Measure runs a flow to its end: Start then Wait.
func Measure(ctx context.Context, f Flow) (Result, error) {
	r, err := Start(ctx, f)
	if err != nil {
		return Result{}, err
	}
	return r.Wait()
}

func (f *Flow) normalize() error {
	var errs []error
	switch f.Proto {
	case TCP, UDP:
	default:
		errs = append(errs, fmt.Errorf("proto: unknown protocol %q (want tcp or udp)", f.Proto))
	}
	if !f.Server.Addr().IsValid() {
		errs = append(errs, errors.New("server: no address"))
	}
	if f.Source.IsValid() && f.Source.Is4() != f.Server.Addr().Is4() {
		errs = append(errs, fmt.Errorf("source %s and server %s are of different families", f.Source, f.Server.Addr()))
	}
	if f.Streams < 0 || f.Size < 0 || f.Batch < 0 || f.Rate < 0 || f.Duration < 0 {
		errs = append(errs, errors.New("streams, size, batch, rate and duration must not be negative"))
	}
	if f.Streams == 0 {
		f.Streams = 1
	}
	if f.Batch == 0 {
		f.Batch = DefaultBatch
	}
	if f.Batch > 1024 {
		errs = append(errs, fmt.Errorf("batch: %d is more than the kernel's 1024 per call", f.Batch))
	}
	switch f.Proto {
	case TCP:
		if f.Size == 0 {
			f.Size = DefaultTCPWrite
		}
	case UDP:
		if f.Size == 0 {
			f.Size = DefaultUDPSize
		}
		if f.Size < HeaderSize || f.Size > maxUDPPayload {
			errs = append(errs, fmt.Errorf("size: UDP payload %d bytes is outside %d..%d", f.Size, HeaderSize, maxUDPPayload))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("traffic flow: %w", errors.Join(errs...))
	}
	return nil
}

// sendWindow returns ctx bounded by the flow's Duration from now, when the
// flow has one: the runners call it as they start sending.
func sendWindow(ctx context.Context, f Flow) (context.Context, context.CancelFunc) {
	if f.Duration > 0 {
		return context.WithTimeout(ctx, f.Duration)
	}
	return context.WithCancel(ctx)
}

package verify

import (
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// sockProbe is a TCP or UDP probe whose socket was opened (and connect
// started) inside the source namespace.
type sockProbe struct {
	p        *Probe
	f        *os.File
	deadline time.Time
	nonce    string
}

const tcpSynSent = 2 // TCP_SYN_SENT in include/net/tcp_states.h

// open runs inside the source namespace: it creates the socket, asks for
// ICMP errors on its error queue (to learn who sent them), and starts the
// connect or sends the UDP request. Nothing here blocks.
func (pr *prober) open(p *Probe) *sockProbe {
	s := &sockProbe{p: p, deadline: time.Now().Add(pr.timeout)}
	var fam, level, opt int
	var sa unix.Sockaddr
	if p.Addr.Is4() {
		fam, level, opt = unix.AF_INET, unix.SOL_IP, unix.IP_RECVERR
		sa = &unix.SockaddrInet4{Port: int(p.port.Number), Addr: p.Addr.As4()}
	} else {
		fam, level, opt = unix.AF_INET6, unix.SOL_IPV6, unix.IPV6_RECVERR
		sa = &unix.SockaddrInet6{Port: int(p.port.Number), Addr: p.Addr.As16()}
	}
	typ := unix.SOCK_STREAM
	if p.port.Proto == "udp" {
		typ = unix.SOCK_DGRAM
	}
	fd, err := unix.Socket(fam, typ|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		p.Outcome, p.Detail = Failed, "socket: "+err.Error()
		return s
	}
	if err := unix.SetsockoptInt(fd, level, opt, 1); err != nil {
		unix.Close(fd)
		p.Outcome, p.Detail = Failed, "setsockopt RECVERR: "+err.Error()
		return s
	}
	err = unix.Connect(fd, sa)
	if err == nil && typ == unix.SOCK_DGRAM {
		s.nonce = fmt.Sprintf("%x-%d", pr.nextSeq(), time.Now().UnixNano())
		_, err = unix.Write(fd, request(s.nonce))
	}
	switch {
	case err == nil || errors.Is(err, unix.EINPROGRESS):
		s.f = os.NewFile(uintptr(fd), "probe")
		return s
	case errors.Is(err, unix.ENETUNREACH) || errors.Is(err, unix.EHOSTUNREACH):
		p.Outcome, p.Detail = Unreachable, "no route in "+p.From
	default:
		p.Outcome, p.Detail = Failed, "connect: "+err.Error()
	}
	unix.Close(fd)
	return s
}

func (s *sockProbe) close() {
	if s.f != nil {
		s.f.Close()
	}
}

// finish waits for the probe's answer from an ordinary goroutine.
func (pr *prober) finish(s *sockProbe) {
	if s.f == nil {
		return // decided when it was opened
	}
	defer s.close()
	if s.p.port.Proto == "tcp" {
		pr.finishTCP(s)
	} else {
		pr.finishUDP(s)
	}
}

func (pr *prober) finishTCP(s *sockProbe) {
	rc, err := s.f.SyscallConn()
	if err != nil {
		s.p.Outcome, s.p.Detail = Failed, err.Error()
		return
	}
	s.f.SetWriteDeadline(s.deadline)
	var soErr error
	err = rc.Write(func(fd uintptr) bool {
		e, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR)
		switch {
		case err != nil:
			soErr = err
			return true
		case e != 0:
			soErr = syscall.Errno(e)
			return true
		}
		info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
		if err != nil {
			soErr = err
			return true
		}
		return info.State != tcpSynSent
	})
	if errors.Is(err, os.ErrDeadlineExceeded) {
		// An answer counts whenever it came: a busy host may fire the
		// timer before it reports the socket ready, so look once more.
		err = rc.Control(func(fd uintptr) {
			if e, _ := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR); e != 0 {
				soErr = syscall.Errno(e)
			} else if info, ierr := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); ierr != nil || info.State == tcpSynSent {
				soErr = os.ErrDeadlineExceeded
			}
		})
		if errors.Is(soErr, os.ErrDeadlineExceeded) {
			s.p.Outcome, s.p.Detail = Blocked, ""
			return
		}
	}
	switch {
	case err != nil:
		s.p.Outcome, s.p.Detail = Failed, err.Error()
		return
	case soErr != nil:
		pr.classify(s.p, rc, soErr)
		return
	}
	// Connected: the listener's first line says who it is.
	s.f.SetReadDeadline(time.Now().Add(pr.timeout))
	var buf []byte
	chunk := make([]byte, 256)
	for len(buf) < 1024 {
		n, err := s.f.Read(chunk)
		buf = append(buf, chunk[:n]...)
		if err != nil || (n > 0 && chunk[n-1] == '\n') {
			break
		}
	}
	s.p.Outcome = Replied
	switch id, ok := parseReply(buf, ""); {
	case ok:
		pr.attribute(s.p, id)
	case len(buf) == 0:
		s.p.Detail = noIdentity
	default:
		s.p.Detail = "connected to a listener that is not an nsflow responder"
	}
}

// noIdentity is a TCP probe that connected, but whose listener said
// nothing before the timeout: a responder slow to answer (a busy
// namespace, --load), or another listener.
const noIdentity = "connected, but no identity came within the timeout"

func (pr *prober) finishUDP(s *sockProbe) {
	rc, err := s.f.SyscallConn()
	if err != nil {
		s.p.Outcome, s.p.Detail = Failed, err.Error()
		return
	}
	// The request is sent again now and then: UDP may lose one while the
	// neighbour is being resolved; only a reply counts, never silence.
	resend := max(pr.timeout/4, 100*time.Millisecond)
	buf := make([]byte, 512)
	for {
		now := time.Now()
		if !now.Before(s.deadline) {
			pr.lastRead(s, rc, buf)
			return
		}
		next := now.Add(resend)
		if next.After(s.deadline) {
			next = s.deadline
		}
		s.f.SetReadDeadline(next)
		n, err := s.f.Read(buf)
		if err == nil || errors.Is(err, io.EOF) {
			s.p.Outcome = Replied
			if id, ok := parseReply(buf[:n], s.nonce); ok {
				pr.attribute(s.p, id)
			} else {
				s.p.Detail = "answered by a listener that is not an nsflow responder"
			}
			return
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			rc.Write(func(fd uintptr) bool {
				unix.Write(int(fd), request(s.nonce))
				return true
			})
			continue
		}
		var errno syscall.Errno
		if errors.As(err, &errno) {
			pr.classify(s.p, rc, errno)
		} else {
			s.p.Outcome, s.p.Detail = Failed, err.Error()
		}
		return
	}
}

// lastRead takes, without waiting, a reply or error that arrived while the
// probe was not looking; with none the probe is blocked.
func (pr *prober) lastRead(s *sockProbe, rc syscall.RawConn, buf []byte) {
	var n int
	var err error
	rc.Control(func(fd uintptr) { n, err = unix.Read(int(fd), buf) })
	switch {
	case err == nil:
		s.p.Outcome = Replied
		if id, ok := parseReply(buf[:n], s.nonce); ok {
			pr.attribute(s.p, id)
		} else {
			s.p.Detail = "answered by a listener that is not an nsflow responder"
		}
	case errors.Is(err, unix.EAGAIN):
		s.p.Outcome, s.p.Detail = Blocked, ""
	default:
		pr.classify(s.p, rc, err)
	}
}

// classify turns a socket error into an outcome. The error queue names
// the sender of an ICMP error: the target itself saying "port unreachable"
// proves the packet arrived; anyone else (a router, or the source failing
// to resolve the neighbour) means it did not.
func (pr *prober) classify(p *Probe, rc syscall.RawConn, sockErr error) {
	if e, ok := readErrQueue(rc); ok {
		if e.portUnreachable() && e.offender == p.Addr {
			p.Outcome, p.Detail = Refused, "ICMP port unreachable from the target"
		} else {
			p.Outcome, p.Detail = Unreachable, e.String()
		}
		return
	}
	switch {
	case errors.Is(sockErr, unix.ECONNREFUSED):
		p.Outcome, p.Detail = Refused, "TCP reset from the target"
	case errors.Is(sockErr, unix.EHOSTUNREACH), errors.Is(sockErr, unix.ENETUNREACH):
		p.Outcome, p.Detail = Unreachable, sockErr.Error()
	case errors.Is(sockErr, unix.ETIMEDOUT):
		p.Outcome, p.Detail = Blocked, ""
	default:
		p.Outcome, p.Detail = Failed, sockErr.Error()
	}
}

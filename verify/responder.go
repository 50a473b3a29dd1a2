package verify

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/nsflow/nsflow/internal/nsenter"
	"github.com/nsflow/nsflow/topology"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// Responder answers the probes of one namespace on the TCP and UDP ports
// under test, on IPv4 and IPv6, with its identity.
type Responder struct {
	id      identity
	closers []io.Closer
	wg      sync.WaitGroup
	// Busy lists the ports that something else already holds in the
	// namespace ("tcp4/8080"); probes to them meet that listener instead.
	Busy []string
	// listening are the ports it listens on, as in Busy.
	listening map[string]bool
}

// StartResponder binds the responders for ns in the namespace at path.
// claimed is the namespace name it answers with; the cookie it reports is
// read from its own socket, so a responder started in the wrong namespace
// gives itself away.
func StartResponder(path, claimed string, ports []topology.Port) (*Responder, error) {
	r := &Responder{id: identity{claimed: claimed}, listening: map[string]bool{}}
	var tcp []net.Listener
	var udp []net.PacketConn
	err := nsenter.Do(path, func() error {
		for _, p := range ports {
			if p.Proto == "icmp" {
				continue
			}
			for _, fam := range []string{"4", "6"} {
				addr := fmt.Sprintf(":%d", p.Number)
				var err error
				if p.Proto == "tcp" {
					var l net.Listener
					if l, err = net.Listen("tcp"+fam, addr); err == nil {
						tcp = append(tcp, l)
						r.closers = append(r.closers, l)
					}
				} else {
					var c net.PacketConn
					if c, err = net.ListenPacket("udp"+fam, addr); err == nil {
						udp = append(udp, c)
						r.closers = append(r.closers, c)
					}
				}
				switch {
				case err == nil:
					r.listening[fmt.Sprintf("%s%s/%d", p.Proto, fam, p.Number)] = true
				case errors.Is(err, syscall.EADDRINUSE):
					r.Busy = append(r.Busy, fmt.Sprintf("%s%s/%d", p.Proto, fam, p.Number))
				case errors.Is(err, syscall.EAFNOSUPPORT) || errors.Is(err, syscall.EADDRNOTAVAIL):
					// IPv6 disabled in this namespace: nothing to answer on.
				case err != nil:
					return fmt.Errorf("listen %s%s %s: %w", p.Proto, fam, addr, err)
				}
			}
		}
		return nil
	})
	if err == nil {
		err = r.readCookie(tcp, udp)
	}
	if err != nil {
		r.Close()
		return nil, fmt.Errorf("responder in %s: %w", claimed, err)
	}
	for _, l := range tcp {
		r.wg.Add(1)
		go r.serveTCP(l)
	}
	for _, c := range udp {
		r.wg.Add(1)
		go r.serveUDP(c)
	}
	return r, nil
}

// silent reports whether a probe of p on addr can time out with nothing
// to tell: the port is UDP and another process held it (addr's family)
// when the responder started. That process need not answer, so silence
// there does not mean the packet was blocked.
func (r *Responder) silent(p topology.Port, addr netip.Addr) (string, bool) {
	if p.Proto != "udp" {
		return "", false
	}
	return r.held(p, addr)
}

// listens reports whether the responder itself listens on port p of
// addr's family: then only it answers there, with its identity.
func (r *Responder) listens(p topology.Port, addr netip.Addr) bool {
	if r == nil || p.Proto == "icmp" {
		return false
	}
	return r.listening[portFamily(p, addr)]
}

// portFamily names port p of addr's family as Busy does ("tcp4/8080").
func portFamily(p topology.Port, addr netip.Addr) string {
	fam := "6"
	if addr.Unmap().Is4() {
		fam = "4"
	}
	return fmt.Sprintf("%s%s/%d", p.Proto, fam, p.Number)
}

// held reports whether another process held port p of addr's family when
// the responder started, so that the responder is not what answers there.
func (r *Responder) held(p topology.Port, addr netip.Addr) (string, bool) {
	if r == nil || p.Proto == "icmp" {
		return "", false
	}
	b := portFamily(p, addr)
	return b, slices.Contains(r.Busy, b)
}

func (r *Responder) readCookie(tcp []net.Listener, udp []net.PacketConn) error {
	var sc syscall.Conn
	switch {
	case len(tcp) > 0:
		sc, _ = tcp[0].(syscall.Conn)
	case len(udp) > 0:
		sc, _ = udp[0].(syscall.Conn)
	default:
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	r.id.cookie, err = socketCookie(rc)
	return err
}

// Close stops the responder and waits for its goroutines.
func (r *Responder) Close() {
	for _, c := range r.closers {
		c.Close()
	}
	r.wg.Wait()
}

func (r *Responder) serveTCP(l net.Listener) {
	defer r.wg.Done()
	msg := r.id.reply("")
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		c.SetWriteDeadline(time.Now().Add(time.Second))
		c.Write(msg)
		c.Close()
	}
}

// serveUDP answers from the address the request was sent to, which is what
// a connected client socket accepts, whatever the routing would pick.
func (r *Responder) serveUDP(c net.PacketConn) {
	defer r.wg.Done()
	var read func([]byte) (int, net.IP, net.Addr, error)
	var write func([]byte, net.IP, net.Addr) error
	if c.LocalAddr().(*net.UDPAddr).IP.To4() != nil {
		pc := ipv4.NewPacketConn(c)
		if err := pc.SetControlMessage(ipv4.FlagDst, true); err != nil {
			return
		}
		read = func(b []byte) (int, net.IP, net.Addr, error) {
			n, cm, src, err := pc.ReadFrom(b)
			if cm == nil {
				return n, nil, src, err
			}
			return n, cm.Dst, src, err
		}
		write = func(b []byte, from net.IP, to net.Addr) error {
			_, err := pc.WriteTo(b, &ipv4.ControlMessage{Src: from}, to)
			return err
		}
	} else {
		pc := ipv6.NewPacketConn(c)
		if err := pc.SetControlMessage(ipv6.FlagDst, true); err != nil {
			return
		}
		read = func(b []byte) (int, net.IP, net.Addr, error) {
			n, cm, src, err := pc.ReadFrom(b)
			if cm == nil {
				return n, nil, src, err
			}
			return n, cm.Dst, src, err
		}
		write = func(b []byte, from net.IP, to net.Addr) error {
			_, err := pc.WriteTo(b, &ipv6.ControlMessage{Src: from}, to)
			return err
		}
	}
	buf := make([]byte, 512)
	for {
		n, dst, src, err := read(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		if nonce, ok := parseRequest(buf[:n]); ok {
			write(r.id.reply(nonce), dst, src)
		}
	}
}

package verify

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"maps"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/nsflow/nsflow/internal/nsenter"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// pinger sends the ICMP echo probes of one source namespace over raw
// sockets opened inside it (ping sockets would need ping_group_range,
// which new namespaces leave closed) and matches replies and ICMP errors
// to probes by echo ID and sequence.
type pinger struct {
	pr       *prober
	from     string
	c4, c6   *icmp.PacketConn
	id       int
	mu       sync.Mutex
	pending  map[pingKey]*Probe
	deadline time.Time
	// answered is closed when the last pending probe is resolved.
	answered chan struct{}
}

// icmpGrace is how long past the deadline echo replies are still read.
const icmpGrace = 200 * time.Millisecond

type pingKey struct {
	addr netip.Addr
	seq  int
}

func (pr *prober) openPinger(from string, probes []*Probe) (*pinger, error) {
	var id [2]byte
	rand.Read(id[:])
	pg := &pinger{pr: pr, from: from, id: int(binary.BigEndian.Uint16(id[:])), pending: map[pingKey]*Probe{}, answered: make(chan struct{})}
	var need4, need6 bool
	for i, p := range probes {
		pg.pending[pingKey{p.Addr, i + 1}] = p
		need4 = need4 || p.Addr.Is4()
		need6 = need6 || p.Addr.Is6()
	}
	err := nsenter.Do(pr.paths[from], func() error {
		var err error
		if need4 {
			if pg.c4, err = icmp.ListenPacket("ip4:icmp", "0.0.0.0"); err != nil {
				return err
			}
		}
		if need6 {
			if pg.c6, err = icmp.ListenPacket("ip6:ipv6-icmp", "::"); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		pg.close()
		return nil, err
	}
	pg.deadline = time.Now().Add(pr.timeout)
	return pg, nil
}

func (pg *pinger) close() {
	if pg.c4 != nil {
		pg.c4.Close()
	}
	if pg.c6 != nil {
		pg.c6.Close()
	}
}

// run sends every echo, resends the unanswered ones now and then, and
// marks what is still unanswered at the deadline as blocked.
func (pg *pinger) run() {
	defer pg.close()
	var wg sync.WaitGroup
	for _, c := range []*icmp.PacketConn{pg.c4, pg.c6} {
		if c != nil {
			c.SetReadDeadline(pg.deadline.Add(icmpGrace))
			wg.Go(func() { pg.read(c) })
		}
	}
	resend := max(pg.pr.timeout/4, 100*time.Millisecond)
	pg.sendPending()
	for waiting := true; waiting; {
		wait := min(resend, time.Until(pg.deadline))
		if wait <= 0 {
			break
		}
		select {
		case <-pg.answered:
			waiting = false
		case <-time.After(wait):
			pg.sendPending()
		}
	}
	// Replies count whenever they come: give the readers a moment past
	// the deadline for what a busy host has not handed them yet.
	select {
	case <-pg.answered:
	case <-time.After(icmpGrace):
	}
	// Unblock the readers.
	for _, c := range []*icmp.PacketConn{pg.c4, pg.c6} {
		if c != nil {
			c.SetReadDeadline(time.Now())
		}
	}
	wg.Wait()
	pg.mu.Lock()
	defer pg.mu.Unlock()
	for k, p := range pg.pending {
		p.Outcome, p.Detail = Blocked, ""
		delete(pg.pending, k) // answered stays open: nobody waits on it now
	}
}

func (pg *pinger) sendPending() {
	pg.mu.Lock()
	keys := slices.Collect(maps.Keys(pg.pending))
	pg.mu.Unlock()
	for _, k := range keys {
		msg := icmp.Message{Body: &icmp.Echo{ID: pg.id, Seq: k.seq, Data: []byte(magic)}}
		c := pg.c4
		if k.addr.Is4() {
			msg.Type = ipv4.ICMPTypeEcho
		} else {
			msg.Type, c = ipv6.ICMPTypeEchoRequest, pg.c6
		}
		b, err := msg.Marshal(nil) // the kernel fills in the ICMPv6 checksum
		if err == nil {
			_, err = c.WriteTo(b, &net.IPAddr{IP: k.addr.AsSlice()})
		}
		if err != nil && !isRouteErr(err) {
			pg.resolve(k, Failed, "send echo: "+err.Error())
		} else if err != nil {
			pg.resolve(k, Unreachable, "no route in "+pg.from)
		}
	}
}

func isRouteErr(err error) bool {
	var se *os.SyscallError
	if errors.As(err, &se) {
		err = se.Err
	}
	return errors.Is(err, syscall.ENETUNREACH) || errors.Is(err, syscall.EHOSTUNREACH)
}

func (pg *pinger) resolve(k pingKey, o Outcome, detail string) {
	pg.mu.Lock()
	defer pg.mu.Unlock()
	if p, ok := pg.pending[k]; ok {
		p.Outcome, p.Detail = o, detail
		delete(pg.pending, k)
		if len(pg.pending) == 0 {
			close(pg.answered)
		}
	}
}

func (pg *pinger) read(c *icmp.PacketConn) {
	proto := 1
	if c == pg.c6 {
		proto = 58
	}
	buf := make([]byte, 1500)
	for {
		n, peer, err := c.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		from, ok := netip.AddrFromSlice(peer.(*net.IPAddr).IP)
		if !ok {
			continue
		}
		from = from.Unmap()
		msg, err := icmp.ParseMessage(proto, buf[:n])
		if err != nil {
			continue
		}
		switch body := msg.Body.(type) {
		case *icmp.Echo:
			if (msg.Type == ipv4.ICMPTypeEchoReply || msg.Type == ipv6.ICMPTypeEchoReply) && body.ID == pg.id {
				pg.resolve(pingKey{from, body.Seq}, Replied, "")
			}
		case *icmp.DstUnreach:
			pg.icmpError(proto == 58, msg, body.Data, from)
		case *icmp.TimeExceeded:
			pg.icmpError(proto == 58, msg, body.Data, from)
		}
	}
}

// icmpError matches an ICMP error to the echo it quotes.
func (pg *pinger) icmpError(v6 bool, msg *icmp.Message, quoted []byte, from netip.Addr) {
	dst, id, seq, ok := quotedEcho(v6, quoted)
	if !ok || id != pg.id {
		return
	}
	var typ int
	switch t := msg.Type.(type) {
	case ipv4.ICMPType:
		typ = int(t)
	case ipv6.ICMPType:
		typ = int(t)
	}
	e := icmpError{v6: v6, typ: uint8(typ), code: uint8(msg.Code), offender: from}
	pg.resolve(pingKey{dst, seq}, Unreachable, e.String())
}

// quotedEcho reads the destination, echo ID and sequence from the original
// datagram an ICMP error quotes.
func quotedEcho(v6 bool, b []byte) (dst netip.Addr, id, seq int, ok bool) {
	if v6 {
		if len(b) < 48 || b[6] != 58 || b[40] != 128 {
			return dst, 0, 0, false
		}
		dst = netip.AddrFrom16([16]byte(b[24:40]))
		b = b[40:]
	} else {
		if len(b) < 20 {
			return dst, 0, 0, false
		}
		ihl := int(b[0]&0x0f) * 4
		if b[9] != 1 || len(b) < ihl+8 || b[ihl] != 8 {
			return dst, 0, 0, false
		}
		dst = netip.AddrFrom4([4]byte(b[16:20]))
		b = b[ihl:]
	}
	return dst, int(binary.BigEndian.Uint16(b[4:6])), int(binary.BigEndian.Uint16(b[6:8])), true
}

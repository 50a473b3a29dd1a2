package traffic

import (
	"context"
	"net"
	"net/netip"
	"syscall"

	"github.com/nsflow/nsflow/internal/nsenter"
	"golang.org/x/sys/unix"
)

// Socket buffers large enough that a burst of small datagrams is not
// dropped while the receiving goroutine is descheduled. SO_*BUFFORCE
// needs CAP_NET_ADMIN; without it the plain option is capped by sysctl.
const sockBuf = 8 << 20

func network(proto Proto, a netip.Addr) string {
	if a.Is4() || a.Is4In6() {
		return string(proto) + "4"
	}
	return string(proto) + "6"
}

// control sets socket options before bind. TCP keeps the kernel's buffer
// autotuning (as iperf3 does); UDP gets large fixed buffers.
func control(reusePort, bigBuffers bool) func(string, string, syscall.RawConn) error {
	return func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			if reusePort {
				if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); serr != nil {
					return
				}
			}
			if !bigBuffers {
				return
			}
			for _, o := range [][2]int{{unix.SO_RCVBUFFORCE, unix.SO_RCVBUF}, {unix.SO_SNDBUFFORCE, unix.SO_SNDBUF}} {
				if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, o[0], sockBuf) != nil {
					_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, o[1], sockBuf)
				}
			}
		})
		if err != nil {
			return err
		}
		return serr
	}
}

// listenUDP opens n UDP sockets on addr inside netns, sharing one port
// with SO_REUSEPORT so the kernel spreads the client's streams over them.
func listenUDP(netnsPath string, addr netip.AddrPort, n int) ([]*net.UDPConn, error) {
	var conns []*net.UDPConn
	err := nsenter.Do(netnsPath, func() error {
		lc := net.ListenConfig{Control: control(n > 1, true)}
		for range n {
			pc, err := lc.ListenPacket(context.Background(), network(UDP, addr.Addr()), addr.String())
			if err != nil {
				return err
			}
			c := pc.(*net.UDPConn)
			conns = append(conns, c)
			// The first socket chose the port when addr had none.
			addr = c.LocalAddr().(*net.UDPAddr).AddrPort()
		}
		return nil
	})
	if err != nil {
		closeAll(conns)
		return nil, err
	}
	return conns, nil
}

// listenTCP opens a TCP listener on addr inside netns.
func listenTCP(netnsPath string, addr netip.AddrPort) (*net.TCPListener, error) {
	var ln net.Listener
	err := nsenter.Do(netnsPath, func() error {
		var err error
		lc := net.ListenConfig{Control: control(false, false)}
		ln, err = lc.Listen(context.Background(), network(TCP, addr.Addr()), addr.String())
		return err
	})
	if err != nil {
		return nil, err
	}
	return ln.(*net.TCPListener), nil
}

// dial opens n connected sockets inside netns.
func dial(ctx context.Context, netnsPath string, proto Proto, src netip.Addr, dst netip.AddrPort, n int) ([]net.Conn, error) {
	var conns []net.Conn
	err := nsenter.Do(netnsPath, func() error {
		d := net.Dialer{Control: control(false, proto == UDP)}
		if src.IsValid() {
			switch proto {
			case TCP:
				d.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0))
			case UDP:
				d.LocalAddr = net.UDPAddrFromAddrPort(netip.AddrPortFrom(src, 0))
			}
		}
		for range n {
			c, err := d.DialContext(ctx, network(proto, dst.Addr()), dst.String())
			if err != nil {
				return err
			}
			conns = append(conns, c)
		}
		return nil
	})
	if err != nil {
		closeAll(conns)
		return nil, err
	}
	return conns, nil
}

func closeAll[C interface{ Close() error }](cs []C) {
	for _, c := range cs {
		_ = c.Close()
	}
}

package verify

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// icmpError is one ICMP error as the kernel reports it on a socket's error
// queue (IP_RECVERR): its type and code, and who sent it.
type icmpError struct {
	v6       bool
	typ      uint8
	code     uint8
	offender netip.Addr
}

func (e icmpError) portUnreachable() bool {
	if e.v6 {
		return e.typ == 1 && e.code == 4
	}
	return e.typ == 3 && e.code == 3
}

func (e icmpError) String() string {
	return fmt.Sprintf("ICMP %s from %s", icmpDescribe(e.v6, e.typ, e.code), e.offender)
}

func icmpDescribe(v6 bool, typ, code uint8) string {
	type tc struct{ t, c uint8 }
	var names map[tc]string
	if v6 {
		names = map[tc]string{{1, 0}: "no route", {1, 1}: "administratively prohibited",
			{1, 3}: "address unreachable", {1, 4}: "port unreachable", {3, 0}: "hop limit exceeded"}
	} else {
		names = map[tc]string{{3, 0}: "net unreachable", {3, 1}: "host unreachable",
			{3, 3}: "port unreachable", {3, 9}: "net prohibited", {3, 10}: "host prohibited",
			{3, 13}: "administratively prohibited", {11, 0}: "TTL exceeded"}
	}
	if n, ok := names[tc{typ, code}]; ok {
		return n
	}
	return fmt.Sprintf("type %d code %d", typ, code)
}

// readErrQueue takes the oldest ICMP error off the socket's error queue.
func readErrQueue(rc syscall.RawConn) (icmpError, bool) {
	var out icmpError
	var found bool
	rc.Control(func(fd uintptr) {
		b := make([]byte, 256)
		oob := make([]byte, 512)
		_, oobn, _, _, err := unix.Recvmsg(int(fd), b, oob, unix.MSG_ERRQUEUE|unix.MSG_DONTWAIT)
		if err != nil {
			return
		}
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			return
		}
		for _, m := range msgs {
			isV4 := m.Header.Level == unix.SOL_IP && m.Header.Type == unix.IP_RECVERR
			isV6 := m.Header.Level == unix.SOL_IPV6 && m.Header.Type == unix.IPV6_RECVERR
			if !isV4 && !isV6 {
				continue
			}
			out, found = parseExtendedErr(m.Data)
			return
		}
	})
	return out, found
}

// parseExtendedErr reads struct sock_extended_err and the offender's
// sockaddr that follows it (SO_EE_OFFENDER).
func parseExtendedErr(d []byte) (icmpError, bool) {
	const eeLen = int(unsafe.Sizeof(unix.SockExtendedErr{}))
	if len(d) < eeLen+4 {
		return icmpError{}, false
	}
	ee := (*unix.SockExtendedErr)(unsafe.Pointer(&d[0]))
	if ee.Origin != unix.SO_EE_ORIGIN_ICMP && ee.Origin != unix.SO_EE_ORIGIN_ICMP6 {
		return icmpError{}, false
	}
	e := icmpError{v6: ee.Origin == unix.SO_EE_ORIGIN_ICMP6, typ: ee.Type, code: ee.Code}
	sa := d[eeLen:]
	switch binary.NativeEndian.Uint16(sa) {
	case unix.AF_INET:
		if len(sa) >= 8 {
			e.offender = netip.AddrFrom4([4]byte(sa[4:8]))
		}
	case unix.AF_INET6:
		if len(sa) >= 24 {
			e.offender = netip.AddrFrom16([16]byte(sa[8:24])).Unmap()
		}
	}
	return e, true
}

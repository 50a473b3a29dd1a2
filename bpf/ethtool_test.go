package bpf

import (
	"fmt"
	"runtime"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// setOffloads turns TSO, GSO and GRO on or off on the end, through the
// legacy ethtool ioctls (no ethtool binary needed). GRO on a veth also
// switches its receive path to NAPI.
func (e *end) setOffloads(t testing.TB, on bool) {
	t.Helper()
	e.NS.do(t, func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		for _, cmd := range []uint32{unix.ETHTOOL_STSO, unix.ETHTOOL_SGSO, unix.ETHTOOL_SGRO} {
			if err := ethtoolSet(fd, e.Ifname, cmd, on); err != nil {
				return err
			}
		}
		return nil
	})
}

func ethtoolSet(fd int, ifname string, cmd uint32, on bool) error {
	// On the heap, which does not move, as the kernel reads it through a
	// pointer the runtime does not see.
	val := &struct{ cmd, data uint32 }{cmd: cmd}
	if on {
		val.data = 1
	}
	var ifr struct {
		name [unix.IFNAMSIZ]byte
		data uintptr
		_    [16]byte
	}
	copy(ifr.name[:], ifname)
	ifr.data = uintptr(unsafe.Pointer(val))
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr)))
	runtime.KeepAlive(val)
	if errno != 0 {
		return fmt.Errorf("ethtool %#x on %s: %w", cmd, ifname, errno)
	}
	return nil
}

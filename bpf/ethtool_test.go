package bpf

import (
	"bytes"
	"encoding/binary"
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
		// UDP segmentation has no command of its own: it is a feature
		// bit, set by name (ethtool -K ... tx-udp-segmentation).
		return ethtoolSetFeature(fd, e.Ifname, "tx-udp-segmentation", on)
	})
}

func ethtoolSet(fd int, ifname string, cmd uint32, on bool) error {
	val := &struct{ cmd, data uint32 }{cmd: cmd}
	if on {
		val.data = 1
	}
	if err := ethtoolIoctl(fd, ifname, unsafe.Pointer(val)); err != nil {
		return fmt.Errorf("ethtool %#x on %s: %w", cmd, ifname, err)
	}
	return nil
}

const (
	ethSSFeatures = 4 // ETH_SS_FEATURES
	ethGStringLen = 32
)

// ethtoolSetFeature sets one netdev feature by its ethtool name through
// ETHTOOL_GSSET_INFO, ETHTOOL_GSTRINGS and ETHTOOL_SFEATURES, and checks
// that the kernel took it.
func ethtoolSetFeature(fd int, ifname, name string, on bool) error {
	info := &struct {
		cmd, _ uint32
		mask   uint64
		count  uint32
		_      uint32
	}{cmd: unix.ETHTOOL_GSSET_INFO, mask: 1 << ethSSFeatures}
	if err := ethtoolIoctl(fd, ifname, unsafe.Pointer(info)); err != nil {
		return fmt.Errorf("ethtool string set info on %s: %w", ifname, err)
	}
	n := int(info.count)
	strs := make([]byte, 12+n*ethGStringLen)
	binary.NativeEndian.PutUint32(strs[0:], unix.ETHTOOL_GSTRINGS)
	binary.NativeEndian.PutUint32(strs[4:], ethSSFeatures)
	binary.NativeEndian.PutUint32(strs[8:], uint32(n))
	if err := ethtoolIoctl(fd, ifname, unsafe.Pointer(&strs[0])); err != nil {
		return fmt.Errorf("ethtool feature names on %s: %w", ifname, err)
	}
	bit := -1
	for i := range n {
		if string(bytes.TrimRight(strs[12+i*ethGStringLen:12+(i+1)*ethGStringLen], "\x00")) == name {
			bit = i
		}
	}
	if bit < 0 {
		return fmt.Errorf("ethtool: %s has no feature %q", ifname, name)
	}
	blocks := (n + 31) / 32
	word, mask := bit/32, uint32(1)<<(bit%32)
	set := make([]uint32, 2+2*blocks) // cmd, size, then {valid, requested} per block
	set[0], set[1] = unix.ETHTOOL_SFEATURES, uint32(blocks)
	set[2+2*word] = mask
	if on {
		set[3+2*word] = mask
	}
	if err := ethtoolIoctl(fd, ifname, unsafe.Pointer(&set[0])); err != nil {
		return fmt.Errorf("ethtool set %s on %s: %w", name, ifname, err)
	}
	// Read it back: the kernel may leave a feature as it was (fixed, or
	// held by a dependency) and say so only in a positive return value.
	get := make([]uint32, 2+4*blocks) // cmd, size, then {available, requested, active, never_changed}
	get[0], get[1] = unix.ETHTOOL_GFEATURES, uint32(blocks)
	if err := ethtoolIoctl(fd, ifname, unsafe.Pointer(&get[0])); err != nil {
		return fmt.Errorf("ethtool get features on %s: %w", ifname, err)
	}
	if active := get[2+4*word+2]&mask != 0; active != on {
		return fmt.Errorf("ethtool: %s on %s is %v, asked for %v", name, ifname, active, on)
	}
	return nil
}

// ethtoolIoctl passes a request to SIOCETHTOOL. The request is on the
// heap, which does not move; the kernel reads and writes it through a
// pointer the runtime does not see.
func ethtoolIoctl(fd int, ifname string, req unsafe.Pointer) error {
	var ifr struct {
		name [unix.IFNAMSIZ]byte
		data uintptr
		_    [16]byte
	}
	copy(ifr.name[:], ifname)
	ifr.data = uintptr(req)
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr)))
	runtime.KeepAlive(req)
	if errno != 0 {
		return errno
	}
	return nil
}

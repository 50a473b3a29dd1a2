package bpf

import (
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/nsflow/nsflow/internal/nsenter"
)

// NetnsCookie returns the kernel's cookie of the network namespace at
// netnsPath ("" = the current one): the value the programs read with
// bpf_get_netns_cookie and put in PortKey and FlowKey. Unlike an inode
// number it is never reused while the kernel runs.
func NetnsCookie(netnsPath string) (uint64, error) {
	var cookie uint64
	err := nsenter.Do(netnsPath, func() error {
		var err error
		cookie, err = currentNetnsCookie()
		return err
	})
	return cookie, err
}

// NetnsCookieAt is NetnsCookie for the namespace with inode ino only; it
// fails with nsenter.ErrReplaced if another namespace is at netnsPath now.
func NetnsCookieAt(netnsPath string, ino uint64) (uint64, error) {
	var cookie uint64
	err := nsenter.DoInode(netnsPath, ino, func() error {
		var err error
		cookie, err = currentNetnsCookie()
		return err
	})
	return cookie, err
}

// currentNetnsCookie reads the cookie through a socket, which belongs to
// the namespace of the thread that opens it.
func currentNetnsCookie() (uint64, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("netns cookie: socket: %w", err)
	}
	defer unix.Close(fd)
	c, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	if err != nil {
		return 0, fmt.Errorf("netns cookie: getsockopt(SO_NETNS_COOKIE): %w", err)
	}
	return c, nil
}

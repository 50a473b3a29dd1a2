package traffic

import (
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// batch is a reusable set of message headers, each pointing at its own
// buffer, for one sendmmsg or recvmmsg call. Built once per socket, so the
// hot loop only rewrites sequence numbers.
type batch struct {
	hdrs []unix.Mmsghdr
	iovs []unix.Iovec
	bufs [][]byte
}

func newBatch(n, size int) *batch {
	b := &batch{
		hdrs: make([]unix.Mmsghdr, n),
		iovs: make([]unix.Iovec, n),
		bufs: make([][]byte, n),
	}
	mem := make([]byte, n*size)
	for i := range n {
		b.bufs[i] = mem[i*size : (i+1)*size : (i+1)*size]
		b.iovs[i].Base = &b.bufs[i][0]
		b.iovs[i].SetLen(size)
		b.hdrs[i].Hdr.Iov = &b.iovs[i]
		b.hdrs[i].Hdr.SetIovlen(1)
	}
	return b
}

// sendmmsg sends the first n messages of b on a connected socket and
// returns how many the kernel took.
func (b *batch) sendmmsg(fd uintptr, n int) (int, syscall.Errno) {
	r, _, e := unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&b.hdrs[0])), uintptr(n), unix.MSG_DONTWAIT, 0, 0)
	return int(r), e
}

// recvmmsg fills up to len(b.hdrs) messages without blocking; each
// message's length is in hdrs[i].Len.
func (b *batch) recvmmsg(fd uintptr) (int, syscall.Errno) {
	for i := range b.hdrs {
		b.hdrs[i].Hdr.Flags = 0
	}
	r, _, e := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&b.hdrs[0])), uintptr(len(b.hdrs)), unix.MSG_DONTWAIT, 0, 0)
	return int(r), e
}

package discovery

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/nsflow/nsflow/internal/nsenter"
	"golang.org/x/sys/unix"
)

// LinkEventType says what a LinkEvent carries.
type LinkEventType int

// Link event types. Resync replaces everything known about the namespace
// (sent after the kernel dropped notifications because a socket overflowed).
const (
	LinkChanged LinkEventType = iota
	LinkDeleted
	AddrAdded
	AddrDeleted
	Resync
)

// LinkEvent is one change in one namespace, identified by its inode.
type LinkEvent struct {
	Netns uint64
	Type  LinkEventType
	Link  Link     // LinkChanged, LinkDeleted
	Addr  Addr     // AddrAdded, AddrDeleted
	State Snapshot // Resync
}

// Snapshot is the full set of links and addresses of a namespace.
type Snapshot struct {
	Links []Link
	Addrs []Addr
}

// dumpTimeout bounds one link or address dump.
const dumpTimeout = 5 * time.Second

// rcvBuf is each subscription socket's receive buffer: room for a burst
// of a few thousand notifications (the default holds a few hundred) while
// the agent is busy. It costs memory only while notifications wait.
const rcvBuf = 1 << 20

// staleRetry is how soon a failed resync is tried again when no
// notification comes first: a namespace that went quiet must not keep a
// stale view.
const staleRetry = time.Second

// dumpAttempts bounds the dumps a resync tries while notifications keep
// overflowing the socket.
const dumpAttempts = 5

// errOverflow means notifications were dropped during a dump.
var errOverflow = errors.New("notifications overflowed the socket during the dump")

// Monitor holds one rtnetlink socket per namespace, subscribed to link and
// address changes, all served by a single epoll loop: a goroutine and a
// read buffer per namespace would cost more memory than the agent may use
// with a thousand namespaces.
type Monitor struct {
	events chan<- LinkEvent
	epfd   int
	wakefd int

	mu     sync.Mutex
	subs   map[uint64]*subscription // by epoll token
	byNs   map[uint64]uint64        // netns inode -> token
	stale  map[uint64]bool          // tokens of stale subscriptions
	nextID uint64
	closed bool
	// failResyncs makes that many resyncs after an overflow fail (tests).
	failResyncs int
}

type subscription struct {
	netns uint64
	fd    int
	seq   uint32
	// stale is set when a resync failed: the next notification, or
	// staleRetry later, tries again.
	stale bool
}

// NewMonitor creates a monitor sending changes on events once Run runs.
func NewMonitor(events chan<- LinkEvent) (*Monitor, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create: %w", err)
	}
	wakefd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN}
	setToken(&ev, 0)
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wakefd, &ev); err != nil {
		unix.Close(epfd)
		unix.Close(wakefd)
		return nil, fmt.Errorf("epoll_ctl: %w", err)
	}
	return &Monitor{events: events, epfd: epfd, wakefd: wakefd,
		subs: map[uint64]*subscription{}, byNs: map[uint64]uint64{}, stale: map[uint64]bool{}, nextID: 1}, nil
}

// Add subscribes to the namespace at path ("" for the current one), whose
// inode is netns (an error wrapping nsenter.ErrReplaced if the namespace
// there now is another), and returns its current links and addresses. Changes after
// the subscription arrive as events; a change racing the dump may arrive
// both ways, and applying it twice is harmless.
func (m *Monitor) Add(netns uint64, path string) (Snapshot, error) {
	var fd int
	// The socket binds to the namespace it is opened in: the one with the
	// inode given, not another made under its path since.
	err := nsenter.DoInode(path, netns, func() error {
		var err error
		fd, err = unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_ROUTE)
		return err
	})
	if err != nil {
		return Snapshot{}, fmt.Errorf("netlink socket in %s: %w", path, err)
	}
	// FORCE passes the rmem_max cap (CAP_NET_ADMIN); without it, the
	// default buffer still works, with resyncs after shorter bursts.
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, rcvBuf) != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, rcvBuf)
	}
	groups := uint32(1<<(unix.RTNLGRP_LINK-1) | 1<<(unix.RTNLGRP_IPV4_IFADDR-1) | 1<<(unix.RTNLGRP_IPV6_IFADDR-1))
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: groups}); err != nil {
		unix.Close(fd)
		return Snapshot{}, fmt.Errorf("netlink bind in %s: %w", path, err)
	}
	sub := &subscription{netns: netns, fd: fd}
	snap, err := sub.resync()
	if err != nil {
		unix.Close(fd)
		return Snapshot{}, fmt.Errorf("list links of %s: %w", path, err)
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		unix.Close(fd)
		return Snapshot{}, errors.New("monitor closed")
	}
	if old, ok := m.byNs[netns]; ok {
		m.removeLocked(old)
	}
	id := m.nextID
	m.nextID++
	ev := unix.EpollEvent{Events: unix.EPOLLIN}
	setToken(&ev, id)
	if err := unix.EpollCtl(m.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		unix.Close(fd)
		return Snapshot{}, fmt.Errorf("epoll_ctl: %w", err)
	}
	m.subs[id] = sub
	m.byNs[netns] = id
	return snap, nil
}

// Remove closes the namespace's subscription; events already read for it
// may still be delivered.
func (m *Monitor) Remove(netns uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if id, ok := m.byNs[netns]; ok {
		m.removeLocked(id)
	}
}

func (m *Monitor) removeLocked(id uint64) {
	sub := m.subs[id]
	delete(m.subs, id)
	delete(m.byNs, sub.netns)
	delete(m.stale, id)
	unix.EpollCtl(m.epfd, unix.EPOLL_CTL_DEL, sub.fd, nil)
	unix.Close(sub.fd)
}

// Len returns the number of subscribed namespaces.
func (m *Monitor) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.subs)
}

// Run serves the subscriptions until ctx is cancelled, then closes every
// socket. It must be called exactly once.
func (m *Monitor) Run(ctx context.Context) error {
	woken := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(woken)
		var one [8]byte
		binary.NativeEndian.PutUint64(one[:], 1)
		unix.Write(m.wakefd, one[:])
	})
	defer m.close()
	// Before the close: a wake-up still on its way would write to a closed
	// descriptor, whose number another file may have by then.
	defer func() {
		if !stop() {
			<-woken
		}
	}()

	buf := make([]byte, 1<<16)
	ready := make([]unix.EpollEvent, 64)
	var msgs []message
	// serve reads subscription id until it is drained; false when
	// cancelled.
	serve := func(id uint64) bool {
		for {
			netns, nread, resync, ok := m.read(id, buf)
			if !ok {
				return true
			}
			var evs []LinkEvent
			if resync != nil {
				evs = append(evs, LinkEvent{Netns: netns, Type: Resync, State: *resync})
			} else {
				msgs, _, _ = decode(buf[:nread], msgs[:0])
				evs = toEvents(netns, msgs)
			}
			for _, e := range evs {
				select {
				case m.events <- e:
				case <-ctx.Done():
					return false
				}
			}
		}
	}
	// Stale subscriptions are retried every staleRetry whether or not
	// other namespaces' notifications keep the loop busy meanwhile.
	var retried time.Time
	for {
		timeout := -1
		m.mu.Lock()
		stale := slices.Collect(maps.Keys(m.stale))
		m.mu.Unlock()
		if len(stale) > 0 {
			wait := staleRetry - time.Since(retried)
			if wait <= 0 {
				retried = time.Now()
				for _, id := range stale {
					if !serve(id) {
						return nil
					}
				}
				continue
			}
			timeout = int(wait/time.Millisecond) + 1
		}
		n, err := unix.EpollWait(m.epfd, ready, timeout)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return fmt.Errorf("epoll_wait: %w", err)
		}
		for _, ev := range ready[:n] {
			id := token(&ev)
			if id == 0 {
				return nil // woken: cancelled
			}
			if !serve(id) {
				return nil
			}
		}
	}
}

// read takes one datagram from subscription id. After an overflow
// (ENOBUFS) it dumps the namespace again and returns that as resync.
func (m *Monitor) read(id uint64, buf []byte) (netns uint64, n int, resync *Snapshot, ok bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	sub, found := m.subs[id]
	if !found {
		return 0, 0, nil, false
	}
	n, _, err := unix.Recvfrom(sub.fd, buf, 0)
	if err == nil && !sub.stale {
		return sub.netns, n, nil, true
	}
	if err != nil && !errors.Is(err, unix.ENOBUFS) && !sub.stale {
		return 0, 0, nil, false // EAGAIN: drained
	}
	// Notifications were lost: only a new dump tells what changed.
	snap, derr := sub.resync()
	if m.failResyncs > 0 {
		m.failResyncs--
		derr = errors.New("resync failed (test)")
	}
	if sub.stale = derr != nil; sub.stale {
		m.stale[id] = true
		return 0, 0, nil, false // tried again on the next notification, or soon
	}
	delete(m.stale, id)
	return sub.netns, 0, &snap, true
}

func (m *Monitor) close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for id := range m.subs {
		m.removeLocked(id)
	}
	m.closed = true
	unix.Close(m.epfd)
	unix.Close(m.wakefd)
}

func toEvents(netns uint64, msgs []message) []LinkEvent {
	evs := make([]LinkEvent, 0, len(msgs))
	for _, msg := range msgs {
		e := LinkEvent{Netns: netns, Link: msg.link, Addr: msg.addr}
		switch msg.typ {
		case unix.RTM_NEWLINK:
			e.Type = LinkChanged
		case unix.RTM_DELLINK:
			e.Type = LinkDeleted
		case unix.RTM_NEWADDR:
			e.Type = AddrAdded
		case unix.RTM_DELADDR:
			e.Type = AddrDeleted
		}
		evs = append(evs, e)
	}
	return evs
}

// resync empties the socket, then dumps. After an overflow the kernel
// reports no further drops until the socket's queue has been empty, so a
// dump taken before that could miss changes silently; one taken after
// learns of any drop during it (errOverflow), and is taken again.
func (s *subscription) resync() (Snapshot, error) {
	buf := make([]byte, 1<<16)
	for range dumpAttempts {
		for {
			_, _, err := unix.Recvfrom(s.fd, buf, 0)
			if err != nil && !errors.Is(err, unix.ENOBUFS) && !errors.Is(err, unix.EINTR) {
				break // EAGAIN: empty
			}
		}
		snap, err := s.dump()
		if !errors.Is(err, errOverflow) {
			return snap, err
		}
	}
	return Snapshot{}, fmt.Errorf("%w, %d times", errOverflow, dumpAttempts)
}

// dump lists links, then addresses (one dump at a time per socket), on
// the subscription socket itself. Notifications interleaved with the dump
// are folded in, so the result is at least as new as the dump.
func (s *subscription) dump() (Snapshot, error) {
	links := map[int]Link{}
	addrs := map[Addr]bool{}
	overflow := false
	for _, req := range []uint16{unix.RTM_GETLINK, unix.RTM_GETADDR} {
		s.seq++
		if err := s.request(req); err != nil {
			return Snapshot{}, err
		}
		deadline := time.Now().Add(dumpTimeout)
		buf := make([]byte, 1<<16)
		var msgs []message
		for done := false; !done; {
			n, _, err := unix.Recvfrom(s.fd, buf, 0)
			if errors.Is(err, unix.EAGAIN) {
				left := time.Until(deadline)
				if left <= 0 {
					return Snapshot{}, errors.New("dump timed out")
				}
				pfd := []unix.PollFd{{Fd: int32(s.fd), Events: unix.POLLIN}}
				unix.Poll(pfd, int(left/time.Millisecond)+1)
				continue
			}
			if errors.Is(err, unix.ENOBUFS) {
				overflow = true // read the dump to its end, then report it
				continue
			}
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil {
				return Snapshot{}, err
			}
			var errno syscall.Errno
			msgs, done, errno = decode(buf[:n], msgs[:0])
			if errno != 0 {
				return Snapshot{}, errno
			}
			for _, msg := range msgs {
				switch msg.typ {
				case unix.RTM_NEWLINK:
					links[msg.link.Index] = msg.link
				case unix.RTM_DELLINK:
					delete(links, msg.link.Index)
				case unix.RTM_NEWADDR:
					addrs[msg.addr] = true
				case unix.RTM_DELADDR:
					delete(addrs, msg.addr)
				}
			}
		}
	}
	if overflow {
		return Snapshot{}, errOverflow
	}
	var snap Snapshot
	for _, l := range links {
		snap.Links = append(snap.Links, l)
	}
	for a := range addrs {
		snap.Addrs = append(snap.Addrs, a)
	}
	slices.SortFunc(snap.Links, func(a, b Link) int { return a.Index - b.Index })
	return snap, nil
}

func (s *subscription) request(typ uint16) error {
	// nlmsghdr (16 bytes) + a 16-byte family header (ifinfomsg; an
	// ifaddrmsg is shorter and the kernel accepts the padding).
	msg := make([]byte, unix.SizeofNlMsghdr+unix.SizeofIfInfomsg)
	binary.NativeEndian.PutUint32(msg[0:4], uint32(len(msg)))
	binary.NativeEndian.PutUint16(msg[4:6], typ)
	binary.NativeEndian.PutUint16(msg[6:8], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	binary.NativeEndian.PutUint32(msg[8:12], s.seq)
	msg[16] = unix.AF_UNSPEC
	return unix.Sendto(s.fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
}

// The epoll token is 64 bits spread over EpollEvent's Fd and Pad fields.
func setToken(ev *unix.EpollEvent, id uint64) {
	ev.Fd = int32(uint32(id))
	ev.Pad = int32(uint32(id >> 32))
}

func token(ev *unix.EpollEvent) uint64 {
	return uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
}

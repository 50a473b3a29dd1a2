package discovery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Defaults for WatchConfig's zero fields.
const (
	DefaultNamedDir = "/run/netns"
	DefaultProcRoot = "/proc"
	DefaultInterval = time.Second
)

// pendingRetry is how often a named namespace whose bind mount is not in
// place yet is looked at again, and pendingPatience how long that goes on
// before it is left to the regular interval.
const (
	pendingRetry    = 25 * time.Millisecond
	procRetry       = 250 * time.Millisecond // after a failed scan of /proc
	pendingPatience = 5 * time.Second
	notifyDebounce  = 10 * time.Millisecond
	// revalidateEvery, every name is looked at again, in case an inotify
	// event was lost.
	revalidateEvery = 30 * time.Second
)

// WatchConfig says where to look; the zero value watches the real host.
type WatchConfig struct {
	NamedDir string        // bind mounts of named namespaces (/run/netns)
	ProcRoot string        // procfs (/proc)
	Interval time.Duration // how often /proc is rescanned (1s)
	Logger   *slog.Logger  // for errors the watch recovers from (none: discarded)
}

func (c WatchConfig) withDefaults() WatchConfig {
	if c.NamedDir == "" {
		c.NamedDir = DefaultNamedDir
	}
	if c.ProcRoot == "" {
		c.ProcRoot = DefaultProcRoot
	}
	if c.Interval <= 0 {
		c.Interval = DefaultInterval
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// EventType says what happened to a namespace.
type EventType int

// Namespace event types. Updated means the name, path or owning processes
// changed; the inode (the identity) never does. Synced is sent once, after
// the Added events of the namespaces present at start.
const (
	Added EventType = iota
	Updated
	Removed
	Synced
)

func (t EventType) String() string {
	return [...]string{"add", "update", "remove", "synced"}[t]
}

// NetnsEvent reports one namespace change.
type NetnsEvent struct {
	Type      EventType
	Namespace Namespace
}

// WatchNetns reports every namespace present at start as Added, then
// Synced, then every change until ctx is cancelled, sending on events.
// Named namespaces, and those bind-mounted elsewhere in the agent's mount
// namespace, are seen within milliseconds (inotify, and a poll of the
// mount table); those only processes hold, within one Interval.
// It returns nil on cancellation and an error only if it cannot start.
func WatchNetns(ctx context.Context, cfg WatchConfig, events chan<- NetnsEvent) error {
	w, err := newWatcher(cfg)
	if err != nil {
		return err
	}

	notify, stopNotify := w.inotify()
	defer stopNotify()
	mounted, stopMounted := w.mountNotify()
	defer stopMounted()

	tick := time.NewTicker(w.cfg.Interval)
	defer tick.Stop()
	retry := time.NewTimer(0)
	defer retry.Stop()
	procs, synced := true, false
	for {
		evs, retrySoon := w.scan(procs)
		// Synced waits for a scan of /proc that worked: before it, the
		// unnamed namespaces are unknown, not absent (and the agent, once
		// synced, drops the counters of ports it does not know).
		if !synced && !w.procsFailed {
			evs = append(evs, NetnsEvent{Type: Synced})
			synced = true
		}
		for _, ev := range evs {
			select {
			case events <- ev:
			case <-ctx.Done():
				return nil
			}
		}
		switch {
		case retrySoon:
			retry.Reset(pendingRetry)
		case w.procsFailed:
			retry.Reset(procRetry)
		}
		// Only the ticker rescans /proc; inotify and the bind-mount retry
		// concern the named directory alone. Bursts of inotify events
		// (another tool creating hundreds of namespaces) are coalesced
		// into one scan per debounce period. A failed scan of /proc is
		// retried with the bind-mount retry.
		procs = w.procsFailed
	wait:
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			procs = true
		case <-notify:
			if !retrySoon {
				retry.Reset(notifyDebounce)
				retrySoon = true
			}
			goto wait
		case <-mounted:
			if !retrySoon {
				retry.Reset(notifyDebounce)
				retrySoon = true
			}
			goto wait
		case <-retry.C:
		}
	}
}

// List returns the namespaces present now, the host's first, once: what
// WatchNetns reports as Added before Synced, and those it does not see
// (otherHolders), for a one-off look.
func List(cfg WatchConfig) ([]Namespace, error) {
	w, err := newWatcher(cfg)
	if err != nil {
		return nil, err
	}
	// The watch retries what it cannot read; a one-off look must say so.
	if _, err := os.ReadDir(w.cfg.NamedDir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	w.cache.all = true
	evs, _ := w.scan(true)
	if w.procsFailed {
		return nil, fmt.Errorf("scan %s: cannot list the processes' namespaces", w.cfg.ProcRoot)
	}
	out := make([]Namespace, 0, len(evs))
	seen := map[uint64]bool{}
	for _, ev := range evs {
		out = append(out, ev.Namespace)
		seen[ev.Namespace.Inode] = true
	}
	others, err := otherHolders(w.cfg.ProcRoot)
	if err != nil {
		return nil, fmt.Errorf("scan %s: %w", w.cfg.ProcRoot, err)
	}
	for ino, path := range others {
		if !seen[ino] {
			out = append(out, Namespace{Inode: ino, Path: path})
		}
	}
	slices.SortFunc(out, func(a, b Namespace) int {
		if a.Host != b.Host {
			if a.Host {
				return -1
			}
			return 1
		}
		return cmpUint(a.Inode, b.Inode)
	})
	return out, nil
}

func newWatcher(cfg WatchConfig) (*watcher, error) {
	cfg = cfg.withDefaults()
	// This thread's namespace, the host's: /proc/self is the main
	// thread's, which another goroutine may have inside a namespace. (A
	// procfs of the tests' own may have no thread-self.)
	host, err := nsInode(cfg.ProcRoot + "/thread-self/ns/net")
	if errors.Is(err, os.ErrNotExist) {
		host, err = nsInode(cfg.ProcRoot + "/self/ns/net")
	}
	if err != nil {
		return nil, err
	}
	return &watcher{cache: newNamedCache(), cfg: cfg, host: host, known: map[uint64]Namespace{}, pendingSince: map[string]time.Time{}}, nil
}

// scanProcs is procNamespaces; tests make it fail.
var scanProcs = procNamespaces

type watcher struct {
	mu          sync.Mutex // guards cache, mountsDirty and mountsPolled, which the notifiers set
	cache       *namedCache
	revalidated time.Time
	procs       map[uint64][]int  // last /proc scan
	procsFailed bool              // the last scan of /proc failed
	named       map[uint64]string // last named scan
	// mounts is the last read of the bind mounts outside the named
	// directory; it is read again when the mount table changed
	// (mountsDirty), at every scan of /proc when that is not watched
	// (mountsPolled false), and every revalidateEvery in any case.
	mounts       map[uint64]string
	mountsDirty  bool
	mountsPolled bool
	mountsRead   time.Time

	cfg          WatchConfig
	host         uint64
	known        map[uint64]Namespace
	pendingSince map[string]time.Time
}

// inotify watches the named directory (created if missing, as `ip netns`
// does), marks the names it reports dirty and signals. Without it, the
// periodic scan still finds named namespaces, only later.
func (w *watcher) inotify() (<-chan struct{}, func()) {
	sig := make(chan struct{}, 1)
	noop := func() {}
	if err := os.MkdirAll(w.cfg.NamedDir, 0o755); err != nil {
		return sig, noop
	}
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		return sig, noop
	}
	const mask = unix.IN_CREATE | unix.IN_DELETE | unix.IN_MOVED_FROM | unix.IN_MOVED_TO | unix.IN_ATTRIB
	if _, err := unix.InotifyAddWatch(fd, w.cfg.NamedDir, mask); err != nil {
		unix.Close(fd)
		return sig, noop
	}
	// A non-blocking fd handed to os.NewFile uses the runtime poller, so
	// the reader parks instead of holding a thread, and Close wakes it.
	f := os.NewFile(uintptr(fd), "inotify")
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 64<<10)
		for {
			n, err := f.Read(buf)
			if err != nil {
				if errors.Is(err, os.ErrClosed) {
					return
				}
				continue
			}
			w.markDirty(buf[:n])
			select {
			case sig <- struct{}{}:
			default:
			}
		}
	}()
	return sig, func() { f.Close(); <-done }
}

// mountNotify signals when the mount table changes, so that a namespace
// bind-mounted outside the named directory is seen as soon as it is (the
// kernel flags an open mountinfo with POLLPRI on every mount and
// unmount). Without it, the mounts are read again at every scan of /proc.
func (w *watcher) mountNotify() (<-chan struct{}, func()) {
	sig := make(chan struct{}, 1)
	noop := func() {}
	// A plain descriptor: os.Open would add it to the Go runtime's epoll
	// set, whose wake-ups would take (and so clear) the change flag the
	// kernel keeps per open file, before poll(2) here could see it.
	fd, err := unix.Open(w.cfg.ProcRoot+"/self/mountinfo", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return sig, noop
	}
	var wake [2]int
	if err := unix.Pipe2(wake[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		unix.Close(fd)
		return sig, noop
	}
	w.mu.Lock()
	w.mountsPolled = true
	w.mu.Unlock()
	done := make(chan struct{})
	go func() {
		defer close(done)
		// poll(2) blocks this goroutine's thread; the pipe wakes it to stop.
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLPRI}, {Fd: int32(wake[0]), Events: unix.POLLIN}}
		for {
			fds[0].Revents, fds[1].Revents = 0, 0
			if _, err := unix.Poll(fds, -1); err != nil && err != unix.EINTR {
				w.cfg.Logger.Warn("discovery: cannot watch the mount table, reading it at every scan", "err", err)
				w.mu.Lock()
				w.mountsPolled = false
				w.mu.Unlock()
				return
			}
			if fds[1].Revents != 0 {
				return
			}
			if fds[0].Revents&(unix.POLLPRI|unix.POLLERR) != 0 {
				w.mu.Lock()
				w.mountsDirty = true
				// An unmount, or a mount over a name already there,
				// raises no inotify event: every name is looked at again.
				w.cache.all = true
				w.mu.Unlock()
				select {
				case sig <- struct{}{}:
				default:
				}
			}
		}
	}()
	return sig, func() {
		unix.Write(wake[1], []byte{0})
		<-done
		unix.Close(wake[0])
		unix.Close(wake[1])
		unix.Close(fd)
	}
}

// markDirty records the names in a buffer of inotify events.
func (w *watcher) markDirty(buf []byte) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for len(buf) >= unix.SizeofInotifyEvent {
		ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[0]))
		end := unix.SizeofInotifyEvent + int(ev.Len)
		if end > len(buf) {
			break
		}
		if ev.Mask&unix.IN_Q_OVERFLOW != 0 {
			w.cache.all = true
		}
		if name := cstring(buf[unix.SizeofInotifyEvent:end]); name != "" {
			w.cache.dirty[name] = true
		}
		buf = buf[end:]
	}
}

// scan compares what is there now with what was reported and returns the
// events; retrySoon is set while a named namespace awaits its bind mount.
func (w *watcher) scan(withProcs bool) (events []NetnsEvent, retrySoon bool) {
	w.mu.Lock()
	if now := time.Now(); now.Sub(w.revalidated) > revalidateEvery {
		w.cache.all, w.revalidated = true, now
	}
	retry := slices.Collect(maps.Keys(w.pendingSince))
	pending, namedChanged, err := w.cache.refresh(w.cfg.NamedDir, withProcs, retry)
	var named map[uint64]string
	if namedChanged || w.named == nil {
		named = w.cache.named()
	} else {
		named = w.named
	}
	w.mu.Unlock()
	if err != nil {
		namedChanged = true
	}
	now := time.Now()
	for name := range w.pendingSince {
		if !slices.Contains(pending, name) {
			delete(w.pendingSince, name)
		}
	}
	for _, name := range pending {
		since, ok := w.pendingSince[name]
		if !ok {
			since = now
			w.pendingSince[name] = now
		}
		if now.Sub(since) < pendingPatience {
			retrySoon = true
		}
	}
	procsChanged := false
	if withProcs || w.procs == nil {
		procs, err := scanProcs(w.cfg.ProcRoot)
		w.procsFailed = err != nil
		if err != nil {
			// A failed scan (EMFILE, ENOMEM) says nothing about the
			// namespaces: keep the last one rather than report every
			// unnamed namespace removed, and try again soon.
			w.cfg.Logger.Warn("discovery: cannot scan processes, keeping the last scan", "proc", w.cfg.ProcRoot, "err", err)
			procs = w.procs
			if procs == nil {
				procs = map[uint64][]int{}
			}
		}
		procsChanged = w.procs == nil || !maps.EqualFunc(procs, w.procs, slices.Equal)
		w.procs = procs
	}
	mountsChanged := false
	w.mu.Lock()
	readMounts := w.mounts == nil || w.mountsDirty ||
		(withProcs && (!w.mountsPolled || time.Since(w.mountsRead) > revalidateEvery))
	w.mountsDirty = false
	w.mu.Unlock()
	if readMounts {
		w.mountsRead = time.Now()
		mounts, err := netnsMounts(w.cfg.ProcRoot, w.cfg.NamedDir)
		if err != nil {
			w.cfg.Logger.Warn("discovery: cannot read the mount table, keeping the last read", "proc", w.cfg.ProcRoot, "err", err)
			mounts = w.mounts
			if mounts == nil {
				mounts = map[uint64]string{}
			}
		}
		mountsChanged = w.mounts == nil || !maps.Equal(mounts, w.mounts)
		w.mounts = mounts
	}
	if !namedChanged && !procsChanged && !mountsChanged && w.named != nil {
		// Nothing moved: skip rebuilding a thousand namespaces.
		return nil, retrySoon
	}
	w.named = named
	procs, mounts := w.procs, w.mounts

	current := make(map[uint64]Namespace, len(named)+len(procs)+len(mounts))
	add := func(ino uint64) {
		if _, ok := current[ino]; ok {
			return
		}
		n := Namespace{Inode: ino, Host: ino == w.host, Name: named[ino], Pids: procs[ino]}
		switch {
		case n.Host:
		case n.Name != "":
			n.Path = w.cfg.NamedDir + "/" + n.Name
		case mounts[ino] != "":
			// Outlives any process inside (a runtime's own directory).
			n.Path = mounts[ino]
		default:
			n.Path = w.cfg.ProcRoot + "/" + strconv.Itoa(n.Pids[0]) + "/ns/net"
		}
		n.Comms = w.comms(n)
		current[ino] = n
	}
	add(w.host)
	for ino := range named {
		add(ino)
	}
	for ino := range procs {
		add(ino)
	}
	for ino := range mounts {
		add(ino)
	}

	for ino, n := range current {
		old, ok := w.known[ino]
		switch {
		case !ok:
			events = append(events, NetnsEvent{Added, n})
		case !old.same(n):
			events = append(events, NetnsEvent{Updated, n})
		}
	}
	for ino, old := range w.known {
		if _, ok := current[ino]; !ok {
			events = append(events, NetnsEvent{Removed, old})
		}
	}
	// Deterministic order helps the consumer's logs and the tests.
	slices.SortFunc(events, func(a, b NetnsEvent) int {
		if a.Type != b.Type {
			return int(b.Type) - int(a.Type) // removals first
		}
		return cmpUint(a.Namespace.Inode, b.Namespace.Inode)
	})
	w.known = current
	return events, retrySoon
}

// comms reuses the command names already read when the pids are unchanged,
// so a steady host costs one readlink per process per scan and nothing more.
func (w *watcher) comms(n Namespace) []string {
	if old, ok := w.known[n.Inode]; ok && slices.Equal(old.Pids, n.Pids) {
		return old.Comms
	}
	out := make([]string, 0, len(n.Pids))
	for _, pid := range n.Pids {
		out = append(out, comm(w.cfg.ProcRoot, pid))
	}
	return out
}

func cmpUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

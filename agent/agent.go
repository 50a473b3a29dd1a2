package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nsflow/nsflow/bpf"
	"github.com/nsflow/nsflow/collector"
	"github.com/nsflow/nsflow/discovery"
	"github.com/nsflow/nsflow/internal/nsenter"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// attachWorkers is how many setup and attach jobs run at once. They
// mostly wait in the kernel: a tcx attach waits for an RCU grace period,
// and concurrent waiters share one, so width, not CPUs, sets the pace.
const attachWorkers = 16

// Agent discovers, attaches and attributes. Its state changes only on the
// Run goroutine; scrapes read it under mu.
type Agent struct {
	cfg Config
	log *slog.Logger
	dp  *bpf.Datapath
	mon *discovery.Monitor
	// locks hold the pin directory and the state file (none without
	// pinning) for as long as the agent runs.
	locks fileLocks

	linkEvents chan discovery.LinkEvent
	jobs       chan func() func()
	results    chan func()
	queue      []func() func() // jobs not handed to a worker yet
	inflight   int             // jobs queued or running, results not applied yet
	synced     bool            // the initial namespace scan was reported
	// undetached are attachments whose detach failed (a tc filter netlink
	// would not delete): each eviction pass tries again, and so does the
	// datapath's Close at shutdown.
	undetached []pendingDetach

	mu       sync.RWMutex
	byInode  map[uint64]*nsState
	byCookie map[uint64]*nsState
	// gone are the namespaces removed since the last eviction pass, by
	// cookie: their records are attributed as they were while they lived
	// until that pass folds them.
	gone map[uint64]goneNetns
	// owners maps an address to the namespaces holding it (by cookie) and
	// since when (CLOCK_MONOTONIC ns; 0 for addresses found in a
	// namespace's listing: held since before the agent knew).
	owners map[netip.Addr]map[uint64]uint64
	bcasts map[netip.Addr]int // IPv4 subnet broadcast -> live addresses in that subnet
	// dropped are the addresses live namespaces let go since the last
	// eviction pass, by address: records that began before still find
	// who held them (as gone does for removed namespaces).
	dropped   map[netip.Addr][]droppedAddr
	gonePorts map[portLabel]*gonePort // last counts of deleted ports (goneports.go)
	// gonePortsDirty is set when gonePorts, the attached ports or a base
	// changed since the state file last had them (under mu).
	gonePortsDirty bool
	// startPorts are the ports of the last save before this start (see
	// portLabelEntry), until the first eviction pass (goneports.go).
	startPorts map[bpf.PortKey]startPort
	// keptBases are the bases of counters whose port state is not at
	// hand: those of the ports saved before this start, until each is
	// attached again or found gone, and those of ports dropped while
	// their counters could not be deleted (settleBaseLocked,
	// dropCountersLocked).
	keptBases map[bpf.PortKey]startPort
	// awaitSave are the counters of retired ports that wait for their
	// kept counts to be saved before they are deleted (retirePortLocked).
	awaitSave map[bpf.PortKey]startPort
	// lingering are ports dropped from their namespace's links (deleted,
	// or their namespace removed) whose programs could not be detached,
	// or whose last counts could not be read when they were retired:
	// scrapes show their counters under their last labels (and a save
	// keeps them), until a retry detaches and retires them
	// (retryDetaches), or reads them (retryUnreadLocked). Under mu.
	lingering map[bpf.PortKey]lingerPort
	events    map[collector.DiscoveryKey]uint64
	ready     atomic.Bool
	attachErr atomic.Uint64

	book  *flowBook
	peers peers
	// deleteFlows is dp.DeleteFlows, which tests make fail; under mu.
	deleteFlows func([]bpf.FlowKey) (int, error)
	// deletePort is dp.DeletePort, which tests make fail; set under mu
	// (write).
	deletePort func(bpf.PortKey) error
	// readPort reads a port's counters: dp.Port, unless a test made it
	// fail (readPortOf).
	readPort func(bpf.PortKey) (bpf.PortStats, bool, error)
	// stopped is set, under mu, when the datapath is closed: the web
	// server outlives the agent by a moment, and its scrapes must not
	// read closed maps.
	stopped bool

	sumMu    sync.Mutex
	sum      *collector.FlowSummary
	sumAt    time.Time
	evicting atomic.Bool
}

type nsState struct {
	ns     discovery.Namespace
	label  string
	cookie uint64 // 0 until set up
	// settingUp is set while a setup job is queued or running;
	// setupFailed when the last one failed while the namespace was still
	// there: the eviction ticker retries it.
	settingUp, setupFailed bool
	links                  map[int]*portState
	addrs                  map[discovery.Addr]bool
	// early holds link events that arrived before the setup result: they
	// may be newer than the snapshot, so they are replayed after it.
	early []discovery.LinkEvent
}

type portState struct {
	link discovery.Link
	// attaching is set while an attach job runs; att once it succeeded.
	attaching bool
	att       *bpf.Attachment
	// base is what of the port's counters is shown elsewhere: its counts
	// when it took labels whose series held kept counts of gone ports
	// (keepRelabelledLocked), or those kept while its counters wait to be
	// deleted (dropCountersLocked), or one saved before a restart
	// (settleBaseLocked). Its series shows the kept counts under its
	// labels plus its counts less base. Written under mu (write).
	base bpf.PortStats
}

// New loads the datapath (reusing pinned maps) and the saved state. It
// fails with a clear message when bpffs is not mounted where pins go.
func New(cfg Config) (*Agent, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	var locks fileLocks
	// A start that fails leaves no pin directory it created.
	fail := func(err error) (*Agent, error) {
		if locks.createdPinPath {
			_ = bpf.RemovePins(cfg.PinPath)
		}
		locks.release()
		return nil, err
	}
	if cfg.PinPath != "" {
		if err := checkBPFFS(cfg.PinPath); err != nil {
			return nil, err
		}
		f, created, err := lockPinPath(cfg.PinPath)
		if err != nil {
			return nil, err // the directory may be another agent's now
		}
		locks.files, locks.createdPinPath = append(locks.files, f), created
		if err := checkWritable(cfg.StateFile); err != nil {
			return fail(err)
		}
		// Two agents on one state file (with pin paths of their own)
		// would overwrite each other's totals.
		if err := locks.take(lockStateFile(cfg.StateFile)); err != nil {
			return fail(err)
		}
	}
	book, err := newFlowBook(cfg)
	if err != nil {
		return fail(err)
	}
	dp, err := bpf.Load(bpf.Options{PinPath: cfg.PinPath, MaxFlows: cfg.MaxFlows, ForceMode: cfg.AttachMode})
	if err != nil {
		return fail(err)
	}
	if dp.PinsReset {
		cfg.Logger.Warn("pinned maps of another layout (another nsflow version) were replaced; their counters restart",
			"pin_path", cfg.PinPath, "maps", dp.PinsReplaced)
	}
	switch {
	case dp.FlowsLost > 0:
		cfg.Logger.Warn("flow table resized (--flows.max): records that did not fit were dropped, with their counts",
			"carried", dp.FlowsCarried, "dropped", dp.FlowsLost, "capacity", dp.FlowCapacity())
	case dp.FlowsCarried > 0:
		cfg.Logger.Info("flow table resized (--flows.max): every record carried over", "carried", dp.FlowsCarried, "capacity", dp.FlowCapacity())
	}
	a := &Agent{
		cfg: cfg, log: cfg.Logger, dp: dp, book: book, locks: locks,
		linkEvents: make(chan discovery.LinkEvent, 4096),
		jobs:       make(chan func() func()),
		results:    make(chan func(), 64),
		byInode:    map[uint64]*nsState{},
		byCookie:   map[uint64]*nsState{},
		gone:       map[uint64]goneNetns{},
		owners:     map[netip.Addr]map[uint64]uint64{},
		bcasts:     map[netip.Addr]int{},
		dropped:    map[netip.Addr][]droppedAddr{},
		gonePorts:  gonePortsOf(book.st.GonePorts),
		startPorts: startPortsOf(book.st.PortLabels),
		events:     map[collector.DiscoveryKey]uint64{},
	}
	a.lingering = map[bpf.PortKey]lingerPort{}
	for k, sp := range a.startPorts {
		if sp.unread { // still to be read: see retryUnreadLocked
			a.lingering[k] = lingerPort{label: sp.label, p: &portState{base: sp.base}, unread: true}
			delete(a.startPorts, k)
		}
	}
	a.keptBases, a.awaitSave = maps.Clone(a.startPorts), map[bpf.PortKey]startPort{}
	a.deleteFlows, a.deletePort, a.readPort = dp.DeleteFlows, dp.DeletePort, readPortOf(dp)
	if a.mon, err = discovery.NewMonitor(a.linkEvents); err != nil {
		dp.Close()
		return fail(err)
	}
	if err := a.book.recover(dp); err != nil {
		a.log.Warn("recovering interrupted flow eviction", "err", err)
	}
	return a, nil
}

// lockPinPath takes an exclusive lock on the pin directory for as long as
// the agent runs. Two agents on one pin path share the maps: each counts
// every packet (both attach), and the second's start deletes the first
// one's port counters.
// It reports whether it created the directory.
func lockPinPath(pinPath string) (_ *os.File, created bool, _ error) {
	if err := os.MkdirAll(filepath.Dir(pinPath), 0o700); err != nil {
		return nil, false, fmt.Errorf("pin path %s: %w", pinPath, err)
	}
	err := os.Mkdir(pinPath, 0o700)
	created = err == nil
	if err != nil && !errors.Is(err, os.ErrExist) {
		return nil, false, fmt.Errorf("pin path %s: %w", pinPath, err)
	}
	f, err := os.Open(pinPath)
	if err != nil {
		return nil, false, fmt.Errorf("pin path %s: %w", pinPath, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, false, fmt.Errorf("pin path %s is in use by another nsflow agent: give this one its own --bpf.pin-path (and --state.file)", pinPath)
		}
		return nil, false, fmt.Errorf("pin path %s: lock: %w", pinPath, err)
	}
	return f, created, nil
}

// lockStateFile takes an exclusive lock beside the state file (FILE.lock).
func lockStateFile(path string) (*os.File, error) {
	f, err := os.OpenFile(path+".lock", os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("state file %s: lock: %w", path, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("state file %s is in use by another nsflow agent: give this one its own --state.file", path)
		}
		return nil, fmt.Errorf("state file %s: lock: %w", path, err)
	}
	return f, nil
}

// fileLocks are open files holding flock locks, and whether this start
// created the pin directory.
type fileLocks struct {
	files          []*os.File
	createdPinPath bool
}

// take adds the lock f, or returns err.
func (l *fileLocks) take(f *os.File, err error) error {
	if err != nil {
		return err
	}
	l.files = append(l.files, f)
	return nil
}

func (l *fileLocks) release() {
	for _, f := range l.files {
		f.Close()
	}
	l.files = nil
}

// checkWritable makes sure the state file can be written, at start: the
// agent saves it before deleting evicted flows, and cannot evict without.
func checkWritable(path string) error {
	dir := filepath.Dir(path)
	err := os.MkdirAll(dir, 0o700)
	if err == nil {
		var f *os.File
		if f, err = os.CreateTemp(dir, "."+filepath.Base(path)+".check*"); err == nil {
			f.Close()
			err = os.Remove(f.Name())
		}
	}
	if err != nil {
		return fmt.Errorf("state file %s cannot be written: %w", path, err)
	}
	return nil
}

// checkBPFFS makes sure the pin directory is (or will be) on a bpf
// filesystem: pins elsewhere fail with an obscure EPERM.
func checkBPFFS(pinPath string) error {
	dir := pinPath
	for {
		var st unix.Statfs_t
		err := unix.Statfs(dir, &st)
		if err == nil {
			if st.Type != unix.BPF_FS_MAGIC {
				return fmt.Errorf("pin path %s is not on a bpf filesystem: mount one with `mount -t bpf bpf /sys/fs/bpf`, or disable pinning with --bpf.pin=false", pinPath)
			}
			return nil
		}
		if !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("pin path %s: %w", pinPath, err)
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return fmt.Errorf("pin path %s: no existing parent directory", pinPath)
		}
		dir = parent
	}
}

// Ready reports whether the namespaces present at start are discovered and
// their ports attached.
func (a *Agent) Ready() bool { return a.ready.Load() }

// Run discovers and attaches until ctx is cancelled, then detaches
// everything, saves the state and closes the datapath. Pinned maps stay.
func (a *Agent) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	nsEvents := make(chan discovery.NetnsEvent, 256)
	var wg sync.WaitGroup
	errc := make(chan error, 2)
	wg.Go(func() { errc <- discovery.WatchNetns(ctx, a.cfg.Discovery, nsEvents) })
	wg.Go(func() { errc <- a.mon.Run(ctx) })
	for range attachWorkers {
		wg.Go(func() { a.worker(ctx) })
	}

	evict := time.NewTicker(a.evictInterval())
	defer evict.Stop()
	var runErr error
loop:
	for {
		// Jobs queue here rather than block the loop, which must keep
		// applying results for the workers to make progress.
		var jobs chan func() func()
		var next func() func()
		if len(a.queue) > 0 {
			jobs, next = a.jobs, a.queue[0]
		}
		select {
		case <-ctx.Done():
			break loop
		case err := <-errc:
			if err != nil {
				runErr = err
				break loop
			}
		case e := <-nsEvents:
			a.handleNetns(e)
		case e := <-a.linkEvents:
			a.handleLink(e)
		case jobs <- next:
			a.queue = a.queue[1:]
		case apply := <-a.results:
			a.inflight--
			apply()
		case <-evict.C:
			a.retrySetups()
			if a.ready.Load() {
				a.evict()
			}
		}
		if !a.ready.Load() && a.synced && a.inflight == 0 {
			// Pins of what vanished while the agent was away are cleaned
			// up (their counts kept) before the first scrape shows them.
			a.evict()
			a.ready.Store(true)
			a.log.Info("initial discovery done", "namespaces", len(a.byInode), "attached", a.attachedCount())
		}
	}
	cancel() // workers give up sending results once ctx is done
	wg.Wait()
	return errors.Join(runErr, a.shutdown())
}

// handleNetns records a namespace change.
func (a *Agent) handleNetns(e discovery.NetnsEvent) {
	if e.Type == discovery.Synced {
		a.synced = true
		return
	}
	n := e.Namespace
	if !a.cfg.Netns.Match(n.Label()) {
		// A namespace renamed out of the filter goes away as if removed.
		if _, known := a.byInode[n.Inode]; !known {
			if e.Type == discovery.Added && !a.ready.Load() {
				a.queueJob(a.sweepJob(n, nil))
			}
			return
		}
		e.Type = discovery.Removed
	}
	if _, known := a.byInode[n.Inode]; e.Type == discovery.Updated && !known {
		// First seen under a label the filter rejected, e.g. as netns-INODE
		// through /proc before `ip netns add` finished its bind mount.
		e.Type = discovery.Added
	}
	a.countEvent("netns", e.Type.String())
	a.log.Debug("namespace "+e.Type.String(), "netns", n.Label(), "inode", n.Inode, "path", n.Path)
	switch e.Type {
	case discovery.Added:
		a.mu.Lock()
		st := &nsState{ns: n, label: n.Label(), settingUp: true, links: map[int]*portState{}, addrs: map[discovery.Addr]bool{}}
		a.byInode[n.Inode] = st
		a.mu.Unlock()
		a.queueJob(a.setupJob(st))
	case discovery.Updated:
		a.mu.Lock()
		s := a.byInode[n.Inode]
		moved := s != nil && s.ns.Path != n.Path
		if s != nil {
			oldLabel := s.label
			s.ns, s.label = n, n.Label()
			for idx, p := range s.links {
				a.keepRelabelledLocked(s, idx, p, portLabel{oldLabel, p.link.Name})
			}
		}
		a.mu.Unlock()
		if moved {
			a.resume(s)
		}
	case discovery.Removed:
		a.removeNetns(n.Inode)
	}
}

// setupJob subscribes to the namespace's links and reads its cookie, off
// the event loop; the result is applied on it, to st only. Both check that
// the namespace at st's path is still st's inode (not another made under
// its name since).
func (a *Agent) setupJob(st *nsState) func() func() {
	n := st.ns
	return func() func() {
		cookie, err := netnsCookieAt(n.Path, n.Inode)
		var snap discovery.Snapshot
		if err == nil {
			snap, err = a.mon.Add(n.Inode, n.Path) // checks the inode too
		}
		return func() {
			s := a.byInode[n.Inode]
			if s != st {
				// Removed while the job ran. A namespace added since
				// under the inode is the same one (inodes are unique
				// among live namespaces), and its own setup subscribes.
				if s == nil {
					a.mon.Remove(n.Inode)
				}
				return
			}
			s.settingUp = false
			s.setupFailed = false
			if err != nil {
				a.mon.Remove(n.Inode)
				switch {
				case s.ns.Path != n.Path:
					// Named by another path while this job ran (its
					// process exited, say): see resume.
					a.log.Debug("namespace setup failed", "netns", n.Label(), "err", err)
					a.resume(s)
				case vanished(err):
					// Deleted mid-setup: the next scan says so.
					a.log.Debug("namespace setup failed: namespace gone", "netns", n.Label(), "err", err)
				default:
					// Still there: none of its ports is attached until a
					// retry succeeds.
					s.setupFailed = true
					a.attachErr.Add(1)
					a.log.Warn("namespace setup failed, retrying", "netns", n.Label(), "in", a.evictInterval(), "err", err)
				}
				return
			}
			a.mu.Lock()
			s.cookie = cookie
			a.byCookie[cookie] = s
			delete(a.gone, cookie)
			a.forgetPeers(0) // a peer not found before may be this one
			a.mu.Unlock()
			a.applySnapshot(s, snap)
			for _, e := range s.early {
				a.handleLink(e)
			}
			s.early = nil
		}
	}
}

// retrySetups queues a setup job for each namespace whose last setup
// failed while it was still there.
func (a *Agent) retrySetups() {
	for _, s := range a.byInode {
		if s.setupFailed && !s.settingUp && s.cookie == 0 {
			s.settingUp = true
			a.queueJob(a.setupJob(s))
		}
	}
}

// resume retries what failed for a namespace when discovery opens it by a
// new path: an unnamed namespace is opened through one of its processes,
// and a setup or attach that used a process that exited meanwhile failed.
// (Only then: an attach that fails for another reason would fail again.)
func (a *Agent) resume(s *nsState) {
	if s.cookie == 0 {
		if !s.settingUp {
			s.settingUp = true
			a.queueJob(a.setupJob(s))
		}
		return
	}
	for _, p := range s.links {
		a.upsertLink(s, p.link) // attaches what is eligible and not attached
	}
}

func (a *Agent) removeNetns(inode uint64) {
	s := a.byInode[inode]
	if s == nil {
		return
	}
	a.mon.Remove(inode)
	// Programs off first, with the ports still live for scrapes; then the
	// namespace goes and its ports' last counts are kept in one step.
	retired := map[int]*portState{}
	for idx, p := range s.links {
		if a.detachProgs(s, idx, p) {
			retired[idx] = p
		}
	}
	a.mu.Lock()
	delete(a.byInode, inode)
	if s.cookie != 0 {
		delete(a.byCookie, s.cookie)
		g := goneNetns{label: s.label, addrs: map[netip.Addr]bool{}, bcasts: map[netip.Addr]bool{}, at: monotonicNow()}
		for ad := range s.addrs {
			if ownedAddr(ad.Addr) { // as in owners: link-local and the like identify no one
				g.addrs[ad.Addr] = true
			}
			if b, ok := ad.SubnetBroadcast(); ok {
				g.bcasts[b] = true
			}
		}
		a.gone[s.cookie] = g
		a.forgetPeers(s.cookie)
	}
	for ad := range s.addrs {
		a.dropAddrLocked(s, ad)
	}
	for idx, p := range s.links {
		if retired[idx] == nil {
			a.lingerLocked(s, p)
		}
	}
	a.retirePortLocked(s, retired)
	a.mu.Unlock()
}

// applySnapshot replaces what is known of a namespace's links and
// addresses, queueing attach jobs for new ports.
func (a *Agent) applySnapshot(s *nsState, snap discovery.Snapshot) {
	present := map[int]bool{}
	var unwatched []int
	for _, l := range snap.Links {
		present[l.Index] = true
		if !a.eligible(l) {
			unwatched = append(unwatched, l.Index)
		}
		// A snapshot follows lost notifications: a device deleted and
		// created anew at the same index looks unchanged, but our
		// programs went with the old one.
		if p := s.links[l.Index]; p != nil && p.att != nil {
			if alive, err := p.att.Alive(); err != nil {
				a.log.Warn("cannot tell whether an attachment is alive", "netns", s.label, "interface", l.Name, "err", err)
			} else if !alive {
				a.log.Info("interface replaced while notifications were lost: attaching again", "netns", s.label, "interface", l.Name)
				a.detach(s, l.Index, p)
			}
		}
		a.upsertLink(s, l)
	}
	for idx, p := range s.links {
		if !present[idx] {
			a.deleteLink(s, idx, p)
		}
	}
	if len(unwatched) > 0 && !a.ready.Load() {
		a.queueJob(a.sweepJob(s.ns, unwatched))
	}
	addrs := map[discovery.Addr]bool{}
	for _, ad := range snap.Addrs {
		addrs[ad] = true
	}
	a.mu.Lock()
	for ad := range s.addrs {
		if !addrs[ad] {
			a.dropAddrLocked(s, ad)
		}
	}
	for ad := range addrs {
		a.addAddrLocked(s, ad, 0)
	}
	a.mu.Unlock()
}

func (a *Agent) handleLink(e discovery.LinkEvent) {
	s := a.byInode[e.Netns]
	if s == nil {
		return // removed meanwhile
	}
	if s.cookie == 0 {
		s.early = append(s.early, e)
		return
	}
	switch e.Type {
	case discovery.LinkChanged:
		a.countEvent("link", "change")
		a.upsertLink(s, e.Link)
	case discovery.LinkDeleted:
		a.countEvent("link", "remove")
		if p := s.links[e.Link.Index]; p != nil {
			a.deleteLink(s, e.Link.Index, p)
		}
	case discovery.AddrAdded:
		a.countEvent("address", "add")
		a.mu.Lock()
		a.addAddrLocked(s, e.Addr, monotonicNow())
		a.mu.Unlock()
	case discovery.AddrDeleted:
		a.countEvent("address", "remove")
		a.mu.Lock()
		a.dropAddrLocked(s, e.Addr)
		a.mu.Unlock()
	case discovery.Resync:
		a.countEvent("netns", "resync")
		a.applySnapshot(s, e.State)
	}
}

// ownedAddr says whether an address identifies its namespace: loopback,
// link-local and multicast addresses exist in many namespaces at once.
func ownedAddr(ip netip.Addr) bool {
	return ip.IsValid() && !ip.IsLoopback() && !ip.IsLinkLocalUnicast() && !ip.IsMulticast() && !ip.IsUnspecified()
}

func (a *Agent) addAddrLocked(s *nsState, ad discovery.Addr, since uint64) {
	if s.addrs[ad] {
		return
	}
	s.addrs[ad] = true
	if b, ok := ad.SubnetBroadcast(); ok {
		a.bcasts[b]++
	}
	if !ownedAddr(ad.Addr) {
		return
	}
	set := a.owners[ad.Addr]
	if set == nil {
		set = map[uint64]uint64{}
		a.owners[ad.Addr] = set
	}
	if _, held := set[s.cookie]; !held {
		set[s.cookie] = since
	}
}

// dropAddrLocked forgets an address of namespace s: its subnet's
// broadcast, and that s holds it, unless another of its interfaces still
// has it.
func (a *Agent) dropAddrLocked(s *nsState, ad discovery.Addr) {
	if !s.addrs[ad] {
		return
	}
	delete(s.addrs, ad)
	bcast, inSubnet := ad.SubnetBroadcast()
	if inSubnet {
		if a.bcasts[bcast]--; a.bcasts[bcast] <= 0 {
			delete(a.bcasts, bcast)
		}
	}
	if a.byCookie[s.cookie] == s {
		for other := range s.addrs {
			if other.Addr == ad.Addr {
				return
			}
		}
		if ownedAddr(ad.Addr) {
			a.dropped[ad.Addr] = append(a.dropped[ad.Addr], droppedAddr{cookie: s.cookie, at: monotonicNow()})
		}
		if inSubnet && a.bcasts[bcast] == 0 {
			// The subnet's last holder let it go: its broadcasts not yet
			// decided are still broadcasts.
			a.dropped[bcast] = append(a.dropped[bcast], droppedAddr{cookie: s.cookie, at: monotonicNow(), broadcast: true})
		}
	}
	if set := a.owners[ad.Addr]; set != nil {
		delete(set, s.cookie)
		if len(set) == 0 {
			delete(a.owners, ad.Addr)
		}
	}
}

// eligible says whether the agent attaches to a link: veths and bridge
// ports, never the bridge itself, filtered by name.
func (a *Agent) eligible(l discovery.Link) bool {
	return (l.Kind == "veth" || l.BridgePort()) && l.Kind != "bridge" && a.cfg.Interface.Match(l.Name)
}

func (a *Agent) upsertLink(s *nsState, l discovery.Link) {
	// No longer watched (renamed out of --interface.include, released
	// from a bridge): detached under the name it was counted by.
	if p := s.links[l.Index]; p != nil && p.att != nil && !a.eligible(l) {
		a.detach(s, l.Index, p)
	}
	a.mu.Lock()
	p := s.links[l.Index]
	if p == nil {
		p = &portState{}
		s.links[l.Index] = p
	}
	oldName := p.link.Name
	p.link = l
	if oldName != "" {
		a.keepRelabelledLocked(s, l.Index, p, portLabel{s.label, oldName})
	}
	a.mu.Unlock()
	if a.eligible(l) && p.att == nil && !p.attaching {
		a.setAttaching(p, true)
		a.queueJob(a.attachJob(s, l))
	}
}

func (a *Agent) deleteLink(s *nsState, idx int, p *portState) {
	detached := a.detachProgs(s, idx, p)
	a.mu.Lock()
	delete(s.links, idx)
	if detached {
		a.retirePortLocked(s, map[int]*portState{idx: p})
	} else {
		a.lingerLocked(s, p)
	}
	a.mu.Unlock()
}

// lingerPort is a port in Agent.lingering.
type lingerPort struct {
	label portLabel
	p     *portState
	// unread: detached, its last counts could not be read.
	unread bool
}

// lingerLocked keeps an attached port whose detach failed in scrapes
// once it leaves its namespace's links. Callers hold a.mu (write).
func (a *Agent) lingerLocked(s *nsState, p *portState) {
	if p.att == nil {
		return
	}
	// Counters an unread port's counts wait in stay under its labels:
	// the retire that follows the detach settles them.
	if k := p.att.Key(); !a.lingering[k].unread {
		a.lingering[k] = lingerPort{label: portLabel{s.label, p.link.Name}, p: p}
	}
}

// detach removes the programs and the port's counters (its pins): the
// interface is gone or no longer watched.
func (a *Agent) detach(s *nsState, idx int, p *portState) {
	if !a.detachProgs(s, idx, p) {
		return
	}
	a.mu.Lock()
	a.retirePortLocked(s, map[int]*portState{idx: p})
	a.mu.Unlock()
}

// detachProgs takes the programs off an attached port, and reports
// whether it did; its counters stay for retirePortLocked. A detach that
// fails leaves the port attached and counted: each eviction pass tries
// again, and retires the port once it works.
func (a *Agent) detachProgs(s *nsState, idx int, p *portState) bool {
	if p.att == nil {
		return false
	}
	if err := p.att.Detach(); err != nil {
		a.log.Warn("detach failed; trying again at each eviction pass", "netns", s.label, "interface", p.link.Name, "err", err)
		a.pendDetach(pendingDetach{p.att, s, idx, p})
		return false
	}
	a.log.Debug("detached", "netns", s.label, "interface", p.link.Name, "ifindex", idx)
	return true
}

// pendingDetach is an attachment whose detach failed. Its port (none for
// a discarded attachment) stays counted until the detach works.
type pendingDetach struct {
	att *bpf.Attachment
	s   *nsState
	idx int
	p   *portState
}

func (a *Agent) pendDetach(pd pendingDetach) {
	if !slices.ContainsFunc(a.undetached, func(o pendingDetach) bool { return o.att == pd.att }) {
		a.undetached = append(a.undetached, pd)
	}
}

// detachPendingAt reports whether programs whose detach failed still
// count into the counters at k. On the event loop.
func (a *Agent) detachPendingAt(k bpf.PortKey) bool {
	return slices.ContainsFunc(a.undetached, func(pd pendingDetach) bool { return pd.p != nil && pd.att.Key() == k })
}

// retryDetaches tries the failed detaches again, and retires their ports
// when they work; a port watched again meanwhile keeps its attachment.
func (a *Agent) retryDetaches() {
	a.undetached = slices.DeleteFunc(a.undetached, func(pd pendingDetach) bool {
		if pd.p != nil && (pd.p.att != pd.att ||
			a.byInode[pd.s.ns.Inode] == pd.s && pd.s.links[pd.idx] == pd.p && a.eligible(pd.p.link)) {
			return true
		}
		if err := pd.att.Detach(); err != nil {
			a.log.Warn("detach failed again", "interface", pd.att.Ifname, "err", err)
			return false
		}
		if pd.p != nil {
			k := pd.att.Key()
			a.mu.Lock()
			lp := a.lingering[k]
			lingered := lp.p == pd.p && !lp.unread
			if lingered {
				delete(a.lingering, k)
			}
			// The port's index may have gone to a new port meanwhile,
			// whose counters these now are: not retired.
			if cur := a.portStateLocked(k); cur == nil || cur == pd.p {
				a.retirePortLocked(pd.s, map[int]*portState{pd.idx: pd.p})
			}
			a.mu.Unlock()
		}
		return true
	})
}

// setAttaching marks a port while its attach job runs; scrapes and
// evictions read the mark (under mu) to keep its counters.
func (a *Agent) setAttaching(p *portState, on bool) {
	a.mu.Lock()
	p.attaching = on
	a.mu.Unlock()
}

// queueJob hands slow work (setns, netlink, attach) to the workers; the
// closure it returns is applied on the event loop.
// sweepJob removes the tc filters that a run that died left, counting
// into the pinned tables, on interfaces of n this agent does not watch
// (the ifindexes given; all for nil): an agent restarted with narrower
// filters would leave them counting for good. Only at start: a later
// interface cannot carry them.
func (a *Agent) sweepJob(n discovery.Namespace, ifindexes []int) func() func() {
	return func() func() {
		removed, err := a.dp.RemoveDeadRunFilters(n.Path, n.Inode, ifindexes)
		return func() {
			if removed > 0 {
				a.log.Info("removed tc filters a run that died left on interfaces not watched now", "netns", n.Label(), "filters", removed)
			}
			if err != nil && !vanished(err) {
				a.log.Warn("cannot remove the tc filters a run that died left", "netns", n.Label(), "err", err)
			}
		}
	}
}

func (a *Agent) queueJob(job func() func()) {
	a.inflight++
	a.queue = append(a.queue, job)
}

func (a *Agent) attachJob(s *nsState, l discovery.Link) func() func() {
	path, label, inode, p0 := s.ns.Path, s.label, s.ns.Inode, s.links[l.Index]
	return func() func() {
		att, err := attachIndex(a.dp, path, l.Index)
		return func() {
			// The result is for the port the job was made for, in the
			// namespace it was made for: the one at the path then.
			cur := a.byInode[inode]
			var p *portState
			if cur == s && cur.links[l.Index] == p0 {
				p = p0
			}
			if err == nil && att.NetnsCookie != s.cookie {
				// Another namespace was at the path by the time of the
				// attach: not this port, nor one the agent knows yet.
				a.discard(att, portLabel{}, nil)
				err = fmt.Errorf("%s: %w", path, nsenter.ErrReplaced)
			}
			if err != nil {
				if p != nil {
					a.setAttaching(p, false)
					if vanished(err) {
						// Deleted or moved away before the attach: its
						// removal is on its way, and nothing failed.
						a.log.Debug("attach skipped: interface gone", "netns", label, "interface", l.Name, "err", err)
					} else {
						a.attachErr.Add(1)
						a.log.Warn("attach failed", "netns", label, "interface", l.Name, "err", err)
					}
					if cur.ns.Path != path {
						a.upsertLink(cur, p.link) // named by a new path meanwhile: see resume
					}
				} else {
					a.log.Debug("attach skipped: interface vanished", "netns", label, "interface", l.Name, "err", err)
				}
				return
			}
			if p == nil || !a.eligible(p.link) {
				// Gone or no longer watched while attaching: undo, and
				// keep what scrapes may have shown of it meanwhile.
				if p != nil {
					a.setAttaching(p, false)
				}
				a.discard(att, portLabel{label, l.Name}, p0)
				return
			}
			a.mu.Lock()
			p.attaching, p.att = false, att
			a.gonePortsDirty = true // the attached ports' labels
			a.settleBaseLocked(cur, l.Index, p)
			a.mu.Unlock()
			a.log.Debug("attached", "netns", label, "interface", p.link.Name, "ifindex", l.Index, "mode", att.Mode)
		}
	}
}

// discard undoes an attachment whose port the agent does not keep: its
// programs (a failed detach is tried again at each pass) and, if it has a
// label and no newer port has them, its counters, keeping what they
// counted under label (scrapes may have shown it). On the event loop.
func (a *Agent) discard(att *bpf.Attachment, label portLabel, p0 *portState) {
	if err := att.Detach(); err != nil {
		a.log.Warn("detach failed; trying again at each eviction pass", "interface", att.Ifname, "err", err)
		a.pendDetach(pendingDetach{att: att})
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	k := att.Key()
	// Counters of a port the agent does not know (label-less: another
	// namespace was at the path) are not this attachment's to drop: a
	// port of the last run's, which the first pass keeps, or fresh ones,
	// which the stale-port sweep deletes.
	if a.portLiveLocked(k) || label == (portLabel{}) {
		return
	}
	// The counters may be reused ones whose base is kept elsewhere: the
	// port's, or one saved before a restart.
	var kept bpf.PortStats
	st, ok, err := a.readPort(k)
	if !ok {
		st = bpf.PortStats{}
	}
	switch {
	case err != nil:
		// Scrapes may have shown its counts: they stay until a pass
		// reads them (retryUnreadLocked).
		a.log.Warn("read the last counts of a discarded port; trying again at each eviction pass", "netns", label.netns, "interface", label.ifname, "err", err)
		// Its own base: p0's, or one kept for its counters, which
		// others may consume before the entry is read.
		var base bpf.PortStats
		if p0 != nil {
			base = p0.base
		}
		if kb, found := a.keptBases[k]; found && base == (bpf.PortStats{}) {
			base = kb.base
		}
		a.lingerUnreadLocked(k, lingerPort{label: label, p: &portState{base: base}, unread: true})
		return
	case err == nil && a.settleUnreadLocked(k, st, p0, time.Now()):
		kept = st
	case err == nil && ok:
		kept = st
		base := a.baseLocked(k, p0, &st)
		subStats(&st, &base)
		a.retainPortLocked(label, st, time.Now())
	}
	a.dropCountersLocked(k, p0, label, kept)
}

// netnsCookieAt is bpf.NetnsCookieAt; tests make it fail.
var netnsCookieAt = bpf.NetnsCookieAt

// attachIndex is Datapath.AttachIndex; tests hold it up.
var attachIndex = (*bpf.Datapath).AttachIndex

// readPortOf gives New's Agent.readPort; tests make the reads of an agent
// fail from its start.
var readPortOf = func(dp *bpf.Datapath) func(bpf.PortKey) (bpf.PortStats, bool, error) { return dp.Port }

// vanished reports whether an attach failed because its interface or
// namespace was gone: the index names no device (deleted, or moved to
// another namespace), the device went during the attach, or the path to
// the namespace no longer exists or leads to another one.
func vanished(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ENOENT) ||
		errors.Is(err, nsenter.ErrReplaced)
}

func (a *Agent) worker(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case job := <-a.jobs:
			apply := job()
			select {
			case a.results <- apply:
			case <-ctx.Done():
				return
			}
		}
	}
}

func (a *Agent) countEvent(object, event string) {
	a.mu.Lock()
	a.events[collector.DiscoveryKey{Object: object, Event: event}]++
	a.mu.Unlock()
}

func (a *Agent) attachedCount() int {
	a.mu.RLock()
	defer a.mu.RUnlock()
	n := 0
	for _, s := range a.byInode {
		for _, p := range s.links {
			if p.att != nil {
				n++
			}
		}
	}
	return n
}

func (a *Agent) evictInterval() time.Duration {
	return min(a.cfg.FlowIdleTimeout/2, 10*time.Second)
}

// shutdown detaches everything, saves the state and closes the datapath.
func (a *Agent) shutdown() error {
	var errs []error
	a.mu.Lock()
	a.book.mu.Lock()
	a.stashGonePortsLocked()
	if err := a.book.st.save(); err != nil {
		errs = append(errs, err)
	}
	a.book.mu.Unlock()
	a.mu.Unlock()
	// The write lock waits out the scrapes reading the maps; later ones
	// see stopped. Close (a detach per port) runs without it, so that
	// the last scrapes' other collectors are not held up.
	a.mu.Lock()
	a.stopped = true
	a.mu.Unlock()
	if err := a.dp.Close(); err != nil {
		errs = append(errs, err)
	}
	a.locks.release() // after the maps: the next agent may take them
	a.log.Info("detached and stopped")
	return errors.Join(errs...)
}

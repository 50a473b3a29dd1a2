package topology

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/nsflow/nsflow/internal/english"
)

// hostWaitTimeout bounds how long teardown waits for the kernel to destroy
// the host-side ends of veths whose namespace was deleted, before deleting
// them itself (something else, e.g. a socket, still holds the namespace).
const hostWaitTimeout = 15 * time.Second

// DownResult summarizes a Down.
type DownResult struct {
	Name              string `json:"name"`
	NamespacesRemoved int    `json:"namespaces_removed"`
	InterfacesRemoved int    `json:"interfaces_removed"`
	// Foreign lists objects of a declared name that the topology does not
	// own and therefore left alone.
	Foreign []string      `json:"foreign,omitempty"`
	Elapsed time.Duration `json:"elapsed_ns"`
}

func (r *DownResult) String() string {
	msg := fmt.Sprintf("topology %s is down: %s and %s removed (%.2fs)",
		r.Name, english.Count(r.NamespacesRemoved, "namespace"), english.Count(r.InterfacesRemoved, "host interface"), r.Elapsed.Seconds())
	if r.NamespacesRemoved == 0 && r.InterfacesRemoved == 0 {
		msg = fmt.Sprintf("topology %s was already down (%.2fs)", r.Name, r.Elapsed.Seconds())
	}
	for _, f := range r.Foreign {
		msg += "\n  left alone, not owned by this topology: " + f
	}
	return msg
}

// Down deletes what topology s owns: the namespaces and host interfaces
// that its state record or its spec lists and that carry its marker. It
// returns once the host-side ends of its veths are gone too, so the host
// is as before. A topology that is already down is success.
func Down(ctx context.Context, s *Spec, opts Options) (*DownResult, error) {
	start := time.Now()
	if s.Name == "" {
		return nil, errors.New("topology has no name")
	}
	unlock, err := lockTopology(s.Name)
	if err != nil {
		return nil, fmt.Errorf("topology %s: %w", s.Name, err)
	}
	defer unlock()
	rec, err := readState(s.Name)
	if err != nil {
		return nil, err
	}
	plan := plannedState(s)
	plan.merge(rec)
	marker := markerFor(s.Name)
	res := &DownResult{Name: s.Name}

	host, err := openHost()
	if err != nil {
		return nil, err
	}
	defer host.close()

	// Looking the host interfaces up gives the namespaces of their veth
	// peers an id in the host, which the checks below read.
	hostLinks, err := linksNamed(host.h, plan.HostInterfaces)
	if err != nil {
		return nil, err
	}
	// Find which namespaces are ours, concurrently: each check opens the
	// namespace and asks for its loopback.
	var (
		mu      sync.Mutex
		owned   []string
		ownedID = map[int]bool{}
	)
	err = parallel(ctx, len(plan.Namespaces), opts.workers(), "checking namespaces", opts.Progress, func(i int) error {
		name := plan.Namespaces[i]
		path := s.NetnsPath(name)
		if rec.hasNamespace(name) {
			if err := removeLeftoverNetns(path); err != nil {
				return err
			}
		}
		c, err := openIfPresent(name, path)
		if c == nil {
			return err // nil when the namespace is not there
		}
		owner, err := netnsOwner(c)
		id := -1
		if err == nil && owner == marker {
			mu.Lock() // one host handle for all the checks
			id, err = host.h.GetNetNsIdByFd(c.fd)
			mu.Unlock()
		}
		c.close()
		if err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		if owner == marker {
			owned = append(owned, name)
			if id >= 0 {
				ownedID[id] = true
			}
		} else {
			res.Foreign = append(res.Foreign, "namespace "+name)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	slices.Sort(res.Foreign)

	// A host veth end is ours if it carries the marker, or carries none
	// and its peer is in a namespace of ours (an up killed before marking
	// it): it goes with that namespace. Decided now, by ifindex: once the
	// namespace starts dying, its id is gone from the end's attributes.
	adopted := map[int]bool{}
	for _, l := range hostLinks {
		if a := l.Attrs(); a.Alias == "" && l.Type() == "veth" && ownedID[a.NetNsID] {
			adopted[a.Index] = true
		}
	}
	ours := func(l netlink.Link) bool { return l.Attrs().Alias == marker || adopted[l.Attrs().Index] }
	n, removed, foreign, err := teardown(ctx, host, s, owned, plan.HostInterfaces, ours, opts)
	res.NamespacesRemoved, res.InterfacesRemoved = n, removed
	res.Foreign = append(res.Foreign, foreign...)
	if err != nil {
		return res, err
	}
	if err := removeState(s.Name); err != nil {
		return res, err
	}
	res.Elapsed = time.Since(start)
	return res, nil
}

// teardown deletes the given namespaces (known to be owned) and those of
// the host interfaces that are owned, then waits until the host
// interfaces are gone. It returns the number of namespaces and host
// interfaces removed and the host interfaces left alone as foreign.
func teardown(ctx context.Context, host *nsConn, s *Spec, namespaces, hostIfs []string, owned func(netlink.Link) bool, opts Options) (int, int, []string, error) {
	before, err := linksNamed(host.h, hostIfs)
	if err != nil {
		return 0, 0, nil, err
	}
	var (
		mine    = map[string]bool{}
		foreign []string
	)
	for _, name := range hostIfs {
		if l, ok := before[name]; ok {
			if owned(l) {
				mine[name] = true
			} else {
				foreign = append(foreign, "host interface "+name)
			}
		}
	}
	// Unmounting drops the namespace; the kernel destroys it and its
	// interfaces in batches, with their veth peers in the host.
	err = parallel(ctx, len(namespaces), opts.workers(), "removing namespaces", opts.Progress, func(i int) error {
		return unmountNetns(s.NetnsPath(namespaces[i]))
	})
	if err != nil {
		return 0, 0, foreign, err
	}
	// Bridges and veths with both ends in the host do not go with any
	// namespace: delete them. A veth's NetNsID is -1 when its peer is in
	// the same namespace.
	var errs []error
	for name := range mine {
		l := before[name]
		if l.Type() == "veth" && l.Attrs().NetNsID >= 0 {
			continue
		}
		if err := host.h.LinkDel(l); err != nil && !isNotFound(err) {
			errs = append(errs, fmt.Errorf("delete host interface %s: %w", name, err))
		}
	}
	if err := waitHostGone(ctx, host, mine, owned, hostWaitTimeout); err != nil {
		errs = append(errs, err)
	}
	return len(namespaces), len(mine), foreign, errors.Join(errs...)
}

// waitHostGone waits until none of names exists, owned, in the host
// namespace. Link notifications wake it; a dump decides. After timeout it
// deletes the remaining ones itself.
func waitHostGone(ctx context.Context, host *nsConn, names map[string]bool, owned func(netlink.Link) bool, timeout time.Duration) error {
	if len(names) == 0 {
		return nil
	}
	updates := make(chan netlink.LinkUpdate, 4096)
	done := make(chan struct{})
	defer close(done)
	// Without a subscription the poll below still converges.
	_ = netlink.LinkSubscribeWithOptions(updates, done, netlink.LinkSubscribeOptions{
		ReceiveBufferSize: 1 << 20,
		ErrorCallback:     func(error) {},
	})
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		remaining, err := presentOwned(host, names, owned)
		if err != nil {
			return err
		}
		if len(remaining) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for host interfaces to go: %w", ctx.Err())
		case <-deadline.C:
			var errs []error
			for _, l := range remaining {
				if err := host.h.LinkDel(l); err != nil && !isNotFound(err) {
					errs = append(errs, fmt.Errorf("delete host interface %s: %w", l.Attrs().Name, err))
				}
			}
			return errors.Join(errs...)
		case <-updates:
			drain(updates)
		case <-tick.C:
		}
	}
}

func drain(ch <-chan netlink.LinkUpdate) {
	for {
		select {
		case <-ch:
		default:
			return
		}
	}
}

// presentOwned returns the links among names that still exist, owned.
func presentOwned(host *nsConn, names map[string]bool, owned func(netlink.Link) bool) ([]netlink.Link, error) {
	links, err := linksNamed(host.h, slices.Collect(maps.Keys(names)))
	if err != nil {
		return nil, err
	}
	var out []netlink.Link
	for _, l := range links {
		if owned(l) {
			out = append(out, l)
		}
	}
	return out, nil
}

// rollback undoes this run of Up: interfaces it created in namespaces that
// stay, then the namespaces it created, and restores the state record
// if all of that worked.
func (b *builder) rollback() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*hostWaitTimeout)
	defer cancel()
	var errs []error
	// An interface is this run's if it is the very one created (same
	// index), marked or not yet.
	createdHost := map[string]int{}
	for _, r := range slices.Backward(b.createdIfs) {
		if r.ns == HostNamespace {
			createdHost[r.name] = r.index
			continue
		}
		c := b.conns[r.ns]
		l, err := c.h.LinkByName(r.name)
		if err == nil && l.Attrs().Index == r.index {
			err = c.h.LinkDel(l)
		}
		if err != nil && !isNotFound(err) {
			errs = append(errs, fmt.Errorf("delete %s in namespace %s: %w", r.name, r.ns, err))
		}
	}
	for _, undo := range slices.Backward(b.undo) {
		if err := undo(); err != nil && !isNotFound(err) && !errors.Is(err, unix.EADDRNOTAVAIL) && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("undo a change to what existed: %w", err))
		}
	}
	for _, u := range b.sysctlUndo {
		if err := b.conns[u.ns].do(func() error { return restoreSysctls(u.ns, u.old) }); err != nil {
			errs = append(errs, fmt.Errorf("restore sysctls: %w", err))
		}
	}
	// Our own handles hold the namespaces alive: close them first.
	for _, name := range b.createdNS {
		b.conns[name].close()
		delete(b.conns, name)
	}
	createdNS := b.createdNS
	if b.opts.keepCreatedNS {
		createdNS = nil
		errs = append(errs, errors.New("injected failure: namespaces kept"))
	}
	if host := b.conns[HostNamespace]; host != nil {
		var hostIfs []string
		for name := range createdHost {
			hostIfs = append(hostIfs, name)
		}
		ours := func(l netlink.Link) bool { return createdHost[l.Attrs().Name] == l.Attrs().Index }
		if _, _, _, err := teardown(ctx, host, b.s, createdNS, hostIfs, ours, Options{Workers: b.opts.Workers}); err != nil {
			errs = append(errs, err)
		}
	}
	// After a failed rollback, the record this run wrote (everything it
	// planned) stays: it names what may be left, so that down finds it
	// even with the file as it was before the run.
	if b.wroteState && len(errs) == 0 {
		var err error
		if b.hadState == nil {
			err = removeState(b.s.Name)
		} else {
			err = writeState(b.hadState.without(b.pruned)) // what --prune deleted stays deleted
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

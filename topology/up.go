package topology

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/nsflow/nsflow/internal/english"
)

// Options tune Up and Down.
type Options struct {
	// Workers is how many namespaces or links are set up at once; 0 picks
	// a default for the machine.
	Workers int
	// Progress, if set, receives progress reports of long phases.
	Progress ProgressFunc
	// Prune makes Up delete what the topology owns but s no longer
	// declares (see orphans); without it Up only lists them.
	Prune bool

	// failAfter, when positive, makes Up fail once that many objects have
	// been created: the tests' way to inject a failure mid-build;
	// failRoutes makes it fail after the routes of the first namespace.
	failAfter  int64
	failRoutes bool
	// keepCreatedNS makes a rollback fail to delete the namespaces this
	// run created: the tests' way to leave what a failed rollback leaves.
	keepCreatedNS bool
	// afterPreflight, when set, runs once the namespaces are opened and
	// checked: the tests' way to change them under a run.
	afterPreflight func()
}

func (o Options) workers() int {
	if o.Workers > 0 {
		return o.Workers
	}
	return defaultWorkers()
}

// Result summarizes an Up.
type Result struct {
	Name              string `json:"name"`
	NamespacesCreated int    `json:"namespaces_created"`
	InterfacesCreated int    `json:"interfaces_created"`
	// Changed counts fixes to objects that already existed: a link set
	// up, an MTU, a bridge port, an address or a route added.
	Changed int `json:"changed"`
	// Pruned lists what Options.Prune deleted; Orphans what it would have:
	// namespaces and host interfaces the topology owns that the file no
	// longer declares, then routes and addresses in what it owns that the
	// file does not declare (strays).
	Pruned  []string `json:"pruned,omitempty"`
	Orphans []string `json:"orphans,omitempty"`
	// Warnings are what works against the topology from outside it:
	// host addresses that overlap another host interface's.
	Warnings []string      `json:"warnings,omitempty"`
	Elapsed  time.Duration `json:"elapsed_ns"`
}

// Unchanged reports whether Up found everything in place.
func (r *Result) Unchanged() bool {
	return r.NamespacesCreated == 0 && r.InterfacesCreated == 0 && r.Changed == 0 && len(r.Pruned) == 0
}

func (r *Result) String() string {
	msg := fmt.Sprintf("topology %s is up: %s and %s created, %s, %d removed (%.2fs)",
		r.Name, english.Count(r.NamespacesCreated, "namespace"), english.Count(r.InterfacesCreated, "interface"),
		english.Count(r.Changed, "other change"), len(r.Pruned), r.Elapsed.Seconds())
	if r.Unchanged() {
		msg = fmt.Sprintf("topology %s is already up: nothing changed (%.2fs)", r.Name, r.Elapsed.Seconds())
	}
	for _, p := range r.Pruned {
		msg += "\n  removed, not declared: " + p
	}
	for _, o := range r.Orphans {
		msg += "\n  not declared, left in place (up --prune removes it): " + o
	}
	for _, w := range r.Warnings {
		msg += "\n  warning: " + w
	}
	return msg
}

// Up creates everything s declares that does not exist yet, and fixes
// addresses, routes and link state of what does. It is idempotent. An
// object of a declared name that this topology does not own is an error,
// found before anything is created. On any failure Up removes what this
// run created and returns the cause.
func Up(ctx context.Context, s *Spec, opts Options) (*Result, error) {
	start := time.Now()
	if err := s.Validate(); err != nil {
		return nil, err
	}
	unlock, err := lockTopology(s.Name)
	if err != nil {
		return nil, fmt.Errorf("topology %s: %w", s.Name, err)
	}
	defer unlock()
	b := &builder{
		s:              s,
		opts:           opts,
		marker:         markerFor(s.Name),
		conns:          map[string]*nsConn{},
		fresh:          map[string]bool{},
		links:          map[string]map[string]netlink.Link{},
		bridgeIdx:      map[string]int{},
		adopted:        map[string]bool{},
		primaryIndexes: map[string]int{},
		peerIndexes:    map[string]int{},
		strays:         map[bool][]string{},
	}
	defer b.close()
	if err := b.build(ctx); err != nil {
		// What --prune deleted cannot come back: say so.
		pruned := ""
		if n := len(b.pruned.describe()) + len(b.strays[true]); n > 0 {
			pruned = fmt.Sprintf("; the %s pruned stay deleted", english.Count(n, "object"))
		}
		if len(b.createdNS) == 0 && len(b.createdIfs) == 0 && !b.wroteState {
			return nil, fmt.Errorf("topology %s: %w (nothing was created%s)", s.Name, err, pruned)
		}
		if rerr := b.rollback(); rerr != nil {
			return nil, fmt.Errorf("topology %s: %w (and rolling back failed: %v%s; the state record names all the run planned, so down, or up --prune with the earlier file, removes what it left)", s.Name, err, rerr, pruned)
		}
		return nil, fmt.Errorf("topology %s: %w (rolled back%s)", s.Name, err, pruned)
	}
	warnings, err := hostOverlaps(b.conns[HostNamespace], s)
	if err != nil {
		warnings = []string{fmt.Sprintf("host addresses not checked for overlaps: %v", err)}
	}
	return &Result{
		Name:              s.Name,
		Warnings:          warnings,
		NamespacesCreated: int(b.nsCreated.Load()),
		InterfacesCreated: int(b.ifCreated.Load()),
		Changed:           int(b.changed.Load()),
		Pruned:            append(b.pruned.describe(), slices.Sorted(slices.Values(b.strays[true]))...),
		Orphans:           append(b.orphans.describe(), slices.Sorted(slices.Values(b.strays[false]))...),
		Elapsed:           time.Since(start),
	}, nil
}

// builder holds one Up run: open namespaces, what existed before, and
// what this run created (for rollback).
type builder struct {
	s      *Spec
	opts   Options
	marker string

	// conns are the open namespaces by declared name (and HostNamespace).
	conns map[string]*nsConn
	// fresh marks namespaces this run created: nothing in them predates
	// the run, so their objects need no existence checks.
	fresh map[string]bool
	// links are the interfaces that existed before the run, by namespace.
	links     map[string]map[string]netlink.Link
	bridgeIdx map[string]int
	// bridgesDown are the bridges this run created, down until their
	// ports are attached (bridgesFinish).
	bridgesDown []newBridge

	mu         sync.Mutex
	createdNS  []string
	createdIfs []ifRef
	hadState   *stateRecord // the record before the run; rollback restores it
	wroteState bool
	// sysctlUndo are the values this run replaced in namespaces that
	// existed before it, and undo removes the addresses and routes it
	// added there, for rollback (under mu).
	sysctlUndo []sysctlUndo
	undo       []func() error
	// primaryIndexes and peerIndexes count the veth ends created in and
	// born into each new namespace (vethIndexes).
	primaryIndexes, peerIndexes map[string]int
	// adopted are unmarked host veth ends found to be the topology's
	// (unmarkedEnds), to be marked.
	adopted map[string]bool
	// orphans are owned objects the file no longer declares, left in
	// place; pruned are those deleted (Options.Prune).
	orphans, pruned orphans
	// strays are undeclared routes and addresses found, by whether they
	// were deleted (Options.Prune); guarded by mu.
	strays map[bool][]string

	nsCreated, ifCreated, changed atomic.Int64
}

// sysctlUndo is what a run's sysctl writes replaced in one namespace.
type sysctlUndo struct {
	ns  string
	old map[string]string
}

// ifRef is an interface this run created: one end of a veth pair, or a
// bridge. The index identifies it even before it carries the marker.
type ifRef struct {
	ns, name string
	index    int
}

func (b *builder) close() {
	for _, c := range b.conns {
		c.close()
	}
}

func (b *builder) build(ctx context.Context) error {
	if err := b.preflight(ctx); err != nil {
		return err
	}
	if b.opts.afterPreflight != nil {
		b.opts.afterPreflight()
	}
	if err := b.handleOrphans(ctx); err != nil {
		return err
	}
	if err := b.writeState(); err != nil {
		return err
	}
	if err := b.namespaces(ctx); err != nil {
		return err
	}
	if err := b.bridges(); err != nil {
		return err
	}
	w := b.opts.workers()
	if err := parallel(ctx, len(b.s.Links), w, "links", b.opts.Progress, b.link); err != nil {
		return err
	}
	if err := b.bridgesFinish(); err != nil {
		return err
	}
	if err := parallel(ctx, len(b.s.Namespaces), w, "routes", b.opts.Progress, b.routes); err != nil {
		return err
	}
	if !b.pruned.empty() || len(b.strays[true]) > 0 {
		for _, n := range b.s.Namespaces {
			if err := flushNeighbours(b.conns[n.Name]); err != nil {
				return err
			}
		}
	}
	return b.awaitReady(ctx)
}

// preflight opens what exists and proves it is owned, before anything is
// created: a foreign object of a declared name stops the run here.
func (b *builder) preflight(ctx context.Context) error {
	host, err := openHost()
	if err != nil {
		return err
	}
	b.conns[HostNamespace] = host
	hostIfs := b.s.NamespaceInterfaces(HostNamespace)
	names := make([]string, len(hostIfs))
	for i, ifc := range hostIfs {
		names[i] = ifc.Name
	}
	if b.links[HostNamespace], err = linksNamed(host.h, names); err != nil {
		return err
	}
	// A host veth end without any marker may be one that an up killed
	// between creating and marking it: decided once the namespaces are
	// open (unmarkedEnds).
	var unmarked []Interface
	for _, ifc := range hostIfs {
		if l, ok := b.links[HostNamespace][ifc.Name]; ok {
			if l.Attrs().Alias == "" && l.Type() == "veth" && ifc.Kind == "veth" && ifc.PeerNamespace != HostNamespace {
				unmarked = append(unmarked, ifc)
				continue
			}
			if err := b.checkOwned(HostNamespace, l, ifc.Kind); err != nil {
				return err
			}
		}
	}
	rec, err := readState(b.s.Name)
	if err != nil {
		return err
	}
	var existing []string
	for _, n := range b.s.Namespaces {
		path := b.s.NetnsPath(n.Name)
		if rec.hasNamespace(n.Name) {
			if err := removeLeftoverNetns(path); err != nil {
				return err
			}
		}
		if _, err := os.Lstat(path); err == nil {
			existing = append(existing, n.Name)
		}
	}
	err = parallel(ctx, len(existing), b.opts.workers(), "checking namespaces", b.opts.Progress, func(i int) error {
		name := existing[i]
		c, err := openNetns(name, b.s.NetnsPath(name))
		if err != nil {
			return err
		}
		owner, err := netnsOwner(c)
		if err == nil && owner != b.marker {
			err = fmt.Errorf("namespace %q already exists and is not owned by topology %q%s", name, b.s.Name, ownerHint(owner))
		}
		var links map[string]netlink.Link
		if err == nil {
			links, err = linksByName(c.h)
		}
		if err == nil {
			err = c.openSock()
		}
		if err != nil {
			c.close()
			return err
		}
		b.mu.Lock()
		b.conns[name], b.links[name] = c, links
		b.mu.Unlock()
		return nil
	})
	if err != nil {
		return err
	}
	if err := b.unmarkedEnds(unmarked); err != nil {
		return err
	}
	return b.checkIPv6()
}

// unmarkedEnds accepts the unmarked host veth ends whose peer is the
// declared one, in a namespace the topology owns: only this topology
// creates interfaces there, so the pair is its own, left unmarked by an
// up killed before it set the marker (link marks it). Any other unmarked
// host interface is someone else's.
func (b *builder) unmarkedEnds(ends []Interface) error {
	host := b.conns[HostNamespace]
	for _, ifc := range ends {
		l := b.links[HostNamespace][ifc.Name]
		ours := false
		if pc := b.conns[ifc.PeerNamespace]; pc != nil {
			if p := b.links[ifc.PeerNamespace][ifc.PeerName]; p != nil {
				var err error
				if ours, err = arePeers(host, l, pc, p); err != nil {
					return fmt.Errorf("find the peer of host interface %s: %w", ifc.Name, err)
				}
			}
		}
		if !ours {
			return b.checkOwned(HostNamespace, l, ifc.Kind)
		}
		b.adopted[ifc.Name] = true
	}
	return nil
}

// handleOrphans finds what the topology owns but no longer declares, and
// with Options.Prune deletes it. It runs after preflight, so a foreign
// object of a declared name stops the run before anything is deleted;
// after a prune, preflight runs again on the namespaces as they are now.
func (b *builder) handleOrphans(ctx context.Context) error {
	rec, err := readState(b.s.Name)
	if err != nil {
		return err
	}
	b.hadState = rec
	o, err := findOrphans(ctx, b.conns[HostNamespace], b.s, rec, b.opts)
	if err != nil || o.empty() {
		return err
	}
	if !b.opts.Prune {
		b.orphans = o
		return nil
	}
	if err := prune(ctx, b.conns[HostNamespace], b.s, o, b.opts); err != nil {
		return fmt.Errorf("prune: %w", err)
	}
	b.pruned = o
	b.close()
	b.conns, b.links = map[string]*nsConn{}, map[string]map[string]netlink.Link{}
	return b.preflight(ctx)
}

// checkOwned accepts an existing interface only if it is of the declared
// kind and, in the host, carries this topology's marker (in the
// topology's own namespaces, the namespace's marker covers it).
func (b *builder) checkOwned(ns string, l netlink.Link, kind string) error {
	a := l.Attrs()
	if ns == HostNamespace && a.Alias != b.marker {
		return fmt.Errorf("interface %q already exists in namespace %q and is not owned by topology %q%s",
			a.Name, ns, b.s.Name, ownerHint(a.Alias))
	}
	if l.Type() != kind {
		return fmt.Errorf("interface %q in namespace %q is a %s, the topology declares a %s", a.Name, ns, l.Type(), kind)
	}
	return nil
}

func ownerHint(alias string) string {
	if owner, ok := strings.CutPrefix(alias, "nsflow:"); ok {
		return fmt.Sprintf(" (it belongs to topology %q)", owner)
	}
	return ""
}

// writeState records everything the run may create before creating it,
// keeping what the earlier record (read by handleOrphans) listed.
func (b *builder) writeState() error {
	rec := plannedState(b.s)
	rec.merge(b.hadState.without(b.pruned))
	if err := writeState(rec); err != nil {
		return fmt.Errorf("write state record: %w", err)
	}
	b.wroteState = true
	return nil
}

func (b *builder) namespaces(ctx context.Context) error {
	var missing []Namespace
	for _, n := range b.s.Namespaces {
		if b.conns[n.Name] == nil {
			missing = append(missing, n)
			continue
		}
		early, _ := b.s.splitSysctls(n.Name, n.Sysctls)
		if err := b.ensureSysctls(n.Name, early); err != nil {
			return err
		}
	}
	return parallel(ctx, len(missing), b.opts.workers(), "namespaces", b.opts.Progress, func(i int) error {
		n := missing[i]
		path := b.s.NetnsPath(n.Name)
		early, _ := b.s.splitSysctls(n.Name, n.Sysctls)
		c, err := createNetns(n.Name, path, b.marker, early)
		if err != nil {
			return err
		}
		b.mu.Lock()
		b.conns[n.Name], b.fresh[n.Name] = c, true
		b.createdNS = append(b.createdNS, n.Name)
		b.mu.Unlock()
		b.nsCreated.Add(1)
		return b.failpoint()
	})
}

// ensureSysctls writes the sysctls of namespace ns that differ, keeping
// what they replaced for rollback unless this run created ns.
func (b *builder) ensureSysctls(ns string, sysctls map[string]string) error {
	if len(sysctls) == 0 {
		return nil
	}
	// Through the handle opened (and checked for ownership) at the start,
	// not the path: the name could be another namespace's by now.
	old, err := ensureSysctls(ns, b.conns[ns].do, sysctls)
	if err != nil || b.fresh[ns] {
		return err
	}
	if len(old) > 0 {
		b.mu.Lock()
		b.sysctlUndo = append(b.sysctlUndo, sysctlUndo{ns, old})
		b.mu.Unlock()
	}
	b.changed.Add(int64(len(old)))
	return nil
}

// failpoint injects the tests' failure once enough objects exist.
func (b *builder) failpoint() error {
	if b.opts.failAfter > 0 && b.nsCreated.Load()+b.ifCreated.Load() >= b.opts.failAfter {
		return errors.New("injected failure")
	}
	return nil
}

// existing returns the interface that predates this run, or nil.
func (b *builder) existing(ns, name string) netlink.Link {
	if b.fresh[ns] {
		return nil
	}
	return b.links[ns][name]
}

// recordCreated notes an interface this run created outside the
// namespaces it created (those take their interfaces with them), so that
// rollback can remove it, by index, even before it carries the marker.
func (b *builder) recordCreated(ns string, l netlink.Link) {
	b.mu.Lock()
	b.createdIfs = append(b.createdIfs, ifRef{ns, l.Attrs().Name, l.Attrs().Index})
	b.mu.Unlock()
}

func (b *builder) bridges() error {
	for i, br := range b.s.Bridges {
		ns := b.s.BridgeNamespace(br.Name)
		c := b.conns[ns]
		l := b.existing(ns, br.Name)
		if l != nil {
			if err := b.checkOwned(ns, l, "bridge"); err != nil {
				return err
			}
			// The MTU is set once the ports are attached (bridgesFinish).
			if err := b.ensureLink(c, l, 0, ""); err != nil {
				return fmt.Errorf("bridges[%d] %s: %w", i, br.Name, err)
			}
			if err := b.ensureAddrs(c, l, br.Addresses); err != nil {
				return fmt.Errorf("bridges[%d] %s: %w", i, br.Name, err)
			}
		} else {
			// Born down, and set up once its ports are attached (bridgesFinish):
			// attaching a port to a running bridge costs time that grows
			// with the number of ports (measured: 1000 ports take 26 s on
			// a bridge that is up, 1.2 s on one that is down).
			la := netlink.NewLinkAttrs()
			la.Name, la.MTU = br.Name, br.MTU
			nb := &netlink.Bridge{LinkAttrs: la}
			// LinkAdd fills in the index (or fails having created nothing).
			if err := c.h.LinkAdd(nb); err != nil {
				return fmt.Errorf("bridges[%d]: create bridge %s in namespace %s: %w", i, br.Name, ns, err)
			}
			b.ifCreated.Add(1)
			if !b.fresh[ns] {
				b.recordCreated(ns, nb)
			}
			b.bridgesDown = append(b.bridgesDown, newBridge{i: i, ns: ns, name: br.Name, index: nb.Index})
			// The kernel ignores an alias in a create request.
			if err := linkSetAlias(c.sock, nb.Index, b.marker, false); err != nil {
				return fmt.Errorf("bridges[%d]: mark %s as owned: %w", i, br.Name, err)
			}
			if err := b.addAddrs(c, nb, br.Addresses); err != nil {
				return fmt.Errorf("bridges[%d] %s: %w", i, br.Name, err)
			}
			l = nb
		}
		b.bridgeIdx[br.Name] = l.Attrs().Index
		if err := b.failpoint(); err != nil {
			return err
		}
	}
	return nil
}

// bridgesFinish runs once the ports are attached: it sets each bridge's
// declared MTU, then sets up the bridges this run created. As ports
// attach, the kernel gives a bridge its ports' smallest MTU unless its
// MTU was set after its creation (one given at creation does not count),
// so the declared MTU is set now, when no port of this run will change it
// again, and from then on it stays.
func (b *builder) bridgesFinish() error {
	created := map[string]bool{}
	for _, nb := range b.bridgesDown {
		created[nb.name] = true
	}
	for i, br := range b.s.Bridges {
		if br.MTU == 0 {
			continue
		}
		c := b.conns[b.s.BridgeNamespace(br.Name)]
		l, err := c.h.LinkByIndex(b.bridgeIdx[br.Name])
		if err != nil {
			return fmt.Errorf("bridges[%d] %s: %w", i, br.Name, err)
		}
		switch {
		case !created[br.Name]:
			err = b.ensureLink(c, l, br.MTU, "") // up already; counts a change
		case l.Attrs().MTU != br.MTU:
			err = c.h.LinkSetMTU(l, br.MTU)
		}
		if err != nil {
			return fmt.Errorf("bridges[%d] %s: mtu %d: %w", i, br.Name, br.MTU, err)
		}
	}
	for _, nb := range b.bridgesDown {
		if err := linkSetAlias(b.conns[nb.ns].sock, nb.index, "", true); err != nil {
			return fmt.Errorf("bridges[%d]: set %s up: %w", nb.i, nb.name, err)
		}
	}
	return nil
}

// newBridge is a bridge this run created: its index in the spec, its
// namespace, name and ifindex.
type newBridge struct {
	i        int
	ns, name string
	index    int
}

// createdHere reports whether this run created l (or its namespace).
func (b *builder) createdHere(ns string, l netlink.Link) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.fresh[ns] {
		return true
	}
	return slices.ContainsFunc(b.createdIfs, func(r ifRef) bool { return r.ns == ns && r.index == l.Attrs().Index })
}

// onRollback records how to undo a change to what existed before the run.
func (b *builder) onRollback(undo func() error) {
	b.mu.Lock()
	b.undo = append(b.undo, undo)
	b.mu.Unlock()
}

package topology

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
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
	msg := fmt.Sprintf("topology %s is up: %d namespaces and %d interfaces created, %d other changes, %d removed (%.2fs)",
		r.Name, r.NamespacesCreated, r.InterfacesCreated, r.Changed, len(r.Pruned), r.Elapsed.Seconds())
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
		s:         s,
		opts:      opts,
		marker:    markerFor(s.Name),
		conns:     map[string]*nsConn{},
		fresh:     map[string]bool{},
		links:     map[string]map[string]netlink.Link{},
		bridgeIdx: map[string]int{},
		adopted:   map[string]bool{},
		strays:    map[bool][]string{},
	}
	defer b.close()
	if err := b.build(ctx); err != nil {
		// What --prune deleted cannot come back: say so.
		pruned := ""
		if n := len(b.pruned.describe()) + len(b.strays[true]); n > 0 {
			pruned = fmt.Sprintf("; the %d objects pruned stay deleted", n)
		}
		if len(b.createdNS) == 0 && len(b.createdIfs) == 0 && !b.wroteState {
			return nil, fmt.Errorf("topology %s: %w (nothing was created%s)", s.Name, err, pruned)
		}
		if rerr := b.rollback(); rerr != nil {
			return nil, fmt.Errorf("topology %s: %w (and rolling back failed: %v%s)", s.Name, err, rerr, pruned)
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
	var existing []string
	for _, n := range b.s.Namespaces {
		path := b.s.NetnsPath(n.Name)
		if err := removeLeftoverNetns(path); err != nil {
			return err
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
	return b.unmarkedEnds(unmarked)
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
		if len(n.Sysctls) > 0 {
			old, err := ensureSysctls(n.Name, b.s.NetnsPath(n.Name), n.Sysctls)
			if err != nil {
				return err
			}
			if len(old) > 0 {
				b.sysctlUndo = append(b.sysctlUndo, sysctlUndo{n.Name, old})
			}
			b.changed.Add(int64(len(old)))
		}
	}
	return parallel(ctx, len(missing), b.opts.workers(), "namespaces", b.opts.Progress, func(i int) error {
		n := missing[i]
		path := b.s.NetnsPath(n.Name)
		c, err := createNetns(n.Name, path, b.marker, n.Sysctls)
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

// linkPlan is one link to build: the primary end is where the veth is
// created from, the secondary (peer) end is born in its namespace.
type linkPlan struct {
	i        int
	mtu      int
	pe, se   Endpoint
	pns, sns string
	pc, sc   *nsConn
}

func (lp *linkPlan) fail(err error) error {
	return fmt.Errorf("links[%d] %s:%s - %s:%s: %w", lp.i, lp.pns, lp.pe.Interface, lp.sns, lp.se.Interface, err)
}

// link creates links[i], or converges it if it exists.
func (b *builder) link(i int) error {
	l := b.s.Links[i]
	pi := 0
	if b.primaryRank(l.Endpoints[1]) > b.primaryRank(l.Endpoints[0]) {
		pi = 1
	}
	lp := &linkPlan{i: i, mtu: l.MTU, pe: l.Endpoints[pi], se: l.Endpoints[1-pi]}
	lp.pns, lp.sns = b.s.EndpointNamespace(lp.pe), b.s.EndpointNamespace(lp.se)
	lp.pc, lp.sc = b.conns[lp.pns], b.conns[lp.sns]
	pl, sl := b.existing(lp.pns, lp.pe.Interface), b.existing(lp.sns, lp.se.Interface)
	switch {
	case pl == nil && sl == nil:
		return b.createLink(lp)
	case pl == nil || sl == nil:
		ns, c, name, l := lp.pns, lp.pc, lp.pe.Interface, pl
		if pl == nil {
			ns, c, name, l = lp.sns, lp.sc, lp.se.Interface, sl
		}
		lone := fmt.Errorf("interface %s exists in namespace %s but its peer does not: run down first", name, ns)
		// A lone end of this topology's own, typically the host end of a
		// veth whose namespace was just deleted (ip netns del), which the
		// kernel destroys in the background, is deleted so that the pair
		// can be created anew; its peer goes with it, so only if the peer
		// is nobody else's: the end carries the marker (only host ends
		// do), or the peer's namespace is dying. Never when the peer
		// lives on in one of the topology's namespaces under another name.
		peer, err := b.peerInTopology(c, l)
		if err != nil {
			return lp.fail(errors.Join(lone, err))
		}
		if peer != "" {
			if pns, pname, _ := strings.Cut(peer, ":"); pns == HostNamespace && slices.Contains(b.orphans.hostIfs, pname) {
				return lp.fail(fmt.Errorf("interface %s in namespace %s is paired with %s, which the topology owns but no longer declares: run up --prune", name, ns, peer))
			}
			return lp.fail(fmt.Errorf("interface %s in namespace %s is paired with %s, not with the declared peer: run down first", name, ns, peer))
		}
		if orphan := b.orphanPeerNetns(c, l); orphan != "" {
			return lp.fail(fmt.Errorf("interface %s in namespace %s is paired with an interface in namespace %s, which the topology owns but no longer declares: run up --prune", name, ns, orphan))
		}
		if b.checkOwned(ns, l, "veth") != nil || (l.Attrs().Alias != b.marker && l.Attrs().NetNsID != nsidDying) {
			return lp.fail(lone)
		}
		if err := c.h.LinkDel(l); err != nil && !isNotFound(err) {
			return lp.fail(fmt.Errorf("delete %s in namespace %s, whose peer is gone: %w", name, ns, err))
		}
		return b.createLink(lp)
	}
	ends := []struct {
		ns string
		l  netlink.Link
		c  *nsConn
		ep Endpoint
	}{{lp.pns, pl, lp.pc, lp.pe}, {lp.sns, sl, lp.sc, lp.se}}
	for _, e := range ends {
		if e.ns == HostNamespace && b.adopted[e.ep.Interface] {
			continue
		}
		if err := b.checkOwned(e.ns, e.l, "veth"); err != nil {
			return lp.fail(err)
		}
	}
	if ok, err := arePeers(lp.pc, pl, lp.sc, sl); err != nil {
		return lp.fail(fmt.Errorf("find the peer of %s: %w", lp.pe.Interface, err))
	} else if !ok {
		return lp.fail(fmt.Errorf("interfaces %s in namespace %s and %s in namespace %s exist but are not peers of each other: run down first",
			lp.pe.Interface, lp.pns, lp.se.Interface, lp.sns))
	}
	for _, e := range ends {
		if e.ns == HostNamespace && b.adopted[e.ep.Interface] {
			if err := e.c.h.LinkSetAlias(e.l, b.marker); err != nil {
				return lp.fail(fmt.Errorf("mark %s: %w", e.ep.Interface, err))
			}
			b.changed.Add(1)
		}
		if err := b.ensureLink(e.c, e.l, lp.mtu, e.ep.Bridge); err != nil {
			return lp.fail(err)
		}
		if err := b.ensureAddrs(e.c, e.l, e.ep.Addresses); err != nil {
			return lp.fail(err)
		}
	}
	return nil
}

// nsidDying is a veth's peer namespace id when that namespace is dying:
// the kernel reports NETNSA_NSID_NOT_ASSIGNED (-1), which the netlink
// package reads as an unsigned 32-bit number. (An absent id, -1, means
// the peer is in the veth's own namespace.)
const nsidDying = int(^uint32(0))

// peerInTopology returns where the peer of the veth l, in c's namespace,
// is ("namespace:interface") if that is in one of the topology's
// namespaces, and "" if not.
func (b *builder) peerInTopology(c *nsConn, l netlink.Link) (string, error) {
	a := l.Attrs()
	for _, oc := range b.conns {
		if a.NetNsID < 0 && oc != c || a.NetNsID >= 0 && oc == c {
			continue // the peer is in c's namespace, or in another one
		}
		if oc != c {
			id, err := c.h.GetNetNsIdByFd(oc.fd)
			if err != nil {
				return "", fmt.Errorf("namespace id of %s: %w", oc.name, err)
			}
			if id != a.NetNsID {
				continue
			}
		}
		p, err := oc.h.LinkByIndex(a.ParentIndex)
		if isNotFound(err) {
			return "", nil
		}
		if err != nil {
			return "", err
		}
		return oc.name + ":" + p.Attrs().Name, nil
	}
	return "", nil
}

// orphanPeerNetns returns the orphan namespace (owned, no longer
// declared) that the peer of the veth l, in c's namespace, is in, or "".
func (b *builder) orphanPeerNetns(c *nsConn, l netlink.Link) string {
	if l.Attrs().NetNsID < 0 {
		return ""
	}
	for _, name := range b.orphans.namespaces {
		oc, err := openIfPresent(name, b.s.NetnsPath(name))
		if oc == nil || err != nil {
			continue
		}
		id, err := c.h.GetNetNsIdByFd(oc.fd)
		oc.close()
		if err == nil && id == l.Attrs().NetNsID {
			return name
		}
	}
	return ""
}

// arePeers reports whether the veth l, in c's namespace, and p, in pc's,
// are the two ends of one pair. A veth names its peer by ifindex and, if
// the peer is in another namespace, by that namespace's id as seen from
// its own (which listing the veth assigned).
func arePeers(c *nsConn, l netlink.Link, pc *nsConn, p netlink.Link) (bool, error) {
	a := l.Attrs()
	if a.ParentIndex != p.Attrs().Index {
		return false, nil
	}
	if c == pc {
		return a.NetNsID < 0, nil
	}
	if a.NetNsID < 0 {
		return false, nil
	}
	id, err := c.h.GetNetNsIdByFd(pc.fd)
	if err != nil {
		return false, err
	}
	return id == a.NetNsID, nil
}

// createLink creates a veth pair in the primary end's namespace with its
// peer born in the other (no move between namespaces, which costs an
// rcu_barrier under rtnl), then configures both ends.
func (b *builder) createLink(lp *linkPlan) error {
	master := 0
	if lp.pe.Bridge != "" {
		master = b.bridgeIdx[lp.pe.Bridge]
	}
	pIdx, sIdx, err := vethAdd(lp.pc.sock, lp.pe.Interface, lp.se.Interface, lp.mtu, master, lp.sc.fd)
	if err != nil {
		return lp.fail(fmt.Errorf("create veth: %w", err))
	}
	crashHook("veth created")
	b.ifCreated.Add(2)
	// What is left per end: recording it for rollback and marking it as
	// owned, outside namespaces this run created (those take their
	// interfaces with them, and their marker covers them); attaching a
	// secondary bridge port; setting the peer up; addresses. Recording
	// comes first, so that rollback knows both ends whatever fails next;
	// the peer is configured before the primary's addresses, since IPv6
	// addresses added before the link has carrier (both ends up) wait
	// for it.
	ends := []struct {
		ns    string
		c     *nsConn
		ep    Endpoint
		peer  bool
		index int
		link  netlink.Link
	}{{ns: lp.sns, c: lp.sc, ep: lp.se, peer: true, index: sIdx}, {ns: lp.pns, c: lp.pc, ep: lp.pe, index: pIdx}}
	for j := range ends {
		e := &ends[j]
		if b.fresh[e.ns] && !e.peer && len(e.ep.Addresses) == 0 {
			continue
		}
		if e.index != 0 {
			la := netlink.NewLinkAttrs()
			la.Name, la.Index = e.ep.Interface, e.index
			e.link = &netlink.Veth{LinkAttrs: la}
		} else if e.link, err = e.c.h.LinkByName(e.ep.Interface); err != nil {
			// No echo from the kernel: look the end up.
			return lp.fail(fmt.Errorf("find new veth end %s: %w", e.ep.Interface, err))
		}
		if !b.fresh[e.ns] {
			b.recordCreated(e.ns, e.link)
		}
	}
	for _, e := range ends {
		if e.link == nil {
			continue
		}
		if e.peer && e.ep.Bridge != "" {
			// The create request attached only the primary end.
			if err := e.c.h.LinkSetMasterByIndex(e.link, b.bridgeIdx[e.ep.Bridge]); err != nil {
				return lp.fail(fmt.Errorf("attach %s to bridge %s: %w", e.ep.Interface, e.ep.Bridge, err))
			}
		}
		// The primary end is up since its creation; the peer is set up
		// here, with the marker in the same request where it needs one.
		alias := ""
		if !b.fresh[e.ns] {
			alias = b.marker
		}
		if e.peer || alias != "" {
			if err := linkSet(e.c.sock, e.link.Attrs().Index, alias); err != nil {
				return lp.fail(fmt.Errorf("set %s up and marked: %w", e.ep.Interface, err))
			}
		}
		if err := b.addAddrs(e.c, e.link, e.ep.Addresses); err != nil {
			return lp.fail(err)
		}
	}
	return b.failpoint()
}

// primaryRank orders where a veth is created from: a bridge port (the
// create request attaches it), then a host end.
func (b *builder) primaryRank(e Endpoint) int {
	switch {
	case e.Bridge != "":
		return 2
	case e.Namespace == HostNamespace:
		return 1
	}
	return 0
}

// ensureLink fixes the admin state, MTU and bridge of an existing link.
func (b *builder) ensureLink(c *nsConn, l netlink.Link, mtu int, master string) error {
	a := l.Attrs()
	if a.Flags&net.FlagUp == 0 {
		if err := c.h.LinkSetUp(l); err != nil {
			return fmt.Errorf("set %s up: %w", a.Name, err)
		}
		b.changed.Add(1)
	}
	if mtu != 0 && a.MTU != mtu {
		if err := c.h.LinkSetMTU(l, mtu); err != nil {
			return fmt.Errorf("set %s mtu %d: %w", a.Name, mtu, err)
		}
		b.changed.Add(1)
	}
	if master != "" && a.MasterIndex != b.bridgeIdx[master] {
		if err := c.h.LinkSetMasterByIndex(l, b.bridgeIdx[master]); err != nil {
			return fmt.Errorf("attach %s to bridge %s: %w", a.Name, master, err)
		}
		b.changed.Add(1)
	}
	return nil
}

// ensureAddrs adds the addresses an existing link lacks, and handles those
// it has but should not (stray). Strays go first: deleting the primary
// address of a subnet deletes its secondaries, which a new address of the
// same subnet added before would be.
func (b *builder) ensureAddrs(c *nsConn, l netlink.Link, addrs []string) error {
	have, err := retryDump(func() ([]netlink.Addr, error) { return c.h.AddrList(l, netlink.FAMILY_ALL) })
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", l.Attrs().Name, err)
	}
	declared := make([]netip.Prefix, len(addrs))
	for i, a := range addrs {
		declared[i] = netip.MustParsePrefix(a)
	}
	if stray := strayAddrs(l.Attrs().Name, have, declared); len(stray) > 0 {
		for _, a := range stray {
			if err := b.stray(describeAddr(c.name, l.Attrs().Name, a), func() error { return c.h.AddrDel(l, &a) }); err != nil {
				return err
			}
		}
		if b.opts.Prune {
			// Secondaries may have gone with a deleted primary.
			if have, err = retryDump(func() ([]netlink.Addr, error) { return c.h.AddrList(l, netlink.FAMILY_ALL) }); err != nil {
				return fmt.Errorf("list addresses of %s: %w", l.Attrs().Name, err)
			}
		}
	}
	var missing []string
	for i, a := range addrs {
		if !slices.ContainsFunc(have, func(h netlink.Addr) bool { return hasAddr(declared[i:i+1], h.IPNet) }) {
			missing = append(missing, a)
		}
	}
	b.changed.Add(int64(len(missing)))
	return b.addAddrs(c, l, missing)
}

// addAddrs adds addresses to a link known not to have them.
// Addresses added to an interface that existed before the run are
// removed again by a rollback (those of interfaces it created go with
// them).
func (b *builder) addAddrs(c *nsConn, l netlink.Link, addrs []string) error {
	for _, a := range addrs {
		addr := nlAddr(netip.MustParsePrefix(a))
		if err := c.h.AddrAdd(l, addr); err != nil {
			return fmt.Errorf("add address %s to %s: %w", a, l.Attrs().Name, err)
		}
		if !b.createdHere(c.name, l) {
			b.onRollback(func() error { return c.h.AddrDel(l, addr) })
		}
	}
	return nil
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

// routes converges namespace i's routes. Only the namespaces the topology
// declares (and owns, as preflight proved) are touched, never the host.
func (b *builder) routes(i int) error {
	n := b.s.Namespaces[i]
	c := b.conns[n.Name]
	for j, r := range n.Routes {
		if err := b.route(c, n.Name, r); err != nil {
			return fmt.Errorf("namespaces[%d].routes[%d] (%s to %s): %w", i, j, n.Name, r.To, err)
		}
	}
	if b.opts.failRoutes {
		return errors.New("injected failure after the routes")
	}
	if b.fresh[n.Name] {
		return nil // nothing in it predates this run
	}
	return b.strayRoutesAndLoopback(c, n)
}

// strayRoutesAndLoopback handles a namespace's undeclared routes and the
// addresses on its loopback beyond loopback's own; its other interfaces'
// addresses are ensureAddrs's.
func (b *builder) strayRoutesAndLoopback(c *nsConn, n Namespace) error {
	routes, err := mainRoutes(c, netlink.FAMILY_ALL)
	if err != nil {
		return err
	}
	byIdx, err := routeDevices(c, routes)
	if err != nil {
		return err
	}
	for _, r := range strayRoutes(routes, byIdx, n.Routes, b.s.NamespaceInterfaces(n.Name)) {
		desc := fmt.Sprintf("%s in namespace %s", describeRoute(byIdx, r), n.Name)
		if err := b.stray(desc, func() error { return c.h.RouteDel(&r) }); err != nil {
			return err
		}
	}
	lo, err := c.h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("namespace %s: loopback: %w", n.Name, err)
	}
	return b.ensureAddrs(c, lo, nil)
}

// stray deletes (Options.Prune) or reports an undeclared route or address.
func (b *builder) stray(desc string, del func() error) error {
	if b.opts.Prune {
		if err := del(); err != nil && !errors.Is(err, unix.ESRCH) && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return fmt.Errorf("delete %s: %w", desc, err)
		}
	}
	b.mu.Lock()
	b.strays[b.opts.Prune] = append(b.strays[b.opts.Prune], desc)
	b.mu.Unlock()
	return nil
}

// route adds a declared route to namespace ns. If the kernel already has
// a route to that destination (EEXIST: one the topology added before, one
// changed since, or the kernel's own route to an interface's subnet), the
// live routes decide, compared as show compares them: the declared route
// among them is kept; otherwise the one in its place, to the same
// destination through another gateway or device, is replaced.
func (b *builder) route(c *nsConn, ns string, r Route) error {
	rt, err := b.nlRoute(c, ns, r)
	if err != nil {
		return err
	}
	err = c.h.RouteAdd(rt)
	if err == nil && !b.fresh[ns] {
		// Deleted by its exact metric: a delete without one takes the
		// first route to the destination, which may be another of a lower
		// metric (IPv6 gives ours 1024).
		del := *rt
		if del.Family == netlink.FAMILY_V6 && del.Priority == 0 {
			del.Priority = 1024
		}
		b.onRollback(func() error { return c.h.RouteDel(&del) })
	}
	if errors.Is(err, unix.EEXIST) {
		var present bool
		if present, err = hasLiveRoute(c, rt.Family, r); err == nil {
			if present {
				return nil // already there: idempotent up
			}
			if err = c.h.RouteReplace(rt); err != nil {
				err = fmt.Errorf("replace the route in its place: %w", err)
			}
		}
	}
	if err == nil && !b.fresh[ns] {
		b.changed.Add(1)
	}
	return err
}

// hasLiveRoute reports whether the declared route r is among the routes
// of family in the namespace's main table.
func hasLiveRoute(c *nsConn, family int, r Route) (bool, error) {
	routes, err := mainRoutes(c, family)
	if err != nil {
		return false, err
	}
	byIdx, err := routeDevices(c, routes)
	if err != nil {
		return false, err
	}
	live := make([]RouteState, len(routes))
	for i, rt := range routes {
		live[i] = routeState(byIdx, rt)
	}
	return hasRoute(live, r), nil
}

// routeDevices looks up the devices of routes by index.
func routeDevices(c *nsConn, routes []netlink.Route) (map[int]netlink.Link, error) {
	byIdx := map[int]netlink.Link{}
	for _, rt := range routes {
		if _, ok := byIdx[rt.LinkIndex]; ok || rt.LinkIndex == 0 {
			continue
		}
		l, err := c.h.LinkByIndex(rt.LinkIndex)
		if err != nil {
			return nil, fmt.Errorf("device of a route: %w", err)
		}
		byIdx[rt.LinkIndex] = l
	}
	return byIdx, nil
}

// nlRoute translates a validated route for namespace ns.
func (b *builder) nlRoute(c *nsConn, ns string, r Route) (*netlink.Route, error) {
	rt := &netlink.Route{}
	is4 := true
	if r.To != "default" {
		p := netip.MustParsePrefix(r.To)
		rt.Dst, is4 = ipNet(p), p.Addr().Is4()
	}
	if r.Via != "" {
		gw := netip.MustParseAddr(r.Via)
		rt.Gw, is4 = net.IP(gw.AsSlice()), gw.Is4()
	}
	if r.Dev != "" {
		l, err := c.h.LinkByName(r.Dev)
		if err != nil {
			return nil, fmt.Errorf("device %s: %w", r.Dev, err)
		}
		rt.LinkIndex = l.Attrs().Index
		if r.To == "default" && r.Via == "" {
			for _, ifc := range b.s.NamespaceInterfaces(ns) {
				if ifc.Name == r.Dev && len(ifc.Addresses) > 0 {
					is4 = ifc.Addresses[0].Addr().Is4()
				}
			}
		}
	}
	rt.Family = netlink.FAMILY_V6
	if is4 {
		rt.Family = netlink.FAMILY_V4
	}
	return rt, nil
}

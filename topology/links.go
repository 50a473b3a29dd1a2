package topology

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

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
		// What preflight read may be stale: the peer's namespace may have
		// died since, and its id gone to one this run made.
		switch now, err := c.h.LinkByIndex(l.Attrs().Index); {
		case isNotFound(err) || err == nil && now.Attrs().Name != name:
			return b.createLink(lp) // gone with its peer
		case err != nil:
			return lp.fail(fmt.Errorf("%w (%w)", lone, err))
		default:
			l = now
		}
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
		if pns, _, _ := strings.Cut(peer, ":"); peer != "" && b.fresh[pns] {
			// A namespace this run made holds no end of an older pair:
			// the id the kernel gave is a dead namespace's, reused. The
			// lone end goes when that namespace is destroyed.
			if l, err = waitPeerDying(c, l); err != nil {
				return lp.fail(err)
			}
			if l == nil {
				return b.createLink(lp)
			}
			if peer, err = b.peerInTopology(c, l); err != nil {
				return lp.fail(errors.Join(lone, err))
			}
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
		missing := lp.sns // the namespace of the end that is not there
		if pl == nil {
			missing = lp.pns
		}
		if b.checkOwned(ns, l, "veth") == nil && l.Attrs().Alias != b.marker && l.Attrs().NetNsID != nsidDying && b.fresh[missing] {
			// The declared peer's namespace was missing and is new: the
			// old one was just deleted (ip netns del), and the kernel
			// has not yet begun to destroy it, so its id still looks
			// alive. Wait for it to die.
			if l, err = waitPeerDying(c, l); err != nil {
				return lp.fail(err)
			}
			if l == nil {
				return b.createLink(lp) // gone with its peer
			}
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

// peerDyingWait bounds waitPeerDying: the kernel starts destroying a
// namespace nothing holds within milliseconds.
const peerDyingWait = 2 * time.Second

// waitPeerDying waits until the peer namespace of veth l (in c's
// namespace) is dying, or l is gone (nil), and returns l as it is then.
// After peerDyingWait it returns l unchanged: its peer lives on.
func waitPeerDying(c *nsConn, l netlink.Link) (netlink.Link, error) {
	deadline := time.Now().Add(peerDyingWait)
	for time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
		now, err := c.h.LinkByIndex(l.Attrs().Index)
		switch {
		case isNotFound(err):
			return nil, nil
		case err != nil:
			return nil, err
		case now.Attrs().Name != l.Attrs().Name:
			return nil, nil // another interface took the index
		case now.Attrs().NetNsID == nsidDying:
			return now, nil
		}
	}
	return l, nil
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
	wantP, wantS := b.vethIndexes(lp.pns, lp.sns)
	pIdx, sIdx, err := vethAdd(lp.pc.sock, lp.pe.Interface, lp.se.Interface, lp.mtu, master, lp.sc.fd, wantP, wantS)
	if wantP != 0 && (errors.Is(err, unix.EBUSY) || errors.Is(err, unix.EEXIST)) {
		// An index is taken after all (another tool in a namespace of
		// ours?): let the kernel pick, and live with the wait.
		pIdx, sIdx, err = vethAdd(lp.pc.sock, lp.pe.Interface, lp.se.Interface, lp.mtu, master, lp.sc.fd, 0, 0)
	}
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

// The kernel reports a veth's carrier change at once only when its two
// ends have different ifindexes; otherwise the change waits for its
// once-a-second link-state pass, and up waits for it. Two new namespaces
// would give both ends the same index (the first after loopback), so in
// namespaces this run created (where nothing else allocates) a pair's
// ends get indexes from two ranges that never meet.
const (
	primaryIndexBase = 1 << 16
	peerIndexBase    = 1 << 17
)

// vethIndexes are the ifindexes to create a veth with, its primary end
// in namespace pns and its peer in sns: both from their ranges when both
// namespaces are new, else 0 (the kernel picks; it takes a peer's index
// only with the primary's).
func (b *builder) vethIndexes(pns, sns string) (primary, peer int) {
	if !b.fresh[pns] || !b.fresh[sns] {
		return 0, 0
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.primaryIndexes[pns]++
	b.peerIndexes[sns]++
	return primaryIndexBase + b.primaryIndexes[pns] - 1, peerIndexBase + b.peerIndexes[sns] - 1
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
// What it changes on an interface that existed before the run, a rollback
// changes back.
func (b *builder) ensureLink(c *nsConn, l netlink.Link, mtu int, master string) error {
	a := l.Attrs()
	undo := func(f func() error) {
		if !b.createdHere(c.name, l) {
			b.onRollback(f)
		}
	}
	if a.Flags&net.FlagUp == 0 {
		if err := c.h.LinkSetUp(l); err != nil {
			return fmt.Errorf("set %s up: %w", a.Name, err)
		}
		undo(func() error { return c.h.LinkSetDown(l) })
		b.changed.Add(1)
	}
	if mtu != 0 && a.MTU != mtu {
		if err := c.h.LinkSetMTU(l, mtu); err != nil {
			return fmt.Errorf("set %s mtu %d: %w", a.Name, mtu, err)
		}
		old := a.MTU
		undo(func() error { return c.h.LinkSetMTU(l, old) })
		b.changed.Add(1)
	}
	if master != "" && a.MasterIndex != b.bridgeIdx[master] {
		if err := c.h.LinkSetMasterByIndex(l, b.bridgeIdx[master]); err != nil {
			return fmt.Errorf("attach %s to bridge %s: %w", a.Name, master, err)
		}
		old := a.MasterIndex
		undo(func() error {
			if old == 0 {
				return c.h.LinkSetNoMaster(l)
			}
			return c.h.LinkSetMasterByIndex(l, old)
		})
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

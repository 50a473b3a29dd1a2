package agent

import (
	"net/netip"
	"slices"
	"strconv"
	"time"

	"github.com/nsflow/nsflow/bpf"
)

// The attribution rule: every packet is counted once per namespace pair,
// where it is delivered into the namespace that owns its destination
// address (tc ingress of an interface in that namespace). A packet to an
// address no discovered namespace owns is counted where it leaves the
// namespace owning its source address (tc egress). Every other sighting
// (bridge ports in transit, routers, the sender's own egress when the
// receiver is watched) is not counted, so a flow crossing a veth pair or
// a bridge is counted exactly once.
//
// A flow record's decision is made once and kept until the record is
// evicted, so later discovery changes never move counts between series
// (which would make one of them go backwards). A record whose owner is not
// known yet waits, uncounted, up to unresolvedGrace before it is counted
// with "unknown" for the missing side.

// pairKey names a namespace pair series.
type pairKey struct {
	Src, Dst, Protocol string
}

// decision is what a flow record counts toward.
type decision struct {
	counted bool
	pair    pairKey
	port    string // destination port bucket
	// pendingSince is set while the decision waits for discovery.
	pendingSince time.Time
	// violation, when set, is the isolation pair the record violates.
	violation *[2]string
	// id tells this record from a later one with the same key.
	id uint64
}

// droppedAddr is an address a live namespace let go (its interface
// deleted or moved away, the address removed), and when.
type droppedAddr struct {
	cookie    uint64
	at        uint64 // CLOCK_MONOTONIC ns
	broadcast bool   // the address is the broadcast of a subnet it left
}

// pruneDroppedLocked forgets the addresses dropped long enough ago that
// every record that began before has been decided: passes decide every
// record while some are kept, and a record waits for discovery at most
// unresolvedGrace. Callers hold a.mu.
func (a *Agent) pruneDroppedLocked(now uint64) {
	keep := uint64(unresolvedGrace + 2*a.evictInterval())
	for ip, ds := range a.dropped {
		if ds = slices.DeleteFunc(ds, func(d droppedAddr) bool { return d.at+keep <= now }); len(ds) == 0 {
			delete(a.dropped, ip)
		} else {
			a.dropped[ip] = ds
		}
	}
}

// goneNetns is a removed namespace whose records are not folded yet.
type goneNetns struct {
	label  string
	addrs  map[netip.Addr]bool // the addresses it held
	bcasts map[netip.Addr]bool // the broadcast addresses of its IPv4 subnets
	at     uint64              // when it was removed, CLOCK_MONOTONIC ns
}

// decideLocked returns the decision for a flow record, or nil while it is
// pending. Callers hold a.mu (read) and a.book.mu.
func (a *Agent) decideLocked(k bpf.FlowKey, s bpf.FlowStats, now time.Time, final bool) *decision {
	b, id := a.book, s.ID
	if d := b.decisions[k]; d != nil && d.pendingSince.IsZero() {
		return d
	}
	// Decided before a restart: the namespaces it names may be gone now.
	if d := b.restoredLocked(k, id); d != nil {
		return d
	}
	label, tracked := a.labelLocked(k.NetnsCookie)
	if !tracked || nameless(k.Src) || nameless(k.Dst) || a.broadcastLocked(k.Dst) {
		return b.settle(k, id, &decision{}) // counted per port only
	}
	d := &decision{}
	if a.cfg.Isolation != nil && k.Dir == bpf.Ingress {
		holders := func(ip netip.Addr) []string { return a.holdersAtLocked(ip, s.FirstSeen) }
		if src, dst, ok := a.cfg.Isolation(k, label, holders); ok {
			d.violation = &[2]string{src, dst}
		}
	}
	var missing bool
	switch k.Dir {
	case bpf.Ingress:
		if !a.ownsLocked(k.NetnsCookie, k.Dst, s.FirstSeen) {
			// No namespace is known to own the destination yet: its
			// address may still be on its way from discovery, so wait
			// as for an unknown source before settling it uncounted.
			if len(a.owners[k.Dst]) == 0 && !final && b.pending(k, now) {
				return nil
			}
			return b.settle(k, id, d)
		}
		src, ok := a.ownerLocked(k.Src, s.FirstSeen)
		if !ok {
			// The address is in several namespaces: the sender is the one
			// at the far end of the direct veth the packet came through.
			if peer, found := a.peerLabelLocked(k.NetnsCookie, k.Ifindex); found && a.holdsLocked(peer, k.Src) {
				src, ok = peer, true
			}
		}
		d.counted, d.pair, missing = true, pairKey{src, label, protoName(k)}, !ok
	case bpf.Egress:
		if !a.ownsLocked(k.NetnsCookie, k.Src, s.FirstSeen) {
			return b.settle(k, id, d)
		}
		if a.heldLocked(k.Dst, s.FirstSeen) {
			return b.settle(k, id, d) // counted where it is delivered
		}
		d.counted, d.pair, missing = true, pairKey{label, UnknownNetns, protoName(k)}, true
	}
	if missing && !final && b.pending(k, now) {
		return nil
	}
	d.port = b.portBucket(d.pair, k)
	return b.settle(k, id, d)
}

// labelLocked names the namespace of a cookie, including namespaces that
// were removed but whose flows are not folded yet.
func (a *Agent) labelLocked(cookie uint64) (string, bool) {
	if s := a.byCookie[cookie]; s != nil {
		return s.label, true
	}
	g, ok := a.gone[cookie]
	return g.label, ok
}

// nameless reports whether ip identifies no namespace: loopback,
// link-local, multicast, unspecified and the IPv4 limited broadcast
// addresses are every namespace's or nobody's.
func nameless(ip netip.Addr) bool {
	ip = ip.Unmap()
	return !ownedAddr(ip) || ip == netip.AddrFrom4([4]byte{255, 255, 255, 255})
}

// broadcastLocked reports whether ip is the broadcast address of a live
// namespace's IPv4 subnet that no namespace holds as its own: a packet to
// it goes to every namespace on the subnet, and identifies none.
func (a *Agent) broadcastLocked(ip netip.Addr) bool {
	ip = ip.Unmap()
	if len(a.owners[ip]) > 0 {
		return false
	}
	if a.bcasts[ip] > 0 {
		return true
	}
	for _, g := range a.gone { // removed, records not folded yet
		if g.bcasts[ip] {
			return true
		}
	}
	for _, d := range a.dropped[ip] { // left by the subnet's last live holder
		if d.broadcast {
			return true
		}
	}
	return false
}

// ownsLocked reports whether the namespace with this cookie holds ip, or
// held it when a record first seen at firstSeen began.
func (a *Agent) ownsLocked(cookie uint64, ip netip.Addr, firstSeen uint64) bool {
	ip = ip.Unmap()
	if _, live := a.owners[ip][cookie]; live || a.gone[cookie].addrs[ip] {
		return true
	}
	for _, d := range a.dropped[ip] {
		if d.cookie == cookie && !d.broadcast && firstSeen < d.at {
			return true
		}
	}
	return false
}

// ownerLocked names the one namespace holding ip for a record first seen
// at firstSeen (CLOCK_MONOTONIC ns); ok is false when none or several do.
func (a *Agent) ownerLocked(ip netip.Addr, firstSeen uint64) (string, bool) {
	if h := a.holdersAtLocked(ip, firstSeen); len(h) == 1 {
		return h[0], true
	}
	return UnknownNetns, false
}

// heldLocked reports whether a namespace holds ip, or held it when a
// record first seen at firstSeen began.
func (a *Agent) heldLocked(ip netip.Addr, firstSeen uint64) bool {
	return len(a.owners[ip.Unmap()]) > 0 || len(a.holdersAtLocked(ip, firstSeen)) > 0
}

// holdersAtLocked names the namespaces that held ip when a record first
// seen at firstSeen began, sorted; the isolation classifier judges by
// them too. Those that let it go since
// (removed, or its interface deleted or moved, the address removed or
// given to another) held it then: the record's first packets were
// theirs. Live holders count if the agent knew of them by then; when no
// other did, all do (a new namespace's first packets may come before the
// agent hears of its address).
func (a *Agent) holdersAtLocked(ip netip.Addr, firstSeen uint64) []string {
	ip = ip.Unmap()
	var out []string
	seen := map[uint64]bool{}
	add := func(c uint64) {
		if l, ok := a.labelLocked(c); ok && !seen[c] {
			seen[c] = true
			out = append(out, l)
		}
	}
	for c, g := range a.gone {
		if g.addrs[ip] && firstSeen < g.at {
			add(c)
		}
	}
	for _, d := range a.dropped[ip] {
		if !d.broadcast && firstSeen < d.at {
			add(d.cookie)
		}
	}
	former := len(out) > 0
	for c, since := range a.owners[ip] {
		if !former || since <= firstSeen {
			add(c)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// holdsLocked reports whether the namespace labelled label holds ip.
func (a *Agent) holdsLocked(label string, ip netip.Addr) bool {
	for c := range a.owners[ip.Unmap()] {
		if l, _ := a.labelLocked(c); l == label {
			return true
		}
	}
	return false
}

// protoName is the protocol label: tcp, udp, icmp, icmpv6, or the number.
func protoName(k bpf.FlowKey) string {
	switch k.Proto {
	case 6:
		return "tcp"
	case 17:
		return "udp"
	case 1:
		return "icmp"
	case 58:
		return "icmpv6"
	case 132:
		return "sctp"
	}
	return strconv.Itoa(int(k.Proto))
}

// hasPorts reports whether the protocol carries ports in the flow key.
func hasPorts(proto uint8) bool { return proto == 6 || proto == 17 || proto == 132 }

// pending marks k as waiting for discovery and reports whether it is still
// within unresolvedGrace of the first time it waited.
func (b *flowBook) pending(k bpf.FlowKey, now time.Time) bool {
	prev := b.decisions[k]
	if prev == nil {
		prev = &decision{pendingSince: now}
		b.decisions[k] = prev
	}
	return now.Sub(prev.pendingSince) < unresolvedGrace
}

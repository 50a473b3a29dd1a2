package bpf

import (
	"errors"
	"fmt"
	"slices"
	"sync/atomic"

	"github.com/cilium/ebpf"
)

// Direction is the side of a port a packet was seen on.
type Direction uint8

const (
	Ingress Direction = iota // received by the interface
	Egress                   // sent by the interface
)

// Family is the address family class of a packet.
type Family uint8

const (
	IPv4 Family = iota
	IPv6
	OtherFamily // ARP, LLDP, malformed or truncated IP headers, ...
)

// L4 is the transport protocol class of a packet.
type L4 uint8

const (
	TCP L4 = iota
	UDP
	ICMP // ICMP over IPv4, ICMPv6 over IPv6
	OtherL4
)

// Directions, Families and L4s list every class, in index order.
var (
	Directions = []Direction{Ingress, Egress}
	Families   = []Family{IPv4, IPv6, OtherFamily}
	L4s        = []L4{TCP, UDP, ICMP, OtherL4}
)

func (d Direction) String() string { return [...]string{"ingress", "egress"}[d&1] }

func (f Family) String() string {
	if f > OtherFamily {
		return fmt.Sprintf("family(%d)", uint8(f))
	}
	return [...]string{"ipv4", "ipv6", "other"}[f]
}

func (p L4) String() string {
	if p > OtherL4 {
		return fmt.Sprintf("l4(%d)", uint8(p))
	}
	return [...]string{"tcp", "udp", "icmp", "other"}[p]
}

// PortKey names a port: ifindex alone collides across namespaces.
type PortKey struct {
	NetnsCookie uint64
	Ifindex     uint32
}

// Counter counts packets three ways. Packets counts skbs, which is what
// the kernel's interface statistics count; Segments counts a GSO/GRO
// super-packet as the gso_segs wire packets it carries; Bytes is skb->len,
// the MAC header included, as in the interface statistics.
type Counter struct {
	Packets, Segments, Bytes uint64
}

// Add returns c + o.
func (c Counter) Add(o Counter) Counter {
	return Counter{c.Packets + o.Packets, c.Segments + o.Segments, c.Bytes + o.Bytes}
}

// PortStats is one port's counters, indexed [Direction][Family][L4].
type PortStats struct {
	C [2][3][4]Counter
}

// Get returns one class.
func (s *PortStats) Get(d Direction, f Family, p L4) Counter { return s.C[d][f][p] }

// Family returns the total of one direction and family.
func (s *PortStats) Family(d Direction, f Family) Counter {
	var t Counter
	for _, c := range s.C[d][f] {
		t = t.Add(c)
	}
	return t
}

// Dir returns the total of one direction.
func (s *PortStats) Dir(d Direction) Counter {
	var t Counter
	for f := range s.C[d] {
		t = t.Add(s.Family(d, Family(f)))
	}
	return t
}

// Total returns both directions together.
func (s *PortStats) Total() Counter { return s.Dir(Ingress).Add(s.Dir(Egress)) }

// Add adds o's counters to s's.
func (s *PortStats) Add(o *PortStats) {
	for d := range s.C {
		for f := range s.C[d] {
			for p := range s.C[d][f] {
				s.C[d][f][p] = s.C[d][f][p].Add(o.C[d][f][p])
			}
		}
	}
}

func (s *PortStats) addRaw(r *nsflowPortStats) {
	if r == nil {
		return
	}
	for d := range s.C {
		for f := range s.C[d] {
			for p := range s.C[d][f] {
				rc := &r.C[d][f][p]
				s.C[d][f][p] = s.C[d][f][p].Add(Counter{rc.Packets, rc.Segments, rc.Bytes})
			}
		}
	}
}

// A port is counted in its slot of the nsflow_port_slots array when
// Attach could claim that slot, else in the nsflow_ports hash map (a
// packet in the array costs about 1 ns, in the hash map about 25). A
// packet of a recorded flow on a port with a slot reaches the slot later:
// its flow cache entry carries the port's counts and adds them to the
// slot when it is written back. The readers below merge all three.

// portSlots is PORT_SLOTS in nsflow.c.
const portSlots = 1024

// tag returns the port a slot belongs to (every line carries the tag;
// user space writes them all), and whether it belongs to one.
func (v *nsflowPortSlot) tag() (PortKey, bool) {
	return PortKey{v.L[0].NetnsCookie, v.L[0].Ifindex}, v.L[0].NetnsCookie != 0
}

// setTag gives every line of the slot k's tag, the claim's id and zero
// counters.
func (v *nsflowPortSlot) setTag(k PortKey, claim uint32) {
	for i := range v.L {
		v.L[i] = nsflowPortLine{NetnsCookie: k.NetnsCookie, Ifindex: k.Ifindex, Claim: claim}
	}
}

// addSlot adds a slot's counters: counter_index i of nsflow.c is in line
// i/2.
func (s *PortStats) addSlot(v *nsflowPortSlot) {
	for li := range v.L {
		for j, rc := range v.L[li].C {
			s.addIndex(uint32(li*2+j), Counter{rc.Packets, rc.Segments, rc.Bytes})
		}
	}
}

// addIndex adds c to the counter of counter_index i (nsflow.c), which is
// c[dir][family][l4] of port_stats flattened.
func (s *PortStats) addIndex(i uint32, c Counter) {
	const fams, l4s = uint32(len(s.C[0])), uint32(len(s.C[0][0]))
	d, f, p := i/(fams*l4s), i/l4s%fams, i%l4s
	s.C[d&1][f][p] = s.C[d&1][f][p].Add(c)
}

// pending returns what a flow cache entry holds for a port's slot counter
// and not yet in it: the entry's delta, when the entry carries its port's
// counts and the slot is still the one they go to (the same claim, read
// on the entry's CPU); ok is false otherwise.
func pending(e *nsflowFlowCacheEntry, slot *nsflowPortSlot) (k PortKey, i uint32, c Counter, ok bool) {
	if e.Id == 0 || e.D.Packets == 0 || e.PortClaim == 0 || int(e.PortCounter/2) >= len(slot.L) {
		return k, 0, c, false
	}
	k = PortKey{e.Key.NetnsCookie, e.Key.Ifindex}
	if l := &slot.L[e.PortCounter/2]; l.NetnsCookie != k.NetnsCookie || l.Ifindex != k.Ifindex || l.Claim != e.PortClaim {
		return k, 0, c, false
	}
	return k, e.PortCounter, Counter{e.D.Packets, e.D.Segments, e.D.Bytes}, true
}

// portSlotIndex is port_slot_index in nsflow.c.
func portSlotIndex(k PortKey) uint32 {
	h := (k.NetnsCookie ^ uint64(k.Ifindex)<<32) * 0x9E3779B97F4A7C15
	return uint32(h>>54) & (portSlots - 1)
}

// claimSlot tags the port's slot on every CPU, unless another port holds
// it (the port then stays on the hash map); claimed says it tagged a free
// slot. The program only writes slots with its port's tag, so a free slot
// cannot change meanwhile. Claim before the program runs on the port:
// writing the tags also writes zero counters, over any packet a line
// counted between its tag and its counters being written.
//
// Every claimSlot is undone by releaseSlot if the attach fails, or by
// dropSlotUser once the attachment is detached.
func (d *Datapath) claimSlot(k PortKey) (claimed bool, err error) {
	d.slotMu.Lock()
	defer d.slotMu.Unlock()
	d.slotUsers[k]++
	defer func() {
		if err != nil {
			d.dropSlotUserLocked(k)
		}
	}()
	idx := portSlotIndex(k)
	vs, err := d.portSlots.get(idx)
	if err != nil {
		return false, fmt.Errorf("bpf: read port slot: %w", err)
	}
	for i := range vs {
		switch t, ok := vs[i].tag(); {
		case t == k:
			return false, nil // ours from an earlier attach
		case ok:
			return false, nil // another port's: use the hash map
		}
	}
	// Cache entries of the port from an earlier claim carry their counts
	// to that claim, which counts no more: freeing it moved the deletion
	// generation on, so that at their next packet they take the new one;
	// if that bump failed, it is owed, and made first.
	if err := d.bumpGenIf(true); err != nil {
		return false, fmt.Errorf("bpf: claim port slot: %w", err)
	}
	claim := d.newClaim()
	for i := range vs {
		vs[i].setTag(k, claim)
	}
	if err := d.portSlots.put(idx, vs); err != nil {
		return false, fmt.Errorf("bpf: claim port slot: %w", err)
	}
	// Fresh only when this attach is the port's one user: a live
	// attachment of the port (counting in the hash map until now) counts
	// in the slot from here on, and its counts must stay.
	if d.slotUsers[k] == 1 {
		d.slotFresh[k] = true
	}
	return true, nil
}

// slotInUse records that an attach of the port completed: its slot, if
// it holds one, now keeps its counts until DeletePort.
func (d *Datapath) slotInUse(k PortKey) {
	d.slotMu.Lock()
	defer d.slotMu.Unlock()
	delete(d.slotFresh, k)
}

// Ports returns every port's counters, summed over CPUs. A port appears
// once it was attached or has seen a packet.
func (d *Datapath) Ports() (map[PortKey]PortStats, error) {
	done, err := d.use()
	if err != nil {
		return nil, fmt.Errorf("bpf: read ports: %w", err)
	}
	defer done()
	return d.readPorts(nil)
}

// Port returns one port's counters; ok is false when the port is unknown.
func (d *Datapath) Port(k PortKey) (s PortStats, ok bool, err error) {
	done, err := d.use()
	if err != nil {
		return s, false, fmt.Errorf("bpf: read port: %w", err)
	}
	defer done()
	ports, err := d.readPorts(&k)
	if err != nil {
		return s, false, err
	}
	s, ok = ports[k]
	return s, ok, nil
}

// readPorts reads every port's counters (only one's, if only is set):
// the hash map, the slots, and the counts the flow cache holds for the
// slots. A write-back moves counts from an entry to a slot between two
// bumps of the entry's seq, so the slots and the cache are copied
// between two reads of every entry's seq word, and equal seqs mean no
// count was copied twice or not at all. The hash map is read first, on
// its own: counts reach it directly, never by a write-back. After a first
// try, the cache is held: its entries are then written back no more, and
// a try meets at most the write-backs begun before.
func (d *Datapath) readPorts(only *PortKey) (map[PortKey]PortStats, error) {
	// A generation bump that failed when a slot was freed leaves entries
	// carrying counts to the freed claim, lost at write-back, until one
	// is made: readers, which come often, make it. A failure is not the
	// read's: the bump stays owed, for the next read.
	_ = d.bumpGenIf(true)
	out, err := d.readPortHash(only)
	if err != nil {
		return nil, err
	}
	held := false
	defer func() {
		if held {
			d.flowCache.add32(-1, holdOffset, -1)
		}
	}()
	for try := range rereadTries {
		if try == 1 {
			held = d.flowCache.add32(-1, holdOffset, 1)
		}
		s1, err := d.cacheSeqs()
		if err != nil {
			return nil, err
		}
		cache, err := d.readCache()
		if err != nil {
			return nil, err
		}
		slots, err := d.readSlots(only)
		if err != nil {
			return nil, err
		}
		fence()
		s2, err := d.cacheSeqs()
		if err != nil {
			return nil, err
		}
		if !slices.Equal(s1, s2) || slices.ContainsFunc(s1, func(q uint32) bool { return q%2 == 1 }) {
			continue
		}
		for _, vs := range slots {
			for c := range vs {
				if pk, ok := vs[c].tag(); ok && (only == nil || pk == *only) {
					s := out[pk]
					s.addSlot(&vs[c])
					out[pk] = s
				}
			}
		}
		for ci := range cache {
			for c := range cache[ci] {
				e := &cache[ci][c]
				pk := PortKey{e.Key.NetnsCookie, e.Key.Ifindex}
				if only != nil && pk != *only {
					continue
				}
				slot, ok := slots[portSlotIndex(pk)]
				if !ok {
					continue
				}
				if k, i, n, ok := pending(e, &slot[c]); ok {
					s := out[k]
					s.addIndex(i, n)
					out[k] = s
				}
			}
		}
		return out, nil
	}
	return nil, errors.New("bpf: read ports: the flow cache keeps changing")
}

// cacheSeqs returns the seq word of every flow cache entry, index-major
// ([index*cpus + cpu]), from memory, or else from a copy of the cache.
func (d *Datapath) cacheSeqs() ([]uint32, error) {
	t := d.flowCache
	out := make([]uint32, int(t.n*t.cpus))
	if t.words(-1, seqOffset, false, func(c, e int, w *uint32) { out[e*int(t.cpus)+c] = atomic.LoadUint32(w) }) {
		return out, nil
	}
	cache, err := d.readCache()
	if err != nil {
		return nil, err
	}
	for i := range cache {
		for c := range cache[i] {
			out[i*int(t.cpus)+c] = cache[i][c].Seq
		}
	}
	return out, nil
}

// readPortHash reads the ports' counters in the hash map (only one's, if
// only is set).
func (d *Datapath) readPortHash(only *PortKey) (map[PortKey]PortStats, error) {
	out := map[PortKey]PortStats{}
	var vs []nsflowPortStats
	if only != nil {
		err := d.objs.NsflowPorts.Lookup(nsflowPortKey{NetnsCookie: only.NetnsCookie, Ifindex: only.Ifindex}, &vs)
		switch {
		case err == nil:
			var s PortStats
			for i := range vs {
				s.addRaw(&vs[i])
			}
			out[*only] = s
		case !errors.Is(err, ebpf.ErrKeyNotExist):
			return nil, fmt.Errorf("bpf: read port: %w", err)
		}
		return out, nil
	}
	var k nsflowPortKey
	it := d.objs.NsflowPorts.Iterate()
	for it.Next(&k, &vs) {
		// Set, not added to: when a port is deleted meanwhile, the
		// iteration starts over and visits ports again.
		var s PortStats
		for i := range vs {
			s.addRaw(&vs[i])
		}
		out[PortKey{k.NetnsCookie, k.Ifindex}] = s
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("bpf: read ports: %w", err)
	}
	return out, nil
}

// readSlots returns the port slots by index: all of them, or only's.
func (d *Datapath) readSlots(only *PortKey) (map[uint32][]nsflowPortSlot, error) {
	slots := map[uint32][]nsflowPortSlot{}
	if only != nil {
		idx := portSlotIndex(*only)
		vs, err := d.portSlots.get(idx)
		if err != nil {
			return nil, fmt.Errorf("bpf: read port slot: %w", err)
		}
		slots[idx] = vs
		return slots, nil
	}
	all, err := d.portSlots.all()
	if err != nil {
		return nil, fmt.Errorf("bpf: read port slots: %w", err)
	}
	for idx, vs := range all {
		slots[uint32(idx)] = vs
	}
	return slots, nil
}

// DeletePort forgets a port's counters and frees its slot. Call it once
// the port is detached or gone: a packet counted while it runs may be
// lost. A port that is not there is not an error.
func (d *Datapath) DeletePort(k PortKey) error {
	done, err := d.use()
	if err != nil {
		return fmt.Errorf("bpf: delete port: %w", err)
	}
	defer done()
	err = d.objs.NsflowPorts.Delete(nsflowPortKey{NetnsCookie: k.NetnsCookie, Ifindex: k.Ifindex})
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("bpf: delete port: %w", err)
	}
	return d.freeSlot(k)
}

// releaseSlot undoes the claimSlot of an attach that failed. The slot is
// freed when an attach in flight claimed it, none completed, and no other
// attach of the port uses it: one of the same port may have succeeded
// meanwhile, and counts there.
func (d *Datapath) releaseSlot(k PortKey) error {
	d.slotMu.Lock()
	defer d.slotMu.Unlock()
	d.dropSlotUserLocked(k)
	if !d.slotFresh[k] || d.slotUsers[k] > 0 {
		return nil
	}
	return d.freeSlotLocked(k)
}

// dropSlotUser undoes the claimSlot of an attachment that was detached;
// the slot and its counts stay until DeletePort.
func (d *Datapath) dropSlotUser(k PortKey) {
	d.slotMu.Lock()
	defer d.slotMu.Unlock()
	d.dropSlotUserLocked(k)
}

func (d *Datapath) dropSlotUserLocked(k PortKey) {
	if d.slotUsers[k]--; d.slotUsers[k] <= 0 {
		delete(d.slotUsers, k)
	}
}

// freeSlot clears the port's slot if the port holds it.
func (d *Datapath) freeSlot(k PortKey) error {
	d.slotMu.Lock()
	defer d.slotMu.Unlock()
	return d.freeSlotLocked(k)
}

func (d *Datapath) freeSlotLocked(k PortKey) error {
	delete(d.slotFresh, k)
	idx := portSlotIndex(k)
	slots, err := d.portSlots.get(idx)
	if err != nil {
		return fmt.Errorf("bpf: read port slot: %w", err)
	}
	// Any CPU's: a put that failed part way left some CPUs tagged.
	if !slices.ContainsFunc(slots, func(v nsflowPortSlot) bool { t, _ := v.tag(); return t == k }) {
		return nil
	}
	clear(slots)
	if err := d.portSlots.put(idx, slots); err != nil {
		d.oweGen() // some CPUs may be cleared already
		return fmt.Errorf("bpf: free port slot: %w", err)
	}
	// Cache entries carrying counts to the freed claim drop them at
	// write-back; a packet still coming (DeletePort of a port not yet
	// detached) makes its entry count in the hash map from then on.
	return d.bumpGenIf(false)
}

// newClaim returns an id for a claim of a port slot: never 0, and not one
// an earlier claim used while the tables lived (see highestClaim).
func (d *Datapath) newClaim() uint32 {
	for {
		if d.lastClaim++; d.lastClaim != 0 {
			return d.lastClaim
		}
	}
}

// highestClaim is the highest claim id pinned tables hold: in slot lines,
// and in cache entries whose counts wait for a claim that may be freed
// since. A run's claims start above it, so that no entry of an earlier
// run finds its claim on a later one's slot (ids wrap only after 2^32
// claims). Read at load, before any program of this run counts.
func (d *Datapath) highestClaim() (uint32, error) {
	var high uint32
	slots, err := d.portSlots.all()
	if err != nil {
		return 0, err
	}
	for _, cpus := range slots {
		for _, v := range cpus {
			for _, l := range v.L {
				high = max(high, l.Claim)
			}
		}
	}
	cache, err := d.flowCache.all()
	if err != nil {
		return 0, err
	}
	for _, cpus := range cache {
		for _, e := range cpus {
			high = max(high, e.PortClaim)
		}
	}
	return high, nil
}

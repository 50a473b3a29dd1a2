package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"unsafe"

	"github.com/cilium/ebpf"
)

// FlowKey identifies a flow as seen on one port in one direction. Ports
// are 0 when the packet carried none (a later fragment, a truncated L4
// header, a protocol without ports); for ICMP, SrcPort is the type and
// DstPort the code, both ICMPUnknown when they were not read. Proto is
// the IP protocol: for IPv6 the last next-header the program reached, and
// for IPv4 the one an authentication header carries.
type FlowKey struct {
	NetnsCookie      uint64
	Ifindex          uint32
	Dir              Direction
	Proto            uint8
	Src, Dst         netip.Addr
	SrcPort, DstPort uint16
}

// ICMPUnknown is an ICMP flow's SrcPort and DstPort when its packets'
// type and code were not read (a later fragment, a cut header).
const ICMPUnknown = 0xffff

// Port returns the port the flow was seen on.
func (k FlowKey) Port() PortKey { return PortKey{k.NetnsCookie, k.Ifindex} }

// FlowStats are a flow's counters, summed over CPUs. FirstSeen and
// LastSeen are CLOCK_MONOTONIC nanoseconds (since boot, without suspend)
// at the resolution of the kernel's tick (1-10 ms): the programs count
// time in jiffies.
type FlowStats struct {
	Packets, Segments, Bytes uint64
	FirstSeen, LastSeen      uint64
	TCPFlags                 uint8
	// ID tells a record from a later one with the same key (one deleted
	// and created anew): it is set at insert and stays for the record's
	// life, across agent restarts.
	ID uint64
}

func statsFromRecord(r *nsflowFlowValue) FlowStats {
	return FlowStats{
		Packets:   r.Packets,
		Segments:  r.Segments,
		Bytes:     r.Bytes,
		FirstSeen: r.FirstSeen,
		LastSeen:  r.LastSeen,
		TCPFlags:  uint8(r.TcpFlags),
		ID:        r.Id,
	}
}

// addCached adds the not yet written back counts of a cache entry that
// belongs to the record with id.
func (s *FlowStats) addCached(e *nsflowFlowCacheEntry, id uint64) {
	if e.Id != id || e.D.Packets == 0 {
		return
	}
	s.Packets += e.D.Packets
	s.Segments += e.D.Segments
	s.Bytes += e.D.Bytes
	s.LastSeen = max(s.LastSeen, e.D.LastSeen)
	s.TCPFlags |= uint8(e.D.TcpFlags)
}

func flowKeyFromRaw(r *nsflowFlowKey) FlowKey {
	k := FlowKey{
		NetnsCookie: r.NetnsCookie,
		Ifindex:     r.Ifindex,
		Dir:         Direction(r.Dir),
		Proto:       r.Proto,
		SrcPort:     r.Sport,
		DstPort:     r.Dport,
	}
	if r.Family == 4 {
		k.Src = netip.AddrFrom4([4]byte(r.Src[:4]))
		k.Dst = netip.AddrFrom4([4]byte(r.Dst[:4]))
	} else {
		k.Src = netip.AddrFrom16(r.Src)
		k.Dst = netip.AddrFrom16(r.Dst)
	}
	return k
}

func (k FlowKey) raw() (nsflowFlowKey, error) {
	r := nsflowFlowKey{
		NetnsCookie: k.NetnsCookie,
		Ifindex:     k.Ifindex,
		Dir:         uint8(k.Dir),
		Proto:       k.Proto,
		Sport:       k.SrcPort,
		Dport:       k.DstPort,
	}
	switch {
	case k.Src.Is4() && k.Dst.Is4():
		r.Family = 4
		s, d := k.Src.As4(), k.Dst.As4()
		copy(r.Src[:], s[:])
		copy(r.Dst[:], d[:])
	case k.Src.Is6() && k.Dst.Is6():
		r.Family = 6
		r.Src, r.Dst = k.Src.As16(), k.Dst.As16()
	default:
		return r, fmt.Errorf("flow key %v -> %v: addresses must both be IPv4 or both IPv6", k.Src, k.Dst)
	}
	return r, nil
}

// A flow's counts live in its record in the nsflow_flows hash map plus,
// per CPU, in at most one entry of the direct-mapped nsflow_flow_cache
// (at flowCacheIndex of its key), which the program writes back to the
// record when another flow takes the entry or after a deletion. A reader
// adds the entries whose id matches the record's; entries of a deleted
// record have another id and are ignored.

// flowCacheSize is FLOW_CACHE in nsflow.c.
const flowCacheSize = 1024

// flowCacheIndex is flow_cache_index in nsflow.c, over the key's
// little-endian 64-bit words (all but the netns cookie).
func flowCacheIndex(k *nsflowFlowKey) uint32 {
	w1 := uint64(k.Ifindex) | uint64(k.Dir)<<32 | uint64(k.Family)<<40 | uint64(k.Proto)<<48 | uint64(k.Pad)<<56
	w2 := uint64(k.Sport) | uint64(k.Dport)<<16 | uint64(k.Pad2)<<32
	le := binary.LittleEndian
	w3, w4 := le.Uint64(k.Src[:8]), le.Uint64(k.Src[8:])
	w5, w6 := le.Uint64(k.Dst[:8]), le.Uint64(k.Dst[8:])
	h := (w3^w6)*0x9E3779B97F4A7C15 + (w1^w4)*0xC2B2AE3D27D4EB4F + (w2^w5)*0x165667B19E3779F9
	return uint32(h>>54) & (flowCacheSize - 1)
}

func (d *Datapath) readRecords() (map[nsflowFlowKey]nsflowFlowValue, error) {
	recs := map[nsflowFlowKey]nsflowFlowValue{}
	var k nsflowFlowKey
	var v nsflowFlowValue
	it := d.objs.NsflowFlows.Iterate()
	for it.Next(&k, &v) {
		recs[k] = v
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("bpf: read flows: %w", err)
	}
	return recs, nil
}

// readCache returns the flow cache, every CPU's entries per index.
func (d *Datapath) readCache() ([][]nsflowFlowCacheEntry, error) {
	cache, err := d.flowCache.all()
	if err != nil {
		return nil, fmt.Errorf("bpf: read flow cache: %w", err)
	}
	return cache, nil
}

// flowStats returns one key's counts from a record and the cache entries
// at its index; settled is false when one of the key's entries was being
// written back as it was read (its seq odd): the record may or may not
// have its delta yet, and the flow must be read again.
func flowStats(k *nsflowFlowKey, r *nsflowFlowValue, entries []nsflowFlowCacheEntry) (s FlowStats, settled bool) {
	s = statsFromRecord(r)
	for i := range entries {
		if entries[i].Key == *k {
			if entries[i].Seq%2 == 1 {
				return s, false
			}
			s.addCached(&entries[i], r.Id)
		}
	}
	return s, true
}

// rereadTries bounds rereadFlow. Only a write-back begun before the
// entries were held, or their table not being mapped (no holds), makes
// it try again.
const rereadTries = 1000

// holdOffset and seqOffset are where an entry's hold count and seq are
// (flow_cache_entry.hold, .seq).
var (
	holdOffset = unsafe.Offsetof(nsflowFlowCacheEntry{}.Hold)
	seqOffset  = unsafe.Offsetof(nsflowFlowCacheEntry{}.Seq)
)

// rereadFlow reads one flow consistently: its record between two reads
// of its entries' seq words (from memory), until no write-back began or
// ended in between. A write-back bumps the seq of the entry it empties
// before and after it adds to the record, so equal seqs mean the record
// holds none of the deltas read. Without the mapping, the record is read
// before and after the entries instead, which takes longer. A packet
// added to the record directly (its entry held) may be in one of the
// record's counters and not yet in another: each counter is exact as of
// some instant of the read.
func (d *Datapath) rereadFlow(k *nsflowFlowKey) (FlowStats, bool, error) {
	i := flowCacheIndex(k)
	// Held, the entries at i are written back no more: the first try may
	// still meet a write-back begun before, the next ones none.
	if d.flowCache.add32(int(i), holdOffset, 1) {
		defer d.flowCache.add32(int(i), holdOffset, -1)
	}
	lookup := func(v *nsflowFlowValue) (bool, error) {
		err := d.objs.NsflowFlows.Lookup(k, v)
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return false, nil
		}
		return err == nil, err
	}
	s1, s2 := make([]uint32, d.flowCache.cpus), make([]uint32, d.flowCache.cpus)
	for range rereadTries {
		mapped := d.flowCache.words32(i, seqOffset, s1)
		var r nsflowFlowValue
		if found, err := lookup(&r); !found {
			return FlowStats{}, false, err
		}
		es, err := d.flowCache.get(i)
		if err != nil {
			return FlowStats{}, false, err
		}
		fence()
		if mapped && d.flowCache.words32(i, seqOffset, s2) {
			if !slices.Equal(s1, s2) {
				continue
			}
		} else {
			var after nsflowFlowValue
			if found, err := lookup(&after); !found {
				return FlowStats{}, false, err
			}
			if r != after {
				continue
			}
		}
		if s, settled := flowStats(k, &r, es); settled {
			return s, true, nil
		}
	}
	return FlowStats{}, false, errors.New("flow keeps changing while read")
}

// Flows calls fn for each flow until fn returns false. Each flow's counts
// are read consistently (never counting a written-back delta twice or
// not at all); a flow inserted during the read may be missed.
func (d *Datapath) Flows(fn func(FlowKey, FlowStats) bool) error {
	done, err := d.use()
	if err != nil {
		return fmt.Errorf("bpf: read flows: %w", err)
	}
	defer done()
	if err := d.clock.refresh(); err != nil {
		return err
	}
	// Records, then the cache, then the records again: a record that did
	// not change saw no write-back, so its cache entries are current,
	// unless one was caught mid-write-back (its seq odd: the record may
	// have its delta already), which the flow's reread waits out.
	first, err := d.readRecords()
	if err != nil {
		return err
	}
	cache, err := d.readCache()
	if err != nil {
		return err
	}
	second, err := d.readRecords()
	if err != nil {
		return err
	}
	for k, r := range second {
		var s FlowStats
		settled := false
		if r0, ok := first[k]; ok && r0 == r {
			s, settled = flowStats(&k, &r, cache[flowCacheIndex(&k)])
		}
		if !settled {
			var found bool
			s, found, err = d.rereadFlow(&k)
			if err != nil {
				return fmt.Errorf("bpf: read flow: %w", err)
			}
			if !found {
				continue
			}
		}
		s.FirstSeen, s.LastSeen = d.clock.ns(s.FirstSeen), d.clock.ns(s.LastSeen)
		if !fn(flowKeyFromRaw(&k), s) {
			return nil
		}
	}
	return nil
}

// DeleteFlows removes flows, in one batch where the kernel allows, and
// returns how many were there. Packets of a flow counted between the
// caller's last read and the delete go with the deleted record (never
// from the port counters); the next packet of the flow starts a new
// record with a new FirstSeen. A flow is best deleted once idle.
func (d *Datapath) DeleteFlows(keys []FlowKey) (_ int, err error) {
	done, err := d.use()
	if err != nil {
		return 0, fmt.Errorf("bpf: delete flows: %w", err)
	}
	defer done()
	raw := make([]nsflowFlowKey, 0, len(keys))
	for _, k := range keys {
		r, err := k.raw()
		if err != nil {
			return 0, fmt.Errorf("bpf: delete flows: %w", err)
		}
		raw = append(raw, r)
	}
	if len(raw) == 0 {
		return 0, d.bumpGenIf(true)
	}
	// Cache entries of the deleted records check their record once, at
	// their next packet, after the generation moves on; until it does,
	// they keep counting for records that are gone, so a bump that fails
	// is owed, and tried again at the next call.
	defer func() { err = errors.Join(err, d.bumpGenIf(false)) }()
	n, err := d.objs.NsflowFlows.BatchDelete(raw, nil)
	if err == nil {
		return n, nil
	}
	// A batch stops at the first missing key (or the kernel lacks batch
	// operations): delete the rest one by one.
	deleted := n
	var errs []error
	for _, r := range raw[n:] {
		err := d.objs.NsflowFlows.Delete(r)
		switch {
		case err == nil:
			deleted++
		case errors.Is(err, ebpf.ErrKeyNotExist):
		default:
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return deleted, fmt.Errorf("bpf: delete flows: %w", err)
	}
	return deleted, nil
}

// FlowOverflow returns the number of packets not recorded as flows
// because the flow table was full. They are counted in the port counters.
func (d *Datapath) FlowOverflow() (uint64, error) {
	l, err := d.loss()
	return l.FlowFull, err
}

// PortOverflow returns the number of packets not counted in the port
// counters because the port table was full.
func (d *Datapath) PortOverflow() (uint64, error) {
	l, err := d.loss()
	return l.PortFull, err
}

func (d *Datapath) loss() (nsflowLoss, error) {
	var vs []nsflowLoss
	var t nsflowLoss
	done, err := d.use()
	if err != nil {
		return t, fmt.Errorf("bpf: read loss counters: %w", err)
	}
	defer done()
	if err := d.objs.NsflowLoss.Lookup(uint32(0), &vs); err != nil {
		return t, fmt.Errorf("bpf: read loss counters: %w", err)
	}
	for _, v := range vs {
		t.FlowFull += v.FlowFull
		t.PortFull += v.PortFull
	}
	return t, nil
}

// oweGen records a bump of the deletion generation as owed, for the next
// bumpGenIf to make.
func (d *Datapath) oweGen() {
	d.genMu.Lock()
	defer d.genMu.Unlock()
	d.genOwed = true
}

// bumpGenIf moves the deletion generation on, when owedOnly only if an
// earlier bump failed.
func (d *Datapath) bumpGenIf(owedOnly bool) error {
	d.genMu.Lock()
	defer d.genMu.Unlock()
	if owedOnly && !d.genOwed {
		return nil
	}
	d.genOwed = true
	var g uint32
	if err := d.objs.NsflowGen.Lookup(uint32(0), &g); err != nil {
		return fmt.Errorf("bpf: read generation: %w", err)
	}
	if err := d.objs.NsflowGen.Update(uint32(0), g+1, ebpf.UpdateExist); err != nil {
		return fmt.Errorf("bpf: bump generation: %w", err)
	}
	d.genOwed = false
	return nil
}

// FlowCapacity is the flow table's size.
func (d *Datapath) FlowCapacity() int { return d.maxFlows }

package bpf

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
)

// FlowKey identifies a flow as seen on one port in one direction. Ports
// are 0 when the packet carried none (a later fragment, a truncated L4
// header, a protocol without ports); for ICMP, SrcPort is the type and
// DstPort the code. Proto is the IP protocol; for IPv6 it is the last
// next-header the program reached.
type FlowKey struct {
	NetnsCookie      uint64
	Ifindex          uint32
	Dir              Direction
	Proto            uint8
	Src, Dst         netip.Addr
	SrcPort, DstPort uint16
}

// Port returns the port the flow was seen on.
func (k FlowKey) Port() PortKey { return PortKey{k.NetnsCookie, k.Ifindex} }

// FlowStats are a flow's counters, summed over CPUs. FirstSeen and
// LastSeen are CLOCK_MONOTONIC nanoseconds (since boot, without suspend),
// read with the kernel's coarse clock: up to one tick (1-10 ms) behind.
type FlowStats struct {
	Packets, Segments, Bytes uint64
	FirstSeen, LastSeen      uint64
	TCPFlags                 uint8
}

func (s *FlowStats) addRaw(v *nsflowFlowValue) {
	if v.Packets == 0 {
		return // this CPU never saw the flow
	}
	s.Packets += v.Packets
	s.Segments += v.Segments
	s.Bytes += v.Bytes
	if s.FirstSeen == 0 || (v.FirstSeen != 0 && v.FirstSeen < s.FirstSeen) {
		s.FirstSeen = v.FirstSeen
	}
	s.LastSeen = max(s.LastSeen, v.LastSeen)
	s.TCPFlags |= v.TcpFlags
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

// Flows calls fn for each flow until fn returns false. The table can
// change while it is read: a flow inserted meanwhile may be missed, and
// one deleted meanwhile may still be reported.
func (d *Datapath) Flows(fn func(FlowKey, FlowStats) bool) error {
	var k nsflowFlowKey
	var vs []nsflowFlowValue
	it := d.objs.NsflowFlows.Iterate()
	for it.Next(&k, &vs) {
		var s FlowStats
		for i := range vs {
			s.addRaw(&vs[i])
		}
		if !fn(flowKeyFromRaw(&k), s) {
			return nil
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("bpf: read flows: %w", err)
	}
	return nil
}

// DeleteFlows removes flows, in one batch where the kernel allows, and
// returns how many were there. A flow updated by a CPU between the
// caller's last read and the delete loses those packets from its flow
// record (never from the port counters); the next packet of the flow
// starts a new record with a new FirstSeen.
func (d *Datapath) DeleteFlows(keys []FlowKey) (int, error) {
	raw := make([]nsflowFlowKey, 0, len(keys))
	for _, k := range keys {
		r, err := k.raw()
		if err != nil {
			return 0, fmt.Errorf("bpf: delete flows: %w", err)
		}
		raw = append(raw, r)
	}
	if len(raw) == 0 {
		return 0, nil
	}
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
	if err := d.objs.NsflowLoss.Lookup(uint32(0), &vs); err != nil {
		return t, fmt.Errorf("bpf: read loss counters: %w", err)
	}
	for _, v := range vs {
		t.FlowFull += v.FlowFull
		t.PortFull += v.PortFull
	}
	return t, nil
}

// FlowCapacity is the flow table's size.
func (d *Datapath) FlowCapacity() int { return d.maxFlows }

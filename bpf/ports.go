package bpf

import (
	"errors"
	"fmt"

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

func (s *PortStats) addRaw(r *nsflowPortStats) {
	for d := range s.C {
		for f := range s.C[d] {
			for p := range s.C[d][f] {
				rc := &r.C[d][f][p]
				s.C[d][f][p] = s.C[d][f][p].Add(Counter{rc.Packets, rc.Segments, rc.Bytes})
			}
		}
	}
}

// Ports returns every port's counters, summed over CPUs. A port appears
// once it has seen a packet.
func (d *Datapath) Ports() (map[PortKey]PortStats, error) {
	out := map[PortKey]PortStats{}
	var k nsflowPortKey
	var vs []nsflowPortStats
	it := d.objs.NsflowPorts.Iterate()
	for it.Next(&k, &vs) {
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

// Port returns one port's counters; ok is false when it has seen nothing.
func (d *Datapath) Port(k PortKey) (s PortStats, ok bool, err error) {
	var vs []nsflowPortStats
	err = d.objs.NsflowPorts.Lookup(nsflowPortKey{NetnsCookie: k.NetnsCookie, Ifindex: k.Ifindex}, &vs)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return s, false, nil
	}
	if err != nil {
		return s, false, fmt.Errorf("bpf: read port: %w", err)
	}
	for i := range vs {
		s.addRaw(&vs[i])
	}
	return s, true, nil
}

// DeletePort forgets a port's counters (for example after its interface
// is gone). A port that is not there is not an error.
func (d *Datapath) DeletePort(k PortKey) error {
	err := d.objs.NsflowPorts.Delete(nsflowPortKey{NetnsCookie: k.NetnsCookie, Ifindex: k.Ifindex})
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("bpf: delete port: %w", err)
	}
	return nil
}

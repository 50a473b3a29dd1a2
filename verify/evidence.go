package verify

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"

	"github.com/nsflow/nsflow/bpf"
	"github.com/nsflow/nsflow/topology"
	"github.com/vishvananda/netlink"
)

// Flow is traffic the datapath saw delivered into a namespace: received
// (ingress) on an interface inside it.
type Flow struct {
	Netns   string     `json:"netns"`
	Ifindex uint32     `json:"ifindex"`
	Src     netip.Addr `json:"src"`
	Dst     netip.Addr `json:"dst"`
	Proto   uint8      `json:"proto"`
	SrcPort uint16     `json:"src_port"`
	DstPort uint16     `json:"dst_port"`
	Packets uint64     `json:"packets"`
	Bytes   uint64     `json:"bytes"`
}

// FlowFromBPF converts a datapath flow seen in namespace netns; ok is false
// for egress, which is not a delivery.
func FlowFromBPF(k bpf.FlowKey, s bpf.FlowStats, netns string) (f Flow, ok bool) {
	if k.Dir != bpf.Ingress {
		return f, false
	}
	return Flow{Netns: netns, Ifindex: k.Ifindex, Src: k.Src.Unmap(), Dst: k.Dst.Unmap(), Proto: k.Proto,
		SrcPort: k.SrcPort, DstPort: k.DstPort, Packets: s.Packets, Bytes: s.Bytes}, true
}

// NetnsNames maps the netns cookies of the spec's namespaces that exist
// now to their names: what FlowFromBPF needs to name a flow's namespace.
func NetnsNames(s *topology.Spec) map[uint64]string {
	out := map[uint64]string{}
	for _, ns := range s.Namespaces {
		if c, err := bpf.NetnsCookie(s.NetnsPath(ns.Name)); err == nil {
			out[c] = ns.Name
		}
	}
	return out
}

// Violation is traffic delivered into namespace Dst from namespace Src,
// which the topology gives no way to deliver.
type Violation struct {
	Src     string `json:"src_netns"`
	Dst     string `json:"dst_netns"`
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
	Flows   []Flow `json:"flows"`
}

// Unknown is the source of a violation whose address no namespace of the
// topology declares.
const Unknown = "unknown"

// Violations returns, per (source, destination) namespace pair, the flows
// delivered into a namespace, addressed to one of its declared addresses,
// from a source the model cannot deliver from. Transit traffic (a router
// forwarding) and multicast are not deliveries to the namespace and are
// left out. The agent exports the packet counts as
// nsflow_isolation_violation_packets_total.
func (m *Model) Violations(flows []Flow) []Violation {
	return m.violations(flows, m.Owners)
}

// Classifier judges one flow record of the datapath, seen in the namespace
// netns: whether it is a delivery the topology cannot make, and between
// which namespaces. It is the agent's Config.Isolation for a topology with
// intent (`nsflow agent --topology`, and the demo). holders names the
// namespaces that really hold an address the topology does not declare
// (nil: none), as verify's own evidence does: a rogue link with addresses
// of its own delivers to its namespace all the same.
func (m *Model) Classifier() func(k bpf.FlowKey, netns string, holders func(netip.Addr) []string) (src, dst string, violation bool) {
	return func(k bpf.FlowKey, netns string, holders func(netip.Addr) []string) (string, string, bool) {
		fl, ok := FlowFromBPF(k, bpf.FlowStats{Packets: 1}, netns)
		if !ok {
			return "", "", false
		}
		owners := m.Owners
		if holders != nil {
			owners = func(a netip.Addr) []string {
				if o := m.Owners(a); len(o) > 0 {
					return o
				}
				return holders(a)
			}
		}
		vs := m.violations([]Flow{fl}, owners)
		if len(vs) == 0 {
			return "", "", false
		}
		return vs[0].Src, vs[0].Dst, true
	}
}

// delivers reports whether the model delivers f from src: as a request,
// or as the reply to one that f's namespace sent src (src then knows the
// asker's address from its request, where the asker may answer no ARP or
// neighbour solicitation of its own: arp_ignore).
func (m *Model) delivers(src string, f Flow) bool {
	if got, _ := m.Deliver(src, f.Dst); got == f.Netns {
		return true
	}
	if to, _ := m.Deliver(f.Netns, f.Src); to != src {
		return false
	}
	back, _ := m.deliver(src, f.Dst, f.Netns)
	return back == f.Netns
}

func (m *Model) violations(flows []Flow, owners func(netip.Addr) []string) []Violation {
	byPair := map[[2]string]*Violation{}
	for _, f := range flows {
		if !slices.Contains(owners(f.Dst), f.Netns) || isLinkLocal6(f.Src) || !f.Src.IsValid() || f.Src.IsUnspecified() {
			continue
		}
		srcs := owners(f.Src)
		if slices.Contains(srcs, f.Netns) {
			continue // from itself (over a loop, or its own address)
		}
		if slices.ContainsFunc(srcs, func(s string) bool { return m.delivers(s, f) }) {
			continue
		}
		src := Unknown
		if len(srcs) > 0 {
			src = srcs[0]
		}
		k := [2]string{src, f.Netns}
		v := byPair[k]
		if v == nil {
			v = &Violation{Src: src, Dst: f.Netns}
			byPair[k] = v
		}
		v.Packets += f.Packets
		v.Bytes += f.Bytes
		v.Flows = append(v.Flows, f)
	}
	out := make([]Violation, 0, len(byPair))
	for _, v := range byPair {
		out = append(out, *v)
	}
	sortViolations(out)
	return out
}

func sortViolations(vs []Violation) {
	slices.SortFunc(vs, func(a, b Violation) int {
		return cmp.Or(cmp.Compare(a.Src, b.Src), cmp.Compare(a.Dst, b.Dst))
	})
}

// Evidence is what the eBPF datapath saw during the probes.
type Evidence struct {
	// Ports is the number of interfaces the programs were attached to.
	Ports int `json:"ports"`
	// Flows is the number of delivered flows read.
	Flows      int         `json:"flows"`
	Violations []Violation `json:"violations"`
	// Overflow counts flows the datapath could not record; non-zero means
	// the evidence is incomplete.
	Overflow uint64 `json:"overflow"`
}

// evidence attaches the datapath for the duration of the probes to every
// interface that is not a bridge port, in each namespace that holds an
// address: a delivery is a packet to one of the namespace's addresses, so
// the others (a namespace holding only bridge ports) can only see transit.
type evidence struct {
	e    *env
	dp   *bpf.Datapath
	atts []*bpf.Attachment
}

// attachWorkers attach at once: each tcx attach waits for an RCU grace
// period, and concurrent waits share one.
const attachWorkers = 32

func startEvidence(e *env) (*evidence, error) {
	dp, err := bpf.Load(bpf.Options{})
	if err != nil {
		return nil, fmt.Errorf("eBPF evidence (use --no-evidence on hosts without BPF): %w", err)
	}
	ev := &evidence{e: e, dp: dp}
	type target struct{ path, ifname string }
	var targets []target
	done := map[uint64]bool{} // two names for one namespace attach once
	for _, ns := range e.model.Namespaces {
		if done[e.cookies[ns]] || (len(e.observed[ns]) == 0 && len(e.model.Addresses(ns)) == 0) {
			continue
		}
		done[e.cookies[ns]] = true
		var links []netlink.Link
		err := withHandle(e.paths[ns], func(h *netlink.Handle) (err error) {
			links, err = h.LinkList()
			return err
		})
		if err != nil {
			ev.close()
			return nil, fmt.Errorf("namespace %s: links: %w", ns, err)
		}
		for _, l := range links {
			// A bridge port hands what is for the namespace to its
			// bridge, where it is seen: counting it on the port too
			// would count it twice.
			if l.Attrs().Name != "lo" && l.Attrs().MasterIndex == 0 {
				targets = append(targets, target{e.paths[ns], l.Attrs().Name})
			}
		}
	}
	ev.atts = make([]*bpf.Attachment, len(targets))
	errs := make([]error, len(targets))
	parallel(len(targets), func(i int) {
		ev.atts[i], errs[i] = dp.Attach(targets[i].path, targets[i].ifname)
	})
	if err := errors.Join(errs...); err != nil {
		ev.close()
		return nil, err
	}
	return ev, nil
}

// parallel runs fn(0..n-1) on up to attachWorkers goroutines.
func parallel(n int, fn func(i int)) {
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(n, attachWorkers) {
		wg.Go(func() {
			for i := range next {
				fn(i)
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
}

// close detaches everything, in parallel for the same reason as attach.
func (ev *evidence) close() {
	parallel(len(ev.atts), func(i int) {
		if ev.atts[i] != nil {
			ev.atts[i].Detach()
		}
	})
	ev.dp.Close()
}

func (ev *evidence) collect() (*Evidence, error) {
	var flows []Flow
	err := ev.dp.Flows(func(k bpf.FlowKey, s bpf.FlowStats) bool {
		if ns, ok := ev.e.names[k.NetnsCookie]; ok {
			if f, ok := FlowFromBPF(k, s, ns); ok {
				flows = append(flows, f)
			}
		}
		return true
	})
	if err != nil {
		return nil, fmt.Errorf("read flows: %w", err)
	}
	over, err := ev.dp.FlowOverflow()
	if err != nil {
		return nil, err
	}
	return &Evidence{Ports: len(ev.atts), Flows: len(flows), Violations: ev.e.model.violations(flows, ev.e.owners), Overflow: over}, nil
}

// owners attributes an address to namespaces, the likeliest sender first:
// those that declare it and hold it, then those that hold it without
// declaring it, then those that declare it but no longer hold it. So a
// packet from an address that moved is the new holder's, and a packet
// delivered to a namespace that took another's address counts as
// delivered there.
func (e *env) owners(a netip.Addr) []string {
	declared := e.model.Owners(a)
	var held, taken []string
	for _, ns := range e.model.Namespaces {
		if slices.Contains(e.observed[ns], a) {
			if slices.Contains(declared, ns) {
				held = append(held, ns)
			} else {
				taken = append(taken, ns)
			}
		}
	}
	out := append(held, taken...)
	for _, ns := range declared {
		if !slices.Contains(out, ns) {
			out = append(out, ns)
		}
	}
	return out
}

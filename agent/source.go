package agent

import (
	"slices"
	"strconv"
	"strings"

	"github.com/nsflow/nsflow/bpf"
	"github.com/nsflow/nsflow/collector"
)

var _ collector.Source = (*Agent)(nil)

// Ports implements collector.Source: the port table, named by the
// namespaces and links discovered, with the last counts of deleted ports
// (goneports.go) added under their labels; one sample per family with
// traffic.
func (a *Agent) Ports() ([]collector.PortSample, error) {
	// Until every namespace is set up, a label's kept counts would show
	// without its live port's, and the series would dip (after a restart).
	if !a.Ready() {
		return nil, errNotReady
	}
	a.mu.RLock()
	defer a.mu.RUnlock()
	if a.stopped {
		return nil, errStopped
	}
	ports, err := a.dp.Ports()
	if err != nil {
		return nil, err
	}
	byLabel := make(map[portLabel]bpf.PortStats, len(ports)+len(a.gonePorts))
	add := func(l portLabel, st *bpf.PortStats) {
		sum := byLabel[l]
		sum.Add(st)
		byLabel[l] = sum
	}
	for k, st := range ports {
		var label portLabel
		p := a.portStateLocked(k)
		lp, lingers := a.lingering[k]
		switch {
		case lingers && lp.unread:
			// Retired while its last counts could not be read: they
			// stay under its last labels until read, also when a port
			// is attached at its index meanwhile (retryUnreadLocked).
			label, p = lp.label, lp.p
		case p != nil:
			label = portLabel{a.byCookie[k.NetnsCookie].label, p.link.Name}
		case lingers:
			// Gone from its namespace while its detach failed: its
			// series stays.
			label, p = lp.label, lp.p
		default:
			continue
		}
		base := a.baseLocked(k, p, &st)
		subStats(&st, &base)
		add(label, &st)
	}
	for l, g := range a.gonePorts {
		add(l, &g.stats)
	}
	out := make([]collector.PortSample, 0, len(byLabel))
	for l, st := range byLabel {
		for _, f := range bpf.Families {
			rx, tx := st.Family(bpf.Ingress, f), st.Family(bpf.Egress, f)
			if rx.Packets == 0 && tx.Packets == 0 {
				continue
			}
			out = append(out, collector.PortSample{Netns: l.netns, Interface: l.ifname, Family: f.String(),
				ReceiveBytes: rx.Bytes, ReceivePackets: rx.Packets, TransmitBytes: tx.Bytes, TransmitPackets: tx.Packets})
		}
	}
	return out, nil
}

// Namespaces implements collector.Source.
func (a *Agent) Namespaces() []collector.NetnsInfo {
	a.mu.RLock()
	defer a.mu.RUnlock()
	out := make([]collector.NetnsInfo, 0, len(a.byInode))
	for _, s := range a.byInode {
		// A pid without a command exited after the scan found it.
		var pids, comms []string
		for i, p := range s.ns.Pids {
			if i < len(s.ns.Comms) && s.ns.Comms[i] != "" {
				pids, comms = append(pids, strconv.Itoa(p)), append(comms, s.ns.Comms[i])
			}
		}
		out = append(out, collector.NetnsInfo{Netns: s.label, Inode: strconv.FormatUint(s.ns.Inode, 10),
			Path: s.ns.Path, Pids: strings.Join(pids, ","), Comm: strings.Join(slices.Compact(comms), ",")})
	}
	return out
}

// Self implements collector.Source.
func (a *Agent) Self() collector.SelfSample {
	a.mu.RLock()
	defer a.mu.RUnlock()
	s := collector.SelfSample{AttachedPrograms: map[string]int{}, AttachErrors: a.attachErr.Load(),
		DiscoveryEvents: make(map[collector.DiscoveryKey]uint64, len(a.events))}
	for _, ns := range a.byInode {
		for _, p := range ns.links {
			if p.att != nil {
				s.AttachedPrograms[string(p.att.Mode)]++
			}
		}
	}
	for k, v := range a.events {
		s.DiscoveryEvents[k] = v
	}
	return s
}

// CollectorOptions returns the collector options matching the agent's
// configuration (the isolation collector when Isolation is set).
func (a *Agent) CollectorOptions() collector.Options {
	var o collector.Options
	if a.cfg.Isolation != nil {
		o.Violations = a.Violations
	}
	return o
}

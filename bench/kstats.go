package bench

import (
	"fmt"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/nsflow/nsflow/internal/nsenter"
)

// linkCounters is an interface's kernel statistics (rtnetlink
// IFLA_STATS64), the ground truth nsflow's counters are held to.
type linkCounters struct {
	RxPackets, RxBytes, RxDropped uint64
	TxPackets, TxBytes, TxDropped uint64
}

func (c linkCounters) sub(o linkCounters) linkCounters {
	return linkCounters{
		c.RxPackets - o.RxPackets, c.RxBytes - o.RxBytes, c.RxDropped - o.RxDropped,
		c.TxPackets - o.TxPackets, c.TxBytes - o.TxBytes, c.TxDropped - o.TxDropped,
	}
}

// kernelReader reads interface statistics through one netlink handle per
// namespace, opened once per run.
type kernelReader struct {
	handles map[string]*netlink.Handle
	links   map[Iface]int // ifindex, resolved once
}

func newKernelReader() *kernelReader {
	return &kernelReader{handles: map[string]*netlink.Handle{}, links: map[Iface]int{}}
}

func (k *kernelReader) handle(nsPath string) (*netlink.Handle, error) {
	if h, ok := k.handles[nsPath]; ok {
		return h, nil
	}
	var h *netlink.Handle
	var err error
	if nsPath == "" {
		h, err = netlink.NewHandle()
	} else {
		var ns netns.NsHandle
		ns, err = netns.GetFromPath(nsPath)
		if err != nil {
			return nil, err
		}
		defer ns.Close()
		h, err = nsenter.NewHandle(ns)
	}
	if err != nil {
		return nil, err
	}
	k.handles[nsPath] = h
	return h, nil
}

func (k *kernelReader) read(i Iface) (linkCounters, error) {
	h, err := k.handle(i.netns)
	if err != nil {
		return linkCounters{}, fmt.Errorf("statistics of %s/%s: %w", i.Namespace, i.Name, err)
	}
	l, err := h.LinkByName(i.Name)
	if err != nil {
		return linkCounters{}, fmt.Errorf("statistics of %s/%s: %w", i.Namespace, i.Name, err)
	}
	k.links[i] = l.Attrs().Index
	s := l.Attrs().Statistics
	if s == nil {
		return linkCounters{}, fmt.Errorf("statistics of %s/%s: kernel sent none", i.Namespace, i.Name)
	}
	return linkCounters{s.RxPackets, s.RxBytes, s.RxDropped, s.TxPackets, s.TxBytes, s.TxDropped}, nil
}

func (k *kernelReader) readAll(ifs []Iface) (map[Iface]linkCounters, error) {
	out := make(map[Iface]linkCounters, len(ifs))
	for _, i := range ifs {
		c, err := k.read(i)
		if err != nil {
			return nil, err
		}
		out[i] = c
	}
	return out, nil
}

// close closes the handles; a later read opens them again. Each holds its
// namespace alive, so they are closed before the topology is taken down.
func (k *kernelReader) close() {
	for p, h := range k.handles {
		h.Close()
		delete(k.handles, p)
	}
	clear(k.links)
}

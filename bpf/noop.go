package bpf

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/nsflow/nsflow/internal/nsenter"
)

// Noop is a tc program that passes every packet on and does nothing
// else. Attached where nsflow's programs go, it costs what the hook itself
// costs, which no tc program avoids: a benchmark that measures it beside
// nsflow splits nsflow's overhead into the hook's share and its own.
type Noop struct {
	prog *ebpf.Program
}

// LoadNoop loads the no-op program. Close it when done.
func LoadNoop() (*Noop, error) {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "nsflow_noop",
		Type:         ebpf.SchedCLS,
		License:      "Dual BSD/GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, -1), asm.Return()}, // TCX_NEXT
	})
	if err != nil {
		return nil, fmt.Errorf("bpf: load no-op program: %w", err)
	}
	return &Noop{prog: prog}, nil
}

// Attach attaches the no-op at the head of ingress and egress of ifname
// in the network namespace at netnsPath ("" = current), as Attach does
// nsflow's programs, and returns what detaches it. It needs tcx (Linux
// 6.6): on the tc path a comparison would also measure the qdisc's cost.
func (n *Noop) Attach(netnsPath, ifname string) (detach func() error, err error) {
	var links []link.Link
	closeAll := func() error {
		var errs []error
		for _, l := range links {
			errs = append(errs, l.Close())
		}
		links = nil
		return errors.Join(errs...)
	}
	err = nsenter.Do(netnsPath, func() error {
		l, err := netlink.LinkByName(ifname)
		if err != nil {
			return fmt.Errorf("find interface: %w", err)
		}
		for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
			tl, err := link.AttachTCX(link.TCXOptions{
				Interface: l.Attrs().Index, Program: n.prog, Attach: at, Anchor: link.Head(),
			})
			if err != nil {
				return fmt.Errorf("tcx %s: %w", at, err)
			}
			links = append(links, tl)
		}
		return nil
	})
	if err != nil {
		_ = closeAll()
		return nil, fmt.Errorf("bpf: attach no-op to %s: %w", ifname, err)
	}
	return closeAll, nil
}

// Close unloads the program; links still attached keep it until closed.
func (n *Noop) Close() error { return n.prog.Close() }

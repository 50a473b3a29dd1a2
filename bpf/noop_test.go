package bpf

import (
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
)

// tcxProgs lists the programs on the end's tcx hooks, ingress then egress.
func tcxProgs(t testing.TB, e *end) (ids [2][]ebpf.ProgramID) {
	t.Helper()
	e.NS.do(t, func() error {
		l, err := netlink.LinkByName(e.Ifname)
		if err != nil {
			return err
		}
		for i, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
			res, err := link.QueryPrograms(link.QueryOptions{Target: l.Attrs().Index, Attach: at})
			if err != nil {
				return err
			}
			for _, p := range res.Programs {
				ids[i] = append(ids[i], p.ID)
			}
		}
		return nil
	})
	return ids
}

// TestNoop: the no-op sits on both hooks of the interface it is attached
// to, passes every packet on, and leaves nothing when detached.
func TestNoop(t *testing.T) {
	n, err := LoadNoop()
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	info, err := n.prog.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, _ := info.ID()
	a, b := newTestNS(t), newTestNS(t)
	ea, eb := vethPair(t, a, b, 12)

	detach, err := n.Attach(ea.NS.Path, ea.Ifname)
	if err != nil {
		t.Fatal(err)
	}
	if got := tcxProgs(t, ea); len(got[0]) != 1 || got[0][0] != id || len(got[1]) != 1 || got[1][0] != id {
		t.Fatalf("tcx programs (ingress, egress) = %v, want the no-op (%d) on each", got, id)
	}
	const sent = 50
	if got := sendUDP(t, ea, eb, 4012, sent); got != sent {
		t.Errorf("received %d of %d datagrams with the no-op on the sender", got, sent)
	}
	if got := sendUDP(t, eb, ea, 4012, sent); got != sent {
		t.Errorf("received %d of %d datagrams with the no-op on the receiver", got, sent)
	}
	if err := detach(); err != nil {
		t.Fatal(err)
	}
	if got := tcxProgs(t, ea); len(got[0]) != 0 || len(got[1]) != 0 {
		t.Errorf("tcx programs left after detach: %v", got)
	}
	checkNoTC(t, ea)

	if _, err := n.Attach(ea.NS.Path, "nsf-missing0"); err == nil ||
		!strings.Contains(err.Error(), "nsf-missing0") {
		t.Errorf("attach to a missing interface: %v, want an error naming it", err)
	}
}

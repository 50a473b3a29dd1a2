package bpf

import (
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Another tool's program on the same port keeps running, with its
// verdict, while nsflow is attached and after it detaches; nsflow still
// sees the packets that program drops.
func TestCoexistence(t *testing.T) {
	const tcActShot = 2 // also TCX_DROP
	for _, mode := range []AttachMode{ModeTCX, ModeTC} {
		t.Run(string(mode), func(t *testing.T) {
			d := loadForTest(t, Options{ForceMode: mode})
			a, b := newTestNS(t), newTestNS(t)
			ea, eb := vethPair(t, a, b, 3)
			other := newOtherProg(t, tcActShot)

			// The other program is attached first, on eb's ingress.
			var otherFilter *netlink.BpfFilter
			switch mode {
			case ModeTCX:
				eb.NS.do(t, func() error {
					idx := mustIndex(eb.Ifname)
					l, err := link.AttachTCX(link.TCXOptions{Interface: idx, Program: other.prog, Attach: ebpf.AttachTCXIngress})
					if err != nil {
						return err
					}
					t.Cleanup(func() { l.Close() })
					return nil
				})
			case ModeTC:
				eb.NS.do(t, func() error {
					l, err := netlink.LinkByName(eb.Ifname)
					if err != nil {
						return err
					}
					q := &netlink.GenericQdisc{
						QdiscAttrs: netlink.QdiscAttrs{LinkIndex: l.Attrs().Index, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
						QdiscType:  "clsact",
					}
					if err := netlink.QdiscAdd(q); err != nil {
						return err
					}
					otherFilter = &netlink.BpfFilter{
						FilterAttrs: netlink.FilterAttrs{LinkIndex: l.Attrs().Index, Parent: netlink.HANDLE_MIN_INGRESS,
							Handle: 1, Priority: 10, Protocol: unix.ETH_P_ALL},
						Fd: other.prog.FD(), Name: "other", DirectAction: true,
					}
					return netlink.FilterAdd(otherFilter)
				})
			}

			att, err := d.Attach(eb.NS.Path, eb.Ifname)
			if err != nil {
				t.Fatal(err)
			}
			if att.Mode != mode {
				t.Fatalf("attached with %q, want %q", att.Mode, mode)
			}
			const n = 50
			if got := sendUDP(t, ea, eb, 5000, n); got != 0 {
				t.Errorf("with nsflow attached, %d datagrams got past the other program's drop", got)
			}
			if c := other.count(t); c != n {
				t.Errorf("other program ran %d times, want %d", c, n)
			}
			s, _, err := d.Port(att.Key())
			if err != nil {
				t.Fatal(err)
			}
			if c := s.Get(Ingress, IPv4, UDP); c.Packets != n {
				t.Errorf("nsflow saw %d of the %d dropped datagrams", c.Packets, n)
			}

			if err := att.Detach(); err != nil {
				t.Fatal(err)
			}
			if got := sendUDP(t, ea, eb, 5001, n); got != 0 {
				t.Errorf("after nsflow detached, %d datagrams got past the other program's drop", got)
			}
			if c := other.count(t); c != 2*n {
				t.Errorf("other program ran %d times, want %d", c, 2*n)
			}
			if mode == ModeTC {
				// Our filter is gone; the other's filter and the qdisc stay.
				eb.NS.do(t, func() error {
					l, err := netlink.LinkByName(eb.Ifname)
					if err != nil {
						return err
					}
					fs, err := netlink.FilterList(l, netlink.HANDLE_MIN_INGRESS)
					if err != nil {
						return err
					}
					if len(fs) != 1 || fs[0].Attrs().Priority != 10 {
						t.Errorf("filters after detach: %+v, want only the other's", fs)
					}
					return nil
				})
			}
		})
	}
}

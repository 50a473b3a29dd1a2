package bpf

import (
	"net"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// otherProg is "another tool's" tc program: it counts its runs in a map
// and returns a fixed verdict.
type otherProg struct {
	prog *ebpf.Program
	runs *ebpf.Map
}

func newOtherProg(t testing.TB, verdict int32) *otherProg {
	t.Helper()
	runs, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { runs.Close() })
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:    ebpf.SchedCLS,
		License: "GPL",
		Instructions: asm.Instructions{
			asm.StoreImm(asm.RFP, -4, 0, asm.Word),
			asm.Mov.Reg(asm.R2, asm.RFP),
			asm.Add.Imm(asm.R2, -4),
			asm.LoadMapPtr(asm.R1, runs.FD()),
			asm.FnMapLookupElem.Call(),
			asm.JEq.Imm(asm.R0, 0, "out"),
			asm.Mov.Imm(asm.R1, 1),
			asm.StoreXAdd(asm.R0, asm.R1, asm.DWord),
			asm.Mov.Imm(asm.R0, verdict).WithSymbol("out"),
			asm.Return(),
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { prog.Close() })
	return &otherProg{prog: prog, runs: runs}
}

func (o *otherProg) count(t testing.TB) uint64 {
	t.Helper()
	var n uint64
	if err := o.runs.Lookup(uint32(0), &n); err != nil {
		t.Fatal(err)
	}
	return n
}

// noopProg is the no-op program (LoadNoop): the floor the benchmarks
// compare with.
func noopProg(t testing.TB) *ebpf.Program {
	t.Helper()
	n, err := LoadNoop()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n.prog
}

// sendUDP sends count datagrams from src to dst without waiting for
// them, and returns how many a socket on dst received within a short wait.
func sendUDP(t testing.TB, src, dst *end, port, count int) int {
	t.Helper()
	var rx *net.UDPConn
	dst.NS.do(t, func() (err error) {
		rx, err = net.ListenUDP("udp4", &net.UDPAddr{IP: dst.IP, Port: port})
		return err
	})
	defer rx.Close()
	var tx *net.UDPConn
	src.NS.do(t, func() (err error) {
		tx, err = net.DialUDP("udp4", &net.UDPAddr{IP: src.IP}, &net.UDPAddr{IP: dst.IP, Port: port})
		return err
	})
	defer tx.Close()
	for range count {
		if _, err := tx.Write(make([]byte, 64)); err != nil {
			t.Fatal(err)
		}
	}
	got := 0
	buf := make([]byte, 2048)
	for {
		_ = rx.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		if _, err := rx.Read(buf); err != nil {
			return got
		}
		got++
	}
}

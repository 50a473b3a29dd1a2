package bpf

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// A contender is a set of programs the throughput benchmarks attach to
// both ends of a veth pair in turn: nsflow, a no-op, or a variant.
type contender struct {
	name   string
	attach func() (detach func())
	// runStats is the programs' run count and run time, in ns, while
	// BPF statistics are enabled.
	runStats func() (runs, ns uint64)
}

// datapathContender attaches d on every end.
func datapathContender(b *testing.B, name string, d *Datapath, ends ...*end) contender {
	return contender{
		name: name,
		attach: func() func() {
			var atts []*Attachment
			for _, e := range ends {
				att, err := d.Attach(e.NS.Path, e.Ifname)
				if err != nil {
					b.Fatal(err)
				}
				atts = append(atts, att)
			}
			return func() {
				for _, att := range atts {
					if err := att.Detach(); err != nil {
						b.Fatal(err)
					}
				}
			}
		},
		runStats: func() (uint64, uint64) {
			runs, ns, err := d.RunStats()
			if err != nil {
				b.Fatal(err)
			}
			return runs, ns
		},
	}
}

// noopContender attaches noopProg at tcx ingress and egress of every end:
// what any tc program on the path costs, so that a ratio splits into the
// hook's cost and nsflow's own.
func noopContender(b *testing.B, ends ...*end) contender {
	noop := noopProg(b)
	return contender{
		name: "noop",
		attach: func() func() {
			var ls []link.Link
			for _, e := range ends {
				for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
					e.NS.do(b, func() error {
						l, err := link.AttachTCX(link.TCXOptions{Interface: mustIndex(e.Ifname), Program: noop, Attach: at})
						if err != nil {
							return err
						}
						ls = append(ls, l)
						return nil
					})
				}
			}
			return func() {
				for _, l := range ls {
					if err := l.Close(); err != nil {
						b.Fatal(err)
					}
				}
			}
		},
		runStats: func() (uint64, uint64) {
			s, err := noop.Stats()
			if err != nil {
				b.Fatal(err)
			}
			return s.RunCount, uint64(s.Runtime.Nanoseconds())
		},
	}
}

// variantContenders loads the objects NSFLOW_BENCH_VARIANT names (comma
// separated; variants of nsflow.c compiled with the flags of `make
// generate`), each as a datapath of its own, named by its file.
func variantContenders(b *testing.B, ends ...*end) []contender {
	var cs []contender
	for _, path := range strings.Split(os.Getenv("NSFLOW_BENCH_VARIANT"), ",") {
		if path == "" {
			continue
		}
		obj, err := os.ReadFile(path)
		if err != nil {
			b.Fatal(err)
		}
		variantObject = obj
		d := loadForTest(b, Options{})
		variantObject = nil
		cs = append(cs, datapathContender(b, filepath.Base(path), d, ends...))
	}
	return cs
}

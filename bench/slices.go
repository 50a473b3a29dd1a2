package bench

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/nsflow/nsflow/traffic"
)

// SliceLength is the length of one slice of the overhead measurement:
// long enough for tens of thousands of packets, short enough that the
// machine's speed hardly drifts between neighbouring slices.
const SliceLength = 333 * time.Millisecond

// settleTime passes between an attach or detach and the slice after it:
// tcx link changes and their RCU grace periods slow the stream for a
// moment, and counted in the next slice that moment falls on one mode
// only (a no-op program's slices came out 1-2% faster than bare ones).
const settleTime = 50 * time.Millisecond

// sliceRatio measures a case's overhead under one continuous run of the
// generator, in slices that alternate uninstrumented and instrumented:
// off, on, off, on, ..., off. Each instrumented slice is divided by the
// mean of the two uninstrumented slices around it, which cancels a drift
// of the machine's speed that separate samples seconds apart would keep.
// Throughput is what the servers' interfaces received, from the kernel's
// statistics; attaching and detaching happen between slices, each
// slice starting settleTime after them.
//
// With --hook-cost the instrumented slices alternate with as many of a
// no-op program on the same hooks (off, on, off, no-op, off, on, ...),
// and hook is their ratio: what any tc program costs there.
func (r *runner) sliceRatio(ctx context.Context, proto traffic.Proto, pairs []pair) (sr SliceRatio, hook *SliceRatio, err error) {
	if err := r.in.detach(); err != nil {
		return SliceRatio{}, nil, err
	}
	var runs []*traffic.Run
	defer func() {
		for _, run := range runs {
			if _, serr := run.Stop(); serr != nil && ctx.Err() == nil {
				err = errors.Join(err, serr)
			}
		}
		err = errors.Join(err, r.in.detach())
	}()
	for _, p := range pairs {
		run, err := traffic.Start(ctx, traffic.Flow{
			Proto: proto, ClientNetns: p.client.netns, ServerNetns: p.server.netns,
			Server: netip.AddrPortFrom(p.serverAddr, 0), Streams: r.cfg.Streams, Size: p.size,
		})
		if err != nil {
			return SliceRatio{}, nil, fmt.Errorf("%s: %w", p, err)
		}
		runs = append(runs, run)
	}

	servers := make([]Iface, len(pairs))
	for i, p := range pairs {
		servers[i] = p.server
	}
	received := func() (uint64, error) {
		var n uint64
		for _, s := range servers {
			c, err := r.kr.read(s)
			if err != nil {
				return 0, err
			}
			n += c.RxBytes
		}
		return n, nil
	}
	rate := func() (float64, error) {
		if err := sleep(ctx, settleTime); err != nil {
			return 0, err
		}
		b0, err := received()
		if err != nil {
			return 0, err
		}
		t0 := time.Now()
		if err := sleep(ctx, SliceLength); err != nil {
			return 0, err
		}
		b1, err := received()
		if err != nil {
			return 0, err
		}
		return float64(b1-b0) / time.Since(t0).Seconds(), nil
	}

	// Past the generator's start: connections, TCP's slow start.
	if err := sleep(ctx, SliceLength); err != nil {
		return SliceRatio{}, nil, err
	}
	ifs := pathIfaces(pairs)
	modes := []func([]Iface) error{r.in.attach}
	if r.cfg.HookCost {
		if err := hookComparable(r.in.mode); err != nil {
			return SliceRatio{}, nil, err
		}
		modes = append(modes, r.in.attachNoop)
	}
	n := r.cfg.Slices * len(modes)
	off := make([]float64, 0, n+1)
	on := make([]float64, 0, n) // slice i in mode i % len(modes)
	for i := range n {
		x, err := rate()
		if err != nil {
			return SliceRatio{}, nil, err
		}
		off = append(off, x)
		if err := modes[i%len(modes)](ifs); err != nil {
			return SliceRatio{}, nil, err
		}
		if x, err = rate(); err != nil {
			return SliceRatio{}, nil, err
		}
		on = append(on, x)
		if err := r.in.detach(); err != nil {
			return SliceRatio{}, nil, err
		}
	}
	x, err := rate()
	if err != nil {
		return SliceRatio{}, nil, err
	}
	off = append(off, x)
	sr = bracketed(off, on, 0, len(modes))
	if r.cfg.HookCost {
		h := bracketed(off, on, 1, len(modes))
		hook = &h
	}
	return sr, hook, nil
}

// bracketed summarizes on[i] / mean(off[i], off[i+1]) for the slices i of
// one mode (i % modes == mode); off has one more slice than on. Slices in
// which nothing arrived are left out.
func bracketed(off, on []float64, mode, modes int) SliceRatio {
	var sr SliceRatio
	for i := mode; i < len(on); i += modes {
		if base := (off[i] + off[i+1]) / 2; base > 0 {
			sr.Ratios = append(sr.Ratios, on[i]/base)
		}
	}
	if len(sr.Ratios) == 0 {
		return sr
	}
	s := slices.Clone(sr.Ratios)
	slices.Sort(s)
	sr.Median, sr.Q25, sr.Q75 = median(s), s[len(s)/4], s[3*len(s)/4]
	return sr
}

// sleep waits for d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

package bench

import (
	"errors"
	"fmt"

	"github.com/nsflow/nsflow/bpf"
)

// instrument is nsflow's datapath as bench uses it: loaded once, without
// pinning (its maps are private to this run, so a running agent is not
// disturbed), attached for instrumented samples and detached for the
// uninstrumented ones.
type instrument struct {
	dp   *bpf.Datapath
	atts map[Iface]*bpf.Attachment
	keys map[Iface]bpf.PortKey
	mode bpf.AttachMode // of the last attachment: tcx, or tc on older kernels

	// noop, loaded for --hook-cost, goes on the same hooks as the
	// datapath in slices of its own; noopAtts detach it.
	noop     *bpf.Noop
	noopAtts map[Iface]func() error
}

func loadInstrument() (*instrument, error) {
	dp, err := bpf.Load(bpf.Options{})
	if err != nil {
		return nil, fmt.Errorf("load the datapath: %w", err)
	}
	return &instrument{dp: dp, atts: map[Iface]*bpf.Attachment{}, keys: map[Iface]bpf.PortKey{}}, nil
}

func (in *instrument) attach(ifs []Iface) error {
	for _, i := range ifs {
		if _, ok := in.atts[i]; ok {
			continue
		}
		a, err := in.dp.Attach(i.netns, i.Name)
		if err != nil {
			return fmt.Errorf("attach to %s/%s: %w", i.Namespace, i.Name, err)
		}
		in.atts[i] = a
		in.keys[i] = a.Key()
		in.mode = a.Mode
	}
	return nil
}

// attachNoop attaches the no-op program where attach puts the datapath.
func (in *instrument) attachNoop(ifs []Iface) error {
	if in.noop == nil {
		n, err := bpf.LoadNoop()
		if err != nil {
			return err
		}
		in.noop, in.noopAtts = n, map[Iface]func() error{}
	}
	for _, i := range ifs {
		if _, ok := in.noopAtts[i]; ok {
			continue
		}
		detach, err := in.noop.Attach(i.netns, i.Name)
		if err != nil {
			return fmt.Errorf("attach the no-op to %s/%s: %w", i.Namespace, i.Name, err)
		}
		in.noopAtts[i] = detach
	}
	return nil
}

// detach removes the datapath and the no-op from every interface.
func (in *instrument) detach() error {
	var errs []error
	for i, a := range in.atts {
		if err := a.Detach(); err != nil {
			errs = append(errs, fmt.Errorf("detach from %s/%s: %w", i.Namespace, i.Name, err))
		}
		delete(in.atts, i)
	}
	for i, detach := range in.noopAtts {
		if err := detach(); err != nil {
			errs = append(errs, fmt.Errorf("detach the no-op from %s/%s: %w", i.Namespace, i.Name, err))
		}
		delete(in.noopAtts, i)
	}
	return errors.Join(errs...)
}

// ports returns nsflow's counters for the interfaces it was attached to;
// an interface that has seen nothing yet has zero counters.
func (in *instrument) ports(ifs []Iface) (map[Iface]bpf.PortStats, error) {
	all, err := in.dp.Ports()
	if err != nil {
		return nil, err
	}
	out := make(map[Iface]bpf.PortStats, len(ifs))
	for _, i := range ifs {
		if k, ok := in.keys[i]; ok {
			out[i] = all[k]
		}
	}
	return out, nil
}

type runStats struct{ count, ns uint64 }

// withRunStats runs fn with the kernel's BPF run-time statistics on. They
// cost some ns per program run, so only the cost sample pays for them,
// not the samples the overhead ratio is computed from.
func (in *instrument) withRunStats(fn func() error) error {
	st, err := in.dp.EnableRunStats()
	if err != nil {
		return err
	}
	return errors.Join(fn(), st.Close())
}

func (in *instrument) runStats() (runStats, error) {
	c, ns, err := in.dp.RunStats()
	return runStats{c, ns}, err
}

func (in *instrument) close() error {
	err := in.detach()
	if in.noop != nil {
		err = errors.Join(err, in.noop.Close())
	}
	return errors.Join(err, in.dp.Close())
}

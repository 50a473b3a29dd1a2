package bpf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
)

// pinLayout is the version of what the pinned tables hold: the layout and
// meaning of their entries, and where the programs look entries up
// (port_slot_index and flow_cache_index in nsflow.c). Bump it with any
// such change that keeps the tables' sizes (a change of size is found
// without it): Load then replaces the pins of another layout, counters and
// all, rather than misread them. Pins made before the stamp existed are
// layout 1. Layout 2: flow cache entries carry their port's counts to
// its slot (port_counter, port_claim), and slot lines have a claim.
const pinLayout = 2

// layoutPinName is the stamp's pin: a one-entry array holding the layout
// of the tables pinned beside it.
const layoutPinName = "nsflow_layout"

// pinnedLayout returns the layout of the tables pinned under dir.
func pinnedLayout(dir string) (uint32, error) {
	path := filepath.Join(dir, layoutPinName)
	m, err := ebpf.LoadPinnedMap(path, nil)
	if errors.Is(err, os.ErrNotExist) {
		return 1, nil
	}
	if err != nil {
		return 0, fmt.Errorf("open pin %s: %w", path, err)
	}
	defer m.Close()
	var v uint32
	if err := m.Lookup(uint32(0), &v); err != nil {
		return 0, fmt.Errorf("read pin %s: %w", path, err)
	}
	return v, nil
}

// stampLayout records under dir that its tables are of pinLayout.
func stampLayout(dir string) error {
	m, err := ebpf.NewMapWithOptions(&ebpf.MapSpec{
		Name: layoutPinName, Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1, Pinning: ebpf.PinByName,
	}, ebpf.MapOptions{PinPath: dir})
	if err != nil {
		return fmt.Errorf("pin %s: %w", filepath.Join(dir, layoutPinName), err)
	}
	defer m.Close()
	if err := m.Update(uint32(0), uint32(pinLayout), ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write pin %s: %w", filepath.Join(dir, layoutPinName), err)
	}
	return nil
}

// removeOtherLayout removes the tables pinned under dir when they are of
// another layout than pinLayout, and returns their names.
func removeOtherLayout(dir string) ([]string, error) {
	v, err := pinnedLayout(dir)
	if err != nil || v == pinLayout {
		return nil, err
	}
	var removed []string
	for _, name := range mapNames {
		err := os.Remove(filepath.Join(dir, name))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return removed, fmt.Errorf("remove pin of layout %d: %w", v, err)
		}
		removed = append(removed, name)
	}
	return removed, nil
}

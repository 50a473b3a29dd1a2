package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
)

// cpuTable is one of nsflow.c's per-CPU tables: a plain BPF array laid out
// CPU-major, CPU c's entry i at c*n+i, which the program reaches without
// the per-CPU pointer load of a per-CPU array.
type cpuTable[T any] struct {
	m    *ebpf.Map
	n    uint32 // entries per CPU
	cpus uint32
	// mem is the table mapped into memory (the maps are mmapable), where
	// that worked: get reads it without a system call per CPU.
	mem *ebpf.Memory
}

// mapped returns t reading its entries from memory where the kernel lets
// the map be mapped, else t as it is.
func (t cpuTable[T]) mapped() cpuTable[T] {
	if mem, err := t.m.Memory(); err == nil {
		t.mem = mem
	}
	return t
}

// get returns entry i of every CPU. From memory it costs no system call,
// so that a reader that must see no write-back between two reads of a
// record (rereadFlow) has a window as short as the two reads, whatever
// the number of CPUs.
func (t cpuTable[T]) get(i uint32) ([]T, error) {
	vs := make([]T, t.cpus)
	if t.mem != nil {
		size := (binary.Size(vs[0]) + 7) &^ 7 // an array's elements are 8-byte aligned
		buf := make([]byte, size)
		for c := range t.cpus {
			if _, err := t.mem.ReadAt(buf, int64(c*t.n+i)*int64(size)); err != nil {
				return nil, err
			}
			if _, err := binary.Decode(buf, binary.NativeEndian, &vs[c]); err != nil {
				return nil, err
			}
		}
		return vs, nil
	}
	for c := range t.cpus {
		if err := t.m.Lookup(c*t.n+i, &vs[c]); err != nil {
			return nil, err
		}
	}
	return vs, nil
}

// put writes entry i of every CPU.
func (t cpuTable[T]) put(i uint32, vs []T) error {
	for c := range t.cpus {
		if err := t.m.Update(c*t.n+i, &vs[c], ebpf.UpdateExist); err != nil {
			return err
		}
	}
	return nil
}

// all returns the whole table as [entry][CPU], read in batches.
func (t cpuTable[T]) all() ([][]T, error) {
	total := int(t.n * t.cpus)
	keys := make([]uint32, total)
	vals := make([]T, total)
	var cursor ebpf.MapBatchCursor
	for got := 0; got < total; {
		n, err := t.m.BatchLookup(&cursor, keys[got:], vals[got:], nil)
		got += n
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			if got != total {
				return nil, fmt.Errorf("read %d of %d entries", got, total)
			}
			break
		}
		if err != nil {
			return nil, err
		}
	}
	out := make([][]T, t.n)
	for i := range out {
		out[i] = make([]T, t.cpus)
	}
	for j, k := range keys {
		out[k%t.n][k/t.n] = vals[j]
	}
	return out, nil
}

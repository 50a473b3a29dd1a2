package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// cpuTable is one of nsflow.c's per-CPU tables: a plain BPF array laid out
// CPU-major, CPU c's entry i at c*n+i, which the program reaches without
// the per-CPU pointer load of a per-CPU array.
type cpuTable[T any] struct {
	m    *ebpf.Map
	n    uint32 // entries per CPU
	cpus uint32
	// mem is the table mapped into memory (the maps are mmapable), where
	// that worked and T's layout is the map's (hostLayout): get reads it
	// without a system call per CPU.
	mem *mapping
}

// mapping is a shared mapping of a map's values, which Close unmaps: a
// mapping holds its map, which would outlive Close otherwise.
type mapping struct {
	mu       sync.RWMutex
	b        []byte // nil once unmapped
	writable bool   // for add32 and zero32; nothing else writes through it
}

// mapped returns t reading its entries from memory where the kernel lets
// the map be mapped (writable if it may be), else t as it is.
func (t cpuTable[T]) mapped() cpuTable[T] {
	if !hostLayout[T]() {
		return t
	}
	size := int(t.n*t.cpus) * t.stride()
	if b, err := unix.Mmap(t.m.FD(), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err == nil {
		t.mem = &mapping{b: b, writable: true}
	} else if b, err := unix.Mmap(t.m.FD(), 0, size, unix.PROT_READ, unix.MAP_SHARED); err == nil {
		t.mem = &mapping{b: b} // a frozen map, or one opened read-only
	}
	return t
}

// fence orders the plain loads before it (an entry's copy) before the
// loads after it (the seq words read again): an atomic read-modify-write
// is a full barrier, also on arm64, where an acquire load alone lets
// earlier loads complete after it.
func fence() { atomic.AddUint32(&fenceWord, 0) }

var fenceWord uint32

// stride is an entry's size in the array: values are 8-byte aligned.
func (t cpuTable[T]) stride() int {
	var v T
	return (binary.Size(v) + 7) &^ 7
}

// unmap releases the mapping; get then reads through the map.
func (t cpuTable[T]) unmap() error {
	if t.mem == nil {
		return nil
	}
	t.mem.mu.Lock()
	defer t.mem.mu.Unlock()
	if t.mem.b == nil {
		return nil
	}
	err := unix.Munmap(t.mem.b)
	t.mem.b = nil
	return err
}

// get returns entry i of every CPU. From memory it costs no system call,
// so that a reader that must see no write-back between two reads of a
// record (rereadFlow) has a window as short as the two reads, whatever
// the number of CPUs.
func (t cpuTable[T]) get(i uint32) ([]T, error) {
	vs := make([]T, t.cpus)
	if t.mem != nil {
		t.mem.mu.RLock()
		defer t.mem.mu.RUnlock()
		if b := t.mem.b; b != nil {
			size := t.stride()
			for c := range t.cpus {
				off := int(c*t.n+i) * size
				// A copy, not a decode: the window a reader must see no
				// write-back in is then as short as it can be.
				vs[c] = *(*T)(unsafe.Pointer(&b[off]))
			}
			return vs, nil
		}
	}
	for c := range t.cpus {
		if err := t.m.Lookup(c*t.n+i, &vs[c]); err != nil {
			return nil, err
		}
	}
	return vs, nil
}

// hostLayout reports whether T's Go layout is the map's: the generated
// types spell out their padding, so that their size is the C one, and the
// mapping is page-aligned with 8-byte-aligned entries.
func hostLayout[T any]() bool {
	var v T
	return uintptr(binary.Size(v)) == unsafe.Sizeof(v) && unsafe.Alignof(v) <= 8
}

// words calls fn with the 4-byte word at offset off of entry i on every
// CPU c (of every entry e, for i < 0), in memory, under the mapping's
// read lock; false when the table is not mapped (writable, for write).
// The programs write other words of the same entries meanwhile: an
// aligned word is written whole, so neither write tears the other.
func (t cpuTable[T]) words(i int, off uintptr, write bool, fn func(c, e int, w *uint32)) bool {
	if t.mem == nil || (write && !t.mem.writable) {
		return false
	}
	t.mem.mu.RLock()
	defer t.mem.mu.RUnlock()
	b := t.mem.b
	if b == nil {
		return false
	}
	size := t.stride()
	first, last := i, i
	if i < 0 {
		first, last = 0, int(t.n)-1
	}
	for c := range int(t.cpus) {
		for e := first; e <= last; e++ {
			fn(c, e, (*uint32)(unsafe.Pointer(&b[(c*int(t.n)+e)*size+int(off)])))
		}
	}
	return true
}

// words32 loads, atomically, the word at offset off of entry i on every
// CPU into out.
func (t cpuTable[T]) words32(i uint32, off uintptr, out []uint32) bool {
	return t.words(int(i), off, false, func(c, _ int, w *uint32) { out[c] = atomic.LoadUint32(w) })
}

// add32 adds delta, atomically, to the word at offset off of entry i (of
// every entry, for i < 0) on every CPU. It never takes a word below 0: a count another process
// zeroed (zero32 at its load) stays 0 rather than wrap.
func (t cpuTable[T]) add32(i int, off uintptr, delta int32) bool {
	return t.words(i, off, true, func(_, _ int, w *uint32) {
		for {
			old := atomic.LoadUint32(w)
			if delta < 0 && old < uint32(-delta) {
				return
			}
			if atomic.CompareAndSwapUint32(w, old, old+uint32(delta)) {
				return
			}
		}
	})
}

// zero32 sets the word at offset off of every entry to 0.
func (t cpuTable[T]) zero32(off uintptr) bool {
	return t.words(-1, off, true, func(_, _ int, w *uint32) { atomic.StoreUint32(w, 0) })
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

// all returns the whole table as [entry][CPU]: copied from memory where
// it is mapped (no system call, so that a reader's window between two
// reads of seq words is short), else read in batches.
func (t cpuTable[T]) all() ([][]T, error) {
	if out, ok := t.copyAll(); ok {
		return out, nil
	}
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

// copyAll is all from memory; false when the table is not mapped.
func (t cpuTable[T]) copyAll() ([][]T, bool) {
	if t.mem == nil {
		return nil, false
	}
	t.mem.mu.RLock()
	defer t.mem.mu.RUnlock()
	b := t.mem.b
	if b == nil {
		return nil, false
	}
	size := t.stride()
	out := make([][]T, t.n)
	for i := range out {
		out[i] = make([]T, t.cpus)
		for c := range t.cpus {
			out[i][c] = *(*T)(unsafe.Pointer(&b[int(c*t.n+uint32(i))*size]))
		}
	}
	return out, true
}

package bpf

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// DefaultMaxFlows is the flow table size when Options.MaxFlows is 0.
const DefaultMaxFlows = 65536

// DefaultMaxPorts is the port table size when Options.MaxPorts is 0.
const DefaultMaxPorts = 4096

// DefaultPinPath is where the agent pins the maps so that counters survive
// its restart.
const DefaultPinPath = "/sys/fs/bpf/nsflow"

// Options configure Load.
type Options struct {
	// PinPath, when set, pins the maps by name in this bpffs directory and
	// reuses maps already pinned there. "" means no pinning.
	PinPath string
	// MaxFlows bounds the flow table (0 = DefaultMaxFlows).
	MaxFlows uint32
	// MaxPorts bounds the port table (0 = DefaultMaxPorts).
	MaxPorts uint32
	// ForceMode attaches with this mode only: ModeTC forces the clsact
	// path (older kernels, tests); ModeTCX fails instead of falling back.
	// "" tries tcx and falls back to tc when the kernel lacks tcx.
	ForceMode AttachMode
}

// ErrClosed is what a Datapath's methods return once it is closed.
var ErrClosed = errors.New("datapath is closed")

// Datapath is the loaded programs and maps, shared by all attachments.
type Datapath struct {
	objs      nsflowObjects
	portSlots cpuTable[nsflowPortSlot]
	flowCache cpuTable[nsflowFlowCacheEntry]
	clock     *jiffyClock
	maxFlows  int
	forceMode AttachMode
	// PinsReset reports that pins under PinPath did not match this
	// version's maps and were replaced, so earlier counters were dropped:
	// those of the maps in PinsReplaced.
	PinsReset    bool
	PinsReplaced []string
	// FlowsCarried and FlowsLost count the records of a pinned flow table
	// of another size (MaxFlows changed) copied into the new one, and
	// those that did not fit.
	FlowsCarried, FlowsLost int
	// pinnedIDs are the IDs of the pinned tables, which identify a run's
	// pins: a tc filter of a run that died whose program uses any of them
	// counts into our tables (deadRunFilters). nil unpinned.
	pinnedIDs []ebpf.MapID

	// deadMu serializes finding and removing a dead run's tc filters with
	// attaching, which may put our filter in their place (same handle)
	// between a sweep's listing and its delete.
	deadMu sync.Mutex
	slotMu sync.Mutex // serializes claiming and freeing port slots
	// slotUsers counts, per port, its attachments and the attaches in
	// flight (under slotMu): a failed attach frees the slot it claimed
	// only when no other attach of the port uses it.
	slotUsers map[PortKey]int
	// slotFresh holds the ports whose slot an attach claimed while it was
	// the port's only user, and no attach of the port has completed since
	// (under slotMu): the last of their attaches to fail frees it,
	// whichever claimed it.
	slotFresh map[PortKey]bool
	lastClaim uint32     // the last id newClaim gave (under slotMu)
	genMu     sync.Mutex // serializes bumping the deletion generation
	genOwed   bool       // a bump failed (under genMu)
	mu        sync.Mutex
	attached  map[*Attachment]struct{}
	closed    bool
	// users counts the calls in flight that use the programs' and maps'
	// descriptors (under mu; see use); usersDone tells Close when the
	// last one is over.
	users     int
	usersDone sync.Cond
	attachSeq uint64 // the last Attachment.seq given (under mu)
}

// mapNames are the maps nsflow.c defines, which are also the pin names.
var mapNames = []string{
	nsflowMapNsflowPorts, nsflowMapNsflowPortSlots,
	nsflowMapNsflowFlows, nsflowMapNsflowFlowCache, nsflowMapNsflowGen,
	nsflowMapNsflowLoss,
}

// variantObject, when set (by benchmarks only), is an object built from
// a changed nsflow.c that Load uses instead of the embedded one, so that
// a variant runs with the same tables and attach path as nsflow.
var variantObject []byte

func loadSpec() (*ebpf.CollectionSpec, error) {
	if variantObject == nil {
		return loadNsflow()
	}
	return ebpf.LoadCollectionSpecFromReader(bytes.NewReader(variantObject))
}

// Load loads the programs and maps into the kernel once.
func Load(opts Options) (*Datapath, error) {
	switch opts.ForceMode {
	case "", ModeTCX, ModeTC:
	default:
		return nil, fmt.Errorf("bpf: unknown attach mode %q (want %q or %q)", opts.ForceMode, ModeTCX, ModeTC)
	}
	spec, err := loadSpec()
	if err != nil {
		return nil, err
	}
	maxFlows := opts.MaxFlows
	if maxFlows == 0 {
		maxFlows = DefaultMaxFlows
	}
	maxPorts := opts.MaxPorts
	if maxPorts == 0 {
		maxPorts = DefaultMaxPorts
	}
	spec.Maps[nsflowMapNsflowFlows].MaxEntries = maxFlows
	spec.Maps[nsflowMapNsflowPorts].MaxEntries = maxPorts
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		return nil, fmt.Errorf("bpf: %w", err)
	}
	spec.Maps[nsflowMapNsflowPortSlots].MaxEntries = portSlots * uint32(cpus)
	spec.Maps[nsflowMapNsflowFlowCache].MaxEntries = flowCacheSize * uint32(cpus)

	var copts ebpf.CollectionOptions
	var replaced []string // pins of another layout
	if opts.PinPath == "" {
		for _, m := range spec.Maps {
			m.Pinning = ebpf.PinNone
		}
	} else {
		if err := os.MkdirAll(opts.PinPath, 0o700); err != nil {
			return nil, fmt.Errorf("bpf: pin directory: %w", err)
		}
		// A resize killed between pinning the new table and renaming it
		// over the old one left it under the temporary name.
		if err := os.Remove(filepath.Join(opts.PinPath, nsflowMapNsflowFlows+resizingSuffix)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("bpf: remove an interrupted resize's pin: %w", err)
		}
		// Tables of another layout may have the sizes of ours: the stamp
		// tells them apart.
		if replaced, err = removeOtherLayout(opts.PinPath); err != nil {
			return nil, fmt.Errorf("bpf: %w", err)
		}
		if err := stampLayout(opts.PinPath); err != nil {
			return nil, fmt.Errorf("bpf: %w", err)
		}
		copts.Maps.PinPath = opts.PinPath
	}

	d := &Datapath{maxFlows: int(maxFlows), forceMode: opts.ForceMode, attached: map[*Attachment]struct{}{},
		slotUsers: map[PortKey]int{}, slotFresh: map[PortKey]bool{}}
	d.usersDone.L = &d.mu
	d.PinsReplaced, d.PinsReset = replaced, len(replaced) > 0
	if d.clock, err = newJiffyClock(); err != nil {
		return nil, err
	}
	err = spec.LoadAndAssign(&d.objs, &copts)
	if errors.Is(err, ebpf.ErrMapIncompatible) {
		// Pins left by another version or size: ours by name, so replace
		// those that do not fit rather than fail forever.
		var old *ebpf.Map
		replaced, old, err = replaceIncompatiblePins(spec, opts.PinPath)
		d.PinsReplaced = append(d.PinsReplaced, replaced...)
		d.PinsReset = len(d.PinsReplaced) > 0
		if old != nil {
			// The resized flow table is created unpinned; the old one
			// keeps its pin until its records are in the new one, so that
			// a failure (a size the kernel refuses, a kill) loses nothing.
			spec.Maps[nsflowMapNsflowFlows].Pinning = ebpf.PinNone
		}
		if err == nil {
			err = spec.LoadAndAssign(&d.objs, &copts)
		}
		if old != nil {
			if err == nil {
				d.FlowsCarried, d.FlowsLost, err = carryFlows(old, d.objs.NsflowFlows)
				if err == nil {
					err = repin(d.objs.NsflowFlows, filepath.Join(opts.PinPath, nsflowMapNsflowFlows))
				}
				if err != nil {
					d.objs.Close()
				}
			}
			old.Close()
		}
	}
	if err != nil {
		d.clock.Close()
		var verr *ebpf.VerifierError
		if errors.As(err, &verr) {
			return nil, fmt.Errorf("bpf: load: %+v", verr)
		}
		return nil, fmt.Errorf("bpf: load: %w", err)
	}
	if opts.PinPath != "" {
		// All of them: a table replaced (another layout) beside kept ones
		// leaves a dead run's programs counting into the kept ones.
		for _, m := range []*ebpf.Map{d.objs.NsflowPorts, d.objs.NsflowPortSlots, d.objs.NsflowFlows,
			d.objs.NsflowFlowCache, d.objs.NsflowGen, d.objs.NsflowLoss} {
			id, err := mapID(m)
			if err != nil {
				d.objs.Close()
				d.clock.Close()
				return nil, fmt.Errorf("bpf: %w", err)
			}
			d.pinnedIDs = append(d.pinnedIDs, id)
		}
	}
	d.portSlots = cpuTable[nsflowPortSlot]{m: d.objs.NsflowPortSlots, n: portSlots, cpus: uint32(cpus)}.mapped()
	d.flowCache = cpuTable[nsflowFlowCacheEntry]{m: d.objs.NsflowFlowCache, n: flowCacheSize, cpus: uint32(cpus)}.mapped()
	// A pinned cache may hold the holds of a reader that was killed
	// mid-read. Two processes must not use the same pins at once (the
	// agent locks its pin path); a hold another one still had would be
	// lost here, which costs its reader retries, never a count.
	d.flowCache.zero32(holdOffset)
	if opts.PinPath == "" {
		return d, nil
	}
	// Pinned tables carry an earlier run's state:
	//   - claims of port slots, above which this run's start (highestClaim);
	//   - perhaps a flow table new under a kept flow cache (resized,
	//     replaced, or its pin alone gone), whose entries then name records
	//     no longer there, or not yet: the generation moves on, so that
	//     each entry checks its record once.
	if d.lastClaim, err = d.highestClaim(); err != nil {
		err = fmt.Errorf("bpf: read port slot claims: %w", err)
	} else {
		err = d.bumpGenIf(false)
	}
	if err != nil {
		d.flowCache.unmap()
		d.portSlots.unmap()
		d.objs.Close()
		d.clock.Close()
		return nil, err
	}
	return d, nil
}

// RemovePins removes nsflow's map pins under path, and path itself when
// that leaves it empty. Other files there are left alone. A missing path is
// not an error.
func RemovePins(path string) error {
	if path == "" {
		return nil
	}
	if err := removeOwnPins(path); err != nil {
		return err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, unix.ENOTEMPTY) {
		return fmt.Errorf("bpf: remove pin directory: %w", err)
	}
	return nil
}

// replaceIncompatiblePins removes the pins under pinPath that spec cannot
// reuse, and keeps the rest (port counters do not depend on the flow
// table's size). A flow table that differs only in size is not lost: it
// is returned open, pin kept, for carryFlows and repin. The others are
// listed as replaced.
func replaceIncompatiblePins(spec *ebpf.CollectionSpec, pinPath string) (replaced []string, oldFlows *ebpf.Map, err error) {
	for _, name := range mapNames {
		path := filepath.Join(pinPath, name)
		m, err := ebpf.LoadPinnedMap(path, nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			// Not proof that the pin is not ours (too many open files, a
			// security module): keep it, and its counts.
			if oldFlows != nil {
				oldFlows.Close()
			}
			return nil, nil, fmt.Errorf("bpf: open pin %s: %w", path, err)
		}
		if spec.Maps[name].Compatible(m) == nil {
			m.Close()
			continue
		}
		ms := spec.Maps[name]
		if name == nsflowMapNsflowFlows && m.Type() == ms.Type &&
			m.KeySize() == ms.KeySize && m.ValueSize() == ms.ValueSize && m.Flags() == ms.Flags {
			oldFlows = m // resized
			continue
		}
		replaced = append(replaced, name)
		m.Close()
		if rerr := os.Remove(path); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
			if oldFlows != nil {
				oldFlows.Close()
			}
			return nil, nil, fmt.Errorf("bpf: remove incompatible pin %s: %w", name, rerr)
		}
	}
	return replaced, oldFlows, nil
}

// repin puts m at the pin path of the map it replaces: pinned under a
// temporary name, then renamed over the old pin, which bpffs does
// atomically, so that at every moment one of the two tables is pinned.
func repin(m *ebpf.Map, path string) error {
	tmp := path + resizingSuffix
	if err := os.Remove(tmp); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("bpf: remove a stale pin: %w", err)
	}
	if err := m.Pin(tmp); err != nil {
		return fmt.Errorf("bpf: pin the resized flow table: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("bpf: pin the resized flow table: %w", err)
	}
	return nil
}

// resizingSuffix names the pin of a resized flow table until it replaces
// the old one (repin); RemovePins removes it too.
const resizingSuffix = "_resizing" // bpffs refuses dots in names

// mapID is the kernel's ID of m.
func mapID(m *ebpf.Map) (ebpf.MapID, error) {
	info, err := m.Info()
	if err != nil {
		return 0, fmt.Errorf("map info: %w", err)
	}
	id, ok := info.ID()
	if !ok {
		return 0, errors.New("map info: the kernel reports no map ID")
	}
	return id, nil
}

// carryFlows copies the records of the flow table old into new, which is
// of another size: all of them when new is larger, as many as fit when it
// is smaller. Record ids stay, so the per-CPU flow cache's pending counts
// (a kept pin) still find their records.
func carryFlows(old, new *ebpf.Map) (carried, lost int, err error) {
	var (
		k  nsflowFlowKey
		v  nsflowFlowValue
		it = old.Iterate()
	)
	for it.Next(&k, &v) {
		switch err := new.Update(&k, &v, ebpf.UpdateNoExist); {
		case err == nil:
			carried++
		case errors.Is(err, unix.E2BIG) || errors.Is(err, unix.ENOMEM) || errors.Is(err, unix.ENOSPC):
			lost++
		default:
			return carried, lost, fmt.Errorf("bpf: carry flow records to the resized table: %w", err)
		}
	}
	if err := it.Err(); err != nil {
		return carried, lost, fmt.Errorf("bpf: read the flow table being resized: %w", err)
	}
	return carried, lost, nil
}

func removeOwnPins(path string) error {
	var errs []error
	for _, name := range append(slices.Clone(mapNames), nsflowMapNsflowFlows+resizingSuffix, layoutPinName) {
		if err := os.Remove(filepath.Join(path, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("bpf: remove pin: %w", err))
		}
	}
	return errors.Join(errs...)
}

// use marks a call that uses the programs' and maps' descriptors until
// done: Close waits for such calls (it would close the descriptors under
// them, and the kernel could give their numbers to other files), and a
// call after Close gets ErrClosed.
func (d *Datapath) use() (done func(), err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, ErrClosed
	}
	d.users++
	return func() {
		d.mu.Lock()
		if d.users--; d.users == 0 {
			d.usersDone.Broadcast()
		}
		d.mu.Unlock()
	}, nil
}

// Close detaches every attachment made through d and closes the programs
// and maps, once the calls in flight are over (so not from a Flows
// callback). Pinned maps stay pinned (see RemovePins).
func (d *Datapath) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	atts := make([]*Attachment, 0, len(d.attached))
	for a := range d.attached {
		atts = append(atts, a)
	}
	d.mu.Unlock()

	var errs []error
	for _, a := range atts {
		if err := a.Detach(); err != nil {
			errs = append(errs, err)
		}
	}
	// Calls in flight end first; an attach sees closed when it is done
	// and undoes itself.
	d.mu.Lock()
	for d.users > 0 {
		d.usersDone.Wait()
	}
	d.mu.Unlock()
	for _, unmap := range []func() error{d.flowCache.unmap, d.portSlots.unmap} {
		if err := unmap(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := d.objs.Close(); err != nil {
		errs = append(errs, err)
	}
	if err := d.clock.Close(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Programs returns the ingress and egress programs, for callers that attach
// them by other means (and for tests).
func (d *Datapath) Programs() (ingress, egress *ebpf.Program) {
	return d.objs.NsflowIngress, d.objs.NsflowEgress
}

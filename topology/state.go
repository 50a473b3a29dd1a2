package topology

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"golang.org/x/sys/unix"
)

// StateDir holds one state record (and lock file) per topology that is
// up. It is a directory of its own: beside the agent's files in
// /run/nsflow, a topology could be named like one of them.
const StateDir = "/run/nsflow/topology"

// stateRecord lists what a topology may own, written before anything is
// created so that a crash mid-build still leaves a record for down.
// Listing is not owning: down deletes an object only if it carries the
// topology's marker.
type stateRecord struct {
	Topology string `json:"topology"`
	// Namespaces are the names under /run/netns.
	Namespaces []string `json:"namespaces"`
	// HostInterfaces are interfaces in the host namespace (bridges and
	// veth ends); interfaces in the topology's namespaces go with them.
	HostInterfaces []string  `json:"host_interfaces"`
	Updated        time.Time `json:"updated"`
}

func statePath(name string) string { return filepath.Join(StateDir, name+".json") }

// readState returns the topology's record, or nil if there is none.
func readState(name string) (*stateRecord, error) {
	b, err := os.ReadFile(statePath(name))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var r stateRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("state record %s: %w", statePath(name), err)
	}
	return &r, nil
}

// hasNamespace reports whether the record lists namespace name: only
// then can an empty file of that name be a leftover of this topology's
// (an up records what it may create before creating it). Another's, such
// as `ip netns add` between creating its file and mounting on it, is
// left alone.
func (r *stateRecord) hasNamespace(name string) bool {
	return r != nil && slices.Contains(r.Namespaces, name)
}

// writeState replaces the record atomically (temp file, then rename).
func writeState(r *stateRecord) error {
	if err := os.MkdirAll(StateDir, 0o755); err != nil {
		return err
	}
	r.Updated = time.Now().UTC()
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(StateDir, "."+r.Topology+".*.tmp")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), statePath(r.Topology))
}

func removeState(name string) error {
	if err := os.Remove(statePath(name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// plannedState is the record for everything the spec declares.
func plannedState(s *Spec) *stateRecord {
	r := &stateRecord{Topology: s.Name}
	for _, n := range s.Namespaces {
		r.Namespaces = append(r.Namespaces, n.Name)
	}
	for _, ifc := range s.NamespaceInterfaces(HostNamespace) {
		r.HostInterfaces = append(r.HostInterfaces, ifc.Name)
	}
	return r
}

// without returns a copy of r that lists none of o (nil for nil).
func (r *stateRecord) without(o orphans) *stateRecord {
	if r == nil {
		return nil
	}
	c := *r
	c.Namespaces = slices.DeleteFunc(slices.Clone(r.Namespaces), func(n string) bool { return slices.Contains(o.namespaces, n) })
	c.HostInterfaces = slices.DeleteFunc(slices.Clone(r.HostInterfaces), func(n string) bool { return slices.Contains(o.hostIfs, n) })
	return &c
}

// merge adds o's entries to r (a topology whose file changed between up
// and down still has its old objects recorded).
func (r *stateRecord) merge(o *stateRecord) {
	if o == nil {
		return
	}
	for _, n := range o.Namespaces {
		if !slices.Contains(r.Namespaces, n) {
			r.Namespaces = append(r.Namespaces, n)
		}
	}
	for _, n := range o.HostInterfaces {
		if !slices.Contains(r.HostInterfaces, n) {
			r.HostInterfaces = append(r.HostInterfaces, n)
		}
	}
}

func lockPath(name string) string { return filepath.Join(StateDir, name+".lock") }

// lockTopology takes the topology's lock, so that two runs of up or down
// of one topology cannot interleave; a second one fails at once. Its
// holder removes the lock file when it leaves the topology down.
func lockTopology(name string) (unlock func(), err error) {
	return lockFile(lockPath(name), func() bool {
		// A topology with no record is down (or was never up): its lock
		// file goes too.
		_, err := os.Stat(statePath(name))
		return errors.Is(err, os.ErrNotExist)
	}, fmt.Sprintf("another nsflow up or down of topology %s is running", name))
}

// RunLockDir holds the locks of running verifies and benches.
const RunLockDir = "/run/nsflow/run"

// LockRun takes the lock of a verify or bench of topology name: two of
// them on one topology would bind each other's ports and count each
// other's traffic. A second one fails at once.
func LockRun(name string) (unlock func(), err error) {
	return lockFile(filepath.Join(RunLockDir, name+".lock"), func() bool { return true },
		fmt.Sprintf("another nsflow verify or bench of topology %s is running", name))
}

// needsRoot says what a permission error means here: the lock is the
// first thing a command touches, and everything after it needs root.
func needsRoot(err error) error {
	if errors.Is(err, os.ErrPermission) {
		return fmt.Errorf("%w: run nsflow as root (it needs CAP_NET_ADMIN, CAP_SYS_ADMIN and, for eBPF, CAP_BPF and CAP_PERFMON)", err)
	}
	return err
}

// LockDemo takes the lock of a demo of topology name for its whole run: a
// second demo under the same prefix would take over the first one's
// namespaces and remove them under it. (The demo's verify takes LockRun.)
func LockDemo(name string) (unlock func(), err error) {
	return lockFile(filepath.Join(RunLockDir, name+".demo.lock"), func() bool { return true },
		fmt.Sprintf("another nsflow demo of topology %s is running", name))
}

// BusyError says that another nsflow process holds a topology's lock.
type BusyError struct{ msg string }

func (e *BusyError) Error() string { return e.msg }

// lockFile takes an exclusive lock on the file at path (made with its
// directory if absent); busy is the error when another process holds it.
// unlock removes the file if remove says so, still holding the lock.
func lockFile(path string, remove func() bool, busy string) (unlock func(), err error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, needsRoot(err)
	}
	for {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
		if err != nil {
			return nil, needsRoot(err)
		}
		if err := flockSoon(f); err != nil {
			f.Close()
			if errors.Is(err, unix.EWOULDBLOCK) {
				return nil, &BusyError{fmt.Sprintf("%s (it holds %s)", busy, path)}
			}
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		// The holder before may have removed the file between our open
		// and our lock: then the lock is on a file nobody else sees.
		var held, now unix.Stat_t
		if unix.Fstat(int(f.Fd()), &held) == nil && unix.Stat(path, &now) == nil && held.Ino == now.Ino {
			return func() {
				if remove() {
					os.Remove(path)
				}
				f.Close()
			}, nil
		}
		f.Close()
	}
}

// checkNoRun fails while an up or down of the topology runs (holds its
// lock): what show would read is changing under it.
func checkNoRun(name string) error {
	f, err := os.Open(lockPath(name))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB); err != nil {
		if errors.Is(err, unix.EWOULDBLOCK) {
			return fmt.Errorf("an nsflow up or down of topology %s is running: its state is changing", name)
		}
		return fmt.Errorf("lock %s: %w", lockPath(name), err)
	}
	return nil // closing f releases the shared lock
}

// flockSoon takes an exclusive lock on f, waiting up to 200 ms: a show
// probes the lock (checkNoRun) for microseconds, and must not make an up
// or down fail; another up or down holds it for longer.
func flockSoon(f *os.File) error {
	deadline := time.Now().Add(200 * time.Millisecond)
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if !errors.Is(err, unix.EWOULDBLOCK) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// Package discovery finds the network namespaces of a host and the links
// and addresses inside them, live: named namespaces under /run/netns
// (inotify), those bind-mounted elsewhere (the mount table, polled for
// changes), unnamed ones held by processes (/proc/*/ns/net), and one
// rtnetlink subscription per namespace for links and addresses.
package discovery

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// HostLabel names the namespace the agent itself runs in.
const HostLabel = "host"

// UnknownLabel stands, in metrics, for an address no namespace owns.
const UnknownLabel = "unknown"

// maxPids bounds how many owning processes a Namespace remembers: enough
// to say who holds it, not a process table.
const maxPids = 3

// Namespace is one live network namespace. Inode identifies it: all
// namespaces live on the one nsfs device, so the inode alone is unique.
type Namespace struct {
	Inode uint64
	// Name is set for namespaces bind-mounted under the named directory
	// (the first name in sort order when several point to one namespace).
	Name string
	// Host marks the agent's own namespace.
	Host bool
	// Path opens the namespace: the bind mount for named ones, else a
	// bind mount elsewhere (a runtime's own directory, first in sort
	// order), else /proc/PID/ns/net of an owning process; empty for the
	// host.
	Path string
	// Pids and Comms are a few processes inside (sorted by pid).
	Pids  []int
	Comms []string
}

// Label is the stable name used in metrics: "host", the namespace's name,
// or "netns-INODE" for unnamed ones (stable for the namespace's lifetime).
// A name that reads as one of the other labels ("host", "unknown",
// "netns-" and digits) is labelled by its path instead, which no name can
// equal: names contain no '/'.
func (n Namespace) Label() string {
	switch {
	case n.Host:
		return HostLabel
	case n.Name != "" && reservedLabel(n.Name):
		return n.Path
	case n.Name != "":
		return n.Name
	}
	return "netns-" + strconv.FormatUint(n.Inode, 10)
}

func reservedLabel(name string) bool {
	if name == HostLabel || name == UnknownLabel {
		return true
	}
	digits, ok := strings.CutPrefix(name, "netns-")
	if !ok || digits == "" {
		return false
	}
	_, err := strconv.ParseUint(digits, 10, 64)
	return err == nil
}

// same reports whether two observations describe the namespace identically
// (so no update event is needed).
func (n Namespace) same(o Namespace) bool {
	return n.Inode == o.Inode && n.Name == o.Name && n.Host == o.Host &&
		n.Path == o.Path && slices.Equal(n.Pids, o.Pids) && slices.Equal(n.Comms, o.Comms)
}

// nsInode returns the inode of the namespace behind a /proc/PID/ns/net
// link from its target text "net:[INODE]" (readlink, no open).
func nsInode(link string) (uint64, error) {
	target, err := os.Readlink(link)
	if err != nil {
		return 0, err
	}
	s, ok := strings.CutPrefix(target, "net:[")
	if !ok || !strings.HasSuffix(s, "]") {
		return 0, fmt.Errorf("%s: unexpected target %q", link, target)
	}
	return strconv.ParseUint(strings.TrimSuffix(s, "]"), 10, 64)
}

// namedCache remembers which names in the named directory are mounted
// namespaces, so a scan of a thousand names costs one directory read rather
// than two system calls per name. Names reported by inotify are dirty and
// looked at again.
type namedCache struct {
	ino   map[string]uint64
	dirty map[string]bool
	all   bool // everything is dirty (inotify overflow, periodic check)
}

func newNamedCache() *namedCache {
	return &namedCache{ino: map[string]uint64{}, dirty: map[string]bool{}, all: true}
}

// refresh brings the cache up to date with dir. A full refresh reads the
// directory; otherwise only the names inotify reported and those awaiting
// their bind mount (retry) are looked at, so other tools creating and
// deleting namespaces cost a stat per name, not a directory read. pending
// are names not (yet) mounted; changed says whether the mounted set moved.
func (c *namedCache) refresh(dir string, full bool, retry []string) (pending []string, changed bool, err error) {
	var names []string
	recheck := c.all // every name, not only new ones
	if full || c.all {
		d, err := os.Open(dir)
		if err != nil {
			if !os.IsNotExist(err) {
				return nil, false, err
			}
		} else {
			names, err = d.Readdirnames(-1)
			d.Close()
			if err != nil {
				return nil, false, err
			}
		}
		present := make(map[string]bool, len(names))
		for _, n := range names {
			present[n] = true
		}
		for name := range c.ino {
			if !present[name] {
				changed = true
				delete(c.ino, name)
			}
		}
	} else {
		for name := range c.dirty {
			names = append(names, name)
		}
		names = append(names, retry...)
	}
	for _, name := range names {
		old, known := c.ino[name]
		if known && !recheck && !c.dirty[name] {
			continue
		}
		ino, mounted := statNamed(filepath.Join(dir, name))
		switch {
		case mounted:
			changed = changed || !known || old != ino
			c.ino[name] = ino
		default:
			changed = changed || known
			delete(c.ino, name)
			if _, err := os.Lstat(filepath.Join(dir, name)); err == nil {
				pending = append(pending, name)
			}
		}
	}
	clear(c.dirty)
	c.all = false
	return pending, changed, nil
}

// named maps each mounted namespace to its name, the first in sort order
// when several names point to one namespace.
func (c *namedCache) named() map[uint64]string {
	names := slices.Sorted(maps.Keys(c.ino))
	out := make(map[uint64]string, len(names))
	for _, name := range names {
		if _, dup := out[c.ino[name]]; !dup {
			out[c.ino[name]] = name
		}
	}
	return out
}

// statNamed returns the namespace inode behind a bind mount; ok is false
// while the file is not (yet) a mounted network namespace (another kind
// of namespace mounted there is none of ours).
func statNamed(path string) (uint64, bool) {
	return netnsFile(path)
}

// procNamespaces maps the namespace inode of every process under procRoot
// to its first few pids (ascending).
func procNamespaces(procRoot string) (map[uint64][]int, error) {
	d, err := os.Open(procRoot)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return nil, err
	}
	pids := make([]int, 0, len(names))
	for _, n := range names {
		if pid, err := strconv.Atoi(n); err == nil {
			pids = append(pids, pid)
		}
	}
	slices.Sort(pids)
	out := make(map[uint64][]int)
	for _, pid := range pids {
		ino, err := nsInode(procRoot + "/" + strconv.Itoa(pid) + "/ns/net")
		if err != nil {
			continue // exited, or a kernel thread
		}
		if ps := out[ino]; len(ps) < maxPids {
			out[ino] = append(ps, pid)
		}
	}
	return out, nil
}

// comm reads a process's command name; "" when it exited.
func comm(procRoot string, pid int) string {
	b, err := os.ReadFile(procRoot + "/" + strconv.Itoa(pid) + "/comm")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// otherHolders finds namespaces that no process has as its own: held by
// another thread of a process, by an open file descriptor (a runtime
// keeping a namespace for later) or by a bind mount outside the named
// directory (/run/docker/netns, say). It maps each inode to a path that
// opens it. A one-off look (List) can afford what the watch cannot.
func otherHolders(procRoot string) (map[uint64]string, error) {
	out := map[uint64]string{}
	found := func(ino uint64, path string) {
		if _, ok := out[ino]; !ok {
			out[ino] = path
		}
	}
	d, err := os.Open(procRoot)
	if err != nil {
		return nil, err
	}
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return nil, err
	}
	for _, pid := range names {
		if _, err := strconv.Atoi(pid); err != nil {
			continue
		}
		base := procRoot + "/" + pid
		tids, _ := readDirNames(base + "/task") // gone: nothing to find
		for _, tid := range tids {
			if tid == pid {
				continue
			}
			p := base + "/task/" + tid + "/ns/net"
			if ino, err := nsInode(p); err == nil {
				found(ino, p)
			}
		}
		fds, _ := readDirNames(base + "/fd")
		for _, fd := range fds {
			p := base + "/fd/" + fd
			if ino, ok := netnsFile(p); ok {
				found(ino, p)
			}
		}
	}
	mounts, err := netnsMounts(procRoot, "")
	if err != nil {
		return nil, err
	}
	for ino, path := range mounts {
		found(ino, path)
	}
	return out, nil
}

// netnsMounts reads the bind mounts of network namespaces in this
// process's mount namespace, anywhere but under skipDir (when set), and
// maps each namespace's inode to its first mount point in sort order.
func netnsMounts(procRoot, skipDir string) (map[uint64]string, error) {
	mounts, err := os.ReadFile(procRoot + "/self/mountinfo")
	if err != nil {
		return nil, err
	}
	out := map[uint64]string{}
	for _, line := range strings.Split(string(mounts), "\n") {
		// id parent dev root mountpoint options... - fstype source ...
		pre, post, ok := strings.Cut(line, " - ")
		f := strings.Fields(pre)
		if !ok || len(f) < 5 || !strings.HasPrefix(post, "nsfs ") {
			continue
		}
		s, ok := strings.CutPrefix(f[3], "net:[")
		if !ok {
			continue
		}
		ino, err := strconv.ParseUint(strings.TrimSuffix(s, "]"), 10, 64)
		if err != nil {
			continue
		}
		path := unescapeMount(f[4])
		if skipDir != "" && strings.HasPrefix(path, skipDir+"/") {
			continue
		}
		if old, ok := out[ino]; !ok || path < old {
			out[ino] = path
		}
	}
	return out, nil
}

// netnsFile reports the inode of the network namespace the file at path
// (an open descriptor's link) is, if it is one. A descriptor opened
// through a path links to that path, not to "net:[INODE]", so the file
// itself is asked.
func netnsFile(path string) (uint64, bool) {
	var fs unix.Statfs_t
	if err := unix.Statfs(path, &fs); err != nil || fs.Type != unix.NSFS_MAGIC {
		return 0, false
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, false
	}
	defer unix.Close(fd)
	if t, err := unix.IoctlRetInt(fd, unix.NS_GET_NSTYPE); err != nil || t != unix.CLONE_NEWNET {
		return 0, false
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, false
	}
	return st.Ino, true
}

func readDirNames(path string) ([]string, error) {
	d, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	return d.Readdirnames(-1)
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

package topology

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/vishvananda/netlink"
)

// orphans are what a topology owns but its file no longer declares: the
// namespaces and host interfaces its state record lists that are present
// and carry its marker (the file was edited after an up). Interfaces in a
// namespace the file still declares are not among them: nothing proves
// who made those, so show reports them and up leaves them alone.
type orphans struct {
	namespaces []string
	hostIfs    []string
}

func (o orphans) empty() bool { return len(o.namespaces) == 0 && len(o.hostIfs) == 0 }

// describe lists the orphans for people, namespaces first.
func (o orphans) describe() []string {
	var out []string
	for _, n := range o.namespaces {
		out = append(out, "namespace "+n)
	}
	for _, n := range o.hostIfs {
		out = append(out, "host interface "+n)
	}
	return out
}

// findOrphans checks the entries of rec, s's state record (nil: none),
// that s does not declare.
func findOrphans(ctx context.Context, host *nsConn, s *Spec, rec *stateRecord, opts Options) (orphans, error) {
	var o orphans
	if rec == nil {
		return o, nil
	}
	plan := plannedState(s)
	marker := markerFor(s.Name)

	var gone []string
	for _, n := range rec.Namespaces {
		if !slices.Contains(plan.Namespaces, n) {
			gone = append(gone, n)
		}
	}
	var mu sync.Mutex
	err := parallel(ctx, len(gone), opts.workers(), "checking namespaces", opts.Progress, func(i int) error {
		c, err := openIfPresent(gone[i], s.NetnsPath(gone[i]))
		if c == nil {
			return err
		}
		owner, err := netnsOwner(c)
		c.close()
		if err == nil && owner == marker {
			mu.Lock()
			o.namespaces = append(o.namespaces, gone[i])
			mu.Unlock()
		}
		return err
	})
	if err != nil {
		return o, err
	}
	slices.Sort(o.namespaces)

	var hostGone []string
	for _, n := range rec.HostInterfaces {
		if !slices.Contains(plan.HostInterfaces, n) {
			hostGone = append(hostGone, n)
		}
	}
	links, err := linksNamed(host.h, hostGone)
	if err != nil {
		return o, err
	}
	for _, n := range hostGone {
		if l, ok := links[n]; ok && l.Attrs().Alias == marker {
			o.hostIfs = append(o.hostIfs, n)
		}
	}
	slices.Sort(o.hostIfs)
	return o, nil
}

// prune deletes the orphans. A veth is deleted with its peer at once, so
// the veths of an orphan namespace are deleted before the namespace is
// unmounted: otherwise their peers in the namespaces that stay would go
// only when the kernel gets round to destroying it, racing the build
// that follows.
func prune(ctx context.Context, host *nsConn, s *Spec, o orphans, opts Options) error {
	var errs []error
	for _, n := range o.hostIfs {
		l, err := host.h.LinkByName(n)
		if err == nil {
			err = host.h.LinkDel(l)
		}
		if err != nil && !isNotFound(err) {
			errs = append(errs, fmt.Errorf("delete host interface %s: %w", n, err))
		}
	}
	err := parallel(ctx, len(o.namespaces), opts.workers(), "removing namespaces", opts.Progress, func(i int) error {
		name := o.namespaces[i]
		c, err := openIfPresent(name, s.NetnsPath(name))
		if c == nil {
			return err
		}
		links, err := retryDump(c.h.LinkList)
		for _, l := range links {
			if err != nil {
				break
			}
			if l.Type() == "veth" {
				if err = c.h.LinkDel(l); isNotFound(err) {
					err = nil
				}
			}
		}
		c.close()
		if err != nil {
			return fmt.Errorf("namespace %s: delete veths: %w", name, err)
		}
		return unmountNetns(s.NetnsPath(name))
	})
	return errors.Join(append(errs, err)...)
}

// flushNeighbours deletes the learned entries of a namespace's neighbour
// tables (not the static ones). After a prune, entries for the addresses
// of what went would linger until they time out, and look like neighbours
// the topology no longer declares; the live ones are learned again.
func flushNeighbours(c *nsConn) error {
	neighs, err := retryDump(func() ([]netlink.Neigh, error) { return c.h.NeighList(0, netlink.FAMILY_ALL) })
	if err != nil {
		return fmt.Errorf("namespace %s: list neighbours: %w", c.name, err)
	}
	for _, n := range neighs {
		if n.State&(netlink.NUD_PERMANENT|netlink.NUD_NOARP) != 0 {
			continue
		}
		if err := c.h.NeighDel(&n); err != nil && !isNotFound(err) {
			return fmt.Errorf("namespace %s: delete neighbour %s: %w", c.name, n.IP, err)
		}
	}
	return nil
}

package topology

import (
	"context"
	"fmt"
	"time"

	"github.com/vishvananda/netlink"
)

// readyTimeout bounds the wait for veths to come operationally up.
const readyTimeout = 30 * time.Second

// awaitReady returns once every declared veth end is operationally up.
// The kernel turns a link's carrier on asynchronously (linkwatch, which
// needs rtnl): until then the link drops what it is given, and IPv6 has
// not joined its addresses' groups. Up waits so that its caller can send
// traffic as soon as it returns.
func (b *builder) awaitReady(ctx context.Context) error {
	byNS := map[string][]string{}
	for _, ifc := range b.s.Interfaces() {
		if ifc.Kind == "veth" {
			byNS[ifc.Namespace] = append(byNS[ifc.Namespace], ifc.Name)
		}
	}
	names := make([]string, 0, len(byNS))
	for ns := range byNS {
		names = append(names, ns)
	}
	deadline := time.Now().Add(readyTimeout)
	return parallel(ctx, len(names), b.opts.workers(), "waiting for links", b.opts.Progress, func(i int) error {
		ns := names[i]
		for {
			notUp, err := notOperUp(b.conns[ns], byNS[ns])
			if err != nil || notUp == "" {
				return err
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("namespace %s: %s is not operationally up after %s", ns, notUp, readyTimeout)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(5 * time.Millisecond):
			}
		}
	})
}

// notOperUp returns the first of names in c's namespace that is not
// operationally up, with its state, or "" when all are.
func notOperUp(c *nsConn, names []string) (string, error) {
	var (
		links map[string]netlink.Link
		err   error
	)
	if c.name == HostNamespace {
		links, err = linksNamed(c.h, names)
	} else {
		links, err = linksByName(c.h)
	}
	if err != nil {
		return "", fmt.Errorf("namespace %s: list interfaces: %w", c.name, err)
	}
	for _, n := range names {
		l, ok := links[n]
		if !ok {
			return n + " (missing)", nil
		}
		if st := l.Attrs().OperState; st != netlink.OperUp {
			return fmt.Sprintf("%s (operstate %s)", n, st), nil
		}
	}
	return "", nil
}

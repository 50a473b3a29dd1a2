package topology

import (
	"context"
	"fmt"
	"io"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/nsflow/nsflow/internal/nsenter"
)

// State is the live state of a topology, as Show finds it.
type State struct {
	Name       string           `json:"name"`
	Namespaces []NamespaceState `json:"namespaces"`
	// Drift lists every difference from the spec; empty when the
	// topology is exactly up.
	Drift []string `json:"drift"`
	// Warnings are problems of the host rather than differences from the
	// spec: a declared host address whose subnet another host interface
	// has too (a second --prefix copy, say).
	Warnings []string `json:"warnings,omitempty"`
}

// NamespaceState is one namespace: each declared one, then the host with
// only the topology's interfaces in it.
type NamespaceState struct {
	Name       string           `json:"name"`
	Path       string           `json:"path,omitempty"`
	Present    bool             `json:"present"`
	Owned      bool             `json:"owned"`
	Interfaces []InterfaceState `json:"interfaces,omitempty"`
	Routes     []RouteState     `json:"routes,omitempty"`
	// Sysctls are the live values of the sysctls the spec declares.
	Sysctls map[string]string `json:"sysctls,omitempty"`
}

// InterfaceState is one live interface.
type InterfaceState struct {
	Name      string   `json:"name"`
	Kind      string   `json:"kind"`
	Up        bool     `json:"up"`
	MTU       int      `json:"mtu"`
	Addresses []string `json:"addresses,omitempty"`
	// Peer is the other end of a veth as namespace:interface.
	Peer string `json:"peer,omitempty"`
	// Master is the bridge a port belongs to; Ports a bridge's ports.
	Master string   `json:"master,omitempty"`
	Ports  []string `json:"ports,omitempty"`
	Owned  bool     `json:"owned"`
}

// RouteState is one route of a namespace's main table.
type RouteState struct {
	To  string `json:"to"`
	Via string `json:"via,omitempty"`
	Dev string `json:"dev,omitempty"`
	// Metric is set when it is not the family's default (IPv4 0, IPv6
	// 1024), the metric of every route the file declares.
	Metric int `json:"metric,omitempty"`
}

// nsSnapshot is what Show reads from one namespace.
type nsSnapshot struct {
	c       *nsConn
	owner   string
	links   []netlink.Link
	byIdx   map[int]netlink.Link
	addrs   map[int][]netlink.Addr
	routes  []netlink.Route
	sysctls map[string]string
	// sysctlsAbsent are declared keys the kernel lacks; a key that
	// exists but cannot be read (write-only) is in neither.
	sysctlsAbsent []string
}

// Show reads the live state of every namespace and interface s declares
// and compares it with the spec.
func Show(ctx context.Context, s *Spec, opts Options) (*State, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	if err := checkNoRun(s.Name); err != nil {
		return nil, err
	}
	host, err := openHost()
	if err != nil {
		return nil, err
	}
	snaps := map[string]*nsSnapshot{}
	defer func() {
		for _, sn := range snaps {
			sn.c.close()
		}
	}()
	var hostNames []string
	for _, ifc := range s.NamespaceInterfaces(HostNamespace) {
		hostNames = append(hostNames, ifc.Name)
	}
	hs, err := snapshot(host, hostNames)
	if err != nil {
		host.close()
		return nil, err
	}
	snaps[HostNamespace] = hs
	var mu sync.Mutex
	err = parallel(ctx, len(s.Namespaces), opts.workers(), "reading namespaces", opts.Progress, func(i int) error {
		name := s.Namespaces[i].Name
		path := s.NetnsPath(name)
		c, err := openIfPresent(name, path)
		if c == nil {
			return err // nil when the namespace is not there
		}
		sn, err := snapshot(c, nil)
		if err == nil && len(s.Namespaces[i].Sysctls) > 0 {
			sn.sysctls, sn.sysctlsAbsent, err = readSysctls(func(fn func() error) error { return nsenter.Do(path, fn) }, slices.Collect(maps.Keys(s.Namespaces[i].Sysctls)))
		}
		if err != nil {
			c.close()
			return err
		}
		mu.Lock()
		snaps[name] = sn
		mu.Unlock()
		return nil
	})
	if err != nil {
		return nil, err
	}
	rec, err := readState(s.Name)
	if err != nil {
		return nil, err
	}
	o, err := findOrphans(ctx, host, s, rec, opts)
	if err != nil {
		return nil, err
	}
	overlaps, err := hostOverlaps(host, s)
	if err != nil {
		return nil, err
	}
	// An up or down that began while the state was read: it may be half.
	if err := checkNoRun(s.Name); err != nil {
		return nil, err
	}
	st := compare(s, snaps)
	st.Warnings = overlaps
	for _, d := range o.describe() {
		st.Drift = append(st.Drift, fmt.Sprintf("%s: owned by topology %s but no longer declared", d, s.Name))
	}
	return st, nil
}

// snapshot reads a namespace: all of it, or in the host only the
// interfaces named (the host's own are none of the topology's business,
// and looking them up one by one is not disturbed by other tools' churn).
func snapshot(c *nsConn, hostNames []string) (*nsSnapshot, error) {
	var (
		links []netlink.Link
		addrs []netlink.Addr
		err   error
	)
	if c.name == HostNamespace {
		var named map[string]netlink.Link
		if named, err = linksNamed(c.h, hostNames); err != nil {
			return nil, err
		}
		for _, n := range hostNames {
			l, ok := named[n]
			if !ok {
				continue
			}
			links = append(links, l)
			la, err := retryDump(func() ([]netlink.Addr, error) { return c.h.AddrList(l, netlink.FAMILY_ALL) })
			if err != nil {
				return nil, fmt.Errorf("host: list addresses of %s: %w", n, err)
			}
			addrs = append(addrs, la...)
		}
	} else {
		if links, err = retryDump(c.h.LinkList); err != nil {
			return nil, fmt.Errorf("namespace %s: list interfaces: %w", c.name, err)
		}
		addrs, err = retryDump(func() ([]netlink.Addr, error) { return c.h.AddrList(nil, netlink.FAMILY_ALL) })
		if err != nil {
			return nil, fmt.Errorf("namespace %s: list addresses: %w", c.name, err)
		}
	}
	sn := &nsSnapshot{c: c, links: links, byIdx: map[int]netlink.Link{}, addrs: map[int][]netlink.Addr{}}
	for _, l := range links {
		sn.byIdx[l.Attrs().Index] = l
		if l.Attrs().Name == "lo" {
			sn.owner = l.Attrs().Alias
		}
	}
	for _, a := range addrs {
		sn.addrs[a.LinkIndex] = append(sn.addrs[a.LinkIndex], a)
	}
	if c.name != HostNamespace {
		if sn.routes, err = mainRoutes(c, netlink.FAMILY_ALL); err != nil {
			return nil, err
		}
	}
	return sn, nil
}

// mainRoutes dumps the main routing table of a namespace, for one family
// or all.
func mainRoutes(c *nsConn, family int) ([]netlink.Route, error) {
	routes, err := retryDump(func() ([]netlink.Route, error) {
		return c.h.RouteListFiltered(family, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return nil, fmt.Errorf("namespace %s: list routes: %w", c.name, err)
	}
	return routes, nil
}

// compare builds the State from the snapshots and lists the drift.
func compare(s *Spec, snaps map[string]*nsSnapshot) *State {
	st := &State{Name: s.Name, Drift: []string{}}
	marker := markerFor(s.Name)
	drift := func(format string, args ...any) { st.Drift = append(st.Drift, fmt.Sprintf(format, args...)) }
	declared := s.Interfaces()
	byNS := map[string][]Interface{}
	for _, ifc := range declared {
		byNS[ifc.Namespace] = append(byNS[ifc.Namespace], ifc)
	}
	names := make([]string, 0, len(s.Namespaces)+1)
	for _, n := range s.Namespaces {
		names = append(names, n.Name)
	}
	names = append(names, HostNamespace)
	for _, name := range names {
		ns := NamespaceState{Name: name, Path: s.NetnsPath(name)}
		sn := snaps[name]
		if sn == nil {
			drift("namespace %s: missing", name)
			st.Namespaces = append(st.Namespaces, ns)
			continue
		}
		ns.Present = true
		ns.Owned = name == HostNamespace || sn.owner == marker
		if !ns.Owned {
			drift("namespace %s: exists but is not owned by topology %s", name, s.Name)
		}
		want := map[string]Interface{}
		for _, ifc := range byNS[name] {
			want[ifc.Name] = ifc
		}
		for _, l := range sn.links {
			a := l.Attrs()
			w, isDeclared := want[a.Name]
			if name == HostNamespace && !isDeclared {
				continue // the host's own interfaces are none of ours
			}
			is := interfaceState(s, snaps, sn, l, marker)
			// Interfaces in an owned namespace are owned with it.
			is.Owned = is.Owned || (name != HostNamespace && ns.Owned)
			ns.Interfaces = append(ns.Interfaces, is)
			if !isDeclared {
				if a.Name != "lo" {
					drift("%s/%s: not declared in the topology", name, a.Name)
				}
			} else {
				delete(want, a.Name)
				interfaceDrift(drift, name, w, is)
			}
			if isDeclared || a.Name == "lo" {
				for _, ad := range strayAddrs(a.Name, sn.addrs[a.Index], w.Addresses) {
					drift("%s/%s: address %s not declared", name, a.Name, ad.IPNet)
				}
			}
		}
		for _, w := range byNS[name] {
			if _, missing := want[w.Name]; missing {
				drift("%s/%s: missing (%s)", name, w.Name, w.Kind)
			}
		}
		for _, r := range sn.routes {
			ns.Routes = append(ns.Routes, routeState(sn.byIdx, r))
		}
		if i := slices.IndexFunc(s.Namespaces, func(n Namespace) bool { return n.Name == name }); i >= 0 {
			ns.Sysctls = sn.sysctls
			for _, k := range slices.Sorted(maps.Keys(s.Namespaces[i].Sysctls)) {
				want := s.Namespaces[i].Sysctls[k]
				switch live, readable := sn.sysctls[k]; {
				case slices.Contains(sn.sysctlsAbsent, k):
					drift("%s: sysctl %s: no such key", name, k)
				case readable && !sysctlEqual(live, want):
					drift("%s: sysctl %s is %q, declared %q", name, k, live, want)
				}
			}
			for _, r := range s.Namespaces[i].Routes {
				if !hasRoute(ns.Routes, r) {
					drift("%s: route to %s%s%s missing", name, r.To, prefixed(" via ", r.Via), prefixed(" dev ", r.Dev))
				}
			}
			for _, r := range strayRoutes(sn.routes, sn.byIdx, s.Namespaces[i].Routes, byNS[name]) {
				drift("%s: %s not declared", name, describeRoute(sn.byIdx, r))
			}

		}
		st.Namespaces = append(st.Namespaces, ns)
	}
	return st
}

func prefixed(p, s string) string {
	if s == "" {
		return ""
	}
	return p + s
}

func interfaceState(s *Spec, snaps map[string]*nsSnapshot, sn *nsSnapshot, l netlink.Link, marker string) InterfaceState {
	a := l.Attrs()
	is := InterfaceState{
		Name:  a.Name,
		Kind:  l.Type(),
		Up:    a.Flags&net.FlagUp != 0,
		MTU:   a.MTU,
		Owned: a.Alias == marker,
	}
	for _, ad := range sn.addrs[a.Index] {
		is.Addresses = append(is.Addresses, ad.IPNet.String())
	}
	if m, ok := sn.byIdx[a.MasterIndex]; ok && a.MasterIndex != 0 {
		is.Master = m.Attrs().Name
	}
	if is.Kind == "bridge" {
		for _, p := range sn.links {
			if p.Attrs().MasterIndex == a.Index {
				is.Ports = append(is.Ports, p.Attrs().Name)
			}
		}
		slices.Sort(is.Ports)
	}
	if is.Kind == "veth" {
		is.Peer = peerOf(s, snaps, sn, l)
	}
	return is
}

// peerOf names a veth's other end as namespace:interface. The kernel gives
// the peer's ifindex and, if it is in another namespace, that namespace's
// id as seen from this one; the id is matched against the namespace the
// spec expects, then all others that Show opened.
func peerOf(s *Spec, snaps map[string]*nsSnapshot, sn *nsSnapshot, l netlink.Link) string {
	a := l.Attrs()
	if a.NetNsID < 0 {
		if p, ok := sn.byIdx[a.ParentIndex]; ok {
			return sn.c.name + ":" + p.Attrs().Name
		}
		return fmt.Sprintf("%s:#%d", sn.c.name, a.ParentIndex)
	}
	candidates := make([]string, 0, len(snaps))
	for _, ifc := range s.Interfaces() {
		if ifc.Namespace == sn.c.name && ifc.Name == a.Name {
			candidates = append(candidates, ifc.PeerNamespace)
		}
	}
	for name := range snaps {
		candidates = append(candidates, name)
	}
	for _, name := range candidates {
		other := snaps[name]
		if other == nil || name == sn.c.name {
			continue
		}
		if id, err := sn.c.h.GetNetNsIdByFd(other.c.fd); err == nil && id == a.NetNsID {
			if p, ok := other.byIdx[a.ParentIndex]; ok {
				return name + ":" + p.Attrs().Name
			}
			return fmt.Sprintf("%s:#%d", name, a.ParentIndex)
		}
	}
	return fmt.Sprintf("netnsid %d:#%d", a.NetNsID, a.ParentIndex)
}

func interfaceDrift(drift func(string, ...any), ns string, w Interface, is InterfaceState) {
	where := ns + "/" + w.Name
	if is.Kind != w.Kind {
		drift("%s: is a %s, declared a %s", where, is.Kind, w.Kind)
		return
	}
	if !is.Owned {
		drift("%s: not owned by this topology", where)
	}
	if !is.Up {
		drift("%s: down", where)
	}
	if w.MTU != 0 && is.MTU != w.MTU {
		drift("%s: mtu %d, declared %d", where, is.MTU, w.MTU)
	}
	if is.Master != w.Master {
		drift("%s: bridge %q, declared %q", where, is.Master, w.Master)
	}
	if w.Kind == "veth" && is.Peer != w.PeerNamespace+":"+w.PeerName {
		drift("%s: peer %s, declared %s:%s", where, is.Peer, w.PeerNamespace, w.PeerName)
	}
	for _, p := range w.Addresses {
		if !slices.Contains(is.Addresses, p.String()) {
			drift("%s: address %s missing", where, p)
		}
	}
	// Addresses it should not have: strayAddrs, in compare.
}

// routeState describes a live route, naming its device from the
// namespace's interfaces by index.
func routeState(byIdx map[int]netlink.Link, r netlink.Route) RouteState {
	rs := RouteState{To: "default"}
	if r.Dst != nil {
		if ones, _ := r.Dst.Mask.Size(); ones > 0 || !r.Dst.IP.IsUnspecified() {
			rs.To = r.Dst.String()
		}
	}
	if r.Gw != nil {
		rs.Via = r.Gw.String()
	}
	if l, ok := byIdx[r.LinkIndex]; ok {
		rs.Dev = l.Attrs().Name
	}
	def := 0
	if r.Family == netlink.FAMILY_V6 {
		def = 1024 // what the kernel gives an IPv6 route without one
	}
	if r.Priority != def {
		rs.Metric = r.Priority
	}
	return rs
}

// hasRoute reports whether a declared route is among the live ones. A
// route declared without via is on-link: a live route through a gateway
// is not it.
func hasRoute(live []RouteState, r Route) bool {
	to := canonicalTo(r.To)
	for _, l := range live {
		// An on-link IPv6 route to an address's subnet is the kernel's,
		// at its metric.
		metric := l.Metric == 0 || r.Via == "" && l.Metric == kernelMetric6 && strings.Contains(to, ":")
		if l.To == to && metric && (r.Via == "" && l.Via == "" || r.Via != "" && net.ParseIP(r.Via).Equal(net.ParseIP(l.Via))) && (r.Dev == "" || l.Dev == r.Dev) {
			return true
		}
	}
	return false
}

// canonicalTo writes a declared destination as routeState does a live
// one: a /0 prefix is "default", others masked.
func canonicalTo(to string) string {
	p, err := netip.ParsePrefix(to)
	switch {
	case err != nil:
		return to // "default"
	case p.Bits() == 0:
		return "default"
	}
	return p.Masked().String()
}

// WriteTable writes the state for people: interfaces, routes, drift.
func (st *State) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "TOPOLOGY %s\n\n", st.Name)
	fmt.Fprintln(tw, "NAMESPACE\tINTERFACE\tKIND\tSTATE\tMTU\tADDRESSES\tPEER/BRIDGE")
	for _, ns := range st.Namespaces {
		if !ns.Present {
			fmt.Fprintf(tw, "%s\t-\t-\tmissing\t-\t-\t-\n", ns.Name)
			continue
		}
		for _, i := range ns.Interfaces {
			state := "down"
			if i.Up {
				state = "up"
			}
			var rel []string
			if i.Peer != "" {
				rel = append(rel, i.Peer)
			}
			if i.Master != "" {
				rel = append(rel, "bridge "+i.Master)
			}
			if len(i.Ports) > 0 {
				rel = append(rel, "ports "+strings.Join(i.Ports, ","))
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\n", ns.Name, i.Name, i.Kind, state, i.MTU,
				orDash(strings.Join(i.Addresses, ",")), orDash(strings.Join(rel, " ")))
		}
	}
	fmt.Fprintln(tw, "\nNAMESPACE\tROUTE\tVIA\tDEV")
	for _, ns := range st.Namespaces {
		for _, r := range ns.Routes {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", ns.Name, r.To, orDash(r.Via), orDash(r.Dev))
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, warning := range st.Warnings {
		fmt.Fprintln(w, "\nwarning: "+warning)
	}
	if len(st.Drift) == 0 {
		_, err := fmt.Fprintln(w, "\nDRIFT: none, the live state matches the spec")
		return err
	}
	fmt.Fprintf(w, "\nDRIFT: %d difference(s) from the spec\n", len(st.Drift))
	for _, d := range st.Drift {
		fmt.Fprintln(w, "  "+d)
	}
	return nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

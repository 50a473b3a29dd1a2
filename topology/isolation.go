package topology

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
)

// Isolation declares who must and who must not reach whom. Names in From
// and To are namespace names or group names.
type Isolation struct {
	// Groups name sets of namespaces, e.g. web: [c1, c2, c3].
	Groups map[string][]string `yaml:"groups,omitempty" json:"groups,omitempty"`
	// Ports are what the probes use: "tcp/PORT", "udp/PORT" or "icmp".
	// Empty means icmp, tcp/8080 and udp/8080.
	Ports []string `yaml:"ports,omitempty" json:"ports,omitempty"`
	// Allow lists pairs that must reach each other; Deny pairs that must not.
	Allow []Rule `yaml:"allow,omitempty" json:"allow,omitempty"`
	Deny  []Rule `yaml:"deny,omitempty" json:"deny,omitempty"`
}

// Rule is a set of directed pairs: every From to every To, optionally only
// on some Ports (same syntax as Isolation.Ports; empty means all).
type Rule struct {
	From  []string `yaml:"from" json:"from"`
	To    []string `yaml:"to" json:"to"`
	Ports []string `yaml:"ports,omitempty" json:"ports,omitempty"`
}

// DefaultPorts are probed when Isolation.Ports is empty.
var DefaultPorts = []string{"icmp", "tcp/8080", "udp/8080"}

// Port is a parsed probe target: Proto is "tcp", "udp" or "icmp" (Number 0).
type Port struct {
	Proto  string
	Number uint16
}

func (p Port) String() string {
	if p.Proto == "icmp" {
		return "icmp"
	}
	return p.Proto + "/" + strconv.Itoa(int(p.Number))
}

// ParsePort parses "tcp/8080", "udp/53" or "icmp".
func ParsePort(s string) (Port, error) {
	if s == "icmp" {
		return Port{Proto: "icmp"}, nil
	}
	proto, num, ok := strings.Cut(s, "/")
	if !ok || (proto != "tcp" && proto != "udp") {
		return Port{}, fmt.Errorf("%q: want tcp/PORT, udp/PORT or icmp", s)
	}
	n, err := strconv.ParseUint(num, 10, 16)
	if err != nil || n == 0 {
		return Port{}, fmt.Errorf("%q: port must be 1-65535", s)
	}
	return Port{Proto: proto, Number: uint16(n)}, nil
}

// ProbePorts returns the parsed ports to probe (DefaultPorts when unset).
func (iso *Isolation) ProbePorts() []Port {
	src := DefaultPorts
	if iso != nil && len(iso.Ports) > 0 {
		src = iso.Ports
	}
	out := make([]Port, 0, len(src))
	for _, s := range src {
		if p, err := ParsePort(s); err == nil {
			out = append(out, p)
		}
	}
	return out
}

// Members expands a namespace or group name into namespace names.
func (iso *Isolation) Members(name string) []string {
	if iso != nil {
		if g, ok := iso.Groups[name]; ok {
			return g
		}
	}
	return []string{name}
}

// validate checks the section's syntax and names against the declared
// namespaces. Whether intent contradicts the topology's wiring is for
// `nsflow verify` to decide, since that needs the reachability model.
func (iso *Isolation) validate(namespaces map[string]bool) []error {
	if iso == nil {
		return nil
	}
	var errs []error
	add := func(path, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", path, fmt.Sprintf(format, args...)))
	}
	for _, g := range slices.Sorted(maps.Keys(iso.Groups)) {
		members := iso.Groups[g]
		path := "isolation.groups." + g
		if namespaces[g] {
			add(path, "group name %q is also a namespace name", g)
		}
		if len(members) == 0 {
			add(path, "empty group")
		}
		for i, m := range members {
			if !namespaces[m] {
				add(fmt.Sprintf("%s[%d]", path, i), "undeclared namespace %q", m)
			}
		}
	}
	seen := map[Port]int{}
	for i, p := range iso.Ports {
		port, err := ParsePort(p)
		if err != nil {
			add(fmt.Sprintf("isolation.ports[%d]", i), "%v", err)
			continue
		}
		if prev, dup := seen[port]; dup {
			add(fmt.Sprintf("isolation.ports[%d]", i), "%s listed twice (also ports[%d])", port, prev)
			continue
		}
		seen[port] = i
	}
	checkRules := func(kind string, rules []Rule) {
		for i, r := range rules {
			path := fmt.Sprintf("isolation.%s[%d]", kind, i)
			if len(r.From) == 0 {
				add(path+".from", "must name at least one namespace or group")
			}
			if len(r.To) == 0 {
				add(path+".to", "must name at least one namespace or group")
			}
			for _, side := range []struct {
				field string
				names []string
			}{{"from", r.From}, {"to", r.To}} {
				field := side.field
				for j, n := range side.names {
					if _, isGroup := iso.Groups[n]; !isGroup && !namespaces[n] {
						add(fmt.Sprintf("%s.%s[%d]", path, field, j), "undeclared namespace or group %q", n)
					}
				}
			}
			for j, p := range r.Ports {
				if _, err := ParsePort(p); err != nil {
					add(fmt.Sprintf("%s.ports[%d]", path, j), "%v", err)
				}
			}
		}
	}
	checkRules("allow", iso.Allow)
	checkRules("deny", iso.Deny)
	return errs
}

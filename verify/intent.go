package verify

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/nsflow/nsflow/topology"
)

// SpecError is intent that the topology contradicts, found before any
// probe runs (exit status 2).
type SpecError struct{ Err error }

func (e *SpecError) Error() string { return "spec: " + e.Err.Error() }
func (e *SpecError) Unwrap() error { return e.Err }

// CheckIntent compares the isolation section with the wiring. A pair that
// must reach each other but has no path, or must not but is delivered to
// (the topology declares no filters that could stop it), is an error naming
// the rule.
func (m *Model) CheckIntent() error {
	iso := m.spec.Isolation
	if iso == nil {
		return nil
	}
	var errs []error
	pairs := func(r topology.Rule, fn func(from, to string)) {
		for _, f := range r.From {
			for _, from := range iso.Members(f) {
				for _, t := range r.To {
					for _, to := range iso.Members(t) {
						if from != to {
							fn(from, to)
						}
					}
				}
			}
		}
	}
	for i, r := range iso.Allow {
		pairs(r, func(from, to string) {
			if !slices.ContainsFunc(m.addrs[to], func(a netip.Addr) bool { return m.Answerer(from, a) == to }) {
				errs = append(errs, fmt.Errorf("isolation.allow[%d]: %s must reach %s, but the topology gives it no path to any address of %s", i, from, to, to))
			}
		})
	}
	for i, r := range iso.Deny {
		pairs(r, func(from, to string) {
			if ifc, ok := m.sharedSegment(from, to); ok {
				errs = append(errs, fmt.Errorf("isolation.deny[%d]: %s must not reach %s, but they share the L2 segment of %s's %s, where broadcast, multicast and IPv6 link-local packets reach every stack whatever the subnets: put them on separate segments", i, from, to, to, ifc))
				return
			}
			for _, a := range m.addrs[to] {
				if got, _ := m.Deliver(from, a); got == to {
					errs = append(errs, fmt.Errorf("isolation.deny[%d]: %s must not reach %s, but the topology delivers its packets to %s and declares no filter", i, from, to, a))
					return
				}
			}
		})
	}
	if len(errs) > 0 {
		return &SpecError{errors.Join(errs...)}
	}
	return nil
}

// Ports returns what the probes cover: the section's probe ports plus any
// port a rule names, so that every stated intent is tested.
func (m *Model) Ports() []topology.Port {
	ports := m.spec.Isolation.ProbePorts()
	if iso := m.spec.Isolation; iso != nil {
		for _, r := range slices.Concat(iso.Allow, iso.Deny) {
			for _, s := range r.Ports {
				if p, err := topology.ParsePort(s); err == nil && !slices.Contains(ports, p) {
					ports = append(ports, p)
				}
			}
		}
	}
	return ports
}

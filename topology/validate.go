package topology

import "errors"

// Validate checks the whole spec and returns every problem found, each
// naming its field path.
//
// Placeholder until the topology builder's validation lands: it checks only
// the isolation section.
func (s *Spec) Validate() error {
	ns := map[string]bool{}
	for _, n := range s.Namespaces {
		ns[n.Name] = true
	}
	return errors.Join(s.Isolation.validate(ns)...)
}

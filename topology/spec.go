// Package topology holds nsflow's topology file: its format, validation,
// and the code that builds (up), removes (down), inspects (show) and draws
// (graph) a topology of network namespaces, veth pairs and bridges.
package topology

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	"go.yaml.in/yaml/v3"
)

// HostNamespace is the reserved namespace name for the host (initial)
// network namespace, usable in link endpoints and bridge placement.
const HostNamespace = "host"

// Spec is one topology file. Everything a Spec creates is owned by its Name.
type Spec struct {
	Name       string      `yaml:"name" json:"name"`
	Namespaces []Namespace `yaml:"namespaces,omitempty" json:"namespaces,omitempty"`
	Bridges    []Bridge    `yaml:"bridges,omitempty" json:"bridges,omitempty"`
	Links      []Link      `yaml:"links,omitempty" json:"links,omitempty"`
	// Isolation declares intent for `nsflow verify`: who must and who must
	// not reach whom.
	Isolation *Isolation `yaml:"isolation,omitempty" json:"isolation,omitempty"`
}

// Namespace is a network namespace the topology creates (under /run/netns).
type Namespace struct {
	Name string `yaml:"name" json:"name"`
	// Sysctls are written under /proc/sys/net inside the namespace, e.g.
	// net.ipv4.ip_forward: "1" for a router namespace.
	Sysctls map[string]string `yaml:"sysctls,omitempty" json:"sysctls,omitempty"`
	Routes  []Route           `yaml:"routes,omitempty" json:"routes,omitempty"`
}

// Route is a route inside a namespace. To is a CIDR or "default"; the
// family of a default route follows Via (or the first address of Dev).
type Route struct {
	To  string `yaml:"to" json:"to"`
	Via string `yaml:"via,omitempty" json:"via,omitempty"`
	Dev string `yaml:"dev,omitempty" json:"dev,omitempty"`
}

// Bridge is a Linux bridge, in the host namespace unless Namespace is set.
type Bridge struct {
	Name      string   `yaml:"name" json:"name"`
	Namespace string   `yaml:"namespace,omitempty" json:"namespace,omitempty"`
	MTU       int      `yaml:"mtu,omitempty" json:"mtu,omitempty"`
	Addresses []string `yaml:"addresses,omitempty" json:"addresses,omitempty"`
}

// Link is a veth pair. Each endpoint is either an interface in a namespace
// or a port of a bridge (the interface then lives in the bridge's namespace).
type Link struct {
	MTU       int        `yaml:"mtu,omitempty" json:"mtu,omitempty"`
	Endpoints []Endpoint `yaml:"endpoints" json:"endpoints"`
}

// Endpoint is one end of a veth pair: exactly one of Namespace or Bridge.
type Endpoint struct {
	Namespace string   `yaml:"namespace,omitempty" json:"namespace,omitempty"`
	Bridge    string   `yaml:"bridge,omitempty" json:"bridge,omitempty"`
	Interface string   `yaml:"interface" json:"interface"`
	Addresses []string `yaml:"addresses,omitempty" json:"addresses,omitempty"`
}

// Parse decodes a topology file strictly: unknown fields, a second YAML
// document and type mismatches are errors that name the line. It does not
// validate the result; call Validate for that (Load does both).
func Parse(data []byte) (*Spec, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var s Spec
	if err := dec.Decode(&s); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("empty topology file")
		}
		return nil, namedYAMLErrors(data, err)
	}
	var extra any
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, errors.New("more than one YAML document: a topology file holds exactly one")
	}
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, err
	}
	if errs := nullEntries(&root, ""); len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return &s, nil
}

// Load reads, parses and validates the topology file at path.
func Load(path string) (*Spec, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	s, err := Parse(data)
	if err != nil {
		return nil, prefixErrors(path, err)
	}
	if err := s.Validate(); err != nil {
		return nil, prefixErrors(path, err)
	}
	return s, nil
}

// LoadWithPrefix is Load, then WithPrefix(prefix) unless prefix is "";
// every error names the file.
func LoadWithPrefix(path, prefix string) (*Spec, error) {
	s, err := Load(path)
	if err != nil || prefix == "" {
		return s, err
	}
	if s, err = s.WithPrefix(prefix); err != nil {
		return nil, prefixErrors(path, err)
	}
	return s, nil
}

// prefixErrors puts prefix (the file) before each of err's joined
// errors, so that every line of a multi-problem report names the file.
func prefixErrors(prefix string, err error) error {
	j, ok := err.(interface{ Unwrap() []error })
	if !ok {
		return fmt.Errorf("%s: %w", prefix, err)
	}
	var out []error
	for _, e := range j.Unwrap() {
		out = append(out, fmt.Errorf("%s: %w", prefix, e))
	}
	return errors.Join(out...)
}

package topology

import (
	"maps"
	"slices"
	"strings"
	"testing"
)

func TestWithPrefix(t *testing.T) {
	s, err := Load("../examples/seed.yaml")
	if err != nil {
		t.Fatal(err)
	}
	p, err := s.WithPrefix("t1-")
	if err != nil {
		t.Fatal(err)
	}
	if p.Name != "t1-seed" {
		t.Errorf("name %q", p.Name)
	}
	for i, n := range p.Namespaces {
		if n.Name != "t1-"+s.Namespaces[i].Name {
			t.Errorf("namespaces[%d] %q", i, n.Name)
		}
	}
	if p.Bridges[0].Name != "t1-br0" {
		t.Errorf("bridge %q", p.Bridges[0].Name)
	}
	// Host-side interfaces carry the prefix; those in namespaces do not.
	for _, ifc := range p.Interfaces() {
		inHost := ifc.Namespace == HostNamespace
		if inHost != strings.HasPrefix(ifc.Name, "t1-") {
			t.Errorf("interface %s in %s: prefix applied wrongly", ifc.Name, ifc.Namespace)
		}
	}
	if got := p.Isolation.Groups["web"]; !slices.Equal(got, []string{"t1-c1", "t1-c2", "t1-c3", "t1-pod"}) {
		t.Errorf("isolation group web: %v", got)
	}
	if got := p.Isolation.Deny[0].To; !slices.Equal(got, []string{"web", "t1-srv1", "t1-srv2"}) {
		t.Errorf("isolation deny[0].to: %v", got)
	}
	// The original is untouched.
	if s.Name != "seed" || s.Namespaces[0].Name != "ns1" || s.Isolation.Groups["web"][0] != "c1" {
		t.Errorf("WithPrefix changed the original spec")
	}
	// A prefix that pushes a host interface name past 15 bytes is rejected.
	if _, err := s.WithPrefix("averylongpfx-"); err == nil || !strings.Contains(err.Error(), "the kernel allows at most 15") {
		t.Errorf("long prefix: got %v", err)
	}
}

func TestWithPrefixRenamesRouteDevBridge(t *testing.T) {
	s, err := Parse([]byte(`
name: r
namespaces:
  - name: router
    routes: [{to: 198.18.8.0/24, dev: br1}]
bridges: [{name: br1, namespace: router, addresses: [198.18.7.1/24]}]
`))
	if err != nil {
		t.Fatal(err)
	}
	p, err := s.WithPrefix("x-")
	if err != nil {
		t.Fatal(err)
	}
	if p.Namespaces[0].Routes[0].Dev != "x-br1" || p.Bridges[0].Namespace != "x-router" {
		t.Errorf("got dev %q, bridge namespace %q", p.Namespaces[0].Routes[0].Dev, p.Bridges[0].Namespace)
	}
}

// A bridge's sysctl keys follow its new name, also where that name is
// another bridge's old one, and the original keeps its keys.
func TestWithPrefixRenamesSysctlBridge(t *testing.T) {
	s, err := Parse([]byte(`
name: r
namespaces:
  - name: router
    sysctls: {net.ipv4.conf.b.forwarding: "1", net.ipv4.conf.tb.forwarding: "0", net.ipv4.conf.lo.forwarding: "1"}
bridges: [{name: b, namespace: router}, {name: tb, namespace: router}]
`))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"net.ipv4.conf.tb.forwarding": "1", "net.ipv4.conf.ttb.forwarding": "0", "net.ipv4.conf.lo.forwarding": "1"}
	for range 20 { // map order varies from run to run
		p, err := s.WithPrefix("t")
		if err != nil {
			t.Fatal(err)
		}
		if got := p.Namespaces[0].Sysctls; !maps.Equal(got, want) {
			t.Fatalf("sysctls %v, want %v", got, want)
		}
	}
	if got := s.Namespaces[0].Sysctls["net.ipv4.conf.b.forwarding"]; got != "1" || len(s.Namespaces[0].Sysctls) != 3 {
		t.Errorf("WithPrefix changed the original's sysctls: %v", s.Namespaces[0].Sysctls)
	}
}

package topology

import (
	"io"
	"os"
	"testing"
)

// FuzzParse feeds arbitrary bytes to the parser and, when they parse, to
// validation, prefixing and drawing: none may panic, and a spec that
// validates must still validate after WithPrefix with a short prefix
// unless a name grows past a limit.
func FuzzParse(f *testing.F) {
	seed, err := os.ReadFile("../examples/seed.yaml")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(seed)
	f.Add([]byte(validBase))
	f.Add([]byte("name: t\nnamespaces: [{name: a, sysctls: {net.ipv4.ip_forward: \"1\"}, routes: [{to: default, dev: e0}]}]"))
	f.Add([]byte("name: t\nbridges: [{name: b1, namespace: x, mtu: 9000}]\nlinks: [{endpoints: [{bridge: b1, interface: p}, {bridge: b1, interface: q}]}]"))
	f.Add([]byte("name: t\nnamespaces: [{name: a, sysctls: {net.ipv4.conf.e0/1.rp_filter: \"2\", net.ipv4.conf.e0.1.x: \"1\"}}, {name: b}]\nlinks: [{endpoints: [{namespace: a, interface: e0.1}, {namespace: b, interface: e0}]}]"))
	f.Add([]byte("name: [1, 2]"))
	f.Add([]byte("{}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := Parse(data)
		if err != nil {
			return
		}
		valid := s.Validate() == nil
		_ = s.Interfaces()
		if !valid {
			return
		}
		if err := WriteGraph(io.Discard, s, GraphMermaid); err != nil {
			t.Fatalf("graph of a valid spec: %v", err)
		}
		if err := WriteGraph(io.Discard, s, GraphDot); err != nil {
			t.Fatalf("graph of a valid spec: %v", err)
		}
		if p, err := s.WithPrefix(""); err != nil || p.Name != s.Name {
			t.Fatalf("WithPrefix(\"\") of a valid spec: %v", err)
		}
	})
}

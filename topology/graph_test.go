package topology

import (
	"strings"
	"testing"
)

func TestWriteGraph(t *testing.T) {
	s, err := Load("../examples/seed.yaml")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		format string
		want   []string
	}{
		{GraphMermaid, []string{
			"flowchart LR",
			`subgraph ns0["ns1"]`,
			`if1["eth-n1<br/>198.18.0.1/30<br/>fd00:0:0:1::1/64"]`,
			`subgraph ns8["host"]`,
			`if0{{"br0 (bridge)<br/>198.18.1.1/24<br/>fd00:0:0:2::1/64"}}`,
			"if1 <-->|veth| if2",   // ns1:eth-n1 to ns2:eth-n2
			"if3 <-->|veth| if4",   // c1:eth0 to vc1
			"if4 -.-|port| if0",    // vc1 is a port of br0
			"if11 <-->|veth| if12", // srv1 to srv2
		}},
		{GraphDot, []string{
			`graph "seed" {`,
			`subgraph cluster_0 {`,
			`label="ns1";`,
			`if1 [label="eth-n1\n198.18.0.1/30\nfd00:0:0:1::1/64"];`,
			`if0 [label="br0 (bridge)\n198.18.1.1/24\nfd00:0:0:2::1/64", shape=hexagon];`,
			`if1 -- if2 [label="veth"];`,
			`if4 -- if0 [style=dashed];`,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.format, func(t *testing.T) {
			var b strings.Builder
			if err := WriteGraph(&b, s, tt.format); err != nil {
				t.Fatal(err)
			}
			for _, w := range tt.want {
				if !strings.Contains(b.String(), w) {
					t.Errorf("missing %q in:\n%s", w, b.String())
				}
			}
			// 8 namespaces plus the host each get one box.
			if n := strings.Count(b.String(), map[string]string{GraphMermaid: "subgraph ", GraphDot: "subgraph cluster_"}[tt.format]); n != 9 {
				t.Errorf("%d boxes, want 9", n)
			}
		})
	}
	if err := WriteGraph(&strings.Builder{}, s, "svg"); err == nil || !strings.Contains(err.Error(), `unknown graph format "svg"`) {
		t.Errorf("unknown format: got %v", err)
	}
}

func TestGraphEscapesLabels(t *testing.T) {
	s := &Spec{Name: `a"b`, Namespaces: []Namespace{{Name: "x"}}, Links: []Link{{Endpoints: []Endpoint{
		{Namespace: "x", Interface: `q"1`}, {Namespace: "x", Interface: "q<2>#3;"},
	}}}}
	var m, d strings.Builder
	if err := WriteGraph(&m, s, GraphMermaid); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(m.String(), `"q#quot;1"`) || !strings.Contains(m.String(), `"q#lt;2#gt;#35;3;"`) {
		t.Errorf("mermaid labels not escaped:\n%s", m.String())
	}
	if err := WriteGraph(&d, s, GraphDot); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(d.String(), `graph "a\"b"`) || !strings.Contains(d.String(), `label="q\"1"`) {
		t.Errorf("dot labels not escaped:\n%s", d.String())
	}
}

// A namespace without interfaces still shows: Graphviz draws no empty
// cluster.
func TestGraphLonelyNamespace(t *testing.T) {
	s := &Spec{Name: "t", Namespaces: []Namespace{{Name: "lonely"}}}
	var d strings.Builder
	if err := WriteGraph(&d, s, GraphDot); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(d.String(), `label="lonely"`) || !strings.Contains(d.String(), `ns0 [label="(no interfaces)", shape=plaintext];`) {
		t.Errorf("the lonely namespace has no node:\n%s", d.String())
	}
}

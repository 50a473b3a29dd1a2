package topology

import (
	"fmt"
	"io"
	"strings"
)

// Graph formats.
const (
	GraphMermaid = "mermaid"
	GraphDot     = "dot"
)

// GraphFormats lists the formats WriteGraph accepts.
var GraphFormats = []string{GraphMermaid, GraphDot}

// WriteGraph draws the spec: a box (subgraph or cluster) per namespace
// holding its interfaces, an edge per veth pair, and an edge from each
// bridge port to its bridge.
func WriteGraph(w io.Writer, s *Spec, format string) error {
	g := newGraph(s)
	switch format {
	case GraphMermaid:
		return g.mermaid(w)
	case GraphDot:
		return g.dot(w)
	}
	return fmt.Errorf("unknown graph format %q (want %s)", format, strings.Join(GraphFormats, " or "))
}

// graph is the spec as boxes, nodes and edges with generated identifiers,
// so that names with any characters cannot break the output syntax.
type graph struct {
	name   string
	boxes  []graphBox
	veths  [][2]string // node ids
	ports  [][2]string // port node id, bridge node id
	nodeID map[string]string
}

type graphBox struct {
	id, label string
	nodes     []graphNode
}

type graphNode struct {
	id, label string
	bridge    bool
}

func newGraph(s *Spec) *graph {
	g := &graph{name: s.Name, nodeID: map[string]string{}}
	order := []string{}
	for _, n := range s.Namespaces {
		order = append(order, n.Name)
	}
	order = append(order, HostNamespace)
	boxOf := map[string]int{}
	ifcs := s.Interfaces()
	for _, ns := range order {
		used := false
		for _, ifc := range ifcs {
			used = used || ifc.Namespace == ns
		}
		if ns == HostNamespace && !used {
			continue
		}
		boxOf[ns] = len(g.boxes)
		g.boxes = append(g.boxes, graphBox{id: fmt.Sprintf("ns%d", len(g.boxes)), label: ns})
	}
	for i, ifc := range ifcs {
		id := fmt.Sprintf("if%d", i)
		g.nodeID[ifc.Namespace+"/"+ifc.Name] = id
		label := ifc.Name
		if ifc.Kind == "bridge" {
			label += " (bridge)"
		}
		for _, a := range ifc.Addresses {
			label += "\n" + a.String()
		}
		b := &g.boxes[boxOf[ifc.Namespace]]
		b.nodes = append(b.nodes, graphNode{id: id, label: label, bridge: ifc.Kind == "bridge"})
	}
	for _, l := range s.Links {
		if len(l.Endpoints) != 2 {
			continue
		}
		var ids [2]string
		for j, e := range l.Endpoints {
			ns := s.EndpointNamespace(e)
			ids[j] = g.nodeID[ns+"/"+e.Interface]
			if e.Bridge != "" {
				g.ports = append(g.ports, [2]string{ids[j], g.nodeID[ns+"/"+e.Bridge]})
			}
		}
		g.veths = append(g.veths, ids)
	}
	return g
}

func (g *graph) mermaid(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "---\ntitle: %s\n---\nflowchart LR\n", mermaidText(g.name))
	for _, box := range g.boxes {
		fmt.Fprintf(&b, "  subgraph %s[\"%s\"]\n", box.id, mermaidText(box.label))
		for _, n := range box.nodes {
			open, closing := "[\"", "\"]"
			if n.bridge {
				open, closing = "{{\"", "\"}}"
			}
			fmt.Fprintf(&b, "    %s%s%s%s\n", n.id, open, mermaidText(n.label), closing)
		}
		b.WriteString("  end\n")
	}
	for _, e := range g.veths {
		fmt.Fprintf(&b, "  %s <-->|veth| %s\n", e[0], e[1])
	}
	for _, p := range g.ports {
		fmt.Fprintf(&b, "  %s -.-|port| %s\n", p[0], p[1])
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// mermaidText escapes a label for a quoted mermaid string.
func mermaidText(s string) string {
	// '#' starts mermaid's entity codes, so it is one itself.
	r := strings.NewReplacer("#", "#35;", `"`, "#quot;", "\n", "<br/>", "<", "#lt;", ">", "#gt;")
	return r.Replace(s)
}

func (g *graph) dot(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "graph %s {\n  rankdir=LR;\n  node [shape=box];\n", dotText(g.name))
	for i, box := range g.boxes {
		fmt.Fprintf(&b, "  subgraph cluster_%d {\n    label=%s;\n", i, dotText(box.label))
		for _, n := range box.nodes {
			shape := ""
			if n.bridge {
				shape = ", shape=hexagon"
			}
			fmt.Fprintf(&b, "    %s [label=%s%s];\n", n.id, dotText(n.label), shape)
		}
		if len(box.nodes) == 0 {
			// Graphviz draws no empty cluster: the namespace would vanish.
			fmt.Fprintf(&b, "    %s [label=\"(no interfaces)\", shape=plaintext];\n", box.id)
		}
		b.WriteString("  }\n")
	}
	for _, e := range g.veths {
		fmt.Fprintf(&b, "  %s -- %s [label=\"veth\"];\n", e[0], e[1])
	}
	for _, p := range g.ports {
		fmt.Fprintf(&b, "  %s -- %s [style=dashed];\n", p[0], p[1])
	}
	b.WriteString("}\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// dotText quotes a DOT string.
func dotText(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)
	return `"` + r.Replace(s) + `"`
}

package topology

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"

	yaml2 "go.yaml.in/yaml/v2"
	"go.yaml.in/yaml/v3"
)

// yamlErrLine matches one of a *yaml.TypeError's messages: "line N: ...",
// with the field of an unknown-field error.
var yamlErrLine = regexp.MustCompile(`^line (\d+): (?:field (\S+) not found in type \S+|(.*))$`)

// yamlErrValue is the value a "cannot unmarshal !!str `x` into int" names.
var yamlErrValue = regexp.MustCompile("`([^`]*)`")

// yamlErrKind is the node kind a "cannot unmarshal !!map into ..." names.
var yamlErrKind = regexp.MustCompile(`^cannot unmarshal !!(map|seq|str|int|bool|float|null) `)

// yamlParserErr matches the parser's syntax errors (not the scanner's,
// whose lines are right). yaml.v3 numbers them from 0, and from where the
// enclosing block starts: "yaml: line 2: did not find expected key" may
// be about line 12.
var yamlParserErr = regexp.MustCompile(`^yaml: (?:line (\d+): )?(did not find expected (?:',' or '\]'|',' or '\}'|'-' indicator|<document start>|<stream-start>|key|node content)|found (?:duplicate %TAG directive|duplicate %YAML directive|incompatible YAML document|undefined tag handle))$`)

// syntaxError names the line of a parser error in data, counted from 1.
// yaml.v2, the same parser, reports the line where the problem is found
// (also from 0), so it is asked; the block's start is the fallback. A
// problem found at the end names the last line.
func syntaxError(data []byte, err error) error {
	m := yamlParserErr.FindStringSubmatch(err.Error())
	if m == nil {
		return err
	}
	line, _ := strconv.Atoi(m[1])
	if m2 := yamlParserErr.FindStringSubmatch(fmt.Sprint(yaml2.Unmarshal(data, new(any)))); m2 != nil && m2[2] == m[2] {
		line, _ = strconv.Atoi(m2[1])
	}
	line++
	if n := bytes.Count(data, []byte("\n")); !bytes.HasSuffix(data, []byte("\n")) {
		line = min(line, n+1)
	} else {
		line = min(line, max(n, 1))
	}
	return fmt.Errorf("yaml: line %d: %s", line, m[2])
}

// namedYAMLErrors rewrites the decoder's "line N: ..." errors to name the
// field path, as validation errors do: "namespaces[0].routez: unknown
// field (line 4)". data is the document the errors are about.
func namedYAMLErrors(data []byte, err error) error {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return syntaxError(data, err)
	}
	var root yaml.Node
	if yaml.Unmarshal(data, &root) != nil {
		return err
	}
	var out []error
	used := map[string]bool{} // paths already named: each error gets its own node
	for _, msg := range te.Errors {
		m := yamlErrLine.FindStringSubmatch(msg)
		if m == nil {
			out = append(out, errors.New(msg))
			continue
		}
		line, _ := strconv.Atoi(m[1])
		field, what := m[2], "unknown field"
		var match func(*yaml.Node) bool
		if field == "" {
			what = goTypeNames.Replace(m[3])
			match = valueOn(line, m[3])
		}
		path, ok := pickNode(nodesOn(&root, line, field, match), typeOf(m[3]), used)
		if !ok {
			out = append(out, errors.New(goTypeNames.Replace(msg)))
			continue
		}
		used[path] = true
		out = append(out, fmt.Errorf("%s: %s (line %d)", path, what, line))
	}
	return errors.Join(out...)
}

// yamlErrInto is the Go type a "cannot unmarshal ... into T" names.
var yamlErrInto = regexp.MustCompile(`into (\S+)$`)

func typeOf(what string) string {
	if m := yamlErrInto.FindStringSubmatch(what); m != nil {
		return m[1]
	}
	return ""
}

// pickNode chooses, of the nodes an error may be about (in document
// order), the first not named by an earlier error whose field has the Go
// type the error names; failing that, the deepest not named yet: the
// decoder reports the innermost node it could not decode, and a flow-style
// line ({a: 1, b: [x]}) holds several.
func pickNode(nodes []yamlNode, goType string, used map[string]bool) (string, bool) {
	keys := fieldsOfType[goType]
	for _, n := range nodes {
		if !used[n.path] && slices.Contains(keys, n.key) {
			return n.path, true
		}
	}
	best, depth := "", -1
	for _, n := range nodes {
		if !used[n.path] && n.depth > depth {
			best, depth = n.path, n.depth
		}
	}
	return best, depth >= 0
}

// fieldsOfType maps the Go types of the spec's fields, as the decoder
// names them ("[]string", "topology.Route" for an element), to their keys.
var fieldsOfType = func() map[string][]string {
	out := map[string][]string{}
	seen := map[reflect.Type]bool{}
	var walk func(t reflect.Type)
	walk = func(t reflect.Type) {
		for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice || t.Kind() == reflect.Map {
			t = t.Elem()
		}
		if t.Kind() != reflect.Struct || seen[t] {
			return
		}
		seen[t] = true
		for i := range t.NumField() {
			f := t.Field(i)
			key, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if key == "" || key == "-" {
				continue
			}
			ft := f.Type
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			out[ft.String()] = append(out[ft.String()], key)
			if ft.Kind() == reflect.Slice {
				out[ft.Elem().String()] = append(out[ft.Elem().String()], key)
			}
			walk(ft)
		}
	}
	walk(reflect.TypeOf(Spec{}))
	return out
}()

// goTypeNames says what the decoder's Go types stand for in the file.
var goTypeNames = strings.NewReplacer(
	"into topology.Spec", "into a topology file (a mapping of name, namespaces, bridges, links, isolation)",
	"into []topology.", "into a list of ", "into topology.", "into a ",
	"into []string", "into a list of strings", "into map[string]string", "into a mapping of strings",
	"into map[string][]string", "into a mapping of lists")

// valueOn returns the test for the value node of a decoder's type error
// on line: of the kind it names, and for a scalar with the value it
// quotes (which the decoder cuts to 7 bytes and "..." beyond 10).
func valueOn(line int, what string) func(*yaml.Node) bool {
	quoted := ""
	if v := yamlErrValue.FindStringSubmatch(what); v != nil {
		quoted = v[1]
	}
	kind := yaml.ScalarNode
	if k := yamlErrKind.FindStringSubmatch(what); k != nil {
		switch k[1] {
		case "map":
			kind = yaml.MappingNode
		case "seq":
			kind = yaml.SequenceNode
		}
	}
	return func(v *yaml.Node) bool {
		if v.Line != line || v.Kind != kind {
			return false
		}
		if cut, ok := strings.CutSuffix(quoted, "..."); ok && len(quoted) == 10 {
			return strings.HasPrefix(v.Value, cut)
		}
		return quoted == "" || v.Value == quoted
	}
}

// yamlNode is a node an error on its line may be about: its path, the
// key it is under (a list's for its elements) and its depth.
type yamlNode struct {
	path, key string
	depth     int
}

// nodesOn lists, under n in document order, the mapping keys named field
// on line, or with field "" the values that match accepts.
func nodesOn(n *yaml.Node, line int, field string, match func(*yaml.Node) bool) []yamlNode {
	var out []yamlNode
	value := func(v *yaml.Node) bool { return field == "" && match(v) }
	var walk func(n *yaml.Node, path, key string, d int)
	walk = func(n *yaml.Node, path, key string, d int) {
		switch n.Kind {
		case yaml.DocumentNode:
			for _, c := range n.Content {
				walk(c, path, key, d)
			}
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				k, v := n.Content[i], n.Content[i+1]
				p := strings.TrimPrefix(path+"."+k.Value, ".")
				if field != "" && k.Line == line && k.Value == field || value(v) {
					out = append(out, yamlNode{p, k.Value, d + 1})
				}
				walk(v, p, k.Value, d+1)
			}
		case yaml.SequenceNode:
			for i, c := range n.Content {
				p := fmt.Sprintf("%s[%d]", path, i)
				if value(c) {
					out = append(out, yamlNode{p, key, d + 1})
				}
				walk(c, p, key, d+1)
			}
		}
	}
	walk(n, "", "", 0)
	return out
}

// nullEntries reports the empty entries of lists ("- " with nothing, or
// null), which the decoder would drop, shifting the indexes that later
// errors name.
func nullEntries(n *yaml.Node, path string) []error {
	var out []error
	switch n.Kind {
	case yaml.DocumentNode:
		for _, c := range n.Content {
			out = append(out, nullEntries(c, path)...)
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			out = append(out, nullEntries(n.Content[i+1], strings.TrimPrefix(path+"."+n.Content[i].Value, "."))...)
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			p := fmt.Sprintf("%s[%d]", path, i)
			if c.Kind == yaml.ScalarNode && c.Tag == "!!null" {
				out = append(out, fmt.Errorf("%s: empty entry (line %d)", p, c.Line))
				continue
			}
			out = append(out, nullEntries(c, p)...)
		}
	}
	return out
}

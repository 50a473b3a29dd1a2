package topology

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// yamlErrLine matches one of a *yaml.TypeError's messages: "line N: ...",
// with the field of an unknown-field error.
var yamlErrLine = regexp.MustCompile(`^line (\d+): (?:field (\S+) not found in type \S+|(.*))$`)

// yamlErrValue is the value a "cannot unmarshal !!str `x` into int" names.
var yamlErrValue = regexp.MustCompile("`([^`]*)`")

// yamlErrKind is the node kind a "cannot unmarshal !!map into ..." names.
var yamlErrKind = regexp.MustCompile(`^cannot unmarshal !!(map|seq|str|int|bool|float|null) `)

// namedYAMLErrors rewrites the decoder's "line N: ..." errors to name the
// field path, as validation errors do: "namespaces[0].routez: unknown
// field (line 4)". data is the document the errors are about.
func namedYAMLErrors(data []byte, err error) error {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return err
	}
	var root yaml.Node
	if yaml.Unmarshal(data, &root) != nil {
		return err
	}
	var out []error
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
		path, ok := nodePath(&root, line, field, match, "")
		if !ok {
			out = append(out, errors.New(msg))
			continue
		}
		out = append(out, fmt.Errorf("%s: %s (line %d)", path, what, line))
	}
	return errors.Join(out...)
}

// goTypeNames says what the decoder's Go types stand for in the file.
var goTypeNames = strings.NewReplacer(
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

// nodePath finds, under n, the mapping key named field on line, or with
// field "" the value that match accepts, and returns its path. A line in
// flow style ({a: 1, b: [x]}) holds several nodes; of those that match,
// the deepest is the one the decoder means, as it reports the innermost
// node it could not decode.
func nodePath(n *yaml.Node, line int, field string, match func(*yaml.Node) bool, path string) (string, bool) {
	best, depth := "", -1
	var walk func(n *yaml.Node, path string, d int)
	found := func(p string, d int) {
		if d > depth {
			best, depth = p, d
		}
	}
	value := func(v *yaml.Node) bool { return field == "" && match(v) }
	walk = func(n *yaml.Node, path string, d int) {
		switch n.Kind {
		case yaml.DocumentNode:
			for _, c := range n.Content {
				walk(c, path, d)
			}
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				k, v := n.Content[i], n.Content[i+1]
				p := strings.TrimPrefix(path+"."+k.Value, ".")
				if field != "" && k.Line == line && k.Value == field || value(v) {
					found(p, d+1)
				}
				walk(v, p, d+1)
			}
		case yaml.SequenceNode:
			for i, c := range n.Content {
				p := fmt.Sprintf("%s[%d]", path, i)
				if value(c) {
					found(p, d+1)
				}
				walk(c, p, d+1)
			}
		}
	}
	walk(n, path, 0)
	return best, depth >= 0
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

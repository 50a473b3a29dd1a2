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
		field, what, value := m[2], "unknown field", ""
		if field == "" {
			what = m[3]
			if v := yamlErrValue.FindStringSubmatch(what); v != nil {
				value = v[1]
			}
		}
		path, ok := nodePath(&root, line, field, value, "")
		if !ok && value != "" {
			path, ok = nodePath(&root, line, "", "", "")
		}
		if !ok {
			out = append(out, errors.New(msg))
			continue
		}
		out = append(out, fmt.Errorf("%s: %s (line %d)", path, what, line))
	}
	return errors.Join(out...)
}

// nodePath finds, under n, the mapping key named field on line, or with
// field "" the scalar on line whose value is value (any, for ""), and
// returns its path. A line in flow style ({a: 1, b: x}) holds several.
func nodePath(n *yaml.Node, line int, field, value, path string) (string, bool) {
	scalar := func(v *yaml.Node) bool {
		return field == "" && v.Line == line && v.Kind == yaml.ScalarNode && (value == "" || v.Value == value)
	}
	switch n.Kind {
	case yaml.DocumentNode:
		for _, c := range n.Content {
			if p, ok := nodePath(c, line, field, value, path); ok {
				return p, true
			}
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			p := strings.TrimPrefix(path+"."+k.Value, ".")
			if field != "" && k.Line == line && k.Value == field || scalar(v) {
				return p, true
			}
			if q, ok := nodePath(v, line, field, value, p); ok {
				return q, true
			}
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			p := fmt.Sprintf("%s[%d]", path, i)
			if scalar(c) {
				return p, true
			}
			if q, ok := nodePath(c, line, field, value, p); ok {
				return q, true
			}
		}
	}
	return "", false
}

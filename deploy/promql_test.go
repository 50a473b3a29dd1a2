package deploy

import (
	"fmt"
	"slices"
	"strings"
)

// selector is one metric reference in a PromQL expression, with the label
// names its matchers use.
type selector struct {
	Metric string
	Labels []string
}

// exprRefs is what an expression refers to: metric selectors and the label
// names of its by/without/on/ignoring/group_* clauses.
type exprRefs struct {
	Selectors []selector
	Grouping  []string
}

// keywords that look like identifiers but name no metric.
var promqlKeywords = map[string]bool{
	"and": true, "or": true, "unless": true, "bool": true, "offset": true,
	"inf": true, "nan": true, "start": true, "end": true,
	// Aggregation operators, which may be followed by a grouping clause
	// before their parenthesis.
	"sum": true, "min": true, "max": true, "avg": true, "group": true,
	"stddev": true, "stdvar": true, "count": true, "count_values": true,
	"bottomk": true, "topk": true, "quantile": true, "limitk": true,
	"limit_ratio": true,
}

// groupingKeywords take a parenthesised list of label names.
var groupingKeywords = map[string]bool{
	"by": true, "without": true, "on": true, "ignoring": true,
	"group_left": true, "group_right": true,
}

// parsePromQL finds the metrics and labels an expression uses. It is a
// lexer, not a parser: enough for the rules and dashboard queries here, and
// strict where it matters (an unterminated string, brace or bracket is an
// error). Whether the expression is valid PromQL is promtool's and a real
// Prometheus's job.
func parsePromQL(expr string) (exprRefs, error) {
	var refs exprRefs
	s := expr
	i := 0
	isIdentStart := func(c byte) bool { return c == '_' || c == ':' || (c|0x20 >= 'a' && c|0x20 <= 'z') }
	isIdent := func(c byte) bool { return isIdentStart(c) || (c >= '0' && c <= '9') }
	skipSpace := func(j int) int {
		for j < len(s) && strings.IndexByte(" \t\r\n", s[j]) >= 0 {
			j++
		}
		return j
	}
	// skipString returns the index after the string literal starting at j.
	skipString := func(j int) (int, error) {
		q := s[j]
		for k := j + 1; k < len(s); k++ {
			if s[k] == '\\' && q != '`' {
				k++
				continue
			}
			if s[k] == q {
				return k + 1, nil
			}
		}
		return 0, fmt.Errorf("unterminated string at offset %d", j)
	}
	// matchers parses {name op "value", ...} starting at j and returns the
	// label names and the index after the closing brace.
	matchers := func(j int) ([]string, int, error) {
		var names []string
		j++
		for {
			j = skipSpace(j)
			if j >= len(s) {
				return nil, 0, fmt.Errorf("unterminated { at offset %d", j)
			}
			switch c := s[j]; {
			case c == '}':
				return names, j + 1, nil
			case c == ',':
				j++
			case c == '"' || c == '\'' || c == '`':
				var err error
				if j, err = skipString(j); err != nil {
					return nil, 0, err
				}
			case isIdentStart(c):
				k := j
				for k < len(s) && isIdent(s[k]) {
					k++
				}
				names = append(names, s[j:k])
				j = k
			case strings.IndexByte("=!~", c) >= 0:
				j++
			default:
				return nil, 0, fmt.Errorf("unexpected %q in label matchers at offset %d", c, j)
			}
		}
	}
	for i < len(s) {
		c := s[i]
		switch {
		case c == '"' || c == '\'' || c == '`':
			var err error
			if i, err = skipString(i); err != nil {
				return refs, err
			}
		case c == '[':
			end := strings.IndexByte(s[i:], ']')
			if end < 0 {
				return refs, fmt.Errorf("unterminated [ at offset %d", i)
			}
			i += end + 1
		case c == '{':
			// A selector without a metric name, e.g. {__name__=~"..."}.
			names, next, err := matchers(i)
			if err != nil {
				return refs, err
			}
			refs.Selectors = append(refs.Selectors, selector{Labels: names})
			i = next
		case c == '$':
			// A Grafana variable outside a string ($__range inside [] is
			// already skipped).
			i++
			for i < len(s) && isIdent(s[i]) {
				i++
			}
		case c >= '0' && c <= '9' || c == '.':
			for i < len(s) && (isIdent(s[i]) || s[i] == '.') {
				i++
			}
		case isIdentStart(c):
			j := i
			for j < len(s) && isIdent(s[j]) {
				j++
			}
			word := s[i:j]
			next := skipSpace(j)
			switch {
			case groupingKeywords[strings.ToLower(word)]:
				if next < len(s) && s[next] == '(' {
					end := strings.IndexByte(s[next:], ')')
					if end < 0 {
						return refs, fmt.Errorf("unterminated %s( at offset %d", word, next)
					}
					for _, l := range strings.Split(s[next+1:next+end], ",") {
						if l = strings.TrimSpace(l); l != "" {
							refs.Grouping = append(refs.Grouping, l)
						}
					}
					j = next + end + 1
				}
			case promqlKeywords[strings.ToLower(word)]:
			case next < len(s) && s[next] == '(':
				// A function or aggregation operator.
			default:
				sel := selector{Metric: word}
				if next < len(s) && s[next] == '{' {
					names, after, err := matchers(next)
					if err != nil {
						return refs, err
					}
					sel.Labels = names
					j = after
				}
				refs.Selectors = append(refs.Selectors, sel)
			}
			i = j
		default:
			i++
		}
	}
	return refs, nil
}

// metrics returns the sorted, distinct metric names of refs.
func (r exprRefs) metrics() []string {
	var out []string
	for _, s := range r.Selectors {
		if s.Metric != "" && !slices.Contains(out, s.Metric) {
			out = append(out, s.Metric)
		}
	}
	slices.Sort(out)
	return out
}

package deploy

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

const grafanaDashboard = "grafana/nsflow.json"

// dashboard is the part of a Grafana dashboard the tests read; unknown
// fields are allowed, since Grafana's model is large.
type dashboard struct {
	Title         string  `json:"title"`
	UID           string  `json:"uid"`
	SchemaVersion int     `json:"schemaVersion"`
	Panels        []panel `json:"panels"`
	Templating    struct {
		List []struct {
			Name  string          `json:"name"`
			Type  string          `json:"type"`
			Query json.RawMessage `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

type panel struct {
	ID      int    `json:"id"`
	Type    string `json:"type"`
	Title   string `json:"title"`
	GridPos struct {
		H, W, X, Y int
	} `json:"gridPos"`
	Datasource *struct {
		Type string `json:"type"`
		UID  string `json:"uid"`
	} `json:"datasource"`
	Targets []struct {
		Expr  string `json:"expr"`
		RefID string `json:"refId"`
	} `json:"targets"`
	Panels []panel `json:"panels"`
}

func loadDashboard(t *testing.T) dashboard {
	t.Helper()
	var d dashboard
	if err := json.Unmarshal(readFile(t, grafanaDashboard), &d); err != nil {
		t.Fatalf("%s: %v", grafanaDashboard, err)
	}
	return d
}

// allPanels flattens rows.
func (d dashboard) allPanels() []panel {
	var out []panel
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			out = append(out, p)
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	return out
}

var labelValuesRE = regexp.MustCompile(`^label_values\((.+),\s*([a-zA-Z_][a-zA-Z0-9_]*)\)$`)

// dashboardQueries returns every PromQL expression of the dashboard, keyed
// by where it is, with template variable queries label_values(expr, label)
// turned into their expression and the label checked by checkRefs.
func dashboardQueries(t *testing.T, d dashboard) map[string]exprRefs {
	t.Helper()
	out := map[string]exprRefs{}
	for _, p := range d.allPanels() {
		for _, tg := range p.Targets {
			where := fmt.Sprintf("panel %q target %s", p.Title, tg.RefID)
			refs, err := parsePromQL(tg.Expr)
			if err != nil {
				t.Errorf("%s: %v", where, err)
			}
			out[where] = refs
		}
	}
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		var q struct {
			Query string `json:"query"`
		}
		if err := json.Unmarshal(v.Query, &q); err != nil {
			t.Errorf("variable %s: %v", v.Name, err)
			continue
		}
		m := labelValuesRE.FindStringSubmatch(q.Query)
		if m == nil {
			t.Errorf("variable %s: query %q is not label_values(expr, label)", v.Name, q.Query)
			continue
		}
		refs, err := parsePromQL(m[1])
		if err != nil {
			t.Errorf("variable %s: %v", v.Name, err)
		}
		refs.Grouping = append(refs.Grouping, m[2])
		out["variable "+v.Name] = refs
	}
	return out
}

// dashboardKeys are the top-level keys of a Grafana dashboard model.
var dashboardKeys = map[string]bool{
	"annotations": true, "description": true, "editable": true, "fiscalYearStartMonth": true,
	"graphTooltip": true, "id": true, "links": true, "liveNow": true, "panels": true,
	"refresh": true, "schemaVersion": true, "tags": true, "templating": true, "time": true,
	"timepicker": true, "timezone": true, "title": true, "uid": true, "version": true, "weekStart": true,
}

func TestDashboardStructure(t *testing.T) {
	data := readFile(t, grafanaDashboard)
	if !json.Valid(data) {
		t.Fatal("not valid JSON")
	}
	// A misspelt top-level key is silently ignored by Grafana.
	var top map[string]json.RawMessage
	if err := json.Unmarshal(data, &top); err != nil {
		t.Fatal(err)
	}
	for k := range top {
		if !dashboardKeys[k] {
			t.Errorf("unknown top-level key %q", k)
		}
	}
	d := loadDashboard(t)
	if d.Title == "" || d.UID == "" || d.SchemaVersion < 36 {
		t.Errorf("title %q, uid %q, schemaVersion %d: want a title, a uid and schemaVersion >= 36",
			d.Title, d.UID, d.SchemaVersion)
	}
	vars := map[string]bool{}
	for _, v := range d.Templating.List {
		vars[v.Name] = true
	}
	for _, want := range []string{"datasource", "instance"} {
		if !vars[want] {
			t.Errorf("no template variable %q", want)
		}
	}
	ids := map[int]string{}
	titles := map[string]bool{}
	for _, p := range d.allPanels() {
		if other, dup := ids[p.ID]; dup {
			t.Errorf("panel id %d used by %q and %q", p.ID, other, p.Title)
		}
		ids[p.ID] = p.Title
		titles[p.Title] = true
		if p.GridPos.W <= 0 || p.GridPos.H <= 0 || p.GridPos.X+p.GridPos.W > 24 {
			t.Errorf("panel %q: gridPos %+v outside the 24-column grid", p.Title, p.GridPos)
		}
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q: datasource must be the ${datasource} variable", p.Title)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			if strings.TrimSpace(tg.Expr) == "" {
				t.Errorf("panel %q target %s: empty expression", p.Title, tg.RefID)
			}
		}
	}
	// What the issue asks the dashboard to show.
	for _, want := range []string{
		"Namespace matrix (bytes/s)", "Top senders", "Top receivers",
		"Rates per destination port", "Isolation violations", "Agents up",
	} {
		if !titles[want] {
			t.Errorf("no panel %q", want)
		}
	}
}

func TestDashboardUsesContractMetrics(t *testing.T) {
	for where, refs := range dashboardQueries(t, loadDashboard(t)) {
		if len(refs.metrics()) == 0 {
			t.Errorf("%s: uses no metric", where)
		}
		for _, p := range checkRefs(agentMetrics, refs) {
			t.Errorf("%s: %s", where, p)
		}
	}
}

// grafanaVars stands in for the dashboard's variables so that promtool
// can parse its queries.
var grafanaVars = strings.NewReplacer(
	"$__rate_interval", "1m", "$__range", "1h", "$__interval", "1m",
	"$instance", ".*", "$netns", ".*",
)

// TestDashboardQueriesAreValidPromQL has promtool parse every panel query,
// written as recording rules of a throwaway rule file.
func TestDashboardQueriesAreValidPromQL(t *testing.T) {
	promtool := requireTool(t, "promtool", "prometheus")
	var b strings.Builder
	b.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	n := 0
	for _, p := range loadDashboard(t).allPanels() {
		for _, tg := range p.Targets {
			expr := grafanaVars.Replace(tg.Expr)
			if strings.Contains(expr, "$") {
				t.Errorf("panel %q: unknown variable in %q", p.Title, tg.Expr)
			}
			q, _ := json.Marshal(expr) // a JSON string is a YAML string
			fmt.Fprintf(&b, "      - record: dashboard:query%d\n        expr: %s\n", n, q)
			n++
		}
	}
	file := filepath.Join(t.TempDir(), "dashboard.rules.yml")
	if err := os.WriteFile(file, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	out := run(t, promtool, "check", "rules", file)
	if !strings.Contains(out, fmt.Sprintf("SUCCESS: %d rules found", n)) {
		t.Errorf("promtool:\n%s", out)
	}
}

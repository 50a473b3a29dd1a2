package deploy

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
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

// rangeVars stand in for the dashboard's variables with a 10-minute
// range, for panels evaluated on test series at 20m: the range is
// [10m, 20m].
var rangeVars = strings.NewReplacer(
	"$__rate_interval", "1m", "$__range", "10m", "$__interval", "1m",
	"$instance", ".*", "$netns", ".*",
)

// The stat panels that count what happened in the selected range must
// count a series whose first sample is already non-zero, as the agent
// exports them: a pair's violation series is created with the pair's
// first count, and the attach errors of an agent's start-up can come
// before its first scrape. Counts that an agent restored after a restart
// (state file, pinned maps) are not new. promtool evaluates each panel's
// query at 20m, the end of a 10-minute range, on such series.
func TestDashboardCountsFirstSamples(t *testing.T) {
	promtool := requireTool(t, "promtool", "prometheus")
	const viol = "nsflow_isolation_violation_packets_total"
	tests := []struct {
		panel  string
		series [][2]string // series, values (1m apart from 0m)
		want   float64
	}{
		{"Violating packets", [][2]string{
			{`up{job="nsflow",instance="h1:9995"}`, "1x25"},
			{`nsflow_scrape_collector_success{job="nsflow",instance="h1:9995",collector="interface"}`, "1x25"},
			// 40 packets at once, at 12m: all 40 count.
			{viol + `{job="nsflow",instance="h1:9995",src_netns="web",dst_netns="db"}`, "_x12 40x10"},
			// From 3 before the range to 10 in it: 7.
			{viol + `{job="nsflow",instance="h1:9995",src_netns="web",dst_netns="cache"}`, "3x14 10x10"},
			// Prometheus starts watching an agent with a restored count.
			{`up{job="nsflow",instance="h2:9995"}`, "_x15 1x10"},
			{`nsflow_scrape_collector_success{job="nsflow",instance="h2:9995",collector="interface"}`, "_x15 1x10"},
			{viol + `{job="nsflow",instance="h2:9995",src_netns="web",dst_netns="db"}`, "_x15 40x10"},
			// An agent down for 14 minutes comes back with its count.
			{`up{job="nsflow",instance="h3:9995"}`, "1x3 0x13 1x8"},
			{`nsflow_scrape_collector_success{job="nsflow",instance="h3:9995",collector="interface"}`, "1x3 0x13 1x8"},
			{viol + `{job="nsflow",instance="h3:9995",src_netns="web",dst_netns="db"}`, "40x3 _x14 40x8"},
		}, 47},
		{"Violating packets", [][2]string{
			// No agent with --topology: 0, not "no data".
			{`up{job="nsflow",instance="h1:9995"}`, "1x25"},
			{`nsflow_scrape_collector_success{job="nsflow",instance="h1:9995",collector="interface"}`, "1x25"},
		}, 0},
		{"Attach errors", [][2]string{
			// An agent started at 12m whose start-up attaches failed twice.
			{`nsflow_attach_errors_total{job="nsflow",instance="h4:9995"}`, "_x12 2x10"},
			{`nsflow_attach_errors_total{job="nsflow",instance="h5:9995"}`, "0x25"},
			{`nsflow_attach_errors_total{job="nsflow",instance="h6:9995"}`, "1x14 3x10"},
		}, 4},
		{"Flow table overflow", [][2]string{
			{`up{job="nsflow",instance="h1:9995"}`, "1x25"},
			{`nsflow_scrape_collector_success{job="nsflow",instance="h1:9995",collector="interface"}`, "1x25"},
			{`nsflow_flow_table_overflow_packets_total{job="nsflow",instance="h1:9995"}`, "0x14 20x10"},
			// A restart with 500 packets in the pinned map: not new.
			{`up{job="nsflow",instance="h2:9995"}`, "_x15 1x10"},
			{`nsflow_scrape_collector_success{job="nsflow",instance="h2:9995",collector="interface"}`, "_x15 1x10"},
			{`nsflow_flow_table_overflow_packets_total{job="nsflow",instance="h2:9995"}`, "_x15 500x10"},
			// The flows collector failed from 5m to 12m; 30 packets
			// overflowed meanwhile.
			{`up{job="nsflow",instance="h3:9995"}`, "1x25"},
			{`nsflow_scrape_collector_success{job="nsflow",instance="h3:9995",collector="interface"}`, "1x25"},
			{`nsflow_flow_table_overflow_packets_total{job="nsflow",instance="h3:9995"}`, "0x4 _x8 30x12"},
		}, 50},
	}
	panels := map[string]panel{}
	for _, p := range loadDashboard(t).allPanels() {
		panels[p.Title] = p
	}
	type sample struct {
		Labels string  `yaml:"labels"`
		Value  float64 `yaml:"value"`
	}
	type exprTest struct {
		Expr       string   `yaml:"expr"`
		EvalTime   string   `yaml:"eval_time"`
		ExpSamples []sample `yaml:"exp_samples"`
	}
	type series struct {
		Series string `yaml:"series"`
		Values string `yaml:"values"`
	}
	type group struct {
		Interval    string     `yaml:"interval"`
		InputSeries []series   `yaml:"input_series"`
		ExprTests   []exprTest `yaml:"promql_expr_test"`
	}
	var groups []group
	for _, tt := range tests {
		p, ok := panels[tt.panel]
		if !ok || len(p.Targets) != 1 {
			t.Fatalf("no panel %q with one query", tt.panel)
		}
		g := group{Interval: "1m", ExprTests: []exprTest{{
			Expr: rangeVars.Replace(p.Targets[0].Expr), EvalTime: "20m",
			ExpSamples: []sample{{Labels: "{}", Value: tt.want}},
		}}}
		for _, s := range tt.series {
			g.InputSeries = append(g.InputSeries, series{s[0], s[1]})
		}
		groups = append(groups, g)
	}
	out, err := yaml.Marshal(map[string]any{"rule_files": []string{}, "evaluation_interval": "1m", "tests": groups})
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "dashboard.test.yml")
	if err := os.WriteFile(file, out, 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, promtool, "test", "rules", file)
}

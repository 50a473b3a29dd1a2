package deploy

import (
	"encoding/json"
	"fmt"
	"net/url"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/nsflow/nsflow/internal/promtest"
	"go.yaml.in/yaml/v3"
)

// promServer is a real Prometheus started by a test.
type promServer struct{ *promtest.Server }

// startPrometheus runs Prometheus with deploy/prometheus/prometheus.yml,
// changed only where a test must: the target is the agent under test, the
// scrape and rule intervals are 1s, and the rule file path is absolute.
// It is stopped at cleanup.
func startPrometheus(t *testing.T, bin, target string) *promServer {
	t.Helper()
	var cfg map[string]any
	if err := yaml.Unmarshal(readFile(t, promConfig), &cfg); err != nil {
		t.Fatal(err)
	}
	cfg["global"] = map[string]any{"scrape_interval": "1s", "evaluation_interval": "1s"}
	rules, err := filepath.Abs(promRules)
	if err != nil {
		t.Fatal(err)
	}
	cfg["rule_files"] = []string{rules}
	job := cfg["scrape_configs"].([]any)[0].(map[string]any)
	if job["job_name"] != "nsflow" {
		t.Fatalf("first scrape job is %v, want nsflow", job["job_name"])
	}
	job["static_configs"] = []any{map[string]any{"targets": []string{target}}}

	out, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &promServer{promtest.Start(t, bin, out)}
}

// waitAlert waits until alert name fires with the given labels, and
// returns its value.
func (p *promServer) waitAlert(name string, labels map[string]string, timeout time.Duration) (float64, error) {
	deadline := time.Now().Add(timeout)
	for {
		var data struct {
			Alerts []struct {
				Labels map[string]string `json:"labels"`
				State  string            `json:"state"`
				Value  string            `json:"value"`
			} `json:"alerts"`
		}
		err := p.API("/api/v1/alerts", nil, &data)
		if err == nil {
			for _, a := range data.Alerts {
				match := a.Labels["alertname"] == name && a.State == "firing"
				for k, v := range labels {
					match = match && a.Labels[k] == v
				}
				if match {
					return strconv.ParseFloat(a.Value, 64)
				}
			}
			err = fmt.Errorf("alerts now: %+v", data.Alerts)
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("%s %v did not fire within %v: %v", name, labels, timeout, err)
		}
		time.Sleep(time.Second)
	}
}

// values runs an instant query and returns the values of its samples
// (one for a scalar).
func (p *promServer) values(q string) ([]float64, error) {
	var data struct {
		ResultType string          `json:"resultType"`
		Result     json.RawMessage `json:"result"`
	}
	if err := p.API("/api/v1/query", url.Values{"query": {q}}, &data); err != nil {
		return nil, err
	}
	var pairs [][2]any
	switch data.ResultType {
	case "scalar":
		var v [2]any
		if err := json.Unmarshal(data.Result, &v); err != nil {
			return nil, err
		}
		pairs = append(pairs, v)
	case "vector":
		var vec []struct {
			Value [2]any `json:"value"`
		}
		if err := json.Unmarshal(data.Result, &vec); err != nil {
			return nil, err
		}
		for _, s := range vec {
			pairs = append(pairs, s.Value)
		}
	default:
		return nil, fmt.Errorf("%s: result type %s, want a vector or a scalar", q, data.ResultType)
	}
	var out []float64
	for _, v := range pairs {
		str, _ := v[1].(string)
		f, err := strconv.ParseFloat(str, 64)
		if err != nil {
			return nil, fmt.Errorf("%s: value %v: %w", q, v[1], err)
		}
		out = append(out, f)
	}
	return out, nil
}

// value runs an instant query that must return exactly one sample.
func (p *promServer) value(q string) (float64, error) {
	vs, err := p.values(q)
	if err != nil {
		return 0, err
	}
	if len(vs) != 1 {
		return 0, fmt.Errorf("%s: %d samples %v, want 1", q, len(vs), vs)
	}
	return vs[0], nil
}

// query runs an instant query and returns the number of series or
// samples in its result.
func (p *promServer) query(q string) (int, error) {
	var data struct {
		ResultType string          `json:"resultType"`
		Result     json.RawMessage `json:"result"`
	}
	if err := p.API("/api/v1/query", url.Values{"query": {q}}, &data); err != nil {
		return 0, err
	}
	if data.ResultType == "scalar" {
		return 1, nil
	}
	var series []json.RawMessage
	if err := json.Unmarshal(data.Result, &series); err != nil {
		return 0, err
	}
	return len(series), nil
}

// panelsWithData must show something while the demo runs with the rogue
// link; the others (overflow, failing collectors...) may rightly be empty.
var panelsWithData = []string{
	"Agents up", "Attached programs", "Attach errors", "Flow table fill",
	"Collector scrape duration", "Agent builds", "Isolation violations",
	"Violating packets", "Namespace matrix (bytes/s)", "Namespace matrix (packets/s)",
	"Flows between namespaces", "Top senders", "Top receivers", "Namespaces",
	"Interface receive rate by namespace", "Interface transmit rate by namespace",
	"Rates per destination port", "Packets per destination port",
	"Interface packet rates", "Top flows",
}

// checkDashboardOnPrometheus runs every dashboard query on a Prometheus
// that scrapes the live agent: each must be accepted, and the panels that
// must show data must get some. Template variables resolve to all values.
func checkDashboardOnPrometheus(t *testing.T, p *promServer) {
	t.Helper()
	d := loadDashboard(t)
	got := map[string]int{}
	for _, pn := range d.allPanels() {
		for _, tg := range pn.Targets {
			n, err := p.query(grafanaVars.Replace(tg.Expr))
			if err != nil {
				t.Errorf("panel %q: %v", pn.Title, err)
			}
			got[pn.Title] += n
		}
	}
	for _, title := range panelsWithData {
		if n, ok := got[title]; !ok {
			t.Errorf("no panel %q", title)
		} else if n == 0 {
			t.Errorf("panel %q shows no data on the live agent", title)
		}
	}
	// The variables' label_values queries find values.
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		var q struct {
			Query string `json:"query"`
		}
		json.Unmarshal(v.Query, &q)
		m := labelValuesRE.FindStringSubmatch(q.Query)
		if m == nil {
			continue // TestDashboardUsesContractMetrics reports it
		}
		var values []string
		if err := p.API("/api/v1/label/"+m[2]+"/values", url.Values{"match[]": {grafanaVars.Replace(m[1])}}, &values); err != nil {
			t.Errorf("variable %s: %v", v.Name, err)
		} else if len(values) == 0 {
			t.Errorf("variable %s: %s finds no values", v.Name, q.Query)
		}
	}
}

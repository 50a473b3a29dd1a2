package deploy

import (
	"bytes"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

const (
	promConfig    = "prometheus/prometheus.yml"
	promRules     = "prometheus/nsflow.rules.yml"
	promRulesTest = "prometheus/nsflow.rules.test.yml"
)

func TestPromtoolCheckConfig(t *testing.T) {
	promtool := requireTool(t, "promtool", "prometheus")
	out := run(t, promtool, "check", "config", promConfig)
	// The config must load the rules file, or the alerts never fire.
	if !strings.Contains(out, "1 rule files found") {
		t.Errorf("promtool found no rule file in %s:\n%s", promConfig, out)
	}
}

func TestPromtoolCheckRules(t *testing.T) {
	promtool := requireTool(t, "promtool", "prometheus")
	run(t, promtool, "check", "rules", promRules)
}

func TestPromtoolTestRules(t *testing.T) {
	promtool := requireTool(t, "promtool", "prometheus")
	run(t, promtool, "test", "rules", promRulesTest)
}

// ruleFile is the part of a Prometheus rule file the tests read.
type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert  string            `yaml:"alert"`
			Record string            `yaml:"record"`
			Expr   string            `yaml:"expr"`
			For    string            `yaml:"for"`
			Labels map[string]string `yaml:"labels"`
			Annots map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

func loadRules(t *testing.T) ruleFile {
	t.Helper()
	var rf ruleFile
	dec := yaml.NewDecoder(bytes.NewReader(readFile(t, promRules)))
	dec.KnownFields(true)
	if err := dec.Decode(&rf); err != nil {
		t.Fatalf("%s: %v", promRules, err)
	}
	return rf
}

// ruleExprs returns each rule's expression keyed by alert or record name.
func ruleExprs(t *testing.T) map[string]string {
	out := map[string]string{}
	for _, g := range loadRules(t).Groups {
		for _, r := range g.Rules {
			out[r.Alert+r.Record] = r.Expr
		}
	}
	return out
}

// The issue names four alerts; each must exist, carry a severity and
// say what to do in words, and be covered by the promtool unit tests.
func TestRulesCoverRequiredAlerts(t *testing.T) {
	required := map[string]string{
		"NsflowIsolationViolation": "nsflow_isolation_violation_packets_total",
		"NsflowFlowTableOverflow":  "nsflow_flow_table_overflow_packets_total",
		"NsflowAttachFailures":     "nsflow_attach_errors_total",
		"NsflowAgentDown":          "up",
	}
	tests := string(readFile(t, promRulesTest))
	seen := map[string]bool{}
	for _, g := range loadRules(t).Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			seen[r.Alert] = true
			if s := r.Labels["severity"]; s != "critical" && s != "warning" {
				t.Errorf("%s: severity %q, want critical or warning", r.Alert, s)
			}
			if r.Annots["summary"] == "" || r.Annots["description"] == "" {
				t.Errorf("%s: needs a summary and a description annotation", r.Alert)
			}
			if !strings.Contains(tests, "alertname: "+r.Alert+"\n") {
				t.Errorf("%s: no promtool unit test in %s", r.Alert, promRulesTest)
			}
		}
	}
	exprs := ruleExprs(t)
	for alert, metric := range required {
		if !seen[alert] {
			t.Errorf("required alert %s is missing", alert)
			continue
		}
		refs, err := parsePromQL(exprs[alert])
		if err != nil {
			t.Fatalf("%s: %v", alert, err)
		}
		found := false
		for _, m := range refs.metrics() {
			found = found || m == metric
		}
		if !found {
			t.Errorf("%s: expression %q does not use %s", alert, exprs[alert], metric)
		}
	}
}

func TestRulesUseContractMetrics(t *testing.T) {
	for name, expr := range ruleExprs(t) {
		refs, err := parsePromQL(expr)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		for _, p := range checkRefs(agentMetrics, refs) {
			t.Errorf("%s: %s", name, p)
		}
	}
}

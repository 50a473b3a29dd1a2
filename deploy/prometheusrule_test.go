package deploy

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// prometheusRuleHeader is what prometheusrule.yaml holds before the rules.
const prometheusRuleHeader = `# For the Prometheus Operator: the alerting rules of
# deploy/prometheus/nsflow.rules.yml, whose groups are the spec below as
# they are there. Generated: NSFLOW_UPDATE=1 go test ./deploy -run
# TestPrometheusRuleIsTheRulesFile. A Prometheus whose ruleSelector wants a
# label (kube-prometheus-stack: release=<its release>) gets it from an
# overlay (kustomize labels), as the ServiceMonitor does.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: nsflow
  labels:
    app.kubernetes.io/name: nsflow
    app.kubernetes.io/component: agent
spec:
`

// TestPrometheusRuleIsTheRulesFile: the PrometheusRule carries the rules
// file's groups unchanged, comments and all, so both routes alert alike.
func TestPrometheusRuleIsTheRulesFile(t *testing.T) {
	rules := readFile(t, filepath.Join("prometheus", "nsflow.rules.yml"))
	var b strings.Builder
	b.WriteString(prometheusRuleHeader)
	for _, line := range strings.SplitAfter(string(rules), "\n") {
		if strings.HasPrefix(line, "#") || line == "" {
			continue // the file's own header comments
		}
		if line != "\n" {
			b.WriteString("  ")
		}
		b.WriteString(line)
	}
	want := []byte(b.String())
	path := filepath.Join(kubeDir, "prometheusrule.yaml")
	if os.Getenv("NSFLOW_UPDATE") != "" {
		if err := os.WriteFile(path, want, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if got := readFile(t, path); !bytes.Equal(got, want) {
		t.Errorf("%s is not the rules file's groups: NSFLOW_UPDATE=1 go test ./deploy -run TestPrometheusRuleIsTheRulesFile", path)
	}
	// The same groups, read as YAML: the indentation kept their meaning.
	var file struct {
		Groups []any `json:"groups"`
	}
	if err := yaml.Unmarshal(rules, &file); err != nil {
		t.Fatal(err)
	}
	m := loadManifests(t)
	if len(file.Groups) == 0 || !reflect.DeepEqual(m.prometheusRule.Spec.Groups, file.Groups) {
		t.Error("the PrometheusRule's groups differ from the rules file's")
	}
}

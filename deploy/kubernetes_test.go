package deploy

import (
	"bytes"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/nsflow/nsflow/agent"
	"github.com/nsflow/nsflow/bpf"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"
)

const kubeDir = "kubernetes"

// agentCapabilities are the capabilities the agent needs, and the only ones
// the deployments grant: BPF and PERFMON to load programs, NET_ADMIN to
// attach them, SYS_ADMIN for setns, SYS_PTRACE to open other users'
// /proc/PID/ns/net.
var agentCapabilities = []string{"BPF", "NET_ADMIN", "PERFMON", "SYS_ADMIN", "SYS_PTRACE"}

// kustomization is the part of a kustomization.yaml used here, decoded
// strictly so that a misspelt key fails.
type kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Namespace  string   `json:"namespace"`
	Resources  []string `json:"resources"`
	Images     []struct {
		Name    string `json:"name"`
		NewName string `json:"newName,omitempty"`
		NewTag  string `json:"newTag,omitempty"`
		Digest  string `json:"digest,omitempty"`
	} `json:"images"`
}

// serviceMonitor is the Prometheus Operator CRD (monitoring.coreos.com/v1),
// reduced to the fields nsflow sets; strict decoding rejects any other.
type serviceMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		JobLabel  string               `json:"jobLabel"`
		Selector  metav1.LabelSelector `json:"selector"`
		Endpoints []struct {
			Port          string `json:"port"`
			Path          string `json:"path"`
			Interval      string `json:"interval"`
			ScrapeTimeout string `json:"scrapeTimeout"`
			Relabelings   []struct {
				SourceLabels []string `json:"sourceLabels"`
				TargetLabel  string   `json:"targetLabel"`
				Action       string   `json:"action"`
				Regex        string   `json:"regex"`
			} `json:"relabelings"`
		} `json:"endpoints"`
	} `json:"spec"`
}

// prometheusRule is the Prometheus Operator CRD (monitoring.coreos.com/v1)
// that carries the alerting rules; its spec is checked against the rules
// file as text (TestPrometheusRuleIsTheRulesFile).
type prometheusRule struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		Groups []any `json:"groups"`
	} `json:"spec"`
}

// manifests holds the decoded objects of deploy/kubernetes.
type manifests struct {
	kustomization  kustomization
	namespace      corev1.Namespace
	serviceAccount corev1.ServiceAccount
	daemonSet      appsv1.DaemonSet
	service        corev1.Service
	serviceMonitor serviceMonitor
	prometheusRule prometheusRule
	topology       corev1.ConfigMap
}

// loadManifests decodes every resource of the kustomization strictly into
// its API type, and checks that no manifest in the directory is left out.
func loadManifests(t *testing.T) *manifests {
	t.Helper()
	m := &manifests{}
	strict(t, filepath.Join(kubeDir, "kustomization.yaml"), &m.kustomization)
	if m.kustomization.Kind != "Kustomization" {
		t.Fatalf("kustomization.yaml: kind %q", m.kustomization.Kind)
	}
	files, err := filepath.Glob(filepath.Join(kubeDir, "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if base := filepath.Base(f); base != "kustomization.yaml" && !slices.Contains(m.kustomization.Resources, base) {
			t.Errorf("%s is not listed in kustomization.yaml resources", f)
		}
	}
	targets := map[string]any{
		"Namespace":      &m.namespace,
		"ServiceAccount": &m.serviceAccount,
		"DaemonSet":      &m.daemonSet,
		"Service":        &m.service,
		"ServiceMonitor": &m.serviceMonitor,
		"PrometheusRule": &m.prometheusRule,
		"ConfigMap":      &m.topology,
	}
	seen := map[string]string{}
	for _, r := range m.kustomization.Resources {
		path := filepath.Join(kubeDir, r)
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal(readFile(t, path), &tm); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		obj, ok := targets[tm.Kind]
		if !ok {
			t.Fatalf("%s: unexpected kind %q", path, tm.Kind)
		}
		if prev, dup := seen[tm.Kind]; dup {
			t.Fatalf("%s: a second %s (first in %s)", path, tm.Kind, prev)
		}
		seen[tm.Kind] = path
		strict(t, path, obj)
	}
	for kind := range targets {
		if seen[kind] == "" {
			t.Errorf("no %s among the kustomization's resources", kind)
		}
	}
	return m
}

// strict decodes one YAML document into obj, failing on unknown or
// duplicate fields and on a second document.
func strict(t *testing.T, path string, obj any) {
	t.Helper()
	data := readFile(t, path)
	if bytes.Contains(data, []byte("\n---")) {
		t.Fatalf("%s: holds more than one document; keep one object per file", path)
	}
	if err := yaml.UnmarshalStrict(data, obj); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

func TestKubernetesManifests(t *testing.T) {
	m := loadManifests(t)
	ds := m.daemonSet
	pod := ds.Spec.Template.Spec

	if m.kustomization.Namespace == "" || m.kustomization.Namespace != m.namespace.Name {
		t.Errorf("kustomization namespace %q, Namespace object %q: want the same", m.kustomization.Namespace, m.namespace.Name)
	}
	if m.namespace.Labels["pod-security.kubernetes.io/enforce"] != "privileged" {
		t.Error("namespace: pod security must admit host namespaces (enforce: privileged)")
	}

	// The selector must match the pods it manages, or the API rejects it.
	sel, err := metav1.LabelSelectorAsSelector(ds.Spec.Selector)
	if err != nil || sel.Empty() {
		t.Fatalf("daemonset selector %v: %v", ds.Spec.Selector, err)
	}
	podLabels := labels.Set(ds.Spec.Template.Labels)
	if !sel.Matches(podLabels) {
		t.Errorf("daemonset selector %s does not match template labels %v", sel, podLabels)
	}

	if !pod.HostNetwork || !pod.HostPID {
		t.Errorf("hostNetwork %v, hostPID %v: the agent needs both", pod.HostNetwork, pod.HostPID)
	}
	if pod.DNSPolicy != corev1.DNSClusterFirstWithHostNet {
		t.Errorf("dnsPolicy %q: want ClusterFirstWithHostNet with hostNetwork", pod.DNSPolicy)
	}
	if pod.ServiceAccountName != m.serviceAccount.Name {
		t.Errorf("serviceAccountName %q, ServiceAccount %q", pod.ServiceAccountName, m.serviceAccount.Name)
	}
	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
		t.Error("the agent never calls the API: automountServiceAccountToken must be false")
	}
	if !slices.ContainsFunc(pod.Tolerations, func(t corev1.Toleration) bool { return t.Operator == corev1.TolerationOpExists && t.Key == "" }) {
		t.Error("the agent must run on every node: tolerate all taints")
	}

	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(pod.Containers))
	}
	c := pod.Containers[0]
	if len(c.Args) == 0 || c.Args[0] != "agent" {
		t.Errorf("container args %v: want the agent subcommand first", c.Args)
	}
	listen := flagValue(c.Args, "--web.listen-address")
	path := flagValue(c.Args, "--web.telemetry-path")
	if path == "" {
		path = "/metrics"
	}
	var metricsPort *corev1.ContainerPort
	for i := range c.Ports {
		if c.Ports[i].Name == "metrics" {
			metricsPort = &c.Ports[i]
		}
	}
	if metricsPort == nil {
		t.Fatal("no container port named metrics")
	}
	if !strings.HasSuffix(listen, ":"+strconv.Itoa(int(metricsPort.ContainerPort))) {
		t.Errorf("--web.listen-address %q does not serve the metrics port %d", listen, metricsPort.ContainerPort)
	}

	// GOMEMLIMIT is the soft limit under limits.memory: the runtime
	// collects harder before the kernel would kill the pod.
	limit := c.Resources.Limits.Memory()
	if i := slices.IndexFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == "GOMEMLIMIT" }); i < 0 || limit.IsZero() {
		t.Error("want limits.memory and GOMEMLIMIT under it")
	} else if soft, err := resource.ParseQuantity(strings.TrimSuffix(c.Env[i].Value, "B")); err != nil {
		t.Errorf("GOMEMLIMIT %q: %v", c.Env[i].Value, err)
	} else if r := float64(soft.Value()) / float64(limit.Value()); r < 0.8 || r > 0.95 {
		t.Errorf("GOMEMLIMIT %s is %.2f of limits.memory %s: want 0.8 to 0.95", c.Env[i].Value, r, limit)
	}

	// Security: the named capabilities, not privileged.
	sc := c.SecurityContext
	if sc == nil {
		t.Fatal("no securityContext")
	}
	if sc.Privileged != nil && *sc.Privileged {
		t.Error("privileged: true; grant the named capabilities instead")
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Error("allowPrivilegeEscalation must be false")
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Error("readOnlyRootFilesystem must be true")
	}
	if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Error("capabilities must drop ALL")
	} else {
		var add []string
		for _, c := range sc.Capabilities.Add {
			add = append(add, string(c))
		}
		slices.Sort(add)
		if !slices.Equal(add, agentCapabilities) {
			t.Errorf("capabilities add %v, want exactly %v", add, agentCapabilities)
		}
	}

	// Mounts: bpffs for the pins, /run/netns for named namespaces, both
	// from the host with HostToContainer propagation so later mounts show.
	volumes := map[string]*corev1.HostPathVolumeSource{}
	for _, v := range pod.Volumes {
		volumes[v.Name] = v.HostPath
	}
	// The state file's directory is the host's, writable, so that the
	// state outlives a pod restart as the pins do; the root file system
	// is read-only.
	stateDir := filepath.Dir(agent.DefaultStateFile)
	if i := slices.IndexFunc(c.VolumeMounts, func(vm corev1.VolumeMount) bool { return vm.MountPath == stateDir }); i < 0 {
		t.Errorf("no volume mounted at %s (the agent's state file)", stateDir)
	} else if vm := c.VolumeMounts[i]; vm.ReadOnly || volumes[vm.Name] == nil || volumes[vm.Name].Path != stateDir {
		t.Errorf("%s: want the host's %s, writable", stateDir, stateDir)
	}
	if filepath.Dir(bpf.DefaultPinPath) != "/sys/fs/bpf" {
		t.Errorf("the pins moved to %s: mount its bpffs", bpf.DefaultPinPath)
	}
	for _, want := range []struct{ mountPath, hostPath string }{
		{"/sys/fs/bpf", "/sys/fs/bpf"},
		{"/run/netns", "/run/netns"},
	} {
		i := slices.IndexFunc(c.VolumeMounts, func(vm corev1.VolumeMount) bool { return vm.MountPath == want.mountPath })
		if i < 0 {
			t.Errorf("no volume mounted at %s", want.mountPath)
			continue
		}
		vm := c.VolumeMounts[i]
		if hp := volumes[vm.Name]; hp == nil || hp.Path != want.hostPath {
			t.Errorf("%s: volume %q is not the host path %s", want.mountPath, vm.Name, want.hostPath)
		}
		if got := ptr.Deref(vm.MountPropagation, "unset"); got != corev1.MountPropagationHostToContainer {
			t.Errorf("%s: mountPropagation %s, want HostToContainer", want.mountPath, got)
		}
	}

	// Probes on the agent's health endpoints, on the metrics port.
	for name, p := range map[string]*corev1.Probe{"liveness": c.LivenessProbe, "readiness": c.ReadinessProbe} {
		if p == nil || p.HTTPGet == nil {
			t.Errorf("no HTTP %s probe", name)
			continue
		}
		if p.HTTPGet.Port != intstr.FromString("metrics") {
			t.Errorf("%s probe port %v, want the metrics port", name, p.HTTPGet.Port.String())
		}
		if p.HTTPGet.Path == "" || p.HTTPGet.Path == path {
			t.Errorf("%s probe path %q: want a health endpoint, not the scrape", name, p.HTTPGet.Path)
		}
	}

	// The Service selects the agent pods and exposes the metrics port.
	if m.service.Spec.ClusterIP != corev1.ClusterIPNone {
		t.Errorf("service clusterIP %q: want None, every agent a target of its own", m.service.Spec.ClusterIP)
	}
	if len(m.service.Spec.Selector) == 0 || !labels.SelectorFromSet(m.service.Spec.Selector).Matches(podLabels) {
		t.Errorf("service selector %v does not select the agent pods %v", m.service.Spec.Selector, podLabels)
	}
	svcPort := ""
	for _, p := range m.service.Spec.Ports {
		if p.TargetPort == intstr.FromString("metrics") || p.TargetPort.IntValue() == int(metricsPort.ContainerPort) {
			svcPort = p.Name
		}
	}
	if svcPort == "" {
		t.Fatal("the service exposes no port targeting the metrics port")
	}

	// The ServiceMonitor selects the Service and scrapes the metrics path,
	// with job "nsflow" as the alerting rules expect.
	smSel, err := metav1.LabelSelectorAsSelector(&m.serviceMonitor.Spec.Selector)
	if err != nil || smSel.Empty() || !smSel.Matches(labels.Set(m.service.Labels)) {
		t.Errorf("servicemonitor selector %v does not select the service labels %v (%v)", smSel, m.service.Labels, err)
	}
	if job := m.service.Labels[m.serviceMonitor.Spec.JobLabel]; job != "nsflow" {
		t.Errorf("servicemonitor jobLabel %q gives job %q; the alerting rules use job=\"nsflow\"",
			m.serviceMonitor.Spec.JobLabel, job)
	}
	if len(m.serviceMonitor.Spec.Endpoints) != 1 {
		t.Fatalf("servicemonitor: %d endpoints, want 1", len(m.serviceMonitor.Spec.Endpoints))
	}
	ep := m.serviceMonitor.Spec.Endpoints[0]
	if ep.Port != svcPort || ep.Path != path {
		t.Errorf("servicemonitor endpoint port %q path %q, want %q %q", ep.Port, ep.Path, svcPort, path)
	}
	// Every node keeps one series identity (job, instance) across pod
	// replacements: the operator's per-pod target labels are dropped, or
	// the rules' matches on (job, instance) would find two series.
	var dropped []string
	for _, r := range ep.Relabelings {
		if r.Action == "labeldrop" {
			re := regexp.MustCompile("^(?:" + r.Regex + ")$")
			for _, l := range []string{"pod", "container", "endpoint", "service", "namespace"} {
				if re.MatchString(l) {
					dropped = append(dropped, l)
				}
			}
		}
	}
	if len(dropped) != 5 {
		t.Errorf("servicemonitor drops the target labels %v, want pod, container, endpoint, service and namespace", dropped)
	}

	// The image the kustomization pins is the one the DaemonSet runs.
	image, _, _ := strings.Cut(c.Image, ":")
	if len(m.kustomization.Images) != 1 || m.kustomization.Images[0].Name != image {
		t.Errorf("kustomization images %+v do not name the container image %q", m.kustomization.Images, image)
	}
}

// flagValue returns the value of --name=value or --name value in args.
func flagValue(args []string, name string) string {
	for i, a := range args {
		if v, ok := strings.CutPrefix(a, name+"="); ok {
			return v
		}
		if a == name && i+1 < len(args) {
			return args[i+1]
		}
	}
	return ""
}

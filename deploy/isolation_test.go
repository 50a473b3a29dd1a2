package deploy

import (
	"crypto/tls"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nsflow/nsflow/internal/testenv"
	"github.com/nsflow/nsflow/topology"
	"github.com/nsflow/nsflow/verify"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// The agent exports nsflow_isolation_violation_packets_total only with
// --topology FILE, which no deployment can pass by default (the file is the
// host's own). Each documents how to add it; these tests hold the three to
// one path and check that what they document works.

// topologyPath is where every deployment puts the host's topology file.
const topologyPath = "/etc/nsflow/topology.yaml"

// isolationLine is a line of daemonset.yaml to uncomment to judge
// isolation: "# LINE  # isolation".
var isolationLine = regexp.MustCompile(`(?m)^(\s*)# (.*\S)\s+# isolation$`)

// isolationDaemonSet decodes daemonset.yaml with its isolation lines
// uncommented, strictly.
func isolationDaemonSet(t *testing.T) appsv1.DaemonSet {
	t.Helper()
	src := readFile(t, filepath.Join(kubeDir, "daemonset.yaml"))
	if n := len(isolationLine.FindAll(src, -1)); n != 3 {
		t.Fatalf("daemonset.yaml: %d lines marked \"# isolation\", want 3 (the flag, the mount, the volume)", n)
	}
	var ds appsv1.DaemonSet
	if err := yaml.UnmarshalStrict(isolationLine.ReplaceAll(src, []byte("$1$2")), &ds); err != nil {
		t.Fatalf("daemonset.yaml with the isolation lines uncommented: %v", err)
	}
	return ds
}

// exampleTopology writes the ConfigMap's topology to a file and returns
// its path.
func exampleTopology(t *testing.T, m *manifests) string {
	t.Helper()
	data, ok := m.topology.Data[filepath.Base(topologyPath)]
	if !ok {
		t.Fatalf("ConfigMap %s has no key %s", m.topology.Name, filepath.Base(topologyPath))
	}
	p := filepath.Join(t.TempDir(), "topology.yaml")
	if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// Uncommenting the marked lines passes --topology, and mounts the
// ConfigMap where it points; the ConfigMap's example is a topology whose
// intent its wiring keeps. Nothing else of the DaemonSet changes.
func TestKubernetesIsolationOption(t *testing.T) {
	m := loadManifests(t)
	ds := isolationDaemonSet(t)
	pod := &ds.Spec.Template.Spec
	c := &pod.Containers[0]
	if got := flagValue(c.Args, "--topology"); got != topologyPath {
		t.Fatalf("--topology %q, want %s", got, topologyPath)
	}
	i := slices.IndexFunc(c.VolumeMounts, func(vm corev1.VolumeMount) bool { return vm.MountPath == filepath.Dir(topologyPath) })
	if i < 0 {
		t.Fatalf("nothing mounted at %s", filepath.Dir(topologyPath))
	}
	vm := c.VolumeMounts[i]
	j := slices.IndexFunc(pod.Volumes, func(v corev1.Volume) bool { return v.Name == vm.Name })
	if !vm.ReadOnly || j < 0 || pod.Volumes[j].ConfigMap == nil || pod.Volumes[j].ConfigMap.Name != m.topology.Name {
		t.Errorf("%s: mount %+v: want ConfigMap %s, read-only", filepath.Dir(topologyPath), vm, m.topology.Name)
	}
	spec, err := topology.Load(exampleTopology(t, m))
	if err != nil {
		t.Fatalf("the ConfigMap's topology: %v", err)
	}
	if err := verify.NewModel(spec).CheckIntent(); err != nil {
		t.Errorf("the ConfigMap's topology: %v", err)
	}

	c.Args = slices.DeleteFunc(c.Args, func(a string) bool { return strings.HasPrefix(a, "--topology") })
	c.VolumeMounts = slices.Delete(c.VolumeMounts, i, i+1)
	if j >= 0 {
		pod.Volumes = slices.Delete(pod.Volumes, j, j+1)
	}
	if !reflect.DeepEqual(ds, m.daemonSet) {
		t.Error("uncommenting the isolation lines changes more than the flag, the mount and the volume")
	}
}

// The agent runs with the DaemonSet's isolation arguments and the
// ConfigMap's topology.
func TestDaemonSetIsolationCommandLine(t *testing.T) {
	testenv.RequireBPFFS(t)
	m := loadManifests(t)
	c := isolationDaemonSet(t).Spec.Template.Spec.Containers[0]
	checkFlags(t, "daemonset args", c.Args, agentFlags(t))
	file := exampleTopology(t, m)
	args := slices.Clone(c.Args)
	for i, a := range args {
		if strings.HasPrefix(a, "--topology") {
			args[i] = "--topology=" + file
		}
	}
	addr := startAgent(t, args)
	get(t, &http.Client{Timeout: 5 * time.Second}, "http://"+addr+c.ReadinessProbe.HTTPGet.Path, "", "", http.StatusOK)
}

// The unit's commented ExecStart line names the same file, and the unit's
// command line with it added serves as before.
func TestSystemdIsolationOption(t *testing.T) {
	testenv.RequireBPFFS(t)
	line := regexp.MustCompile(`(?m)^#\s+(--topology=\S+)\s+\\$`).FindStringSubmatch(string(readFile(t, systemdUnit)))
	if line == nil {
		t.Fatalf("%s: no commented --topology line to add to ExecStart", systemdUnit)
	}
	if got := flagValue([]string{line[1]}, "--topology"); got != topologyPath {
		t.Errorf("the unit's --topology %q, want %s", got, topologyPath)
	}
	args := append(strings.Fields(loadUnit(t).get("Service.ExecStart"))[1:], line[1])
	checkFlags(t, "ExecStart with --topology", args, agentFlags(t))
	cfgFile, pool := exampleWebConfig(t)
	file := exampleTopology(t, loadManifests(t))
	for i, a := range args {
		switch {
		case strings.HasPrefix(a, "--web.config.file"):
			args[i] = "--web.config.file=" + cfgFile
		case strings.HasPrefix(a, "--topology"):
			args[i] = "--topology=" + file
		}
	}
	addr := startAgent(t, args)
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	get(t, client, "https://"+addr+"/metrics", "prometheus", "change-me", http.StatusOK)
}

// The Dockerfile's example mounts the file where its flag points.
func TestDockerIsolationOption(t *testing.T) {
	_, _, comments, err := parseDockerfile(string(readFile(t, dockerfile)))
	if err != nil {
		t.Fatal(err)
	}
	example := strings.Join(comments, "\n")
	for _, want := range []string{"-v " + topologyPath + ":" + topologyPath + ":ro", "agent --topology=" + topologyPath} {
		if !strings.Contains(example, want) {
			t.Errorf("the docker run example lacks %q", want)
		}
	}
}

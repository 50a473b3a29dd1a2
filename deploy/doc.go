// Package deploy holds nsflow's deployment files and the tests that keep
// them honest:
//
//   - systemd/: a hardened unit for the host agent and an example web config
//   - docker/: a multi-stage Dockerfile for a static image
//   - kubernetes/: a DaemonSet with its ServiceAccount, Service,
//     ServiceMonitor and kustomization
//   - prometheus/: a scrape configuration, alerting rules and their tests
//   - grafana/: a dashboard
//
// The tests decode the Kubernetes manifests strictly into the Kubernetes API
// types, run promtool over the Prometheus files, and check every metric the
// rules and the dashboard use against a live scrape of a real agent.
package deploy

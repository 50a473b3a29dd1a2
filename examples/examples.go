// Package examples embeds the example topology files, so that commands such
// as `nsflow demo` run on the seed scenarios without a file on disk.
package examples

import _ "embed"

// Seed is examples/seed.yaml: a veth pair between two namespaces, a
// Docker-style bridge network, two servers on one port in two namespaces
// and a pod-style shared namespace.
//
//go:embed seed.yaml
var Seed []byte

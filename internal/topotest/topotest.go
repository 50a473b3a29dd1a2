// Package topotest builds live topologies for the tests of the packages
// that use topology (agent, verify, cmd): a unique prefix, built, and
// removed when the test ends.
package topotest

import (
	"context"
	"testing"

	"github.com/nsflow/nsflow/topology"
)

// Up builds spec under prefix and returns the prefixed spec. Removal is
// registered before the build, so a build that fails halfway is removed
// too; a failed removal fails the test.
func Up(t testing.TB, spec *topology.Spec, prefix string) *topology.Spec {
	t.Helper()
	s, err := spec.WithPrefix(prefix)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	t.Cleanup(func() {
		if _, err := topology.Down(ctx, s, topology.Options{}); err != nil {
			t.Errorf("topology down: %v", err)
		}
	})
	if _, err := topology.Up(ctx, s, topology.Options{}); err != nil {
		t.Fatalf("topology up: %v", err)
	}
	return s
}

// DownAtCleanup removes spec under prefix when the test ends. It is the
// safety net of tests whose code under test builds and removes the
// topology itself, so its own errors are ignored: the test reports that
// code's teardown, not this one.
func DownAtCleanup(t testing.TB, spec *topology.Spec, prefix string) {
	t.Helper()
	s, err := spec.WithPrefix(prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { topology.Down(context.Background(), s, topology.Options{}) })
}

// Package testenv holds what the kernel-facing tests share: the rule that a
// test which cannot run fails under CI instead of skipping, and unique names
// so that concurrent test runs never touch each other's objects.
package testenv

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// InCI reports whether the tests run under CI (CI=true), where a test that
// cannot run is a failure, never a silent skip.
func InCI() bool { return os.Getenv("CI") == "true" }

// Unavailable fails the test under CI and skips it elsewhere.
func Unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	if InCI() {
		t.Fatalf("cannot run under CI=true: "+format, args...)
	}
	t.Skipf(format, args...)
}

// RequireRoot stops the test unless it runs as root (real namespaces,
// veths and BPF programs need CAP_NET_ADMIN, CAP_SYS_ADMIN and CAP_BPF).
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Unavailable(t, "needs root (namespaces, veths, BPF)")
	}
}

// RequireBPFFS stops the test unless a bpf filesystem is mounted at
// /sys/fs/bpf; it mounts one when the directory exists but is empty of a
// mount, as `make test` does, so a test run by hand works too.
func RequireBPFFS(t testing.TB) {
	t.Helper()
	RequireRoot(t)
	var st unix.Statfs_t
	if err := unix.Statfs("/sys/fs/bpf", &st); err == nil && st.Type == unix.BPF_FS_MAGIC {
		return
	}
	if err := unix.Mount("bpf", "/sys/fs/bpf", "bpf", 0, "mode=0700"); err != nil {
		Unavailable(t, "no bpffs at /sys/fs/bpf and mounting one failed: %v", err)
	}
}

// Name returns prefix followed by 6 random hex digits. Keep prefix at 8
// bytes or less so the result still fits an interface name (15 bytes) with
// a short suffix.
func Name(prefix string) string {
	var b [3]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	return prefix + hex.EncodeToString(b[:])
}

package topology

import (
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"

	"github.com/nsflow/nsflow/internal/nsenter"
)

// sysctlFile is where a dotted net.* key lives under /proc/sys. It shows
// the network namespace of the thread that opens it.
func sysctlFile(key string) string { return "/proc/sys/" + strings.ReplaceAll(key, ".", "/") }

// sysctlEqual compares a value read back from /proc/sys with a declared
// one; the kernel separates multi-field values with tabs.
func sysctlEqual(live, declared string) bool {
	return strings.Join(strings.Fields(live), " ") == strings.Join(strings.Fields(declared), " ")
}

// writeSysctls writes each key in the calling thread's namespace.
func writeSysctls(ns string, sysctls map[string]string) error {
	for _, k := range slices.Sorted(maps.Keys(sysctls)) {
		if err := os.WriteFile(sysctlFile(k), []byte(sysctls[k]), 0); err != nil {
			return fmt.Errorf("namespace %s: sysctl %s=%q: %w", ns, k, sysctls[k], err)
		}
	}
	return nil
}

// readSysctls reads the given keys inside the namespace at path; a key
// that cannot be read is left out (and then differs from its declaration).
func readSysctls(path string, keys []string) (map[string]string, error) {
	out := make(map[string]string, len(keys))
	err := nsenter.Do(path, func() error {
		for _, k := range keys {
			if b, err := os.ReadFile(sysctlFile(k)); err == nil {
				out[k] = strings.TrimSpace(string(b))
			}
		}
		return nil
	})
	return out, err
}

// ensureSysctls writes the declared sysctls that differ in an existing
// namespace and returns how many it changed.
func ensureSysctls(ns, path string, sysctls map[string]string) (int, error) {
	live, err := readSysctls(path, slices.Collect(maps.Keys(sysctls)))
	if err != nil {
		return 0, err
	}
	differ := map[string]string{}
	for k, v := range sysctls {
		if cur, ok := live[k]; !ok || !sysctlEqual(cur, v) {
			differ[k] = v
		}
	}
	if len(differ) == 0 {
		return 0, nil
	}
	return len(differ), nsenter.Do(path, func() error { return writeSysctls(ns, differ) })
}

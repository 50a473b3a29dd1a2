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
// namespace and returns the values it replaced, for rollback. A key the
// namespace lacks is an error before anything is written, and a write
// that fails puts back what was written before it.
func ensureSysctls(ns, path string, sysctls map[string]string) (map[string]string, error) {
	keys := slices.Sorted(maps.Keys(sysctls))
	live, err := readSysctls(path, keys)
	if err != nil {
		return nil, err
	}
	old := map[string]string{}
	for _, k := range keys {
		cur, ok := live[k]
		if !ok {
			return nil, fmt.Errorf("namespace %s: sysctl %s: no such key there (or it cannot be read)", ns, k)
		}
		if !sysctlEqual(cur, sysctls[k]) {
			old[k] = cur
		}
	}
	if len(old) == 0 {
		return nil, nil
	}
	err = nsenter.Do(path, func() error {
		var done []string
		for _, k := range slices.Sorted(maps.Keys(old)) {
			if err := os.WriteFile(sysctlFile(k), []byte(sysctls[k]), 0); err != nil {
				for _, d := range done {
					os.WriteFile(sysctlFile(d), []byte(old[d]), 0)
				}
				return fmt.Errorf("namespace %s: sysctl %s=%q: %w", ns, k, sysctls[k], err)
			}
			done = append(done, k)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return old, nil
}

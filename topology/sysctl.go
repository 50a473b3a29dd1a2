package topology

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
)

// A key is written as sysctl(8) writes it: its parts separated by dots,
// and a dot inside a part, as in the name of a VLAN interface, written as
// a slash: net.ipv4.conf.eth0/100.rp_filter. An interface's name has no
// slash, so the two cannot be confused.

// sysctlFile is where key lives under /proc/sys. It shows the network
// namespace of the thread that opens it.
func sysctlFile(key string) string {
	return "/proc/sys/" + strings.Map(func(r rune) rune {
		switch r {
		case '.':
			return '/'
		case '/':
			return '.'
		}
		return r
	}, key)
}

// IfaceKey is the per-interface key pre+IF+post of interface ifc, e.g.
// IfaceKey("net.ipv4.conf.", "eth0.100", ".forwarding").
func IfaceKey(pre, ifc, post string) string {
	return pre + strings.ReplaceAll(ifc, ".", "/") + post
}

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

// restoreSysctls puts back values replaced earlier, in the calling
// thread's namespace. It goes on past a failure, so that one key does not
// keep the others from being restored, and skips a key that is gone: an
// interface's, when rollback deleted the interface first.
func restoreSysctls(ns string, sysctls map[string]string) error {
	var errs []error
	for _, k := range slices.Sorted(maps.Keys(sysctls)) {
		err := os.WriteFile(sysctlFile(k), []byte(sysctls[k]), 0)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("namespace %s: sysctl %s=%q: %w", ns, k, sysctls[k], err))
		}
	}
	return errors.Join(errs...)
}

// readSysctls reads the given keys inside the namespace enter runs in; a key
// that cannot be read is left out (and then differs from its declaration),
// and one the kernel lacks is also listed in absent.
func readSysctls(enter func(func() error) error, keys []string) (values map[string]string, absent []string, err error) {
	values = make(map[string]string, len(keys))
	err = enter(func() error {
		for _, k := range keys {
			b, err := os.ReadFile(sysctlFile(k))
			switch {
			case err == nil:
				values[k] = strings.TrimSpace(string(b))
			case errors.Is(err, os.ErrNotExist):
				absent = append(absent, k)
			}
		}
		return nil
	})
	return values, absent, err
}

// ensureSysctls writes the declared sysctls that differ in an existing
// namespace and returns the values it replaced, for rollback. A key the
// kernel lacks is an error before anything is written, and a write that
// fails puts back what was written before it. A key that cannot be read
// (write-only, such as net.ipv4.route.flush) is written every time, and
// has no old value to put back.
func ensureSysctls(ns string, enter func(func() error) error, sysctls map[string]string) (map[string]string, error) {
	keys := slices.Sorted(maps.Keys(sysctls))
	live, absent, err := readSysctls(enter, keys)
	if err != nil {
		return nil, err
	}
	if len(absent) > 0 {
		return nil, fmt.Errorf("namespace %s: sysctl %s: no such key there", ns, absent[0])
	}
	old, write := map[string]string{}, map[string]string{}
	for _, k := range keys {
		cur, readable := live[k]
		if !readable || !sysctlEqual(cur, sysctls[k]) {
			write[k] = sysctls[k]
		}
		if readable && !sysctlEqual(cur, sysctls[k]) {
			old[k] = cur
		}
	}
	if len(write) == 0 {
		return nil, nil
	}
	err = enter(func() error {
		if err := writeSysctls(ns, write); err != nil {
			_ = restoreSysctls(ns, old) // what was written before the failure
			return err
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return old, nil
}

// sysctlInterface is the interface a per-interface key names
// (net.ipv4.conf.IF.KEY, net.ipv6.conf.IF.KEY, net.ipv4.neigh.IF.KEY,
// net.ipv6.neigh.IF.KEY), or "" for other keys.
func sysctlInterface(key string) string {
	if p := strings.Split(key, "."); len(p) == 5 && isIfaceKey(p) {
		return strings.ReplaceAll(p[3], "/", ".")
	}
	return ""
}

// isIfaceKey is whether the parts of a key start as those of a
// per-interface key do: net, ipv4 or ipv6, conf or neigh, then the name.
func isIfaceKey(p []string) bool {
	return len(p) >= 4 && p[0] == "net" && (p[1] == "ipv4" || p[1] == "ipv6") && (p[2] == "conf" || p[2] == "neigh")
}

// splitSysctls parts namespace ns's sysctls into those written with the
// namespace and those of the interfaces the topology makes there, which
// exist only once the links and bridges do.
func (s *Spec) splitSysctls(ns string, sysctls map[string]string) (early, late map[string]string) {
	declared := map[string]bool{}
	for _, ifc := range s.NamespaceInterfaces(ns) {
		declared[ifc.Name] = true
	}
	early, late = map[string]string{}, map[string]string{}
	for k, v := range sysctls {
		if declared[sysctlInterface(k)] {
			late[k] = v
		} else {
			early[k] = v
		}
	}
	return early, late
}

// IfaceSysctl is the value the file's sysctls give the per-interface key
// pre+ifc+post on interface ifc ("" for the kernel's default): the
// interface's own key, written once it exists, else what it started
// with (NamespaceSysctl).
func IfaceSysctl(sysctls map[string]string, pre, post, ifc string, aliases ...string) string {
	if v, ok := sysctls[IfaceKey(pre, ifc, post)]; ok {
		return strings.TrimSpace(v)
	}
	return NamespaceSysctl(sysctls, pre, post, aliases...)
}

// NamespaceSysctl is the value a new interface starts with. The
// namespace-wide keys are written, in key order, when up makes the
// namespace, before its interfaces, after the kernel's defaults
// (baselineSysctls): conf.all (and an alias such as ip_forward) passes a
// change on to conf.default, and each new interface starts with
// conf.default's value.
func NamespaceSysctl(sysctls map[string]string, pre, post string, aliases ...string) string {
	all, def := "0", "0" // the kernel's defaults, which up writes first
	for _, k := range slices.Sorted(maps.Keys(sysctls)) {
		v := strings.TrimSpace(sysctls[k])
		switch {
		case k == pre+"all"+post || slices.Contains(aliases, k):
			if v != all { // conf.all passes a change on to conf.default
				all, def = v, v
			}
		case k == pre+"default"+post:
			def = v
		}
	}
	return def
}

package verify

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// neighTableFulls is how often the kernel could not create a neighbour
// entry because its ARP or NDP table was full, summed over CPUs. These
// tables are shared by every namespace on the host: while they overflow,
// a probe's packet can be dropped before it leaves, which a timeout cannot
// tell from a block.
func neighTableFulls() (uint64, error) {
	var total uint64
	for _, f := range []string{"/proc/net/stat/arp_cache", "/proc/net/stat/ndisc_cache"} {
		n, err := statColumn(f, "table_fulls")
		if err != nil {
			return 0, err
		}
		total += n
	}
	return total, nil
}

// statColumn sums one column of a /proc/net/stat file (hex, a row per CPU).
func statColumn(path, column string) (uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	col := -1
	var sum uint64
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if col < 0 {
			for i, h := range fields {
				if h == column {
					col = i
				}
			}
			if col < 0 {
				return 0, fmt.Errorf("%s: no column %s", path, column)
			}
			continue
		}
		if col < len(fields) {
			v, err := strconv.ParseUint(fields[col], 16, 64)
			if err != nil {
				return 0, fmt.Errorf("%s: %w", path, err)
			}
			sum += v
		}
	}
	return sum, sc.Err()
}

// distrustTimeouts turns the probes that timed out into probe errors when
// the neighbour tables overflowed while they ran (the table_fulls count
// went from before to after): their packets may never have left, so
// "blocked" would be a guess, and a guess can hide a breach.
func distrustTimeouts(probes []*Probe, before, after uint64) {
	if after == before {
		return
	}
	for _, p := range probes {
		if p.Outcome == Blocked {
			p.Outcome = Failed
			p.Detail = fmt.Sprintf("timed out while the host's neighbour table was full (%d times): the packet may never have left", after-before)
		}
	}
}

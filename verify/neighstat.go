package verify

import (
	"bufio"
	"errors"
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
//
// The files are in the initial network namespace's /proc/net only, read
// through the calling thread's (not the main thread's, which may be in a
// topology namespace meanwhile). A host without IPv6 has no NDP table.
func neighTableFulls() (uint64, error) {
	var total uint64
	for i, f := range neighStatFiles {
		n, err := statColumn(f, "table_fulls")
		if errors.Is(err, os.ErrNotExist) && i == 1 {
			continue
		}
		if err != nil {
			return 0, err
		}
		total += n
	}
	return total, nil
}

// neighStatFiles are the ARP and the NDP table's statistics.
var neighStatFiles = [2]string{"/proc/thread-self/net/stat/arp_cache", "/proc/thread-self/net/stat/ndisc_cache"}

// neighUnwatched is the report's note when the neighbour tables' overflow
// counter cannot be read (verify runs outside the initial network
// namespace, as in a container with a namespace of its own).
func neighUnwatched(err error) string {
	return fmt.Sprintf("the host's neighbour table overflow could not be watched (%v): a probe that timed out while the ARP/NDP tables were full would read as blocked", err)
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

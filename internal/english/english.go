// Package english writes counts the way a reader expects them.
package english

import "strconv"

// Count says n of a thing: "1 flow", "2 flows", "0 flows". noun is the
// singular, and takes an s otherwise (every noun nsflow counts does).
// Floats (gathered metrics) are whole counts, printed without decimals.
func Count[N int | uint64 | float64](n N, noun string) string {
	var s string
	switch v := any(n).(type) {
	case int:
		s = strconv.Itoa(v)
	case uint64:
		s = strconv.FormatUint(v, 10)
	case float64:
		s = strconv.FormatFloat(v, 'f', 0, 64)
	}
	if n != 1 {
		noun += "s"
	}
	return s + " " + noun
}

package demo

import "strconv"

// count says n of a thing in English: "1 flow", "2 flows", "0 flows".
// noun is the singular; every noun the demo counts takes an s.
func count[N int | uint64 | float64](n N, noun string) string {
	s := strconv.FormatFloat(float64(n), 'f', 0, 64)
	if n != 1 {
		noun += "s"
	}
	return s + " " + noun
}

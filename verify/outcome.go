package verify

import (
	"encoding/json"
	"fmt"
)

// Outcome is what one probe observed.
type Outcome int

const (
	// Blocked: no answer before the timeout (the packet was dropped).
	Blocked Outcome = iota
	// Unreachable: refused on the way, by an ICMP error from a router or
	// because the source has no route. Blocked, known at once.
	Unreachable
	// Replied: the responder in the target namespace answered.
	Replied
	// Refused: a TCP reset or ICMP port unreachable from the target
	// address itself. The packet arrived, so the target is reachable.
	Refused
	// Failed: the probe could not run. Never read as blocked.
	Failed
)

var outcomeNames = [...]string{"blocked", "unreachable", "replied", "refused", "error"}

func (o Outcome) String() string { return outcomeNames[o] }

// Reachable reports whether the probe proves that its packet arrived.
func (o Outcome) Reachable() bool { return o == Replied || o == Refused }

// Symbol is the outcome's character in the truth tables.
func (o Outcome) Symbol() byte {
	switch o {
	case Replied:
		return '.'
	case Refused:
		return 'r'
	case Failed:
		return '!'
	}
	return 'X'
}

// MarshalJSON writes the outcome by name, the stable form.
func (o Outcome) MarshalJSON() ([]byte, error) { return json.Marshal(o.String()) }

// UnmarshalJSON reads an outcome name.
func (o *Outcome) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	for i, n := range outcomeNames {
		if n == s {
			*o = Outcome(i)
			return nil
		}
	}
	return fmt.Errorf("unknown probe outcome %q", s)
}

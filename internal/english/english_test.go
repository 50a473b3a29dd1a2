package english

import "testing"

func TestCount(t *testing.T) {
	tests := []struct {
		got, want string
	}{
		{Count(0, "flow"), "0 flows"},
		{Count(1, "flow"), "1 flow"},
		{Count(2, "flow"), "2 flows"},
		{Count(uint64(1), "packet"), "1 packet"},
		{Count(uint64(1<<40), "packet"), "1099511627776 packets"},
		{Count(uint64(1<<63+1), "packet"), "9223372036854775809 packets"}, // past float64's 2^53
		{Count(1.0, "program"), "1 program"},
		{Count(3.0, "attach error"), "3 attach errors"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("got %q, want %q", tt.got, tt.want)
		}
	}
}

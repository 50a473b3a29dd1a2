package deploy

import (
	"reflect"
	"testing"
)

func TestParsePromQL(t *testing.T) {
	tests := []struct {
		expr     string
		want     []selector
		grouping []string
		wantErr  bool
	}{
		{expr: `up{job="nsflow"} == 0`, want: []selector{{"up", []string{"job"}}}},
		{
			expr: `sum by (src_netns, dst_netns) (rate(nsflow_netns_flow_bytes_total{instance=~"$instance", src_netns=~"$netns"}[$__rate_interval]))`,
			want: []selector{{"nsflow_netns_flow_bytes_total", []string{"instance", "src_netns"}}}, grouping: []string{"src_netns", "dst_netns"},
		},
		{
			expr: `nsflow_flow_table_entries / on (instance) nsflow_flow_table_capacity > 0.9`,
			want: []selector{{"nsflow_flow_table_entries", nil}, {"nsflow_flow_table_capacity", nil}}, grouping: []string{"instance"},
		},
		{expr: `count(x == 0) or vector(0)`, want: []selector{{"x", nil}}},
		{expr: `absent(up{job="a,b}"})`, want: []selector{{"up", []string{"job"}}}},
		{expr: `topk(10, rate(m_total[5m] offset 1h)) * 1e3`, want: []selector{{"m_total", nil}}},
		{expr: `{__name__="m"}`, want: []selector{{"", []string{"__name__"}}}},
		{expr: `m{a="unterminated}`, wantErr: true},
		{expr: `m{a="x"`, wantErr: true},
		{expr: `rate(m[5m)`, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.expr, func(t *testing.T) {
			got, err := parsePromQL(tt.expr)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("want an error, got %+v", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got.Selectors, tt.want) || !reflect.DeepEqual(got.Grouping, tt.grouping) {
				t.Errorf("got %+v grouping %v, want %+v grouping %v", got.Selectors, got.Grouping, tt.want, tt.grouping)
			}
		})
	}
}

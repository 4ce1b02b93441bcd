package dag

import (
	"math"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestVisitBudget(t *testing.T) {
	tests := []struct {
		name                    string
		maxVisits, limit, seeds int
		want                    int
	}{
		{"explicit", 7, 100, 3, 7},
		{"default", 0, 100, 3, DefaultVisitsPerResult*100 + 3},
		{"negative means default", -1, 5, 1, DefaultVisitsPerResult*5 + 1},
		{"saturates", 0, math.MaxInt / 2, 1, math.MaxInt},
		{"largest unsaturated", 0, (math.MaxInt - 3) / DefaultVisitsPerResult, 3, (math.MaxInt-3)/DefaultVisitsPerResult*DefaultVisitsPerResult + 3},
		{"saturates just past it", 0, (math.MaxInt-3)/DefaultVisitsPerResult + 1, 3, math.MaxInt},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.Equal(t, tt.want, VisitBudget(tt.maxVisits, tt.limit, tt.seeds))
		})
	}
}

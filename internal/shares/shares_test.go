package shares

import (
	"runtime"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestRun requires the shares to cover [0, n) exactly once, contiguous and
// in order, one per minShare items (rounded up) at most, and at most one
// per core.
func TestRun(t *testing.T) {
	for _, tt := range []struct{ n, minShare int }{{0, 4}, {1, 4}, {3, 4}, {4, 4}, {5, 4}, {1000, 7}, {1000, 256}} {
		var (
			mu     sync.Mutex
			seen   = make([]int, tt.n)
			shares = make(map[int][2]int)
		)
		Run(tt.n, tt.minShare, func(share, lo, hi int) {
			mu.Lock()
			defer mu.Unlock()
			require.NotContains(t, shares, share)
			shares[share] = [2]int{lo, hi}
			for i := lo; i < hi; i++ {
				seen[i]++
			}
		})
		for i, count := range seen {
			require.Equal(t, 1, count, "n %d: item %d", tt.n, i)
		}
		require.LessOrEqual(t, len(shares), runtime.GOMAXPROCS(0))
		require.LessOrEqual(t, len(shares), (tt.n+tt.minShare-1)/tt.minShare)
		for share, span := range shares {
			require.Less(t, share, runtime.GOMAXPROCS(0))
			if share > 0 {
				require.Equal(t, shares[share-1][1], span[0], "contiguous, in order of share")
			}
		}
	}
}

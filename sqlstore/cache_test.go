package sqlstore

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestLRUEvictsLeastRecentlyUsedByBytes(t *testing.T) {
	c := newLRU[string, int](30)
	c.put("a", 1, 10)
	c.put("b", 2, 10)
	c.put("c", 3, 10)
	_, _, ok := c.get("a") // a is now the most recently used
	require.True(t, ok)
	c.put("d", 4, 10) // evicts b, the least recently used

	for _, tc := range []struct {
		key  string
		want int
		ok   bool
	}{{"a", 1, true}, {"b", 0, false}, {"c", 3, true}, {"d", 4, true}} {
		got, _, ok := c.get(tc.key)
		require.Equal(t, tc.ok, ok, tc.key)
		require.Equal(t, tc.want, got, tc.key)
	}

	c.put("huge", 5, 31) // larger than the budget: not stored, nothing evicted
	_, _, ok = c.get("huge")
	require.False(t, ok)
	_, _, ok = c.get("a")
	require.True(t, ok)

	c.put("a", 6, 25) // replacing an entry frees its old size first
	got, _, ok := c.get("a")
	require.True(t, ok)
	require.Equal(t, 6, got)
	require.LessOrEqual(t, c.used, c.budget)

	c.clear()
	_, _, ok = c.get("a")
	require.False(t, ok)
	require.Zero(t, c.used)
}

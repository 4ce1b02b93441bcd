package sign

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestLRU(t *testing.T) {
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	c := newLRU[string, int](2)
	c.put("a", 1, now.Add(time.Minute))
	c.put("b", 2, now.Add(time.Minute))
	_, ok := c.get("a", now) // a is now the most recently used
	require.True(t, ok)
	c.put("c", 3, now.Add(time.Minute))
	_, ok = c.get("b", now)
	require.False(t, ok, "the least recently used entry is evicted")
	v, ok := c.get("a", now)
	require.True(t, ok)
	require.Equal(t, 1, v)
	require.Equal(t, 2, c.len())

	c.put("a", 10, now.Add(2*time.Minute))
	v, ok = c.get("a", now.Add(90*time.Second))
	require.True(t, ok, "put replaces the value and the expiry")
	require.Equal(t, 10, v)
	_, ok = c.get("c", now.Add(time.Minute))
	require.False(t, ok, "an entry expires at its time")
	require.Equal(t, 1, c.len(), "and is removed")

	c.remove("a")
	require.Zero(t, c.len())
}

package dag

import (
	"math"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"
)

// addAll adds ids to x in order, as a walk registers them, and returns the
// walk's list of IDs by slot.
func addAll(t *testing.T, x *idIndex, list []string, ids ...string) []string {
	t.Helper()
	for _, id := range ids {
		slot, known := x.findOrAdd(list, id)
		if known {
			require.Equal(t, id, list[slot])
			continue
		}
		require.Equal(t, len(list), slot, "a new ID takes the next slot")
		list = append(list, id)
	}
	return list
}

func manyIDs(prefix string, n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = prefix + strconv.Itoa(i)
	}
	return ids
}

func TestIDIndexFindsWhatWasAdded(t *testing.T) {
	tests := []struct {
		name     string
		expected int // reset's size hint
		ids      []string
	}{
		{"empty", 0, nil},
		{"one", 1, []string{"$a"}},
		{"repeats keep their first slot", 4, []string{"$a", "$b", "$a", "$c", "$b", "$a"}},
		{"the empty ID", 2, []string{"", "$a", ""}},
		{"grows far past the hint", 1, manyIDs("$e", 5000)},
		{"IDs differing in one byte", 64, manyIDs("$0123456789abcdef0123456789abcdef0123456789a", 300)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var x idIndex
			x.reset(tt.expected)
			list := addAll(t, &x, nil, tt.ids...)
			for _, id := range tt.ids {
				slot, ok := x.find(list, id)
				require.True(t, ok, id)
				require.Equal(t, id, list[slot])
			}
			require.Equal(t, len(list), x.n)
			_, ok := x.find(list, "$absent")
			require.False(t, ok)
			require.LessOrEqual(t, 2*x.n, len(x.entries), "at most half full")
		})
	}
}

func TestIDIndexRemoveLastUndoesAdds(t *testing.T) {
	tests := []struct {
		name          string
		kept, undone  int
		expected      int
		undoneAtFront bool // the undone IDs share the kept IDs' prefix
	}{
		{"nothing undone", 10, 0, 16, false},
		{"a few", 10, 5, 16, false},
		{"across a growth", 10, 40, 8, false},
		{"everything", 0, 30, 8, true},
		{"crowded table", 200, 200, 1, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var x idIndex
			x.reset(tt.expected)
			kept := manyIDs("$k", tt.kept)
			prefix := "$u"
			if tt.undoneAtFront {
				prefix = "$k-"
			}
			undone := manyIDs(prefix, tt.undone)
			list := addAll(t, &x, nil, kept...)
			list = addAll(t, &x, list, undone...)
			for i := len(list) - 1; i >= len(kept); i-- {
				x.removeLast(list[:i+1], list[i])
			}
			list = list[:len(kept)]

			require.Equal(t, len(kept), x.n)
			for slot, id := range kept {
				got, ok := x.find(list, id)
				require.True(t, ok, id)
				require.Equal(t, slot, got)
			}
			for _, id := range undone {
				_, ok := x.find(list, id)
				require.False(t, ok, id)
			}
			// Undone IDs can be added again, and take the next slots.
			list = addAll(t, &x, list, undone...)
			for i, id := range undone {
				got, ok := x.find(list, id)
				require.True(t, ok, id)
				require.Equal(t, len(kept)+i, got)
			}
		})
	}
}

func TestIDIndexResetForgets(t *testing.T) {
	tests := []struct {
		name string
		gen  uint16 // the generation before the second reset
	}{
		{"next generation", 7},
		{"generation wraps around", math.MaxUint16},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var x idIndex
			x.reset(8)
			first := addAll(t, &x, nil, "$a", "$b", "$c")
			x.gen = tt.gen
			// Entries of the first walk, now of generation tt.gen, must not
			// be mistaken for the next walk's, even after a wrap-around.
			for i := range x.entries {
				if x.entries[i].gen != 0 {
					x.entries[i].gen = tt.gen
				}
			}
			x.reset(8)
			require.NotZero(t, x.gen)
			require.Zero(t, x.n)
			for _, id := range first {
				_, ok := x.find(first, id)
				require.False(t, ok, "%s survived reset", id)
			}
			second := addAll(t, &x, nil, "$c", "$d")
			slot, ok := x.find(second, "$c")
			require.True(t, ok)
			require.Equal(t, 0, slot)
		})
	}
}

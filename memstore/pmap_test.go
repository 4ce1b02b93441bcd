package memstore

import (
	"maps"
	"math/rand/v2"
	"slices"
	"strconv"
	"testing"

	"github.com/fedhistory/fedhistory/internal/pdu"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/stretchr/testify/require"
)

// intKey is a plain ordered key for testing the tree on its own.
type intKey int

func (k intKey) Compare(other intKey) int { return int(k) - int(other) }

type intMap = pmap[intKey, string]

// checkInvariants verifies the AVL shape, the cached heights and sizes, and
// the key order of every node, and returns the keys in order.
func checkInvariants(t *testing.T, m intMap) []intKey {
	t.Helper()
	var keys []intKey
	var walk func(n *pnode[intKey, string]) (height, size int32)
	walk = func(n *pnode[intKey, string]) (int32, int32) {
		if n == nil {
			return 0, 0
		}
		hl, sl := walk(n.left)
		keys = append(keys, n.key)
		hr, sr := walk(n.right)
		require.LessOrEqual(t, max(hl-hr, hr-hl), int32(1), "unbalanced at %d", n.key)
		require.Equal(t, 1+max(hl, hr), n.height, "height of %d", n.key)
		require.Equal(t, 1+sl+sr, n.size, "size of %d", n.key)
		return n.height, n.size
	}
	walk(m.root)
	require.True(t, slices.IsSorted(keys), "keys out of order: %v", keys)
	return keys
}

func contents(m intMap) map[intKey]string {
	out := make(map[intKey]string)
	m.All(func(k intKey, v string) bool {
		out[k] = v
		return true
	})
	return out
}

func TestPmapBasics(t *testing.T) {
	var empty intMap
	require.Zero(t, empty.Len())
	_, ok := empty.Get(1)
	require.False(t, ok)
	require.True(t, empty.Delete(1).Same(empty), "deleting from the empty map is a no-op")

	one := empty.Set(1, "a")
	two := one.Set(2, "b")
	replaced := two.Set(1, "A")

	tests := []struct {
		name string
		m    intMap
		want map[intKey]string
	}{
		{"the empty map stays empty", empty, map[intKey]string{}},
		{"one entry", one, map[intKey]string{1: "a"}},
		{"two entries", two, map[intKey]string{1: "a", 2: "b"}},
		{"replacing a value", replaced, map[intKey]string{1: "A", 2: "b"}},
		{"deleting an entry", replaced.Delete(2), map[intKey]string{1: "A"}},
		{"deleting an absent key", replaced.Delete(3), map[intKey]string{1: "A", 2: "b"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.Equal(t, tt.want, contents(tt.m))
			require.Equal(t, len(tt.want), tt.m.Len())
			for k, v := range tt.want {
				got, ok := tt.m.Get(k)
				require.True(t, ok)
				require.Equal(t, v, got)
			}
			checkInvariants(t, tt.m)
		})
	}
	require.True(t, replaced.Delete(3).Same(replaced), "deleting an absent key returns the same version")
	require.False(t, replaced.Same(two))
}

func TestPmapStaysBalancedUnderSequentialInserts(t *testing.T) {
	var m intMap
	for i := range 1000 {
		m = m.Set(intKey(i), strconv.Itoa(i))
	}
	checkInvariants(t, m)
	// An AVL tree of n nodes is at most ~1.44 log2(n) high.
	require.LessOrEqual(t, m.root.height, int32(15))
	for i := 0; i < 1000; i += 2 {
		m = m.Delete(intKey(i))
	}
	require.Equal(t, 500, m.Len())
	checkInvariants(t, m)
}

func TestPmapSetSharesUnchangedSubtrees(t *testing.T) {
	var m intMap
	for i := range 1024 {
		m = m.Set(intKey(i), "v")
	}
	updated := m.Set(512, "w")
	// Count the nodes of updated that are not nodes of m.
	old := make(map[*pnode[intKey, string]]bool)
	var mark func(n *pnode[intKey, string])
	mark = func(n *pnode[intKey, string]) {
		if n != nil {
			old[n] = true
			mark(n.left)
			mark(n.right)
		}
	}
	mark(m.root)
	fresh := 0
	var count func(n *pnode[intKey, string])
	count = func(n *pnode[intKey, string]) {
		if n == nil || old[n] {
			return
		}
		fresh++
		count(n.left)
		count(n.right)
	}
	count(updated.root)
	require.LessOrEqual(t, fresh, int(m.root.height), "an update copies one path, not the tree")
}

func TestPmapAscend(t *testing.T) {
	var m intMap
	for _, k := range []intKey{50, 10, 40, 20, 30} {
		m = m.Set(k, strconv.Itoa(int(k)))
	}
	tests := []struct {
		name  string
		from  intKey
		limit int
		want  []intKey
	}{
		{"from below the smallest key", 0, 10, []intKey{10, 20, 30, 40, 50}},
		{"from an existing key", 20, 10, []intKey{20, 30, 40, 50}},
		{"from between keys", 25, 10, []intKey{30, 40, 50}},
		{"from above the largest key", 60, 10, nil},
		{"stopping early", 10, 2, []intKey{10, 20}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []intKey
			m.Ascend(tt.from, func(k intKey, _ string) bool {
				got = append(got, k)
				return len(got) < tt.limit
			})
			require.Equal(t, tt.want, got)
		})
	}
}

// TestPmapAgainstBuiltinMap applies random operations to a pmap and to a
// plain map side by side, keeps every intermediate version, and checks at the
// end that each old version still holds exactly what it held when it was
// made: persistence means no update may touch a node another version sees.
func TestPmapAgainstBuiltinMap(t *testing.T) {
	for seed := range uint64(20) {
		t.Run("seed "+strconv.FormatUint(seed, 10), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, seed))
			type version struct {
				m    intMap
				want map[intKey]string
			}
			var versions []version
			var m intMap
			want := map[intKey]string{}
			for op := range 2000 {
				key := intKey(rng.IntN(300))
				switch rng.IntN(3) {
				case 0, 1:
					value := strconv.Itoa(op)
					m = m.Set(key, value)
					want[key] = value
				default:
					m = m.Delete(key)
					delete(want, key)
				}
				got, ok := m.Get(key)
				wantValue, wantOK := want[key]
				require.Equal(t, wantOK, ok)
				require.Equal(t, wantValue, got)
				if op%50 == 0 {
					versions = append(versions, version{m, maps.Clone(want)})
				}
			}
			versions = append(versions, version{m, maps.Clone(want)})
			for _, v := range versions {
				require.Equal(t, v.want, contents(v.m))
				require.Equal(t, len(v.want), v.m.Len())
				keys := checkInvariants(t, v.m)
				require.Equal(t, slices.Sorted(maps.Keys(v.want)), keys)
			}
		})
	}
}

func TestStateKeyOrderGroupsMembersByServer(t *testing.T) {
	keys := []stateKey{
		{Type: spec.MRoomMember, StateKey: "@zed:other:8448"},
		{Type: spec.MRoomMember, StateKey: "@amy:other"},
		{Type: spec.MRoomMember, StateKey: "@bob:other:8448"},
		{Type: spec.MRoomMember, StateKey: "@carl:hs1.example"},
		{Type: spec.MRoomMember, StateKey: "!odd:other:8448"},
		{Type: spec.MRoomMember, StateKey: "nocolon"},
		{Type: spec.MRoomMember, StateKey: "@x:"},
		{Type: spec.MRoomMember, StateKey: "zzz"},
		{Type: spec.MRoomCreate},
		{Type: pdu.TypeHistoryVisibility},
	}
	var m statemap
	for _, k := range keys {
		m = m.Set(k, &record{})
	}
	tests := []struct {
		server string
		want   []string
	}{
		// Exact server match: "other" and "other:8448" are different servers.
		{"other:8448", []string{"!odd:other:8448", "@bob:other:8448", "@zed:other:8448"}},
		{"other", []string{"@amy:other"}},
		{"hs1.example", []string{"@carl:hs1.example"}},
		{"8448", nil},
		// A key without a colon belongs to no server, not even the empty one.
		{"", []string{"@x:"}},
	}
	for _, tt := range tests {
		t.Run(tt.server, func(t *testing.T) {
			var got []string
			m.Ascend(firstMemberOf(tt.server), func(k stateKey, _ *record) bool {
				if !isMemberOf(k, tt.server) {
					return false
				}
				got = append(got, k.StateKey)
				return true
			})
			require.Equal(t, tt.want, got)
		})
	}
}

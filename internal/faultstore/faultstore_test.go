package faultstore_test

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory"
	"github.com/fedhistory/fedhistory/dag"
	"github.com/fedhistory/fedhistory/internal/faultstore"
	"github.com/fedhistory/fedhistory/memstore"
	"github.com/fedhistory/fedhistory/storetest"
)

// loadMemstore returns a memstore holding storetest's reference rooms.
func loadMemstore(t testing.TB) *memstore.Store {
	t.Helper()
	store := memstore.New()
	err := storetest.Load(func(version string, pdu []byte, opts fedhistory.AddOptions) error {
		_, err := store.Add(version, pdu, opts)
		return err
	}, func(userID string) error {
		store.EraseUser(userID)
		return nil
	})
	require.NoError(t, err)
	return store
}

// reference is the first reference room and the IDs of its events.
func reference(t *testing.T) (storetest.Room, []string) {
	t.Helper()
	room := storetest.Rooms()[0]
	ids := make([]string, len(room.Events))
	for i, ev := range room.Events {
		ids[i] = ev.ID
	}
	return room, ids
}

// everyMethod calls each method of store once, the capabilities' methods
// when it has them, and returns the errors by method name.
func everyMethod(ctx context.Context, store faultstore.Faulty, roomID string, ids []string) map[string]error {
	errs := map[string]error{}
	_, errs["RoomVersion"] = store.RoomVersion(ctx, roomID)
	_, errs["Events"] = store.Events(ctx, roomID, ids)
	_, errs["CurrentState"] = store.CurrentState(ctx, roomID, "hs2.example")
	_, errs["Visibility"] = store.Visibility(ctx, roomID, "hs2.example", ids)
	_, errs["ErasedUsers"] = store.ErasedUsers(ctx, []string{"@erin:hs3.example"})
	if state, ok := store.(fedhistory.StateStore); ok {
		_, errs["StateBefore"] = state.StateBefore(ctx, roomID, ids[len(ids)-1])
		_, errs["AuthChain"] = state.AuthChain(ctx, roomID, ids)
	}
	if lookup, ok := store.(fedhistory.EventLookupStore); ok {
		_, errs["EventByID"] = lookup.EventByID(ctx, ids[0])
	}
	if timestamps, ok := store.(fedhistory.TimestampStore); ok {
		_, errs["EventAtTimestamp"] = timestamps.EventAtTimestamp(ctx, roomID, math.MaxInt64, fedhistory.Backward)
	}
	return errs
}

// allMethods are the methods everyMethod calls on a wrapped memstore.
var allMethods = []string{"RoomVersion", "Events", "CurrentState", "Visibility", "ErasedUsers", "StateBefore", "AuthChain", "EventByID", "EventAtTimestamp"}

// once maps every method to 1.
func once(methods []string) map[string]int {
	calls := map[string]int{}
	for _, method := range methods {
		calls[method] = 1
	}
	return calls
}

func TestWithoutFaultsTheStoreConforms(t *testing.T) {
	for _, tc := range []struct {
		name   string
		faults faultstore.Faults
	}{
		{"no faults", faultstore.Faults{}},
		// Latency takes the path that waits on the context.
		{"latency", faultstore.Faults{Latency: time.Microsecond}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			storetest.Run(t, func(t *testing.T) fedhistory.EventStore {
				return faultstore.Wrap(loadMemstore(t), tc.faults)
			})
		})
	}
}

func TestErrorRateOneFailsEveryCallWithoutReachingTheStore(t *testing.T) {
	room, ids := reference(t)
	inner := faultstore.Wrap(loadMemstore(t), faultstore.Faults{}) // counts the calls that get through
	store := faultstore.Wrap(inner, faultstore.Faults{ErrorRate: 1})

	for method, err := range everyMethod(context.Background(), store, room.ID, ids) {
		require.ErrorIs(t, err, faultstore.ErrInjected, method)
		require.ErrorContains(t, err, method)
	}
	require.Equal(t, once(allMethods), store.Calls())
	require.Empty(t, inner.Calls(), "a failed call never reaches the wrapped store")
}

// failures makes n RoomVersion calls and reports which failed.
func failures(store faultstore.Faulty, roomID string, n int) []bool {
	failed := make([]bool, n)
	for i := range failed {
		_, err := store.RoomVersion(context.Background(), roomID)
		failed[i] = errors.Is(err, faultstore.ErrInjected)
	}
	return failed
}

func TestErrorRateIsPartialAndSeeded(t *testing.T) {
	room, _ := reference(t)
	inner := loadMemstore(t)
	const calls = 200
	faults := faultstore.Faults{ErrorRate: 0.5, Seed: 1}

	first := failures(faultstore.Wrap(inner, faults), room.ID, calls)
	failed := 0
	for _, f := range first {
		if f {
			failed++
		}
	}
	require.Positive(t, failed, "some calls fail")
	require.Less(t, failed, calls, "some calls succeed")

	require.Equal(t, first, failures(faultstore.Wrap(inner, faults), room.ID, calls), "the same seed fails the same calls")
	faults.Seed = 2
	require.NotEqual(t, first, failures(faultstore.Wrap(inner, faults), room.ID, calls), "another seed fails other calls")
}

func TestPanicRateOnePanicsInEveryMethod(t *testing.T) {
	room, ids := reference(t)
	store := faultstore.Wrap(loadMemstore(t), faultstore.Faults{PanicRate: 1})
	ctx := context.Background()
	calls := map[string]func(){
		"RoomVersion":  func() { _, _ = store.RoomVersion(ctx, room.ID) },
		"Events":       func() { _, _ = store.Events(ctx, room.ID, ids) },
		"CurrentState": func() { _, _ = store.CurrentState(ctx, room.ID, "hs2.example") },
		"Visibility":   func() { _, _ = store.Visibility(ctx, room.ID, "hs2.example", ids) },
		"ErasedUsers":  func() { _, _ = store.ErasedUsers(ctx, nil) },
		"StateBefore":  func() { _, _ = store.(fedhistory.StateStore).StateBefore(ctx, room.ID, ids[1]) },
		"AuthChain":    func() { _, _ = store.(fedhistory.StateStore).AuthChain(ctx, room.ID, ids) },
		"EventByID":    func() { _, _ = store.(fedhistory.EventLookupStore).EventByID(ctx, ids[0]) },
		"EventAtTimestamp": func() {
			_, _ = store.(fedhistory.TimestampStore).EventAtTimestamp(ctx, room.ID, 0, fedhistory.Forward)
		},
	}
	for method, call := range calls {
		t.Run(method, func(t *testing.T) {
			var recovered any
			func() {
				defer func() { recovered = recover() }()
				call()
			}()
			err, ok := recovered.(error)
			require.True(t, ok, "the panic value is an error, got %#v", recovered)
			require.ErrorIs(t, err, faultstore.ErrInjectedPanic)
			require.ErrorContains(t, err, method)
		})
	}
	require.Equal(t, once(allMethods), store.Calls(), "panicking calls are counted")
}

func TestLatencyEndsWithTheContext(t *testing.T) {
	room, ids := reference(t)
	inner := faultstore.Wrap(loadMemstore(t), faultstore.Faults{})
	// An hour: the test only ends because the calls give up with their context.
	store := faultstore.Wrap(inner, faultstore.Faults{Latency: time.Hour})

	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	for method, err := range everyMethod(cancelled, store, room.ID, ids) {
		require.ErrorIs(t, err, context.Canceled, method)
	}

	short, cancelShort := context.WithTimeout(context.Background(), time.Millisecond)
	defer cancelShort()
	_, err := store.Events(short, room.ID, ids)
	require.ErrorIs(t, err, context.DeadlineExceeded)

	require.Empty(t, inner.Calls(), "a call that gave up waiting never reaches the wrapped store")
	require.Equal(t, 2, store.Calls()["Events"])
}

// eventsWithGarbage asks a store with garbage for every event of the
// reference room, in two calls (the second sees the first's answers as
// earlier answers), plus an ID the store does not hold.
func eventsWithGarbage(t *testing.T, inner fedhistory.EventStore, faults faultstore.Faults) (first, second []*fedhistory.Event) {
	t.Helper()
	room, ids := reference(t)
	store := faultstore.Wrap(inner, faults)
	half := len(ids) / 2
	first, err := store.Events(context.Background(), room.ID, append(slices.Clone(ids[half:]), "$unknown:hs1.example"))
	require.NoError(t, err)
	second, err = store.Events(context.Background(), room.ID, ids[:half])
	require.NoError(t, err)
	return first, second
}

func TestGarbage(t *testing.T) {
	room, ids := reference(t)
	inner := loadMemstore(t)
	byID := map[string]*fedhistory.Event{}
	genuine, err := inner.Events(context.Background(), room.ID, ids)
	require.NoError(t, err)
	for _, ev := range genuine {
		byID[ev.ID] = ev
	}

	tests := []struct {
		garbage faultstore.Garbage
		check   func(t *testing.T, answer []*fedhistory.Event)
	}{
		{faultstore.ForeignRoomEvents, func(t *testing.T, answer []*fedhistory.Event) {
			var claimsUnknown bool
			for _, ev := range answer {
				if ev.RoomID == faultstore.ForeignRoomID {
					require.Contains(t, string(ev.JSON), faultstore.ForeignRoomID, "the JSON of %s says it is foreign too", ev.ID)
					claimsUnknown = claimsUnknown || ev.ID == "$unknown:hs1.example"
				} else {
					require.Equal(t, room.ID, ev.RoomID)
				}
			}
			require.Len(t, answer, 2*len(ids)+1, "every event, a foreign copy of each, one foreign event for the unknown ID")
			require.True(t, claimsUnknown, "a foreign event claims the ID the store does not hold")
		}},
		{faultstore.DuplicateIDs, func(t *testing.T, answer []*fedhistory.Event) {
			count := map[string]int{}
			for _, ev := range answer {
				count[ev.ID]++
			}
			for _, id := range ids {
				require.Equal(t, 2, count[id], id)
			}
		}},
		{faultstore.PrevEventCycles, func(t *testing.T, answer []*fedhistory.Event) {
			for _, ev := range answer {
				require.Contains(t, ev.PrevEvents, ev.ID, "%s names itself as a prev_event", ev.ID)
				require.Equal(t, byID[ev.ID].PrevEvents, ev.PrevEvents[:len(byID[ev.ID].PrevEvents)], "the real prev_events come first")
			}
		}},
		{faultstore.MissingFields, func(t *testing.T, answer []*fedhistory.Event) {
			for _, ev := range answer {
				original, ok := byID[ev.ID]
				if !ok {
					require.Empty(t, ev.ID, "only a zeroed ID can be unknown")
					continue
				}
				changed := ev.RoomID == "" || ev.Type == "" || ev.Sender == "" || ev.Depth == 0 ||
					(original.StateKey != nil && ev.StateKey == nil) ||
					(len(original.PrevEvents) > 0 && len(ev.PrevEvents) == 0) ||
					len(ev.JSON) < len(original.JSON)
				// An event without a state key or prev_events (a message
				// losing its state key, the create event its prev_events) may
				// come back unchanged.
				if !changed {
					require.True(t, original.StateKey == nil || len(original.PrevEvents) == 0, "%s has lost nothing", ev.ID)
				}
			}
		}},
		{faultstore.DepthOutOfRange, func(t *testing.T, answer []*fedhistory.Event) {
			for _, ev := range answer {
				require.Contains(t, []int64{faultstore.OutOfRangeDepth, -faultstore.OutOfRangeDepth}, ev.Depth)
			}
		}},
		{faultstore.WrongFlags, func(t *testing.T, answer []*fedhistory.Event) {
			for _, ev := range answer {
				requireMoreFlags(t, byID[ev.ID], ev)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.garbage.String(), func(t *testing.T) {
			first, second := eventsWithGarbage(t, inner, faultstore.Faults{Garbage: tc.garbage, Seed: 3})
			tc.check(t, append(first, second...))
		})
	}

	t.Run("cycles reach back to earlier answers", func(t *testing.T) {
		first, second := eventsWithGarbage(t, inner, faultstore.Faults{Garbage: faultstore.PrevEventCycles, Seed: 3})
		earlier := map[string]bool{}
		for _, ev := range first {
			earlier[ev.ID] = true
		}
		for _, ev := range second {
			last := ev.PrevEvents[len(ev.PrevEvents)-1]
			require.True(t, earlier[last], "%s: its last prev_event %s was answered earlier", ev.ID, last)
		}
	})

	t.Run("the wrapped store's events are untouched", func(t *testing.T) {
		before, err := inner.Events(context.Background(), room.ID, ids)
		require.NoError(t, err)
		depths := make([]int64, len(before))
		for i, ev := range before {
			depths[i] = ev.Depth
		}
		eventsWithGarbage(t, inner, faultstore.Faults{Garbage: faultstore.AllGarbage, Seed: 4})
		after, err := inner.Events(context.Background(), room.ID, ids)
		require.NoError(t, err)
		for i, ev := range room.Events {
			require.Equal(t, ev.ID, after[i].ID)
			require.Equal(t, string(ev.JSON), string(after[i].JSON))
			require.Equal(t, depths[i], after[i].Depth)
			require.Equal(t, room.ID, after[i].RoomID)
			require.NotContains(t, after[i].PrevEvents, ev.ID)
		}
	})

	t.Run("the same seed gives the same garbage", func(t *testing.T) {
		faults := faultstore.Faults{Garbage: faultstore.AllGarbage, GarbageRate: 0.5, Seed: 5}
		first1, second1 := eventsWithGarbage(t, inner, faults)
		first2, second2 := eventsWithGarbage(t, inner, faults)
		require.Equal(t, first1, first2)
		require.Equal(t, second1, second2)
	})

	t.Run("GarbageRate picks some events", func(t *testing.T) {
		first, second := eventsWithGarbage(t, inner, faultstore.Faults{Garbage: faultstore.DepthOutOfRange, GarbageRate: 0.5, Seed: 6})
		altered := 0
		for _, ev := range append(first, second...) {
			if ev.Depth == faultstore.OutOfRangeDepth || ev.Depth == -faultstore.OutOfRangeDepth {
				altered++
			}
		}
		require.Positive(t, altered)
		require.Less(t, altered, len(ids))
	})

	t.Run("no garbage without Garbage", func(t *testing.T) {
		first, second := eventsWithGarbage(t, inner, faultstore.Faults{GarbageRate: 1, Seed: 7})
		require.ElementsMatch(t, genuine, append(first, second...))
	})
}

func TestMisalignedVisibility(t *testing.T) {
	room, ids := reference(t)
	inner := loadMemstore(t)
	ctx := context.Background()
	genuine, err := inner.Visibility(ctx, room.ID, "hs2.example", ids)
	require.NoError(t, err)
	require.Len(t, genuine, len(ids))
	readable := fedhistory.VisibilityState{HistoryVisibility: "world_readable", Memberships: map[string]string{}}

	// misalignments asks n times and counts the answers that lost their
	// first entry, that gained one in front, and that came back unchanged.
	misalignments := func(t *testing.T, faults faultstore.Faults, n int) (dropped, added, unchanged int) {
		store := faultstore.Wrap(inner, faults)
		for range n {
			got, err := store.Visibility(ctx, room.ID, "hs2.example", ids)
			require.NoError(t, err)
			switch len(got) {
			case len(ids):
				require.Equal(t, genuine, got)
				unchanged++
			case len(ids) - 1:
				require.Equal(t, genuine[1:], got, "the first entry is dropped, so every other answers the wrong ID")
				dropped++
			case len(ids) + 1:
				require.Equal(t, fedhistory.EventVisibility{Known: true, Before: readable, After: readable}, got[0])
				require.Equal(t, genuine, got[1:], "an entry is put in front, so every other answers the wrong ID")
				added++
			default:
				t.Fatalf("%d answers for %d IDs", len(got), len(ids))
			}
		}
		return dropped, added, unchanged
	}

	t.Run("rate 0 misaligns every call, both ways", func(t *testing.T) {
		dropped, added, unchanged := misalignments(t, faultstore.Faults{Garbage: faultstore.MisalignedVisibility, Seed: 9}, 20)
		require.Zero(t, unchanged)
		require.Positive(t, dropped)
		require.Positive(t, added)
	})
	t.Run("GarbageRate picks some calls", func(t *testing.T) {
		dropped, added, unchanged := misalignments(t, faultstore.Faults{Garbage: faultstore.MisalignedVisibility, GarbageRate: 0.5, Seed: 10}, 40)
		require.Positive(t, dropped+added)
		require.Positive(t, unchanged)
	})
	t.Run("Events garbage leaves Visibility alone", func(t *testing.T) {
		others := faultstore.AllGarbage &^ faultstore.MisalignedVisibility
		_, _, unchanged := misalignments(t, faultstore.Faults{Garbage: others, Seed: 11}, 5)
		require.Equal(t, 5, unchanged)
	})
	t.Run("an empty answer gains an entry", func(t *testing.T) {
		store := faultstore.Wrap(inner, faultstore.Faults{Garbage: faultstore.MisalignedVisibility, Seed: 12})
		for range 5 {
			got, err := store.Visibility(ctx, room.ID, "hs2.example", nil)
			require.NoError(t, err)
			require.Len(t, got, 1)
		}
	})
	t.Run("the wrapped store's answer is untouched", func(t *testing.T) {
		answer := slices.Clone(genuine)
		store := faultstore.Wrap(sameVisibility{inner, answer}, faultstore.Faults{Garbage: faultstore.MisalignedVisibility, Seed: 13})
		for range 10 {
			got, err := store.Visibility(ctx, room.ID, "hs2.example", ids)
			require.NoError(t, err)
			require.NotEqual(t, len(ids), len(got))
		}
		require.Equal(t, genuine, answer)
	})
}

// sameVisibility answers every Visibility call with the very same slice.
type sameVisibility struct {
	fedhistory.EventStore
	answer []fedhistory.EventVisibility
}

func (s sameVisibility) Visibility(context.Context, string, string, []string) ([]fedhistory.EventVisibility, error) {
	return s.answer, nil
}

// bareStore is an EventStore that is not an ErasureStore.
type bareStore struct{ fedhistory.EventStore }

func TestErasedUsers(t *testing.T) {
	inner := loadMemstore(t)
	users := []string{"@erin:hs3.example", "@dave:hs3.example:8448", "@bob:hs2.example"}

	erased, err := faultstore.Wrap(inner, faultstore.Faults{}).ErasedUsers(context.Background(), users)
	require.NoError(t, err)
	require.Equal(t, map[string]bool{"@erin:hs3.example": true, "@dave:hs3.example:8448": true}, erased,
		"the wrapped store's answer")

	erased, err = faultstore.Wrap(bareStore{inner}, faultstore.Faults{}).ErasedUsers(context.Background(), users)
	require.NoError(t, err)
	require.Empty(t, erased, "a store that cannot tell erases nobody")
}

// walkerStore claims to be a BackfillWalker.
type walkerStore struct{ *memstore.Store }

func (walkerStore) WalkBackfill(context.Context, dag.BackfillRequest) (fedhistory.WalkResult, error) {
	return fedhistory.WalkResult{}, errors.New("not used")
}

func TestWalkersAreNotPassedThrough(t *testing.T) {
	var inner any = walkerStore{memstore.New()}
	_, isWalker := inner.(fedhistory.BackfillWalker)
	require.True(t, isWalker, "the wrapped store walks")
	var store any = faultstore.Wrap(walkerStore{memstore.New()}, faultstore.Faults{})
	_, isWalker = store.(fedhistory.BackfillWalker)
	require.False(t, isWalker, "the handler must walk over the faulty Events")
	_, isWalker = store.(fedhistory.MissingEventsWalker)
	require.False(t, isWalker)
}

func TestCallsIsACopy(t *testing.T) {
	store := faultstore.Wrap(memstore.New(), faultstore.Faults{})
	_, err := store.RoomVersion(context.Background(), "!nope:hs1.example")
	require.ErrorIs(t, err, fedhistory.ErrRoomNotFound, "errors of the wrapped store pass through")
	calls := store.Calls()
	calls["RoomVersion"] = 100
	require.Equal(t, map[string]int{"RoomVersion": 1}, store.Calls())
}

func TestConcurrentCalls(t *testing.T) {
	room, ids := reference(t)
	store := faultstore.Wrap(loadMemstore(t), faultstore.Faults{ErrorRate: 0.3, Garbage: faultstore.AllGarbage, GarbageRate: 0.3, Seed: 8})
	const goroutines, rounds = 16, 20
	var wg sync.WaitGroup
	var mu sync.Mutex
	var unexpected []string
	for range goroutines {
		wg.Go(func() {
			for range rounds {
				for method, err := range everyMethod(context.Background(), store, room.ID, ids) {
					if err != nil && !errors.Is(err, faultstore.ErrInjected) {
						mu.Lock()
						unexpected = append(unexpected, method+": "+err.Error())
						mu.Unlock()
					}
				}
			}
		})
	}
	wg.Wait()
	require.Empty(t, unexpected)
	for method, n := range store.Calls() {
		require.Equal(t, goroutines*rounds, n, method)
	}
}

func TestGarbageString(t *testing.T) {
	require.Equal(t, "none", faultstore.Garbage(0).String())
	require.Equal(t, "DuplicateIDs|DepthOutOfRange", (faultstore.DuplicateIDs | faultstore.DepthOutOfRange).String())
	require.Equal(t, "ForeignRoomEvents|DuplicateIDs|PrevEventCycles|MissingFields|DepthOutOfRange|MisalignedVisibility|WrongFlags", faultstore.AllGarbage.String())
	require.Equal(t, "MissingFields|Garbage(0x100)", (faultstore.MissingFields | 1<<8).String())
}

func TestForeignEventJSONIsValid(t *testing.T) {
	room, ids := reference(t)
	store := faultstore.Wrap(loadMemstore(t), faultstore.Faults{Garbage: faultstore.ForeignRoomEvents})
	answer, err := store.Events(context.Background(), room.ID, ids[:3])
	require.NoError(t, err)
	for _, ev := range answer {
		if ev.RoomID != faultstore.ForeignRoomID {
			continue
		}
		var fields map[string]any
		require.NoError(t, json.Unmarshal(ev.JSON, &fields))
		require.Equal(t, faultstore.ForeignRoomID, fields["room_id"])
		require.True(t, strings.HasPrefix(ev.ID, "$"))
	}
}

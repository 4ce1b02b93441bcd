package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/fedhistory/fedhistory"
	"github.com/fedhistory/fedhistory/internal/faultstore"
)

// Environment variables for tests only. They are not options, and not in
// --help: nobody wants a slow or failing server. serve says on stderr when
// one is set.
const (
	// testStoreLatencyEnv, set to a duration, delays every call to the
	// store by that long (a call whose request is cancelled meanwhile
	// returns at once with the context's error), so that a test can hold
	// requests in flight while it shuts the server down.
	testStoreLatencyEnv = "FEDHISTORY_TEST_STORE_LATENCY"
	// testStoreFailRoomEnv, set to a room ID, makes every store call
	// about that room fail (faultstore.ErrInjected), so that a test gets a
	// 500 from it while the other rooms are served.
	testStoreFailRoomEnv = "FEDHISTORY_TEST_STORE_FAIL_ROOM"
	// testStoreHangRoomEnv, set to a room ID, makes every store call about
	// that room wait until its request is cancelled, so that a test can
	// hold an origin's turns (and get a 429) while the other rooms are
	// served.
	testStoreHangRoomEnv = "FEDHISTORY_TEST_STORE_HANG_ROOM"
)

// hang is the latency of the calls testStoreHangRoomEnv holds: longer than
// any request may run.
const hang = 1000 * time.Hour

// withTestStoreFaults wraps store as the test environment variables ask,
// saying so on stderr, or returns it as it is when none is set. A wrapped
// store offers only the EventStore and ErasureStore methods: the handler
// then walks the DAG itself, over Events calls.
func withTestStoreFaults(store fedhistory.EventStore, stderr io.Writer) (fedhistory.EventStore, error) {
	if value, ok := os.LookupEnv(testStoreLatencyEnv); ok {
		latency, err := time.ParseDuration(value)
		if err != nil || latency < 0 {
			return nil, fmt.Errorf("%s=%q: want a duration such as 500ms", testStoreLatencyEnv, value)
		}
		fmt.Fprintf(stderr, "fedhistory: %s=%s: every store call waits %s (for tests only)\n", testStoreLatencyEnv, value, latency)
		store = faultstore.Wrap(store, faultstore.Faults{Latency: latency})
	}
	if room, ok := os.LookupEnv(testStoreFailRoomEnv); ok {
		fmt.Fprintf(stderr, "fedhistory: %s=%s: every store call about that room fails (for tests only)\n", testStoreFailRoomEnv, room)
		store = &roomFaults{EventStore: store, room: room, faulty: faultstore.Wrap(store, faultstore.Faults{ErrorRate: 1})}
	}
	if room, ok := os.LookupEnv(testStoreHangRoomEnv); ok {
		fmt.Fprintf(stderr, "fedhistory: %s=%s: every store call about that room waits until its request is cancelled (for tests only)\n", testStoreHangRoomEnv, room)
		store = &roomFaults{EventStore: store, room: room, faulty: faultstore.Wrap(store, faultstore.Faults{Latency: hang})}
	}
	return store, nil
}

// roomFaults sends the calls about one room to a faulty store, and the
// others to the store it embeds.
type roomFaults struct {
	fedhistory.EventStore
	room   string
	faulty fedhistory.EventStore
}

func (s *roomFaults) pick(roomID string) fedhistory.EventStore {
	if roomID == s.room {
		return s.faulty
	}
	return s.EventStore
}

func (s *roomFaults) RoomVersion(ctx context.Context, roomID string) (string, error) {
	return s.pick(roomID).RoomVersion(ctx, roomID)
}

func (s *roomFaults) Events(ctx context.Context, roomID string, ids []string) ([]*fedhistory.Event, error) {
	return s.pick(roomID).Events(ctx, roomID, ids)
}

func (s *roomFaults) CurrentState(ctx context.Context, roomID, server string) (*fedhistory.CurrentState, error) {
	return s.pick(roomID).CurrentState(ctx, roomID, server)
}

func (s *roomFaults) Visibility(ctx context.Context, roomID, server string, ids []string) ([]fedhistory.EventVisibility, error) {
	return s.pick(roomID).Visibility(ctx, roomID, server, ids)
}

// ErasedUsers asks the wrapped store, when it can tell.
func (s *roomFaults) ErasedUsers(ctx context.Context, userIDs []string) (map[string]bool, error) {
	if erasure, ok := s.EventStore.(fedhistory.ErasureStore); ok {
		return erasure.ErasedUsers(ctx, userIDs)
	}
	return nil, nil
}

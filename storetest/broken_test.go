package storetest_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory"
	"github.com/fedhistory/fedhistory/dag"
	"github.com/fedhistory/fedhistory/memstore"
	"github.com/fedhistory/fedhistory/storetest"
)

// brokenEnv names the bug TestBrokenStore runs the suite against.
const brokenEnv = "STORETEST_BROKEN_STORE"

// storeBugs are plausible store bugs, each with the subtest that must catch
// it. "correct walkers" is the control: a store with walkers that are right
// must pass.
var storeBugs = []struct {
	bug     string
	failing string // subtest name, as go test prints it
}{
	{"correct walkers", ""},
	{"unknown room is a plain error", "RoomVersion/unknown_room_is_ErrRoomNotFound"},
	{"JSON gains a newline", "Events/v10_main/every_event_in_one_batch_with_unknown_and_foreign_IDs/create"},
	{"Events ignores the room", "Events/v10_main/IDs_of_another_room_are_left_out"},
	{"Redacts read from the top level only", "Events/v11_fork_and_merge/every_event_in_one_batch_with_unknown_and_foreign_IDs/alice_redacts_bob's_message_(content.redacts)"},
	{"prev_events reversed", "Events/v11_fork_and_merge/every_event_in_one_batch_with_unknown_and_foreign_IDs/alice's_message_merging_the_branches"},
	{"servers matched by prefix", "CurrentState/hs3.example:84_is_not_hs3.example:8448"},
	{"no ACL", "CurrentState/the_server_ACL_of_the_v10_room,_and_evil.example_has_no_members"},
	{"Before is After", "Visibility/v10:_history_visibility_is_shared_before_the_change_and_joined_after_it"},
	{"outliers have visibility", "Visibility/outliers,_unknown_IDs_and_another_room's_events_are_not_known"},
	{"Visibility ignores the room", "Visibility/outliers,_unknown_IDs_and_another_room's_events_are_not_known"},
	{"Visibility leaves unknown IDs out", "Visibility/outliers,_unknown_IDs_and_another_room's_events_are_not_known"},
	{"Visibility answers in ID order", "Visibility/answers_follow_the_order_asked,_repeats_included"},
	{"Visibility answers repeated IDs once", "Visibility/answers_follow_the_order_asked,_repeats_included"},
	{"erasure forgets the port server", "ErasedUsers/erin_and_dave_are_erased,_nobody_else"},
	{"empty answer when cancelled", "cancelled_context/cancelled/every_method"},
	{"backfill walker drops the oldest", "WalkBackfill/v10_main/from_the_last_event,_limit_3"},
	{"missing events walker ignores min_depth", "WalkMissingEvents/v10_main/min_depth_at_the_middle_event's_depth"},
}

// TestSuiteCatchesBrokenStores runs the suite, in a child process, against
// stores with one bug each, and requires it to fail in the subtest meant to
// catch that bug.
func TestSuiteCatchesBrokenStores(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the suite once per bug")
	}
	for _, tc := range storeBugs {
		t.Run(tc.bug, func(t *testing.T) {
			t.Parallel()
			cmd := exec.Command(os.Args[0], "-test.run=^TestBrokenStore$", "-test.v")
			cmd.Env = append(os.Environ(), brokenEnv+"="+tc.bug)
			out, err := cmd.CombinedOutput()
			if tc.failing == "" {
				require.NoError(t, err, "%s", out)
				require.Contains(t, string(out), "--- PASS: TestBrokenStore/WalkBackfill")
				require.Contains(t, string(out), "--- PASS: TestBrokenStore/WalkMissingEvents")
				return
			}
			require.Error(t, err, "the suite passed a store whose bug is: %s", tc.bug)
			require.Contains(t, string(out), "--- FAIL: TestBrokenStore/"+tc.failing+" ", "%s", out)
		})
	}
}

// TestBrokenStore is run by TestSuiteCatchesBrokenStores.
func TestBrokenStore(t *testing.T) {
	bug := os.Getenv(brokenEnv)
	if bug == "" {
		t.Skip("run by TestSuiteCatchesBrokenStores")
	}
	storetest.Run(t, func(t *testing.T) fedhistory.EventStore {
		broken := &brokenStore{Store: loadMemstore(t), bug: bug}
		for _, room := range storetest.Rooms() {
			broken.rooms = append(broken.rooms, room)
		}
		if strings.Contains(bug, "walker") {
			return &walkingStore{broken}
		}
		return broken
	})
}

// brokenStore is a memstore with one bug.
type brokenStore struct {
	*memstore.Store
	bug   string
	rooms []storetest.Room
}

func (s *brokenStore) RoomVersion(ctx context.Context, roomID string) (string, error) {
	version, err := s.Store.RoomVersion(ctx, roomID)
	if err != nil && s.bug == "unknown room is a plain error" {
		return "", errors.New("no such room")
	}
	return version, err
}

func (s *brokenStore) Events(ctx context.Context, roomID string, ids []string) ([]*fedhistory.Event, error) {
	if ctx.Err() != nil && s.bug == "empty answer when cancelled" {
		return nil, nil
	}
	events, err := s.Store.Events(ctx, roomID, ids)
	if err != nil {
		return nil, err
	}
	if s.bug == "Events ignores the room" {
		for _, room := range s.rooms {
			if room.ID != roomID {
				others, _ := s.Store.Events(ctx, room.ID, ids)
				events = append(events, others...)
			}
		}
	}
	version, _ := s.Store.RoomVersion(ctx, roomID)
	out := make([]*fedhistory.Event, len(events))
	for i, ev := range events {
		changed := *ev
		switch s.bug {
		case "JSON gains a newline":
			changed.JSON = append(slices.Clone(ev.JSON), '\n')
		case "Redacts read from the top level only":
			if version == "11" || version == "12" {
				changed.Redacts = ""
			}
		case "prev_events reversed":
			changed.PrevEvents = slices.Clone(ev.PrevEvents)
			slices.Reverse(changed.PrevEvents)
		}
		out[i] = &changed
	}
	return out, nil
}

// knownServers are the servers of the reference rooms' users.
var knownServers = []string{"hs1.example", "hs2.example", "hs3.example", "hs3.example:8448", "evil.example"}

// prefixMemberships adds the memberships a store that matches servers by
// prefix would report for server.
func (s *brokenStore) prefixMemberships(members map[string]string, of func(server string) map[string]string, server string) map[string]string {
	out := map[string]string{}
	for user, membership := range members {
		out[user] = membership
	}
	for _, other := range knownServers {
		if other != server && strings.HasPrefix(other, server) {
			for user, membership := range of(other) {
				out[user] = membership
			}
		}
	}
	return out
}

func (s *brokenStore) CurrentState(ctx context.Context, roomID, server string) (*fedhistory.CurrentState, error) {
	current, err := s.Store.CurrentState(ctx, roomID, server)
	if err != nil {
		return nil, err
	}
	switch s.bug {
	case "no ACL":
		current.ServerACL = nil
	case "servers matched by prefix":
		current.Memberships = s.prefixMemberships(current.Memberships, func(other string) map[string]string {
			state, _ := s.Store.CurrentState(ctx, roomID, other)
			return state.Memberships
		}, server)
	}
	return current, nil
}

func (s *brokenStore) Visibility(ctx context.Context, roomID, server string, eventIDs []string) ([]fedhistory.EventVisibility, error) {
	visibility, err := s.Store.Visibility(ctx, roomID, server, eventIDs)
	if err != nil {
		return nil, err
	}
	switch s.bug {
	case "Before is After":
		for i := range visibility {
			visibility[i].Before = visibility[i].After
		}
	case "outliers have visibility":
		for _, room := range s.rooms {
			for _, ev := range room.Events {
				if !ev.Outlier || room.ID != roomID {
					continue
				}
				for i, id := range eventIDs {
					if id == ev.ID {
						visibility[i] = fedhistory.EventVisibility{Known: true}
					}
				}
			}
		}
	case "Visibility ignores the room":
		// An unknown answer is looked for in every other room too.
		for i, id := range eventIDs {
			for _, room := range s.rooms {
				if visibility[i].Known || room.ID == roomID {
					continue
				}
				elsewhere, _ := s.Store.Visibility(ctx, room.ID, server, []string{id})
				visibility[i] = elsewhere[0]
			}
		}
	case "Visibility leaves unknown IDs out":
		// The old contract: a map of the known events only.
		visibility = slices.DeleteFunc(visibility, func(v fedhistory.EventVisibility) bool { return !v.Known })
	case "Visibility answers in ID order":
		// What a database gives back without an ORDER BY matching the
		// request.
		order := make([]int, len(eventIDs))
		for i := range order {
			order[i] = i
		}
		slices.SortStableFunc(order, func(a, b int) int { return strings.Compare(eventIDs[a], eventIDs[b]) })
		sorted := make([]fedhistory.EventVisibility, len(order))
		for i, from := range order {
			sorted[i] = visibility[from]
		}
		visibility = sorted
	case "Visibility answers repeated IDs once":
		var once []fedhistory.EventVisibility
		for i, id := range eventIDs {
			if !slices.Contains(eventIDs[:i], id) {
				once = append(once, visibility[i])
			}
		}
		visibility = once
	case "servers matched by prefix":
		for i, id := range eventIDs {
			v := visibility[i]
			if !v.Known {
				continue
			}
			of := func(when func(fedhistory.EventVisibility) fedhistory.VisibilityState) func(string) map[string]string {
				return func(other string) map[string]string {
					answer, _ := s.Store.Visibility(ctx, roomID, other, []string{id})
					return when(answer[0]).Memberships
				}
			}
			v.Before.Memberships = s.prefixMemberships(v.Before.Memberships, of(func(e fedhistory.EventVisibility) fedhistory.VisibilityState { return e.Before }), server)
			v.After.Memberships = s.prefixMemberships(v.After.Memberships, of(func(e fedhistory.EventVisibility) fedhistory.VisibilityState { return e.After }), server)
			visibility[i] = v
		}
	}
	return visibility, nil
}

func (s *brokenStore) ErasedUsers(ctx context.Context, userIDs []string) (map[string]bool, error) {
	erased, err := s.Store.ErasedUsers(ctx, userIDs)
	if err != nil {
		return nil, err
	}
	if s.bug == "erasure forgets the port server" {
		for user := range erased {
			if strings.HasSuffix(user, ":8448") {
				delete(erased, user)
			}
		}
	}
	return erased, nil
}

// walkingStore adds BackfillWalker and MissingEventsWalker, both running the
// dag walks over the store's Events, except for the bugs.
type walkingStore struct{ *brokenStore }

func (s *walkingStore) fetch(roomID string) dag.FetchFunc {
	return func(ctx context.Context, ids []string) ([]dag.Node, error) {
		events, err := s.Events(ctx, roomID, ids)
		if err != nil {
			return nil, err
		}
		nodes := make([]dag.Node, len(events))
		for i, ev := range events {
			nodes[i] = dag.Node{ID: ev.ID, RoomID: ev.RoomID, Depth: ev.Depth, PrevEvents: ev.PrevEvents, Rejected: ev.Rejected, Outlier: ev.Outlier}
		}
		return nodes, nil
	}
}

func (s *walkingStore) WalkBackfill(ctx context.Context, req dag.BackfillRequest) (fedhistory.WalkResult, error) {
	res, err := dag.Backfill(ctx, req, s.fetch(req.RoomID))
	if err != nil {
		return fedhistory.WalkResult{}, err
	}
	ids := res.IDs
	if s.bug == "backfill walker drops the oldest" && len(ids) > 1 {
		ids = ids[:len(ids)-1]
	}
	return s.inOrder(ctx, req.RoomID, ids)
}

func (s *walkingStore) WalkMissingEvents(ctx context.Context, req dag.MissingEventsRequest) (fedhistory.WalkResult, error) {
	if s.bug == "missing events walker ignores min_depth" {
		req.MinDepth = 0
	}
	res, err := dag.MissingEvents(ctx, req, s.fetch(req.RoomID))
	if err != nil {
		return fedhistory.WalkResult{}, err
	}
	return s.inOrder(ctx, req.RoomID, res.IDs)
}

// inOrder returns the events of ids, in the order of ids.
func (s *walkingStore) inOrder(ctx context.Context, roomID string, ids []string) (fedhistory.WalkResult, error) {
	events, err := s.Events(ctx, roomID, ids)
	if err != nil {
		return fedhistory.WalkResult{}, err
	}
	byID := make(map[string]*fedhistory.Event, len(events))
	for _, ev := range events {
		byID[ev.ID] = ev
	}
	out := make([]*fedhistory.Event, 0, len(ids))
	for _, id := range ids {
		out = append(out, byID[id])
	}
	return fedhistory.WalkResult{Events: out}, nil
}

package storetest_test

import (
	"cmp"
	"context"
	"errors"
	"fmt"
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
	// Redactions.
	{"redactions ignored", "Redacted/v10:_by_power:_alice_has_100,_redact_needs_50"},
	{"redactions ignored by EventByID", "Redacted/EventByID"},
	{"redactions ignored by EventAtTimestamp", "Redacted/EventAtTimestamp"},
	{"backfill walks forget redactions", "Redacted/WalkBackfill"},
	{"any redaction applies", "Redacted/v10:_neither_power_nor_the_same_server:_bob_has_0_and_is_of_hs2.example,_alice_of_hs1.example"},
	// State after a gap.
	{"state invented after a gap", "Visibility/fail-closed:_v10:_an_event_naming_an_outlier_as_a_prev_event"},
	{"current state invented after a gap", "CurrentState/the_v1_room's_current_state_is_unknown:_a_forward_extremity_follows_a_gap"},
	{"StateBefore invented after a gap", "StateBefore/ErrStateUnknown:_v1:_an_event_after_a_prev_event_the_store_never_received"},
	// The capabilities.
	{"StateBefore is the state after", "StateBefore/v10:_the_state_before_a_state_event_is_without_its_own_change"},
	{"StateBefore of a rejected event", "StateBefore/v10_main/carol's_history_visibility_change,_rejected"},
	{"AuthChain includes the events asked", "AuthChain/v10:_an_eventID_is_in_the_answer_only_if_another_one_reaches_it"},
	{"AuthChain without the implicit create event", "AuthChain/v12:_the_create_event_is_an_auth_event_of_every_other_event,_which_v12_never_lists"},
	{"AuthChain leaves outliers out", "AuthChain/v11_joined_over_federation:_outliers_are_in_the_chain_and_walked_through"},
	{"EventByID ignores outliers", "EventByID/v10_main/oscar's_join,_an_outlier"},
	{"EventAtTimestamp bounds are exclusive", "EventAtTimestamp/v10:_the_bound_is_inclusive,_backward"},
	{"EventAtTimestamp takes rejected events", "EventAtTimestamp/v10:_rejected_events_are_skipped,_backward"},
	{"EventAtTimestamp breaks ties by ID alone", "EventAtTimestamp/v12:_equal_origin_server_ts,_backward:_the_deepest,_though_not_the_greatest_ID"},
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
				for _, group := range []string{"WalkBackfill", "WalkMissingEvents", "StateBefore", "AuthChain", "EventByID", "EventAtTimestamp"} {
					require.Contains(t, string(out), "--- PASS: TestBrokenStore/"+group+" ", "the control runs every capability's checks")
				}
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
		broken := &brokenStore{Store: loadMemstore(t), bug: bug, rooms: storetest.Rooms()}
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
		case "redactions ignored":
			changed.Redacted = false
		case "any redaction applies":
			changed.Redacted = changed.Redacted || s.anyRedaction(ctx, roomID, ev)
		}
		out[i] = &changed
	}
	return out, nil
}

// anyRedaction reports whether the room holds a redaction of ev that is not
// rejected, whoever sent it: what a store that ignores the power levels
// and servers of room versions 3 and later applies.
func (s *brokenStore) anyRedaction(ctx context.Context, roomID string, ev *fedhistory.Event) bool {
	for _, room := range s.rooms {
		if room.ID != roomID {
			continue
		}
		for _, other := range room.Events {
			redaction, err := s.Store.Events(ctx, roomID, []string{other.ID})
			if err == nil && len(redaction) == 1 && redaction[0].Type == "m.room.redaction" && !redaction[0].Rejected &&
				redaction[0].Redacts == ev.ID && ev.Type != "m.room.create" {
				return true
			}
		}
	}
	return false
}

// held reports whether the store holds id in roomID, as no outlier.
func (s *brokenStore) held(ctx context.Context, roomID, id string) bool {
	events, err := s.Store.Events(ctx, roomID, []string{id})
	return err == nil && len(events) == 1 && !events[0].Outlier
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
	if errors.Is(err, fedhistory.ErrStateUnknown) && s.bug == "current state invented after a gap" {
		return &fedhistory.CurrentState{Memberships: map[string]string{}}, nil
	}
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
	case "state invented after a gap":
		// The empty state, as memstore had it before round two.
		for i, id := range eventIDs {
			if !visibility[i].Known && s.held(ctx, roomID, id) {
				empty := fedhistory.VisibilityState{Memberships: map[string]string{}}
				visibility[i] = fedhistory.EventVisibility{Known: true, Before: empty, After: empty}
			}
		}
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

func (s *brokenStore) StateBefore(ctx context.Context, roomID, eventID string) ([]string, error) {
	state, err := s.Store.StateBefore(ctx, roomID, eventID)
	switch {
	case s.bug == "StateBefore invented after a gap" && errors.Is(err, fedhistory.ErrStateUnknown):
		return []string{}, nil
	case s.bug == "StateBefore of a rejected event" && errors.Is(err, fedhistory.ErrEventNotFound):
		events, _ := s.Store.Events(ctx, roomID, []string{eventID})
		if len(events) == 1 && events[0].Rejected {
			return []string{}, nil
		}
	case s.bug == "StateBefore is the state after" && err == nil:
		events, _ := s.Store.Events(ctx, roomID, []string{eventID})
		if len(events) == 1 && events[0].StateKey != nil {
			state = append(state, eventID)
		}
	}
	return state, err
}

func (s *brokenStore) AuthChain(ctx context.Context, roomID string, eventIDs []string) ([]string, error) {
	chain, err := s.Store.AuthChain(ctx, roomID, eventIDs)
	if err != nil {
		return nil, err
	}
	switch s.bug {
	case "AuthChain includes the events asked":
		for _, id := range eventIDs {
			if s.held(ctx, roomID, id) && !slices.Contains(chain, id) {
				chain = append(chain, id)
			}
		}
	case "AuthChain without the implicit create event":
		version, _ := s.Store.RoomVersion(ctx, roomID)
		if version == "12" {
			chain = slices.DeleteFunc(chain, func(id string) bool { return id == "$"+strings.TrimPrefix(roomID, "!") })
		}
	case "AuthChain leaves outliers out":
		events, _ := s.Store.Events(ctx, roomID, chain)
		chain = chain[:0]
		for _, ev := range events {
			if !ev.Outlier {
				chain = append(chain, ev.ID)
			}
		}
	}
	return chain, nil
}

func (s *brokenStore) EventByID(ctx context.Context, eventID string) (*fedhistory.Event, error) {
	ev, err := s.Store.EventByID(ctx, eventID)
	if err != nil {
		return nil, err
	}
	switch {
	case s.bug == "EventByID ignores outliers" && ev.Outlier:
		return nil, fmt.Errorf("no such event: %w", fedhistory.ErrEventNotFound)
	case s.bug == "redactions ignored by EventByID" && ev.Redacted:
		changed := *ev
		changed.Redacted = false
		return &changed, nil
	}
	return ev, nil
}

func (s *brokenStore) EventAtTimestamp(ctx context.Context, roomID string, ts int64, dir fedhistory.Direction) (*fedhistory.Event, error) {
	switch s.bug {
	case "EventAtTimestamp bounds are exclusive":
		if dir == fedhistory.Backward {
			ts--
		} else {
			ts++
		}
	case "EventAtTimestamp takes rejected events", "EventAtTimestamp breaks ties by ID alone":
		return s.scanTimestamp(ctx, roomID, ts, dir)
	}
	ev, err := s.Store.EventAtTimestamp(ctx, roomID, ts, dir)
	if err == nil && s.bug == "redactions ignored by EventAtTimestamp" && ev.Redacted {
		changed := *ev
		changed.Redacted = false
		return &changed, nil
	}
	return ev, err
}

// scanTimestamp is a timestamp lookup with one of two bugs: it takes
// rejected events, or orders events of equal origin_server_ts by ID alone.
func (s *brokenStore) scanTimestamp(ctx context.Context, roomID string, ts int64, dir fedhistory.Direction) (*fedhistory.Event, error) {
	if _, err := s.Store.RoomVersion(ctx, roomID); err != nil {
		return nil, err
	}
	var ids []string
	for _, room := range s.rooms {
		if room.ID == roomID {
			for _, ev := range room.Events {
				ids = append(ids, ev.ID)
			}
		}
	}
	events, err := s.Store.Events(ctx, roomID, ids)
	if err != nil {
		return nil, err
	}
	compare := func(a, b *fedhistory.Event) int {
		if s.bug == "EventAtTimestamp breaks ties by ID alone" {
			return cmp.Or(cmp.Compare(a.OriginServerTS, b.OriginServerTS), strings.Compare(a.ID, b.ID))
		}
		return cmp.Or(cmp.Compare(a.OriginServerTS, b.OriginServerTS), cmp.Compare(a.Depth, b.Depth), strings.Compare(a.ID, b.ID))
	}
	var best *fedhistory.Event
	for _, ev := range events {
		if ev.Outlier || (ev.Rejected && s.bug != "EventAtTimestamp takes rejected events") {
			continue
		}
		switch {
		case dir == fedhistory.Backward && ev.OriginServerTS <= ts && (best == nil || compare(ev, best) > 0):
			best = ev
		case dir == fedhistory.Forward && ev.OriginServerTS >= ts && (best == nil || compare(ev, best) < 0):
			best = ev
		}
	}
	if best == nil {
		return nil, fmt.Errorf("nothing at %d: %w", ts, fedhistory.ErrEventNotFound)
	}
	return best, nil
}

func (s *brokenStore) WalkBackfill(ctx context.Context, req dag.BackfillRequest) (fedhistory.WalkResult, error) {
	result, err := s.Store.WalkBackfill(ctx, req)
	if err != nil || s.bug != "backfill walks forget redactions" {
		return result, err
	}
	for i, ev := range result.Events {
		changed := *ev
		changed.Redacted = false
		result.Events[i] = &changed
	}
	return result, nil
}

package fedhistory

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

// authzFakeStore is a map-backed EventStore for the authorisation and
// visibility tests. It answers exactly what it is given (it does not filter
// memberships by server, so tests can play a misbehaving store) and counts
// calls, so tests can check the filter batches its reads.
type authzFakeStore struct {
	versions   map[string]string          // room ID → version
	events     map[string]*Event          // event ID → event, any room
	current    map[string]*CurrentState   // room ID → current state
	visibility map[string]EventVisibility // event ID → visibility, answered as is
	err        error                      // returned by the failing calls when set
	failOn     string                     // the method that fails; "" means every method
	calls      map[string]int             // method name → number of calls
	requested  map[string][][]string      // method name → the IDs of each call
	mu         sync.Mutex
}

func newAuthzFakeStore() *authzFakeStore {
	return &authzFakeStore{
		versions:   map[string]string{},
		events:     map[string]*Event{},
		current:    map[string]*CurrentState{},
		visibility: map[string]EventVisibility{},
		calls:      map[string]int{},
		requested:  map[string][][]string{},
	}
}

// record counts a call and returns the error it must fail with, if any.
func (s *authzFakeStore) record(method string, ids []string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls[method]++
	s.requested[method] = append(s.requested[method], append([]string(nil), ids...))
	if s.failOn == "" || s.failOn == method {
		return s.err
	}
	return nil
}

func (s *authzFakeStore) RoomVersion(_ context.Context, roomID string) (string, error) {
	if err := s.record("RoomVersion", nil); err != nil {
		return "", err
	}
	version, ok := s.versions[roomID]
	if !ok {
		return "", fmt.Errorf("room %s: %w", roomID, ErrRoomNotFound)
	}
	return version, nil
}

func (s *authzFakeStore) Events(_ context.Context, roomID string, ids []string) ([]*Event, error) {
	if err := s.record("Events", ids); err != nil {
		return nil, err
	}
	var found []*Event
	for _, id := range ids {
		if ev, ok := s.events[id]; ok && ev.RoomID == roomID {
			found = append(found, ev)
		}
	}
	return found, nil
}

func (s *authzFakeStore) CurrentState(_ context.Context, roomID, _ string) (*CurrentState, error) {
	if err := s.record("CurrentState", nil); err != nil {
		return nil, err
	}
	state, ok := s.current[roomID]
	if !ok {
		return nil, fmt.Errorf("room %s: %w", roomID, ErrRoomNotFound)
	}
	return state, nil
}

func (s *authzFakeStore) Visibility(_ context.Context, _, _ string, eventIDs []string) ([]EventVisibility, error) {
	if err := s.record("Visibility", eventIDs); err != nil {
		return nil, err
	}
	// As given, Known included: an ID without an entry gets the zero
	// value, which is not Known.
	answer := make([]EventVisibility, len(eventIDs))
	for i, id := range eventIDs {
		answer[i] = s.visibility[id]
	}
	return answer, nil
}

func (s *authzFakeStore) callCount(method string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[method]
}

// authzFakeErasureStore adds ErasedUsers to authzFakeStore.
type authzFakeErasureStore struct {
	*authzFakeStore
	erased map[string]bool
}

func (s *authzFakeErasureStore) ErasedUsers(_ context.Context, userIDs []string) (map[string]bool, error) {
	if err := s.record("ErasedUsers", userIDs); err != nil {
		return nil, err
	}
	found := make(map[string]bool)
	for _, user := range userIDs {
		if s.erased[user] {
			found[user] = true
		}
	}
	return found, nil
}

func TestAuthorizeRoom(t *testing.T) {
	const (
		room   = "!room:home.example"
		origin = "remote.example"
	)
	tests := []struct {
		name       string
		origin     string        // origin when not the default
		state      *CurrentState // nil: the store does not hold the room
		wantReason string        // "" means authorised
	}{
		{
			name:  "a joined user admits its server",
			state: &CurrentState{Memberships: map[string]string{"@alice:remote.example": "join"}},
		},
		{
			name: "one joined user among departed ones is enough",
			state: &CurrentState{Memberships: map[string]string{
				"@alice:remote.example": "leave",
				"@bob:remote.example":   "join",
				"@carol:remote.example": "ban",
			}},
		},
		{
			name:       "unknown room looks exactly like not being in the room",
			state:      nil,
			wantReason: reasonNotInRoom,
		},
		{
			name:       "a server that left the room",
			state:      &CurrentState{Memberships: map[string]string{"@alice:remote.example": "leave"}},
			wantReason: reasonNotInRoom,
		},
		{
			name:       "a server that is only invited",
			state:      &CurrentState{Memberships: map[string]string{"@alice:remote.example": "invite"}},
			wantReason: reasonNotInRoom,
		},
		{
			name:       "a server that only knocked",
			state:      &CurrentState{Memberships: map[string]string{"@alice:remote.example": "knock"}},
			wantReason: reasonNotInRoom,
		},
		{
			name:       "a server with no members at all",
			state:      &CurrentState{},
			wantReason: reasonNotInRoom,
		},
		{
			name: "another server's joined members do not count (misbehaving store)",
			state: &CurrentState{Memberships: map[string]string{
				"@alice:other.example":          "join",
				"@alice:remote.example.evil":    "join",
				"@alice:sub.remote.example":     "join",
				"@remote.example:other.example": "join",
				"alice:remote.example":          "join", // not a user ID
			}},
			wantReason: reasonNotInRoom,
		},
		{
			name:       "server names are case-sensitive",
			state:      &CurrentState{Memberships: map[string]string{"@alice:REMOTE.example": "join"}},
			wantReason: reasonNotInRoom,
		},
		{
			name:       "membership values are case-sensitive",
			state:      &CurrentState{Memberships: map[string]string{"@alice:remote.example": "JOIN"}},
			wantReason: reasonNotInRoom,
		},
		{
			name:   "the port is part of the server name",
			origin: "remote.example:8448",
			state:  &CurrentState{Memberships: map[string]string{"@alice:remote.example:8448": "join"}},
		},
		{
			name:       "a user without the port is on another server",
			origin:     "remote.example:8448",
			state:      &CurrentState{Memberships: map[string]string{"@alice:remote.example": "join"}},
			wantReason: reasonNotInRoom,
		},
		{
			name:   "IPv6 literal server with port",
			origin: "[::1]:8448",
			state:  &CurrentState{Memberships: map[string]string{"@alice:[::1]:8448": "join"}},
		},
		{
			name: "a joined server banned by the ACL",
			state: &CurrentState{
				ServerACL:   json.RawMessage(`{"allow": ["*"], "deny": ["remote.example"]}`),
				Memberships: map[string]string{"@alice:remote.example": "join"},
			},
			wantReason: reasonBannedByACL,
		},
		{
			name: "a joined server the ACL admits",
			state: &CurrentState{
				ServerACL:   json.RawMessage(`{"allow": ["*.example"], "deny": ["evil.example"]}`),
				Memberships: map[string]string{"@alice:remote.example": "join"},
			},
		},
		{
			name: "an ACL without allow shuts everybody out",
			state: &CurrentState{
				ServerACL:   json.RawMessage(`{"deny": []}`),
				Memberships: map[string]string{"@alice:remote.example": "join"},
			},
			wantReason: reasonBannedByACL,
		},
		{
			name:   "the ACL ignores the port",
			origin: "remote.example:8448",
			state: &CurrentState{
				ServerACL:   json.RawMessage(`{"allow": ["*"], "deny": ["REMOTE.example"]}`),
				Memberships: map[string]string{"@alice:remote.example:8448": "join"},
			},
			wantReason: reasonBannedByACL,
		},
		{
			name:   "IP literals denied by the ACL",
			origin: "192.0.2.7:8448",
			state: &CurrentState{
				ServerACL:   json.RawMessage(`{"allow": ["*"], "allow_ip_literals": false}`),
				Memberships: map[string]string{"@alice:192.0.2.7:8448": "join"},
			},
			wantReason: reasonBannedByACL,
		},
		{
			name: "a server outside the room hears not-in-room even when banned, so the ACL reveals nothing",
			state: &CurrentState{
				ServerACL:   json.RawMessage(`{"allow": ["*"], "deny": ["remote.example"]}`),
				Memberships: map[string]string{"@alice:remote.example": "leave"},
			},
			wantReason: reasonNotInRoom,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			requestOrigin := origin
			if tt.origin != "" {
				requestOrigin = tt.origin
			}
			store := newAuthzFakeStore()
			if tt.state != nil {
				store.current[room] = tt.state
			}
			err := authorizeRoom(context.Background(), store, room, requestOrigin)
			if tt.wantReason == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, ErrForbidden)
			require.Equal(t, tt.wantReason, forbiddenReason(err))
			require.Equal(t, 1, store.callCount("CurrentState"))
		})
	}
}

func TestAuthorizeRoomUnknownRoomIsIndistinguishableFromNotInRoom(t *testing.T) {
	store := newAuthzFakeStore()
	store.current["!exists:home.example"] = &CurrentState{Memberships: map[string]string{"@a:elsewhere.example": "join"}}

	unknown := authorizeRoom(context.Background(), store, "!unknown:home.example", "remote.example")
	notIn := authorizeRoom(context.Background(), store, "!exists:home.example", "remote.example")

	require.ErrorIs(t, unknown, ErrForbidden)
	require.ErrorIs(t, notIn, ErrForbidden)
	require.Equal(t, notIn.Error(), unknown.Error())
	require.NotErrorIs(t, unknown, ErrRoomNotFound, "the store's not-found must not leak to callers that log or map errors")
}

func TestAuthorizeRoomStoreFailureIsNotForbidden(t *testing.T) {
	store := newAuthzFakeStore()
	store.err = errors.New("database on fire")

	err := authorizeRoom(context.Background(), store, "!room:home.example", "remote.example")
	require.ErrorIs(t, err, store.err)
	require.NotErrorIs(t, err, ErrForbidden)
}

func TestAuthorizeRoomNilStateIsForbidden(t *testing.T) {
	store := newAuthzFakeStore()
	store.current["!room:home.example"] = nil

	err := authorizeRoom(context.Background(), store, "!room:home.example", "remote.example")
	require.ErrorIs(t, err, ErrForbidden)
	require.Equal(t, reasonNotInRoom, forbiddenReason(err))
}

func TestAuthorizeForbiddenReason(t *testing.T) {
	require.Equal(t, reasonBannedByACL, forbiddenReason(fmt.Errorf("wrapped: %w", &forbiddenError{reason: reasonBannedByACL})))
	require.Equal(t, "forbidden", forbiddenReason(ErrForbidden))
	require.Equal(t, "fedhistory: forbidden: "+reasonNotInRoom, (&forbiddenError{reason: reasonNotInRoom}).Error())
}

func TestAuthorizeIsUserOfServer(t *testing.T) {
	tests := []struct {
		userID, server string
		want           bool
	}{
		{"@alice:example.org", "example.org", true},
		{"@alice:example.org:8448", "example.org:8448", true},
		{"@alice:example.org:8448", "example.org", false},
		{"@alice:example.org", "example.org:8448", false},
		{"@alice:[::1]:8448", "[::1]:8448", true},
		{"@alice:Example.org", "example.org", false},
		{"@alice:sub.example.org", "example.org", false},
		{"@alice:example.org.evil", "example.org", false},
		{"alice:example.org", "example.org", false},
		{"@alice", "", false},
		{"@:example.org", "example.org", true},
	}
	for _, tt := range tests {
		t.Run(tt.userID+"@"+tt.server, func(t *testing.T) {
			require.Equal(t, tt.want, isUserOfServer(tt.userID, tt.server))
		})
	}
}

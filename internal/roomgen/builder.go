// Package roomgen builds signed, correctly authorised Matrix rooms for tests,
// benchmarks and demos: Builder appends events one at a time for exact
// scenarios, Generate produces large rooms from a handful of options.
//
// Every event is built and signed with gomatrixserverlib, in the federation
// format of the room's version, and its auth_events follow the spec's "auth
// events selection" against the state the builder tracks, so a store that
// authorises events and runs state resolution accepts the room as it is.
// Output is deterministic: the same options always give the same bytes.
package roomgen

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strconv"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
)

// Defaults used when an option is left empty.
const (
	DefaultVersion    = "10"
	DefaultServerName = "hs1.example"
	DefaultKeyID      = "ed25519:roomgen"
)

// BaseTimestamp is the origin_server_ts of every room's create event; each
// following event is one second later, unless EventSpec.OriginServerTS says
// otherwise. A fixed clock keeps output
// deterministic.
var BaseTimestamp = time.Date(2025, time.January, 1, 0, 0, 0, 0, time.UTC)

// ErrUnknownEvent is returned when an event refers to an event ID the builder
// did not build.
var ErrUnknownEvent = errors.New("roomgen: unknown event")

// Event is one generated PDU in the federation format of its room version.
type Event struct {
	ID    string
	JSON  json.RawMessage
	Depth int64
	// Rejected marks an event that fails authorisation; Outlier an event
	// whose place in the DAG is unknown to the server holding it.
	Rejected, Outlier bool
}

// Room is a generated room.
type Room struct {
	ID, Version string
	// Events are in topological order: every event comes after its
	// prev_events and auth_events.
	Events []Event
	// ServerName is the server of the room's creator; PublicKey its signing
	// key, under KeyID.
	ServerName, KeyID string
	PublicKey         ed25519.PublicKey
	// ServerKeys holds the public key, under KeyID, of every server that
	// signed an event (ServerName included): events are signed by their
	// sender's server, as the auth rules require.
	ServerKeys map[string]ed25519.PublicKey
}

// BuilderOptions configure NewBuilder. Zero values select the defaults.
type BuilderOptions struct {
	Version    string // room version, DefaultVersion when empty
	ServerName string // the creator's server, DefaultServerName when empty
	Creator    string // the creator's user ID, "@alice:"+ServerName when empty
	// Key signs the events of ServerName under KeyID (DefaultKeyID when
	// empty). When nil, a key is derived from Seed. Other servers' keys are
	// always derived from Seed and their name.
	Key   ed25519.PrivateKey
	KeyID string
	// Seed drives everything random: room ID and event IDs of versions
	// without hashed IDs, and the keys not given.
	Seed int64
}

// EventSpec describes one event for Builder.Event.
type EventSpec struct {
	Sender   string
	Type     string
	StateKey *string // nil for a non-state event
	// Content is marshalled with encoding/json (a json.RawMessage is used
	// as is). Nil means {}.
	Content any
	// Redacts is the target of an m.room.redaction: the top-level "redacts"
	// before room version 11, content.redacts from 11 on.
	Redacts string
	// PrevEvents, when non-nil, replace the current branch's head.
	PrevEvents []string
	// AuthEvents, when non-nil, replace the auth events the builder selects
	// from the current branch's state.
	AuthEvents []string
	// Rejected marks the event rejected: it joins the DAG (later events
	// build on it, so walks must pass through it) but does not change state.
	Rejected bool
	// Outlier marks the event an outlier: it neither changes state nor
	// becomes part of the branch head, as an event fetched only as an auth
	// event would not.
	Outlier bool
	// OriginServerTS, when not zero, is the event's origin_server_ts instead
	// of the builder's clock (which moves on by a second all the same): for
	// events sent at the same millisecond, or by a server whose clock is
	// off, so that origin_server_ts does not follow the DAG.
	OriginServerTS time.Time
}

type stateKey struct{ eventType, stateKey string }

// branch is one line of the DAG: the events the next event builds on, and
// the room state after them.
type branch struct {
	head  []string
	state map[stateKey]string
}

// eventInfo is what the builder remembers of each built event.
type eventInfo struct {
	depth int64
	prevs []string
	// refHash is the reference hash, needed for the [id, {"sha256": …}]
	// pairs of room versions 1 and 2; unused from version 3 on, where the
	// event ID is that hash.
	refHash [sha256.Size]byte
}

// Builder appends events to a room one at a time. It tracks the room state
// on each branch of the DAG to select every event's auth_events, and can fork
// the DAG and merge the branches again (resolving their state with
// gomatrixserverlib's state resolution). A Builder is not safe for
// concurrent use.
type Builder struct {
	verImpl    gomatrixserverlib.IRoomVersion
	version    string
	roomID     string
	serverName string
	creator    string
	keyID      gomatrixserverlib.KeyID
	seed       int64
	keys       map[string]ed25519.PrivateKey
	rng        *rand.Rand
	clock      time.Time

	events []Event
	infos  map[string]*eventInfo
	// stateEvents holds every accepted state event, the superset of auth
	// chains that state resolution looks events up in at a merge.
	stateEvents map[string]gomatrixserverlib.PDU
	branches    []*branch
	current     int
}

// NewBuilder starts a room: it builds the m.room.create event, sent by the
// creator. Call StandardSetup next for the usual public room, or build the
// setup event by event.
func NewBuilder(opts BuilderOptions) (*Builder, error) {
	if opts.Version == "" {
		opts.Version = DefaultVersion
	}
	if opts.ServerName == "" {
		opts.ServerName = DefaultServerName
	}
	if opts.Creator == "" {
		opts.Creator = "@alice:" + opts.ServerName
	}
	if opts.KeyID == "" {
		opts.KeyID = DefaultKeyID
	}
	if !gomatrixserverlib.StableRoomVersion(gomatrixserverlib.RoomVersion(opts.Version)) {
		return nil, fmt.Errorf("roomgen: room version %q is not a stable room version", opts.Version)
	}
	verImpl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(opts.Version))
	if err != nil {
		return nil, fmt.Errorf("roomgen: %w", err)
	}
	creator, err := spec.NewUserID(opts.Creator, true)
	if err != nil {
		return nil, fmt.Errorf("roomgen: creator %q: %w", opts.Creator, err)
	}
	if string(creator.Domain()) != opts.ServerName {
		return nil, fmt.Errorf("roomgen: creator %q is not on server %q", opts.Creator, opts.ServerName)
	}

	b := &Builder{
		verImpl:     verImpl,
		version:     opts.Version,
		serverName:  opts.ServerName,
		creator:     opts.Creator,
		keyID:       gomatrixserverlib.KeyID(opts.KeyID),
		seed:        opts.Seed,
		keys:        map[string]ed25519.PrivateKey{},
		rng:         rand.New(rand.NewPCG(uint64(opts.Seed), 0x726f6f6d67656e)),
		clock:       BaseTimestamp,
		infos:       map[string]*eventInfo{},
		stateEvents: map[string]gomatrixserverlib.PDU{},
		branches:    []*branch{{state: map[stateKey]string{}}},
	}
	if opts.Key != nil {
		if len(opts.Key) != ed25519.PrivateKeySize {
			return nil, fmt.Errorf("roomgen: signing key has %d bytes, want %d", len(opts.Key), ed25519.PrivateKeySize)
		}
		b.keys[opts.ServerName] = opts.Key
	}

	// Room IDs are "!opaque:server" up to version 11. From version 12 the
	// room ID is the create event's ID with the sigil "!", and the create
	// event carries no room_id (spec: rooms/v12, auth rule 1.2).
	if !verImpl.DomainlessRoomIDs() {
		b.roomID = "!" + b.randomString(18) + ":" + opts.ServerName
	}
	content := map[string]any{"room_version": opts.Version}
	// The "creator" key was removed in room version 11, where the create
	// event's sender is the creator (spec: rooms/v11).
	if versionNumber(opts.Version) < 11 {
		content["creator"] = opts.Creator
	}
	create, err := b.Event(EventSpec{Sender: opts.Creator, Type: spec.MRoomCreate, StateKey: ptr(""), Content: content})
	if err != nil {
		return nil, err
	}
	if verImpl.DomainlessRoomIDs() {
		b.roomID = "!" + create.ID[1:]
	}
	return b, nil
}

// StandardSetup builds the setup of a public room after the create event:
// the creator's join, power levels (creator 100; in version 12 the creator
// is implicitly all-powerful and may not be listed), public join rules and
// shared history visibility.
func (b *Builder) StandardSetup() error {
	if _, err := b.Join(b.creator); err != nil {
		return err
	}
	users := map[string]int{}
	if !b.verImpl.PrivilegedCreators() {
		users[b.creator] = 100
	}
	powerLevels := map[string]any{
		"ban": 50,
		"events": map[string]int{
			"m.room.avatar":             50,
			"m.room.canonical_alias":    50,
			"m.room.history_visibility": 100,
			"m.room.name":               50,
			"m.room.power_levels":       100,
			"m.room.server_acl":         100,
			"m.room.tombstone":          100,
		},
		"events_default": 0,
		"invite":         0,
		"kick":           50,
		"redact":         50,
		"state_default":  50,
		"users":          users,
		"users_default":  0,
	}
	if _, err := b.State(b.creator, spec.MRoomPowerLevels, "", powerLevels); err != nil {
		return err
	}
	if _, err := b.State(b.creator, spec.MRoomJoinRules, "", map[string]string{"join_rule": spec.Public}); err != nil {
		return err
	}
	_, err := b.HistoryVisibility(b.creator, "shared")
	return err
}

// RoomID returns the room's ID.
func (b *Builder) RoomID() string { return b.roomID }

// Creator returns the creator's user ID.
func (b *Builder) Creator() string { return b.creator }

// Events returns the events built so far, in topological order.
func (b *Builder) Events() []Event { return b.events }

// Head returns the current branch's head: the prev_events of the next event.
func (b *Builder) Head() []string { return slices.Clone(b.branches[b.current].head) }

// StateEvent returns the ID of the event that holds the (eventType, key)
// state on the current branch, as the builder tracks it.
func (b *Builder) StateEvent(eventType, key string) (string, bool) {
	id, ok := b.branches[b.current].state[stateKey{eventType, key}]
	return id, ok
}

// Room returns the room built so far.
func (b *Builder) Room() *Room {
	keys := make(map[string]ed25519.PublicKey, len(b.keys))
	for server, key := range b.keys {
		keys[server] = key.Public().(ed25519.PublicKey)
	}
	return &Room{
		ID:         b.roomID,
		Version:    b.version,
		Events:     b.events,
		ServerName: b.serverName,
		KeyID:      string(b.keyID),
		PublicKey:  b.keyFor(b.serverName).Public().(ed25519.PublicKey),
		ServerKeys: keys,
	}
}

// Message sends an m.room.message with a plain-text body.
func (b *Builder) Message(sender, body string) (Event, error) {
	return b.Event(EventSpec{Sender: sender, Type: "m.room.message", Content: map[string]string{"msgtype": "m.text", "body": body}})
}

// State sends a state event.
func (b *Builder) State(sender, eventType, stateKey string, content any) (Event, error) {
	return b.Event(EventSpec{Sender: sender, Type: eventType, StateKey: &stateKey, Content: content})
}

// Member sends sender's m.room.member event for target with the given
// membership ("join", "invite", "leave", "ban", "knock").
func (b *Builder) Member(sender, target, membership string) (Event, error) {
	return b.State(sender, spec.MRoomMember, target, map[string]string{"membership": membership})
}

// Join makes user join the room.
func (b *Builder) Join(user string) (Event, error) { return b.Member(user, user, spec.Join) }

// Leave makes user leave the room.
func (b *Builder) Leave(user string) (Event, error) { return b.Member(user, user, spec.Leave) }

// HistoryVisibility sets the room's history visibility ("world_readable",
// "shared", "invited", "joined").
func (b *Builder) HistoryVisibility(sender, visibility string) (Event, error) {
	return b.State(sender, spec.MRoomHistoryVisibility, "", map[string]string{"history_visibility": visibility})
}

// Redact redacts target.
func (b *Builder) Redact(sender, target string) (Event, error) {
	es := EventSpec{Sender: sender, Type: spec.MRoomRedaction, Content: map[string]string{}}
	// Room version 11 moved "redacts" into the content (spec: rooms/v11).
	if b.redactsInContent() {
		es.Content = map[string]string{"redacts": target}
	} else {
		es.Redacts = target
	}
	return b.Event(es)
}

func (b *Builder) redactsInContent() bool { return versionNumber(b.version) >= 11 }

// versionNumber returns a stable room version as a number: every stable
// version is a small integer ("1" … "12").
func versionNumber(version string) int {
	n, _ := strconv.Atoi(version)
	return n
}

// Fork starts a new branch at the current branch's head, with its state,
// and returns the new branch's index. The current branch stays selected.
func (b *Builder) Fork() int {
	cur := b.branches[b.current]
	b.branches = append(b.branches, &branch{head: slices.Clone(cur.head), state: maps.Clone(cur.state)})
	return len(b.branches) - 1
}

// Branch selects the branch the next events are appended to.
func (b *Builder) Branch(i int) error {
	if i < 0 || i >= len(b.branches) {
		return fmt.Errorf("roomgen: no branch %d (have %d)", i, len(b.branches))
	}
	b.current = i
	return nil
}

// Merge joins every branch into one: the next event has the heads of all
// branches as prev_events, and the branches' states are resolved (see
// resolve for how).
func (b *Builder) Merge() error {
	if len(b.branches) == 1 {
		return nil
	}
	var head []string
	for _, br := range b.branches {
		for _, id := range br.head {
			if !slices.Contains(head, id) {
				head = append(head, id)
			}
		}
	}
	state, err := b.resolve()
	if err != nil {
		return err
	}
	b.branches = []*branch{{head: head, state: state}}
	b.current = 0
	return nil
}

// ErrConcurrentStateChange is returned by Merge in room version 12 when two
// branches changed the same piece of state.
var ErrConcurrentStateChange = errors.New("roomgen: branches changed the same state concurrently")

// resolve returns the resolved state of all branches.
//
// A piece of state that only one branch changed since the branches forked
// takes that branch's value: its event descends from every other candidate.
// That is what state resolution gives too, for events the builder makes (the
// newer event wins the mainline ordering by origin_server_ts, or the
// topological ordering for control events, whose auth_events include the
// event they replace), and it needs no state resolution run.
//
// When branches changed the same state concurrently, gomatrixserverlib's
// state resolution decides, except in room version 12: the pinned
// gomatrixserverlib's state resolution v2.1 authorises conflicted events
// against the event itself instead of its auth events
// (stateResolverV2.authAndApplyEvents, addFromAuthEventsIfNotRejected), so
// every conflicted event fails auth there; Merge refuses with
// ErrConcurrentStateChange rather than produce a room that a correct server
// would resolve differently.
func (b *Builder) resolve() (map[stateKey]string, error) {
	candidates := map[stateKey][]string{}
	for _, br := range b.branches {
		for key, id := range br.state {
			if !slices.Contains(candidates[key], id) {
				candidates[key] = append(candidates[key], id)
			}
		}
	}
	state := make(map[stateKey]string, len(candidates))
	concurrent := false
	for key, ids := range candidates {
		winner := ""
		for _, id := range ids {
			if b.descendsFromAll(id, ids) {
				winner = id
				break
			}
		}
		if winner == "" {
			concurrent = true
			break
		}
		state[key] = winner
	}
	if !concurrent {
		return state, nil
	}
	if b.verImpl.StateResAlgorithm() == gomatrixserverlib.StateResV2_1 {
		return nil, ErrConcurrentStateChange
	}

	stateSets := make([][]gomatrixserverlib.PDU, len(b.branches))
	for i, br := range b.branches {
		for _, id := range br.state {
			stateSets[i] = append(stateSets[i], b.stateEvents[id])
		}
	}
	authEvents := make([]gomatrixserverlib.PDU, 0, len(b.stateEvents))
	for _, ev := range b.stateEvents {
		authEvents = append(authEvents, ev)
	}
	resolved, err := gomatrixserverlib.ResolveConflictsNew(gomatrixserverlib.RoomVersion(b.version), stateSets, authEvents,
		userIDForSender, func(string) bool { return false })
	if err != nil {
		return nil, fmt.Errorf("roomgen: resolving state at merge: %w", err)
	}
	state = make(map[stateKey]string, len(resolved))
	for _, ev := range resolved {
		state[stateKey{ev.Type(), *ev.StateKey()}] = ev.EventID()
	}
	return state, nil
}

// descendsFromAll reports whether every event of others is id or one of
// its ancestors through prev_events.
func (b *Builder) descendsFromAll(id string, others []string) bool {
	for _, other := range others {
		if other != id && !b.isAncestor(other, id) {
			return false
		}
	}
	return true
}

// isAncestor reports whether ancestor is reachable from id through
// prev_events. The walk stops at events no deeper than ancestor.
func (b *Builder) isAncestor(ancestor, id string) bool {
	limit := b.infos[ancestor].depth
	seen := map[string]bool{id: true}
	queue := []string{id}
	for len(queue) > 0 {
		cur := queue[0]
		queue = queue[1:]
		for _, prev := range b.infos[cur].prevs {
			if prev == ancestor {
				return true
			}
			if !seen[prev] && b.infos[prev].depth > limit {
				seen[prev] = true
				queue = append(queue, prev)
			}
		}
	}
	return false
}

// Event builds, signs and appends one event.
func (b *Builder) Event(es EventSpec) (Event, error) {
	br := b.branches[b.current]
	sender, err := spec.NewUserID(es.Sender, true)
	if err != nil {
		return Event{}, fmt.Errorf("roomgen: sender %q: %w", es.Sender, err)
	}
	origin := string(sender.Domain())

	prevs := es.PrevEvents
	if prevs == nil {
		prevs = br.head
	}
	depth := int64(0)
	for _, id := range prevs {
		info, ok := b.infos[id]
		if !ok {
			return Event{}, fmt.Errorf("prev event %s: %w", id, ErrUnknownEvent)
		}
		depth = max(depth, info.depth)
	}
	depth++

	content := json.RawMessage("{}")
	if es.Content != nil {
		if content, err = json.Marshal(es.Content); err != nil {
			return Event{}, fmt.Errorf("roomgen: marshalling content of %s: %w", es.Type, err)
		}
	}
	proto := &gomatrixserverlib.ProtoEvent{
		SenderID:   es.Sender,
		RoomID:     b.roomID,
		Type:       es.Type,
		StateKey:   es.StateKey,
		Content:    spec.RawJSON(content),
		Redacts:    es.Redacts,
		Depth:      depth,
		PrevEvents: append([]string{}, prevs...), // never nil: Build wants a list
	}
	auths := es.AuthEvents
	if auths == nil {
		if auths, err = b.selectAuthEvents(proto, br.state); err != nil {
			return Event{}, err
		}
	}
	for _, id := range auths {
		if _, ok := b.infos[id]; !ok {
			return Event{}, fmt.Errorf("auth event %s: %w", id, ErrUnknownEvent)
		}
	}
	proto.AuthEvents = append([]string{}, auths...)

	key := b.keyFor(origin)
	ts := b.clock
	if !es.OriginServerTS.IsZero() {
		ts = es.OriginServerTS
	}
	pdu, err := b.verImpl.NewEventBuilderFromProtoEvent(proto).Build(ts, spec.ServerName(origin), b.keyID, key)
	if err != nil {
		return Event{}, fmt.Errorf("roomgen: building %s event: %w", es.Type, err)
	}
	b.clock = b.clock.Add(time.Second)

	info := &eventInfo{depth: depth, prevs: slices.Clone(prevs)}
	if b.verImpl.EventIDFormat() == gomatrixserverlib.EventIDFormatV1 {
		if pdu, info.refHash, err = b.finishV1(pdu, prevs, auths, origin, key); err != nil {
			return Event{}, err
		}
	}
	id := pdu.EventID()
	if _, dup := b.infos[id]; dup {
		return Event{}, fmt.Errorf("roomgen: built event %s twice", id)
	}
	b.infos[id] = info
	ev := Event{ID: id, JSON: json.RawMessage(pdu.JSON()), Depth: depth, Rejected: es.Rejected, Outlier: es.Outlier}
	b.events = append(b.events, ev)

	if es.Outlier {
		return ev, nil
	}
	br.head = []string{id}
	if es.StateKey != nil && !es.Rejected {
		br.state[stateKey{es.Type, *es.StateKey}] = id
		b.stateEvents[id] = pdu
	}
	return ev, nil
}

// selectAuthEvents follows the spec's auth events selection
// (server-server-api, "Auth events selection") using gomatrixserverlib's
// StateNeededForProtoEvent: the create event, the power levels, the
// sender's membership and, for membership events, the target's membership
// and the join rules. From room version 12 the create event is never
// selected: the room ID names it (spec: rooms/v12, auth rule 3.2).
func (b *Builder) selectAuthEvents(proto *gomatrixserverlib.ProtoEvent, state map[stateKey]string) ([]string, error) {
	needed, err := gomatrixserverlib.StateNeededForProtoEvent(proto)
	if err != nil {
		return nil, fmt.Errorf("roomgen: auth events for %s: %w", proto.Type, err)
	}
	auths := []string{}
	for _, tuple := range needed.Tuples() {
		if tuple.EventType == spec.MRoomCreate && b.verImpl.DomainlessRoomIDs() {
			continue
		}
		if id, ok := state[stateKey{tuple.EventType, tuple.StateKey}]; ok && !slices.Contains(auths, id) {
			auths = append(auths, id)
		}
	}
	return auths, nil
}

// keyFor returns the signing key of server, deriving it from the seed and
// the server's name the first time.
func (b *Builder) keyFor(server string) ed25519.PrivateKey {
	if key, ok := b.keys[server]; ok {
		return key
	}
	seed := sha256.Sum256([]byte(fmt.Sprintf("roomgen key %d %s", b.seed, server)))
	key := ed25519.NewKeyFromSeed(seed[:])
	b.keys[server] = key
	return key
}

const alphanumerics = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

func (b *Builder) randomString(n int) string {
	s := make([]byte, n)
	for i := range s {
		s[i] = alphanumerics[b.rng.IntN(len(alphanumerics))]
	}
	return string(s)
}

func userIDForSender(_ spec.RoomID, senderID spec.SenderID) (*spec.UserID, error) {
	return spec.NewUserID(string(senderID), true)
}

func ptr[T any](v T) *T { return &v }

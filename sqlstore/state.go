package sqlstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/fedhistory/fedhistory"
	"github.com/fedhistory/fedhistory/internal/pdu"
	"github.com/fedhistory/fedhistory/internal/stateres"
	"github.com/matrix-org/gomatrixserverlib"
)

const (
	typeMember            = "m.room.member"
	typeHistoryVisibility = "m.room.history_visibility"
	typeServerACL         = "m.room.server_acl"
)

// maxDeltaChain bounds the deltas between a state group and the snapshot it
// builds on, as the reads rely on it: reading one group's state reads at
// most maxDeltaChain+1 groups' entries, all in one recursive query. The
// levelled chains below stay within it (41 groups); databases written
// before schema 3, whose chains were snapshots every 50 changes, do too.
const maxDeltaChain = 50

// stateKey is the (type, state_key) pair that addresses one entry of a room's
// state.
type stateKey struct {
	eventType string
	stateKey  string
}

// compare orders state keys as memstore and package stateres do.
func (k stateKey) compare(other stateKey) int {
	return stateres.StateKey{Type: k.eventType, StateKey: k.stateKey}.Compare(
		stateres.StateKey{Type: other.eventType, StateKey: other.stateKey})
}

// memberServer is the server part of an m.room.member state key: everything
// after the first colon, port included, because that is how the spec
// compares a user's server with a request's origin. Other keys, and member
// keys without a colon, have none.
func memberServer(key stateKey) *string {
	if key.eventType != typeMember {
		return nil
	}
	if _, server, ok := strings.Cut(key.stateKey, ":"); ok {
		return &server
	}
	return nil
}

// stateMap is a whole room state: (type, state_key) → event ID.
type stateMap map[stateKey]string

// loadStates returns the whole state of each of groups (0, the empty state,
// included) in one query.
func (s *Store) loadStates(ctx context.Context, q querier, groups []int64) (map[int64]stateMap, error) {
	states := make(map[int64]stateMap, len(groups))
	var stored []int64
	for _, g := range groups {
		states[g] = stateMap{}
		if g != 0 {
			stored = append(stored, g)
		}
	}
	if len(stored) == 0 {
		return states, nil
	}
	ids, _ := json.Marshal(stored)
	rows, err := s.query(ctx, q, `
WITH RECURSIVE chain (root, group_id, dist) AS (
	SELECT group_id, group_id, 0 FROM state_groups WHERE group_id IN (INTS($1))
	UNION ALL
	SELECT c.root, g.parent_id, c.dist + 1
	FROM chain c JOIN state_groups g ON g.group_id = c.group_id
	WHERE g.parent_id IS NOT NULL
)
SELECT c.root, c.dist, e.event_type, e.state_key, e.event_id
FROM chain c JOIN state_group_entries e ON e.group_id = c.group_id`, string(ids))
	if err != nil {
		return nil, fmt.Errorf("loading %d state groups: %w", len(stored), err)
	}
	defer rows.Close()
	var entries []groupEntry
	for rows.Next() {
		var e groupEntry
		var eventID sql.NullString
		if err := rows.Scan(&e.root, &e.dist, &e.key.eventType, &e.key.stateKey, &eventID); err != nil {
			return nil, fmt.Errorf("loading state groups: %w", err)
		}
		e.eventID = eventID.String
		e.removed = !eventID.Valid
		entries = append(entries, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("loading state groups: %w", err)
	}
	for _, e := range nearestEntries(entries) {
		if !e.removed {
			states[e.root][e.key] = e.eventID
		}
	}
	return states, nil
}

// groupEntry is one state_group_entries row seen from a group (root) that
// inherits it from dist groups up its delta chain.
type groupEntry struct {
	root    int64
	dist    int
	key     stateKey
	eventID string
	removed bool
	// membership and historyVisibility are the content fields of the entry's
	// event, for the queries that read them.
	membership, historyVisibility string
	// content is the entry's event JSON, for the queries that read it.
	content []byte
}

// nearestEntries keeps, for every (root, key), the entry nearest to the root:
// a delta overrides what its parents say.
func nearestEntries(entries []groupEntry) []groupEntry {
	type rootKey struct {
		root int64
		key  stateKey
	}
	nearest := make(map[rootKey]int, len(entries))
	for i, e := range entries {
		rk := rootKey{e.root, e.key}
		if j, ok := nearest[rk]; !ok || e.dist < entries[j].dist {
			nearest[rk] = i
		}
	}
	out := make([]groupEntry, 0, len(nearest))
	for _, i := range nearest {
		out = append(out, entries[i])
	}
	return out
}

// Levelled delta chains. A state group is either a snapshot (no parent: it
// holds the whole state) or a delta of some level: its entries are the
// difference between its state and its parent's. A level 0 delta is one
// state change (or one resolution) on the previous group; once a chain ends
// in groupsPerLevel level 0 deltas, the next group is a level 1 delta
// instead, holding every change since the nearest group of level 1 or more
// (or the snapshot), which becomes its parent; and so on up to level
// deltaLevels-1. So a chain holds at most groupsPerLevel groups of each
// level, levels never decreasing towards the snapshot: reading a group
// touches at most deltaLevels*groupsPerLevel+1 groups (41 <= maxDeltaChain,
// which the reads rely on). A level k delta is written once per
// groupsPerLevel^k changes and holds at most that many entries, so every
// change is copied at most deltaLevels times: an import writes state rows
// in proportion to its state changes, where snapshots every maxDeltaChain
// changes copied the whole state each time (quadratic in the room's size).
// A new snapshot is written only when every level is full (after
// groupsPerLevel^deltaLevels = 32,768 changes) or when a delta would hold
// more entries than the whole state.
const (
	groupsPerLevel = 8
	deltaLevels    = 5
)

// groupInfo is what newGroup needs of a stored state group.
type groupInfo struct {
	id     int64
	parent int64 // 0: a snapshot
	level  int
	chain  int // groups between it and its snapshot
	// entries are the group's rows: a nil event ID removes a key.
	entries map[stateKey]*string
	// size is the number of keys of the group's whole state.
	size int
}

// groupCache holds the groups one transaction has read or written, so that
// an import's state changes, one after the other, cost no reads.
type groupCache map[int64]*groupInfo

// groupChain returns group and its ancestors, nearest first, up to its
// snapshot, reading those not in cache (in one recursive query).
func (s *Store) groupChain(ctx context.Context, q querier, cache groupCache, group int64) ([]*groupInfo, error) {
	var chain []*groupInfo
	for g := group; g != 0; {
		info, ok := cache[g]
		if !ok {
			if err := s.loadGroupChain(ctx, q, cache, g); err != nil {
				return nil, err
			}
			info = cache[g]
		}
		chain = append(chain, info)
		g = info.parent
	}
	return chain, nil
}

// loadGroupChain reads group and its ancestors into cache.
func (s *Store) loadGroupChain(ctx context.Context, q querier, cache groupCache, group int64) error {
	// The chain carries the groups' columns, so that no join with
	// state_groups outside it tempts PostgreSQL into scanning the table.
	rows, err := s.query(ctx, q, `
WITH RECURSIVE chain (group_id, parent_id, level, chain_length) AS (
	SELECT group_id, parent_id, level, chain_length FROM state_groups WHERE group_id = $1
	UNION ALL
	SELECT g.group_id, g.parent_id, g.level, g.chain_length
	FROM chain c JOIN state_groups g ON g.group_id = c.parent_id
)
SELECT c.group_id, c.parent_id, c.level, c.chain_length, e.event_type, e.state_key, e.event_id
FROM chain c LEFT JOIN state_group_entries e ON e.group_id = c.group_id`, group)
	if err != nil {
		return fmt.Errorf("reading state group %d: %w", group, err)
	}
	defer rows.Close()
	loaded := make(map[int64]*groupInfo)
	for rows.Next() {
		var (
			id                 int64
			parent             sql.NullInt64
			level, chainLength int
			eventType, key     sql.NullString
			eventID            sql.NullString
		)
		if err := rows.Scan(&id, &parent, &level, &chainLength, &eventType, &key, &eventID); err != nil {
			return fmt.Errorf("reading state group %d: %w", group, err)
		}
		info := loaded[id]
		if info == nil {
			info = &groupInfo{id: id, parent: parent.Int64, level: level, chain: chainLength, entries: make(map[stateKey]*string)}
			loaded[id] = info
		}
		if eventType.Valid {
			var ref *string
			if eventID.Valid {
				ref = &eventID.String
			}
			info.entries[stateKey{eventType: eventType.String, stateKey: key.String}] = ref
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("reading state group %d: %w", group, err)
	}
	// Sizes, from the snapshot down.
	var order []*groupInfo
	for g := group; g != 0; {
		info, ok := loaded[g]
		if !ok {
			if cached, ok := cache[g]; ok {
				info = cached
			} else {
				return fmt.Errorf("reading state group %d: its ancestor %d is missing", group, g)
			}
		}
		order = append(order, info)
		g = info.parent
	}
	for i := len(order) - 1; i >= 0; i-- {
		info := order[i]
		if _, done := cache[info.id]; done {
			continue
		}
		info.size = sizeAfter(order[i+1:], info.entries)
		cache[info.id] = info
	}
	return nil
}

// lookupState returns the event ID of key in the state of chain[0] (nil: no
// such key).
func lookupState(chain []*groupInfo, key stateKey) *string {
	for _, g := range chain {
		if id, ok := g.entries[key]; ok {
			return id
		}
	}
	return nil
}

// sizeAfter is the number of keys of the state of chain[0] (the empty state
// if chain is empty) changed by entries.
func sizeAfter(chain []*groupInfo, entries map[stateKey]*string) int {
	size := 0
	if len(chain) > 0 {
		size = chain[0].size
	}
	for key, id := range entries {
		had := lookupState(chain, key) != nil
		switch {
		case had && id == nil:
			size--
		case !had && id != nil:
			size++
		}
	}
	return size
}

// wholeState is the state of chain[0].
func wholeState(chain []*groupInfo) map[stateKey]*string {
	state := make(map[stateKey]*string)
	for i := len(chain) - 1; i >= 0; i-- {
		for key, id := range chain[i].entries {
			if id == nil {
				delete(state, key)
			} else {
				state[key] = id
			}
		}
	}
	return state
}

// newGroup stores the state group parent (0: the empty state) changed by
// delta (a nil event ID removes a key) and returns its ID: a delta whose
// level and parent keep the chains levelled (see groupsPerLevel), or a
// snapshot.
func (w *batchWriter) newGroup(ctx context.Context, roomID string, parent int64, delta map[stateKey]*string) (int64, error) {
	chain, err := w.s.groupChain(ctx, w.tx, w.groups, parent)
	if err != nil {
		return 0, err
	}
	size := sizeAfter(chain, delta)
	info := &groupInfo{size: size}
	perLevel := make([]int, deltaLevels)
	for _, g := range chain {
		if g.parent != 0 && g.level < deltaLevels {
			perLevel[g.level]++
		}
	}
	level := slices.IndexFunc(perLevel, func(n int) bool { return n < groupsPerLevel })
	switch {
	case parent == 0:
		info.entries = delta
	case level == 0:
		info.parent, info.chain, info.entries = parent, chain[0].chain+1, delta
	case level > 0:
		// The new parent: the nearest group of this level or above (or the
		// snapshot). The entries: every change below it, and delta.
		base := slices.IndexFunc(chain, func(g *groupInfo) bool { return g.parent == 0 || g.level >= level })
		entries := make(map[stateKey]*string)
		for i := base - 1; i >= 0; i-- {
			maps.Copy(entries, chain[i].entries)
		}
		maps.Copy(entries, delta)
		baseChain := chain[base:]
		maps.DeleteFunc(entries, func(key stateKey, id *string) bool {
			was := lookupState(baseChain, key)
			return (was == nil && id == nil) || (was != nil && id != nil && *was == *id)
		})
		info.parent, info.level, info.chain, info.entries = baseChain[0].id, level, baseChain[0].chain+1, entries
	}
	if info.parent == 0 && parent != 0 || len(info.entries) > size {
		// Every level full, or a delta larger than the state: a snapshot.
		full := wholeState(chain)
		maps.Copy(full, delta)
		info.parent, info.level, info.chain, info.entries = 0, 0, 0, full
	}
	if info.parent == 0 {
		// A snapshot: removals of keys nothing defines are pointless.
		info.entries = maps.Clone(info.entries)
		maps.DeleteFunc(info.entries, func(_ stateKey, id *string) bool { return id == nil })
	}

	if info.id, err = w.groupIDs.next(ctx, w); err != nil {
		return 0, err
	}
	// The parent's chain, for the events each entry replaces (authCounts).
	var parentChain []*groupInfo
	if info.parent != 0 {
		parentChain = chain[slices.IndexFunc(chain, func(g *groupInfo) bool { return g.id == info.parent }):]
	}
	w.groupRows = append(w.groupRows, []any{info.id, roomID, sql.NullInt64{Int64: info.parent, Valid: info.parent != 0}, info.chain, info.level, true})
	for _, key := range slices.SortedFunc(maps.Keys(info.entries), stateKey.compare) {
		id := info.entries[key]
		w.entryRows = append(w.entryRows, []any{info.id, key.eventType, key.stateKey, id, memberServer(key)})
		if id != nil {
			w.authCounts = append(w.authCounts, authCount{info.id, *id, 1})
		}
		if was := lookupState(parentChain, key); was != nil {
			w.authCounts = append(w.authCounts, authCount{info.id, *was, -1})
		}
	}
	w.groups[info.id] = info
	return info.id, nil
}

// resolveGroups merges two or more distinct state groups (0: the empty
// state) with the room version's state resolution. It returns groups[0]
// when the result is that state, else a new group stored as a delta from it.
// It reads the states and their auth chains from the database, so it writes
// out the batch so far first.
func (w *batchWriter) resolveGroups(ctx context.Context, version gomatrixserverlib.RoomVersion, roomID string, groups []int64) (int64, error) {
	if err := w.flush(ctx); err != nil {
		return 0, err
	}
	resolved, err := w.s.resolveStates(ctx, w.tx, version, groups)
	if err != nil {
		return 0, err
	}
	return w.storeResolved(ctx, roomID, groups[0], resolved.base, resolved.state)
}

type resolution struct {
	base  stateMap // the state of groups[0]
	state stateMap // the resolved state
}

// authChainsQueries are, per dialect, the auth chains of the state events
// $1 for state resolution: kind 0 rows are the events of the chains (the
// state events included), kind 1 rows their auth links. State resolution
// sees only the links between state events, as in memstore: auth_links
// also holds links to non-state events, for the auth chain endpoint. Every
// lookup is an index probe (see authLinks).
var authChainsQueries = perDialect(func(d dialect) string {
	return `
WITH RECURSIVE chain (event_nid, event_id) AS (
	SELECT event_nid, event_id FROM events WHERE event_id IN (IDS($1))
	UNION
	SELECT x.event_nid, x.event_id FROM chain c ` + authLinks(d, "x.state_key IS NOT NULL") + `
)
SELECT 0, c.event_id, e.rejected, e.json, NULL FROM chain c ` + probe(d, "e.rejected, e.json", "events", "e", "e.event_nid = c.event_nid", true, "") + `
UNION ALL
SELECT 1, c.event_id, FALSE, NULL, x.event_id FROM chain c ` + authLinks(d, "x.state_key IS NOT NULL")
})

// resolveStates loads the states of groups and the auth chains of their
// events (as far as the store knows them: auth_links) in two queries, and
// resolves them with package stateres.
func (s *Store) resolveStates(ctx context.Context, q querier, version gomatrixserverlib.RoomVersion, groups []int64) (*resolution, error) {
	verImpl, err := gomatrixserverlib.GetRoomVersion(version)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", fedhistory.ErrUnsupportedRoomVersion, err)
	}
	states, err := s.loadStates(ctx, q, groups)
	if err != nil {
		return nil, err
	}
	var stateIDs []string
	for _, g := range groups {
		for _, id := range states[g] {
			stateIDs = append(stateIDs, id)
		}
	}
	slices.Sort(stateIDs)
	stateIDs = slices.Compact(stateIDs)

	rows, err := s.query(ctx, q, authChainsQueries[s.dialect], jsonList(stateIDs))
	if err != nil {
		return nil, fmt.Errorf("loading auth chains: %w", err)
	}
	known := make(map[string]*stateres.Event)
	authOf := make(map[string]map[string]bool)
	err = func() error {
		defer rows.Close()
		for rows.Next() {
			var (
				kind     int
				id       string
				rejected bool
				data     []byte
				authID   sql.NullString
			)
			if err := rows.Scan(&kind, &id, &rejected, &data, &authID); err != nil {
				return err
			}
			if kind == 1 {
				if authOf[id] == nil {
					authOf[id] = make(map[string]bool)
				}
				authOf[id][authID.String] = true
				continue
			}
			pdu, err := s.parseStored(verImpl, id, data)
			if err != nil {
				return err
			}
			ev, err := stateres.NewEvent(pdu, rejected)
			if err != nil {
				return err
			}
			known[id] = ev
		}
		return rows.Err()
	}()
	if err != nil {
		return nil, fmt.Errorf("loading auth chains: %w", err)
	}
	// Auth events in the order of auth_events, as memstore holds them.
	for id, ev := range known {
		for _, authID := range ev.PDU.AuthEventIDs() {
			if auth, ok := known[authID]; ok && authOf[id][authID] {
				ev.Auth = append(ev.Auth, auth)
			}
		}
	}

	sets := make([]stateres.State, len(groups))
	for i, g := range groups {
		set := make(stateres.State, len(states[g]))
		for key, id := range states[g] {
			ev, ok := known[id]
			if !ok {
				return nil, fmt.Errorf("state event %s is missing from the store", id)
			}
			set[stateres.StateKey{Type: key.eventType, StateKey: key.stateKey}] = ev
		}
		sets[i] = set
	}
	result, err := stateres.Resolve(version, sets)
	if err != nil {
		return nil, err
	}
	resolved := make(stateMap, len(result))
	for key, ev := range result {
		resolved[stateKey{eventType: key.Type, stateKey: key.StateKey}] = ev.ID
	}
	return &resolution{base: states[groups[0]], state: resolved}, nil
}

// storeResolved returns base's group when resolved equals it, else a new
// group holding resolved as a delta from base.
func (w *batchWriter) storeResolved(ctx context.Context, roomID string, baseGroup int64, base, resolved stateMap) (int64, error) {
	delta := make(map[stateKey]*string)
	for key := range base {
		if _, ok := resolved[key]; !ok {
			delta[key] = nil
		}
	}
	for key, id := range resolved {
		if base[key] != id {
			delta[key] = &id
		}
	}
	if len(delta) == 0 {
		return baseGroup, nil
	}
	return w.newGroup(ctx, roomID, baseGroup, delta)
}

// parseStored parses a stored event for state resolution, through the
// cache. A cached event is used only if its JSON is the stored JSON: an
// event added in a transaction that was rolled back may have left an entry
// for an ID that now names other bytes (room versions 1 and 2 take the ID
// from the JSON).
func (s *Store) parseStored(verImpl gomatrixserverlib.IRoomVersion, id string, data []byte) (gomatrixserverlib.PDU, error) {
	if cached, ok := s.pdus.get(id, data); ok {
		return cached, nil
	}
	parsed, err := pdu.Parse(string(verImpl.Version()), data)
	if err != nil {
		return nil, fmt.Errorf("stored event %s: %w", id, err)
	}
	s.pdus.put(id, data, parsed.PDU)
	return parsed.PDU, nil
}

// addedState is the state before and after an event being added.
type addedState struct {
	// known is false when the store does not know the state at the event
	// (see "State" on fedhistory.EventStore); before and after are then 0
	// and mean nothing.
	known bool
	// before and after are state groups, 0 the empty state.
	before, after int64
}

// beforeColumn and afterColumn are the events table's before_group and
// after_group: NULL for the empty state and for an unknown one, which
// state_known tells apart.
func (st addedState) beforeColumn() sql.NullInt64 {
	return sql.NullInt64{Int64: st.before, Valid: st.known && st.before != 0}
}

func (st addedState) afterColumn() sql.NullInt64 {
	return sql.NullInt64{Int64: st.after, Valid: st.known && st.after != 0}
}

// stateOnAdd works out the state before and after ev, following "State" on
// fedhistory.EventStore exactly as memstore's setState does: known for a
// create event, for an event given opts.StateBefore, and for an event all
// of whose prev_events the store holds in the room, as non-outliers with a
// known state; unknown otherwise. known holds what the store has of ev's
// prev_events.
func (w *batchWriter) stateOnAdd(ctx context.Context, ev *newEvent) (addedState, error) {
	e := &ev.Event
	var (
		st  addedState
		err error
	)
	switch {
	case ev.opts.StateBefore != nil && e.Outlier:
		return addedState{}, fmt.Errorf("%w: given for the outlier %s, whose state is unknown by definition",
			fedhistory.ErrInvalidStateBefore, e.ID)
	case ev.opts.StateBefore != nil:
		st.before, err = w.givenStateGroup(ctx, e.RoomID, ev.opts.StateBefore)
		if err != nil {
			return addedState{}, fmt.Errorf("sqlstore: state before %s: %w", e.ID, err)
		}
		st.known = true
	case e.Outlier:
		// Its place in the DAG, and so its state, is unknown.
		return addedState{}, nil
	case pdu.IsCreate(e):
		st.known = true // the empty state
	default:
		st.before, st.known, err = w.derivedStateGroup(ctx, ev)
		if err != nil {
			return addedState{}, fmt.Errorf("sqlstore: state before %s: %w", e.ID, err)
		}
	}
	if !st.known {
		return addedState{}, nil
	}
	st.after = st.before
	if e.StateKey != nil && !e.Rejected {
		id := e.ID
		delta := map[stateKey]*string{{eventType: e.Type, stateKey: *e.StateKey}: &id}
		if st.after, err = w.newGroup(ctx, e.RoomID, st.before, delta); err != nil {
			return addedState{}, fmt.Errorf("sqlstore: state after %s: %w", e.ID, err)
		}
	}
	return st, nil
}

// derivedStateGroup is the state before ev from its prev_events: the state
// after the single one, or the state resolution of the states after them.
// It reports false when one of them is not held in the room, is an outlier
// or has an unknown state, and when there are none: only a create event may
// lack prev_events, and without any there is nothing to derive a state
// from, so fail closed.
func (w *batchWriter) derivedStateGroup(ctx context.Context, ev *newEvent) (int64, bool, error) {
	e := &ev.Event
	if len(e.PrevEvents) == 0 {
		return 0, false, nil
	}
	var groups []int64
	for _, id := range e.PrevEvents {
		prev, ok := w.known[id]
		if !ok || prev.event.RoomID != e.RoomID || prev.outlier || !prev.stateKnown {
			return 0, false, nil
		}
		if !slices.Contains(groups, prev.afterGroup) {
			groups = append(groups, prev.afterGroup)
		}
	}
	if len(groups) == 1 {
		return groups[0], true, nil
	}
	group, err := w.resolveGroups(ctx, gomatrixserverlib.RoomVersion(ev.version), e.RoomID, groups)
	if err != nil {
		return 0, false, err
	}
	return group, true, nil
}

// givenStateGroup stores the state that AddOptions.StateBefore names as a
// snapshot group (0 when it is empty), or fails with
// fedhistory.ErrInvalidStateBefore: every ID must be a state event held in
// roomID, outliers included, not rejected, at most one per (type,
// state_key). It reads the events from the database, so it writes out the
// batch so far first.
func (w *batchWriter) givenStateGroup(ctx context.Context, roomID string, ids []string) (int64, error) {
	if len(ids) == 0 {
		return 0, nil
	}
	if err := w.flush(ctx); err != nil {
		return 0, err
	}
	held, err := w.s.knownEvents(ctx, w.tx, ids)
	if err != nil {
		return 0, err
	}
	state := make(map[stateKey]*string, len(ids))
	holder := make(map[stateKey]string, len(ids))
	for _, id := range ids {
		ev, ok := held[id]
		switch {
		case !ok:
			return 0, fmt.Errorf("%w: the store holds no event %q", fedhistory.ErrInvalidStateBefore, id)
		case ev.event.RoomID != roomID:
			return 0, fmt.Errorf("%w: %s is an event of another room, %s", fedhistory.ErrInvalidStateBefore, id, ev.event.RoomID)
		case ev.event.StateKey == nil:
			return 0, fmt.Errorf("%w: %s is not a state event", fedhistory.ErrInvalidStateBefore, id)
		case ev.event.Rejected:
			return 0, fmt.Errorf("%w: %s is rejected", fedhistory.ErrInvalidStateBefore, id)
		}
		key := stateKey{eventType: ev.event.Type, stateKey: *ev.event.StateKey}
		if other, dup := holder[key]; dup {
			return 0, fmt.Errorf("%w: %s and %s are both the state %q %q",
				fedhistory.ErrInvalidStateBefore, other, id, key.eventType, key.stateKey)
		}
		holder[key] = id
		state[key] = &ev.event.ID
	}
	return w.newGroup(ctx, roomID, 0, state)
}

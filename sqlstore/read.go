package sqlstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/fedhistory/fedhistory"
	"github.com/matrix-org/gomatrixserverlib"
)

// RoomVersion returns the version of roomID, or an error wrapping
// fedhistory.ErrRoomNotFound.
func (s *Store) RoomVersion(ctx context.Context, roomID string) (string, error) {
	if !s.storable(roomID) {
		return "", fmt.Errorf("sqlstore: room %q: %w", roomID, fedhistory.ErrRoomNotFound)
	}
	// A room's version never changes once stored: cached for good (an
	// unknown room is not cached, since it may be added).
	if version, _, ok := s.roomVersions.get(roomID); ok {
		return version, nil
	}
	var version string
	err := s.queryRow(ctx, s.db, `SELECT room_version FROM rooms WHERE room_id = $1`, roomID).Scan(&version)
	if errors.Is(err, sql.ErrNoRows) {
		return "", fmt.Errorf("sqlstore: room %q: %w", roomID, fedhistory.ErrRoomNotFound)
	}
	if err != nil {
		return "", fmt.Errorf("sqlstore: reading room %q: %w", roomID, err)
	}
	s.roomVersions.put(roomID, version, len(roomID)+len(version)+entryOverhead)
	return version, nil
}

// eventsQuery is Events' statement: the events of room $1 among the IDs $2.
const eventsQuery = `
SELECT event_id, room_id, depth, prev_events, event_type, state_key, sender, redacts, rejected, outlier, json,
	origin_server_ts, redacted
FROM events WHERE UNINDEXED(room_id) = $1 AND event_id IN (IDS($2))`

// Events returns the events among ids that the store holds in roomID,
// outliers and rejected events included (their flags say so), in the order
// of ids, in one query. Every call returns fresh values.
func (s *Store) Events(ctx context.Context, roomID string, ids []string) ([]*fedhistory.Event, error) {
	events := make([]*fedhistory.Event, 0, min(len(ids), 1024))
	if len(ids) == 0 || !s.storable(roomID) {
		return events, nil
	}
	rows, err := s.query(ctx, s.db, eventsQuery, roomID, s.idList(ids))
	if err != nil {
		return nil, fmt.Errorf("sqlstore: reading %d events: %w", len(ids), err)
	}
	defer rows.Close()
	byID := make(map[string]*fedhistory.Event, min(len(ids), 1024))
	for rows.Next() {
		var (
			ev       fedhistory.Event
			prevs    string
			stateKey sql.NullString
			data     []byte
		)
		if err := rows.Scan(&ev.ID, &ev.RoomID, &ev.Depth, &prevs, &ev.Type, &stateKey, &ev.Sender, &ev.Redacts,
			&ev.Rejected, &ev.Outlier, &data, &ev.OriginServerTS, &ev.Redacted); err != nil {
			return nil, fmt.Errorf("sqlstore: reading events: %w", err)
		}
		var err error
		if ev.PrevEvents, err = decodeIDList([]byte(prevs)); err != nil {
			return nil, fmt.Errorf("sqlstore: event %s: prev_events: %w", ev.ID, err)
		}
		if stateKey.Valid {
			ev.StateKey = &stateKey.String
		}
		ev.JSON = data
		byID[ev.ID] = &ev
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlstore: reading events: %w", err)
	}
	for _, id := range ids {
		if ev, ok := byID[id]; ok {
			events = append(events, ev)
		}
	}
	return events, nil
}

// Visibility returns one answer per entry of eventIDs, in the same order;
// an entry is Known when the store holds the event in roomID and knows its
// state (state_known, never true for an outlier). One query reads the events' state groups and, along each group's delta
// chain, only the entries that matter: the history visibility and the
// memberships of server's users (an index lookup on member_server).
// Memberships maps may be shared between entries of the result; callers must
// not modify them.
func (s *Store) Visibility(ctx context.Context, roomID, server string, eventIDs []string) ([]fedhistory.EventVisibility, error) {
	result := make([]fedhistory.EventVisibility, len(eventIDs))
	if len(eventIDs) == 0 || !s.storable(roomID) {
		return result, nil
	}
	rows, err := s.query(ctx, s.db, visibilitySQL[s.dialect],
		roomID, s.idList(eventIDs), s.serverParam(server), maxDeltaChain, chainRowsBound(2*len(eventIDs)))
	if err != nil {
		return nil, fmt.Errorf("sqlstore: reading visibility of %d events: %w", len(eventIDs), err)
	}
	defer rows.Close()
	type target struct {
		id            string
		before, after int64
	}
	var (
		targets []target
		entries []groupEntry
	)
	// The chain rows say which groups each root inherits from and at what
	// distance; the entries come once per group, however many roots share
	// it (consecutive events share most of their chains).
	type link struct {
		root, group int64
		dist        int
	}
	var links []link
	byGroup := make(map[int64][]groupEntry)
	for rows.Next() {
		var (
			kind                      int
			g1, g2, g3                sql.NullInt64
			eventType, eventID, extra sql.NullString
			text                      sql.NullString
		)
		if err := rows.Scan(&kind, &g1, &g2, &g3, &eventType, &text, &eventID, &extra); err != nil {
			return nil, fmt.Errorf("sqlstore: reading visibility: %w", err)
		}
		switch kind {
		case 0:
			targets = append(targets, target{id: text.String, before: g1.Int64, after: g2.Int64})
			continue
		case 2:
			links = append(links, link{root: g1.Int64, dist: int(g2.Int64), group: g3.Int64})
			continue
		}
		e := groupEntry{
			key:     stateKey{eventType: eventType.String, stateKey: text.String},
			eventID: eventID.String, removed: !eventID.Valid,
		}
		if e.key.eventType == typeHistoryVisibility {
			e.historyVisibility = extra.String
		} else {
			e.membership = extra.String
		}
		byGroup[g1.Int64] = append(byGroup[g1.Int64], e)
	}
	for _, l := range links {
		for _, e := range byGroup[l.group] {
			e.root, e.dist = l.root, l.dist
			entries = append(entries, e)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlstore: reading visibility: %w", err)
	}

	views := make(map[int64]fedhistory.VisibilityState)
	for _, e := range nearestEntries(entries) {
		view, ok := views[e.root]
		if !ok {
			view.Memberships = make(map[string]string)
		}
		switch {
		case e.removed:
		case e.key.eventType == typeHistoryVisibility:
			view.HistoryVisibility = e.historyVisibility
		case e.membership != "":
			view.Memberships[e.key.stateKey] = e.membership
		}
		views[e.root] = view
	}
	view := func(group int64) fedhistory.VisibilityState {
		if v, ok := views[group]; ok {
			return v
		}
		// The empty state, or a state with neither history visibility nor
		// members of server.
		v := fedhistory.VisibilityState{Memberships: make(map[string]string)}
		views[group] = v
		return v
	}
	// The rows come in the database's order, each ID once: index them to
	// answer eventIDs in order, repeats included.
	known := make(map[string]fedhistory.EventVisibility, len(targets))
	for _, t := range targets {
		known[t.id] = fedhistory.EventVisibility{Known: true, Before: view(t.before), After: view(t.after)}
	}
	for i, id := range eventIDs {
		result[i] = known[id] // the zero value, not Known, when absent
	}
	return result, nil
}

// The state queries read a group's entries along its delta chain. Written
// as a plain recursive CTE joined to state_group_entries, PostgreSQL
// misestimates the chain (by two orders of magnitude at 10^6 events: it
// cannot know that a chain is at most maxDeltaChain+1 groups long), and
// answers with hash joins over sequential scans of state_groups,
// state_group_entries and events; an OR across two columns in the filter
// also kept it off the (group_id, member_server) index. So each lookup is
// an equality probe per chain row that the planner cannot turn into a
// join: on PostgreSQL a LATERAL subquery with LIMIT or OFFSET (which it
// never flattens), on SQLite (which has no LATERAL, and whose planner,
// without statistics, probes the index of a plain join anyway) a plain
// join; the events' fields are scalar subqueries. The chain is also
// bounded, by depth (dist < maxDeltaChain, which the levelled chains of
// newGroup keep to) and
// by a LIMIT on the materialised chain.

// probe joins the rows of alias c to the rows of table that match where
// (which names the table's alias and c's columns): at most one row (one)
// or any number. On SQLite, c's loop stays outside (CROSS JOIN), and index
// (if not "") names the index to probe:
// its planner, without statistics, would otherwise pick the primary key
// for (group_id, event_type = 'm.room.member') and read every member of a
// snapshot group instead of the server's few.
func probe(d dialect, columns, table, alias, where string, one bool, index string) string {
	if d == sqlite {
		hint := ""
		if index != "" {
			hint = " INDEXED BY " + index
		}
		// CROSS JOIN: SQLite keeps the written loop order, c outside.
		return "CROSS JOIN " + table + " " + alias + hint + " ON " + where
	}
	fence := "OFFSET 0"
	if one {
		fence = "LIMIT 1"
	}
	return "CROSS JOIN LATERAL (SELECT " + columns + " FROM " + table + " " + alias + " WHERE " + where + " " + fence + ") " + alias
}

// chainCTE is the recursive chain of groups from the roots CTE: (root,
// group_id, dist) rows, bounded by $maxDist and $maxRows.
func chainCTE(d dialect, maxDist, maxRows string) string {
	return `chain (root, group_id, dist) AS (
	SELECT group_id, group_id, 0 FROM roots
	UNION ALL
	SELECT c.root, g.parent_id, c.dist + 1
	FROM chain c ` + probe(d, "g.parent_id", "state_groups", "g", "g.group_id = c.group_id", true, "") + `
	WHERE g.parent_id IS NOT NULL AND c.dist < ` + maxDist + `
), links AS (
	SELECT root, group_id, dist FROM chain LIMIT ` + maxRows + `
)`
}

// entryProbes reads, for every row c of from (which has a group_id), the
// entry of the state event (eventType, "") and the m.room.member entries of
// server, in columns head (over c), then (event_type, state_key, event_id),
// then the extra expressions over the entry e.
func entryProbes(d dialect, head, from, eventType, server, stateExtra, memberExtra string) string {
	columns := "e.event_type, e.state_key, e.event_id"
	return `SELECT ` + head + columns + `, ` + stateExtra + `
FROM ` + from + ` c ` + probe(d, columns, "state_group_entries", "e",
		"e.group_id = c.group_id AND e.event_type = '"+eventType+"' AND e.state_key = ''", true, "") + `
UNION ALL
SELECT ` + head + columns + `, ` + memberExtra + `
FROM ` + from + ` c ` + probe(d, columns, "state_group_entries", "e",
		"e.group_id = c.group_id AND e.member_server = "+server+" AND e.event_type = 'm.room.member'", false,
		"state_group_entries_member_server")
}

// visibilitySQL and currentStateSQL are Visibility's and CurrentState's
// statements per dialect.
var (
	visibilitySQL   [2]string
	currentStateSQL [2]string
)

func init() {
	for _, d := range []dialect{sqlite, postgres} {
		visibilitySQL[d] = `
WITH RECURSIVE targets AS (
	SELECT event_id, before_group, after_group FROM events
	WHERE UNINDEXED(room_id) = $1 AND state_known AND event_id IN (IDS($2))
), roots (group_id) AS (
	SELECT before_group FROM targets WHERE before_group IS NOT NULL
	UNION
	SELECT after_group FROM targets WHERE after_group IS NOT NULL
), ` + chainCTE(d, "$4", "$5") + `, groups AS (
	SELECT DISTINCT group_id FROM links
)
SELECT 0, t.before_group, t.after_group, NULL, NULL, t.event_id, NULL, NULL
FROM targets t
UNION ALL
SELECT 2, c.root, c.dist, c.group_id, NULL, NULL, NULL, NULL
FROM links c
UNION ALL
` + entryProbes(d, "1, c.group_id, NULL, NULL, ", "groups", typeHistoryVisibility, "$3",
			"(SELECT ev.history_visibility FROM events ev WHERE ev.event_id = e.event_id)",
			"(SELECT ev.membership FROM events ev WHERE ev.event_id = e.event_id)")
		currentStateSQL[d] = `
WITH RECURSIVE roots (group_id) AS (
	SELECT CAST($1 AS BIGINT)
), ` + chainCTE(d, "$3", "$4") + `
` + entryProbes(d, "c.root, c.dist, ", "links", typeServerACL, "$2",
			"NULL, (SELECT ev.json FROM events ev WHERE ev.event_id = e.event_id)",
			"(SELECT ev.membership FROM events ev WHERE ev.event_id = e.event_id), NULL")
	}
}

// chainRowsBound is the most chain rows the state queries can meet when
// reading roots state groups: maxDeltaChain+1 per root.
func chainRowsBound(roots int) int {
	return max(roots, 1) * (maxDeltaChain + 1)
}

// serverParam is server as a query parameter: NULL, which equals nothing,
// for a server name the database cannot hold (and so has no users of).
func (s *Store) serverParam(server string) sql.NullString {
	return sql.NullString{String: server, Valid: s.storable(server)}
}

// resolvedCurrent is a room's current state for one set of several forward
// extremities, resolved in memory.
type resolvedCurrent struct {
	extremities string // sorted, joined by newlines
	state       stateMap
}

// CurrentState returns the current server ACL of roomID and the current
// memberships of server's users: the state after the room's forward
// extremities, resolved with the room version's state resolution when they
// disagree. It costs two queries; a fork costs one state resolution per new
// set of forward extremities and process, kept in memory (never stored: a
// read writes nothing, so that a Store can serve from a read replica).
func (s *Store) CurrentState(ctx context.Context, roomID, server string) (*fedhistory.CurrentState, error) {
	version, group, resolved, err := s.currentGroup(ctx, roomID)
	if err != nil {
		return nil, err
	}
	if resolved != nil {
		return s.currentFromResolved(ctx, roomID, version, resolved, server)
	}
	current := &fedhistory.CurrentState{Memberships: make(map[string]string)}
	if group == 0 {
		return current, nil
	}
	key := currentStateKey{group: group, server: server}
	if s.staleAfter > 0 {
		if cached, stored, ok := s.currentStates.get(key); ok && time.Since(stored) < s.staleAfter {
			return cloneCurrentState(cached), nil
		}
	}
	rows, err := s.query(ctx, s.db, currentStateSQL[s.dialect],
		group, s.serverParam(server), maxDeltaChain, chainRowsBound(1))
	if err != nil {
		return nil, fmt.Errorf("sqlstore: reading current state of %s: %w", roomID, err)
	}
	var entries []groupEntry
	err = func() error {
		defer rows.Close()
		for rows.Next() {
			var (
				e                   groupEntry
				eventID, membership sql.NullString
			)
			var root int64
			if err := rows.Scan(&root, &e.dist, &e.key.eventType, &e.key.stateKey, &eventID, &membership, &e.content); err != nil {
				return err
			}
			e.root, e.eventID, e.removed, e.membership = group, eventID.String, !eventID.Valid, membership.String
			entries = append(entries, e)
		}
		return rows.Err()
	}()
	if err != nil {
		return nil, fmt.Errorf("sqlstore: reading current state of %s: %w", roomID, err)
	}
	for _, e := range nearestEntries(entries) {
		switch {
		case e.removed:
		case e.key.eventType == typeServerACL:
			verImpl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(version))
			if err != nil {
				return nil, fmt.Errorf("sqlstore: room %s: %w", roomID, err)
			}
			pdu, err := s.parseStored(verImpl, e.eventID, e.content)
			if err != nil {
				return nil, fmt.Errorf("sqlstore: current server ACL of %s: %w", roomID, err)
			}
			// A copy: the caller gets bytes it may keep or change.
			current.ServerACL = slices.Clone(json.RawMessage(pdu.Content()))
		case e.membership != "":
			current.Memberships[e.key.stateKey] = e.membership
		}
	}
	if s.staleAfter > 0 {
		size := len(server) + len(current.ServerACL) + entryOverhead
		for user, membership := range current.Memberships {
			size += len(user) + len(membership) + 16
		}
		s.currentStates.put(key, cloneCurrentState(current), size)
	}
	return current, nil
}

// currentStateKey keys CurrentState's cache: the current state group and
// the server whose memberships were read.
type currentStateKey struct {
	group  int64
	server string
}

// cloneCurrentState copies c, so that neither the cache nor a caller sees
// the other's changes.
func cloneCurrentState(c *fedhistory.CurrentState) *fedhistory.CurrentState {
	return &fedhistory.CurrentState{ServerACL: slices.Clone(c.ServerACL), Memberships: maps.Clone(c.Memberships)}
}

// currentGroup returns the room's version and its current state group (0:
// the empty state), or, when several forward extremities disagree, their
// resolved state; or an error wrapping fedhistory.ErrRoomNotFound or
// fedhistory.ErrStateUnknown.
func (s *Store) currentGroup(ctx context.Context, roomID string) (string, int64, *resolvedCurrent, error) {
	if !s.storable(roomID) {
		return "", 0, nil, fmt.Errorf("sqlstore: room %q: %w", roomID, fedhistory.ErrRoomNotFound)
	}
	rows, err := s.query(ctx, s.db, `
SELECT r.room_version, fe.event_id, ev.after_group, ev.state_known
FROM rooms r
LEFT JOIN forward_extremities fe ON fe.room_id = r.room_id
LEFT JOIN events ev ON ev.event_id = fe.event_id
WHERE r.room_id = $1`, roomID)
	if err != nil {
		return "", 0, nil, fmt.Errorf("sqlstore: reading forward extremities of %s: %w", roomID, err)
	}
	var (
		version     string
		found       bool
		extremities []string
		groupOf     = make(map[string]int64)
		unknownAt   string // an extremity whose state is unknown
	)
	err = func() error {
		defer rows.Close()
		for rows.Next() {
			var (
				id    sql.NullString
				group sql.NullInt64
				known sql.NullBool
			)
			if err := rows.Scan(&version, &id, &group, &known); err != nil {
				return err
			}
			found = true
			if id.Valid && !known.Bool {
				unknownAt = id.String
			}
			if id.Valid {
				extremities = append(extremities, id.String)
				groupOf[id.String] = group.Int64
			}
		}
		return rows.Err()
	}()
	if err != nil {
		return "", 0, nil, fmt.Errorf("sqlstore: reading forward extremities of %s: %w", roomID, err)
	}
	if !found {
		return "", 0, nil, fmt.Errorf("sqlstore: room %q: %w", roomID, fedhistory.ErrRoomNotFound)
	}
	// Never invent state: the current state is unknown when any forward
	// extremity's state is, or when there is none (only outliers or
	// rejected events so far).
	if unknownAt != "" {
		return "", 0, nil, fmt.Errorf("sqlstore: current state of %s: state after forward extremity %s: %w",
			roomID, unknownAt, fedhistory.ErrStateUnknown)
	}
	if len(extremities) == 0 {
		return "", 0, nil, fmt.Errorf("sqlstore: current state of %s: no forward extremity: %w", roomID, fedhistory.ErrStateUnknown)
	}
	// Sorted, as memstore does, so that the result does not depend on the
	// order the database returns rows in.
	slices.Sort(extremities)
	var groups []int64
	for _, id := range extremities {
		if g := groupOf[id]; !slices.Contains(groups, g) {
			groups = append(groups, g)
		}
	}
	if len(groups) == 1 {
		return version, groups[0], nil, nil
	}

	// Several forward extremities: their states resolved, in memory (a
	// read never writes, so that a Store can serve from a read replica),
	// once per set of extremities and process.
	key := strings.Join(extremities, "\n")
	if cached, _, ok := s.current.get(roomID); ok && cached.extremities == key {
		return version, 0, cached, nil
	}
	resolved, err := s.resolveStates(ctx, s.db, gomatrixserverlib.RoomVersion(version), groups)
	if err != nil {
		return "", 0, nil, fmt.Errorf("sqlstore: resolving current state of %s: %w", roomID, err)
	}
	cached := &resolvedCurrent{extremities: key, state: resolved.state}
	// A map entry (key, value and bucket share) is about 64 bytes besides
	// its strings. A room whose resolved state is larger than
	// Options.CacheBytes is resolved on every request.
	size := len(roomID) + len(key) + entryOverhead
	for k, id := range resolved.state {
		size += len(k.eventType) + len(k.stateKey) + len(id) + 64
	}
	s.current.put(roomID, cached, size)
	return version, 0, cached, nil
}

// currentFromResolved is CurrentState over a state resolved in memory: the
// ACL and server's members' events read in one query.
func (s *Store) currentFromResolved(ctx context.Context, roomID, version string, resolved *resolvedCurrent, server string) (*fedhistory.CurrentState, error) {
	current := &fedhistory.CurrentState{Memberships: make(map[string]string)}
	var ids []string
	for key, id := range resolved.state {
		if key == (stateKey{eventType: typeServerACL}) {
			ids = append(ids, id)
		} else if srv := memberServer(key); srv != nil && *srv == server {
			ids = append(ids, id)
		}
	}
	if len(ids) == 0 {
		return current, nil
	}
	rows, err := s.query(ctx, s.db, `SELECT event_id, event_type, state_key, membership, json FROM events WHERE event_id IN (IDS($1))`, s.idList(ids))
	if err != nil {
		return nil, fmt.Errorf("sqlstore: reading current state of %s: %w", roomID, err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			id, eventType, key string
			membership         sql.NullString
			data               []byte
		)
		if err := rows.Scan(&id, &eventType, &key, &membership, &data); err != nil {
			return nil, fmt.Errorf("sqlstore: reading current state of %s: %w", roomID, err)
		}
		if eventType != typeServerACL {
			if membership.String != "" {
				current.Memberships[key] = membership.String
			}
			continue
		}
		verImpl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(version))
		if err != nil {
			return nil, fmt.Errorf("sqlstore: room %s: %w", roomID, err)
		}
		pdu, err := s.parseStored(verImpl, id, data)
		if err != nil {
			return nil, fmt.Errorf("sqlstore: current server ACL of %s: %w", roomID, err)
		}
		current.ServerACL = slices.Clone(json.RawMessage(pdu.Content()))
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlstore: reading current state of %s: %w", roomID, err)
	}
	return current, nil
}

// EraseUser marks userID as erased (GDPR): ErasedUsers reports it from now on.
func (s *Store) EraseUser(ctx context.Context, userID string) error {
	if _, err := s.exec(ctx, s.db, `INSERT INTO erased_users (user_id) VALUES ($1) ON CONFLICT DO NOTHING`, userID); err != nil {
		return fmt.Errorf("sqlstore: erasing %s: %w", userID, err)
	}
	s.erased.put(userID, true, len(userID)+entryOverhead)
	return nil
}

// ErasedUsers returns the subset of userIDs that EraseUser has erased. The
// answers are cached for Options.StaleAfter: an erasure through this Store
// shows at once, one through another process (or another Store) within
// StaleAfter. One query reads the users without a fresh answer, if any.
func (s *Store) ErasedUsers(ctx context.Context, userIDs []string) (map[string]bool, error) {
	erased := make(map[string]bool)
	var unknown []string
	for _, id := range userIDs {
		if s.staleAfter > 0 {
			if isErased, stored, ok := s.erased.get(id); ok && time.Since(stored) < s.staleAfter {
				if isErased {
					erased[id] = true
				}
				continue
			}
		}
		unknown = append(unknown, id)
	}
	if len(unknown) == 0 {
		return erased, nil
	}
	rows, err := s.query(ctx, s.db, `SELECT user_id FROM erased_users WHERE user_id IN (IDS($1))`, s.idList(unknown))
	if err != nil {
		return nil, fmt.Errorf("sqlstore: reading erased users: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, fmt.Errorf("sqlstore: reading erased users: %w", err)
		}
		erased[id] = true
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlstore: reading erased users: %w", err)
	}
	if s.staleAfter > 0 {
		for _, id := range unknown {
			s.erased.put(id, erased[id], len(id)+entryOverhead)
		}
	}
	return erased, nil
}

// Package sqlstore is a fedhistory.EventStore on database/sql, for SQLite
// (modernc.org/sqlite, pure Go, no cgo) and PostgreSQL
// (github.com/jackc/pgx/v5/stdlib). It also implements every optional
// capability, so a handler over it serves all seven endpoints:
// fedhistory.ErasureStore, fedhistory.BackfillWalker and
// fedhistory.MissingEventsWalker; fedhistory.StateStore (StateBefore reads
// the state group recorded before the event, AuthChain is one recursive
// query over auth_links) and fedhistory.StateIDsStore (both for /state_ids,
// the walk starting from the state group's counted auth events),
// fedhistory.EventLookupStore and
// fedhistory.TimestampStore (one statement each, the latter one descent of
// the (room_id, origin_server_ts, depth, event_id) index).
//
// Its answers are memstore's, event for event (the tests compare the two
// stores on the same rooms, and run the storetest conformance suite on both
// dialects): Add takes events in topological order, parses them with
// package internal/pdu, as memstore does, and works out the room state
// before and after every event, with the room version's state resolution
// (package internal/stateres, which memstore uses too) where the DAG
// merges.
//
// # Writing
//
// Add is AddBatch of one event. AddBatch writes in one transaction, in
// chunks of 8000 events (batch.go): it reads what a chunk needs (the events
// it names, the redactions waiting for it, whether stored events name it as
// a prev_event) in three statements, works out states, redactions and
// forward extremities in memory in order, and writes the rows as multi-row
// INSERTs (SQLite) or COPY (PostgreSQL); a read that needs the rows so far
// (a state resolution, a redaction's power levels, a given StateBefore)
// writes them out first. A batch of several chunks is parsed one chunk
// ahead of the writes (on PostgreSQL its rooms are locked first). AddSeq is
// the same transaction over a sequence, taken a chunk at a time, so that an
// import holds a few chunks of events in memory, not all of them (fedhistory
// import streams its dumps through it). fedhistory import of real (hash)
// event IDs runs at about 11,000–13,200 events/s at 10^5 events and
// 11,000–13,200 at 10^6 on two cores (BENCHMARKS.md, round seven).
//
// # Schema
//
// Open applies the schema migrations (a schema_version table; see migrate).
// events holds every PDU byte for byte with its metadata (origin_server_ts
// included, indexed with room_id, depth and event_id for the timestamp
// lookup), indexed by event_id and (room_id, depth); prev_edges
// holds one row per prev_event; auth_links every event's links to the auth
// events held in its room when it was added (state resolution follows those
// between state events), both keyed by the events' event_nid, so that an
// import appends to their indexes; forward_extremities the current DAG heads. A
// version 1 database is upgraded in place (see upgradeToV2).
//
// Room state is stored as state groups: a group is a parent group plus the
// (type, state_key) → event_id entries that differ from it. A state event's
// after-state is a new group with one entry; a message shares the group of
// the state before it; a state given by AddOptions.StateBefore is a
// snapshot group. Deltas are levelled (see groupsPerLevel in state.go): a
// chain holds at most 8 deltas of each of 5 levels, a level k delta holding
// the changes of up to 8^k level 0 ones, so reading any group touches at
// most 41 groups (below the maxDeltaChain+1 the read queries assume), in
// one recursive query, while an import writes state rows in proportion to
// its state changes (at most 5 copies of each), not a copy of the whole
// state every few changes. A snapshot is written only every 8^5 changes, or
// when a delta would outgrow the state. Entries of m.room.member
// keep the user's server (port included) in an indexed column, so that the
// memberships of one server's users, all that visibility and authorisation
// ask for, are an equality filter. state_group_auth counts, per group,
// the links from its state to each auth event as a delta from its parent's
// (schema version 4), so /state_ids walks the auth chain from a state's few
// direct auth events, not from each of its events. Visibility answers for a whole batch of
// events, before and after each, in one query; CurrentState in two, or one
// when its answer for the current state group and server is cached.
//
// # Unknown state
//
// The store never invents state ("State" on fedhistory.EventStore):
// events.state_known is false for an outlier and for an event after a gap
// (a prev_event not held in the room, an outlier prev_event, one whose own
// state is unknown, or no prev_events at all, bar the create event) unless
// AddOptions.StateBefore gave its state. Its before_group and after_group
// are then NULL and mean nothing (for a known state NULL is the empty
// state). Visibility answers such an event Known false, and CurrentState
// answers fedhistory.ErrStateUnknown when any forward extremity's state is
// unknown, or when the room has none.
//
// # Redactions
//
// events.redacted marks an event a held redaction applies to ("Redactions"
// on fedhistory.EventStore, with package pdu's rules). A redaction is
// judged once, when both it and its target are held: whether its sender
// may redact others' events (pdu.MayRedact) is decided with the state
// before it when it is added, and kept in pending_redactions, keyed by the
// target's ID, while the target is not held; adding the target applies and
// removes the waiting rows. Events and the walks' results carry the flag;
// the handler serves a redacted event in its room version's redacted form.
//
// # Walks
//
// WalkBackfill and WalkMissingEvents return exactly what dag.Backfill and
// dag.MissingEvents return: they run those functions over walk metadata
// that one recursive query loads (see walk.go), then read the JSON of the
// result in a second query. Queries counts every statement, for tests and
// the queries/op metric of BenchmarkSQLBackfill.
//
// # Several servers on one PostgreSQL database
//
// Several processes (several "fedhistory serve" instances, or homeserver
// workers) can share one PostgreSQL database: the fedhistory handler keeps
// no state of its own between requests (rate limits and concurrency caps
// are per instance), and this store caches only what cannot change or may
// lag by Options.StaleAfter (see Store): parsed state events and room
// versions for good; the resolved state for one set of forward extremities,
// keyed by that set and so never stale; CurrentState's answers per state
// group and server (an ACL can be emptied by a redaction: every Add through
// the Store clears them, another process's within StaleAfter); erasures
// (EraseUser through the Store at once, another process's within
// StaleAfter). So instances
// scale out behind any load balancer, with no session affinity. Writers are
// safe too: migrations run under a PostgreSQL advisory lock, so instances
// that start together migrate once; adds to one room are serialised by a
// per-room advisory transaction lock, so that concurrent writers keep the
// forward extremities right. An SQLite database is for one process (WAL
// mode lets its readers run while it writes).
//
// # Serving without writing
//
// Open never changes the schema unless asked (Options.Migrate; Migrate;
// "fedhistory migrate"), and the reads write nothing, so a Store can serve
// from a read-only role or a read replica (TestServingOnAReadOnlyConnection).
// That includes a room with several forward extremities: CurrentState
// resolves their states in memory, once per set of extremities and process,
// and stores nothing.
package sqlstore

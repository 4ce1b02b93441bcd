package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"hash/fnv"
	"iter"
	"maps"
	"runtime"
	"slices"
	"sync"

	"github.com/tidwall/gjson"

	"github.com/fedhistory/fedhistory"
	"github.com/fedhistory/fedhistory/internal/pdu"
	"github.com/fedhistory/fedhistory/internal/shares"
)

// Pending is one event for AddBatch: the arguments of one Add call.
type Pending struct {
	RoomVersion string
	// PDU is read during the call and not kept after it: it must not
	// change meanwhile, and may be reused afterwards.
	PDU     []byte
	Options fedhistory.AddOptions
	// EventID, when set, is the event's ID as the caller already computed
	// it (a room dump's reader does): in room versions 3 and later AddBatch
	// then takes it as given instead of hashing the event again, most of
	// the cost of parsing one. Like the rest of the input it is trusted: a
	// wrong ID stores the event under that ID. In versions 1 and 2, whose
	// events carry their ID, it must be that ID (else ErrInvalidEvent).
	EventID string
}

// Add adds one PDU and returns its event ID. It behaves exactly like
// memstore's Store.Add (read its documentation): events must come in
// topological order, the store trusts its input, the first event of a room
// fixes its version, the state before an event is known only as "State" on
// fedhistory.EventStore says (opts.StateBefore, or prev_events all held
// with a known state), and redactions are judged once, when both the
// redaction and its target are held. It fails with an error wrapping
// fedhistory.ErrDuplicateEvent, ErrRoomVersionMismatch,
// ErrUnsupportedRoomVersion, ErrInvalidEvent or ErrInvalidStateBefore when
// memstore would.
func (s *Store) Add(ctx context.Context, roomVersion string, data []byte, opts fedhistory.AddOptions) (string, error) {
	return s.addBatch(ctx, []Pending{{RoomVersion: roomVersion, PDU: data, Options: opts}}, nil)
}

// AddBatch adds events, in order, in one transaction: either all of them are
// stored or, on the first error, none. It is much faster than one Add per
// event for an import.
func (s *Store) AddBatch(ctx context.Context, events []Pending) error {
	if len(events) == 0 {
		return nil
	}
	_, err := s.addBatch(ctx, events, nil)
	return err
}

// AddSeq adds the events that events yields, in order, in one transaction,
// as AddBatch does, but takes them one chunk at a time: an import holds a
// few thousand events in memory rather than all of them (what it keeps
// beyond the chunks is bounded; see maxHeldEntries), and the database
// writes while events produces the next ones (a room dump's reader checks
// lines meanwhile). An event's PDU must not change until AddSeq returns.
//
// When events yields an error, AddSeq stores nothing and returns that error.
// After an error of its own (an event already stored, say) it still takes
// the rest of events, parsing each, and returns the first error events
// yields or the first event that does not parse, if any: as AddBatch, it
// fails with the first bad input in order rather than with a later
// consequence of it. A panic in events, or a runtime.Goexit, rolls the
// transaction back and is passed on to AddSeq's caller, as if events ran
// in its goroutine (it runs in another).
//
// When ctx is done AddSeq rolls back and returns ctx's error, but first
// waits for events to yield or return, so that nothing of it runs once
// AddSeq has returned: a sequence that can block (reading a pipe, say)
// must itself end when ctx is done.
//
// PostgreSQL: AddBatch locks all its rooms before writing, in an order that
// keeps two batches from waiting for each other; AddSeq, which cannot know
// them up front, locks each room when it first meets it, so that two
// concurrent AddSeq (or AddSeq and AddBatch) adding to the same two rooms
// may deadlock, which PostgreSQL detects by failing one of them.
func (s *Store) AddSeq(ctx context.Context, events iter.Seq2[Pending, error]) error {
	_, err := s.addBatch(ctx, nil, events)
	return err
}

// addBatch is AddBatch of batch, or AddSeq of seq when batch is nil. It
// returns the first event's ID, for Add.
func (s *Store) addBatch(ctx context.Context, batch []Pending, seq iter.Seq2[Pending, error]) (firstID string, err error) {
	// A batch of one chunk is parsed before any lock is taken; a larger
	// one (and a sequence) chunk by chunk, one chunk ahead of the writer
	// (see parseAhead).
	var first []*newEvent
	if batch != nil && len(batch) <= s.addChunk {
		if first, err = parseAll(batch); err != nil {
			return "", err
		}
	}

	// One connection, so that COPY (which database/sql does not know) can
	// run inside the transaction.
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return "", fmt.Errorf("sqlstore: connecting: %w", err)
	}
	defer conn.Close()
	if s.dialect == sqlite && (batch == nil || len(batch) >= sqliteImportMinEvents) {
		// An import writes far more pages than a serving connection's
		// cache holds, and one transaction cannot checkpoint its WAL:
		// every page it dirties and cannot keep is written to the WAL,
		// and written again when dirtied again. So the cache grows with
		// the batch, 2 KiB per event between 256 and 512 MiB. A larger
		// cache gains nothing since the links are keyed by nid (schema
		// 5): the pages an import dirties again and again are those of
		// the few indexes keyed by event ID. And it costs: shrinking the
		// cache back frees every page, with a system call per 64 KiB
		// (modernc.org/memory), which took 22 s after an import of 10^6
		// events with 2 GiB. 10^6 events (fedhistory import, gen room):
		// 256 MiB 115 s, 512 MiB 107 s, 1 GiB 113 s, 2 GiB 115 s. A
		// sequence, of unknown length, gets the most (SQLite takes the
		// cache's pages as it fills them). It goes back to its size
		// afterwards.
		// SQLite also journals every page a multi-row INSERT changes, so
		// that a failing row can undo the statement's earlier ones; in
		// memory rather than in a temporary file, that journal cost a
		// 10^5-event import 3.8 of 28 s less in write system calls.
		cacheKiB := sqliteImportCacheMaxKiB
		if batch != nil {
			cacheKiB = min(max(2*len(batch), sqliteImportCacheMinKiB), sqliteImportCacheMaxKiB)
		}
		defer func() {
			// Else the connection keeps the import's settings until it
			// retires (also when setting the second failed).
			conn.ExecContext(context.Background(), fmt.Sprintf(`PRAGMA cache_size = -%d`, sqliteCacheKiB)) //nolint:errcheck
			conn.ExecContext(context.Background(), `PRAGMA temp_store = DEFAULT`)                          //nolint:errcheck
		}()
		if _, err := conn.ExecContext(ctx, fmt.Sprintf(`PRAGMA cache_size = -%d`, cacheKiB)); err != nil {
			return "", fmt.Errorf("sqlstore: sizing the page cache: %w", err)
		}
		if _, err := conn.ExecContext(ctx, `PRAGMA temp_store = MEMORY`); err != nil {
			return "", fmt.Errorf("sqlstore: keeping statement journals in memory: %w", err)
		}
	}
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		return "", fmt.Errorf("sqlstore: beginning transaction: %w", err)
	}
	defer tx.Rollback() //nolint:errcheck // a no-op after Commit
	// Serialise writers per room (PostgreSQL; SQLite's BEGIN IMMEDIATE
	// serialises all writers), so that two processes adding to one room
	// cannot both compute its forward extremities from a state the other
	// is changing. Rooms are locked in sorted order so that two batches
	// never wait for each other in a cycle, so all of them before the
	// first write: those of a batch parsed ahead come from roomsOf.
	// (Sorted by lock key, not by room: two rooms may share a key.)
	locked := make(map[int32]bool)
	lock := func(rooms []string) error {
		if s.dialect != postgres {
			return nil
		}
		keys := make(map[int32]string, len(rooms))
		for _, room := range rooms {
			if key := roomLockKey(room); !locked[key] {
				keys[key] = room
			}
		}
		for _, key := range slices.Sorted(maps.Keys(keys)) {
			if _, err := s.exec(ctx, tx, `SELECT pg_advisory_xact_lock($1, $2)`, roomLockClass, key); err != nil {
				return fmt.Errorf("sqlstore: locking room %s: %w", keys[key], err)
			}
			locked[key] = true
		}
		return nil
	}
	var (
		chunks <-chan parsedChunk
		stop   = func() {}
	)
	switch {
	case first != nil:
		ready := make(chan parsedChunk, 1)
		ready <- parsedChunk{events: first}
		close(ready)
		chunks = ready
	case batch != nil:
		if s.dialect == postgres {
			if err := lock(roomsOf(batch)); err != nil {
				return "", err
			}
		}
		seq = pendingSeq(batch)
		fallthrough
	default:
		chunks, stop = parseAhead(seq, s.addChunk)
		defer stop()
	}
	// fail returns a write's error unless the input after what was written
	// holds an error (events yields one, or an event does not parse): then
	// the first such, as when a batch was parsed whole before anything was
	// written (a batch fails with the error of its first event that does
	// not parse, else with the first other error). Nothing is stored either
	// way.
	fail := func(err error) (string, error) {
		for {
			parsed, ok := nextChunk(ctx, chunks)
			if !ok {
				return "", err
			}
			if parsed.err != nil {
				return "", parsed.err
			}
		}
	}
	w := newBatchWriter(s, conn, tx)
	added := 0
	for {
		parsed, ok := nextChunk(ctx, chunks)
		if !ok {
			if err := ctx.Err(); err != nil {
				return "", err
			}
			break
		}
		if parsed.err != nil {
			return "", parsed.err
		}
		chunk := parsed.events
		var rooms []string
		for _, ev := range chunk {
			rooms = append(rooms, ev.Event.RoomID)
		}
		// A room roomsOf did not see (a PDU whose JSON names its room twice,
		// or with bytes that are not UTF-8, can hide one; every room of a
		// sequence) is locked before its first write; the order is then not
		// guaranteed, but PostgreSQL detects a deadlock and fails one of the
		// batches.
		if err := lock(rooms); err != nil {
			return fail(err)
		}
		if err := w.prefetch(ctx, chunk); err != nil {
			return fail(err)
		}
		for i, ev := range chunk {
			if err := w.add(ctx, ev); err != nil {
				return fail(err)
			}
			if added == 0 {
				firstID = ev.Event.ID
			}
			added++
			// The rows are written: only the metadata stays in memory.
			chunk[i] = nil
		}
		if err := w.flush(ctx); err != nil {
			return fail(err)
		}
		w.forget()
	}
	if added == 0 {
		return "", nil
	}
	if err := tx.Commit(); err != nil {
		return "", fmt.Errorf("sqlstore: committing %d events: %w", added, err)
	}
	// A redaction among them may have emptied a cached server ACL.
	s.currentStates.clear()
	return firstID, nil
}

// pendingSeq is the sequence of batch's events, without errors.
func pendingSeq(batch []Pending) iter.Seq2[Pending, error] {
	return func(yield func(Pending, error) bool) {
		for _, p := range batch {
			if !yield(p, nil) {
				return
			}
		}
	}
}

// parseAll parses events on every core: gomatrixserverlib's parse (which
// hashes every event of room version 3 and later to learn its ID) is the
// largest CPU cost of an import, about 30 µs per event. It fails with the
// error of the first event in order that does not parse, as a loop would.
func parseAll(events []Pending) ([]*newEvent, error) {
	parsed := make([]*newEvent, len(events))
	errs := make([]error, runtime.GOMAXPROCS(0)) // per share
	shares.Run(len(events), parseShare, func(share, lo, hi int) {
		for i := lo; i < hi; i++ {
			ev, err := parseNewEvent(events[i])
			if err != nil {
				errs[share] = err
				return
			}
			parsed[i] = ev
		}
	})
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	return parsed, nil
}

// parseShare is the fewest events worth a goroutine of parseAll.
const parseShare = 256

// parsedChunk is one chunk of a batch parsed by parseAhead, or the error
// that ends the batch (see parseAhead), or how the sequence's function
// ended abnormally.
type parsedChunk struct {
	events []*newEvent
	err    error
	// panicked is the value of a panic in the sequence; goexit says it
	// called runtime.Goexit.
	panicked any
	goexit   bool
}

// nextChunk returns the next chunk of chunks, and false when they have
// ended or ctx is done. A panic or Goexit of the sequence is raised here,
// in the caller's goroutine.
func nextChunk(ctx context.Context, chunks <-chan parsedChunk) (parsedChunk, bool) {
	if ctx.Err() != nil {
		return parsedChunk{}, false
	}
	select {
	case parsed, ok := <-chunks:
		switch {
		case parsed.goexit:
			runtime.Goexit()
		case parsed.panicked != nil:
			panic(parsed.panicked)
		}
		return parsed, ok
	case <-ctx.Done():
		return parsedChunk{}, false
	}
}

// parseAhead parses the events of seq in chunks of size, each on every
// core, while the caller writes the chunk before: parsing is an import's
// largest CPU cost after the database's own, and this way the database
// (PostgreSQL's backend, or SQLite in the writer's goroutine) works
// meanwhile instead of waiting for the whole batch to be parsed.
// BenchmarkAddBatch at 10^5 events, medians of 3 paired runs: SQLite 8,011
// → 9,590 events/s, PostgreSQL 8,376 → 8,995 (the parse competes with
// PostgreSQL's backend for this machine's two cores). A batch of one chunk
// is parsed whole before anything else, as before.
// The channel ends after the last chunk or after a chunk with an error: the
// first event of the chunk that does not parse, else an error seq yielded
// after the chunk's events. stop must be called before the events may
// change: it ends the parsing and waits for it (calling it again does
// nothing).
func parseAhead(seq iter.Seq2[Pending, error], size int) (chunks <-chan parsedChunk, stop func()) {
	// One chunk waits in the channel while the next is parsed: at most
	// three chunks are parsed and not yet written.
	out := make(chan parsedChunk, 1)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		defer close(out)
		// A panic or Goexit in seq (iter.Pull2 raises both in this
		// goroutine) must not look like the sequence's end: it is sent to
		// the writer, which raises it in its own goroutine.
		ended := false
		defer func() {
			if ended {
				return
			}
			r := recover()
			select {
			case out <- parsedChunk{panicked: r, goexit: r == nil}:
			case <-done:
			}
		}()
		pull(seq, size, out, done)
		ended = true
	})
	var once sync.Once
	return out, func() {
		once.Do(func() { close(done) })
		wg.Wait()
	}
}

// pull is parseAhead's loop: it parses seq's events a chunk at a time and
// sends them to out until seq ends, a chunk has an error, or done closes.
func pull(seq iter.Seq2[Pending, error], size int, out chan<- parsedChunk, done <-chan struct{}) {
	next, stopSeq := iter.Pull2(seq)
	defer stopSeq()
	for {
		select {
		case <-done:
			return
		default:
		}
		var (
			chunk  = make([]Pending, 0, size)
			seqErr error
			ended  bool
		)
		for len(chunk) < size {
			p, err, ok := next()
			if !ok {
				ended = true
				break
			}
			if err != nil {
				seqErr = err
				break
			}
			chunk = append(chunk, p)
		}
		if len(chunk) == 0 && seqErr == nil {
			return
		}
		parsed, err := parseAll(chunk)
		if err == nil {
			err = seqErr
		}
		select {
		case out <- parsedChunk{events: parsed, err: err}:
		case <-done:
			return
		}
		if err != nil || ended {
			return
		}
	}
}

// roomsOf returns the rooms of events without parsing them: the room_id
// field of each, or, for an event without one (a create event of room
// version 12 and later, whose room ID is its own ID's hash), its parsed
// room ID. A PDU that does not parse gives no room here, and its error
// later, in order.
func roomsOf(events []Pending) []string {
	seen := make(map[string]bool)
	var rooms []string
	for _, ev := range events {
		room := gjson.GetBytes(ev.PDU, "room_id")
		id := room.Str
		if room.Type != gjson.String {
			parsed, err := parseNewEvent(ev)
			if err != nil {
				continue
			}
			id = parsed.Event.RoomID
		}
		if !seen[id] {
			seen[id] = true
			rooms = append(rooms, id)
		}
	}
	return rooms
}

// roomLockClass is the first key of the per-room advisory locks
// ("fh" in ASCII), which keeps them apart from other applications' locks.
const roomLockClass int32 = 0x6668

func roomLockKey(roomID string) int32 {
	h := fnv.New32a()
	h.Write([]byte(roomID))
	return int32(h.Sum32())
}

// newEvent is a parsed PDU on its way into the database.
type newEvent struct {
	*pdu.Parsed
	version string
	opts    fedhistory.AddOptions
}

func parseNewEvent(p Pending) (*newEvent, error) {
	// No copy: AddBatch keeps no event's bytes once it returns, and an
	// import's events are most of its memory.
	parsed, err := pdu.ParseWithID(p.RoomVersion, p.PDU, p.EventID)
	if err != nil {
		return nil, err
	}
	// Nothing reads gomatrixserverlib's parse once the metadata is out, and
	// an import holds every event of the batch until it is written.
	parsed.PDU = nil
	return &newEvent{Parsed: parsed, version: p.RoomVersion, opts: p.Options}, nil
}

// membership and historyVisibility are the event's values of the columns
// of the same names: NULL unless it is a state event of that kind.
func (ev *newEvent) membership() *string {
	if ev.IsState() && ev.Event.Type == typeMember {
		return &ev.Membership
	}
	return nil
}

func (ev *newEvent) historyVisibility() *string {
	if ev.IsState() && ev.Event.Type == typeHistoryVisibility && *ev.Event.StateKey == "" {
		return &ev.HistoryVisibility
	}
	return nil
}

// checkStorable refuses, with ErrInvalidEvent, an event whose metadata the
// database cannot hold (see Store.storable): on PostgreSQL, strings with NUL
// characters. (memstore, which holds any Go string, accepts such events.)
func (s *Store) checkStorable(ev *newEvent) error {
	e := &ev.Event
	fields := []string{e.ID, e.RoomID, e.Type, e.Sender, e.Redacts}
	fields = append(append(fields, e.PrevEvents...), ev.AuthEvents...)
	for _, p := range []*string{e.StateKey, ev.membership(), ev.historyVisibility()} {
		if p != nil {
			fields = append(fields, *p)
		}
	}
	for _, f := range fields {
		if !s.storable(f) {
			return fmt.Errorf("%w: %s holds a string %s cannot store: %q", fedhistory.ErrInvalidEvent, e.ID, s.dialect, f)
		}
	}
	return nil
}

// knownEvent is what add needs to know of an event already stored (or
// added earlier in the batch).
type knownEvent struct {
	// event carries ID, RoomID, Type, StateKey, Sender and Rejected: what
	// the redaction rules read of a target.
	event      fedhistory.Event
	nid        int64 // events.event_nid
	outlier    bool
	stateKnown bool
	afterGroup int64 // 0: the empty state; meaningful when stateKnown
}

// add works out ev's rows, in memory, and buffers them for flush.
func (w *batchWriter) add(ctx context.Context, ev *newEvent) error {
	if err := w.s.checkStorable(ev); err != nil {
		return err
	}
	e := &ev.Event
	e.Rejected, e.Outlier = ev.opts.Rejected, ev.opts.Outlier
	if _, dup := w.known[e.ID]; dup {
		return fmt.Errorf("%w: %s", fedhistory.ErrDuplicateEvent, e.ID)
	}
	if err := w.checkRoomVersion(ctx, ev); err != nil {
		return err
	}
	// As in memstore: the auth chain links of an event are its auth events
	// held in its room when it is added, whatever their kind. (State
	// resolution follows only those between state events.) They are noted
	// before the event's state: a flush during the rest of add (a
	// redaction's judgement reads stored power levels) writes the state
	// change's auth counts, which read them.
	seen := make(map[string]bool, len(ev.AuthEvents))
	var links []string
	nid, err := w.eventNIDs.next(ctx, w)
	if err != nil {
		return err
	}
	for _, id := range ev.AuthEvents {
		if a, ok := w.known[id]; ok && a.event.RoomID == e.RoomID && !seen[id] {
			seen[id] = true
			links = append(links, id)
			w.authRows = append(w.authRows, []any{nid, a.nid})
		}
	}
	if e.StateKey != nil {
		w.authLinks[e.ID] = links
	}
	st, err := w.stateOnAdd(ctx, ev)
	if err != nil {
		return err
	}
	self := w.pendingRedactionsApply(ev)
	effects, err := w.judgeRedaction(ctx, ev, st)
	if err != nil {
		return err
	}

	row := &eventRow{args: []any{
		nid, e.ID, e.RoomID, e.Depth, jsonList(e.PrevEvents), e.Type, e.StateKey, e.Sender, e.Redacts,
		e.Rejected, e.Outlier, ev.membership(), ev.historyVisibility(), st.beforeColumn(), st.afterColumn(), e.JSON,
		e.OriginServerTS, st.known, self,
	}}
	w.eventRows = append(w.eventRows, row)
	w.unflushed[e.ID] = row
	w.applyRedaction(ev, effects)
	for i, prev := range e.PrevEvents {
		w.edgeRows = append(w.edgeRows, []any{nid, i, prev})
	}
	w.known[e.ID] = knownEvent{
		event: fedhistory.Event{
			ID: e.ID, RoomID: e.RoomID, Type: e.Type, StateKey: e.StateKey, Sender: e.Sender,
			Rejected: e.Rejected, Outlier: e.Outlier,
		},
		nid:        nid,
		outlier:    e.Outlier,
		stateKnown: st.known,
		afterGroup: st.after,
	}
	if !e.Outlier && !e.Rejected {
		w.recordExtremities(ev)
	}
	return nil
}

// knownEvents returns what the store holds of ids.
func (s *Store) knownEvents(ctx context.Context, q querier, ids []string) (map[string]knownEvent, error) {
	rows, err := s.query(ctx, q, `
SELECT event_nid, event_id, room_id, event_type, state_key, sender, rejected, outlier, state_known, after_group
FROM events WHERE event_id IN (IDS($1))`,
		s.idList(ids))
	if err != nil {
		return nil, fmt.Errorf("sqlstore: looking up %d events: %w", len(ids), err)
	}
	defer rows.Close()
	known := make(map[string]knownEvent, len(ids))
	for rows.Next() {
		var (
			k        knownEvent
			stateKey sql.NullString
			group    sql.NullInt64
		)
		if err := rows.Scan(&k.nid, &k.event.ID, &k.event.RoomID, &k.event.Type, &stateKey, &k.event.Sender,
			&k.event.Rejected, &k.outlier, &k.stateKnown, &group); err != nil {
			return nil, fmt.Errorf("sqlstore: looking up events: %w", err)
		}
		if stateKey.Valid {
			k.event.StateKey = &stateKey.String
		}
		k.event.Outlier = k.outlier
		k.afterGroup = group.Int64
		known[k.event.ID] = k
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlstore: looking up events: %w", err)
	}
	return known, nil
}

// isUniqueViolation reports whether err is a unique constraint violation:
// SQLSTATE 23505 on PostgreSQL, SQLITE_CONSTRAINT_UNIQUE or _PRIMARYKEY on
// SQLite.
func isUniqueViolation(err error) bool {
	var pgErr interface{ SQLState() string }
	if errors.As(err, &pgErr) {
		return pgErr.SQLState() == "23505"
	}
	var liteErr interface{ Code() int }
	if errors.As(err, &liteErr) {
		const sqliteConstraintUnique, sqliteConstraintPrimaryKey = 2067, 1555
		return liteErr.Code() == sqliteConstraintUnique || liteErr.Code() == sqliteConstraintPrimaryKey
	}
	return false
}

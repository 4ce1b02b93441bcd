// Package synthroom generates very long rooms cheaply, for benchmarks and
// memory measurements of event stores.
//
// Signing a million events with roomgen takes minutes. A synthetic room
// instead starts with a short, properly signed setup built by roomgen (room
// version 1, where the event ID is a field of the JSON) and then clones two
// signed templates, a message and a join, changing only event_id,
// prev_events and depth (and, for joins, the user). Hashes and signatures of
// the clones no longer match their content; stores that trust their input,
// such as memstore, never notice, and the bytes served are the same size
// and shape as real events.
package synthroom

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/fedhistory/fedhistory/internal/roomgen"
)

// Version is the room version of every synthetic room: the only versions
// whose event IDs can be chosen freely are 1 and 2.
const Version = "1"

// ServerName is the server of the room's creator and of the synthetic
// event IDs.
const ServerName = "hs1.example"

// Shape is the shape of the synthetic part of the DAG.
type Shape int

const (
	// Linear: every event's prev_events is the event before it.
	Linear Shape = iota
	// Forked: blocks of five events, a base, three branches pointing at
	// the base and a merge pointing at the three branches; the next base
	// points at the merge. Message-only branches need no state resolution.
	Forked
)

// defaultJoinServers is the number of servers joins spread over when
// Options.JoinServers is 0.
const defaultJoinServers = 1000

// blockSize is the number of events in one block of the Forked shape.
const blockSize = 5

// Options configure a Generator.
type Options struct {
	Shape Shape
	// MessageBytes is the approximate size of each message's JSON; the
	// template's body is padded to reach it. 0 means 1024.
	MessageBytes int
	// HistoryVisibility is the room's history visibility; "" keeps the
	// setup's "shared".
	HistoryVisibility string
	// Members are users joined during the setup, typically one user of each
	// server that will ask for history.
	Members []string
	// JoinEvery > 0 makes every JoinEvery-th synthetic event the join of a
	// new user, "@joinerN:joinerM.example" (M cycling through JoinServers
	// servers, none of them a server of Members), so that the room state
	// grows with the room as real rooms' does.
	JoinEvery int
	// HashIDs gives the synthetic events IDs that look like hashes ("$" and
	// 43 base64 characters, as from room version 3 on) instead of
	// "$syntheticN": a database's indexes on event IDs then take their
	// inserts at random places, as they do in a real room.
	HashIDs bool
	// JoinServers is the number of servers the joining users spread over;
	// 0 means 1000. A SQL store indexes memberships by server, so a
	// realistic spread matters to its plans.
	JoinServers int
	// StateEvery > 0 makes every StateEvery-th synthetic event (unless it
	// is a join) a change of room state, in turn: the history visibility
	// set to "shared", set back to HistoryVisibility (or "joined" when
	// that is ""), and a server ACL allowing every server. The room's
	// state chain then holds many versions of the keys every visibility
	// and ACL check reads. In the Forked shape these changes sit on
	// branches, so that merges need state resolution.
	StateEvery int
}

// Generator produces the events of one synthetic room in topological order:
// first Setup, then Next as often as wanted.
type Generator struct {
	opts    Options
	roomID  string
	setup   []roomgen.Event
	message template
	join    template
	// changes are the state changes StateEvery cycles through.
	changes []template

	n          int    // synthetic events generated so far
	setupDepth int64  // depth of the last setup event
	last       string // ID of the newest event
	blockBase  string // ID of the current block's base (Forked)
	branches   [3]string
	idBuf      []byte
}

// New builds the signed setup and the templates.
func New(opts Options) (*Generator, error) {
	if opts.MessageBytes <= 0 {
		opts.MessageBytes = 1024
	}
	b, err := roomgen.NewBuilder(roomgen.BuilderOptions{Version: Version, ServerName: ServerName})
	if err != nil {
		return nil, fmt.Errorf("synthroom: %w", err)
	}
	if err := b.StandardSetup(); err != nil {
		return nil, fmt.Errorf("synthroom: %w", err)
	}
	if opts.HistoryVisibility != "" {
		if _, err := b.HistoryVisibility(b.Creator(), opts.HistoryVisibility); err != nil {
			return nil, fmt.Errorf("synthroom: %w", err)
		}
	}
	for _, user := range opts.Members {
		if _, err := b.Join(user); err != nil {
			return nil, fmt.Errorf("synthroom: joining %s: %w", user, err)
		}
	}
	var changes []roomgen.Event
	if opts.StateEvery > 0 {
		final := opts.HistoryVisibility
		if final == "" {
			final = "joined"
		}
		// Built in the order they will cycle in, so that the setup ends
		// with the history visibility the room is meant to have.
		shared, err := b.HistoryVisibility(b.Creator(), "shared")
		if err != nil {
			return nil, fmt.Errorf("synthroom: %w", err)
		}
		restored, err := b.HistoryVisibility(b.Creator(), final)
		if err != nil {
			return nil, fmt.Errorf("synthroom: %w", err)
		}
		acl, err := b.State(b.Creator(), "m.room.server_acl", "", map[string]any{
			"allow": []string{"*"}, "deny": []string{}, "allow_ip_literals": true,
		})
		if err != nil {
			return nil, fmt.Errorf("synthroom: %w", err)
		}
		changes = []roomgen.Event{shared, restored, acl}
	}
	// The message template: a first message measures the JSON around the
	// body, the second is padded to the wanted size.
	probe, err := b.Message(b.Creator(), "x")
	if err != nil {
		return nil, fmt.Errorf("synthroom: %w", err)
	}
	padding := max(1, opts.MessageBytes-(len(probe.JSON)-1))
	message, err := b.Message(b.Creator(), string(bytes.Repeat([]byte("x"), padding)))
	if err != nil {
		return nil, fmt.Errorf("synthroom: %w", err)
	}
	join, err := b.Join("@joiner:joiner0.example")
	if err != nil {
		return nil, fmt.Errorf("synthroom: %w", err)
	}

	g := &Generator{opts: opts, roomID: b.RoomID(), setup: b.Events()}
	if g.message, err = compile(message.JSON, false); err != nil {
		return nil, err
	}
	if g.join, err = compile(join.JSON, true); err != nil {
		return nil, err
	}
	for _, change := range changes {
		t, err := compile(change.JSON, false)
		if err != nil {
			return nil, err
		}
		g.changes = append(g.changes, t)
	}
	g.last = join.ID
	g.setupDepth = join.Depth
	return g, nil
}

// RoomID returns the room's ID.
func (g *Generator) RoomID() string { return g.roomID }

// Setup returns the signed setup events, in topological order. They are
// real events: a store may check them.
func (g *Generator) Setup() []roomgen.Event { return g.setup }

// Newest returns the ID of the newest event generated so far. In the Forked
// shape it is the room's only forward extremity after a multiple of five
// synthetic events.
func (g *Generator) Newest() string { return g.last }

// Next appends the JSON of the next synthetic event to dst[:0] and returns
// it with the event's ID.
func (g *Generator) Next(dst []byte) (eventID string, pdu []byte) {
	i := g.n
	g.n++
	g.idBuf = append(g.idBuf[:0], "$synthetic"...)
	g.idBuf = strconv.AppendInt(g.idBuf, int64(i), 10)
	if g.opts.HashIDs {
		sum := sha256.Sum256(g.idBuf)
		g.idBuf = base64.RawURLEncoding.AppendEncode(g.idBuf[:1], sum[:])
	}
	g.idBuf = append(g.idBuf, ':')
	g.idBuf = append(g.idBuf, ServerName...)
	eventID = string(g.idBuf)

	var prevs []string
	var depth int64
	switch g.opts.Shape {
	case Forked:
		block, pos := i/blockSize, i%blockSize
		depth = g.setupDepth + 3*int64(block)
		switch pos {
		case 0:
			prevs, depth = []string{g.last}, depth+1
			g.blockBase = eventID
		case 1, 2, 3:
			prevs, depth = []string{g.blockBase}, depth+2
			g.branches[pos-1] = eventID
		case 4:
			prevs, depth = g.branches[:], depth+3
		}
	default:
		prevs, depth = []string{g.last}, g.setupDepth+int64(i)+1
	}
	g.last = eventID

	if every := g.opts.JoinEvery; every > 0 && i%every == every-1 {
		servers := g.opts.JoinServers
		if servers <= 0 {
			servers = defaultJoinServers
		}
		// The joins' own count picks the server: i itself would put every
		// join on the same server whenever JoinEvery is a multiple of the
		// number of servers.
		server := (i / every) % servers
		user := "@joiner" + strconv.Itoa(i) + ":joiner" + strconv.Itoa(server) + ".example"
		return eventID, g.join.fill(dst[:0], eventID, prevs, depth, user)
	}
	if every := g.opts.StateEvery; every > 0 && i%every == every-1 {
		change := g.changes[(i/every)%len(g.changes)]
		return eventID, change.fill(dst[:0], eventID, prevs, depth, "")
	}
	return eventID, g.message.fill(dst[:0], eventID, prevs, depth, "")
}

// A template is an event's JSON cut at the fields that change.
type template struct {
	// literals[i] precedes holes[i]; the last literal ends the event.
	literals [][]byte
	holes    []string
}

// The fields a template leaves open.
const (
	fieldEventID    = "event_id"
	fieldPrevEvents = "prev_events"
	fieldDepth      = "depth"
	fieldSender     = "sender"
	fieldStateKey   = "state_key"
)

// compile cuts pdu at event_id, prev_events and depth, and for a join also
// at sender and state_key.
func compile(pdu []byte, isJoin bool) (template, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(pdu, &fields); err != nil {
		return template{}, fmt.Errorf("synthroom: decoding template: %w", err)
	}
	open := []string{fieldEventID, fieldPrevEvents, fieldDepth}
	if isJoin {
		open = append(open, fieldSender, fieldStateKey)
	}
	for _, name := range open {
		if _, ok := fields[name]; !ok {
			return template{}, fmt.Errorf("synthroom: template has no %q", name)
		}
		fields[name] = json.RawMessage(`"\u0000` + name + `"`)
	}
	// Encoding a map sorts the keys, as canonical JSON does; HTML escaping
	// would change bytes canonical JSON leaves alone.
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(fields); err != nil {
		return template{}, fmt.Errorf("synthroom: encoding template: %w", err)
	}
	encoded := bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
	var t template
	rest := encoded
	for len(t.holes) < len(open) {
		start := bytes.Index(rest, []byte(`"\u0000`))
		if start < 0 {
			return template{}, errors.New("synthroom: lost a template field")
		}
		end := start + bytes.IndexByte(rest[start+1:], '"') + 2
		t.literals = append(t.literals, rest[:start])
		t.holes = append(t.holes, string(rest[start+len(`"\u0000`):end-1]))
		rest = rest[end:]
	}
	t.literals = append(t.literals, rest)
	return t, nil
}

// fill appends the template with its holes filled in. IDs and user IDs are
// generated here from plain ASCII, so they need no JSON escaping.
func (t template) fill(dst []byte, eventID string, prevs []string, depth int64, user string) []byte {
	for i, hole := range t.holes {
		dst = append(dst, t.literals[i]...)
		switch hole {
		case fieldEventID:
			dst = appendString(dst, eventID)
		case fieldPrevEvents:
			dst = append(dst, '[')
			for j, prev := range prevs {
				if j > 0 {
					dst = append(dst, ',')
				}
				// Room versions 1 and 2 pair each ID with its reference
				// hash; nobody checks it here.
				dst = append(dst, '[')
				dst = appendString(dst, prev)
				dst = append(dst, `,{"sha256":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}]`...)
			}
			dst = append(dst, ']')
		case fieldDepth:
			dst = strconv.AppendInt(dst, depth, 10)
		case fieldSender, fieldStateKey:
			dst = appendString(dst, user)
		}
	}
	return append(dst, t.literals[len(t.literals)-1]...)
}

func appendString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	dst = append(dst, s...)
	return append(dst, '"')
}

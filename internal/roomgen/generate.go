package roomgen

import (
	"crypto/ed25519"
	"fmt"
	"strconv"
	"strings"
)

// Options configure Generate. Zero values select the defaults.
type Options struct {
	Version string // room version, DefaultVersion when empty; any stable version "1" … "12"
	// Events is the total number of events, setup events included.
	Events int
	// ForkEvery: 0 gives a linear DAG. K > 0 forks the DAG into two
	// branches after every K events on the main line; the branches get two
	// to six events between them and merge again in an event with two
	// prev_events.
	ForkEvery int
	// Seed makes the output deterministic: the same options give the same
	// room, byte for byte.
	Seed       int64
	ServerName string // the creator's server, DefaultServerName when empty
	// Key signs ServerName's events under KeyID (DefaultKeyID when empty);
	// when nil, a key is derived from Seed.
	Key   ed25519.PrivateKey
	KeyID string
	// OtherServers each get one joined user, "@bob:<server>". Nil means
	// ["hs2.example"]; an empty non-nil slice means none.
	OtherServers []string
	// MessageBytes is the approximate size of each message event's JSON;
	// the body is padded to reach it. 0 means 1024.
	MessageBytes int
	// HistoryVisibilityChanges makes the creator change the history
	// visibility (shared → joined → invited → shared …) at a few points.
	HistoryVisibilityChanges bool
	// ServerACL adds an m.room.server_acl allowing "*" and denying
	// "evil.example" after the joins.
	ServerACL bool
	// RejectedEvery K > 0 makes every K-th message one that fails
	// authorisation, marked Rejected: it is sent by "@mallory:<server>", on
	// the first other server (or ServerName), who never joined the room.
	RejectedEvery int
	// Progress, when set, is called every ProgressInterval events and once
	// at the end.
	Progress func(done, total int)
}

// ProgressInterval is how often Generate calls Options.Progress.
const ProgressInterval = 1000

// Users that Generate creates.
const (
	creatorLocalpart  = "alice"
	memberLocalpart   = "bob"
	outsiderLocalpart = "mallory"
)

// historyVisibilityCycle is the sequence HistoryVisibilityChanges walks
// through, starting from the setup's "shared".
var historyVisibilityCycle = []string{"joined", "invited", "shared"}

// Generate builds a room: the create event, the creator's join, power
// levels, public join rules, shared history visibility, the joins of one
// user per other server, an optional server ACL, then messages (with
// history-visibility changes, forks and rejected events as configured) up
// to opts.Events events in all.
func Generate(opts Options) (*Room, error) {
	if opts.OtherServers == nil {
		opts.OtherServers = []string{"hs2.example"}
	}
	if opts.MessageBytes == 0 {
		opts.MessageBytes = 1024
	}
	if opts.ServerName == "" {
		opts.ServerName = DefaultServerName
	}
	b, err := NewBuilder(BuilderOptions{
		Version:    opts.Version,
		ServerName: opts.ServerName,
		Creator:    "@" + creatorLocalpart + ":" + opts.ServerName,
		Key:        opts.Key,
		KeyID:      opts.KeyID,
		Seed:       opts.Seed,
	})
	if err != nil {
		return nil, err
	}
	g := &generator{opts: opts, b: b, users: []string{b.Creator()}}
	if err := g.run(); err != nil {
		return nil, err
	}
	return b.Room(), nil
}

type generator struct {
	opts  Options
	b     *Builder
	users []string // joined users, who send the messages
	// messages counts messages sent, visibility how many history
	// visibility changes were made.
	messages, visibility int
	// padOverhead is the size of the last message event's JSON apart from
	// its body, used to pad the next body to MessageBytes.
	padOverhead int
}

func (g *generator) setupEvents() int {
	n := 5 + len(g.opts.OtherServers) // create, join, power levels, join rules, history visibility
	if g.opts.ServerACL {
		n++
	}
	return n
}

func (g *generator) run() error {
	total := g.opts.Events
	if total < g.setupEvents() {
		return fmt.Errorf("roomgen: %d events requested, but the setup alone takes %d", total, g.setupEvents())
	}
	if err := g.b.StandardSetup(); err != nil {
		return err
	}
	for _, server := range g.opts.OtherServers {
		user := "@" + memberLocalpart + ":" + server
		if _, err := g.b.Join(user); err != nil {
			return err
		}
		g.users = append(g.users, user)
	}
	if g.opts.ServerACL {
		acl := map[string]any{"allow": []string{"*"}, "deny": []string{"evil.example"}, "allow_ip_literals": false}
		if _, err := g.b.State(g.b.Creator(), "m.room.server_acl", "", acl); err != nil {
			return err
		}
	}
	g.progress(total)

	// History visibility changes at evenly spaced points of the rest.
	var changesAt []int
	if g.opts.HistoryVisibilityChanges {
		setup := len(g.b.Events())
		for k := 1; k <= 3; k++ {
			changesAt = append(changesAt, setup+k*(total-setup)/4)
		}
	}
	sinceFork := 0
	for len(g.b.Events()) < total {
		done := len(g.b.Events())
		if len(changesAt) > 0 && done >= changesAt[0] {
			changesAt = changesAt[1:]
			visibility := historyVisibilityCycle[g.visibility%len(historyVisibilityCycle)]
			g.visibility++
			if _, err := g.b.HistoryVisibility(g.b.Creator(), visibility); err != nil {
				return err
			}
		} else if g.opts.ForkEvery > 0 && sinceFork >= g.opts.ForkEvery && total-done >= 3 {
			if err := g.fork(total - done); err != nil {
				return err
			}
			sinceFork = 0
		} else {
			if err := g.message(); err != nil {
				return err
			}
			sinceFork++
		}
		g.progress(total)
	}
	if g.opts.Progress != nil && total%ProgressInterval != 0 {
		g.opts.Progress(total, total)
	}
	return nil
}

// fork builds two branches of one to three messages each, interleaved, and
// the message that merges them: at most budget events.
func (g *generator) fork(budget int) error {
	left := 1 + g.b.rng.IntN(3)
	right := 1 + g.b.rng.IntN(3)
	for left+right+1 > budget {
		if left >= right {
			left--
		} else {
			right--
		}
	}
	other := g.b.Fork()
	remaining := []int{left, right}
	branches := []int{g.b.current, other}
	for remaining[0]+remaining[1] > 0 {
		side := g.b.rng.IntN(2)
		if remaining[side] == 0 {
			side = 1 - side
		}
		remaining[side]--
		if err := g.b.Branch(branches[side]); err != nil {
			return err
		}
		if err := g.message(); err != nil {
			return err
		}
	}
	if err := g.b.Merge(); err != nil {
		return err
	}
	return g.message()
}

func (g *generator) message() error {
	g.messages++
	sender := g.users[g.b.rng.IntN(len(g.users))]
	rejected := g.opts.RejectedEvery > 0 && g.messages%g.opts.RejectedEvery == 0
	if rejected {
		server := g.opts.ServerName
		if len(g.opts.OtherServers) > 0 {
			server = g.opts.OtherServers[0]
		}
		sender = "@" + outsiderLocalpart + ":" + server
	}
	body := g.body()
	ev, err := g.b.Event(EventSpec{
		Sender:   sender,
		Type:     "m.room.message",
		Content:  map[string]string{"msgtype": "m.text", "body": body},
		Rejected: rejected,
	})
	if err != nil {
		return err
	}
	g.padOverhead = len(ev.JSON) - len(body)
	return nil
}

const filler = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore et dolore magna aliqua. "

// body returns the next message body, padded so that the event's JSON is
// about MessageBytes long. The overhead of the previous message stands in
// for this one's: it differs only by a few bytes (IDs, sender).
func (g *generator) body() string {
	body := "message " + strconv.Itoa(g.messages)
	overhead := g.padOverhead
	if overhead == 0 {
		overhead = 600 // a typical unpadded message event
	}
	pad := g.opts.MessageBytes - overhead - len(body) - 1
	if pad <= 0 {
		return body
	}
	var sb strings.Builder
	sb.Grow(len(body) + 1 + pad)
	sb.WriteString(body)
	sb.WriteByte(' ')
	for pad > 0 {
		n := min(pad, len(filler))
		sb.WriteString(filler[:n])
		pad -= n
	}
	return sb.String()
}

func (g *generator) progress(total int) {
	if g.opts.Progress != nil && len(g.b.Events())%ProgressInterval == 0 {
		g.opts.Progress(len(g.b.Events()), total)
	}
}

package main

import (
	"fmt"

	"github.com/fedhistory/fedhistory"
	"github.com/fedhistory/fedhistory/internal/roomgen"
	"github.com/fedhistory/fedhistory/memstore"
	"github.com/fedhistory/fedhistory/sign"
)

// The other servers of the demo room.
const (
	// demoJoinerServer's user joins late, after the history visibility
	// became "joined": the events between are hidden from it.
	demoJoinerServer = "hs2.example"
	// demoDeniedServer's user is joined, but the room's server ACL denies
	// the server, so it may read nothing.
	demoDeniedServer = "evil.example"
)

// The shape of the demo room: a few hundred events, so that generating it
// takes well under a second and every part of the story fits one backfill.
const (
	demoSharedMessages = 150 // history_visibility=shared, before hs2 joins
	demoJoinedMessages = 20  // history_visibility=joined, before hs2 joins
	demoLaterMessages  = 120 // after hs2 joined
	demoForkEvery      = 25  // messages between two forks of the DAG
	demoBackfillAfter  = 5   // the demo backfills from this many messages after the join
	demoTailMessages   = 3   // messages after the last fork, which get_missing_events shows
)

// demoRoomOptions configure buildDemoRoom.
type demoRoomOptions struct {
	ServerName string           // the creator's server, which serves the room
	Key        *sign.SigningKey // signs ServerName's events; nil derives one from the seed
	Version    string           // room version; roomgen.DefaultVersion when empty
	Progress   func(done, total int)
}

// demoRoom is the generated room and the events the demo's requests name.
type demoRoom struct {
	Room *roomgen.Room
	// Creator, LocalMember, Joiner and Denied are the room's users.
	Creator, LocalMember, Joiner, Denied string
	// JoinedVisibility is the event that set history_visibility=joined,
	// JoinerJoin the late join of Joiner.
	JoinedVisibility, JoinerJoin roomgen.Event
	// BackfillFrom is a message shortly after JoinerJoin: a backfill from it
	// reaches back through the hidden events into the shared ones.
	BackfillFrom roomgen.Event
	// MissingEarliest and Latest bracket the room's last events, a fork
	// and merge among them, for get_missing_events.
	MissingEarliest roomgen.Event
	Latest          roomgen.Event
}

// demoSpeech is what the demo's users say, in turn.
var demoSpeech = []string{
	"Morning! Is the federation test room still up?",
	"Yes, and backfill works from every fork now.",
	"Did anyone check get_missing_events with min_depth?",
	"Running it against the staging server this afternoon.",
	"The new release notes are in the wiki.",
	"Who is on call this weekend?",
	"I am. Ping me if the key server misbehaves.",
	"Reminder: retro at four.",
	"The server ACL change went out this morning.",
	"Coffee is fresh in the kitchen.",
	"Found a typo in the spec; opening a PR.",
	"Merged. Thanks for the review!",
}

// demoBuilder appends the demo's messages to a roomgen.Builder.
type demoBuilder struct {
	b        *roomgen.Builder
	speakers []string
	said     int
	progress func(done, total int)
	total    int
}

func (d *demoBuilder) report() {
	if d.progress != nil {
		d.progress(len(d.b.Events()), d.total)
	}
}

func (d *demoBuilder) message() (roomgen.Event, error) {
	speaker := d.speakers[d.said%len(d.speakers)]
	body := fmt.Sprintf("%s (#%d)", demoSpeech[d.said%len(demoSpeech)], d.said+1)
	d.said++
	ev, err := d.b.Message(speaker, body)
	d.report()
	return ev, err
}

// messages sends n messages, forking the DAG every forkEvery of them (0:
// never) into two branches of two messages each, merged by the message
// that follows. The last message sent is returned.
func (d *demoBuilder) messages(n, forkEvery int) (roomgen.Event, error) {
	var last roomgen.Event
	for i := 0; i < n; {
		if forkEvery > 0 && i > 0 && i%forkEvery == 0 && n-i >= 5 {
			if err := d.fork(); err != nil {
				return last, err
			}
			i += 4
			continue
		}
		ev, err := d.message()
		if err != nil {
			return last, err
		}
		last = ev
		i++
	}
	return last, nil
}

// fork sends two messages on each of two concurrent branches and merges
// them: the next event has both branch heads as prev_events.
func (d *demoBuilder) fork() error {
	other := d.b.Fork()
	for _, branch := range []int{0, other} {
		if err := d.b.Branch(branch); err != nil {
			return err
		}
		for range 2 {
			if _, err := d.message(); err != nil {
				return err
			}
		}
	}
	return d.b.Merge()
}

// buildDemoRoom generates the demo room:
//
//  1. the creator's public room with shared history, a second local user,
//     a user of demoDeniedServer, and a server ACL denying that server;
//  2. demoSharedMessages messages with forks;
//  3. history visibility "joined", then demoJoinedMessages messages;
//  4. the join of @bob:demoJoinerServer;
//  5. demoLaterMessages messages with forks, ending with a fork and merge.
//
// demoJoinerServer, asking for the history, sees the shared messages (its
// user is joined now), not the messages sent while the history was "joined"
// and it had no user in the room (served redacted), and everything since
// its user's join.
func buildDemoRoom(opts demoRoomOptions) (*demoRoom, error) {
	builderOpts := roomgen.BuilderOptions{
		Version:    opts.Version,
		ServerName: opts.ServerName,
		Seed:       1,
	}
	if opts.Key != nil {
		builderOpts.Key = opts.Key.Private
		builderOpts.KeyID = opts.Key.ID
	}
	b, err := roomgen.NewBuilder(builderOpts)
	if err != nil {
		return nil, fmt.Errorf("starting the demo room: %w", err)
	}
	room := &demoRoom{
		Creator:     b.Creator(),
		LocalMember: "@carol:" + opts.ServerName,
		Joiner:      "@bob:" + demoJoinerServer,
		Denied:      "@mallory:" + demoDeniedServer,
	}
	d := &demoBuilder{
		b:        b,
		progress: opts.Progress,
		// Setup (5 events), two joins, the ACL, the visibility change,
		// the late join, the messages and the last fork's merge message.
		total: 5 + 2 + 1 + 1 + 1 + demoSharedMessages + demoJoinedMessages + demoLaterMessages + demoTailMessages,
	}
	if err := buildDemoStory(d, room); err != nil {
		return nil, fmt.Errorf("generating the demo room: %w", err)
	}
	room.Room = b.Room()
	return room, nil
}

func buildDemoStory(d *demoBuilder, room *demoRoom) error {
	b := d.b
	if err := b.StandardSetup(); err != nil {
		return err
	}
	for _, user := range []string{room.LocalMember, room.Denied} {
		if _, err := b.Join(user); err != nil {
			return err
		}
	}
	acl := map[string]any{"allow": []string{"*"}, "deny": []string{demoDeniedServer}}
	if _, err := b.State(room.Creator, "m.room.server_acl", "", acl); err != nil {
		return err
	}
	d.report()

	d.speakers = []string{room.Creator, room.LocalMember, room.Creator, room.Denied}
	if _, err := d.messages(demoSharedMessages, demoForkEvery); err != nil {
		return err
	}

	var err error
	if room.JoinedVisibility, err = b.HistoryVisibility(room.Creator, "joined"); err != nil {
		return err
	}
	d.speakers = []string{room.Creator, room.LocalMember}
	if _, err := d.messages(demoJoinedMessages, demoJoinedMessages/2); err != nil {
		return err
	}

	if room.JoinerJoin, err = b.Join(room.Joiner); err != nil {
		return err
	}
	d.speakers = []string{room.Creator, room.Joiner, room.LocalMember}
	if room.BackfillFrom, err = d.messages(demoBackfillAfter, 0); err != nil {
		return err
	}
	if room.MissingEarliest, err = d.messages(demoLaterMessages-demoBackfillAfter-4, demoForkEvery); err != nil {
		return err
	}
	// The last fork lies between MissingEarliest and Latest.
	if err := d.fork(); err != nil {
		return err
	}
	if room.Latest, err = d.messages(demoTailMessages, 0); err != nil {
		return err
	}
	d.report()
	return nil
}

// newDemoStore loads a demo room into a new in-memory store.
func newDemoStore(room *roomgen.Room) (*memstore.Store, error) {
	store := memstore.New()
	if err := addRoom(store, room); err != nil {
		return nil, err
	}
	return store, nil
}

// addRoom adds every event of room to store.
func addRoom(store *memstore.Store, room *roomgen.Room) error {
	for _, ev := range room.Events {
		if _, err := store.Add(room.Version, ev.JSON, fedhistory.AddOptions{Rejected: ev.Rejected, Outlier: ev.Outlier}); err != nil {
			return fmt.Errorf("adding event %s of room %s: %w", ev.ID, room.ID, err)
		}
	}
	return nil
}

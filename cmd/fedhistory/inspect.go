package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"slices"
)

// The client subcommands of the endpoints beyond the two walks: state-ids,
// state, event-auth, event and timestamp. Each prints a summary of the
// answer by default and the answer's bytes with --raw.

const inspectDescription = `

Sends a request signed with X-Matrix as --origin and prints a summary of the
answer, or with --raw the answer's bytes as received. An error answer prints
its errcode and error on stderr ("HTTP 404: M_NOT_FOUND: …") and exits with
status 1.`

// ask sends the request call makes with the flags' client, and returns the
// body of a 2xx answer to summarise, or the error answer as an error. With
// --raw it writes the body to stdout instead and returns done: there is
// nothing left to print. done is also true whenever err is set.
func (f *clientFlags) ask(stdout io.Writer, call func(*federationClient) (*response, error)) (body []byte, done bool, err error) {
	client, err := f.client()
	if err != nil {
		return nil, true, err
	}
	resp, err := call(client)
	if err != nil {
		return nil, true, err
	}
	if err := resp.asError(); err != nil {
		return nil, true, err
	}
	if f.raw {
		_, err := stdout.Write(resp.Body)
		return nil, true, err
	}
	return resp.Body, false, nil
}

// decodeAnswer decodes an answer's body into v, naming the endpoint when
// the body is not what it answers.
func decodeAnswer(endpoint string, body []byte, v any) error {
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("the answer is not a %s answer (use --raw to see it): %w", endpoint, err)
	}
	return nil
}

// registerClientFlags adds the shared options to fs (with --room unless
// roomless), saying what --raw replaces.
func registerClientFlags(fs *flag.FlagSet, flags *clientFlags, roomless bool) {
	if roomless {
		flags.registerRoomless(fs)
	} else {
		flags.register(fs)
	}
	fs.Lookup("raw").Usage = "print the answer's bytes as received instead of the summary"
}

// registerEvent adds the required --event option.
func registerEvent(fs *flag.FlagSet, what string) *string {
	return fs.String("event", "", "`EVENT` "+what+" (required)")
}

// registerRoomVersion adds the optional --room-version option of the
// subcommands that read PDUs.
func registerRoomVersion(fs *flag.FlagSet) *string {
	return fs.String("room-version", "", "`VERSION` the room's version, to compute event IDs and tell redacted PDUs from altered ones (default: the version the answer's m.room.create event names)")
}

func runStateIDs(ctx context.Context, out streams, args []string) error {
	fs := newFlagSet("state-ids")
	var flags clientFlags
	registerClientFlags(fs, &flags, false)
	event := registerEvent(fs, "the event whose state to ask for: the state just before it")
	if err := parseFlags(fs, args, out.stdout,
		"--server NAME|URL --origin NAME --signing-key FILE --room ID --event EVENT",
		"GET /_matrix/federation/v1/state_ids/{roomId}?event_id=…: the IDs of the room's state just before\n"+
			"the event, and of that state's auth chain. Prints how many of each, then the IDs, sorted."+inspectDescription); err != nil {
		return err
	}
	if err := requireFlags(fs, append(requiredClientFlags, "event")...); err != nil {
		return err
	}
	body, done, err := flags.ask(out.stdout, func(client *federationClient) (*response, error) {
		return client.StateIDs(ctx, flags.room, *event)
	})
	if done {
		return err
	}
	var answer struct {
		PDUIDs       []string `json:"pdu_ids"`
		AuthChainIDs []string `json:"auth_chain_ids"`
	}
	if err := decodeAnswer("/state_ids", body, &answer); err != nil {
		return err
	}
	w := out.stdout
	fmt.Fprintf(w, "State before %s in %s: %s, and %s in their auth chain.\n",
		*event, flags.room, plural(len(answer.PDUIDs), "state event"), plural(len(answer.AuthChainIDs), "event"))
	for _, list := range []struct {
		title string
		ids   []string
	}{{"State (pdu_ids)", answer.PDUIDs}, {"Auth chain (auth_chain_ids)", answer.AuthChainIDs}} {
		fmt.Fprintf(w, "\n%s:\n", list.title)
		for _, id := range slices.Sorted(slices.Values(list.ids)) {
			fmt.Fprintf(w, "  %s\n", printable(id))
		}
	}
	return nil
}

func runState(ctx context.Context, out streams, args []string) error {
	fs := newFlagSet("state")
	var flags clientFlags
	registerClientFlags(fs, &flags, false)
	event := registerEvent(fs, "the event whose state to ask for: the state just before it")
	version := registerRoomVersion(fs)
	if err := parseFlags(fs, args, out.stdout,
		"--server NAME|URL --origin NAME --signing-key FILE --room ID --event EVENT [--room-version VERSION]",
		"GET /_matrix/federation/v1/state/{roomId}?event_id=…: the room's state just before the event, and\n"+
			"that state's auth chain, as PDUs. Prints one line per PDU: the state by type and state key, the\n"+
			"auth chain by depth."+formHelp+inspectDescription); err != nil {
		return err
	}
	if err := requireFlags(fs, append(requiredClientFlags, "event")...); err != nil {
		return err
	}
	if err := checkRoomVersionFlag(*version); err != nil {
		return err
	}
	body, done, err := flags.ask(out.stdout, func(client *federationClient) (*response, error) {
		return client.State(ctx, flags.room, *event)
	})
	if done {
		return err
	}
	var answer struct {
		PDUs      []json.RawMessage `json:"pdus"`
		AuthChain []json.RawMessage `json:"auth_chain"`
	}
	if err := decodeAnswer("/state", body, &answer); err != nil {
		return err
	}
	roomVersion, source := answerVersion(*version, slices.Concat(answer.PDUs, answer.AuthChain))
	state, chain := inspectPDUs(roomVersion, answer.PDUs), inspectPDUs(roomVersion, answer.AuthChain)
	sortByTypeAndStateKey(state)
	sortByDepth(chain)

	w := out.stdout
	fmt.Fprintf(w, "State before %s in %s: %s (%s), and %s in their auth chain (%s).\n",
		*event, flags.room, plural(len(state), "state event"), formCounts(state), plural(len(chain), "event"), formCounts(chain))
	printRoomVersion(w, roomVersion, source)
	fmt.Fprintf(w, "\nState:\n")
	printPDUTable(w, state)
	fmt.Fprintf(w, "\nAuth chain:\n")
	printPDUTable(w, chain)
	return nil
}

func runEventAuth(ctx context.Context, out streams, args []string) error {
	fs := newFlagSet("event-auth")
	var flags clientFlags
	registerClientFlags(fs, &flags, false)
	event := registerEvent(fs, "the event whose auth chain to ask for")
	version := registerRoomVersion(fs)
	if err := parseFlags(fs, args, out.stdout,
		"--server NAME|URL --origin NAME --signing-key FILE --room ID --event EVENT [--room-version VERSION]",
		"GET /_matrix/federation/v1/event_auth/{roomId}/{eventId}: the auth chain of the event, as PDUs,\n"+
			"without the event itself. Prints one line per PDU, by depth."+formHelp+inspectDescription); err != nil {
		return err
	}
	if err := requireFlags(fs, append(requiredClientFlags, "event")...); err != nil {
		return err
	}
	if err := checkRoomVersionFlag(*version); err != nil {
		return err
	}
	body, done, err := flags.ask(out.stdout, func(client *federationClient) (*response, error) {
		return client.EventAuth(ctx, flags.room, *event)
	})
	if done {
		return err
	}
	var answer struct {
		AuthChain []json.RawMessage `json:"auth_chain"`
	}
	if err := decodeAnswer("/event_auth", body, &answer); err != nil {
		return err
	}
	roomVersion, source := answerVersion(*version, answer.AuthChain)
	chain := inspectPDUs(roomVersion, answer.AuthChain)
	sortByDepth(chain)

	w := out.stdout
	fmt.Fprintf(w, "Auth chain of %s in %s: %s (%s).\n", *event, flags.room, plural(len(chain), "event"), formCounts(chain))
	printRoomVersion(w, roomVersion, source)
	fmt.Fprintln(w)
	printPDUTable(w, chain)
	return nil
}

func runEvent(ctx context.Context, out streams, args []string) error {
	fs := newFlagSet("event")
	var flags clientFlags
	registerClientFlags(fs, &flags, true)
	event := registerEvent(fs, "the event to ask for")
	version := registerRoomVersion(fs)
	if err := parseFlags(fs, args, out.stdout,
		"--server NAME|URL --origin NAME --signing-key FILE --event EVENT [--room-version VERSION]",
		"GET /_matrix/federation/v1/event/{eventId}: one event, as a transaction. Prints the event's fields,\n"+
			"its form, and the PDU as indented JSON. The answer names no room version: give --room-version to\n"+
			"check the event's ID (room versions 3 and later compute it from the PDU) and to tell a redacted\n"+
			"PDU from an altered one; an m.room.create event names its own."+formHelp+inspectDescription); err != nil {
		return err
	}
	if err := requireFlags(fs, append(requiredRoomlessFlags, "event")...); err != nil {
		return err
	}
	if err := checkRoomVersionFlag(*version); err != nil {
		return err
	}
	body, done, err := flags.ask(out.stdout, func(client *federationClient) (*response, error) {
		return client.Event(ctx, *event)
	})
	if done {
		return err
	}
	var txn struct {
		Origin string            `json:"origin"`
		PDUs   []json.RawMessage `json:"pdus"`
	}
	if err := decodeAnswer("/event", body, &txn); err != nil {
		return err
	}
	if len(txn.PDUs) != 1 {
		return fmt.Errorf("the answer is a transaction of %d PDUs, want one (use --raw to see it)", len(txn.PDUs))
	}
	roomVersion, source := answerVersion(*version, txn.PDUs)
	info := inspectPDU(roomVersion, txn.PDUs[0])
	printEvent(out.stdout, *event, txn.Origin, roomVersion, source, info)
	var pretty bytes.Buffer
	if err := json.Indent(&pretty, txn.PDUs[0], "", "  "); err != nil {
		return fmt.Errorf("the PDU is not JSON (use --raw to see it): %w", err)
	}
	fmt.Fprintf(out.stdout, "\n%s\n", pretty.String())
	return nil
}

// printEvent prints the fields of the PDU that /event answered for asked.
func printEvent(w io.Writer, asked, origin, roomVersion, source string, info pduInfo) {
	fmt.Fprintf(w, "Event %s, from %s:\n", asked, orUnknown(origin))
	field := func(name, value string) { fmt.Fprintf(w, "  %-17s %s\n", name, value) }
	switch {
	case info.ID == "":
		field("event_id", "not computed (the room version is unknown)")
	case info.ID != asked:
		field("event_id", printable(info.ID)+" ! not the event asked for")
	default:
		field("event_id", printable(info.ID)+" (computed from the PDU)")
	}
	field("room_id", orUnknown(info.RoomID))
	field("type", orUnknown(info.Type))
	if info.StateKey != nil {
		field("state_key", stateKeyCell(info.StateKey))
	}
	field("sender", orUnknown(info.Sender))
	field("depth", fmt.Sprint(info.Depth))
	field("origin_server_ts", fmt.Sprintf("%d (%s)", info.OriginServerTS, formatTimestamp(info.OriginServerTS)))
	field("form", string(info.Form))
	field("content", contentCell(info))
	if roomVersion == "" {
		field("room version", source)
	} else {
		field("room version", roomVersion+" ("+source+")")
	}
	for _, problem := range info.Problems {
		field("!", problem)
	}
}

func runTimestamp(ctx context.Context, out streams, args []string) error {
	fs := newFlagSet("timestamp")
	var flags clientFlags
	registerClientFlags(fs, &flags, false)
	tsFlag := fs.String("ts", "", "`MS|RFC3339` the time to look from: milliseconds since 1970-01-01T00:00:00Z, or an RFC 3339 time with its offset such as 2025-01-01T12:00:00Z or 2025-01-01T13:00:00.5+01:00 (required)")
	dir := fs.String("dir", "", "`f|b` the direction to look in: f, the first event at or after the time; b, the last at or before it (required)")
	if err := parseFlags(fs, args, out.stdout,
		"--server NAME|URL --origin NAME --signing-key FILE --room ID --ts MS|RFC3339 --dir f|b",
		"GET /_matrix/federation/v1/timestamp_to_event/{roomId}?ts=…&dir=…: the room's event nearest the\n"+
			"time in the direction given (\"jump to date\"). Prints its ID and its origin_server_ts, in\n"+
			"milliseconds and as an RFC 3339 time in UTC. An RFC 3339 --ts is sent in milliseconds, fractions\n"+
			"of a millisecond dropped."+inspectDescription); err != nil {
		return err
	}
	if err := requireFlags(fs, append(requiredClientFlags, "ts", "dir")...); err != nil {
		return err
	}
	ts, err := parseTimestamp(*tsFlag)
	if err != nil {
		return usageErrorf("--ts %v", err)
	}
	if *dir != "f" && *dir != "b" {
		return usageErrorf(`--dir %q: want f (forwards) or b (backwards)`, *dir)
	}
	body, done, err := flags.ask(out.stdout, func(client *federationClient) (*response, error) {
		return client.TimestampToEvent(ctx, flags.room, ts, *dir)
	})
	if done {
		return err
	}
	var answer timestampAnswer
	if err := decodeAnswer("/timestamp_to_event", body, &answer); err != nil {
		return err
	}
	fmt.Fprintf(out.stdout, "event_id          %s\n", orUnknown(answer.EventID))
	fmt.Fprintf(out.stdout, "origin_server_ts  %d (%s, %s %s)\n", answer.OriginServerTS,
		formatTimestamp(answer.OriginServerTS), describeOffset(answer.OriginServerTS, ts), formatTimestamp(ts))
	return nil
}

// timestampAnswer is the answer of /timestamp_to_event.
type timestampAnswer struct {
	EventID        string `json:"event_id"`
	OriginServerTS int64  `json:"origin_server_ts"`
}

// printRoomVersion says which room version the PDUs were read with.
func printRoomVersion(w io.Writer, version, source string) {
	if version == "" {
		fmt.Fprintf(w, "Room version %s.\n", source)
		return
	}
	fmt.Fprintf(w, "Room version %s, %s.\n", version, source)
}

// plural says "1 event", "2 events".
func plural(n int, noun string) string {
	if n == 1 {
		return fmt.Sprintf("1 %s", noun)
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

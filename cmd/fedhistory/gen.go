package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/fedhistory/fedhistory/internal/roomdump"
	"github.com/fedhistory/fedhistory/internal/roomgen"
)

func runGen(ctx context.Context, out streams, args []string) error {
	fs := newFlagSet("gen")
	events := fs.Int("events", 0, "`N` how many events to write, the room's setup included (required)")
	outPath := fs.String("out", "", "`FILE` where to write the dump (required)")
	version := fs.String("room-version", roomgen.DefaultVersion, "`VERSION` the room version")
	forkEvery := fs.Int("fork-every", 0, "`K` how many messages between two forks of the DAG (0: a linear room)")
	seed := fs.Int64("seed", 0, "`N` the random seed that makes the room; the same options give the same bytes")
	serverName := fs.String("server-name", roomgen.DefaultServerName, "`NAME` the room creator's server")
	keyFile := fs.String("signing-key", "", "`FILE` the key to sign the creator's events with, created if it does not exist (default: a key derived from --seed)")
	var others stringList
	fs.Var(&others, "other-server", "`NAME` a server with one joined user, @bob (repeatable; default: hs2.example)")
	historyChanges := fs.Bool("history-visibility-changes", false, "change the history visibility (shared → joined → invited → shared) along the way")
	acl := fs.Bool("server-acl", false, "add a server ACL denying evil.example")
	if err := parseFlags(fs, args, out.stdout, "--events N --out FILE [--room-version VERSION] [--fork-every K] [--seed N] [--server-name NAME] [--signing-key FILE] [--other-server NAME]…", `
Writes a signed synthetic room (a public room with one user per --other-server,
then messages) as a room dump, one JSON line per event, for serve --room. Prints
the IDs of the room, its create event and its newest event on stdout, as
room_id=…, create_event=… and latest_event=… lines.`); err != nil {
		return err
	}
	if err := requireFlags(fs, "events", "out"); err != nil {
		return err
	}
	switch {
	case *events <= 0:
		return usageErrorf("--events must be positive")
	case *forkEvery < 0:
		return usageErrorf("--fork-every may not be negative")
	case !gomatrixserverlib.StableRoomVersion(gomatrixserverlib.RoomVersion(*version)):
		return usageErrorf("--room-version %q is not a stable room version", *version)
	}
	opts := roomgen.Options{
		Version:                  *version,
		Events:                   *events,
		ForkEvery:                *forkEvery,
		Seed:                     *seed,
		ServerName:               *serverName,
		OtherServers:             others,
		HistoryVisibilityChanges: *historyChanges,
		ServerACL:                *acl,
	}
	if *keyFile != "" {
		key, err := loadOrCreateKey(*keyFile, out.stderr)
		if err != nil {
			return err
		}
		opts.Key, opts.KeyID = key.Private, key.ID
	}
	progress := newProgress(out.stderr, "fedhistory gen", progressDelay)
	opts.Progress = func(done, total int) {
		if ctx.Err() == nil {
			progress.update(done, total)
		}
	}
	room, err := roomgen.Generate(opts)
	progress.done()
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := writeDump(*outPath, room); err != nil {
		return err
	}
	fmt.Fprintf(out.stderr, "fedhistory gen: wrote room %s (version %s, %d events) to %s\n", room.ID, room.Version, len(room.Events), *outPath)
	// What a backfill needs next: the room, and where its history starts
	// and ends.
	generatedLandmarks(room).print(out.stdout)
	return nil
}

// writeDump writes room to path through a temporary file in the same
// directory, so that a failure never leaves a half-written dump behind. The
// dump is readable by all (mode 0644): it holds only signed public events,
// unlike a key file.
func writeDump(path string, room *roomgen.Room) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("writing the dump: %w", err)
	}
	defer os.Remove(tmp.Name()) // fails harmlessly once renamed
	// CreateTemp makes the file 0600.
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return fmt.Errorf("writing the dump: %w", err)
	}
	if err := roomdump.WriteRoom(tmp, room); err != nil {
		tmp.Close()
		return fmt.Errorf("writing the dump: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing the dump: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("writing the dump: %w", err)
	}
	return nil
}

package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"time"

	"github.com/fedhistory/fedhistory/internal/roomdump"
	"github.com/fedhistory/fedhistory/sqlstore"
)

// importGCPercent is the import's GOGC when the environment sets none.
const importGCPercent = 300

func runImport(ctx context.Context, out streams, args []string) error {
	fs := newFlagSet("import")
	dsn := fs.String("db", "", "`DSN` the database, sqlite:FILE or postgres://…, created or migrated as needed (required)")
	var rooms stringList
	fs.Var(&rooms, "room", "`FILE` a room dump to import (repeatable; at least one)")
	if err := parseFlags(fs, args, out.stdout, "--db DSN --room FILE [--room FILE…]", `
Imports room dumps into a SQL database for serve --db, in one transaction: the
lines are validated as they are added, and a bad line anywhere, or a failed add
(an event already in the database, say), imports nothing. The database is
created or migrated first.`); err != nil {
		return err
	}
	if err := requireFlags(fs, "db", "room"); err != nil {
		return err
	}

	// An import allocates far more than it keeps (each line is decoded
	// several times over), and on SQLite the collector's work competes
	// with the database, which runs in this process: 10^6 events went in
	// 94-97 s with GOGC=100, 79 s with 200, 74 s with 300 (2.2 GB instead
	// of 1.8 GB of memory); on PostgreSQL 82-85 s either way, with 1.1 GB
	// instead of 640 MB (BENCHMARKS.md, round seven). So the collector
	// runs a third as often, unless the operator set GOGC.
	if _, set := os.LookupEnv("GOGC"); !set {
		defer debug.SetGCPercent(debug.SetGCPercent(importGCPercent))
	}

	start := time.Now()
	// Every dump is opened before the database, so that a mistyped path
	// creates no database. Cancelling ctx closes them: a dump read from a
	// pipe then stops blocking AddSeq, which waits for its sequence.
	var files []*os.File
	closeFiles := func() {
		for _, f := range files {
			f.Close()
		}
	}
	defer closeFiles()
	for _, path := range rooms {
		f, err := os.Open(path)
		if err != nil {
			return fmt.Errorf("reading room dump: %w", err)
		}
		files = append(files, f)
	}
	defer context.AfterFunc(ctx, closeFiles)()
	store, err := sqlstore.Open(ctx, *dsn, sqlstore.Options{Migrate: true})
	if err != nil {
		return fmt.Errorf("opening --db: %w", err)
	}
	defer store.Close()

	// The dumps are read, checked and written at once, a few thousand
	// events at a time, in one transaction: the memory holds what the
	// checks need of each event (~100 bytes), not the events, and the
	// database writes while the reader checks the lines after. A bad line
	// rolls it all back. On a terminal, a live line counts the lines read
	// (which needs their number first); elsewhere the last line says how
	// long it all took.
	importing := newProgress(out.stderr, "fedhistory import", progressDelay)
	var lines int
	if importing.tty {
		if lines, err = countLines(rooms); err != nil {
			return err
		}
		importing.update(0, lines)
	}
	var (
		erased  []string
		roomIDs = make(map[string]bool)
		events  int
		read    int
	)
	countRead := func(n int) {
		if importing.tty {
			read += n
			importing.update(read, lines)
		}
	}
	err = store.AddSeq(ctx, func(yield func(sqlstore.Pending, error) bool) {
		for i, f := range files {
			for rec, err := range roomdump.Records(lineCounter{f, countRead}) {
				switch {
				case err != nil:
					yield(sqlstore.Pending{}, fmt.Errorf("reading room dump %s: %w", rooms[i], err))
					return
				case rec.ErasedUser != "":
					erased = append(erased, rec.ErasedUser)
					continue
				}
				roomIDs[rec.RoomID] = true
				events++
				pending := sqlstore.Pending{
					RoomVersion: rec.RoomVersion,
					PDU:         rec.Event,
					Options:     rec.Options(),
					// The reader hashed the event for its ID already.
					EventID: rec.EventID,
				}
				if !yield(pending, nil) {
					return
				}
			}
		}
	})
	if importing.tty {
		importing.done()
	}
	if err != nil {
		return fmt.Errorf("importing (nothing was imported): %w", err)
	}
	for _, user := range erased {
		if err := store.EraseUser(ctx, user); err != nil {
			return fmt.Errorf("marking %s erased: %w", user, err)
		}
	}
	if err := store.Close(); err != nil {
		return err
	}
	elapsed := time.Since(start)
	fmt.Fprintf(out.stderr, "fedhistory import: imported %d events of %d rooms and %d erased users in %s (%.0f events/s)\n",
		events, len(roomIDs), len(erased), roundDuration(elapsed), float64(events)/elapsed.Seconds())
	return nil
}

// lineCounter is a reader that reports the lines read through it.
type lineCounter struct {
	r     io.Reader
	lines func(int)
}

func (c lineCounter) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if lines := bytes.Count(p[:n], []byte{'\n'}); lines > 0 {
		c.lines(lines)
	}
	return n, err
}

// countLines counts the lines of the files, the events they hold (and
// erasures) for the progress line.
func countLines(paths []string) (int, error) {
	var total int
	buf := make([]byte, 256<<10)
	for _, path := range paths {
		f, err := os.Open(path)
		if err != nil {
			return 0, fmt.Errorf("reading room dump: %w", err)
		}
		for {
			n, err := f.Read(buf)
			total += bytes.Count(buf[:n], []byte{'\n'})
			if err == io.EOF {
				break
			}
			if err != nil {
				f.Close()
				return 0, fmt.Errorf("reading room dump %s: %w", path, err)
			}
		}
		f.Close()
	}
	return total, nil
}

package main

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/fedhistory/fedhistory/dag"
)

// errTimestamp is why a --ts value was refused.
var errTimestamp = errors.New("want milliseconds since 1970-01-01T00:00:00Z, such as 1735689600000, or an RFC 3339 time, such as 2025-01-01T00:00:00Z")

// parseTimestamp reads a --ts value: either a count of milliseconds since
// the Unix epoch (decimal digits only), or an RFC 3339 time with its offset
// ("2025-01-01T00:00:00Z", "2025-01-01T01:30:00.250+01:30"; T and Z in
// either case, as RFC 3339 allows), of which fractions of a millisecond are
// dropped. The result is what /timestamp_to_event takes: from 0 to the
// largest integer canonical JSON carries, 2^53-1.
func parseTimestamp(s string) (int64, error) {
	if onlyDigits(s) {
		ms, err := strconv.ParseInt(s, 10, 64)
		if err != nil || ms > dag.MaxCanonicalInt {
			return 0, fmt.Errorf("%q: too large: at most %d milliseconds", s, int64(dag.MaxCanonicalInt))
		}
		return ms, nil
	}
	// RFC 3339 (section 5.6) allows "t" and "z"; time.Parse takes only the
	// capitals. No other character of a valid time is a letter.
	t, err := time.Parse(time.RFC3339, strings.NewReplacer("t", "T", "z", "Z").Replace(s))
	if err != nil {
		return 0, fmt.Errorf("%q: %w", s, errTimestamp)
	}
	if t.Before(time.Unix(0, 0)) {
		return 0, fmt.Errorf("%q: before 1970-01-01T00:00:00Z", s)
	}
	return t.UnixMilli(), nil
}

// onlyDigits reports whether s is one or more decimal digits.
func onlyDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

// formatTimestamp shows milliseconds since the Unix epoch as an RFC 3339
// time in UTC, to the millisecond when there is a fraction.
func formatTimestamp(ms int64) string {
	return time.UnixMilli(ms).UTC().Format("2006-01-02T15:04:05.999Z07:00")
}

// describeOffset says how far ms lies from asked, in words: "exactly at",
// "1m30s after", "2h0m0s before", "3 days after" (whole days from a day
// on).
func describeOffset(ms, asked int64) string {
	diff := ms - asked
	word := "after"
	if diff < 0 {
		diff, word = -diff, "before"
	}
	const day = 24 * 60 * 60 * 1000
	switch {
	case diff == 0:
		return "exactly at"
	case diff >= 2*day:
		return fmt.Sprintf("%d days %s", diff/day, word)
	case diff >= day:
		return "1 day " + word
	}
	return (time.Duration(diff) * time.Millisecond).String() + " " + word
}

package main

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory/dag"
)

func TestParseTimestamp(t *testing.T) {
	tests := []struct {
		in      string
		want    int64
		wantErr string
	}{
		{"0", 0, ""},
		{"1735689600000", 1735689600000, ""},
		{"0001735689600000", 1735689600000, ""},
		{"9007199254740991", dag.MaxCanonicalInt, ""},
		{"9007199254740992", 0, "too large"},
		{"99999999999999999999", 0, "too large"},
		{"2025-01-01T00:00:00Z", 1735689600000, ""},
		{"2025-01-01T00:00:00.25Z", 1735689600250, ""},
		{"2025-01-01t00:00:00.250z", 1735689600250, ""},
		{"2025-01-01T01:30:00+01:30", 1735689600000, ""},
		{"2024-12-31T20:00:00-04:00", 1735689600000, ""},
		{"2025-01-01T00:00:00.0009Z", 1735689600000, ""},
		{"1970-01-01T00:00:00Z", 0, ""},
		{"1969-12-31T23:59:59.999Z", 0, "before 1970"},
		{"9999-12-31T23:59:59.999Z", 253402300799999, ""},
		{"", 0, "want milliseconds"},
		{"-1", 0, "want milliseconds"},
		{"+5", 0, "want milliseconds"},
		{" 5", 0, "want milliseconds"},
		{"1e3", 0, "want milliseconds"},
		{"0x10", 0, "want milliseconds"},
		{"2025-01-01", 0, "want milliseconds"},
		{"2025-01-01T00:00:00", 0, "want milliseconds"},
		{"2025-01-01 00:00:00Z", 0, "want milliseconds"},
		{"2025-02-30T00:00:00Z", 0, "want milliseconds"},
		{"yesterday", 0, "want milliseconds"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := parseTimestamp(tt.in)
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				require.ErrorContains(t, err, strconv.Quote(tt.in), "the error names the value")
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}
}

func TestFormatTimestampAndOffset(t *testing.T) {
	require.Equal(t, "2025-01-01T00:00:00Z", formatTimestamp(1735689600000))
	require.Equal(t, "2025-01-01T00:00:00.25Z", formatTimestamp(1735689600250))
	require.Equal(t, "exactly at", describeOffset(5, 5))
	require.Equal(t, "1.5s after", describeOffset(1500, 0))
	require.Equal(t, "2m0s before", describeOffset(0, 120000))
	require.Equal(t, "1 day after", describeOffset(86400000, 0))
	require.Equal(t, "3 days before", describeOffset(0, 3*86400000+5))
	require.Equal(t, "104249991 days after", describeOffset(dag.MaxCanonicalInt, 0))
}

// asciiUpper upper-cases the ASCII letters of s alone.
func asciiUpper(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'a' <= c && c <= 'z' {
			b[i] = c - 'a' + 'A'
		}
	}
	return string(b)
}

// FuzzParseTimestamp checks what parseTimestamp promises, for any input:
// no panic; a result /timestamp_to_event takes; the same answer whatever
// the case of the letters (RFC 3339 allows t and z); and a result that
// reads back the same, written as milliseconds and as an RFC 3339 time.
func FuzzParseTimestamp(f *testing.F) {
	for _, seed := range []string{
		"0", "1735689600000", "9007199254740991", "9007199254740992", "-1", "",
		"2025-01-01T00:00:00Z", "2025-01-01t00:00:00.250z", "2025-01-01T01:30:00+01:30",
		"1969-12-31T23:59:59.999Z", "9999-12-31T23:59:59.999999999Z", "2025-02-30T00:00:00Z",
		"2025-01-01T00:00:00,5Z", "2025-01-01T24:00:00Z", "2025-01-01T00:00:60Z", "2025-01-01T00:00:00+24:00",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ms, err := parseTimestamp(s)
		upper, upperErr := parseTimestamp(asciiUpper(s))
		require.Equal(t, err == nil, upperErr == nil, "%q and %q", s, asciiUpper(s))
		if err != nil {
			require.Contains(t, err.Error(), strconv.Quote(s), "the error names the value")
			return
		}
		require.Equal(t, ms, upper)
		require.GreaterOrEqual(t, ms, int64(0))
		require.LessOrEqual(t, ms, int64(dag.MaxCanonicalInt))

		again, err := parseTimestamp(strconv.FormatInt(ms, 10))
		require.NoError(t, err)
		require.Equal(t, ms, again)
		if onlyDigits(s) {
			return // may lie beyond year 9999, which RFC 3339 cannot write
		}
		formatted := formatTimestamp(ms)
		again, err = parseTimestamp(formatted)
		require.NoError(t, err, formatted)
		require.Equal(t, ms, again, formatted)
		require.True(t, strings.HasSuffix(formatted, "Z"))
		// The time read is the time written, to the millisecond.
		parsed, err := time.Parse(time.RFC3339, asciiUpper(s))
		require.NoError(t, err)
		require.Equal(t, parsed.UnixMilli(), ms)
	})
}

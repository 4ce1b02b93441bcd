package sign

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// cannedWellKnown is a transport answering every .well-known request with
// its current status, headers and body (status 0: a connection failure),
// counting the requests.
type cannedWellKnown struct {
	status int
	header http.Header
	body   string
	asked  atomic.Int32
}

func (c *cannedWellKnown) RoundTrip(r *http.Request) (*http.Response, error) {
	c.asked.Add(1)
	if c.status == 0 {
		return nil, errors.New("connection refused")
	}
	header := c.header
	if header == nil {
		header = http.Header{}
	}
	return &http.Response{StatusCode: c.status, Header: header, Body: io.NopCloser(strings.NewReader(c.body)), Request: r}, nil
}

func TestWellKnownCache(t *testing.T) {
	const host = "hs.example.com"
	// answer is what the host answers from a step on (status 0: no
	// connection).
	type answer struct {
		status int
		header http.Header
		body   string
	}
	type step struct {
		advance   time.Duration
		answer    *answer // nil: as before
		want      string  // the delegated server; "" for none
		wantAsked int32   // requests made so far
	}
	delegation := `{"m.server":"keys.example.com:8448"}`
	tests := []struct {
		name  string
		steps []step
	}{
		{"a valid answer is kept 24 hours without Cache-Control", []step{
			{answer: &answer{status: 200, body: delegation}, want: "keys.example.com:8448", wantAsked: 1},
			{advance: 24*time.Hour - time.Second, want: "keys.example.com:8448", wantAsked: 1},
			{advance: time.Second, want: "keys.example.com:8448", wantAsked: 2},
		}},
		{"max-age is honoured", []step{
			{answer: &answer{status: 200, header: http.Header{"Cache-Control": {"public, max-age=600"}}, body: delegation}, want: "keys.example.com:8448", wantAsked: 1},
			{advance: 599 * time.Second, want: "keys.example.com:8448", wantAsked: 1},
			{advance: time.Second, want: "keys.example.com:8448", wantAsked: 2},
		}},
		{"no-store is still kept for the minimum", []step{
			{answer: &answer{status: 200, header: http.Header{"Cache-Control": {"no-store"}}, body: delegation}, want: "keys.example.com:8448", wantAsked: 1},
			{advance: wellKnownMinTTL - time.Second, want: "keys.example.com:8448", wantAsked: 1},
			{advance: time.Second, want: "keys.example.com:8448", wantAsked: 2},
		}},
		{"no .well-known is remembered for an hour", []step{
			{answer: &answer{status: 404}, want: "", wantAsked: 1},
			{advance: time.Hour - time.Second, want: "", wantAsked: 1},
			{advance: time.Second, answer: &answer{status: 200, body: delegation}, want: "keys.example.com:8448", wantAsked: 2},
		}},
		{"an invalid answer is remembered for an hour", []step{
			{answer: &answer{status: 200, body: `{"m.server":""}`}, want: "", wantAsked: 1},
			{advance: time.Hour - time.Second, want: "", wantAsked: 1},
		}},
		{"a host that cannot be reached is remembered for an hour", []step{
			{answer: &answer{status: 0}, want: "", wantAsked: 1},
			{advance: time.Hour - time.Second, want: "", wantAsked: 1},
			{advance: time.Second, want: "", wantAsked: 2},
		}},
		{"after a valid answer, a temporary failure keeps the delegation and retries soon", []step{
			{answer: &answer{status: 200, body: delegation}, want: "keys.example.com:8448", wantAsked: 1},
			{advance: 24 * time.Hour, answer: &answer{status: 0}, want: "keys.example.com:8448", wantAsked: 2},
			{advance: wellKnownDownTTL - time.Second, want: "keys.example.com:8448", wantAsked: 2},
			{advance: time.Second, answer: &answer{status: 503}, want: "keys.example.com:8448", wantAsked: 3},
			{advance: wellKnownDownTTL, answer: &answer{status: 200, body: `{"m.server":"new.example.com"}`}, want: "new.example.com", wantAsked: 4},
		}},
		{"after a valid answer, a lasting failure ends the delegation, retried soon", []step{
			{answer: &answer{status: 200, body: delegation}, want: "keys.example.com:8448", wantAsked: 1},
			{advance: 24 * time.Hour, answer: &answer{status: 404}, want: "", wantAsked: 2},
			{advance: wellKnownDownTTL - time.Second, want: "", wantAsked: 2},
			{advance: time.Second, want: "", wantAsked: 3},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := newFakeClock()
			canned := &cannedWellKnown{}
			w := newWellKnownCache(canned, 10, clock.Now)
			for i, s := range tt.steps {
				clock.Advance(s.advance)
				if s.answer != nil {
					canned.status, canned.header, canned.body = s.answer.status, s.answer.header, s.answer.body
				}
				delegated, ok := w.lookup(t.Context(), host)
				got := ""
				if ok {
					got = delegated.String()
				}
				require.Equal(t, s.want, got, "step %d", i)
				require.Equal(t, s.wantAsked, canned.asked.Load(), "requests after step %d", i)
			}
		})
	}
}

func TestWellKnownLookupCancelledIsNotRemembered(t *testing.T) {
	clock := newFakeClock()
	canned := &cannedWellKnown{status: 200, body: `{"m.server":"keys.example.com"}`}
	w := newWellKnownCache(canned, 10, clock.Now)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, ok := w.lookup(ctx, "hs.example.com")
	require.False(t, ok)
	delegated, ok := w.lookup(t.Context(), "hs.example.com")
	require.True(t, ok, "our own cancellation is not the host's failure")
	require.Equal(t, "keys.example.com", delegated.String())
}

func TestWellKnownTTL(t *testing.T) {
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name   string
		header http.Header
		want   time.Duration
	}{
		{"no headers: the default", http.Header{}, wellKnownDefaultTTL},
		{"max-age", http.Header{"Cache-Control": {"max-age=3600"}}, time.Hour},
		{"max-age among directives, any case", http.Header{"Cache-Control": {"public", "Max-Age = 7200 , must-revalidate"}}, 2 * time.Hour},
		{"max-age below the minimum", http.Header{"Cache-Control": {"max-age=10"}}, wellKnownMinTTL},
		{"max-age above the maximum", http.Header{"Cache-Control": {"max-age=999999999"}}, wellKnownMaxTTL},
		{"max-age overflowing", http.Header{"Cache-Control": {"max-age=99999999999999999999999"}}, wellKnownMaxTTL},
		{"max-age negative", http.Header{"Cache-Control": {"max-age=-5"}}, wellKnownMinTTL},
		{"max-age not a number: Expires", http.Header{"Cache-Control": {`max-age="60"`}, "Expires": {now.Add(3 * time.Hour).Format(http.TimeFormat)}}, 3 * time.Hour},
		{"no-store wins over max-age", http.Header{"Cache-Control": {"max-age=7200, no-store"}}, wellKnownMinTTL},
		{"Expires", http.Header{"Expires": {now.Add(10 * time.Hour).Format(http.TimeFormat)}}, 10 * time.Hour},
		{"Expires in the past", http.Header{"Expires": {now.Add(-time.Hour).Format(http.TimeFormat)}}, wellKnownMinTTL},
		{"Expires invalid: already expired", http.Header{"Expires": {"0"}}, wellKnownMinTTL},
		{"max-age wins over Expires", http.Header{"Cache-Control": {"max-age=3600"}, "Expires": {now.Add(10 * time.Hour).Format(http.TimeFormat)}}, time.Hour},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.Equal(t, tt.want, wellKnownTTL(tt.header, now))
		})
	}
}

func TestParseWellKnown(t *testing.T) {
	tests := []struct {
		body    string
		want    string
		wantErr string
	}{
		{`{"m.server":"matrix.example.org:443"}`, "matrix.example.org:443", ""},
		{`{"m.server":"matrix.example.org","other":[1,2]}`, "matrix.example.org", ""},
		{` {"m.server" : "[2001:db8::1]:8448"} `, "[2001:db8::1]:8448", ""},
		{`{"m.server":"a.example.org","m.server":"b.example.org"}`, "b.example.org", ""},
		{`{"M.SERVER":"a.example.org"}`, "", `no "m.server"`},
		{`{}`, "", `no "m.server"`},
		{`["m.server"]`, "", "not a JSON object"},
		{`{"m.server":`, "", "not a JSON object"},
		{`{"m.server":42}`, "", "is not a string"},
		{`{"m.server":null}`, "", "not a valid server name"},
		{`{"m.server":"a.example.org:0"}`, "", "not a valid server name"},
		{`{"m.server":"https://a.example.org"}`, "", "not a valid server name"},
		{"{\"m.server\":\"a.example.org\xff\"}", "", "not a valid server name"},
	}
	for _, tt := range tests {
		t.Run(tt.body, func(t *testing.T) {
			got, err := parseWellKnown([]byte(tt.body))
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, got.String())
		})
	}
}

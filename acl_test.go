package fedhistory

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/require"
)

func TestServerACLAllows(t *testing.T) {
	const allowAll = `"allow": ["*"]`
	tests := []struct {
		name    string
		content string // "" means no m.room.server_acl in the room state
		origin  string
		allowed bool
	}{
		// 1. No ACL in the room state: allow.
		{"no ACL allows anybody", "", "anybody.example", true},
		{"no ACL allows even a malformed name", "", "[::1", true},

		// 4. and 5. allow list; no allow list admits nobody.
		{"allow * admits a server", `{` + allowAll + `}`, "good.example", true},
		{"missing allow denies everybody", `{"deny": []}`, "good.example", false},
		{"empty allow denies everybody", `{"allow": []}`, "good.example", false},
		{"empty content denies everybody", `{}`, "good.example", false},
		{"allow glob admits a subdomain", `{"allow": ["*.example.org"]}`, "matrix.example.org", true},
		{"allow glob needs the whole name", `{"allow": ["*.example.org"]}`, "example.org", false},
		{"allow glob does not match a longer name", `{"allow": ["*.example.org"]}`, "matrix.example.org.evil", false},
		{"allow exact name", `{"allow": ["good.example"]}`, "good.example", true},
		{"allow exact name is not a prefix match", `{"allow": ["good.example"]}`, "good.example.evil", false},
		{"server not on the allow list is denied", `{"allow": ["good.example"]}`, "other.example", false},

		// 3. deny list, before allow.
		{"deny exact name", `{` + allowAll + `, "deny": ["evil.example"]}`, "evil.example", false},
		{"deny leaves other servers alone", `{` + allowAll + `, "deny": ["evil.example"]}`, "good.example", true},
		{"deny beats allow of the same name", `{"allow": ["evil.example"], "deny": ["evil.example"]}`, "evil.example", false},
		{"deny glob with *", `{` + allowAll + `, "deny": ["*.evil.example"]}`, "a.b.evil.example", false},
		{"deny glob * matches nothing too", `{` + allowAll + `, "deny": ["evil*.example"]}`, "evil.example", false},
		{"deny glob ? matches exactly one character", `{` + allowAll + `, "deny": ["evil?.example"]}`, "evil1.example", false},
		{"deny glob ? does not match zero characters", `{` + allowAll + `, "deny": ["evil?.example"]}`, "evil.example", true},
		{"deny glob ? does not match two characters", `{` + allowAll + `, "deny": ["evil?.example"]}`, "evil12.example", true},
		{"deny glob ? matches one non-ASCII character", `{` + allowAll + `, "deny": ["ev?l.example"]}`, "evél.example", false},
		{"deny * alone denies everybody", `{` + allowAll + `, "deny": ["*"]}`, "good.example", false},
		{"deny: any entry of several", `{` + allowAll + `, "deny": ["a.example", "evil.example", "b.example"]}`, "evil.example", false},
		{"deny: each entry needs the whole name", `{` + allowAll + `, "deny": ["evil.example", "x"]}`, "evil.example.good", true},
		{"deny: each entry needs the whole name (last entry)", `{` + allowAll + `, "deny": ["x", "evil.example"]}`, "good.evil.example", true},
		{"deny: a dot is not a wildcard", `{` + allowAll + `, "deny": ["evil.example"]}`, "evilxexample", true},
		{"deny: regexp syntax is literal", `{` + allowAll + `, "deny": ["(evil|bad).example"]}`, "evil.example", true},
		{"deny: regexp syntax matches itself", `{` + allowAll + `, "deny": ["(evil|bad).example"]}`, "(evil|bad).example", false},
		{"deny: backslash is literal, not an escape", `{` + allowAll + `, "deny": ["evil\\*"]}`, "evil\\.example", false},
		{"deny: backslash does not escape a star", `{` + allowAll + `, "deny": ["evil\\*"]}`, "evil*", true},
		{"deny: ? matches a newline", `{` + allowAll + `, "deny": ["evil?example"]}`, "evil\nexample", false},
		{"deny: * matches a newline", `{` + allowAll + `, "deny": ["evil*"]}`, "evil.\nexample", false},
		{"deny: ? matches an invalid UTF-8 byte", `{` + allowAll + `, "deny": ["evil?example"]}`, "evil\xffexample", false},
		{"deny: invalid UTF-8 in an entry matches any invalid byte", `{` + allowAll + `, "deny": ["evil` + "\xfe" + `"]}`, "evil\xff", false},
		{"deny: invalid UTF-8 in an entry matches only one byte", `{` + allowAll + `, "deny": ["evil` + "\xfe" + `"]}`, "evil\xff\xff", true},

		// Ports are never considered.
		{"deny matches a name with a port", `{` + allowAll + `, "deny": ["evil.example"]}`, "evil.example:8448", false},
		{"allow matches a name with a port", `{"allow": ["good.example"]}`, "good.example:1234", true},
		{"an entry with a port matches no server", `{"allow": ["good.example:8448"]}`, "good.example:8448", false},

		// Globs are case-insensitive.
		{"deny is case-insensitive (upper-case origin)", `{` + allowAll + `, "deny": ["evil.example"]}`, "EVIL.Example", false},
		{"deny is case-insensitive (upper-case entry)", `{` + allowAll + `, "deny": ["EVIL.EXAMPLE"]}`, "evil.example", false},
		{"allow is case-insensitive", `{"allow": ["*.EXAMPLE.org"]}`, "matrix.example.ORG", true},

		// 2. IP literals.
		{"IPv4 literal allowed by default", `{` + allowAll + `}`, "192.0.2.1", true},
		{"IPv4 literal allowed when allow_ip_literals is true", `{` + allowAll + `, "allow_ip_literals": true}`, "192.0.2.1", true},
		{"IPv4 literal denied", `{` + allowAll + `, "allow_ip_literals": false}`, "192.0.2.1", false},
		{"IPv4 literal with port denied", `{` + allowAll + `, "allow_ip_literals": false}`, "192.0.2.1:8448", false},
		{"IPv6 literal denied", `{` + allowAll + `, "allow_ip_literals": false}`, "[2001:db8::1]", false},
		{"IPv6 literal with port denied", `{` + allowAll + `, "allow_ip_literals": false}`, "[::1]:8448", false},
		{"DNS name with digits is not an IP literal", `{` + allowAll + `, "allow_ip_literals": false}`, "1.2.3.example", true},
		{"DNS name is admitted when IP literals are not", `{` + allowAll + `, "allow_ip_literals": false}`, "good.example:8448", true},
		{"IPv6 literal allowed by default", `{` + allowAll + `}`, "[::1]:8448", true},
		{"IPv6 literal matched with brackets, without port", `{"allow": ["[2001:db8::1]"]}`, "[2001:db8::1]:8448", true},
		{"IPv6 literal denied by entry", `{` + allowAll + `, "deny": ["[::1]"]}`, "[::1]:8448", false},
		{"IPv6 literal denied by glob over its brackets", `{` + allowAll + `, "deny": ["[2001:db8:*]"]}`, "[2001:DB8::7]", false},
		{"IPv4 literal denied by glob", `{` + allowAll + `, "deny": ["192.0.2.*"]}`, "192.0.2.77:8448", false},
		// The schema: allow_ip_literals "defaults to true if missing or
		// otherwise not a boolean".
		{"string allow_ip_literals counts as true", `{` + allowAll + `, "allow_ip_literals": "false"}`, "192.0.2.1", true},
		{"null allow_ip_literals counts as true", `{` + allowAll + `, "allow_ip_literals": null}`, "[::1]", true},
		{"numeric allow_ip_literals counts as true", `{` + allowAll + `, "allow_ip_literals": 0}`, "[::1]", true},

		// Malformed content never fails open for well-formed entries.
		{"non-string deny entries are skipped, string ones still deny", `{` + allowAll + `, "deny": ["evil.example", 5]}`, "evil.example", false},
		{"string deny entry after junk still denies", `{` + allowAll + `, "deny": [null, {"a": 1}, ["evil.example"], 5.5, "evil.example"]}`, "evil.example", false},
		{"non-string allow entries are skipped, string ones still allow", `{"allow": [5, "good.example"]}`, "good.example", true},
		{"non-string allow entries admit nobody", `{"allow": [5, true, null, {"*": 1}, ["*"]]}`, "good.example", false},
		{"non-list deny counts as empty", `{` + allowAll + `, "deny": "evil.example"}`, "evil.example", true},
		{"non-list allow counts as empty", `{"allow": "*"}`, "good.example", false},
		{"object allow counts as empty", `{"allow": {"0": "*"}}`, "good.example", false},
		{"keys are case-sensitive: Allow is not allow", `{"Allow": ["*"]}`, "good.example", false},
		{"keys are case-sensitive: Deny is not deny", `{` + allowAll + `, "Deny": ["evil.example"]}`, "evil.example", true},
		{"the last duplicate key wins", `{"allow": [], "allow": ["*"]}`, "good.example", true},
		{"content that is not an object denies everybody", `["*"]`, "good.example", false},
		{"null content denies everybody", `null`, "good.example", false},
		{"invalid JSON denies everybody", `{"allow": ["*"]`, "good.example", false},

		// Malformed server names are denied by any ACL.
		{"unclosed IPv6 bracket", `{` + allowAll + `}`, "[::1", false},
		{"empty IPv6 brackets", `{` + allowAll + `}`, "[]", false},
		{"empty name", `{` + allowAll + `}`, "", false},
		{"port only", `{` + allowAll + `}`, ":8448", false},
		{"empty port", `{` + allowAll + `}`, "good.example:", false},
		{"non-numeric port", `{` + allowAll + `}`, "good.example:http", false},
		{"six-digit port", `{` + allowAll + `}`, "good.example:123456", false},
		{"unbracketed IPv6", `{` + allowAll + `}`, "2001:db8::1", false},
		{"junk after IPv6 brackets", `{` + allowAll + `}`, "[::1]x", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var content json.RawMessage
			if tt.content != "" {
				content = json.RawMessage(tt.content)
			}
			require.Equal(t, tt.allowed, ServerACLAllows(content, tt.origin))
		})
	}
}

func TestACLServerNameHost(t *testing.T) {
	tests := []struct {
		serverName string
		host       string
		ok         bool
	}{
		{"example.org", "example.org", true},
		{"example.org:8448", "example.org", true},
		{"example.org:1", "example.org", true},
		{"192.0.2.1:443", "192.0.2.1", true},
		{"[::1]", "[::1]", true},
		{"[::1]:8448", "[::1]", true},
		{"[2001:db8::1]:99999", "[2001:db8::1]", true},
		{"", "", false},
		{":8448", "", false},
		{"example.org:", "", false},
		{"example.org:844a", "", false},
		{"example.org:8448:1", "", false},
		{"[::1", "", false},
		{"[]:8448", "", false},
		{"[::1]8448", "", false},
		{"::1", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.serverName, func(t *testing.T) {
			host, ok := serverNameHost(tt.serverName)
			require.Equal(t, tt.ok, ok)
			require.Equal(t, tt.host, host)
		})
	}
}

func TestACLGlobMatch(t *testing.T) {
	long := strings.Repeat("a", 70)
	tests := []struct {
		pattern, name string
		match         bool
	}{
		{"", "", true},
		{"", "a", false},
		{"*", "", true},
		{"*", "anything.at.all", true},
		{"**", "x", true},
		{"?", "", false},
		{"?", "x", true},
		{"?", "xy", false},
		{"a*b", "ab", true},
		{"a*b", "axxb", true},
		{"a*b", "axxbc", false},
		{"a*b*c", "abbbc", true},
		{"a*b*c", "acb", false},
		{"*ab*ab*", "abab", true},
		{"*ab*ab*", "aab", false},
		{"*aab", "aaab", true},
		{"a?c*", "abcdef", true},
		{"a.c", "abc", false},
		{"a+", "aa", false},
		{"a+", "a+", true},
		{"[a-z]", "b", false},
		{"[a-z]", "[A-Z]", true},
		{"^a$", "^A$", true},
		{`a\*`, `a\bc`, true},
		{`a\*`, "a*", false},
		{`\Qa\E`, `\qA\e`, true},
		{"a?b", "a\nb", true},
		{"*", "\n\n", true},
		{"?", "\xff", true},
		{"??", "\xff\xfe", true},
		{"\ufffd", "\xff", true},
		{"*?*?", "a", false},
		{"*?*?", "ab", true},
		{"?**?", "abc", true},
		{"*??*", "ab", true},
		{"a*?", "a", false},
		{"*.?", "host.x", true},
		{"*.?", "host.", false},
		{"prefix*suffix", "prefixsuffix", true},
		{"prefix*suffix", "prefixsuffi", false},
		{"ab*ba", "aba", false}, // prefix and suffix may not overlap
		{"HOST.Example", "host.EXAMPLE", true},
		{"K", "\u212a", true}, // the Kelvin sign folds to k
		{"stra\u00dfe", "STRASSE", false},
		// Segments longer than one 64-bit word.
		{"*" + long + "b*", long + long + "b", true},
		{"*" + long + "b*", long + "b" + long, true},
		{"*" + long + "?*", long[:69], false},
		{"*?" + long + "*", "b" + long, true},
		// A pattern that makes backtracking matchers explode.
		{strings.Repeat("*a", 40) + "*b", strings.Repeat("a", 200), false},
		{strings.Repeat("*a", 40) + "*b", strings.Repeat("a", 200) + "b", true},
	}
	for _, tt := range tests {
		t.Run(tt.pattern+"~"+tt.name, func(t *testing.T) {
			require.Equal(t, tt.match, globsMatch(t, []string{tt.pattern}, tt.name))
			require.Equal(t, tt.match, referenceGlobMatch(tt.pattern, tt.name), "reference matcher disagrees with the table")
		})
	}
}

// TestACLGlobMatchAgreesWithReference compares the matcher, on lists of one
// to three globs, with a straightforward dynamic-programming matcher on
// random patterns and names over a small alphabet (so that matches are
// frequent), including long ones.
func TestACLGlobMatchAgreesWithReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	patternAlphabet := []rune{'a', 'b', 'A', '.', '*', '*', '?', '\u212a', 'k', '|', '\\'}
	nameAlphabet := []rune{'a', 'b', 'B', '.', 'K', 'k', '|', '\\'}
	randomString := func(alphabet []rune, maxLen int) string {
		runes := make([]rune, rng.IntN(maxLen+1))
		for i := range runes {
			runes[i] = alphabet[rng.IntN(len(alphabet))]
		}
		return string(runes)
	}
	matches := 0
	for range 20000 {
		maxLen := 8
		if rng.IntN(10) == 0 {
			maxLen = 150
		}
		name := randomString(nameAlphabet, maxLen)
		patterns := make([]string, 1+rng.IntN(3))
		want := false
		for i := range patterns {
			patterns[i] = randomString(patternAlphabet, maxLen)
			want = want || referenceGlobMatch(patterns[i], name)
		}
		if want {
			matches++
		}
		require.Equal(t, want, globsMatch(t, patterns, name), "patterns %q, name %q", patterns, name)
	}
	require.Greater(t, matches, 1000, "the random cases should exercise matches, not only mismatches")
}

// TestACLCacheIsBounded checks that the decoded-ACL cache keeps to its
// entry and byte budgets however many distinct contents arrive, that its
// byte count stays exact, and that a content over the byte budget is still
// decided (without being cached).
func TestACLCacheIsBounded(t *testing.T) {
	for i := range 2 * aclCacheMaxEntries {
		content := fmt.Sprintf(`{"allow": ["*"], "deny": ["evil%d.example"]}`, i)
		require.False(t, ServerACLAllows(json.RawMessage(content), fmt.Sprintf("evil%d.example", i)))
		require.True(t, ServerACLAllows(json.RawMessage(content), "good.example"))
	}
	padding := strings.Repeat(" ", aclCacheMaxBytes/4)
	for range 8 {
		padding += " " // distinct contents, each a quarter of the budget
		content := `{"allow": ["*"],` + padding + `"deny": ["evil.example"]}`
		require.False(t, ServerACLAllows(json.RawMessage(content), "evil.example"))
	}
	huge := `{"allow": ["good.example"],` + strings.Repeat(" ", aclCacheMaxBytes) + `"deny": []}`
	require.True(t, ServerACLAllows(json.RawMessage(huge), "good.example"))
	require.False(t, ServerACLAllows(json.RawMessage(huge), "other.example"))

	aclCache.Lock()
	defer aclCache.Unlock()
	require.LessOrEqual(t, len(aclCache.byContent), aclCacheMaxEntries)
	require.LessOrEqual(t, aclCache.bytes, aclCacheMaxBytes)
	bytes := 0
	for content := range aclCache.byContent {
		bytes += len(content)
	}
	require.Equal(t, bytes, aclCache.bytes)
	require.NotContains(t, aclCache.byContent, huge)
}

// FuzzServerACLAllows feeds arbitrary ACL content and origins. ACL content
// comes from room events and origins from X-Matrix headers, so both are
// attacker-controlled. Besides not panicking, a well-formed deny entry that
// matches the origin must deny it, whatever else the content holds.
func FuzzServerACLAllows(f *testing.F) {
	f.Add([]byte(`{"allow": ["*"], "deny": ["evil.example", 5]}`), "evil.example:8448", "EVIL.*")
	f.Add([]byte(`{"allow": "*", "allow_ip_literals": "no"}`), "[::1]:8448", "[::?]")
	f.Add([]byte(`{"allow": ["*"], "allow_ip_literals": false}`), "192.0.2.1", "*")
	f.Add([]byte(`[1, 2]`), "good.example", "good.example")
	f.Add([]byte(`{"deny": {"x": "y"}}`), "a:1", "?")
	f.Fuzz(func(t *testing.T, content []byte, origin, denyEntry string) {
		if len(content) > 1<<16 || len(origin) > 1024 || len(denyEntry) > 1024 {
			t.Skip("larger than any event or server name")
		}
		_ = ServerACLAllows(content, origin)

		host, ok := serverNameHost(origin)
		if !ok || !utf8.ValidString(denyEntry) {
			return
		}
		require.Equal(t,
			referenceGlobMatch(denyEntry, host),
			globsMatch(t, []string{denyEntry}, host),
			"pattern %q, host %q", denyEntry, host)
		if !referenceGlobMatch(denyEntry, host) {
			return
		}

		// Add denyEntry to the content's deny list (keeping whatever junk is
		// there) and check that the origin is now denied.
		fields := map[string]json.RawMessage{}
		if err := json.Unmarshal(content, &fields); err != nil || fields == nil {
			fields = map[string]json.RawMessage{}
		}
		var deny []json.RawMessage
		if err := json.Unmarshal(fields["deny"], &deny); err != nil {
			deny = nil
		}
		entry, err := json.Marshal(denyEntry)
		require.NoError(t, err)
		fields["deny"], err = json.Marshal(append(deny, entry))
		require.NoError(t, err)
		withDeny, err := json.Marshal(fields)
		require.NoError(t, err)
		require.False(t, ServerACLAllows(withDeny, origin), "content %s, origin %q", withDeny, origin)
	})
}

// globsMatch reports whether any of globs matches name.
func globsMatch(t testing.TB, globs []string, name string) bool {
	t.Helper()
	for _, glob := range globs {
		if aclGlobMatchFolded(aclFoldRunes(glob), aclFoldRunes(name)) {
			return true
		}
	}
	return false
}

// referenceGlobMatch is the obvious quadratic dynamic programme over the
// spec's glob rules, used to check the matcher: matched[j] says
// whether the pattern so far matches name[:j].
func referenceGlobMatch(pattern, name string) bool {
	nameRunes := []rune(name)
	matched := make([]bool, len(nameRunes)+1)
	matched[0] = true
	for _, p := range pattern {
		next := make([]bool, len(nameRunes)+1)
		if p == '*' {
			next[0] = matched[0]
		}
		for j := 1; j <= len(nameRunes); j++ {
			switch p {
			case '*':
				next[j] = matched[j] || next[j-1]
			case '?':
				next[j] = matched[j-1]
			default:
				next[j] = matched[j-1] && strings.EqualFold(string(p), string(nameRunes[j-1]))
			}
		}
		matched = next
	}
	return matched[len(nameRunes)]
}

// BenchmarkServerACLAllows measures a whole ACL check, from the content
// bytes to the decision, as authorize.go makes it for every request:
//   - typical: allow everybody but ten deny globs, no IP literals;
//   - hostile: ten deny globs of a hundred "*?" each, against a 254-character
//     name they do not match;
//   - crafted: the worst case for a regexp matcher, whose work grows with
//     the length of the name times the number of stars (see aclGlobMatchFolded):
//     60 KiB of "*a*a…*b" globs (about as much as an event under the 64 KiB
//     PDU limit holds) against a 254-character name of "a"s.
func BenchmarkServerACLAllows(b *testing.B) {
	typical := []byte(`{"allow_ip_literals": false, "allow": ["*"], "deny": [` +
		`"evil.example", "*.evil.example", "spam?.example.net", "*.spam.example.org", "bad*.example", ` +
		`"*.tor.example", "abuse.example.com", "*.abuse.example.com", "matrix.??.example", "*.xyz"]}`)
	hostile := []byte(`{"allow": ["*"], "deny": ["` +
		strings.Repeat(strings.Repeat("*?", 100)+`*#", "`, 9) + strings.Repeat("*?", 100) + `*#"]}`)
	craftedGlob := strings.Repeat("*a", 126) + "*b"
	crafted := []byte(`{"allow": ["*"], "deny": ["` +
		strings.Repeat(craftedGlob+`", "`, 60<<10/(len(craftedGlob)+4)-1) + craftedGlob + `"]}`)
	longName := strings.Repeat("a", 250) + ".org:8448"
	benchmarks := []struct {
		name    string
		content []byte
		origin  string
		allowed bool
	}{
		{"typical/allowed", typical, "matrix.good.example:8448", true},
		{"typical/denied", typical, "matrix.evil.example", false},
		{"hostile/allowed", hostile, longName, true},
		{"crafted/allowed", crafted, longName, true},
	}
	for _, bm := range benchmarks {
		b.Run(bm.name, func(b *testing.B) {
			require.LessOrEqual(b, len(bm.content), 64<<10)
			require.Equal(b, bm.allowed, ServerACLAllows(bm.content, bm.origin))
			b.ReportAllocs()
			for b.Loop() {
				ServerACLAllows(bm.content, bm.origin)
			}
		})
	}
}

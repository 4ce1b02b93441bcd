package fedhistory

import (
	"encoding/json"
	"strings"
	"sync"
	"unicode"
	"unicode/utf8"
)

// ServerACLAllows reports whether the m.room.server_acl content aclContent
// lets serverName (a server name as it appears in X-Matrix or a user ID, port
// included) take part in the room. It implements the order of the
// m.room.server_acl event schema:
//
//  1. No ACL in the room state (aclContent empty): allow.
//  2. The name is an IP literal and allow_ip_literals is false: deny.
//  3. The name matches an entry of deny: deny.
//  4. The name matches an entry of allow: allow.
//  5. Otherwise deny (so an ACL without allow admits nobody).
//
// Names are compared without their port, against case-insensitive globs
// ("*" is any run of characters, "?" exactly one).
//
// The content comes from a room event and may be malformed; every decision
// errs towards denying, but never by ignoring an entry that is well formed:
//   - content that is not a JSON object (invalid JSON, null, an array…) is an
//     ACL event without allow, which denies everybody;
//   - an allow or deny that is not an array counts as empty (as in Synapse);
//     entries that are not strings are skipped, the others still apply;
//   - a non-boolean allow_ip_literals counts as true, because the event schema
//     says so ("defaults to true if missing or otherwise not a boolean") and
//     Synapse agrees; treating it as false would make rooms deny IP-literal
//     servers that every other server admits;
//   - keys are matched exactly ("Deny" is not "deny"), as every other
//     implementation reads them; decoding into a map rather than a struct
//     avoids encoding/json's case-insensitive field matching;
//   - a serverName that is not a valid server name (unbalanced brackets, a
//     port that is not 1–5 digits, an empty host) is denied by any ACL.
//
// A homeserver can call it for the other endpoints the spec makes subject to
// ACLs (send, state, make_join…).
func ServerACLAllows(aclContent json.RawMessage, serverName string) bool {
	if len(aclContent) == 0 {
		return true
	}
	host, ok := serverNameHost(serverName)
	if !ok {
		return false
	}
	acl := cachedACL(aclContent)
	if !acl.allowIPLiterals && isIPLiteralHost(host) {
		return false
	}
	foldedHost := aclFoldRunes(host)
	return !aclAnyGlobMatches(acl.deny, foldedHost) && aclAnyGlobMatches(acl.allow, foldedHost)
}

// decodedACL is an m.room.server_acl content decoded once, with the string
// entries of its lists folded by aclFoldRunes.
type decodedACL struct {
	allowIPLiterals bool
	deny, allow     [][]rune
}

// decodeACL decodes aclContent as described at ServerACLAllows.
func decodeACL(aclContent []byte) *decodedACL {
	acl := &decodedACL{allowIPLiterals: true}
	var content map[string]json.RawMessage
	if err := json.Unmarshal(aclContent, &content); err != nil {
		// Not an object: an ACL event without an allow list.
		return acl
	}
	// Decode into any, not bool or string: encoding/json leaves a bool
	// untouched for null without reporting an error, and decodes null into
	// a string as "".
	var value any
	if json.Unmarshal(content["allow_ip_literals"], &value) == nil {
		if flag, isBool := value.(bool); isBool {
			acl.allowIPLiterals = flag
		}
	}
	acl.deny = aclFoldedStrings(content["deny"])
	acl.allow = aclFoldedStrings(content["allow"])
	return acl
}

// aclFoldedStrings returns the string entries of the JSON array rawList,
// folded by aclFoldRunes, skipping the others. A missing or non-array list
// has none.
func aclFoldedStrings(rawList json.RawMessage) [][]rune {
	var entries []any
	if json.Unmarshal(rawList, &entries) != nil {
		return nil
	}
	var folded [][]rune
	for _, entry := range entries {
		if value, isString := entry.(string); isString {
			folded = append(folded, aclFoldRunes(value))
		}
	}
	return folded
}

// aclAnyGlobMatches reports whether any of the folded globs matches the
// folded name.
func aclAnyGlobMatches(globs [][]rune, name []rune) bool {
	for _, glob := range globs {
		if aclGlobMatchFolded(glob, name) {
			return true
		}
	}
	return false
}

// The decoded ACLs of recently seen contents, by content. The contents come
// from the network, so the cache is bounded in entries and in content bytes:
// an entry holds a few times its content in memory (four bytes a rune of
// the globs), so the cache holds at most some 5 MB. When full, it evicts
// arbitrary entries (Go randomises map iteration). A content larger than the
// byte budget (no ACL event can be) is decoded on every call.
const (
	aclCacheMaxEntries = 256
	aclCacheMaxBytes   = 1 << 20
)

var aclCache struct {
	sync.Mutex
	byContent map[string]*decodedACL
	bytes     int
}

// cachedACL returns the decoded aclContent, from the cache if it can.
func cachedACL(aclContent []byte) *decodedACL {
	aclCache.Lock()
	acl, cached := aclCache.byContent[string(aclContent)]
	aclCache.Unlock()
	if cached {
		return acl
	}
	acl = decodeACL(aclContent)
	if len(aclContent) > aclCacheMaxBytes {
		return acl
	}

	aclCache.Lock()
	defer aclCache.Unlock()
	if aclCache.byContent == nil {
		aclCache.byContent = make(map[string]*decodedACL)
	}
	if _, cached := aclCache.byContent[string(aclContent)]; cached {
		return acl // decoded concurrently by another call
	}
	for content := range aclCache.byContent {
		if len(aclCache.byContent) < aclCacheMaxEntries && aclCache.bytes+len(aclContent) <= aclCacheMaxBytes {
			break
		}
		delete(aclCache.byContent, content)
		aclCache.bytes -= len(content)
	}
	aclCache.byContent[string(aclContent)] = acl
	aclCache.bytes += len(aclContent)
	return acl
}

// serverNameHost returns serverName without its port, following the spec's
// grammar server_name = hostname [ ":" port ], port = 1*5DIGIT. An IPv6
// literal keeps its brackets ("[::1]:8448" → "[::1]"), which is the form ACL
// entries are written in (Synapse compares the same form). ok is false for a
// name that does not fit the grammar's outline; callers deny such names
// rather than guess what host was meant.
func serverNameHost(serverName string) (host string, ok bool) {
	var rest string
	if strings.HasPrefix(serverName, "[") {
		end := strings.IndexByte(serverName, ']')
		if end < 0 {
			return "", false
		}
		host, rest = serverName[:end+1], serverName[end+1:]
		if len(host) == 2 {
			return "", false
		}
	} else {
		colon := strings.IndexByte(serverName, ':')
		if colon < 0 {
			host = serverName
		} else {
			host, rest = serverName[:colon], serverName[colon:]
		}
		if host == "" {
			return "", false
		}
	}
	if rest == "" {
		return host, true
	}
	port, hasColon := strings.CutPrefix(rest, ":")
	if !hasColon || !isDecimalDigits(port, 1, 5) {
		return "", false
	}
	return host, true
}

// isIPLiteralHost reports whether host (a server name without its port) is
// an IPv6 literal (bracketed, as the grammar requires) or an IPv4 literal.
// For IPv4 it accepts the grammar's shape, four dot-separated runs of 1–3
// digits, without checking each is at most 255: a name of that shape cannot
// be a DNS name (no all-numeric top-level domain), so counting it as a
// literal only ever denies a name nobody can legitimately use.
func isIPLiteralHost(host string) bool {
	if strings.HasPrefix(host, "[") {
		return true
	}
	parts := strings.Split(host, ".")
	if len(parts) != 4 {
		return false
	}
	for _, part := range parts {
		if !isDecimalDigits(part, 1, 3) {
			return false
		}
	}
	return true
}

// isDecimalDigits reports whether s is between minLen and maxLen ASCII digits.
func isDecimalDigits(s string, minLen, maxLen int) bool {
	if len(s) < minLen || len(s) > maxLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// aclFoldRunes returns s as runes, each replaced by the representative of
// its case-folding class, so that comparing folded runes for equality is
// case-insensitive comparison (as strings.EqualFold, rune by rune). The
// globs' "*" and "?" fold to themselves. Invalid UTF-8 bytes become
// U+FFFD, one per byte, on both sides alike.
func aclFoldRunes(s string) []rune {
	folded := make([]rune, 0, len(s))
	for _, r := range s {
		folded = append(folded, aclFoldRune(r))
	}
	return folded
}

// aclFoldRune returns the smallest rune of r's simple case-folding orbit
// (the orbit of 'k' is 'K', 'k' and the Kelvin sign U+212A, so all three
// become 'K').
func aclFoldRune(r rune) rune {
	if r < utf8.RuneSelf {
		// Fast path. For ASCII letters the orbit's smallest member is the
		// upper-case letter; non-ASCII members of the orbits of 'k' and 's'
		// (U+212A, U+017F) are larger.
		if 'a' <= r && r <= 'z' {
			return r - ('a' - 'A')
		}
		return r
	}
	smallest := r
	for other := unicode.SimpleFold(r); other != r; other = unicode.SimpleFold(other) {
		if other < smallest {
			smallest = other
		}
	}
	return smallest
}

// aclGlobMatchFolded reports whether the glob pattern matches the whole of
// name, both already case-folded by aclFoldRunes. "*" matches any run of
// runes (also none), "?" exactly one rune, every other rune itself.
//
// It never backtracks, so hostile patterns ("*a*a*a*…b") cannot make it
// blow up: the pattern is split at its stars; the part before the first star
// must be a prefix of the name and the part after the last star a suffix;
// the parts in between are then found, left to right, at their leftmost
// occurrence in what remains. Leftmost placement is always safe, because it
// leaves the most room for the parts that follow. Each middle part is
// searched with a bit-parallel automaton (aclGlobFindSegment) over a stretch
// of the name that no other part scans, so the whole match costs
// O(len(name)·⌈longest part/64⌉ + len(pattern)): linear for every realistic
// pattern.
func aclGlobMatchFolded(pattern, name []rune) bool {
	segments := aclSplitStars(pattern)
	if len(segments) == 1 {
		return len(pattern) == len(name) && aclSegmentMatchesAt(pattern, name)
	}

	prefix, suffix := segments[0], segments[len(segments)-1]
	if len(prefix)+len(suffix) > len(name) {
		return false
	}
	if !aclSegmentMatchesAt(prefix, name) || !aclSegmentMatchesAt(suffix, name[len(name)-len(suffix):]) {
		return false
	}

	remaining := name[len(prefix) : len(name)-len(suffix)]
	for _, segment := range segments[1 : len(segments)-1] {
		if len(segment) == 0 {
			continue
		}
		end := aclGlobFindSegment(segment, remaining)
		if end < 0 {
			return false
		}
		remaining = remaining[end:]
	}
	return true
}

// aclSplitStars splits pattern at every '*'. Consecutive stars give empty
// segments, which match anywhere.
func aclSplitStars(pattern []rune) [][]rune {
	segments := make([][]rune, 0, 4)
	start := 0
	for i, r := range pattern {
		if r == '*' {
			segments = append(segments, pattern[start:i])
			start = i + 1
		}
	}
	return append(segments, pattern[start:])
}

// aclSegmentMatchesAt reports whether the star-free segment matches the
// first len(segment) runes of name (the caller checks the length).
func aclSegmentMatchesAt(segment, name []rune) bool {
	for i, want := range segment {
		if want != '?' && want != name[i] {
			return false
		}
	}
	return true
}

// aclGlobFindSegment returns the index just past the leftmost occurrence of
// the non-empty star-free segment in text, or -1. It runs the shift-and
// (bitap) automaton: bit i of state is set when segment[:i+1] matches the
// text ending at the current rune. One step costs ⌈len(segment)/64⌉ word
// operations whatever the pattern, so there is nothing to exploit.
func aclGlobFindSegment(segment, text []rune) int {
	if len(segment) > len(text) {
		return -1
	}
	words := (len(segment) + 63) / 64

	// wildcard has the bits of the '?' positions; masks[r] additionally has
	// the positions where segment holds r.
	wildcard := make([]uint64, words)
	for i, r := range segment {
		if r == '?' {
			wildcard[i/64] |= 1 << (i % 64)
		}
	}
	masks := make(map[rune][]uint64)
	for i, r := range segment {
		if r == '?' {
			continue
		}
		mask, seen := masks[r]
		if !seen {
			mask = append([]uint64(nil), wildcard...)
			masks[r] = mask
		}
		mask[i/64] |= 1 << (i % 64)
	}

	state := make([]uint64, words)
	lastWord, lastBit := (len(segment)-1)/64, uint((len(segment)-1)%64)
	for j, r := range text {
		mask, seen := masks[r]
		if !seen {
			mask = wildcard
		}
		carry := uint64(1) // a match of the first rune may start here
		for w := range state {
			next := state[w] >> 63
			state[w] = (state[w]<<1 | carry) & mask[w]
			carry = next
		}
		if state[lastWord]>>lastBit&1 == 1 {
			return j + 1
		}
	}
	return -1
}

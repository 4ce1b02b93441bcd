package fedhistory

import (
	"encoding/json"
	"regexp"
	"strings"
	"sync"
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
	return !acl.deny.MatchString(host) && acl.allow.MatchString(host)
}

// compiledACL is an m.room.server_acl content decoded once, with each of its
// lists compiled into a single regexp.
type compiledACL struct {
	allowIPLiterals bool
	deny, allow     *regexp.Regexp
}

// matchNothing is the list regexp of a missing, empty or malformed list.
var matchNothing = regexp.MustCompile(`[^\x00-\x{10FFFF}]`)

// compileACL decodes aclContent as described at ServerACLAllows.
func compileACL(aclContent []byte) *compiledACL {
	denyEverybody := &compiledACL{allowIPLiterals: true, deny: matchNothing, allow: matchNothing}
	var content map[string]json.RawMessage
	if err := json.Unmarshal(aclContent, &content); err != nil {
		// Not an object: an ACL event without an allow list.
		return denyEverybody
	}

	acl := &compiledACL{allowIPLiterals: true}
	// Decode into any, not bool or string: encoding/json leaves a bool
	// untouched for null without reporting an error, and decodes null into
	// a string as "".
	var value any
	if json.Unmarshal(content["allow_ip_literals"], &value) == nil {
		if flag, isBool := value.(bool); isBool {
			acl.allowIPLiterals = flag
		}
	}
	var err error
	if acl.deny, err = compileGlobs(jsonStrings(content["deny"])); err != nil {
		return denyEverybody
	}
	if acl.allow, err = compileGlobs(jsonStrings(content["allow"])); err != nil {
		return denyEverybody
	}
	return acl
}

// jsonStrings returns the string entries of the JSON array rawList, skipping
// the others. A missing or non-array list has none.
func jsonStrings(rawList json.RawMessage) []string {
	var entries []any
	if json.Unmarshal(rawList, &entries) != nil {
		return nil
	}
	var values []string
	for _, entry := range entries {
		if value, isString := entry.(string); isString {
			values = append(values, value)
		}
	}
	return values
}

// compileGlobs compiles globs into one regexp that matches a whole name
// when any of them does, ignoring case as strings.EqualFold does: "*" becomes
// ".*", "?" becomes "." and everything else matches literally; (?s) lets
// both match a newline too. A run of "*" and "?" becomes its "?"s followed
// by a single ".*" (the same set of names), which keeps "*?*?…" cheap.
//
// Go's regexps never backtrack, but matching still costs up to the length
// of the name times the number of stars: a crafted 60 KiB ACL of "*a*a…"
// globs takes a large fraction of a second per check (BenchmarkServerACLAllows).
//
// The error is regexp's "expression too large", which takes lists of
// hundreds of megabytes. No globs at all match nothing.
func compileGlobs(globs []string) (*regexp.Regexp, error) {
	if len(globs) == 0 {
		return matchNothing, nil
	}
	var expr strings.Builder
	expr.WriteString(`(?is)^(?:`)
	for i, glob := range globs {
		if i > 0 {
			expr.WriteByte('|')
		}
		star := false
		for _, r := range glob {
			switch r {
			case '*':
				star = true
			case '?':
				expr.WriteByte('.')
			default:
				if star {
					expr.WriteString(".*")
					star = false
				}
				expr.WriteString(regexp.QuoteMeta(string(r)))
			}
		}
		if star {
			expr.WriteString(".*")
		}
	}
	expr.WriteString(`)$`)
	return regexp.Compile(expr.String())
}

// The compiled ACLs of recently seen contents, by content. The contents come
// from the network, so the cache is bounded in entries and in content bytes:
// an entry holds about a hundred times its content in memory, so the cache
// holds at most some 30 MB. When full, it evicts arbitrary entries (Go
// randomises map iteration). A content larger than the byte budget (no ACL
// event can be) is compiled on every call.
const (
	aclCacheMaxEntries = 256
	aclCacheMaxBytes   = 256 << 10
)

var aclCache struct {
	sync.Mutex
	byContent map[string]*compiledACL
	bytes     int
}

// cachedACL returns the compiled aclContent, from the cache if it can.
func cachedACL(aclContent []byte) *compiledACL {
	aclCache.Lock()
	acl, cached := aclCache.byContent[string(aclContent)]
	aclCache.Unlock()
	if cached {
		return acl
	}
	acl = compileACL(aclContent)
	if len(aclContent) > aclCacheMaxBytes {
		return acl
	}

	aclCache.Lock()
	defer aclCache.Unlock()
	if aclCache.byContent == nil {
		aclCache.byContent = make(map[string]*compiledACL)
	}
	if _, cached := aclCache.byContent[string(aclContent)]; cached {
		return acl // compiled concurrently by another call
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

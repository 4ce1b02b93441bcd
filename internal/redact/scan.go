package redact

// A minimal scanner over JSON that encoding/json.Valid has already accepted.
// It never decodes a value: it finds where values begin and end, so that the
// redaction can copy the ones it keeps. Every function here may assume valid
// input; none of them recurses, and each advances through the input, so that
// a whole redaction is linear in the input.

// isSpace reports whether c is JSON whitespace.
func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r'
}

// skipSpace returns the index of the first non-whitespace byte of b at or
// after i, or len(b).
func skipSpace(b []byte, i int) int {
	for i < len(b) && isSpace(b[i]) {
		i++
	}
	return i
}

// skipString returns the index just past the string whose opening quote is
// at b[i].
func skipString(b []byte, i int) int {
	for i++; i < len(b); i++ {
		switch b[i] {
		case '\\':
			i++ // the escaped byte; \uXXXX's hex digits are plain bytes
		case '"':
			return i + 1
		}
	}
	return len(b)
}

// skipValue returns the index just past the value that begins at b[i].
// Objects and arrays are skipped by counting brackets outside strings: the
// input is valid, so the brackets match.
func skipValue(b []byte, i int) int {
	switch b[i] {
	case '"':
		return skipString(b, i)
	case '{', '[':
		depth := 0
		for i < len(b) {
			switch b[i] {
			case '"':
				i = skipString(b, i)
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			}
			i++
		}
		return len(b)
	default: // number, true, false, null
		for i < len(b) {
			switch c := b[i]; {
			case c == ',' || c == '}' || c == ']' || isSpace(c):
				return i
			}
			i++
		}
		return len(b)
	}
}

// member is one member of an object, as offsets into the input.
type member struct {
	start  int // just past the '{' or ',' before the member: its leading whitespace begins here
	key    int // the key's opening quote
	keyEnd int // just past the key's closing quote
	value  int // the value's first byte
	end    int // just past the value
}

// objectIter walks the members of an object, one at a time.
type objectIter struct {
	b []byte
	// i is where the next member's leading whitespace begins; once the walk
	// is done, it is where the whitespace before the closing brace begins.
	i int
	// close is the index of the closing brace, once the walk is done.
	close int
	done  bool
}

// newObjectIter walks the object whose opening brace is at b[open].
func newObjectIter(b []byte, open int) objectIter {
	return objectIter{b: b, i: open + 1}
}

// next returns the next member, or false after the last one.
func (it *objectIter) next() (member, bool) {
	if it.done {
		return member{}, false
	}
	b := it.b
	j := skipSpace(b, it.i)
	if b[j] == '}' {
		it.close = j
		it.done = true
		return member{}, false
	}
	m := member{start: it.i, key: j}
	m.keyEnd = skipString(b, j)
	colon := skipSpace(b, m.keyEnd)
	m.value = skipSpace(b, colon+1)
	m.end = skipValue(b, m.value)
	if j = skipSpace(b, m.end); b[j] == ',' {
		it.i = j + 1
	} else {
		it.i = m.end // the closing brace follows: stop there next time
	}
	return m, true
}

// maxName bounds the decoded length of a key or type name that may match a
// name the algorithms know; the longest is 32 bytes
// ("join_authorised_via_users_server").
const maxName = 64

// asciiName returns the text of the JSON string s (quotes included) when
// it decodes to at most maxName bytes without any escape of a non-ASCII
// character, using buf for escaped strings; ok is false otherwise. Names the
// algorithms know are short and ASCII: a string asciiName refuses cannot
// equal one, whatever a decoder makes of it. Unescaped non-ASCII bytes are
// returned as they are: they cannot equal an ASCII name either.
func asciiName(s []byte, buf *[maxName]byte) (name []byte, ok bool) {
	s = s[1 : len(s)-1]
	escaped := false
	for _, c := range s {
		if c == '\\' {
			escaped = true
			break
		}
	}
	if !escaped {
		if len(s) > maxName {
			return nil, false
		}
		return s, true
	}
	n := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '\\' {
			i++
			switch s[i] {
			case 'b':
				c = '\b'
			case 'f':
				c = '\f'
			case 'n':
				c = '\n'
			case 'r':
				c = '\r'
			case 't':
				c = '\t'
			case 'u':
				r := hex4(s[i+1 : i+5])
				if r >= 0x80 {
					return nil, false
				}
				c = byte(r)
				i += 4
			default: // '"', '\\', '/'
				c = s[i]
			}
		}
		if n == len(buf) {
			return nil, false
		}
		buf[n] = c
		n++
	}
	return buf[:n], true
}

// hex4 decodes four hex digits (valid: the input has been validated).
func hex4(h []byte) rune {
	var r rune
	for _, c := range h[:4] {
		r <<= 4
		switch {
		case c >= '0' && c <= '9':
			r |= rune(c - '0')
		case c >= 'a' && c <= 'f':
			r |= rune(c - 'a' + 10)
		default:
			r |= rune(c - 'A' + 10)
		}
	}
	return r
}

// indexOf returns the index of name in names, or -1.
func indexOf(names []string, name []byte) int {
	for i, n := range names {
		if n == string(name) {
			return i
		}
	}
	return -1
}

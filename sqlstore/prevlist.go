package sqlstore

import "encoding/json"

// decodeIDList decodes the prev_events column, a JSON array of strings.
// sqlstore writes it itself (jsonList: json.Marshal of a []string), so it is
// almost always plain ASCII strings with no escapes and no whitespace; that
// form is parsed here without reflection, one allocation per ID plus the
// slice. Anything else (escapes, non-ASCII bytes, whitespace, null, a
// malformed value) goes to encoding/json, so the result is always exactly
// what json.Unmarshal into a []string gives (FuzzDecodeIDList).
func decodeIDList(b []byte) ([]string, error) {
	if ids, ok := decodeIDListFast(b); ok {
		return ids, nil
	}
	var ids []string
	err := json.Unmarshal(b, &ids)
	return ids, err
}

// decodeIDListFast parses `[]` or `["a","b",...]` where every string holds
// printable ASCII other than '"' and '\\'; ok is false for any other input.
func decodeIDListFast(b []byte) (ids []string, ok bool) {
	if len(b) < 2 || b[0] != '[' || b[len(b)-1] != ']' {
		return nil, false
	}
	body := b[1 : len(b)-1]
	if len(body) == 0 {
		return []string{}, true
	}
	n := 1
	for _, c := range body {
		if c == ',' {
			n++
		}
	}
	ids = make([]string, 0, n)
	for i := 0; ; {
		if i >= len(body) || body[i] != '"' {
			return nil, false
		}
		i++
		start := i
		for i < len(body) && body[i] != '"' {
			if c := body[i]; c < 0x20 || c >= 0x7f || c == '\\' {
				return nil, false
			}
			i++
		}
		if i >= len(body) {
			return nil, false
		}
		ids = append(ids, string(body[start:i]))
		i++ // the closing quote
		if i == len(body) {
			return ids, true
		}
		if body[i] != ',' {
			return nil, false
		}
		i++
	}
}

// Package eventcontent reads single fields of an event's content, leniently:
// stored events come from other servers, and a malformed field must read as
// absent rather than fail the store that holds the event.
package eventcontent

import "encoding/json"

// String returns the string value of content[field], or "" when the content
// is not a JSON object or the field is absent or not a string.
func String(content []byte, field string) string {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(content, &fields); err != nil {
		return ""
	}
	var value string
	if err := json.Unmarshal(fields[field], &value); err != nil {
		return ""
	}
	return value
}

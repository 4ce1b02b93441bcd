package redact

// GmslTopLevel is gmslTopLevel, for the comparisons with gomatrixserverlib.
var GmslTopLevel = gmslTopLevel

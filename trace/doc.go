// Package trace gives every request a sane correlation ID and W3C trace
// context, and carries both to the upstream and onto every log line.
//
// It never trusts the client's bytes: an ID is either kept verbatim because
// it matches a strict pattern, or replaced by a fresh UUIDv4.
package trace

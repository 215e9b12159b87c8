// Package access decides who may call the gateway: the configured keys (by
// SHA-256 digest), their scopes and limits, the keys file and its reload,
// and the per-IP budget of failed authentications. The gateway asks it one
// question per request (Control.Check) and gets an Identity back.
package access

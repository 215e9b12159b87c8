package access

import "testing"

// TestCredentials covers where the key is taken from when both headers
// come: the same key twice is one credential, taken from (and so stripped
// from) Authorization; another scheme in Authorization leaves X-API-Key
// the credential and Authorization to be forwarded.
func TestCredentials(t *testing.T) {
	const key = "cred-key-0123456789abcdef0123456789ab"
	kr, err := NewKeyring([]string{key}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, apiKey, authz string
		want                Status
		inAuthz             bool
	}{
		{"x-api-key", key, "", OK, false},
		{"bearer", "", "Bearer " + key, OK, true},
		{"same key in both", key, "Bearer " + key, OK, true},
		{"x-api-key and another scheme", key, "Basic dXNlcjpwYXNz", OK, false},
		{"x-api-key and another bearer", key, "Bearer other", Ambiguous, false},
		{"wrong x-api-key and another scheme", "wrong", "Basic " + key, Invalid, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := headerWith(HeaderAPIKey, tc.apiKey)
			if tc.apiKey == "" {
				h.Del(HeaderAPIKey)
			}
			if tc.authz != "" {
				h.Set(HeaderAuthorization, tc.authz)
			}
			res, _ := kr.check(h, timeZero)
			if res.Status != tc.want || res.InAuthorization != tc.inAuthz {
				t.Fatalf("%+v, want %v (in Authorization %v)", res, tc.want, tc.inAuthz)
			}
		})
	}
}

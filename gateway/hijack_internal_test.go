package gateway

import (
	"strconv"
	"testing"
)

// TestAppendChunkSize checks the hand-written chunk-size line against
// strconv's hex on every size a frame can have and on the edges beyond.
func TestAppendChunkSize(t *testing.T) {
	sizes := []int{1 << 20, 1<<31 - 1, 1<<62 + 0xabc}
	for n := 0; n <= 1<<16; n++ {
		sizes = append(sizes, n)
	}
	prefix := []byte("x")
	for _, n := range sizes {
		want := "x" + strconv.FormatInt(int64(n), 16) + "\r\n"
		if got := string(appendChunkSize(prefix[:1:1], n)); got != want {
			t.Fatalf("%d: got %q, want %q", n, got, want)
		}
	}
}

package gateway

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/valyala/fasthttp"

	"github.com/vega-gateway/vega-gateway/access"
)

// chunkedReader returns src in pieces cut at the given points.
type chunkedReader struct {
	src  []byte
	cuts []int
}

func (c *chunkedReader) Read(p []byte) (int, error) {
	if len(c.src) == 0 {
		return 0, io.EOF
	}
	n := len(c.src)
	if len(c.cuts) > 0 {
		n = max(1, min(c.cuts[0], n))
		c.cuts = c.cuts[1:]
	}
	n = min(n, len(p))
	copy(p, c.src[:n])
	c.src = c.src[n:]
	return n, nil
}

func allFrames(t *testing.T, f *framer) ([]string, error) {
	t.Helper()
	var out []string
	for {
		fr, err := f.next()
		if err != nil {
			return out, err
		}
		out = append(out, string(fr))
	}
}

func TestFramer(t *testing.T) {
	for _, tc := range []struct {
		name    string
		sse     bool
		in      string
		want    []string
		wantErr error
	}{
		{"ndjson lines", false, "{\"a\":1}\n{\"b\":2}\n", []string{"{\"a\":1}\n", "{\"b\":2}\n"}, io.EOF},
		{"ndjson truncated", false, "{\"a\":1}\n{\"b\":", []string{"{\"a\":1}\n"}, errTruncatedFrame},
		{"sse events", true, "data: {}\n\ndata: [DONE]\n\n", []string{"data: {}\n\n", "data: [DONE]\n\n"}, io.EOF},
		{"sse crlf", true, "data: 1\r\n\r\ndata: 2\r\n\r\n", []string{"data: 1\r\n\r\n", "data: 2\r\n\r\n"}, io.EOF},
		{"sse named events", true, "event: a\ndata: 1\n\n", []string{"event: a\ndata: 1\n\n"}, io.EOF},
		{"sse truncated", true, "data: 1\n\ndata: 2\n", []string{"data: 1\n\n"}, errTruncatedFrame},
		{"big line grows buffer", false, strings.Repeat("x", 10000) + "\n", []string{strings.Repeat("x", 10000) + "\n"}, io.EOF},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, cuts := range [][]int{nil, {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1}, {3, 7, 2}} {
				got, err := allFrames(t, newFramer(&chunkedReader{src: []byte(tc.in), cuts: cuts}, tc.sse, 1<<20))
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("cuts %v: err = %v, want %v", cuts, err, tc.wantErr)
				}
				if strings.Join(got, "|") != strings.Join(tc.want, "|") {
					t.Fatalf("cuts %v: frames %q, want %q", cuts, got, tc.want)
				}
			}
		})
	}
	t.Run("frame over max", func(t *testing.T) {
		_, err := allFrames(t, newFramer(strings.NewReader(strings.Repeat("x", 9000)+"\n"), false, 8192))
		if !errors.Is(err, errFrameTooLarge) {
			t.Fatalf("err = %v", err)
		}
	})
}

// fuzzFramer checks split invariance: any chunking of the same bytes gives
// the same frames and the same end, and no frame is ever partial.
func fuzzFramer(t *testing.T, sse bool, data []byte, cutSeed []byte) {
	cuts := make([]int, len(cutSeed))
	for i, c := range cutSeed {
		cuts[i] = int(c%64) + 1
	}
	whole, errWhole := allFrames(t, newFramer(bytes.NewReader(data), sse, 4096))
	split, errSplit := allFrames(t, newFramer(&chunkedReader{src: data, cuts: cuts}, sse, 4096))
	if !errors.Is(errSplit, errWhole) && !(errors.Is(errWhole, errFrameTooLarge) || errors.Is(errSplit, errFrameTooLarge)) {
		t.Fatalf("errors differ: %v vs %v", errWhole, errSplit)
	}
	if !errors.Is(errWhole, errFrameTooLarge) && !errors.Is(errSplit, errFrameTooLarge) && strings.Join(whole, "\x00") != strings.Join(split, "\x00") {
		t.Fatalf("frames differ:\n%q\n%q", whole, split)
	}
	for _, f := range split {
		if !sse && !strings.HasSuffix(f, "\n") || sse && !strings.HasSuffix(f, "\n\n") && !strings.HasSuffix(f, "\r\n") {
			t.Fatalf("partial frame %q", f)
		}
	}
}

func FuzzNDJSONFramer(f *testing.F) {
	f.Add([]byte("{\"a\":1}\n{\"b\":2}\n"), []byte{1, 2, 3})
	f.Add([]byte("{\"a\":1}\n{\"half"), []byte{5})
	f.Add([]byte("\n\n\n"), []byte{1})
	f.Fuzz(func(t *testing.T, data, cuts []byte) { fuzzFramer(t, false, data, cuts) })
}

func FuzzSSEFramer(f *testing.F) {
	f.Add([]byte("data: {}\n\ndata: [DONE]\n\n"), []byte{1, 2, 3})
	f.Add([]byte("data: 1\r\n\r\ndata: 2\n"), []byte{4})
	f.Add([]byte("event: x\ndata: y\n\n"), []byte{1, 1, 1})
	f.Fuzz(func(t *testing.T, data, cuts []byte) { fuzzFramer(t, true, data, cuts) })
}

func FuzzChatRequest(f *testing.F) {
	for _, s := range []string{`{"prompt":"hi"}`, `{"prompt":`, `[]`, `{"prompt":"a","prompt":"b"}`, `{"PROMPT":"x"}`,
		"{\"prompt\":\"\xff\"}", `{"prompt":"a","history":[{"role":"user","content":"x"}],"options":{"temperature":0}}`,
		`{"prompt":"a"} x`, strings.Repeat("[", 1000)} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		cr, e, ok := parseChatRequest(body, 1024)
		if ok {
			if strings.TrimSpace(cr.Prompt) == "" || len(cr.Prompt) > 1024 {
				t.Fatalf("accepted bad prompt %q", cr.Prompt)
			}
			return
		}
		if e.status != 400 || e.code == "" {
			t.Fatalf("rejection %+v", e)
		}
	})
}

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		path, name string
		manage     bool
		fam        family
	}{
		{"/api/chat", "/api/chat", false, familyNative},
		{"/api/pull", "/api/pull", true, familyNative},
		{"/api/blobs/sha256:abc", "/api/blobs/:digest", true, familyNative},
		{"/v1/chat/completions", "/v1/chat/completions", false, familyOpenAI},
		{"/v1/models/llama3.2", "/v1/models/:model", false, familyOpenAI},
		{"/v1/messages", "/v1/messages", false, familyAnthropic},
		{"/v1/new", "unknown", false, familyOpenAI},
		{"/api/newthing", "unknown", false, familyNative},
		{"/chat", "/chat", false, familyChat},
	} {
		r := classify([]byte(tc.path))
		if r.name != tc.name || r.manage != tc.manage || r.family != tc.fam {
			t.Errorf("%s: %+v", tc.path, r)
		}
	}
}

func FuzzPathPolicy(f *testing.F) {
	for _, s := range []string{"/api/pull", "/api/../api/pull", "/api/%2e%2e/pull", "//api/pull", "/api/./pull", "/API/PULL",
		"/v1/..%2f..%2fapi/pull", "/api/blobs/sha256:x", "/chat", "/v1/models/x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, target string) {
		var u fasthttp.URI
		if u.Parse(nil, []byte(target)) != nil {
			return
		}
		path := u.Path() // what the server routes on: normalised
		r := classify(path)
		if r != classify(append([]byte(nil), path...)) {
			t.Fatal("classification is not a pure function of the path")
		}
		p := string(path)
		isManage := p == "/api/pull" || p == "/api/push" || p == "/api/create" || p == "/api/copy" || p == "/api/delete" || strings.HasPrefix(p, "/api/blobs/")
		if isManage != (r.scope() == access.ModelsManage) {
			t.Fatalf("%q (normalised %q): scope %v", target, p, r.scope())
		}
	})
}

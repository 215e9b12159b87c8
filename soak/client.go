package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/vega-gateway/vega-gateway/ollamatest"
)

// maxLine bounds one NDJSON line or SSE line the client accepts.
const maxLine = 1 << 20

// do sends p and judges what came back.
func (l *load) do(p *plan) result {
	ctx, cancel := context.WithTimeout(context.Background(), p.bound)
	defer cancel()
	req, err := l.request(ctx, p)
	if err != nil {
		return result{outcome: outNoResponse, verdict: vLost, detail: err.Error()}
	}
	resp, err := l.client.Do(req)
	if err != nil {
		d := "transport error: " + err.Error()
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			d = fmt.Sprintf("no response header within %s", p.bound)
		}
		return judge(p, result{outcome: outNoResponse, detail: d})
	}
	defer resp.Body.Close()
	r := l.read(ctx, cancel, p, resp)
	if r.outcome != outAborted && errors.Is(ctx.Err(), context.DeadlineExceeded) {
		r.outcome, r.detail = outHang, fmt.Sprintf("body did not end within %s", p.bound)
	}
	return judge(p, r)
}

func (l *load) request(ctx context.Context, p *plan) (*http.Request, error) {
	var method, path, body string
	opts := ""
	if p.numPredict {
		opts = fmt.Sprintf(`,"options":{"num_predict":%d}`, p.n)
	}
	msgs := `"messages":[{"role":"user","content":"soak test: say the fox line"}]`
	switch p.k.api {
	case apiStream:
		method, path, body = "POST", "/api/chat", `{"model":"llama3.2",`+msgs+`,"stream":true`+opts+`}`
	case apiReply:
		method, path, body = "POST", "/api/chat", `{"model":"llama3.2",`+msgs+`,"stream":false`+opts+`}`
	case apiSSE:
		mt := ""
		if p.numPredict {
			mt = fmt.Sprintf(`,"max_tokens":%d`, p.n)
		}
		method, path, body = "POST", "/v1/chat/completions", `{"model":"llama3.2",`+msgs+`,"stream":true`+mt+`}`
	case apiTags:
		method, path = "GET", "/api/tags"
	}
	req, err := http.NewRequestWithContext(ctx, method, l.url+path, strings.NewReader(body))
	if err != nil {
		return nil, err
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("X-Correlation-ID", p.id)
	if !p.numPredict {
		req.Header.Set(ollamatest.TokensHeader, strconv.Itoa(p.n))
	}
	if p.fault != "" {
		req.Header.Set(ollamatest.FaultHeader, p.fault)
	}
	return req, nil
}

// read classifies the response body.
func (l *load) read(ctx context.Context, cancel context.CancelFunc, p *plan, resp *http.Response) result {
	r := result{status: resp.StatusCode}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		r.outcome, r.code = outHTTPError, errorCode(b)
		r.detail = fmt.Sprintf("status %d body %.200q", resp.StatusCode, b)
		return r
	}
	var src io.Reader = resp.Body
	if p.k.client == clientSlow {
		src = &slowReader{ctx: ctx, r: resp.Body}
	}
	br := bufio.NewReaderSize(src, 64<<10)
	switch p.k.api {
	case apiStream:
		return readNDJSON(br, p, r, cancel)
	case apiSSE:
		return readSSE(br, p, r)
	}
	b, err := io.ReadAll(io.LimitReader(br, 16<<20))
	if err != nil {
		r.outcome, r.detail = outCut, "read body: "+err.Error()
		return r
	}
	if p.k.api == apiTags {
		var m struct {
			Models []json.RawMessage `json:"models"`
		}
		if json.Unmarshal(b, &m) != nil || len(m.Models) == 0 {
			r.outcome, r.detail = outBadBody, fmt.Sprintf("tags body %.200q", b)
			return r
		}
		r.outcome = outOKReply
		return r
	}
	var m struct {
		Message struct{ Content string } `json:"message"`
		Done    bool                     `json:"done"`
	}
	if json.Unmarshal(b, &m) != nil || !m.Done || m.Message.Content != ollamatest.ReplyText(p.n) {
		r.outcome, r.detail = outBadBody, fmt.Sprintf("reply body %.200q", b)
		return r
	}
	r.outcome = outOKReply
	return r
}

// readLine reads one line, bounded by maxLine.
func readLine(br *bufio.Reader) ([]byte, error) {
	var line []byte
	for {
		chunk, err := br.ReadSlice('\n')
		line = append(line, chunk...)
		if len(line) > maxLine {
			return line, errors.New("line too long")
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		return line, err
	}
}

// readNDJSON reads an /api/chat stream: token lines, then one done or error line.
func readNDJSON(br *bufio.Reader, p *plan, r result, cancel context.CancelFunc) result {
	terminal := ""
	for i := 0; i < p.n+100; i++ { // bounded: n tokens, one terminal, slack for duplicates
		line, err := readLine(br)
		if len(bytes.TrimSpace(line)) > 0 {
			if terminal != "" {
				r.outcome, r.detail = outBadBody, fmt.Sprintf("line after the %s line: %.200q", terminal, line)
				return r
			}
			var m struct {
				Message struct{ Content string } `json:"message"`
				Done    bool                     `json:"done"`
				Error   json.RawMessage          `json:"error"`
				Code    string                   `json:"code"`
			}
			if jerr := json.Unmarshal(line, &m); jerr != nil {
				r.outcome, r.detail = outBadBody, fmt.Sprintf("not JSON: %.200q", line)
				return r
			}
			switch {
			case m.Error != nil:
				terminal, r.code = "error", m.Code
				r.detail = fmt.Sprintf("error line %.300s", bytes.TrimSpace(line))
				if m.Done {
					terminal = "done+error"
				}
			case m.Done:
				terminal = "done"
			default:
				r.tokens = append(r.tokens, m.Message.Content)
			}
			if p.k.client == clientAbort && terminal == "" && len(r.tokens) == p.abortAfter {
				cancel()
				r.outcome = outAborted
				return r
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			if terminal == "" {
				r.outcome, r.detail = outCut, "read: "+err.Error()
				return r
			}
			break // the end after a terminal line: judged by the terminal
		}
	}
	switch terminal {
	case "done":
		r.outcome = outOKStream
	case "error":
		r.outcome = outTruncError
	case "done+error":
		r.outcome, r.detail = outBadBody, "a line with both done:true and error"
	default:
		r.outcome, r.detail = outCut, "stream ended with neither done nor an error line"
	}
	return r
}

// readSSE reads a /v1/chat/completions stream: data events, then [DONE] or an error event.
func readSSE(br *bufio.Reader, p *plan, r result) result {
	terminal := ""
	for i := 0; i < 4*(p.n+100); i++ {
		line, err := readLine(br)
		t := bytes.TrimSpace(line)
		if data, ok := bytes.CutPrefix(t, []byte("data:")); ok {
			data = bytes.TrimSpace(data)
			if terminal != "" {
				r.outcome, r.detail = outBadBody, fmt.Sprintf("event after %s: %.200q", terminal, t)
				return r
			}
			if string(data) == "[DONE]" {
				terminal = "done"
			} else {
				var m struct {
					Choices []struct {
						Delta struct{ Content string } `json:"delta"`
					} `json:"choices"`
					Error *struct {
						Code any `json:"code"`
					} `json:"error"`
				}
				if jerr := json.Unmarshal(data, &m); jerr != nil {
					r.outcome, r.detail = outBadBody, fmt.Sprintf("not JSON: %.200q", t)
					return r
				}
				switch {
				case m.Error != nil:
					terminal = "error"
					if m.Error.Code != nil {
						r.code = fmt.Sprint(m.Error.Code)
					}
					r.detail = fmt.Sprintf("error event %.300s", t)
				case len(m.Choices) > 0 && m.Choices[0].Delta.Content != "":
					r.tokens = append(r.tokens, m.Choices[0].Delta.Content)
				}
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			if terminal == "" {
				r.outcome, r.detail = outCut, "read: "+err.Error()
				return r
			}
			break
		}
	}
	switch terminal {
	case "done":
		r.outcome = outOKStream
	case "error":
		r.outcome = outTruncError
	default:
		r.outcome, r.detail = outCut, "stream ended with neither [DONE] nor an error event"
	}
	return r
}

// errorCode reads "code" from a native or OpenAI error body.
func errorCode(b []byte) string {
	var m map[string]any
	if json.Unmarshal(b, &m) != nil {
		return ""
	}
	if c, ok := m["code"].(string); ok {
		return c
	}
	if e, ok := m["error"].(map[string]any); ok {
		if c, ok := e["code"].(string); ok {
			return c
		}
	}
	return ""
}

// slowReader hands out at most 64 bytes every 10 ms.
type slowReader struct {
	ctx context.Context
	r   io.Reader
}

func (s *slowReader) Read(p []byte) (int, error) {
	select {
	case <-s.ctx.Done():
		return 0, s.ctx.Err()
	case <-time.After(10 * time.Millisecond):
	}
	return s.r.Read(p[:min(len(p), 64)])
}

// judge sets the verdict of r against what p injected.
func judge(p *plan, r result) result {
	r.verdict = vPass
	bad := func(v, d string) result {
		r.verdict = v
		if r.detail == "" || d != "" {
			r.detail = strings.TrimSpace(d + " " + r.detail)
		}
		return r
	}
	switch r.outcome {
	case outNoResponse, outHang:
		return bad(vLost, "")
	case outCut, outBadBody:
		return bad(vMisreported, "")
	}
	// Frames must be ReplyToken(0), (1), ... in order; a repeat shows as a
	// token equal to the one before it in the sequence.
	for i, tok := range r.tokens {
		if i < p.n && tok == ollamatest.ReplyToken(i) {
			continue
		}
		if i >= p.n || (i > 0 && tok == ollamatest.ReplyToken(i-1)) {
			return bad(vDuplicated, fmt.Sprintf("frame %d is %q, want %q", i, tok, ollamatest.ReplyToken(i)))
		}
		return bad(vMisreported, fmt.Sprintf("frame %d is %q, want %q (gap or corruption)", i, tok, ollamatest.ReplyToken(i)))
	}
	k := p.k
	if r.outcome != k.want {
		switch {
		case r.outcome == outOKStream || r.outcome == outOKReply:
			return bad(vMisreported, "fault "+p.fault+" reported as complete;")
		case k.want == outOKStream || k.want == outOKReply:
			return bad(vMisreported, "clean request did not end properly: "+r.outcome+";")
		}
		return bad(vWrong, "want "+k.want+", got "+r.outcome+";")
	}
	switch r.outcome {
	case outOKStream:
		if len(r.tokens) != p.n {
			return bad(vMisreported, fmt.Sprintf("complete stream with %d frames, want %d", len(r.tokens), p.n))
		}
	case outHTTPError:
		if r.status != k.status {
			return bad(vWrong, fmt.Sprintf("status %d, want %d;", r.status, k.status))
		}
	case outTruncError:
		if p.frames >= 0 && (len(r.tokens) > p.frames || !k.atMost && len(r.tokens) != p.frames) {
			return bad(vWrong, fmt.Sprintf("%d frames before the error, want %d;", len(r.tokens), p.frames))
		}
	case outAborted:
		if len(r.tokens) != p.abortAfter {
			return bad(vWrong, fmt.Sprintf("aborted after %d frames, want %d", len(r.tokens), p.abortAfter))
		}
	}
	if k.codes != nil && (r.outcome == outHTTPError || r.outcome == outTruncError) {
		ok := false
		for _, c := range k.codes {
			ok = ok || c == r.code
		}
		if !ok {
			return bad(vWrong, fmt.Sprintf("code %q, want one of %q;", r.code, k.codes))
		}
	}
	return r
}

package gateway_test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	ollama "github.com/ollama/ollama/api"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/vega-gateway/vega-gateway/access"
	"github.com/vega-gateway/vega-gateway/ollamatest"
	"github.com/vega-gateway/vega-gateway/pool"
)

// fleetEnv is a gateway on a loopback port in front of several fake
// Ollamas, one pool each, named gpu-a, gpu-b, ...; no health probes or
// catalogue refreshes run.
type fleetEnv struct {
	fakes []*ollamatest.Server
	pools []*pool.Pool
	url   string
	logs  *syncBuffer
}

// startFleetEnv starts one fake per entry of models (the models it
// knows) behind an open gateway that allows model management, unless auth
// says otherwise.
func startFleetEnv(t *testing.T, models [][]string, fake ollamatest.Config, auth *access.Config) *fleetEnv {
	t.Helper()
	a := access.Config{AllowModelManagement: true}
	if auth != nil {
		a = *auth
	}
	r := startRoutingEnv(t, routingOptions{models: models, fake: fake, auth: a, noRun: true})
	e := &fleetEnv{fakes: r.fakes, url: r.url, logs: r.logs}
	for _, b := range r.fleet.Backends() {
		e.pools = append(e.pools, b.Pool)
	}
	return e
}

func (e *fleetEnv) client(t *testing.T) *ollama.Client {
	u, err := url.Parse(e.url)
	if err != nil {
		t.Fatal(err)
	}
	return ollama.NewClient(u, http.DefaultClient)
}

// do sends a request to the gateway with a correlation ID and returns the
// status, headers and body.
func (e *fleetEnv) do(t *testing.T, method, path, body, id string) (int, http.Header, []byte) {
	t.Helper()
	env := &env{t: t, url: e.url}
	return env.do(method, path, body, map[string]string{"X-Correlation-ID": id, "Content-Type": "application/json"})
}

// accessLine waits for the one access line of a correlation ID, or of a
// route when id is empty.
func (e *fleetEnv) accessLine(t *testing.T, id, route string) map[string]any {
	t.Helper()
	var got []map[string]any
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		got = got[:0]
		for _, m := range e.logs.lines(t) {
			if m["message"] == "request" && (id != "" && m["correlation_id"] == id || id == "" && m["route"] == route) {
				got = append(got, m)
			}
		}
		if len(got) > 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if len(got) != 1 {
		t.Fatalf("access lines for %q %q: %v, want exactly one", id, route, got)
	}
	return got[0]
}

// wantFleetLine checks the fields a fleet-wide request logs.
func wantFleetLine(t *testing.T, line map[string]any, status int, outcome string, backends int) {
	t.Helper()
	if line["status"] != float64(status) || line["outcome"] != outcome || line["attempts"] != float64(backends) {
		t.Fatalf("access line %v: want status %d outcome %q", line, status, outcome)
	}
	if _, ok := line["backend"]; ok {
		t.Fatalf("access line %v names a backend; a fleet-wide request has none", line)
	}
}

func sortedUnique(t *testing.T, names []string) []string {
	t.Helper()
	out := slices.Clone(names)
	slices.Sort(out)
	if c := slices.Compact(slices.Clone(out)); len(c) != len(out) {
		t.Fatalf("names %v: a model is listed more than once", names)
	}
	return out
}

func TestFanoutLists(t *testing.T) {
	e := startFleetEnv(t, [][]string{
		{"llama3.2", "qwen2.5:0.5b"},
		{"qwen2.5:0.5b", "nomic-embed-text"},
		{"mistral"},
	}, ollamatest.Config{}, nil)
	ctx := context.Background()
	// Load models on the fakes themselves: llama3.2 and qwen on gpu-a,
	// qwen on gpu-b.
	noStream := false
	for _, load := range []struct {
		fake  int
		model string
	}{{0, "llama3.2"}, {0, "qwen2.5:0.5b"}, {1, "qwen2.5:0.5b"}} {
		u, _ := url.Parse(e.fakes[load.fake].URL())
		err := ollama.NewClient(u, http.DefaultClient).Generate(ctx,
			&ollama.GenerateRequest{Model: load.model, Prompt: "hi", Stream: &noStream}, func(ollama.GenerateResponse) error { return nil })
		if err != nil {
			t.Fatalf("load %s on fake %d: %v", load.model, load.fake, err)
		}
	}
	c := e.client(t)
	oa := openai.NewClient(option.WithBaseURL(e.url+"/v1"), option.WithAPIKey("unused"), option.WithMaxRetries(0))

	tests := []struct {
		name string
		list func(t *testing.T) []string
		want []string
	}{
		{"tags", func(t *testing.T) []string {
			r, err := c.List(ctx)
			if err != nil {
				t.Fatalf("List: %v", err)
			}
			var out []string
			for _, m := range r.Models {
				out = append(out, m.Name)
			}
			return out
		}, []string{"llama3.2:latest", "mistral:latest", "nomic-embed-text:latest", "qwen2.5:0.5b"}},
		{"ps", func(t *testing.T) []string {
			r, err := c.ListRunning(ctx)
			if err != nil {
				t.Fatalf("ListRunning: %v", err)
			}
			var out []string
			for _, m := range r.Models {
				out = append(out, m.Name)
			}
			return out
		}, []string{"llama3.2:latest", "qwen2.5:0.5b"}},
		{"v1 models", func(t *testing.T) []string {
			page, err := oa.Models.List(ctx)
			if err != nil {
				t.Fatalf("Models.List: %v", err)
			}
			var out []string
			for _, m := range page.Data {
				out = append(out, m.ID)
			}
			return out
		}, []string{"llama3.2:latest", "mistral:latest", "nomic-embed-text:latest", "qwen2.5:0.5b"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := sortedUnique(t, tt.list(t)); !slices.Equal(got, tt.want) {
				t.Fatalf("models %v, want %v", got, tt.want)
			}
		})
	}

	t.Run("wire format", func(t *testing.T) {
		for _, tt := range []struct {
			path, ctype string
			keys        []string
		}{
			{"/api/tags", "application/json; charset=utf-8", []string{"models"}},
			{"/api/ps", "application/json; charset=utf-8", []string{"models"}},
			{"/v1/models", "application/json", []string{"data", "object"}},
		} {
			id := "fanout-wire-" + strings.ReplaceAll(tt.path, "/", "-")
			st, h, body := e.do(t, "GET", tt.path, "", id)
			if st != 200 || h.Get("Content-Type") != tt.ctype || h.Get("X-Correlation-ID") != id {
				t.Fatalf("%s: status %d, Content-Type %q, ID %q", tt.path, st, h.Get("Content-Type"), h.Get("X-Correlation-ID"))
			}
			var keys []string
			for k := range decodeJSON(t, body) {
				keys = append(keys, k)
			}
			slices.Sort(keys)
			if !slices.Equal(keys, tt.keys) {
				t.Fatalf("%s: top-level keys %v, want %v", tt.path, keys, tt.keys)
			}
			wantFleetLine(t, e.accessLine(t, id, ""), 200, "ok", 3)
		}
	})
}

func TestFanoutUpstreamHeaders(t *testing.T) {
	auth := &access.Config{Keys: []access.KeyConfig{{Name: "ops", Key: "fanout-secret",
		Scopes: []string{access.ScopeModelsRead, access.ScopeModelsManage}}}}
	e := startFleetEnv(t, [][]string{{"a"}, {"b"}, {"c"}}, ollamatest.Config{}, auth)
	env := &env{t: t, url: e.url}
	const id = "fanout-headers-1"
	st, _, body := env.do("GET", "/api/tags", "", map[string]string{"Authorization": "Bearer fanout-secret", "X-Correlation-ID": id})
	if st != 200 {
		t.Fatalf("status %d: %s", st, body)
	}
	for i, fk := range e.fakes {
		reqs := fk.Requests()
		if len(reqs) != 1 {
			t.Fatalf("fake %d got %d requests, want 1", i, len(reqs))
		}
		h := reqs[0].Header
		if h.Get("Authorization") != "" || h.Get("X-Correlation-ID") != id || h.Get("Traceparent") == "" {
			t.Fatalf("fake %d got headers %v: want the correlation ID and traceparent, no Authorization", i, h)
		}
	}
}

func TestFanoutListWithBackendGone(t *testing.T) {
	tests := []struct {
		name  string
		down  func(e *fleetEnv)
		asked int // backends the list was sent to
	}{
		{"pool closed", func(e *fleetEnv) { e.pools[1].Close() }, 2},
		{"backend unreachable", func(e *fleetEnv) { e.fakes[1].Close() }, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := startFleetEnv(t, [][]string{{"alpha"}, {"beta"}, {"gamma"}}, ollamatest.Config{}, nil)
			tt.down(e)
			r, err := e.client(t).List(context.Background())
			if err != nil {
				t.Fatalf("List: %v", err)
			}
			var got []string
			for _, m := range r.Models {
				got = append(got, m.Name)
			}
			if want := []string{"alpha:latest", "gamma:latest"}; !slices.Equal(sortedUnique(t, got), want) {
				t.Fatalf("models %v, want %v", got, want)
			}
			wantFleetLine(t, e.accessLine(t, "", "/api/tags"), 200, "ok", tt.asked)
		})
	}
	t.Run("every backend gone", func(t *testing.T) {
		e := startFleetEnv(t, [][]string{{"alpha"}, {"beta"}}, ollamatest.Config{}, nil)
		e.fakes[0].Close()
		e.fakes[1].Close()
		st, _, body := e.do(t, "GET", "/v1/models", "", "fanout-none")
		var oe struct {
			Error struct{ Message string } `json:"error"`
		}
		_ = json.Unmarshal(body, &oe)
		if st != 502 || !strings.Contains(oe.Error.Message, "gpu-a") || !strings.Contains(oe.Error.Message, "gpu-b") {
			t.Fatalf("status %d body %s: want 502 in OpenAI's shape naming both backends", st, body)
		}
	})
}

// pullFault is how one case makes gpu-b fail a pull.
type pullFault struct {
	fault   string // ollamatest fault mode on gpu-b
	closed  bool   // gpu-b is not listening at all
	message string // what the error says about gpu-b
}

func (pf pullFault) apply(t *testing.T, e *fleetEnv) {
	if pf.fault != "" {
		if err := e.fakes[1].SetDefaultFault(pf.fault); err != nil {
			t.Fatal(err)
		}
	}
	if pf.closed {
		e.fakes[1].Close()
	}
}

var pullFaults = []struct {
	name string
	pullFault
}{
	{"error status", pullFault{fault: "fail_status=500", message: "gpu-b: llama runner process has terminated"}},
	{"error line mid-stream", pullFault{fault: "error_after=2", message: "gpu-b: " + ollamatest.StreamErrorMessage}},
	{"stream cut", pullFault{fault: "die_after=2", message: "gpu-b: the upstream closed the connection"}},
	{"unreachable", pullFault{closed: true, message: "gpu-b: cannot connect to the upstream"}},
}

func hasModel(fk *ollamatest.Server, name string) bool {
	return slices.Contains(fk.Models(), name)
}

func TestFanoutPull(t *testing.T) {
	const model, want = "newmodel", "newmodel:latest"
	models := [][]string{{"llama3.2"}, {"llama3.2"}, {"llama3.2"}}
	ctx := context.Background()

	t.Run("stock client, every backend", func(t *testing.T) {
		e := startFleetEnv(t, models, ollamatest.Config{}, nil)
		var statuses []string
		var lastLayer ollama.ProgressResponse
		err := e.client(t).Pull(ctx, &ollama.PullRequest{Model: model}, func(p ollama.ProgressResponse) error {
			statuses = append(statuses, p.Status)
			if p.Digest != "" {
				lastLayer = p
			}
			return nil
		})
		if err != nil {
			t.Fatalf("Pull: %v", err)
		}
		for i, fk := range e.fakes {
			if !hasModel(fk, want) {
				t.Fatalf("fake %d models %v: want %s", i, fk.Models(), want)
			}
		}
		for _, s := range []string{"gpu-a: pulling manifest", "gpu-a: success", "gpu-b: success", "gpu-c: success"} {
			if !slices.Contains(statuses, s) {
				t.Fatalf("statuses %q: want %q", statuses, s)
			}
		}
		if statuses[len(statuses)-1] != "success" || slices.Index(statuses, "success") != len(statuses)-1 {
			t.Fatalf("statuses %q: want exactly one plain success, last", statuses)
		}
		// The layer's progress is the fleet's: three times its size, all of it.
		if lastLayer.Total == 0 || lastLayer.Total%3 != 0 || lastLayer.Completed != lastLayer.Total {
			t.Fatalf("last layer line %+v: want completed = total = 3 x the layer size", lastLayer)
		}
		wantFleetLine(t, e.accessLine(t, "", "/api/pull"), 200, "ok", 3)
	})

	for _, tt := range pullFaults {
		t.Run("stock client, "+tt.name, func(t *testing.T) {
			e := startFleetEnv(t, models, ollamatest.Config{}, nil)
			tt.apply(t, e)
			err := e.client(t).Pull(ctx, &ollama.PullRequest{Model: model}, func(ollama.ProgressResponse) error { return nil })
			if err == nil || !strings.Contains(err.Error(), "pull failed on "+tt.message) ||
				!strings.Contains(err.Error(), "(succeeded on gpu-a, gpu-c)") {
				t.Fatalf("Pull error %v: want it to name %q and the backends that succeeded", err, tt.message)
			}
			for _, i := range []int{0, 2} {
				if !hasModel(e.fakes[i], want) {
					t.Fatalf("fake %d models %v: want %s", i, e.fakes[i].Models(), want)
				}
			}
			if !tt.closed && hasModel(e.fakes[1], want) {
				t.Fatalf("the failing fake has %s", want)
			}
			line := e.accessLine(t, "", "/api/pull")
			wantFleetLine(t, line, 200, "upstream_stream_error", 3)
		})
	}

	t.Run("not streamed", func(t *testing.T) {
		tests := []struct {
			name       string
			fault      string
			wantStatus int
			wantBody   string
		}{
			{"every backend", "", 200, `{"status":"success"}`},
			{"gpu-b fails", "fail_status=500", 502, "pull failed on gpu-b: llama runner process has terminated: exit status 2 (succeeded on gpu-a, gpu-c)"},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				e := startFleetEnv(t, models, ollamatest.Config{}, nil)
				pullFault{fault: tt.fault}.apply(t, e)
				st, _, body := e.do(t, "POST", "/api/pull", `{"model":"newmodel","stream":false}`, "fanout-pull-whole")
				if st != tt.wantStatus || !strings.Contains(string(body), tt.wantBody) {
					t.Fatalf("status %d body %s: want %d with %s", st, body, tt.wantStatus, tt.wantBody)
				}
			})
		}
	})

	t.Run("every backend refuses before streaming", func(t *testing.T) {
		e := startFleetEnv(t, models, ollamatest.Config{}, nil)
		st, h, body := e.do(t, "POST", "/api/pull", `{"model":""}`, "fanout-pull-bad")
		if st != 400 || decodeJSON(t, body)["error"] != "invalid model name" || strings.Contains(h.Get("Content-Type"), "ndjson") {
			t.Fatalf("status %d %s body %s: want the backends' own 400", st, h.Get("Content-Type"), body)
		}
	})
}

func TestFanoutCreateStream(t *testing.T) {
	e := startFleetEnv(t, [][]string{{}, {}, {}}, ollamatest.Config{}, nil)
	req, _ := http.NewRequest("POST", e.url+"/api/create", strings.NewReader(`{"model":"made"}`))
	resp, err := testClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/x-ndjson" {
		t.Fatalf("status %d, Content-Type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	var lines []map[string]any
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("line %q is not JSON", sc.Text())
		}
		lines = append(lines, m)
	}
	if len(lines) == 0 || lines[len(lines)-1]["status"] != "success" {
		t.Fatalf("lines %v: want the last to be the one plain success", lines)
	}
	for i, fk := range e.fakes {
		if !hasModel(fk, "made:latest") {
			t.Fatalf("fake %d models %v", i, fk.Models())
		}
	}
}

func TestFanoutPullClientLeaves(t *testing.T) {
	e := startFleetEnv(t, [][]string{{}, {}, {}}, ollamatest.Config{Tokens: 200, TokenDelay: 20 * time.Millisecond}, nil)
	resp, err := http.Post(e.url+"/api/pull", "application/json", strings.NewReader(`{"model":"slow"}`))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bufio.NewReader(resp.Body).ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	line := e.accessLine(t, "", "/api/pull")
	if line["outcome"] != "client_closed" {
		t.Fatalf("access line %v: want outcome client_closed", line)
	}
	for i := range e.fakes {
		waitFor(t, 5*time.Second, "the pull to end on every backend", func() bool {
			return e.fakes[i].Stats().InFlight == 0 && e.pools[i].Stats().InFlight.Load() == 0
		})
		if hasModel(e.fakes[i], "slow:latest") {
			t.Fatalf("fake %d finished a pull whose client left", i)
		}
	}
}

func TestFanoutDelete(t *testing.T) {
	tests := []struct {
		name       string
		models     [][]string
		model      string
		fault      string // on gpu-b
		wantStatus int
		wantError  string
	}{
		{"on every backend", [][]string{{"x"}, {"x"}, {"x"}}, "x", "", 200, ""},
		{"on one backend", [][]string{{"y"}, {"x"}, {}}, "x", "", 200, ""},
		{"on none", [][]string{{"y"}, {"y"}, {}}, "x", "", 404, "model 'x' not found"},
		{"a backend fails", [][]string{{"x"}, {"x"}, {}}, "x", "fail_status=500", 502,
			"delete failed on gpu-b: llama runner process has terminated: exit status 2 (deleted on gpu-a; not found on gpu-c)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := startFleetEnv(t, tt.models, ollamatest.Config{}, nil)
			pullFault{fault: tt.fault}.apply(t, e)
			id := "fanout-delete-" + strings.ReplaceAll(tt.name, " ", "-")
			st, _, body := e.do(t, "DELETE", "/api/delete", `{"model":"`+tt.model+`"}`, id)
			if st != tt.wantStatus {
				t.Fatalf("status %d body %s: want %d", st, body, tt.wantStatus)
			}
			if tt.wantError == "" && len(body) != 0 {
				t.Fatalf("body %q: want none, as Ollama", body)
			}
			if tt.wantError != "" && decodeJSON(t, body)["error"] != tt.wantError {
				t.Fatalf("body %s: want error %q", body, tt.wantError)
			}
			for i, fk := range e.fakes {
				if i != 1 || tt.fault == "" {
					if hasModel(fk, tt.model+":latest") {
						t.Fatalf("fake %d still has %s", i, tt.model)
					}
				}
			}
			outcome := "ok"
			if tt.wantStatus != 200 {
				outcome = "upstream_http_error"
			}
			wantFleetLine(t, e.accessLine(t, id, ""), tt.wantStatus, outcome, len(tt.models))
		})
	}
}

func TestFanoutCopyAndBlobs(t *testing.T) {
	t.Run("copy", func(t *testing.T) {
		e := startFleetEnv(t, [][]string{{"src"}, {"src"}, {"other"}}, ollamatest.Config{}, nil)
		st, _, body := e.do(t, "POST", "/api/copy", `{"source":"src","destination":"dst"}`, "fanout-copy")
		if st != 404 || !strings.Contains(decodeJSON(t, body)["error"].(string), `copy failed on gpu-c: model "src" not found (succeeded on gpu-a, gpu-b)`) {
			t.Fatalf("status %d body %s", st, body)
		}
		if hasModel(e.fakes[0], "dst:latest") != true || hasModel(e.fakes[2], "dst:latest") {
			t.Fatalf("copies: gpu-a %v, gpu-c %v", e.fakes[0].Models(), e.fakes[2].Models())
		}
	})
	t.Run("copy everywhere", func(t *testing.T) {
		e := startFleetEnv(t, [][]string{{"src"}, {"src"}, {"src"}}, ollamatest.Config{}, nil)
		st, _, body := e.do(t, "POST", "/api/copy", `{"source":"src","destination":"dst"}`, "fanout-copy-all")
		if st != 200 {
			t.Fatalf("status %d body %s", st, body)
		}
		for i, fk := range e.fakes {
			if !hasModel(fk, "dst:latest") {
				t.Fatalf("fake %d models %v", i, fk.Models())
			}
		}
	})
	t.Run("blobs", func(t *testing.T) {
		e := startFleetEnv(t, [][]string{{}, {}, {}}, ollamatest.Config{}, nil)
		blob := "hello, fleet"
		sum := sha256.Sum256([]byte(blob))
		path := "/api/blobs/sha256:" + hex.EncodeToString(sum[:])
		steps := []struct {
			method, body string
			want         int
		}{
			{"HEAD", "", 404},
			{"POST", blob, 201},
			{"HEAD", "", 200},
		}
		for _, s := range steps {
			if st, _, body := e.do(t, s.method, path, s.body, "fanout-blob-"+s.method); st != s.want {
				t.Fatalf("%s %s: status %d body %s, want %d", s.method, path, st, body, s.want)
			}
		}
		// A blob only gpu-a has is missing for the fleet.
		other := "only on gpu-a"
		sum = sha256.Sum256([]byte(other))
		path = "/api/blobs/sha256:" + hex.EncodeToString(sum[:])
		resp, err := http.Post(e.fakes[0].URL()+path, "application/octet-stream", strings.NewReader(other))
		if err != nil || resp.StatusCode != 201 {
			t.Fatalf("upload to gpu-a: %v %v", err, resp)
		}
		resp.Body.Close()
		if st, _, _ := e.do(t, "HEAD", path, "", "fanout-blob-partial"); st != 404 {
			t.Fatalf("HEAD of a blob only gpu-a has: %d, want 404", st)
		}
	})
}

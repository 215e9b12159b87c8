package ollamatest

import (
	"encoding/json"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// family is the wire-format family of a route, which decides error shapes.
type family int

const (
	familyNative family = iota
	familyOpenAI
	familyAnthropic
)

// exchange is one request being answered.
type exchange struct {
	s       *Server
	w       http.ResponseWriter
	r       *http.Request
	rec     *record
	body    []byte
	f       fault
	family  family
	param   string // the :digest or :model path parameter
	gone    bool   // the client left before the response was written
	aborted bool   // the fake itself cut the response (hijack)
	lease   *lease // its place in the scheduler, released by Server.finish
}

type handler func(x *exchange)

// routes maps a path to its handlers by method, as Ollama's gin router does.
func (s *Server) routes(path string) (map[string]handler, string) {
	switch path {
	case "/":
		return map[string]handler{"GET": root, "HEAD": root}, ""
	case "/api/version":
		return map[string]handler{"GET": version, "HEAD": version}, ""
	case "/api/tags":
		return map[string]handler{"GET": (*exchange).tags, "HEAD": (*exchange).tags}, ""
	case "/api/ps":
		return map[string]handler{"GET": (*exchange).ps}, ""
	case "/api/show":
		return map[string]handler{"POST": (*exchange).show}, ""
	case "/api/chat":
		return map[string]handler{"POST": (*exchange).chat}, ""
	case "/api/generate":
		return map[string]handler{"POST": (*exchange).generate}, ""
	case "/api/embed":
		return map[string]handler{"POST": (*exchange).embed}, ""
	case "/api/embeddings":
		return map[string]handler{"POST": (*exchange).embeddings}, ""
	case "/api/pull":
		return map[string]handler{"POST": (*exchange).pull}, ""
	case "/api/push":
		return map[string]handler{"POST": (*exchange).push}, ""
	case "/api/create":
		return map[string]handler{"POST": (*exchange).create}, ""
	case "/api/copy":
		return map[string]handler{"POST": (*exchange).copyModel}, ""
	case "/api/delete":
		return map[string]handler{"DELETE": (*exchange).deleteModel}, ""
	case "/v1/chat/completions":
		return map[string]handler{"POST": (*exchange).openAIChat}, ""
	case "/v1/completions":
		return map[string]handler{"POST": (*exchange).openAICompletion}, ""
	case "/v1/embeddings":
		return map[string]handler{"POST": (*exchange).openAIEmbeddings}, ""
	case "/v1/models":
		return map[string]handler{"GET": (*exchange).openAIModels}, ""
	case "/v1/messages":
		return map[string]handler{"POST": (*exchange).anthropicMessages}, ""
	}
	if p, ok := oneSegment(path, "/api/blobs/"); ok {
		return map[string]handler{"HEAD": (*exchange).headBlob, "POST": (*exchange).createBlob}, p
	}
	if p, ok := oneSegment(path, "/v1/models/"); ok {
		return map[string]handler{"GET": (*exchange).openAIModel}, p
	}
	return nil, ""
}

// oneSegment matches prefix + one non-empty path segment (gin's :param).
func oneSegment(path, prefix string) (string, bool) {
	p, ok := strings.CutPrefix(path, prefix)
	return p, ok && p != "" && !strings.Contains(p, "/")
}

func familyOf(path string) family {
	switch {
	case path == "/v1/messages":
		return familyAnthropic
	case strings.HasPrefix(path, "/v1/"):
		return familyOpenAI
	}
	return familyNative
}

// serveHTTP records the request, then checks Host, routes, applies the fault
// and runs the route.
func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	x := &exchange{s: s, w: w, r: r, rec: s.begin(r), family: familyOf(r.URL.Path)}
	defer s.finish(x)
	// Blob uploads may be many GB: their handler streams the body.
	if !(r.Method == http.MethodPost && strings.HasPrefix(r.URL.Path, "/api/blobs/")) {
		x.body = s.readBody(x)
	}
	if origin := r.Header.Get("Origin"); origin != "" && origin != "http://"+r.Host && origin != "https://"+r.Host {
		// Ollama's CORS middleware runs first (server/routes.go: gin-contrib/
		// cors over envconfig.AllowedOrigins): an origin it does not know is
		// refused with no body; a known one is answered, preflights at once.
		if !allowedOrigin(origin) {
			w.WriteHeader(http.StatusForbidden)
			return
		}
		w.Header().Set("Access-Control-Allow-Origin", origin)
		if r.Method == http.MethodOptions {
			w.Header().Set("Access-Control-Allow-Methods", "GET,POST,PUT,PATCH,DELETE,HEAD,OPTIONS")
			w.Header().Set("Access-Control-Allow-Headers", "Authorization,Content-Type,User-Agent,Accept,X-Requested-With")
			w.Header().Set("Access-Control-Max-Age", "43200")
			w.WriteHeader(http.StatusNoContent)
			return
		}
	}
	if s.checkHost && !allowedHost(r.Host) {
		w.WriteHeader(http.StatusForbidden) // gin's AbortWithStatus: no body
		return
	}
	if r.Method == http.MethodOptions { // allowedHostsMiddleware answers preflights
		w.WriteHeader(http.StatusNoContent)
		return
	}
	methods, param := s.routes(r.URL.Path)
	if methods == nil {
		x.text(http.StatusNotFound, "404 page not found")
		return
	}
	h := methods[r.Method]
	if h == nil {
		allow := make([]string, 0, len(methods))
		for m := range methods {
			allow = append(allow, m)
		}
		slices.Sort(allow)
		w.Header().Set("Allow", strings.Join(allow, ", "))
		x.text(http.StatusMethodNotAllowed, "405 method not allowed")
		return
	}
	x.param = param
	f, err := s.faultFor(r, x.body)
	if err != nil {
		x.fail(http.StatusBadRequest, err.Error())
		return
	}
	x.f = f
	if f.spec != "" {
		s.setFault(x.rec, f.spec)
	}
	if !x.preFault(r.URL.Path == "/api/version") {
		return
	}
	h(x)
}

// allowedOrigin mirrors Ollama's default OLLAMA_ORIGINS (envconfig.
// AllowedOrigins): localhost, 127.0.0.1 and 0.0.0.0 over http or https on
// any port, and the app://, file://, tauri://, vscode-webview:// and
// vscode-file:// schemes.
func allowedOrigin(origin string) bool {
	for _, host := range []string{"localhost", "127.0.0.1", "0.0.0.0"} {
		for _, scheme := range []string{"http://", "https://"} {
			if origin == scheme+host || strings.HasPrefix(origin, scheme+host+":") {
				return true
			}
		}
	}
	for _, scheme := range []string{"app://", "file://", "tauri://", "vscode-webview://", "vscode-file://"} {
		if strings.HasPrefix(origin, scheme) {
			return true
		}
	}
	return false
}

// allowedHost mirrors Ollama's allowedHostsMiddleware on a loopback
// listener: local names and loopback, private and unspecified addresses
// pass (any port). Unlike Ollama, the machine's own hostname and interface
// addresses do not, so tests behave the same everywhere.
func allowedHost(hostport string) bool {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		host = hostport
	}
	host = strings.ToLower(strings.TrimSuffix(strings.TrimPrefix(host, "["), "]"))
	if a, err := netip.ParseAddr(host); err == nil {
		return a.IsLoopback() || a.IsPrivate() || a.IsUnspecified()
	}
	if host == "" || host == "localhost" {
		return true
	}
	for _, tld := range []string{".localhost", ".local", ".internal"} {
		if strings.HasSuffix(host, tld) {
			return true
		}
	}
	return false
}

func root(x *exchange) { x.text(http.StatusOK, "Ollama is running") }

func version(x *exchange) { x.json(http.StatusOK, map[string]string{"version": Version}) }

// text writes a text/plain body, as gin's c.String and its 404/405 pages do.
func (x *exchange) text(status int, body string) {
	if status == http.StatusOK {
		x.w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	} else {
		x.w.Header().Set("Content-Type", "text/plain")
	}
	x.w.WriteHeader(status)
	x.write([]byte(body))
}

// json writes v as gin's c.JSON does (no trailing newline) on native routes
// and as Ollama's compatibility writers do (json.Encoder) on /v1 routes.
func (x *exchange) json(status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // only the fake's own types are marshalled
	}
	ct := "application/json; charset=utf-8"
	if x.family != familyNative {
		b, ct = append(b, '\n'), "application/json"
	}
	x.w.Header().Set("Content-Type", ct)
	x.w.WriteHeader(status)
	x.write(b)
}

// fail writes an error in the shape of the route's family.
func (x *exchange) fail(status int, msg string) {
	switch x.family {
	case familyOpenAI:
		typ := "api_error"
		switch status {
		case http.StatusBadRequest:
			typ = "invalid_request_error"
		case http.StatusNotFound:
			typ = "not_found_error"
		}
		x.json(status, oaErrorResponse{oaError{Message: msg, Type: typ}})
	case familyAnthropic:
		x.json(status, anthropicError(status, msg, x.s.nextID("req_")))
	default:
		x.json(status, map[string]string{"error": msg})
	}
}

// write writes b and notes a client that went away.
func (x *exchange) write(b []byte) bool {
	if _, err := x.w.Write(b); err != nil {
		x.clientGone()
		return false
	}
	return true
}

// flush sends what was written so far.
func (x *exchange) flush() bool {
	if err := http.NewResponseController(x.w).Flush(); err != nil {
		x.clientGone()
		return false
	}
	return true
}

// clientGone marks the client as gone unless the server is closing.
func (x *exchange) clientGone() {
	if !x.s.closed.Load() {
		x.gone = true
	}
}

// pause waits d and reports false if the client left or the server closed.
func (x *exchange) pause(d time.Duration) bool {
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-x.r.Context().Done():
		x.clientGone()
	case <-x.s.done:
	}
	return false
}

// waitGone blocks until the client leaves or the server closes.
func (x *exchange) waitGone() {
	select {
	case <-x.r.Context().Done():
		x.clientGone()
	case <-x.s.done:
	}
}

// waitGate waits for a ReleaseFrame; after GateTimeout it aborts the stream.
func (x *exchange) waitGate() bool {
	t := time.NewTimer(GateTimeout)
	defer t.Stop()
	select {
	case <-x.s.gate:
		return true
	case <-t.C:
		x.abort(false)
	case <-x.r.Context().Done():
		x.clientGone()
	case <-x.s.done:
	}
	return false
}

package admin

import (
	"embed"

	"github.com/valyala/fasthttp"
)

// assets is the status page: plain HTML, CSS and JavaScript, embedded so
// the page works without network access (no CDN).
//
//go:embed assets/index.html assets/app.css assets/app.js
var assets embed.FS

// pageFiles maps the page's URL paths to embedded files and content types.
var pageFiles = map[string][2]string{
	"/admin":         {"assets/index.html", "text/html; charset=utf-8"},
	"/admin/":        {"assets/index.html", "text/html; charset=utf-8"},
	"/admin/app.js":  {"assets/app.js", "text/javascript; charset=utf-8"},
	"/admin/app.css": {"assets/app.css", "text/css; charset=utf-8"},
}

// pageCSP allows only the page's own script, style and JSON endpoints: no
// inline script, no third-party origin, no framing.
const pageCSP = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// servePage serves the status page; it reports whether path was one of its.
// The page holds no data: it reads the JSON routes with the admin key the
// operator types in, sent as X-API-Key.
func (s *Server) servePage(ctx *fasthttp.RequestCtx, path string) bool {
	f, ok := pageFiles[path]
	if !ok {
		return false
	}
	b, err := assets.ReadFile(f[0])
	if err != nil { // cannot happen: the files are embedded
		return false
	}
	h := &ctx.Response.Header
	h.Set("Content-Security-Policy", pageCSP)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	ctx.SetStatusCode(fasthttp.StatusOK)
	h.SetContentType(f[1])
	if !ctx.IsHead() {
		ctx.SetBody(b)
	}
	return true
}

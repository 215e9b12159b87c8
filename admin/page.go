package admin

import "github.com/valyala/fasthttp"

// servePage serves the status page; it reports whether path was one of its.
func (s *Server) servePage(ctx *fasthttp.RequestCtx, path string) bool {
	return false
}

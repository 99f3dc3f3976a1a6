package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"time"

	"chainmend/responses"
)

// Route classes of the pass-through metrics. They are a closed set so that no path, id or
// other client-chosen string ever becomes a label value.
const (
	routeModels               = "models"
	routeResponsesCompact     = "responses_compact"
	routeResponsesGet         = "responses_get"
	routeResponsesDelete      = "responses_delete"
	routeResponsesCancel      = "responses_cancel"
	routeResponsesInputItems  = "responses_input_items"
	routeResponsesInputTokens = "responses_input_tokens"
	routeChatCompletions      = "chat_completions"
	routeEmbeddings           = "embeddings"
	routeFiles                = "files"
	routeOther                = "other"
)

// statusClientGone is the code counted when the client left before the upstream answered.
// Nothing is sent then; 499 is the code proxies conventionally log for it, and it keeps
// these requests apart from the upstream's own failures.
const statusClientGone = 499

// forwardingHeaders are the headers ReverseProxy strips before Rewrite; the pass-through
// puts back the client's own values (see passthrough).
var forwardingHeaders = []string{"Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"}

// passCall is one request's route class and the status it was answered with, which the
// proxy's hooks learn, for its metrics.
type passCall struct {
	route  string
	status int
}

type passCallKey struct{}

// passthrough returns the handler of every request the gateway does not answer itself: a
// reverse proxy to the upstream's API root (see apiRoot and apiPath for the mapping).
// Method, path, query, headers other than hop-by-hop ones, status and bodies go through
// unchanged and streamed in both directions; the client's cancellation cancels the
// upstream request; WebSocket and other upgrades are relayed. Requests go through the
// gateway's HTTP client transport, so its settings (and tests' transports) apply.
func (s *Server) passthrough() http.Handler {
	root, err := apiRoot(s.httpURL)
	if err != nil {
		// New validated the upstream URL, so this is a bug: refuse rather than guess.
		return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			httpError(w, responses.ErrorBody{Status: http.StatusInternalServerError, Type: "server_error",
				Code: "passthrough_misconfigured", Message: err.Error()})
		})
	}
	transport := s.client.Transport
	if transport == nil {
		transport = http.DefaultTransport
	}
	rp := &httputil.ReverseProxy{
		Rewrite:   rewriteTo(root),
		Transport: transport,
		// Every write is flushed at once: SSE events and any other streamed body reach the
		// client as they arrive, whatever their content type; a body of known length is
		// copied in 32 KiB pieces, so the cost is one flush per piece.
		FlushInterval: -1,
		ModifyResponse: func(res *http.Response) error {
			if c, ok := res.Request.Context().Value(passCallKey{}).(*passCall); ok {
				c.status = res.StatusCode
			}
			return nil
		},
		ErrorHandler: s.passthroughError,
		ErrorLog:     slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		call := &passCall{route: routeClass(r.Method, r.URL.Path)}
		defer func() {
			// Deferred so that a stream the client abandoned, which ends the handler with
			// http.ErrAbortHandler, is counted too.
			s.metrics.passRequests.WithLabelValues(call.route, strconv.Itoa(call.status)).Inc()
			s.metrics.passSeconds.WithLabelValues(call.route).Observe(time.Since(start).Seconds())
		}()
		// HTTP/1 servers stop reading the request body once the response has begun; an
		// upstream that answers while still reading the body must see all of it.
		_ = http.NewResponseController(w).EnableFullDuplex()
		rp.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), passCallKey{}, call)))
	})
}

// rewriteTo returns the pass-through's Rewrite: the request goes to the API root with its
// path relative to it (apiPath), its query and its end-to-end headers unchanged, and the
// upstream's Host.
func rewriteTo(root *url.URL) func(*httputil.ProxyRequest) {
	return func(pr *httputil.ProxyRequest) {
		// ReverseProxy drops query parameters it cannot parse; the upstream, not the
		// gateway, interprets the query, so it goes as the client wrote it.
		pr.Out.URL.RawQuery = pr.In.URL.RawQuery
		// The gateway adds no forwarding headers of its own (it stands in for the API base
		// URL, and its view of the client is of no use upstream), but the client's own are
		// end-to-end headers like any other, and the create path forwards them too.
		for _, h := range forwardingHeaders {
			if v, ok := pr.In.Header[h]; ok {
				pr.Out.Header[h] = v
			}
		}
		pr.Out.URL.Path, pr.Out.URL.RawPath = apiPath(pr.In.URL)
		// SetURL also empties Out.Host, so the Host header is the upstream's.
		pr.SetURL(root)
	}
}

// passthroughError answers a request the upstream did not answer: a client that left gets
// nothing, a timeout 504, any other failure 502, both with an OpenAI-style error body.
func (s *Server) passthroughError(w http.ResponseWriter, r *http.Request, err error) {
	call, ok := r.Context().Value(passCallKey{}).(*passCall)
	if !ok {
		call = &passCall{route: routeClass(r.Method, r.URL.Path)}
	}
	if r.Context().Err() != nil {
		s.log.Debug("passthrough: client left", "route", call.route, "err", err)
		call.status = statusClientGone
		return
	}
	e := responses.ErrorBody{Status: http.StatusBadGateway, Type: "server_error", Code: "upstream_unreachable",
		Message: "the upstream request failed: " + err.Error()}
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		e.Status, e.Code, e.Message = http.StatusGatewayTimeout, "upstream_timeout", "the upstream did not answer in time"
	}
	s.log.Warn("passthrough: upstream request failed", "route", call.route, "status", e.Status, "err", err)
	call.status = e.Status
	httpError(w, e)
}

// createOr routes the Responses create endpoints (POST, or a WebSocket upgrade) to the
// gateway's own handler and every other request on the same path to pass.
func (s *Server) createOr(pass http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The same test serveResponses applies, so that every request it would accept
		// still reaches it.
		if r.Method == http.MethodPost || strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
			s.serveResponses(w, r)
			return
		}
		pass.ServeHTTP(w, r)
	})
}

// getOnly answers the methods other than GET and HEAD on the gateway's own GET endpoints, so
// that they are refused here rather than passed through to the upstream.
func getOnly(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Allow", "GET, HEAD")
	http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
}

// apiRoot returns the URL of the upstream's API root, the URL the client's /v1 stands for,
// from the upstream Responses endpoint (Endpoints' HTTP URL): that URL without its final
// /responses. So the client's /v1/models goes to https://api.openai.com/v1/models for the
// base https://api.openai.com/v1 (or https://api.openai.com, whose endpoint is
// .../v1/responses), to https://host/openai/v1/models for https://host/openai/v1, and to
// https://host/custom/models for the base https://host/custom/responses, the same place
// relative to the Responses endpoint as on the direct API. A query on the base is kept and
// goes before the client's.
func apiRoot(endpoint string) (*url.URL, error) {
	u, err := url.Parse(endpoint)
	if err != nil {
		return nil, fmt.Errorf("upstream api root: %w", err)
	}
	if !strings.HasSuffix(u.Path, "/responses") {
		return nil, fmt.Errorf("upstream api root: endpoint %q does not end in /responses", endpoint)
	}
	u.Path = strings.TrimSuffix(u.Path, "/responses")
	if u.RawPath != "" {
		u.RawPath = strings.TrimSuffix(u.RawPath, "/responses")
	}
	return u, nil
}

// apiPath returns a client path relative to the API root: without its leading /v1, the
// prefix clients put before every endpoint. A path without it is relative already, as the
// gateway's /responses stands for /v1/responses: a client whose base URL is the gateway's
// root reaches /models and /responses/compact as well as /responses.
func apiPath(u *url.URL) (path, rawPath string) {
	p, raw := u.Path, u.RawPath
	if p != "/v1" && !strings.HasPrefix(p, "/v1/") {
		return p, raw
	}
	p = p[len("/v1"):]
	// RawPath spells the same path with other escapes; when it spells the prefix otherwise
	// (/%761/, /v1%2F), the default escaping of the rest is as good.
	if raw == "/v1" || strings.HasPrefix(raw, "/v1/") {
		raw = raw[len("/v1"):]
	} else {
		raw = ""
	}
	return p, raw
}

// routeClass names the endpoint of SPEC §10 a request is for, or routeOther; a path's ids
// never reach the result. Classes take subpaths: models covers /v1/models/{model}, files
// covers /v1/files/{id}/content, chat_completions the stored completions under it.
func routeClass(method, path string) string {
	p, _ := apiPath(&url.URL{Path: path})
	seg := strings.Split(strings.Trim(p, "/"), "/")
	switch seg[0] {
	case "models":
		return routeModels
	case "files":
		return routeFiles
	case "embeddings":
		if len(seg) == 1 {
			return routeEmbeddings
		}
	case "chat":
		if len(seg) > 1 && seg[1] == "completions" {
			return routeChatCompletions
		}
	case "responses":
		return responsesRoute(method, seg[1:])
	}
	return routeOther
}

// responsesRoute classes a request under /v1/responses/ by method and the segments after it.
func responsesRoute(method string, seg []string) string {
	switch {
	case len(seg) == 1 && seg[0] == "compact":
		if method == http.MethodPost {
			return routeResponsesCompact
		}
	case len(seg) == 1 && seg[0] == "input_tokens":
		if method == http.MethodPost {
			return routeResponsesInputTokens
		}
	case len(seg) == 1 && seg[0] != "" && method == http.MethodGet:
		return routeResponsesGet
	case len(seg) == 1 && seg[0] != "" && method == http.MethodDelete:
		return routeResponsesDelete
	case len(seg) == 2 && seg[1] == "cancel" && method == http.MethodPost:
		return routeResponsesCancel
	case len(seg) == 2 && seg[1] == "input_items" && method == http.MethodGet:
		return routeResponsesInputItems
	}
	return routeOther
}

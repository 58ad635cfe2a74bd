package tether

import (
	"context"
	"crypto/subtle"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sync"
	"time"

	"github.com/tetherws/tether/internal/frame"
)

// In a cluster, a request for a session this instance does not hold (a
// WebSocket resume, a polling open, poll or send) asks the directory where
// the session is, and is forwarded to the owner over HTTP, the WebSocket
// upgrade included. A forwarded request carries a mark and is never
// forwarded again: one hop at most. A mark a client sets itself only costs
// it a retryable answer where a forward would have served it.
//
// Directory lookups are bounded: handshakes (a resume, on either
// transport) ask the directory every time, since a session may have just
// been handed over; polls and sends, which come many times a second on a
// busy session behind a balancer that does not stick, reuse a recent
// answer. Negative answers are remembered a moment too, and lookups are
// rate limited, so that requests for made-up session ids cannot turn into
// a store round trip each.

// headerForwarded marks a request one instance forwarded to another, with
// the forwarding instance's id.
const headerForwarded = "Tether-Forwarded"

// Lookup bounds.
const (
	// lookupRate and lookupBurst bound the directory lookups an instance
	// makes for requests it does not hold, per second: a crowd of clients
	// of a crashed instance comes back within seconds, and is served; a
	// flood of made-up ids is not passed on to the store beyond this.
	lookupRate  = 1000
	lookupBurst = 1000
	// negativeTTL is how long an answer that a session is gone is reused.
	negativeTTL = 2 * time.Second
	// maxRoutes bounds the answers remembered.
	maxRoutes = 16384
)

// errLookupLimit is a lookup refused by the rate limit.
var errLookupLimit = errors.New("tether: too many directory lookups")

// lookup asks the directory about a session, within the rate limit.
func (cl *handlerCluster) lookup(r *http.Request, id [16]byte) (Owner, error) {
	cl.mu.Lock()
	ok := cl.lookups.take(time.Now())
	cl.mu.Unlock()
	if !ok {
		return Owner{}, errLookupLimit
	}
	ctx, cancel := context.WithTimeout(r.Context(), lookupWait)
	defer cancel()
	return cl.c.Lookup(ctx, SessionID(id))
}

// routeResume handles a handshake, WebSocket or polling open, that resumes
// a session this instance does not hold. It reports whether it answered
// the request (forwarded it, or refused it for now). When it did not, the
// Handler goes on as for any resume: the session is now held here (taken
// over from a Shutdown), or a tombstone says how it ended, or the client
// gets a new session and is told the old one was lost.
func (h *Handler) routeResume(w http.ResponseWriter, r *http.Request, rr resumeReq) bool {
	cl := h.cl
	if h.holds(rr.id) || h.hasTombstone(rr.id, rr.secret) {
		return false
	}
	marked := r.Header.Get(headerForwarded) != ""
	o, err := cl.lookup(r, rr.id)
	if err != nil {
		h.lookupFailed(w, r, rr.id, marked, time.Now())
		return true
	}
	switch o.Status {
	case OwnerRemote:
		cl.routes.put(rr.id, route{url: o.URL}, time.Now(), cl.c.RenewInterval())
		if marked {
			h.refuseRetry(w, r, "tether: session is owned by another instance", false)
			return true
		}
		cl.fwd.forward(w, r, rr.id, o.URL)
		return true
	case OwnerParked, OwnerHere:
		return h.takeOver(w, r, rr, o, marked)
	case OwnerEnded:
		if code, reason, ok := decodeNote(o.Note, rr.secret); ok {
			h.mu.Lock()
			h.tombs.add(rr.id, tombstone{secret: rr.secret, code: code, reason: reason, until: time.Now().Add(h.opts.sessionTTL)}, h.opts.maxSessions)
			h.mu.Unlock()
		}
		return false
	case OwnerRecovering:
		h.refuseRetry(w, r, "tether: session directory recovering", true)
		return true
	}
	return false // dead or unknown: lost
}

// lookupFailed answers a request whose directory lookup failed: the owner
// the directory last named is the best guess, and a wrong one answers "try
// again"; without one, or for a request already forwarded, the client is
// told to try again.
func (h *Handler) lookupFailed(w http.ResponseWriter, r *http.Request, id [16]byte, marked bool, now time.Time) {
	if url, ok := h.cl.routes.stale(id, now); ok && !marked {
		h.cl.fwd.forward(w, r, id, url)
		return
	}
	h.refuseRetry(w, r, "tether: session directory unavailable", true)
}

// takeOver takes a parked session and makes it this instance's, so that
// the request resumes it here. Shutting down, it answers "try again" rather
// than take anything.
func (h *Handler) takeOver(w http.ResponseWriter, r *http.Request, rr resumeReq, o Owner, marked bool) bool {
	cl := h.cl
	if h.isStopping() {
		h.refuseRetry(w, r, "tether: server shutting down", false)
		return true
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), lookupWait)
	defer cancel()
	lease, state, err := cl.c.TakeParked(ctx, SessionID(rr.id))
	switch {
	case errors.Is(err, ErrNotParked) && o.Status == OwnerHere:
		// A record of ours for a session not held: nothing to resume.
		cl.mu.Lock()
		cl.queueLocked(release{lease: Lease{ID: SessionID(rr.id), Epoch: o.Epoch}})
		cl.mu.Unlock()
		return false
	case errors.Is(err, ErrNotParked):
		// Another instance took it first: it is there now.
		o2, err := cl.lookup(r, rr.id)
		if err == nil && o2.Status == OwnerRemote && !marked {
			cl.fwd.forward(w, r, rr.id, o2.URL)
			return true
		}
		h.refuseRetry(w, r, "tether: session is moving; try again", true)
		return true
	case err != nil:
		h.refuseRetry(w, r, "tether: session directory unavailable", true)
		return true
	}
	ps, err := decodeParked(state, rr.id, h.opts.handoffMax)
	if err != nil {
		h.log.Error("cluster: parked session state refused; the session is lost",
			slog.String("session", SessionID(rr.id).String()), slog.Any("err", err))
		cl.mu.Lock()
		cl.queueLocked(release{lease: lease})
		cl.mu.Unlock()
		return false
	}
	if subtle.ConstantTimeCompare(ps.secret[:], rr.secret[:]) != 1 {
		// The id is no secret (polling carries it in the URL): a resume
		// that cannot show the session's secret must not take it, nor
		// run serve under the caller's request. Put it back, and answer
		// as for a session unknown here.
		if perr := cl.c.Park(ctx, lease, state, h.opts.sessionTTL); perr != nil {
			h.log.Warn("cluster: could not give back a session a resume without its secret took", slog.Any("err", perr))
		}
		return false
	}
	if err := h.adopt(r, ps, lease); err != nil {
		// No room here: give it back for another instance to take.
		if perr := cl.c.Park(ctx, lease, state, h.opts.sessionTTL); perr != nil {
			h.log.Warn("cluster: could not give back a session taken over", slog.Any("err", perr))
		}
		var rf *refusal
		errors.As(err, &rf)
		w.Header().Set("Retry-After", retryAfterSeconds)
		h.refuse(w, r, rf.status, rf.Error())
		return true
	}
	return false
}

// routePoll handles a poll or a send of a session this instance does not
// hold, and reports whether it answered the request.
func (h *Handler) routePoll(w http.ResponseWriter, r *http.Request, req pollRequest) bool {
	cl := h.cl
	if h.hasTombstone(req.id, req.secret) {
		return false
	}
	marked := r.Header.Get(headerForwarded) != ""
	now := time.Now()
	rt, fresh := cl.routes.get(req.id, now)
	if fresh && !marked {
		switch {
		case rt.url != "":
			cl.fwd.forward(w, r, req.id, rt.url)
			return true
		case rt.gone:
			return false
		}
	}
	o, err := cl.lookup(r, req.id)
	if err != nil {
		h.lookupFailed(w, r, req.id, marked, now)
		return true
	}
	switch o.Status {
	case OwnerRemote:
		cl.routes.put(req.id, route{url: o.URL}, now, cl.c.RenewInterval())
		if marked {
			h.refuseRetry(w, r, "tether: session is owned by another instance", false)
			return true
		}
		cl.fwd.forward(w, r, req.id, o.URL)
		return true
	case OwnerParked, OwnerHere:
		// A handshake takes it over: the client opens again.
		h.refuse(w, r, http.StatusConflict, "tether: session is not on polling here; open again")
		return true
	case OwnerEnded:
		if code, reason, ok := decodeNote(o.Note, req.secret); ok {
			writeFrames(w, []frame.Frame{{Kind: frame.Close, Code: uint16(code), Reason: reason}})
			return true
		}
	case OwnerRecovering:
		h.refuseRetry(w, r, "tether: session directory recovering", true)
		return true
	}
	cl.routes.put(req.id, route{gone: true}, now, negativeTTL)
	return false
}

// holds reports whether the Handler holds the session id.
func (h *Handler) holds(id [16]byte) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.sessions[id] != nil
}

// hasTombstone reports whether a tombstone says how the session id ended,
// to the holder of secret.
func (h *Handler) hasTombstone(id, secret [16]byte) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	_, ok := h.tombs.find(id, secret, time.Now())
	return ok
}

func (h *Handler) isStopping() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.stopping || h.closed
}

// forwarder sends requests to the instances that hold their sessions.
type forwarder struct {
	cl    *handlerCluster
	proxy *httputil.ReverseProxy
	tr    *http.Transport

	// ctx ends when the Handler closes: the WebSocket links it carries to
	// other instances end with it.
	ctx    context.Context
	cancel context.CancelFunc

	mu      sync.Mutex
	targets map[string]*url.URL // parsed owner URLs
}

type forwardKey struct{}

// forwardTo is what a forwarded request carries to the proxy's hooks.
type forwardTo struct {
	id     [16]byte
	target *url.URL
}

func newForwarder(cl *handlerCluster) *forwarder {
	f := &forwarder{cl: cl, targets: make(map[string]*url.URL)}
	f.ctx, f.cancel = context.WithCancel(context.Background())
	f.tr = &http.Transport{
		// Instances reach each other directly: the environment's proxy
		// settings are for the way out.
		Proxy:                 nil,
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout:   5 * time.Second,
		MaxIdleConns:          256,
		MaxIdleConnsPerHost:   64,
		IdleConnTimeout:       90 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
	f.proxy = &httputil.ReverseProxy{
		Rewrite:        f.rewrite,
		Transport:      f.tr,
		FlushInterval:  -1, // a poll's answer goes out at once
		ModifyResponse: f.modifyResponse,
		ErrorHandler:   f.errorHandler,
		ErrorLog:       nil,
	}
	return f
}

// forward sends r to the owner at rawURL, one hop.
func (f *forwarder) forward(w http.ResponseWriter, r *http.Request, id [16]byte, rawURL string) {
	h := f.cl.h
	target, err := f.target(rawURL)
	if err != nil {
		f.cl.routes.drop(id)
		h.log.Error("cluster: owner URL refused", slog.Any("err", err))
		h.refuseRetry(w, r, "tether: session owner unreachable", true)
		return
	}
	// Counted with the Handler's goroutines, so that Shutdown and Close
	// wait for it; once they have begun to wait, nothing more may join
	// (sync.WaitGroup), and the client is told to try again.
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		h.refuseRetry(w, r, "tether: server shutting down", true)
		return
	}
	h.wg.Add(1)
	h.mu.Unlock()
	defer h.wg.Done()
	ctx, cancel := context.WithCancel(context.WithValue(r.Context(), forwardKey{}, &forwardTo{id: id, target: target}))
	defer cancel()
	stop := context.AfterFunc(f.ctx, cancel)
	defer stop()
	h.stats.forwarded.Add(1)
	// The owner's answer says it is a tether Handler's.
	w.Header().Del(headerProtocol)
	f.proxy.ServeHTTP(w, r.WithContext(ctx))
}

// target parses an owner's URL, once.
func (f *forwarder) target(raw string) (*url.URL, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if u, ok := f.targets[raw]; ok {
		return u, nil
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil {
		return nil, errors.New("tether: owner URL is not an http(s) URL with a host")
	}
	if len(f.targets) >= maxRoutes {
		clear(f.targets)
	}
	f.targets[raw] = u
	return u, nil
}

// rewrite points the request at the owner: the owner's URL with the
// request's query, the Host the client asked for (Origin checks compare
// with it), the X-Forwarded headers, and the mark.
func (f *forwarder) rewrite(pr *httputil.ProxyRequest) {
	to := pr.In.Context().Value(forwardKey{}).(*forwardTo)
	out := pr.Out
	out.URL.Scheme, out.URL.Host = to.target.Scheme, to.target.Host
	out.URL.Path, out.URL.RawPath = to.target.Path, to.target.RawPath
	out.URL.RawQuery = pr.In.URL.RawQuery
	out.Host = pr.In.Host
	if v := pr.In.Header.Values("X-Forwarded-For"); len(v) > 0 {
		out.Header["X-Forwarded-For"] = append([]string(nil), v...)
	}
	pr.SetXForwarded()
	out.Header.Set(headerForwarded, f.cl.c.ID())
}

// modifyResponse forgets the route of a session whose owner did not serve
// the request: it may have moved.
func (f *forwarder) modifyResponse(resp *http.Response) error {
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusSwitchingProtocols {
		if to, ok := resp.Request.Context().Value(forwardKey{}).(*forwardTo); ok {
			f.cl.routes.drop(to.id)
		}
	}
	return nil
}

// errorHandler answers a request whose owner could not be reached: it may
// have just shut down or crashed; the directory will say which.
func (f *forwarder) errorHandler(w http.ResponseWriter, r *http.Request, err error) {
	if to, ok := r.Context().Value(forwardKey{}).(*forwardTo); ok {
		f.cl.routes.drop(to.id)
	}
	// Answered even when the Handler is closing the forward: the client
	// tries again elsewhere. One that went away does not read it.
	h := f.cl.h
	h.log.Debug("cluster: forward failed", slog.Any("err", err))
	w.Header().Set(headerProtocol, Subprotocol)
	h.refuseRetry(w, r, "tether: session owner unreachable", true)
}

// close ends the links forwarded through this instance, and its idle
// connections to the others.
func (f *forwarder) close() {
	f.cancel()
	f.tr.CloseIdleConnections()
}

// route is what the directory said about a session, remembered.
type route struct {
	url   string // the owner's URL; "" for a session that is gone
	gone  bool   // lost or ended: no need to ask again for a while
	until time.Time
	stale time.Time // a url may serve until then while the directory is out of reach
}

// routeCache remembers the directory's recent answers, within maxRoutes.
type routeCache struct {
	mu sync.Mutex
	m  map[[16]byte]route
}

func newRouteCache() routeCache { return routeCache{m: make(map[[16]byte]route)} }

// put remembers rt for ttl; an owner's URL also serves, while the
// directory is out of reach, for ten times that.
func (c *routeCache) put(id [16]byte, rt route, now time.Time, ttl time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.m[id]; !ok && len(c.m) >= maxRoutes {
		// Full: a quarter goes, answers that a session is gone first (a
		// flood of made-up ids makes those), then owners' URLs in the
		// map's random order.
		for _, gone := range []bool{true, false} {
			for k, r := range c.m {
				if len(c.m) < maxRoutes*3/4 {
					break
				}
				if r.gone == gone {
					delete(c.m, k)
				}
			}
		}
	}
	rt.until = now.Add(ttl)
	rt.stale = now.Add(10 * ttl)
	c.m[id] = rt
}

// get returns the route of id, and whether it is fresh.
func (c *routeCache) get(id [16]byte, now time.Time) (route, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	rt, ok := c.m[id]
	return rt, ok && now.Before(rt.until)
}

// stale returns the owner's URL last known for id, fresh or not, while it
// may still serve.
func (c *routeCache) stale(id [16]byte, now time.Time) (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	rt, ok := c.m[id]
	if !ok || rt.url == "" || now.After(rt.stale) {
		return "", false
	}
	return rt.url, true
}

func (c *routeCache) drop(id [16]byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, id)
}

// tokenBucket is a rate limit: rate tokens a second, at most burst saved.
type tokenBucket struct {
	rate, burst, tokens float64
	last                time.Time
}

func newTokenBucket(rate, burst float64) tokenBucket {
	return tokenBucket{rate: rate, burst: burst, tokens: burst}
}

// take takes a token, if there is one.
func (b *tokenBucket) take(now time.Time) bool {
	if !b.last.IsZero() {
		b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	}
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

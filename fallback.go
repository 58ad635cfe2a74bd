package tether

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"

	"github.com/tetherws/tether/internal/frame"
)

// fallbackAfter is how many handshakes in a row must fail in a way that says
// "this path blocks WebSocket" before the Conn moves to long polling.
const fallbackAfter = 3

// pollTimeout bounds one poll; the server holds a poll for at most its poll
// wait (25 s by default).
const pollTimeout = 40 * time.Second

// pollRetries is how many times a polling request cut short is tried again
// before the link is given up.
const pollRetries = 3

// WithFallback lets the Conn move its session onto HTTP long polling when
// the path blocks WebSocket, and probe WebSocket in the background to move
// back when it works. The move is made at once on a 426 (a proxy that
// refuses upgrades, or a Handler that saw a request whose Upgrade a proxy
// stripped) and on a 401, 403 or 404 without the Tether-Protocol mark a
// Handler puts on its own answers (a proxy's refusal); a refusal of polling
// too is permanent. It is made after 3 attempts in a row that fail in a way
// that may say so: another non-101 answer, a handshake that hangs, a
// WebSocket that never greets the session.
// pollURL is the Handler's URL with an http or https scheme; "" derives it
// from the dial URL (ws to http, wss to https). Fallback needs a server that
// speaks session mode (a tether Handler). By default there is no fallback.
func WithFallback(pollURL string) Option {
	return func(o *options) {
		o.fallback = true
		o.pollURL = pollURL
	}
}

// pollURLFor works out the polling URL and refuses a downgrade from TLS.
func pollURLFor(dialURL, pollURL string) (*url.URL, error) {
	d, err := url.Parse(dialURL)
	if err != nil {
		return nil, err
	}
	secure := d.Scheme == "wss" || d.Scheme == "https"
	if pollURL == "" {
		u := *d
		if secure {
			u.Scheme = "https"
		} else {
			u.Scheme = "http"
		}
		return &u, nil
	}
	u, err := url.Parse(pollURL)
	if err != nil {
		return nil, fmt.Errorf("tether: WithFallback: %w: %w", ErrInvalidOption, redactErr(err))
	}
	shown := redactURL(pollURL)
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, fmt.Errorf("tether: WithFallback: URL %q must be http or https: %w", shown, ErrInvalidOption)
	case secure && u.Scheme != "https":
		return nil, fmt.Errorf("tether: WithFallback: URL %q would downgrade %s to plain HTTP: %w", shown, d.Scheme, ErrInvalidOption)
	case u.Host == "":
		return nil, fmt.Errorf("tether: WithFallback: URL %q has no host: %w", shown, ErrInvalidOption)
	}
	return u, nil
}

// fallsBackAtOnce reports whether a WebSocket handshake's answer says, by
// itself, that the path refuses WebSocket: then the next attempt is over
// long polling at once. A 426 does (a Handler that answers it saw a request
// whose Upgrade a proxy stripped; a proxy that answers it refuses upgrades),
// and so does a 401, 403 or 404 without the Tether-Protocol mark, which a
// proxy's refusal lacks; polling, if refused too, makes it permanent.
func fallsBackAtOnce(err error) bool {
	var he *HandshakeError
	if !errors.As(err, &he) || he.polling {
		return false
	}
	switch he.StatusCode {
	case http.StatusUpgradeRequired:
		return true
	case http.StatusUnauthorized, http.StatusForbidden, http.StatusNotFound:
		return !he.handler
	}
	return false
}

// blocksWebSocket reports whether a failed attempt says the path may not let
// WebSocket through, as opposed to a server that is down: several in a row
// move the Conn to long polling.
func blocksWebSocket(err error) bool {
	var he *HandshakeError
	if errors.As(err, &he) {
		switch he.StatusCode {
		case http.StatusUnauthorized, http.StatusForbidden, http.StatusNotFound:
			return false
		case http.StatusServiceUnavailable, http.StatusTooManyRequests:
			// The Handler's own "try again shortly" (a handoff, a busy
			// directory) says the path works.
			return !he.handler
		}
		return true
	}
	return errors.Is(err, errHandshakeTimeout) || errors.Is(err, errNoHello)
}

var errNoHello = errors.New("tether: the server did not greet the session")

// pollHTTPClient is the WebSocket dial's http.Client, refusing redirects to
// another host or from https to http (see checkRedirect).
func (c *Conn) pollHTTPClient() *http.Client {
	var base *http.Client
	if c.opts.dialOpts != nil {
		base = c.opts.dialOpts.HTTPClient
	}
	return guardedClient(base)
}

// pollTransport carries session frames over HTTP long polling: a poller
// goroutine holds a GET open for the server's frames, and a sender
// goroutine POSTs the client's frames in batches.
type pollTransport struct {
	c      *Conn
	hc     *http.Client
	base   *url.URL
	sid    string
	secret string
	ack    func() uint64 // the session's receive position
	onAck  func(uint64)  // applies the server's acknowledgement
	limits peerLimits    // what the Handler told on the open
	// maxBody and maxBatch bound a send's body and frames: the Handler's
	// limits, or its defaults when it told none. maxBody shrinks when a
	// send is refused as too large all the same; sender only.
	maxBody  int
	maxBatch int
	// respBody bounds what the client reads of an answer.
	respBody int

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	frames chan frame.Frame
	failed chan struct{}
	errMu  sync.Mutex
	err    error

	mu     sync.Mutex
	outbox []frame.Frame
	wake   chan struct{}
}

// openPoll opens or resumes the Conn's session over long polling and
// returns the transport with the server's Hello.
func (c *Conn) openPoll(ctx context.Context) (*pollTransport, frame.Frame, error) {
	// Opening is the polling handshake, bounded as a WebSocket one is: an
	// open that hangs (a connect stuck behind a full listen queue, an
	// answer that never comes) is one failed attempt, not a Conn kept away
	// from its session for as long as the network likes.
	var timeout context.Context
	if d := c.opts.handshakeTimeout; d > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
		timeout = ctx
	}
	u := *c.pollURL
	q := u.Query()
	q.Set(pollParam, pollOpen)
	u.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), nil)
	if err != nil {
		return nil, frame.Frame{}, err
	}
	if err := c.addHeaders(ctx, req.Header); err != nil {
		return nil, frame.Frame{}, err
	}
	hc := c.pollHTTPClient()
	fs, hdr, err := doPollHeader(hc, req, 1, DefaultMaxBody)
	if err != nil && timeout != nil && errors.Is(timeout.Err(), context.DeadlineExceeded) {
		return nil, frame.Frame{}, fmt.Errorf("tether: polling open: %w after %v: %w", errHandshakeTimeout, c.opts.handshakeTimeout, err)
	}
	var ps *pollStatusError
	if errors.As(err, &ps) {
		// Opening is the polling handshake: its status is classified like a
		// WebSocket handshake's.
		err = &HandshakeError{StatusCode: ps.status, RetryAfter: ps.retryAfter, Err: err, polling: true}
	}
	if err != nil {
		return nil, frame.Frame{}, err
	}
	if len(fs) != 1 {
		return nil, frame.Frame{}, errNoHello
	}
	limits := parseLimits(hdr)
	t := &pollTransport{
		c:        c,
		hc:       hc,
		base:     c.pollURL,
		sid:      fmt.Sprintf("%x", fs[0].Session),
		secret:   fmt.Sprintf("%x", fs[0].Secret),
		limits:   limits,
		maxBody:  int(cmp.Or(limits.body, DefaultMaxBody)),
		maxBatch: cmp.Or(limits.batch, DefaultMaxBatch),
		respBody: respBodyLimit(limits, c.currentReadLimit()),
		frames:   make(chan frame.Frame, DefaultMaxBatch),
		failed:   make(chan struct{}),
		wake:     make(chan struct{}, 1),
	}
	// The transport's life is its own: Close still has to tell the server
	// after the Conn's ctx has ended.
	t.ctx, t.cancel = context.WithCancel(context.Background())
	return t, fs[0], nil
}

// start runs the poller and the sender; ack reports, for each poll, what
// the application has read, and onAck takes the acknowledgements that answer
// each send.
func (t *pollTransport) start(ack func() uint64, onAck func(uint64)) {
	t.ack, t.onAck = ack, onAck
	t.wg.Add(2)
	go t.poll()
	go t.sender()
}

// doPoll makes one polling request and decodes the frames it answers, in
// a body of at most maxBody bytes.
func doPoll(hc *http.Client, req *http.Request, maxFrames, maxBody int) ([]frame.Frame, error) {
	fs, _, err := doPollHeader(hc, req, maxFrames, maxBody)
	return fs, err
}

// doPollHeader is doPoll, with the answer's header.
func doPollHeader(hc *http.Client, req *http.Request, maxFrames, maxBody int) ([]frame.Frame, http.Header, error) {
	resp, err := hc.Do(req)
	if err != nil {
		return nil, nil, redactErr(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, int64(maxBody)+1))
	if err != nil {
		return nil, nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, nil, &pollStatusError{
			op:         req.URL.Query().Get(pollParam),
			status:     resp.StatusCode,
			retryAfter: parseRetryAfter(resp.Header.Get("Retry-After"), time.Now()),
		}
	}
	if len(body) > maxBody {
		return nil, nil, fmt.Errorf("tether: polling %s: an answer of more than %d bytes", req.URL.Query().Get(pollParam), maxBody)
	}
	fs, err := frame.DecodeBatch(body, maxFrames, maxBody)
	ownPayloads(fs, len(body))
	return fs, resp.Header, err
}

// ownPayloads copies out of a decoded answer of n bytes the payloads that
// are less than half of it: a message waits to be read as long as the
// application likes, and a small one must not keep the whole answer alive.
// At most one payload keeps the answer, then at most twice its size.
func ownPayloads(fs []frame.Frame, n int) {
	for i := range fs {
		if p := fs[i].Payload; len(p) > 0 && 2*len(p) < n {
			fs[i].Payload = append([]byte(nil), p...)
		}
	}
}

// respBodyLimit bounds an answer to a poll: the Handler's batches are
// within its body limit, but one message goes alone, whatever its size, up
// to the client's read limit (a larger one fails the link, and Read says
// so).
func respBodyLimit(l peerLimits, readLimit int64) int {
	msg := int64(maxReplayBytes) // no read limit: the most a window holds
	if readLimit >= 0 {
		msg = min(readLimit, msg)
	}
	// An ack and a close may ride beside a message.
	const slack = 2*frameHeaderMax + frame.BatchHeaderMax + frame.MaxReason + 64
	return int(max(l.body, DefaultMaxBody, msg) + slack)
}

// pollStatusError is a polling request answered with a status other than
// 200. Mid-session it fails the link (the session may have moved or ended),
// and the Conn reconnects.
type pollStatusError struct {
	op         string
	status     int
	retryAfter time.Duration
}

func (e *pollStatusError) Error() string {
	return "tether: polling " + e.op + " answered " + strconv.Itoa(e.status) + " " + http.StatusText(e.status)
}

func (t *pollTransport) request(ctx context.Context, method, op string, body []byte) (*http.Request, error) {
	u := *t.base
	q := u.Query()
	q.Set(pollParam, op)
	q.Set("sid", t.sid)
	if op == pollGet {
		q.Set("ack", strconv.FormatUint(t.ack(), 10))
	}
	u.RawQuery = q.Encode()
	var r io.Reader
	if body != nil {
		r = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), r)
	if err != nil {
		return nil, err
	}
	if fn := t.c.opts.header; fn != nil {
		// Fresh for every request, as for every handshake: middleware in
		// front of the Handler checks each one.
		extra, err := fn(ctx)
		if err != nil {
			return nil, &hookError{hook: "WithHeader", err: err}
		}
		for k, vs := range extra {
			for _, v := range vs {
				req.Header.Add(k, v)
			}
		}
	}
	req.Header.Set(headerSecret, t.secret)
	req.Header.Set(ConnIDHeader, t.c.id)
	if body != nil {
		req.Header.Set("Content-Type", pollMediaType)
	}
	return req, nil
}

// retry runs one polling request, trying again when it is cut short. A 4xx
// answer is final.
func (t *pollTransport) retry(method, op string, body []byte, timeout time.Duration) ([]frame.Frame, error) {
	var last error
	for i := 0; i < pollRetries; i++ {
		if i > 0 {
			if err := sleep(t.ctx, time.Duration(i)*100*time.Millisecond); err != nil {
				return nil, err
			}
		}
		ctx, cancel := context.WithTimeout(t.ctx, timeout)
		req, err := t.request(ctx, method, op, body)
		if err != nil {
			cancel()
			return nil, err
		}
		fs, err := doPoll(t.hc, req, max(t.maxBatch, DefaultMaxBatch)+1, t.respBody)
		cancel()
		if err == nil {
			return fs, nil
		}
		if t.ctx.Err() != nil {
			return nil, t.ctx.Err()
		}
		last = err
		var ps *pollStatusError
		if errors.As(err, &ps) && ps.status >= 400 && ps.status < 500 {
			break
		}
	}
	return nil, last
}

func (t *pollTransport) fail(err error) {
	t.errMu.Lock()
	defer t.errMu.Unlock()
	if t.err == nil {
		t.err = err
		close(t.failed)
	}
}

func (t *pollTransport) poll() {
	defer t.wg.Done()
	for {
		fs, err := t.retry(http.MethodGet, pollGet, nil, pollTimeout)
		if err != nil {
			t.fail(fmt.Errorf("tether: polling: %w", err))
			return
		}
		for _, f := range fs {
			if limit := t.c.currentReadLimit(); f.Kind == frame.Data && limit >= 0 && int64(len(f.Payload)) > limit {
				// WithReadLimit holds on polling as on WebSocket.
				t.fail(fmt.Errorf("tether: polling: a message of %d bytes from the server: %w (read limit %d)",
					len(f.Payload), websocket.ErrMessageTooBig, limit))
				return
			}
			select {
			case t.frames <- f:
			case <-t.ctx.Done():
				return
			}
			if f.Kind == frame.Close {
				return
			}
		}
	}
}

func (t *pollTransport) sender() {
	defer t.wg.Done()
	for {
		select {
		case <-t.wake:
		case <-t.ctx.Done():
			return
		}
		t.mu.Lock()
		fs := t.outbox
		t.outbox = nil
		t.mu.Unlock()
		for len(fs) > 0 {
			n := t.batchLen(fs)
			body := frame.AppendBatch(nil, fs[:n])
			acks, err := t.retry(http.MethodPost, pollSend, body, t.c.opts.handshakeTimeout+pollTimeout)
			var ps *pollStatusError
			if errors.As(err, &ps) && ps.status == http.StatusRequestEntityTooLarge {
				if n > 1 {
					// The Handler takes less than it told, or told
					// nothing and takes less than its defaults: smaller
					// batches, down to one frame each.
					t.maxBody = len(body) / 2
					continue
				}
				// One message the Handler refuses whatever the batch:
				// numbered, it would be sent again on every link.
				err = fmt.Errorf("a message of %d bytes is more than the server takes: %w",
					len(fs[0].Payload), ErrMessageTooLarge)
			}
			if err != nil {
				t.fail(fmt.Errorf("tether: sending: %w", err))
				return
			}
			for _, a := range acks {
				t.onAck(a.Ack)
			}
			fs = fs[n:]
		}
	}
}

// batchLen is how many of fs, from the first, go in the next send: as many
// as fit the Handler's limits, and at least one.
func (t *pollTransport) batchLen(fs []frame.Frame) int {
	n, size := 0, frame.BatchHeaderMax
	for n < len(fs) && n < t.maxBatch {
		size += frame.EntrySize(&fs[n])
		if n > 0 && size > t.maxBody {
			break
		}
		n++
	}
	return n
}

func (t *pollTransport) readFrame(ctx context.Context) (frame.Frame, error) {
	select {
	case f := <-t.frames:
		return f, nil
	default:
	}
	select {
	case f := <-t.frames:
		return f, nil
	case <-t.failed:
		t.errMu.Lock()
		defer t.errMu.Unlock()
		return frame.Frame{}, t.err
	case <-t.ctx.Done():
		return frame.Frame{}, fmt.Errorf("tether: polling link closed: %w", t.ctx.Err())
	case <-ctx.Done():
		return frame.Frame{}, ctx.Err()
	}
}

// prepare queues f for the sender, with a copy of its payload: the replay
// buffer's copy may be reused once the server acknowledges it, and a send
// can be tried again after that.
func (t *pollTransport) prepare(f frame.Frame) {
	f.Payload = append([]byte(nil), f.Payload...)
	t.mu.Lock()
	t.outbox = append(t.outbox, f)
	t.mu.Unlock()
}

// send wakes the sender, or reports why the transport has failed.
func (t *pollTransport) send(context.Context) error {
	select {
	case <-t.failed:
		t.errMu.Lock()
		defer t.errMu.Unlock()
		return t.err
	default:
	}
	select {
	case t.wake <- struct{}{}:
	default:
	}
	return nil
}

// Ping is answered by the polls themselves: a poll that does not come back
// in time fails the link.
func (t *pollTransport) Ping(ctx context.Context) error { return nil }

// Close tells the server the session is over, then stops.
func (t *pollTransport) Close(code websocket.StatusCode, reason string) error {
	body := frame.AppendBatch(nil, []frame.Frame{{Kind: frame.Close, Code: uint16(code), Reason: clipReason(reason), Ack: t.ack()}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	req, err := t.request(ctx, http.MethodPost, pollSend, body)
	if err == nil {
		_, err = doPoll(t.hc, req, max(t.maxBatch, DefaultMaxBatch)+1, t.respBody)
	}
	cancel()
	_ = t.CloseNow()
	return err
}

// CloseNow stops the poller and the sender and waits for them.
func (t *pollTransport) CloseNow() error {
	t.cancel()
	t.wg.Wait()
	return nil
}

// clipReason cuts a close reason to what a close frame can carry, on a rune
// boundary.
func clipReason(s string) string {
	if len(s) <= frame.MaxReason {
		return s
	}
	s = s[:frame.MaxReason]
	for !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s
}

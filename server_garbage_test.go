package tether_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/tetherws/tether"
	"github.com/tetherws/tether/internal/frame"
)

// Garbage at the Handler: every malformed, unknown, oversized or misrouted
// request gets a 4xx at once (never a 5xx, never a held poll), and the
// Handler keeps serving real clients afterwards.

// garbageReadLimit is the Handler's default read limit; a batch entry may be
// this plus 64 bytes of frame header.
const garbageReadLimit = 32768

// garbageServer is a session server whose polls are held briefly, with an
// HTTP client of its own for hand-made requests.
type garbageServer struct {
	*sessionServer
	t    *testing.T
	hc   *http.Client
	base string // http://127.0.0.1:port/
}

func newGarbageServer(t *testing.T, opts ...tether.HandlerOption) *garbageServer {
	t.Helper()
	return newGarbageServerWith(t, sessionEcho, opts...)
}

// newGarbageServerWith is newGarbageServer with a serve function of the
// test's own.
func newGarbageServerWith(t *testing.T, serve func(ctx context.Context, s *tether.Session), opts ...tether.HandlerOption) *garbageServer {
	t.Helper()
	opts = append([]tether.HandlerOption{tether.WithPollLimits(0, 0, 300*time.Millisecond)}, opts...)
	ss := newSessionServer(t, serve, opts...)
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &garbageServer{sessionServer: ss, t: t, hc: &http.Client{Transport: tr, Timeout: 5 * time.Second}, base: ss.srv.URL + "/"}
}

type answer struct {
	status int
	header http.Header
	body   []byte
}

// do makes one request and returns the answer; it fails the test on a
// transport error (a hang ends in the client's timeout).
func (g *garbageServer) do(method, query string, header http.Header, body io.Reader) answer {
	g.t.Helper()
	if query != "" && query[0] != '?' {
		query = "?" + query
	}
	req, err := http.NewRequest(method, g.base+query, body)
	require.NoError(g.t, err)
	for k, vs := range header {
		req.Header[k] = vs
	}
	resp, err := g.hc.Do(req)
	require.NoError(g.t, err, "%s ?%s", method, query)
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	require.NoError(g.t, err)
	require.Less(g.t, resp.StatusCode, 500, "%s ?%s answered %d: %s", method, query, resp.StatusCode, b)
	return answer{status: resp.StatusCode, header: resp.Header, body: b}
}

func (g *garbageServer) expect(status int, method, query string, header http.Header, body []byte) answer {
	g.t.Helper()
	var r io.Reader
	if body != nil {
		r = bytes.NewReader(body)
	}
	a := g.do(method, query, header, r)
	require.Equal(g.t, status, a.status, "%s ?%s: %s", method, query, a.body)
	return a
}

// pollSession is a long-polling session opened by hand.
type pollSession struct {
	sid    string
	secret string
}

func (p pollSession) header() http.Header { return http.Header{"Tether-Secret": {p.secret}} }

func (p pollSession) q(op string, extra ...string) string {
	s := "tether=" + op + "&sid=" + p.sid
	for _, e := range extra {
		s += "&" + e
	}
	return s
}

// open opens a polling session by hand: POST ?tether=open answers a batch
// with one Hello.
func (g *garbageServer) open() pollSession {
	g.t.Helper()
	a := g.expect(http.StatusOK, http.MethodPost, "?tether=open", nil, nil)
	fs, err := frame.DecodeBatch(a.body, 1, 1<<10)
	require.NoError(g.t, err)
	require.Len(g.t, fs, 1)
	require.Equal(g.t, frame.Hello, fs[0].Kind)
	require.Equal(g.t, frame.StatusNew, fs[0].Status)
	return pollSession{sid: hex.EncodeToString(fs[0].Session[:]), secret: hex.EncodeToString(fs[0].Secret[:])}
}

// send posts a batch and returns the answer's status and frames.
func (g *garbageServer) send(p pollSession, body []byte) (int, []frame.Frame) {
	g.t.Helper()
	a := g.do(http.MethodPost, "?"+p.q("send"), p.header(), bytes.NewReader(body))
	if a.status != http.StatusOK {
		return a.status, nil
	}
	fs, err := frame.DecodeBatch(a.body, 256, 1<<20)
	require.NoError(g.t, err)
	return a.status, fs
}

// echoes checks that the session still works: a Data frame numbered seq is
// acknowledged and echoed.
func (g *garbageServer) echoes(p pollSession, seq uint64, msg string) {
	g.t.Helper()
	body := frame.AppendBatch(nil, []frame.Frame{{Kind: frame.Data, Seq: seq, Payload: []byte(msg)}})
	status, fs := g.send(p, body)
	require.Equal(g.t, http.StatusOK, status)
	require.Len(g.t, fs, 1)
	require.Equal(g.t, frame.Ack, fs[0].Kind)
	// The ack says what serve has read so far: this message, or not yet.
	require.LessOrEqual(g.t, fs[0].Ack, seq)
	require.GreaterOrEqual(g.t, fs[0].Ack, seq-1)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		a := g.expect(http.StatusOK, http.MethodGet, p.q("poll", "ack="+strconv.FormatUint(seq-1, 10)), p.header(), nil)
		fs, err := frame.DecodeBatch(a.body, 256, 1<<20)
		require.NoError(g.t, err)
		for _, f := range fs {
			if f.Kind == frame.Data && f.Seq == seq {
				require.Equal(g.t, msg, string(f.Payload))
				return
			}
		}
	}
	g.t.Fatalf("no echo of message %d", seq)
}

// stillServes checks that the Handler serves a real tether client over
// WebSocket and one over long polling.
func (g *garbageServer) stillServes() {
	t := g.t
	t.Helper()
	ctx := ctxT(t, 10*time.Second)
	c := dial(t, g.URL())
	require.Equal(t, tether.WebSocket, c.Transport())
	require.NoError(t, c.Write(ctx, websocket.MessageText, []byte("ws")))
	_, got, err := c.Read(ctx)
	require.NoError(t, err)
	require.Equal(t, "ws", string(got))
	require.NoError(t, c.Close(websocket.StatusNormalClosure, ""))

	g.setBlock(true)
	defer g.setBlock(false)
	pc := dial(t, g.URL(), tether.WithFallback(""))
	require.Equal(t, tether.Polling, pc.Transport())
	require.NoError(t, pc.Write(ctx, websocket.MessageText, []byte("poll")))
	_, got, err = pc.Read(ctx)
	require.NoError(t, err)
	require.Equal(t, "poll", string(got))
	require.NoError(t, pc.Close(websocket.StatusNormalClosure, ""))
}

func TestGarbageMethods(t *testing.T) {
	t.Parallel()
	g := newGarbageServer(t)
	p := g.open()
	for _, op := range []string{"open", "send"} {
		for _, m := range []string{http.MethodGet, http.MethodPut, http.MethodDelete, http.MethodPatch, http.MethodOptions} {
			a := g.expect(http.StatusMethodNotAllowed, m, p.q(op), p.header(), nil)
			require.Equal(t, http.MethodPost, a.header.Get("Allow"), "%s %s", m, op)
		}
	}
	for _, m := range []string{http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodHead} {
		a := g.expect(http.StatusMethodNotAllowed, m, p.q("poll", "ack=0"), p.header(), nil)
		require.Equal(t, http.MethodGet, a.header.Get("Allow"), "%s poll", m)
	}
	// Neither a WebSocket handshake nor a polling request.
	for _, m := range []string{http.MethodGet, http.MethodPost, http.MethodPut} {
		a := g.expect(http.StatusUpgradeRequired, m, "", nil, nil)
		require.Equal(t, "websocket", a.header.Get("Upgrade"))
	}
	g.echoes(p, 1, "after methods")
	g.stillServes()
}

func TestGarbageQuery(t *testing.T) {
	t.Parallel()
	g := newGarbageServer(t)
	p := g.open()
	good := p.header()
	unknownID := strings.Repeat("ab", 16)
	bad := http.StatusBadRequest
	cases := []struct {
		name   string
		method string
		query  string
		header http.Header
		status int
	}{
		{"unknown op", http.MethodPost, "tether=nope&sid=" + p.sid, good, bad},
		{"unknown op GET", http.MethodGet, "tether=POLL&sid=" + p.sid, good, bad},
		{"empty op", http.MethodGet, "tether=&sid=" + p.sid, good, http.StatusUpgradeRequired},
		{"bad escape", http.MethodGet, "tether=%zz", nil, http.StatusUpgradeRequired},
		{"missing sid send", http.MethodPost, "tether=send", good, bad},
		{"missing sid poll", http.MethodGet, "tether=poll&ack=0", good, bad},
		{"short sid", http.MethodPost, "tether=send&sid=" + p.sid[:31], good, bad},
		{"long sid", http.MethodPost, "tether=send&sid=" + p.sid + "00", good, bad},
		{"very long sid", http.MethodGet, "tether=poll&ack=0&sid=" + strings.Repeat("a", 8000), good, bad},
		{"non-hex sid", http.MethodPost, "tether=send&sid=" + strings.Repeat("zz", 16), good, bad},
		{"sid with spaces", http.MethodPost, "tether=send&sid=" + url.QueryEscape(" "+p.sid[1:]), good, bad},
		{"unknown sid send", http.MethodPost, "tether=send&sid=" + unknownID, good, http.StatusNotFound},
		{"unknown sid poll", http.MethodGet, "tether=poll&ack=0&sid=" + unknownID, good, http.StatusNotFound},
		{"missing secret send", http.MethodPost, p.q("send"), nil, bad},
		{"missing secret poll", http.MethodGet, p.q("poll", "ack=0"), nil, bad},
		{"short secret", http.MethodPost, p.q("send"), http.Header{"Tether-Secret": {p.secret[:30]}}, bad},
		{"non-hex secret", http.MethodPost, p.q("send"), http.Header{"Tether-Secret": {strings.Repeat("g", 32)}}, bad},
		{"wrong secret send", http.MethodPost, p.q("send"), http.Header{"Tether-Secret": {unknownID}}, http.StatusNotFound},
		{"wrong secret poll", http.MethodGet, p.q("poll", "ack=0"), http.Header{"Tether-Secret": {unknownID}}, http.StatusNotFound},
		{"missing ack", http.MethodGet, p.q("poll"), good, bad},
		{"non-numeric ack", http.MethodGet, p.q("poll", "ack=x1"), good, bad},
		{"negative ack", http.MethodGet, p.q("poll", "ack=-1"), good, bad},
		{"overflowing ack", http.MethodGet, p.q("poll", "ack=18446744073709551616"), good, bad},
		{"huge ack", http.MethodGet, p.q("poll", "ack="+strings.Repeat("9", 4000)), good, bad},
		{"max ack beyond sent", http.MethodGet, p.q("poll", "ack=18446744073709551615"), good, bad},
		{"open malformed session", http.MethodPost, "tether=open", http.Header{"Tether-Session": {"xyz"}}, bad},
		{"open session without secret", http.MethodPost, "tether=open", http.Header{"Tether-Session": {p.sid}}, bad},
		{"open malformed ack", http.MethodPost, "tether=open", http.Header{"Tether-Session": {p.sid}, "Tether-Secret": {p.secret}, "Tether-Ack": {"-5"}}, bad},
		{"open huge ack", http.MethodPost, "tether=open", http.Header{"Tether-Session": {unknownID}, "Tether-Secret": {unknownID}, "Tether-Ack": {strings.Repeat("9", 30)}}, bad},
	}
	for _, tc := range cases {
		start := time.Now()
		a := g.do(tc.method, "?"+tc.query, tc.header, nil)
		require.Equal(t, tc.status, a.status, "%s: %s", tc.name, a.body)
		require.Less(t, time.Since(start), 2*time.Second, "%s: answered at once, not held", tc.name)
	}

	// An unknown session id of valid form on open: a new session, reported lost.
	a := g.expect(http.StatusOK, http.MethodPost, "?tether=open",
		http.Header{"Tether-Session": {unknownID}, "Tether-Secret": {unknownID}, "Tether-Ack": {"0"}}, nil)
	fs, err := frame.DecodeBatch(a.body, 1, 1<<10)
	require.NoError(t, err)
	require.Equal(t, frame.Hello, fs[0].Kind)
	require.Equal(t, frame.StatusLost, fs[0].Status)

	// The same on the WebSocket handshake: a malformed resume is a 400.
	for _, h := range []http.Header{
		{"Tether-Session": {"xyz"}},
		{"Tether-Session": {p.sid}, "Tether-Secret": {"short"}},
		{"Tether-Session": {p.sid}, "Tether-Secret": {p.secret}, "Tether-Ack": {"ack"}},
	} {
		ctx := ctxT(t, 5*time.Second)
		ws, resp, err := websocket.Dial(ctx, g.URL(), &websocket.DialOptions{HTTPHeader: h, Subprotocols: []string{tether.Subprotocol}})
		if ws != nil {
			_ = ws.CloseNow()
		}
		require.Error(t, err)
		require.NotNil(t, resp)
		require.Equal(t, http.StatusBadRequest, resp.StatusCode, "%v", h)
	}

	g.echoes(p, 1, "after queries")
	g.stillServes()
}

// A valid session's poll that acknowledges more than the server sent is a
// 400, and the session stays usable.
func TestGarbageAckBeyondSent(t *testing.T) {
	t.Parallel()
	g := newGarbageServer(t)
	p := g.open()
	g.expect(http.StatusBadRequest, http.MethodGet, p.q("poll", "ack=1"), p.header(), nil)
	g.echoes(p, 1, "one")
	g.expect(http.StatusBadRequest, http.MethodGet, p.q("poll", "ack=2"), p.header(), nil)
	g.echoes(p, 2, "two")
}

// countingReader yields n bytes without holding them, counting what was
// read.
type countingReader struct {
	left int64
	read atomic.Int64
}

func (r *countingReader) Read(p []byte) (int, error) {
	if r.left <= 0 {
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), r.left))
	clear(p[:n])
	r.left -= int64(n)
	r.read.Add(int64(n))
	return n, nil
}

// A 64 MiB body is refused promptly, without the server reading it all.
func TestGarbageHugeBody(t *testing.T) {
	t.Parallel()
	g := newGarbageServer(t)
	p := g.open()
	const huge = 64 << 20
	post := func(query string, h http.Header) (answer, int64, time.Duration) {
		t.Helper()
		body := &countingReader{left: huge}
		req, err := http.NewRequest(http.MethodPost, g.base+"?"+query, body)
		require.NoError(t, err)
		req.ContentLength = huge
		for k, vs := range h {
			req.Header[k] = vs
		}
		start := time.Now()
		resp, err := g.hc.Do(req)
		require.NoError(t, err, query)
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return answer{status: resp.StatusCode, body: b}, body.read.Load(), time.Since(start)
	}

	a, n, d := post(p.q("send"), p.header())
	require.Equal(t, http.StatusRequestEntityTooLarge, a.status, "%s", a.body)
	require.Less(t, d, 3*time.Second)
	require.Less(t, n, int64(huge/2), "the server read only about its limit")
	t.Logf("64 MiB send: 413 after %v, %d bytes taken from the body", d, n)

	a, n, d = post("tether=send&sid="+strings.Repeat("cd", 16), p.header())
	require.Equal(t, http.StatusNotFound, a.status, "%s", a.body)
	require.Less(t, d, 3*time.Second)
	require.Less(t, n, int64(huge/2))

	// Open ignores its body: it answers at once, whatever follows.
	a, n, d = post("tether=open", nil)
	require.Less(t, a.status, 500)
	require.Less(t, d, 3*time.Second)
	require.Less(t, n, int64(huge/2))

	// The same body sent chunked, without a length.
	body := &countingReader{left: huge}
	req, err := http.NewRequest(http.MethodPost, g.base+"?"+p.q("send"), io.MultiReader(body))
	require.NoError(t, err)
	req.Header.Set("Tether-Secret", p.secret)
	start := time.Now()
	resp, err := g.hc.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusRequestEntityTooLarge, resp.StatusCode)
	require.Less(t, time.Since(start), 3*time.Second)
	require.Less(t, body.read.Load(), int64(huge/2))

	g.echoes(p, 1, "after huge")
	g.stillServes()
}

// rawBatch builds a batch around raw frame encodings.
func rawBatch(frames ...[]byte) []byte {
	b := binary.AppendUvarint(nil, uint64(len(frames)))
	for _, f := range frames {
		b = binary.AppendUvarint(b, uint64(len(f)))
		b = append(b, f...)
	}
	return b
}

func enc(f frame.Frame) []byte { return frame.Append(nil, &f) }

// Malformed frames in a valid session's POST: 400 (413 for a message over
// the read limit), and the session stays usable.
func TestGarbageFrames(t *testing.T) {
	t.Parallel()
	g := newGarbageServer(t)
	p := g.open()
	manyAcks := make([][]byte, 257)
	for i := range manyAcks {
		manyAcks[i] = enc(frame.Frame{Kind: frame.Ack})
	}
	var id [16]byte
	cases := []struct {
		name   string
		body   []byte
		status int
	}{
		{"empty body", nil, 400},
		{"count without frames", []byte{1}, 400},
		{"count beyond frames", []byte{2, 2, 3, 0}, 400},
		{"truncated entry", []byte{1, 5, 3, 0}, 400},
		{"trailing bytes", append(rawBatch(enc(frame.Frame{Kind: frame.Ack})), 7), 400},
		{"overlong count", []byte{0x80, 0x00}, 400},
		{"overflowing count", bytes.Repeat([]byte{0xff}, 11), 400},
		{"unknown kind", rawBatch([]byte{9, 0}), 400},
		{"kind zero", rawBatch([]byte{0}), 400},
		{"empty frame", rawBatch([]byte{}), 400},
		{"data seq 0", rawBatch(enc(frame.Frame{Kind: frame.Data, Seq: 0, Payload: []byte("x")})), 400},
		{"data unknown flags", rawBatch([]byte{2, 0x80, 1, 0}), 400},
		{"data no flags", rawBatch([]byte{2}), 400},
		{"overlong ack", rawBatch([]byte{3, 0x80, 0x00}), 400},
		{"ack trailing", rawBatch([]byte{3, 0, 0}), 400},
		{"close no code", rawBatch([]byte{4, 3}), 400},
		{"close reason not utf-8", rawBatch(append([]byte{4, 3, 0xe8, 0}, 0xff, 0xfe)), 400},
		{"close reason too long", rawBatch(enc(frame.Frame{Kind: frame.Close, Code: 1000, Reason: strings.Repeat("r", 124)})), 400},
		{"hello from client", rawBatch(enc(frame.Frame{Kind: frame.Hello, Status: frame.StatusNew, Session: id, Secret: id})), 400},
		{"hello bad status", rawBatch(enc(frame.Frame{Kind: frame.Hello, Status: 9})), 400},
		{"too many frames", rawBatch(manyAcks...), 400},
		{"entry over the limit", binary.AppendUvarint([]byte{1}, garbageReadLimit+65), 400},
		{"gap", rawBatch(enc(frame.Frame{Kind: frame.Data, Seq: 5, Payload: []byte("x")})), 400},
		{"message over the read limit", rawBatch(enc(frame.Frame{Kind: frame.Data, Seq: 1, Binary: true, Payload: make([]byte, garbageReadLimit+1)})), 413},
	}
	for _, tc := range cases {
		status, _ := g.send(p, tc.body)
		require.Equal(t, tc.status, status, tc.name)
	}
	g.echoes(p, 1, "after frames")
	status, _ := g.send(p, rawBatch(enc(frame.Frame{Kind: frame.Data, Seq: 3, Payload: []byte("gap")})))
	require.Equal(t, 400, status, "gap after 1")
	g.echoes(p, 2, "still")
	g.stillServes()
}

// An Ack frame that acknowledges more than the server sent is as malformed
// as a poll's ack beyond what was sent (TestGarbageAckBeyondSent): it must
// be refused, not drop the session's replay buffer and then ignore every
// real acknowledgement up to it.
func TestGarbageFrameAckBeyondSent(t *testing.T) {
	t.Parallel()
	g := newGarbageServer(t)
	p := g.open()
	status, _ := g.send(p, rawBatch(enc(frame.Frame{Kind: frame.Ack, Ack: 1 << 40})))
	require.Equal(t, http.StatusBadRequest, status, "an Ack beyond what was sent")
	status, _ = g.send(p, rawBatch(enc(frame.Frame{Kind: frame.Data, Seq: 1, Ack: 7, Payload: []byte("x")})))
	require.Equal(t, http.StatusBadRequest, status, "a Data frame acknowledging beyond what was sent")
	g.echoes(p, 1, "fine")
}

// Malformed frames on a valid session's WebSocket close that link with a
// protocol error; the session can still be resumed.
func TestGarbageWebSocketFrames(t *testing.T) {
	t.Parallel()
	g := newGarbageServer(t)
	ctx := ctxT(t, 10*time.Second)
	dialRaw := func(h http.Header) (*websocket.Conn, frame.Frame) {
		t.Helper()
		ws, _, err := websocket.Dial(ctx, g.URL(), &websocket.DialOptions{HTTPHeader: h, Subprotocols: []string{tether.Subprotocol}})
		require.NoError(t, err)
		t.Cleanup(func() { _ = ws.CloseNow() })
		typ, b, err := ws.Read(ctx)
		require.NoError(t, err)
		require.Equal(t, websocket.MessageBinary, typ)
		hello, err := frame.Decode(b)
		require.NoError(t, err)
		require.Equal(t, frame.Hello, hello.Kind)
		return ws, hello
	}
	ws, hello := dialRaw(nil)
	resume := http.Header{
		"Tether-Session": {hex.EncodeToString(hello.Session[:])},
		"Tether-Secret":  {hex.EncodeToString(hello.Secret[:])},
		"Tether-Ack":     {"0"},
	}
	for _, m := range []struct {
		typ  websocket.MessageType
		p    []byte
		code websocket.StatusCode
	}{
		{websocket.MessageBinary, []byte{9, 9, 9}, websocket.StatusProtocolError},
		// A gap is a link that lost messages: dropped like a broken
		// connection, without a close frame (see TestSessionGapFromClient).
		{websocket.MessageBinary, enc(frame.Frame{Kind: frame.Data, Seq: 4, Payload: []byte("gap")}), -1},
		{websocket.MessageBinary, enc(frame.Frame{Kind: frame.Hello, Status: frame.StatusNew}), websocket.StatusProtocolError},
		{websocket.MessageText, []byte("text"), websocket.StatusUnsupportedData},
	} {
		require.NoError(t, ws.Write(ctx, m.typ, m.p))
		_, _, err := ws.Read(ctx)
		require.Equal(t, m.code, websocket.CloseStatus(err), "%v", err)
		var again frame.Frame
		ws, again = dialRaw(resume)
		require.Equal(t, frame.StatusResumed, again.Status)
		require.Equal(t, hello.Session, again.Session)
	}
	require.NoError(t, ws.Write(ctx, websocket.MessageBinary, enc(frame.Frame{Kind: frame.Data, Seq: 1, Payload: []byte("ok")})))
	for {
		_, b, err := ws.Read(ctx)
		require.NoError(t, err)
		f, err := frame.Decode(b)
		require.NoError(t, err)
		if f.Kind == frame.Data {
			require.Equal(t, "ok", string(f.Payload))
			break
		}
	}
	g.stillServes()
}

// Cross-origin polling requests are refused as the WebSocket handshake is.
func TestGarbageCrossOrigin(t *testing.T) {
	t.Parallel()
	g := newGarbageServer(t)
	p := g.open()
	for _, origin := range []string{"http://evil.example", "null", "http://127.0.0.1:1", "::bad::"} {
		h := http.Header{"Origin": {origin}}
		g.expect(http.StatusForbidden, http.MethodPost, "?tether=open", h, nil)
		h.Set("Tether-Secret", p.secret)
		g.expect(http.StatusForbidden, http.MethodPost, "?"+p.q("send"), h, rawBatch(enc(frame.Frame{Kind: frame.Ack})))
		g.expect(http.StatusForbidden, http.MethodGet, "?"+p.q("poll", "ack=0"), h, nil)

		ctx := ctxT(t, 5*time.Second)
		ws, resp, err := websocket.Dial(ctx, g.URL(), &websocket.DialOptions{HTTPHeader: http.Header{"Origin": {origin}}})
		if ws != nil {
			_ = ws.CloseNow()
		}
		require.Error(t, err)
		require.NotNil(t, resp)
		require.Equal(t, http.StatusForbidden, resp.StatusCode, "WebSocket with Origin %s", origin)
	}
	// The page's own origin is allowed.
	g.expect(http.StatusOK, http.MethodPost, "?tether=open", http.Header{"Origin": {g.srv.URL}}, nil)
	g.echoes(p, 1, "same origin")
	g.stillServes()
}

// Random bodies and query strings, from a fixed seed.
func TestGarbageFuzz(t *testing.T) {
	t.Parallel()
	g := newGarbageServer(t)
	p := g.open()
	rng := rand.New(rand.NewPCG(3, 14))
	randBytes := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	body := func() []byte {
		for {
			var b []byte
			switch rng.IntN(3) {
			case 0: // anything
				b = randBytes(rng.IntN(4096))
			case 1: // a plausible batch of one frame of a known kind
				fr := append([]byte{byte(1 + rng.IntN(4))}, randBytes(rng.IntN(64))...)
				b = rawBatch(fr)
			default: // a plausible header with a lying length
				b = binary.AppendUvarint([]byte{byte(rng.IntN(3))}, rng.Uint64N(1<<20))
				b = append(b, randBytes(rng.IntN(256))...)
			}
			// A body that happens to be a valid batch would change the
			// session (a Close ends it): only garbage here.
			if _, err := frame.DecodeBatch(b, 256, garbageReadLimit+64); err != nil {
				return b
			}
		}
	}
	unknown := pollSession{sid: hex.EncodeToString(randBytes(16)), secret: hex.EncodeToString(randBytes(16))}
	for i := range 200 {
		b := body()
		status, _ := g.send(p, b)
		require.Equal(t, http.StatusBadRequest, status, "body %d: %x", i, b[:min(len(b), 64)])
		status, _ = g.send(unknown, b)
		require.Equal(t, http.StatusNotFound, status, "body %d to an unknown session", i)
		if i%10 == 0 {
			a := g.do(http.MethodPost, "?tether=open", nil, bytes.NewReader(b))
			require.Equal(t, http.StatusOK, a.status, "open ignores its body")
		}
		// Random query strings.
		q := url.Values{}
		for range rng.IntN(4) {
			q.Add(string(randBytes(1+rng.IntN(6))), string(randBytes(rng.IntN(40))))
		}
		q.Set("tether", string(randBytes(1+rng.IntN(8))))
		if rng.IntN(2) == 0 {
			q.Set("sid", string(randBytes(rng.IntN(40))))
		}
		method := []string{http.MethodGet, http.MethodPost, http.MethodPut}[rng.IntN(3)]
		a := g.do(method, "?"+q.Encode(), p.header(), bytes.NewReader(b))
		require.Equal(t, http.StatusBadRequest, a.status, "query %q", q.Encode())
		raw := strings.ReplaceAll(string(randBytes(rng.IntN(64))), "#", "")
		a = g.do(http.MethodGet, "?"+url.PathEscape(raw), nil, nil)
		require.GreaterOrEqual(t, a.status, 400, "raw query %q", raw)
	}
	g.echoes(p, 1, "after fuzz")
	g.stillServes()
}

package tether_test

import (
	"context"
	"encoding/hex"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/tetherws/tether"
	"github.com/tetherws/tether/internal/frame"
)

// A link that loses messages from the middle of its stream (a middlebox
// that drops bytes and carries on, as faultnet's Blackhole does) shows the
// receiving side a gap in the numbering. Nothing is lost for all that: the
// sender keeps every message the other side has not acknowledged. Either
// side drops the link, not the session; the client resumes it, both sides
// replay, and every message arrives exactly once.

// gapPayload makes each message large enough that the bytes a blackhole
// dropped say which messages it took.
var gapPayload = strings.Repeat("x", 1000)

// TestSessionGapFromClient: the client's messages are lost on the link.
func TestSessionGapFromClient(t *testing.T) {
	t.Parallel()
	got := make(chan string, 16)
	ss := newSessionServer(t, func(ctx context.Context, s *tether.Session) {
		for {
			_, p, err := s.Read(ctx)
			if err != nil {
				return
			}
			got <- strings.TrimSuffix(string(p), gapPayload)
		}
	}, tether.WithHandlerHeartbeat(0, 0))
	p := lostProxy(t, ss.Addr())
	ev := newEvents()
	// No heartbeat: the link must outlive the blackhole, as a link does
	// whose heartbeat has not yet noticed.
	c := dial(t, "ws://"+p.Addr(), tether.WithHeartbeat(0, 0), ev.option())
	ctx := ctxT(t, 20*time.Second)
	write := func(m string) {
		t.Helper()
		require.NoError(t, c.Write(ctx, websocket.MessageText, []byte(m+gapPayload)))
	}
	expect := func(want string) {
		t.Helper()
		select {
		case m := <-got:
			require.Equal(t, want, m)
		case <-ctx.Done():
			t.Fatalf("the server did not get %s", want)
		}
	}
	write("m1")
	expect("m1")
	p.Blackhole(true)
	write("m2")
	write("m3")
	eventually(t, 10*time.Second, func() bool { return p.Dropped() >= 2*int64(len(gapPayload)) }, "m2 and m3 dropped")
	p.Blackhole(false)
	write("m4") // the server sees m4 after m1
	expect("m2")
	expect("m3")
	expect("m4")
	write("m5")
	expect("m5")
	requireResumed(t, c, ev)
}

// TestSessionGapFromServer: the server's messages are lost on the link.
func TestSessionGapFromServer(t *testing.T) {
	t.Parallel()
	send := make(chan string)
	ss := newSessionServer(t, func(ctx context.Context, s *tether.Session) {
		for {
			select {
			case m := <-send:
				if s.Write(ctx, websocket.MessageText, []byte(m+gapPayload)) != nil {
					return
				}
			case <-ctx.Done():
				return
			}
		}
	}, tether.WithHandlerHeartbeat(0, 0))
	p := lostProxy(t, ss.Addr())
	ev := newEvents()
	c := dial(t, "ws://"+p.Addr(), tether.WithHeartbeat(0, 0), ev.option())
	ctx := ctxT(t, 20*time.Second)
	expect := func(want string) {
		t.Helper()
		_, m, err := c.Read(ctx)
		require.NoError(t, err)
		require.Equal(t, want, strings.TrimSuffix(string(m), gapPayload))
	}
	send <- "s1"
	expect("s1")
	p.Blackhole(true)
	send <- "s2"
	send <- "s3"
	eventually(t, 10*time.Second, func() bool { return p.Dropped() >= 2*int64(len(gapPayload)) }, "s2 and s3 dropped")
	p.Blackhole(false)
	send <- "s4"
	expect("s2")
	expect("s3")
	expect("s4")
	send <- "s5"
	expect("s5")
	requireResumed(t, c, ev)
}

// requireResumed checks that c lost a link and resumed its session, without
// losing it, and is still up.
func requireResumed(t *testing.T, c *tether.Conn, ev *events) {
	t.Helper()
	reconnected := false
	for _, sc := range ev.list() {
		require.False(t, errors.Is(sc.Cause, tether.ErrSessionLost), "session lost: %v", sc.Cause)
		if sc.To == tether.Reconnecting {
			reconnected = true
		}
	}
	require.True(t, reconnected, "the link with the gap was replaced")
	require.Equal(t, tether.Connected, c.State())
}

// A client whose resumes never fill the gap (it does not replay what the
// Handler has not acknowledged) is not resumed for ever: the same gap on a
// third link in a row ends the session with 1002, and a resume is told so.
func TestSessionGapNotFilledEnds(t *testing.T) {
	t.Parallel()
	g := newGarbageServer(t)
	ctx := ctxT(t, 10*time.Second)
	var resume http.Header
	gapOnNewLink := func() error {
		t.Helper()
		ws, _, err := websocket.Dial(ctx, g.URL(), &websocket.DialOptions{HTTPHeader: resume, Subprotocols: []string{tether.Subprotocol}})
		require.NoError(t, err)
		defer ws.CloseNow()
		_, b, err := ws.Read(ctx)
		if err != nil {
			return err
		}
		hello, err := frame.Decode(b)
		require.NoError(t, err)
		require.Equal(t, frame.Hello, hello.Kind)
		if resume == nil {
			resume = http.Header{
				"Tether-Session": {hex.EncodeToString(hello.Session[:])},
				"Tether-Secret":  {hex.EncodeToString(hello.Secret[:])},
			}
		} else {
			require.Equal(t, frame.StatusResumed, hello.Status)
		}
		require.NoError(t, ws.Write(ctx, websocket.MessageBinary, enc(frame.Frame{Kind: frame.Data, Seq: 1, Payload: []byte("one")})))
		require.NoError(t, ws.Write(ctx, websocket.MessageBinary, enc(frame.Frame{Kind: frame.Data, Seq: 4, Payload: []byte("gap")})))
		for {
			if _, _, err := ws.Read(ctx); err != nil {
				return err
			}
		}
	}
	for i := 1; i < 3; i++ {
		err := gapOnNewLink()
		require.Equal(t, websocket.StatusCode(-1), websocket.CloseStatus(err), "gap %d: the link is dropped: %v", i, err)
	}
	err := gapOnNewLink()
	require.Equal(t, websocket.StatusProtocolError, websocket.CloseStatus(err), "the third gap in a row ends the session: %v", err)
	err = gapOnNewLink()
	require.Equal(t, websocket.StatusProtocolError, websocket.CloseStatus(err), "a resume is told how the session ended: %v", err)

	// Over long polling alike: the batch is refused, then the session ends.
	p := g.open()
	gap := rawBatch(enc(frame.Frame{Kind: frame.Data, Seq: 3, Payload: []byte("gap")}))
	for i := 1; i <= 3; i++ {
		status, _ := g.send(p, gap)
		require.Equal(t, http.StatusBadRequest, status, "gap %d", i)
	}
	status, fs := g.send(p, gap)
	require.Equal(t, http.StatusOK, status)
	require.Len(t, fs, 1)
	require.Equal(t, frame.Close, fs[0].Kind)
	require.EqualValues(t, websocket.StatusProtocolError, fs[0].Code)
}

// Gaps at different points are links that lost messages at different
// times: each is filled by a resume, and the session lives on.
func TestSessionGapsFilledLiveOn(t *testing.T) {
	t.Parallel()
	g := newGarbageServer(t)
	p := g.open()
	for seq := uint64(1); seq <= 4; seq++ {
		status, _ := g.send(p, rawBatch(enc(frame.Frame{Kind: frame.Data, Seq: seq + 1, Payload: []byte("gap")})))
		require.Equal(t, http.StatusBadRequest, status, "gap after %d", seq-1)
		status, _ = g.send(p, rawBatch(enc(frame.Frame{Kind: frame.Data, Seq: seq + 2, Payload: []byte("gap")})))
		require.Equal(t, http.StatusBadRequest, status, "gap after %d", seq-1)
		g.echoes(p, seq, "filled")
	}
}

package tether_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/tetherws/tether"
	"github.com/tetherws/tether/internal/frame"
)

// A send is applied whole or not at all: a batch whose last message is over
// the read limit is refused with 413 and none of it reaches serve.
func TestPollSendWholeOrNothing(t *testing.T) {
	t.Parallel()
	g := newGarbageServer(t)
	p := g.open()
	body := frame.AppendBatch(nil, []frame.Frame{
		{Kind: frame.Data, Seq: 1, Payload: []byte("must not arrive")},
		{Kind: frame.Data, Seq: 2, Binary: true, Payload: make([]byte, garbageReadLimit+1)},
	})
	status, _ := g.send(p, body)
	require.Equal(t, http.StatusRequestEntityTooLarge, status)
	gap := frame.AppendBatch(nil, []frame.Frame{
		{Kind: frame.Data, Seq: 1, Payload: []byte("must not arrive either")},
		{Kind: frame.Data, Seq: 3, Payload: []byte("after a gap")},
	})
	status, _ = g.send(p, gap)
	require.Equal(t, http.StatusBadRequest, status)
	// Message 1 is still to come: this one is it, not a duplicate.
	g.echoes(p, 1, "arrives")
}

// A client that sends more than the session's window while serve does not
// read is refused at once (413), whole batch and all, and never holds the
// request: nothing waits for serve.
func TestPollSendBeyondWindow(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	var (
		read  atomic.Int32
		marks strings.Builder
	)
	g := newGarbageServerWith(t, func(ctx context.Context, s *tether.Session) {
		select {
		case <-release:
		case <-ctx.Done():
			return
		}
		for {
			_, p, err := s.Read(ctx)
			if err != nil {
				return
			}
			marks.WriteByte(p[0]) // read below once serve has read them all
			read.Add(1)
		}
	}, tether.WithReplayBuffer(32<<10))
	p := g.open()
	batch := func(from, n int, mark byte) []byte {
		fs := make([]frame.Frame, n)
		for i := range fs {
			p := make([]byte, 1024)
			p[0] = mark
			fs[i] = frame.Frame{Kind: frame.Data, Seq: uint64(from + i), Binary: true, Payload: p}
		}
		return frame.AppendBatch(nil, fs)
	}
	// 1 KiB messages cost 1152 bytes: 28 fit a 32 KiB window, and one more
	// may come on top.
	status, _ := g.send(p, batch(1, 20, 'a'))
	require.Equal(t, http.StatusOK, status)
	start := time.Now()
	status, _ = g.send(p, batch(21, 20, 'x'))
	require.Equal(t, http.StatusRequestEntityTooLarge, status, "beyond the window")
	require.Less(t, time.Since(start), time.Second, "refused at once, not held")
	status, _ = g.send(p, batch(21, 9, 'b'))
	require.Equal(t, http.StatusOK, status, "the rest of the window")
	close(release)
	eventually(t, 5*time.Second, func() bool { return read.Load() == 29 }, "serve reads all 29")
	require.Equal(t, strings.Repeat("a", 20)+strings.Repeat("b", 9), marks.String(), "nothing of the refused batch")
	status, _ = g.send(p, batch(30, 29, 'c'))
	require.Equal(t, http.StatusOK, status, "a window again, once serve has read")
}

// slowBody is a request body that yields its bytes only when told.
type slowBody struct {
	r    *io.PipeReader
	w    *io.PipeWriter
	read chan struct{} // closed when the server first reads
	once sync.Once
}

func newSlowBody() *slowBody {
	r, w := io.Pipe()
	return &slowBody{r: r, w: w, read: make(chan struct{})}
}

func (b *slowBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	b.once.Do(func() { close(b.read) })
	return n, err
}

// startSlowSend starts a send whose body trickles in: one byte now, the
// rest never. It returns the answer's status on a channel.
func (g *garbageServer) startSlowSend(p pollSession) (<-chan int, *slowBody) {
	body := newSlowBody()
	req, err := http.NewRequest(http.MethodPost, g.base+"?"+p.q("send"), body)
	require.NoError(g.t, err)
	req.Header.Set("Tether-Secret", p.secret)
	req.ContentLength = 100
	status := make(chan int, 1)
	go func() {
		resp, err := g.hc.Do(req)
		if err != nil {
			status <- 0
			return
		}
		resp.Body.Close()
		status <- resp.StatusCode
	}()
	go func() { _, _ = body.w.Write([]byte{1}) }()
	g.t.Cleanup(func() { _ = body.w.Close() })
	return status, body
}

// A body that trickles in is cut off after the poll wait (408): it holds
// neither its session's send turn nor its TTL for longer.
func TestPollSlowBodyBounded(t *testing.T) {
	t.Parallel()
	g := newGarbageServer(t) // polls held for 300 ms
	p := g.open()
	start := time.Now()
	status, body := g.startSlowSend(p)
	waitCh(t, body.read, 5*time.Second, "the server to read the body")
	select {
	case s := <-status:
		require.Equal(t, http.StatusRequestTimeout, s)
		require.Less(t, time.Since(start), 3*time.Second)
	case <-time.After(5 * time.Second):
		t.Fatal("a trickling body held its send for 5 s")
	}
	g.echoes(p, 1, "the session goes on")
}

// One send at a time per session, and one waiting for its turn: a third is
// refused at once with 429, without waiting.
func TestPollSendTurns(t *testing.T) {
	t.Parallel()
	// The slow send holds its turn until its body times out, 3 s: long
	// after the others have come, however loaded the machine.
	g := newGarbageServer(t, tether.WithPollLimits(0, 0, 3*time.Second))
	p := g.open()
	slow, body := g.startSlowSend(p)
	waitCh(t, body.read, 5*time.Second, "the first send to be reading its body")

	valid := frame.AppendBatch(nil, []frame.Frame{{Kind: frame.Data, Seq: 1, Payload: []byte("x")}})
	type result struct {
		status int
		took   time.Duration
	}
	results := make(chan result, 5)
	for range 5 {
		go func() {
			start := time.Now()
			req, err := http.NewRequest(http.MethodPost, g.base+"?"+p.q("send"), bytes.NewReader(valid))
			if err != nil {
				results <- result{}
				return
			}
			req.Header.Set("Tether-Secret", p.secret)
			resp, err := g.hc.Do(req)
			if err != nil {
				results <- result{}
				return
			}
			resp.Body.Close()
			results <- result{resp.StatusCode, time.Since(start)}
		}()
	}
	counts := map[int]int{}
	for range 5 {
		r := <-results
		counts[r.status]++
		if r.status == http.StatusTooManyRequests {
			require.Less(t, r.took, time.Second, "refused at once, not after the slow send")
		}
	}
	require.Equal(t, map[int]int{http.StatusTooManyRequests: 4, http.StatusOK: 1}, counts)
	require.Equal(t, http.StatusRequestTimeout, <-slow)
}

// An expired tombstone is not answered: a client that comes back after the
// TTL learns nothing of the session it had.
func TestTombstoneExpires(t *testing.T) {
	t.Parallel()
	g := newGarbageServer(t, tether.WithSessionTTL(300*time.Millisecond))
	p := g.open()
	status, _ := g.send(p, frame.AppendBatch(nil, []frame.Frame{{Kind: frame.Close, Code: 4000, Reason: "done"}}))
	require.Equal(t, http.StatusOK, status)
	eventually(t, 5*time.Second, func() bool { return g.h.Sessions() == 0 }, "the session ended")
	a := g.expect(http.StatusOK, http.MethodGet, p.q("poll", "ack=0"), p.header(), nil)
	fs, err := frame.DecodeBatch(a.body, 1, 1<<10)
	require.NoError(t, err)
	require.Equal(t, frame.Close, fs[0].Kind)
	require.EqualValues(t, 4000, fs[0].Code)
	eventually(t, 5*time.Second, func() bool {
		return g.do(http.MethodGet, "?"+p.q("poll", "ack=0"), p.header(), nil).status == http.StatusNotFound
	}, "the tombstone to expire")
}

// A client's close code that no endpoint may send is not kept: the session
// ends as a protocol error, and that is what serve and a returning client
// are told.
func TestInvalidCloseCodeNotKept(t *testing.T) {
	t.Parallel()
	for _, code := range []uint16{0, 999, 1004, 1005, 1006, 1012, 1015, 2999, 5000, 65535} {
		t.Run(strconv.Itoa(int(code)), func(t *testing.T) {
			t.Parallel()
			errs := make(chan error, 1)
			g := newGarbageServerWith(t, echoRecording(errs))
			p := g.open()
			status, _ := g.send(p, frame.AppendBatch(nil, []frame.Frame{{Kind: frame.Close, Code: code, Reason: "bad"}}))
			require.Equal(t, http.StatusOK, status)
			err := lostRecv(t, errs, 5*time.Second, "serve's Read to fail")
			require.Equal(t, websocket.StatusProtocolError, websocket.CloseStatus(err), "%v", err)
			a := g.expect(http.StatusOK, http.MethodGet, p.q("poll", "ack=0"), p.header(), nil)
			fs, err := frame.DecodeBatch(a.body, 1, 1<<10)
			require.NoError(t, err)
			require.EqualValues(t, websocket.StatusProtocolError, fs[0].Code)
		})
	}
}

// Text must be UTF-8, both ways. A client's text message that is not ends
// its session with 1007, on either transport and in plain mode; serve's
// Write refuses to send one.
func TestInvalidUTF8(t *testing.T) {
	t.Parallel()
	bad := []byte("caf\xe9")
	writeErr := make(chan error, 4)
	readErr := make(chan error, 4)
	g := newGarbageServerWith(t, func(ctx context.Context, s *tether.Session) {
		writeErr <- s.Write(ctx, websocket.MessageText, bad)
		for {
			if _, _, err := s.Read(ctx); err != nil {
				readErr <- err
				return
			}
		}
	})

	t.Run("polling", func(t *testing.T) {
		p := g.open()
		require.Error(t, <-writeErr)
		status, _ := g.send(p, frame.AppendBatch(nil, []frame.Frame{{Kind: frame.Data, Seq: 1, Payload: bad}}))
		require.NotEqual(t, http.StatusOK, status)
		err := <-readErr
		require.ErrorContains(t, err, "UTF-8")
		a := g.expect(http.StatusOK, http.MethodGet, p.q("poll", "ack=0"), p.header(), nil)
		fs, err := frame.DecodeBatch(a.body, 2, 1<<10)
		require.NoError(t, err)
		require.Equal(t, frame.Close, fs[len(fs)-1].Kind)
		require.EqualValues(t, websocket.StatusInvalidFramePayloadData, fs[len(fs)-1].Code)
	})
	t.Run("websocket", func(t *testing.T) {
		ws, _, err := rawOpen(t, g.URL(), nil)
		require.NoError(t, err)
		require.Error(t, <-writeErr)
		ctx := ctxT(t, 5*time.Second)
		require.NoError(t, ws.Write(ctx, websocket.MessageBinary, frame.Append(nil, &frame.Frame{Kind: frame.Data, Seq: 1, Payload: bad})))
		_, _, err = ws.Read(ctx)
		require.Equal(t, websocket.StatusInvalidFramePayloadData, websocket.CloseStatus(err), "%v", err)
		require.ErrorContains(t, <-readErr, "UTF-8")
	})
	t.Run("plain", func(t *testing.T) {
		ws := dialPlain(t, g.URL())
		require.Error(t, <-writeErr)
		ctx := ctxT(t, 5*time.Second)
		require.NoError(t, ws.Write(ctx, websocket.MessageText, bad))
		_, _, err := ws.Read(ctx)
		require.Equal(t, websocket.StatusInvalidFramePayloadData, websocket.CloseStatus(err), "%v", err)
		require.ErrorContains(t, <-readErr, "UTF-8")
	})
}

package tether_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/tetherws/tether"
)

// readerConn is what the Reader tests need of a *websocket.Conn or a
// *tether.Conn.
type readerConn interface {
	Reader(context.Context) (websocket.MessageType, io.Reader, error)
	Read(context.Context) (websocket.MessageType, []byte, error)
	Writer(context.Context, websocket.MessageType) (io.WriteCloser, error)
}

// readSmall reads the next message with Reader, step bytes at a time.
func readSmall(ctx context.Context, c readerConn, step int) (websocket.MessageType, []byte, error) {
	typ, r, err := c.Reader(ctx)
	if err != nil {
		return 0, nil, err
	}
	out := []byte{}
	buf := make([]byte, step)
	for {
		n, err := r.Read(buf)
		out = append(out, buf[:n]...)
		if errors.Is(err, io.EOF) {
			return typ, out, nil
		}
		if err != nil {
			return typ, out, err
		}
	}
}

// writeChunks writes p as one message through Writer, in chunks of step.
func writeChunks(ctx context.Context, c readerConn, typ websocket.MessageType, p []byte, step int) error {
	w, err := c.Writer(ctx, typ)
	if err != nil {
		return err
	}
	for len(p) > 0 {
		n := min(step, len(p))
		if _, err := w.Write(p[:n]); err != nil {
			_ = w.Close()
			return err
		}
		p = p[n:]
	}
	return w.Close()
}

// fragmentedEcho echoes every message it reads with Reader, through a Writer
// in chunks: on a coder server each chunk is a frame of its own, so the
// client reads fragmented messages.
func fragmentedEcho(ctx context.Context, c *websocket.Conn) {
	for {
		typ, p, err := readSmall(ctx, c, 1000)
		if err != nil {
			return
		}
		if writeChunks(ctx, c, typ, p, 3000) != nil {
			return
		}
	}
}

// Writer's chunks make one message, and Reader reads it back whole in small
// steps: in plain mode (fragmented frames from a coder server), in session
// mode over WebSocket and over long polling.
func TestReaderWriterRoundTrip(t *testing.T) {
	t.Parallel()
	type mode struct {
		name string
		url  func(t *testing.T) string
		opts []tether.Option
		want tether.Transport
	}
	modes := []mode{
		{name: "plain", url: func(t *testing.T) string { return newTestServer(t, fragmentedEcho).URL() }, want: tether.WebSocket},
		{name: "session", url: func(t *testing.T) string { return newSessionServer(t, sessionEcho).URL() }, want: tether.WebSocket},
		{name: "polling", url: func(t *testing.T) string {
			ss := newSessionServer(t, sessionEcho)
			ss.setBlock(true)
			return ss.URL()
		}, opts: []tether.Option{tether.WithFallback("")}, want: tether.Polling},
	}
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			t.Parallel()
			c := dial(t, m.url(t), m.opts...)
			require.Equal(t, m.want, c.Transport())
			ctx := ctxT(t, 20*time.Second)
			for i, size := range []int{0, 1, 100, 5000, 30000} {
				typ := websocket.MessageBinary
				if i%2 == 0 {
					typ = websocket.MessageText
				}
				p := bytes.Repeat([]byte{'a' + byte(i)}, size)
				require.NoError(t, writeChunks(ctx, c, typ, p, 777))
				gotTyp, got, err := readSmall(ctx, c, 7)
				require.NoError(t, err)
				require.Equal(t, typ, gotTyp)
				require.Equal(t, p, got, "message %d of %d bytes", i, size)
			}
			st := c.Stats()
			require.EqualValues(t, 5, st.MessagesSent)
			require.EqualValues(t, 5, st.MessagesReceived)
			require.EqualValues(t, 0+1+100+5000+30000, st.BytesReceived)
			require.Zero(t, st.Reconnects)
		})
	}
}

// A message must be read to its end before the next, as with coder: Reader
// and Read fail until it is, and then go on.
func TestReaderNotReadToCompletion(t *testing.T) {
	t.Parallel()
	s := newTestServer(t, func(ctx context.Context, c *websocket.Conn) {
		// Two frames: coder/websocket's Reader sees an unfinished message
		// only at a frame boundary.
		if writeChunks(ctx, c, websocket.MessageText, []byte("abcdef"), 3) != nil {
			return
		}
		if c.Write(ctx, websocket.MessageText, []byte("next")) != nil {
			return
		}
		_, _, _ = c.Read(ctx)
	})
	check := func(t *testing.T, c readerConn) {
		ctx := ctxT(t, 10*time.Second)
		_, r, err := c.Reader(ctx)
		require.NoError(t, err)
		half := make([]byte, 3)
		_, err = io.ReadFull(r, half)
		require.NoError(t, err)
		_, _, err = c.Reader(ctx)
		require.ErrorContains(t, err, "previous message not read to completion")
		_, _, err = c.Read(ctx)
		require.ErrorContains(t, err, "previous message not read to completion")
		rest, err := io.ReadAll(r)
		require.NoError(t, err)
		require.Equal(t, "abcdef", string(half)+string(rest))
		_, p, err := c.Read(ctx)
		require.NoError(t, err)
		require.Equal(t, "next", string(p))
	}
	t.Run("websocket.Conn", func(t *testing.T) {
		t.Parallel()
		ws, _, err := websocket.Dial(ctxT(t, 10*time.Second), s.URL(), nil)
		require.NoError(t, err)
		t.Cleanup(func() { _ = ws.CloseNow() })
		check(t, ws)
	})
	t.Run("tether.Conn", func(t *testing.T) {
		t.Parallel()
		check(t, dial(t, s.URL()))
	})
}

// Plain mode: a link lost in the middle of a message fails that message's
// Read with ErrLinkLost, and the next Reader gets the next message, from
// the next link.
func TestReaderPlainMessageCutByDrop(t *testing.T) {
	t.Parallel()
	halfRead := make(chan struct{})
	var links atomic.Int64
	s := newTestServer(t, func(ctx context.Context, c *websocket.Conn) {
		if links.Add(1) > 1 {
			_ = c.Write(ctx, websocket.MessageText, []byte("next"))
			_, _, _ = c.Read(ctx)
			return
		}
		w, err := c.Writer(ctx, websocket.MessageBinary)
		if err != nil {
			return
		}
		// The first frame of the message goes out (coder/websocket flushes
		// a frame that fills its 4 KiB buffer); the rest never does.
		if _, err := w.Write(bytes.Repeat([]byte("x"), 8000)); err != nil {
			return
		}
		select {
		case <-halfRead:
		case <-ctx.Done():
		}
		_ = c.CloseNow()
	})
	var once sync.Once
	cut := func() { once.Do(func() { close(halfRead) }) }
	t.Cleanup(cut)
	c := dial(t, s.URL())
	ctx := ctxT(t, 10*time.Second)
	typ, r, err := c.Reader(ctx)
	require.NoError(t, err)
	require.Equal(t, websocket.MessageBinary, typ)
	buf := make([]byte, 8000)
	// Less than the frame that went out: the rest of it never comes.
	_, err = io.ReadFull(r, buf[:1000])
	require.NoError(t, err)
	cut()
	// The rest of the frame that went out, then the cut.
	for range 100 {
		if _, err = r.Read(buf); err != nil {
			break
		}
	}
	require.ErrorIs(t, err, tether.ErrLinkLost)
	_, err = r.Read(buf)
	require.ErrorIs(t, err, tether.ErrLinkLost, "the error stays")

	typ, p, err := readSmall(ctx, c, 100)
	require.NoError(t, err, "the next Reader gets the next message")
	require.Equal(t, websocket.MessageText, typ)
	require.Equal(t, "next", string(p))
	require.EqualValues(t, 2, links.Load())
}

// Session mode: a large message cut by a dropped link comes again, whole,
// after the resume; the Reader never sees part of it, nor anything twice.
func TestReaderSessionMessageCutByDrop(t *testing.T) {
	t.Parallel()
	t.Run("websocket", func(t *testing.T) { t.Parallel(); readerSessionCut(t, false) })
	t.Run("polling", func(t *testing.T) { t.Parallel(); readerSessionCut(t, true) })
}

func readerSessionCut(t *testing.T, polling bool) {
	big := make([]byte, 300<<10)
	for i := range big {
		big[i] = byte(i * 7)
	}
	ss := newSessionServer(t, func(ctx context.Context, s *tether.Session) {
		for i := range 5 {
			if s.Write(ctx, websocket.MessageText, []byte("m"+strconv.Itoa(i))) != nil {
				return
			}
		}
		if s.Write(ctx, websocket.MessageBinary, big) != nil {
			return
		}
		if s.Write(ctx, websocket.MessageText, []byte("after")) != nil {
			return
		}
		_, _, _ = s.Read(ctx)
	})
	ss.setBlock(polling)
	p, err := faultnetListen(ss.Addr())
	require.NoError(t, err)
	t.Cleanup(func() { _ = p.Close() })
	// The first connection is reset once 100 KiB have come from the server:
	// in the middle of the big message (on polling, of the poll that
	// carries it).
	p.DropAfter(100 << 10)
	c := dial(t, "ws://"+p.Addr(), tether.WithReadLimit(1<<20), tether.WithFallback(""))
	if polling {
		require.Equal(t, tether.Polling, c.Transport())
	}
	ctx := ctxT(t, 20*time.Second)
	for i := range 5 {
		_, got, err := readSmall(ctx, c, 3)
		require.NoError(t, err)
		require.Equal(t, "m"+strconv.Itoa(i), string(got))
	}
	typ, got, err := readSmall(ctx, c, 4096)
	require.NoError(t, err)
	require.Equal(t, websocket.MessageBinary, typ)
	require.Equal(t, sha256.Sum256(big), sha256.Sum256(got), "the big message, whole (%d bytes)", len(got))
	_, got, err = readSmall(ctx, c, 100)
	require.NoError(t, err)
	require.Equal(t, "after", string(got))
	if !polling {
		require.GreaterOrEqual(t, c.Stats().Reconnects, uint64(1), "the link was cut")
	}
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	_, _, err = c.Reader(short)
	require.ErrorIs(t, err, context.DeadlineExceeded, "nothing comes twice")
}

// A Reader whose ctx ends while it waits returns, and the link is intact:
// the next Reader gets the next message, with no reconnect.
func TestReaderCtxKeepsLink(t *testing.T) {
	t.Parallel()
	send := make(chan struct{})
	s := newTestServer(t, func(ctx context.Context, c *websocket.Conn) {
		select {
		case <-send:
		case <-ctx.Done():
			return
		}
		_ = c.Write(ctx, websocket.MessageText, []byte("late"))
		_, _, _ = c.Read(ctx)
	})
	c := dial(t, s.URL())
	for range 3 {
		short, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
		_, _, err := c.Reader(short)
		cancel()
		require.ErrorIs(t, err, context.DeadlineExceeded)
	}
	close(send)
	_, p, err := readSmall(ctxT(t, 10*time.Second), c, 2)
	require.NoError(t, err)
	require.Equal(t, "late", string(p))
	require.Zero(t, c.Stats().Reconnects)
}

// A message over the read limit fails its Reader, or its Reader's Read, with
// websocket.ErrMessageTooBig, once: the next Reader gets the next message
// from the next link and reports nothing more.
func TestReaderReadLimit(t *testing.T) {
	t.Parallel()
	var links atomic.Int64
	s := newTestServer(t, func(ctx context.Context, c *websocket.Conn) {
		if links.Add(1) == 1 {
			_ = c.Write(ctx, websocket.MessageBinary, make([]byte, 2000))
		} else {
			_ = c.Write(ctx, websocket.MessageText, []byte("ok"))
		}
		_, _, _ = c.Read(ctx)
	})
	c := dial(t, s.URL(), tether.WithReadLimit(1000))
	ctx := ctxT(t, 10*time.Second)
	// Told once: by Reader when the message was dropped before it came, or
	// else by its body's Read.
	_, r, err := c.Reader(ctx)
	if err == nil {
		_, err = io.ReadAll(r)
	}
	require.ErrorIs(t, err, websocket.ErrMessageTooBig)
	_, p, err := readSmall(ctx, c, 10)
	require.NoError(t, err, "the application has been told")
	require.Equal(t, "ok", string(p))
}

// readLoop reads messages with Reader until ctx ends, and sends what it gets.
func readLoop(ctx context.Context, c readerConn, got chan<- string) {
	for {
		_, p, err := readSmall(ctx, c, 64)
		if err != nil {
			return
		}
		select {
		case got <- string(p):
		case <-ctx.Done():
			return
		}
	}
}

func TestReaderReadLoop(t *testing.T) {
	t.Parallel()
	s := newTestServer(t, nil)
	c := dial(t, s.URL())
	ctx := ctxT(t, 10*time.Second)
	got := make(chan string, 100)
	done := make(chan struct{})
	go func() {
		defer close(done)
		readLoop(ctx, c, got)
	}()
	for i := range 50 {
		require.NoError(t, writeChunks(ctx, c, websocket.MessageText, []byte(fmt.Sprint("msg ", i)), 3))
	}
	for i := range 50 {
		require.Equal(t, fmt.Sprint("msg ", i), <-got)
	}
	require.NoError(t, c.Close(websocket.StatusNormalClosure, ""))
	<-done
}

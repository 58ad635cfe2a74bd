package tether

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"
)

// Past the read-ahead bound, the held message's body is streamed to the
// Reader from the socket, and every message comes out in order.
func TestReaderAfterReadAhead(t *testing.T) {
	t.Parallel()
	const n = 1500 // beyond the 1024 messages read ahead
	url := talker(t, func(ctx context.Context, c *websocket.Conn) error {
		for i := range n {
			if err := c.Write(ctx, websocket.MessageText, []byte(strconv.Itoa(i))); err != nil {
				return err
			}
		}
		return nil
	})
	c, err := Dial(context.Background(), url)
	require.NoError(t, err)
	defer c.CloseNow()
	require.Eventually(t, func() bool { _, _, held := c.rd.unread(); return held }, 10*time.Second, time.Millisecond,
		"the reader holds a message once the bound is reached")
	msgs, _, _ := c.rd.unread()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := range n {
		_, r, err := c.Reader(ctx)
		require.NoError(t, err, "message %d", i)
		if i == msgs {
			require.NotNil(t, c.rd.sr.body, "the held message is read from the socket")
		}
		p, err := io.ReadAll(r)
		require.NoError(t, err)
		require.Equal(t, strconv.Itoa(i), string(p))
	}
	require.Zero(t, c.Stats().Reconnects)
}

// While a Reader's message is open in the socket and nobody reads it, the
// heartbeat does not judge the link (nobody can read its pongs) and no
// background reader takes the link; while its body is being read, the
// heartbeat judges it as usual.
func TestReaderOpenMessageStalls(t *testing.T) {
	t.Parallel()
	rest, start := make(chan struct{}), make(chan struct{})
	url := talker(t, func(ctx context.Context, c *websocket.Conn) error {
		select {
		case <-start:
		case <-ctx.Done():
			return ctx.Err()
		}
		w, err := c.Writer(ctx, websocket.MessageBinary)
		if err != nil {
			return err
		}
		// A frame that fills coder/websocket's 4 KiB buffer goes out.
		if _, err := w.Write(bytes.Repeat([]byte("1"), 8000)); err != nil {
			return err
		}
		select {
		case <-rest:
		case <-ctx.Done():
			return ctx.Err()
		}
		if _, err := w.Write([]byte("second part")); err != nil {
			return err
		}
		return w.Close()
	})
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(rest) }) })
	c, err := Dial(context.Background(), url)
	require.NoError(t, err)
	defer c.CloseNow()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r := readerWaiting(t, ctx, c, start)
	require.True(t, c.rd.stalled(), "an open message nobody reads stalls the link")

	got := make(chan []byte, 1)
	go func() {
		p, _ := io.ReadAll(r)
		got <- p
	}()
	require.Eventually(t, func() bool { return !c.rd.stalled() }, 5*time.Second, time.Millisecond,
		"a body being read is judged by the heartbeat")
	c.rd.mu.Lock()
	bg := c.rd.bg
	c.rd.mu.Unlock()
	require.False(t, bg, "no background reader while the message is open")
	once.Do(func() { close(rest) })
	require.Equal(t, strings.Repeat("1", 8000)+"second part", string(<-got))
	require.False(t, c.rd.stalled())
}

// CloseRead while a Reader's message is half read: the rest is read and
// dropped by the background reader, the Reader's Read says CloseRead was
// called, and control frames keep flowing (a ping is answered).
func TestReaderCloseReadWhileOpen(t *testing.T) {
	t.Parallel()
	start := make(chan struct{})
	url := talker(t, func(ctx context.Context, c *websocket.Conn) error {
		select {
		case <-start:
		case <-ctx.Done():
			return ctx.Err()
		}
		w, err := c.Writer(ctx, websocket.MessageBinary)
		if err != nil {
			return err
		}
		for range 10 {
			if _, err := w.Write(bytes.Repeat([]byte("z"), 1000)); err != nil {
				return err
			}
		}
		if err := w.Close(); err != nil {
			return err
		}
		return c.Write(ctx, websocket.MessageText, []byte("dropped too"))
	})
	c, err := Dial(context.Background(), url)
	require.NoError(t, err)
	defer c.CloseNow()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r := readerWaiting(t, ctx, c, start)
	_, err = io.ReadFull(r, make([]byte, 1500))
	require.NoError(t, err)
	c.CloseRead(ctx)
	_, err = r.Read(make([]byte, 10))
	require.True(t, errors.Is(err, errReadClosed), "got %v", err)
	require.NoError(t, c.Ping(ctx), "the link is read, so pongs come back")
	require.Eventually(t, func() bool { return c.Stats().BytesReceived >= 1500 }, 5*time.Second, time.Millisecond)
	_, _, err = c.Reader(ctx)
	require.ErrorIs(t, err, errReadClosed)
	require.Zero(t, c.Stats().Reconnects)
}

// readerWaiting calls Reader, lets the server send (closes start) once the
// Reader waits for the link, so that the message's body is read from the
// socket, and returns the Reader's io.Reader.
func readerWaiting(t *testing.T, ctx context.Context, c *Conn, start chan struct{}) io.Reader {
	t.Helper()
	type res struct {
		r   io.Reader
		err error
	}
	got := make(chan res, 1)
	go func() {
		_, r, err := c.Reader(ctx)
		got <- res{r, err}
	}()
	require.Eventually(t, func() bool {
		c.rd.mu.Lock()
		defer c.rd.mu.Unlock()
		return c.rd.waiting || c.rd.direct
	}, 5*time.Second, time.Millisecond, "Reader waits")
	close(start)
	g := <-got
	require.NoError(t, g.err)
	require.Nil(t, c.rd.sr.relay, "the body is in the socket")
	return g.r
}

// A Reader that comes while the background reader is reading a message
// ahead takes it at once, as coder/websocket's Reader returns at the
// header: the rest, sent only once the application has seen the start,
// comes through.
func TestReaderTakesMessageReadAhead(t *testing.T) {
	t.Parallel()
	rest := make(chan struct{})
	url := talker(t, func(ctx context.Context, c *websocket.Conn) error {
		w, err := c.Writer(ctx, websocket.MessageBinary)
		if err != nil {
			return err
		}
		if _, err := w.Write(bytes.Repeat([]byte("1"), 8000)); err != nil {
			return err
		}
		select {
		case <-rest:
		case <-ctx.Done():
			return ctx.Err()
		}
		if _, err := w.Write([]byte("second part")); err != nil {
			return err
		}
		if err := w.Close(); err != nil {
			return err
		}
		return c.Write(ctx, websocket.MessageText, []byte("next"))
	})
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(rest) }) })
	c, err := Dial(context.Background(), url)
	require.NoError(t, err)
	defer c.CloseNow()
	require.Eventually(t, func() bool {
		c.rd.mu.Lock()
		defer c.rd.mu.Unlock()
		return c.rd.ahead != nil
	}, 5*time.Second, time.Millisecond, "the background reader reads the message ahead")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, r, err := c.Reader(ctx)
	require.NoError(t, err)
	require.NotNil(t, c.rd.sr.relay)
	_, err = io.ReadFull(r, make([]byte, 1000))
	require.NoError(t, err)
	once.Do(func() { close(rest) })
	p, err := io.ReadAll(r)
	require.NoError(t, err)
	require.Equal(t, strings.Repeat("1", 7000)+"second part", string(p))
	_, p, err = c.Read(ctx)
	require.NoError(t, err)
	require.Equal(t, "next", string(p))
	require.Zero(t, c.Stats().Reconnects)
}

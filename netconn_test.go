package tether_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"math/rand/v2"
	"net"
	"os"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/tetherws/tether"
)

// In session mode NetConn is a byte stream that survives resets and a
// switch from WebSocket to long polling: every byte comes back exactly
// once, in order, through a server that echoes each message.
func TestNetConnSessionByteStream(t *testing.T) {
	t.Parallel()
	ss := newSessionServer(t, sessionEcho)
	p, err := faultnetListen(ss.Addr())
	require.NoError(t, err)
	t.Cleanup(func() { _ = p.Close() })
	c := dial(t, "ws://"+p.Addr(), tether.WithFallback(""))
	require.Equal(t, tether.WebSocket, c.Transport())
	ctx := ctxT(t, 60*time.Second)
	nc := tether.NetConn(ctx, c, websocket.MessageBinary)

	const total = 256 << 10
	src := make([]byte, total)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range src {
		src[i] = byte(rng.Uint32())
	}
	// At these many bytes written: a reset, another, then a reset while the
	// path stops passing WebSocket, so that the Conn goes on polling. The
	// test keeps about 16 KiB in flight, so that every reset finds bytes
	// going both ways.
	faults := []struct {
		at  int
		act func()
	}{
		{32 << 10, p.Reset},
		{96 << 10, p.Reset},
		{160 << 10, func() { ss.setBlock(true); p.Reset() }},
	}
	const inFlight = 16 << 10
	got := make([]byte, 0, total)
	buf := make([]byte, 1500)
	read := func(upTo int) {
		for i := 0; len(got) < upTo; i++ {
			require.Less(t, i, total, "every Read returns bytes")
			require.NoError(t, nc.SetReadDeadline(time.Now().Add(20*time.Second)))
			n, err := nc.Read(buf)
			require.NoError(t, err, "after %d bytes", len(got))
			got = append(got, buf[:n]...)
		}
	}
	for off, i := 0, 0; off < total; i++ {
		if len(faults) > 0 && off >= faults[0].at {
			faults[0].act()
			faults = faults[1:]
		}
		n := min(1+(i*7919)%4000, total-off)
		require.NoError(t, nc.SetWriteDeadline(time.Now().Add(20*time.Second)))
		_, err := nc.Write(src[off : off+n])
		require.NoError(t, err, "after %d bytes", off)
		off += n
		read(off - inFlight)
	}
	read(total)
	require.Equal(t, sha256.Sum256(src), sha256.Sum256(got), "every byte once, in order")
	require.Equal(t, tether.Polling, c.Transport())
	require.GreaterOrEqual(t, c.Stats().Reconnects, uint64(2))

	// Nothing more comes: the read deadline ends the wait.
	require.NoError(t, nc.SetReadDeadline(time.Now().Add(100*time.Millisecond)))
	_, err = nc.Read(buf)
	requireTimeout(t, err)
	require.NoError(t, nc.Close())
}

// requireTimeout checks that err is a deadline's error as coder/websocket's
// NetConn gives it: a net.Error whose Timeout is true, wrapping
// context.DeadlineExceeded (and for tether os.ErrDeadlineExceeded too).
func requireTimeout(t *testing.T, err error) {
	t.Helper()
	var ne net.Error
	require.True(t, errors.As(err, &ne), "a net.Error: %v", err)
	require.True(t, ne.Timeout(), "Timeout: %v", err)
	require.ErrorIs(t, err, context.DeadlineExceeded)
}

// Deadlines: a Read or Write waiting when its deadline passes fails with a
// timeout error, as coder/websocket's NetConn does, and later calls fail at
// once until the deadline moves; unlike coder's, the link stays intact and
// a Write cut short by its deadline sends nothing.
func TestNetConnDeadlines(t *testing.T) {
	t.Parallel()
	s := newTestServer(t, nil) // echoes
	{
		c := dial(t, s.URL())
		nc := tether.NetConn(context.Background(), c, websocket.MessageBinary)
		buf := make([]byte, 10)
		for range 3 {
			require.NoError(t, nc.SetReadDeadline(time.Now().Add(50*time.Millisecond)))
			_, err := nc.Read(buf)
			requireTimeout(t, err)
			require.ErrorIs(t, err, os.ErrDeadlineExceeded)
			// Until it is moved, the deadline fails Read at once.
			_, err = nc.Read(buf)
			requireTimeout(t, err)
		}
		require.NoError(t, nc.SetWriteDeadline(time.Now().Add(-time.Second)))
		_, err := nc.Write([]byte("never"))
		requireTimeout(t, err)
		require.ErrorIs(t, err, os.ErrDeadlineExceeded)

		require.NoError(t, nc.SetDeadline(time.Time{}))
		_, err = nc.Write([]byte("hello"))
		require.NoError(t, err)
		require.NoError(t, nc.SetReadDeadline(time.Now().Add(10*time.Second)))
		n, err := nc.Read(buf)
		require.NoError(t, err)
		require.Equal(t, "hello", string(buf[:n]), "the write cut by its deadline sent nothing")
		require.Zero(t, c.Stats().Reconnects, "deadlines never harm the link")
		require.NoError(t, nc.Close())
	}
}

// In plain mode the stream lives as long as its first link: once a reset
// takes that link, Read and Write fail with ErrLinkLost (bytes in flight may
// be lost, so the stream cannot go on over the next link), while the Conn
// itself reconnects and carries messages again.
func TestNetConnPlainEndsWithItsLink(t *testing.T) {
	t.Parallel()
	s := newTestServer(t, nil) // echoes
	p, err := faultnetListen(s.Addr())
	require.NoError(t, err)
	t.Cleanup(func() { _ = p.Close() })
	c := dial(t, "ws://"+p.Addr())
	ctx := ctxT(t, 20*time.Second)
	nc := tether.NetConn(ctx, c, websocket.MessageBinary)
	_, err = nc.Write([]byte("ping"))
	require.NoError(t, err)
	buf := make([]byte, 10)
	require.NoError(t, nc.SetReadDeadline(time.Now().Add(10*time.Second)))
	n, err := nc.Read(buf)
	require.NoError(t, err)
	require.Equal(t, "ping", string(buf[:n]))

	p.Reset()
	_, err = nc.Read(buf)
	require.ErrorIs(t, err, tether.ErrLinkLost)
	_, err = nc.Read(buf)
	require.ErrorIs(t, err, tether.ErrLinkLost, "the error stays")
	_, err = nc.Write([]byte("lost"))
	require.ErrorIs(t, err, tether.ErrLinkLost)

	require.NoError(t, c.Write(ctx, websocket.MessageText, []byte("again")))
	_, got, err := c.Read(ctx)
	require.NoError(t, err)
	require.Equal(t, "again", string(got), "the Conn goes on over the next link")
	// Counted once the link is up, which the echo may beat.
	eventually(t, 10*time.Second, func() bool { return c.Stats().Reconnects >= 1 }, "a reconnect")
}

// readFull reads exactly n bytes from nc, each Read bounded by a deadline.
func readFull(t *testing.T, nc net.Conn, n int) []byte {
	t.Helper()
	got := make([]byte, 0, n)
	buf := make([]byte, 4096)
	for i := 0; len(got) < n; i++ {
		require.Less(t, i, n+1, "every Read returns bytes")
		require.NoError(t, nc.SetReadDeadline(time.Now().Add(10*time.Second)))
		k, err := nc.Read(buf)
		require.NoError(t, err, "after %d bytes", len(got))
		got = append(got, buf[:k]...)
	}
	return got
}

// In session mode a NetConn Write larger than the Handler's read limit
// (32 KiB by default) goes as several messages, each within the limit:
// sent whole, as one message, it would be refused with 1009 and end the
// Conn for good.
func TestNetConnSessionWriteOverServerLimit(t *testing.T) {
	t.Parallel()
	ss := newSessionServer(t, sessionEcho)
	c := dial(t, ss.URL())
	require.Equal(t, tether.Subprotocol, c.Subprotocol())
	nc := tether.NetConn(ctxT(t, 20*time.Second), c, websocket.MessageBinary)

	src := make([]byte, 100<<10)
	rng := rand.New(rand.NewPCG(3, 4))
	for i := range src {
		src[i] = byte(rng.Uint32())
	}
	require.NoError(t, nc.SetWriteDeadline(time.Now().Add(10*time.Second)))
	n, err := nc.Write(src)
	require.NoError(t, err)
	require.Equal(t, len(src), n)
	require.Equal(t, src, readFull(t, nc, len(src)), "every byte once, in order")
	require.Equal(t, tether.Connected, c.State())
	require.Zero(t, c.Stats().Reconnects, "no link was refused")
	require.GreaterOrEqual(t, c.Stats().MessagesSent, uint64(4), "100 KiB in messages of 32 KiB at most")
	require.NoError(t, nc.Close())
}

// In session mode a text NetConn sends only valid UTF-8: a Write that is not
// fails with ErrInvalidUTF8 and sends nothing (the Handler would end the
// Conn with 1007), and a Write over the server's limit is cut between runes.
func TestNetConnSessionTextUTF8(t *testing.T) {
	t.Parallel()
	ss := newSessionServer(t, sessionEcho)
	c := dial(t, ss.URL())
	require.Equal(t, tether.Subprotocol, c.Subprotocol())
	nc := tether.NetConn(ctxT(t, 20*time.Second), c, websocket.MessageText)

	require.NoError(t, nc.SetWriteDeadline(time.Now().Add(10*time.Second)))
	n, err := nc.Write([]byte{'a', 0xff, 'b'})
	require.ErrorIs(t, err, tether.ErrInvalidUTF8)
	require.Zero(t, n)

	// One ASCII byte, then two-byte runes: byte 32768, where a cut at the
	// limit would fall, is in the middle of a rune.
	src := append([]byte("x"), bytes.Repeat([]byte("é"), 40<<10)...)
	n, err = nc.Write(src)
	require.NoError(t, err, "the stream goes on after a refused Write")
	require.Equal(t, len(src), n)
	require.Equal(t, src, readFull(t, nc, len(src)), "only the valid Write's bytes, whole")
	require.Equal(t, tether.Connected, c.State())
	require.Zero(t, c.Stats().Reconnects)
	require.NoError(t, nc.Close())
}

// After Close, Read and Write fail with an error wrapping net.ErrClosed, as
// a net.Conn's do (HTTP/2 and gRPC look for it with errors.Is), and so does
// a Read that was waiting when Close came.
func TestNetConnClosedErrors(t *testing.T) {
	t.Parallel()
	for _, session := range []bool{false, true} {
		var url string
		if session {
			url = newSessionServer(t, sessionEcho).URL()
		} else {
			url = newTestServer(t, nil).URL()
		}
		c := dial(t, url)
		nc := tether.NetConn(ctxT(t, 20*time.Second), c, websocket.MessageBinary)
		_, err := nc.Write([]byte("x"))
		require.NoError(t, err)
		require.Equal(t, []byte("x"), readFull(t, nc, 1))

		require.NoError(t, nc.SetReadDeadline(time.Time{}))
		waiting := make(chan error, 1)
		go func() {
			_, err := nc.Read(make([]byte, 10))
			waiting <- err
		}()
		// Whether the Read is waiting yet or not when Close comes, it must
		// fail the same way.
		require.NoError(t, nc.Close())
		select {
		case err := <-waiting:
			require.ErrorIs(t, err, net.ErrClosed, "session %v: the waiting Read", session)
		case <-time.After(10 * time.Second):
			t.Fatal("the waiting Read did not return after Close")
		}
		_, err = nc.Read(make([]byte, 10))
		require.ErrorIs(t, err, net.ErrClosed, "session %v: Read", session)
		_, err = nc.Write([]byte("y"))
		require.ErrorIs(t, err, net.ErrClosed, "session %v: Write", session)
		require.ErrorIs(t, nc.Close(), net.ErrClosed, "session %v: a second Close", session)
	}
}

// In session mode a Write cut into several messages whose deadline passes
// between two of them, while the server does not read, reports the bytes
// of the messages numbered (they will be delivered) with a timeout, and
// sends none of the rest.
func TestNetConnSessionWriteDeadlineBetweenChunks(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	ss := newSessionServer(t, func(ctx context.Context, s *tether.Session) {
		select { // reads nothing, so acknowledges nothing, until released
		case <-release:
		case <-ctx.Done():
			return
		}
		sessionEcho(ctx, s)
	}, tether.WithReplayBuffer(64<<10))
	c := dial(t, ss.URL())
	require.Equal(t, tether.Subprotocol, c.Subprotocol())
	nc := tether.NetConn(ctxT(t, 20*time.Second), c, websocket.MessageBinary)

	src := bytes.Repeat([]byte("0123456789abcdef"), (100<<10)/16)
	require.NoError(t, nc.SetWriteDeadline(time.Now().Add(200*time.Millisecond)))
	n, err := nc.Write(src)
	requireTimeout(t, err)
	require.Equal(t, 32<<10, n, "one message of the server's limit fits the window, the next waits")

	close(release)
	require.Equal(t, src[:n], readFull(t, nc, n), "the numbered part comes, and nothing more")
	require.NoError(t, nc.SetReadDeadline(time.Now().Add(100*time.Millisecond)))
	_, err = nc.Read(make([]byte, 10))
	requireTimeout(t, err)
	require.NoError(t, nc.Close())
}

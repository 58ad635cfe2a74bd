package tether_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"reflect"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/tetherws/tether"
)

// wsConn is the part of *websocket.Conn that tether promises to mirror, so
// that code written against it takes either.
type wsConn interface {
	Read(context.Context) (websocket.MessageType, []byte, error)
	Write(context.Context, websocket.MessageType, []byte) error
	Ping(context.Context) error
	Close(websocket.StatusCode, string) error
	CloseNow() error
}

// Compile-time proof that *tether.Conn is a drop-in for *websocket.Conn.
var (
	_ wsConn = (*websocket.Conn)(nil)
	_ wsConn = (*tether.Conn)(nil)
)

// wsConnAll is the whole method set of *websocket.Conn (coder/websocket
// v1.8): code written against any of it takes a *tether.Conn too.
type wsConnAll interface {
	Read(context.Context) (websocket.MessageType, []byte, error)
	Reader(context.Context) (websocket.MessageType, io.Reader, error)
	Write(context.Context, websocket.MessageType, []byte) error
	Writer(context.Context, websocket.MessageType) (io.WriteCloser, error)
	CloseRead(context.Context) context.Context
	SetReadLimit(int64)
	Subprotocol() string
	Ping(context.Context) error
	Close(websocket.StatusCode, string) error
	CloseNow() error
}

var (
	_ wsConnAll = (*websocket.Conn)(nil)
	_ wsConnAll = (*tether.Conn)(nil)
)

// The interface above stays the whole method set of the coder/websocket in
// go.mod: every exported method of *websocket.Conn is on *tether.Conn, with
// the same signature.
func TestDropinMethodSet(t *testing.T) {
	t.Parallel()
	ws, tc := reflect.TypeOf((*websocket.Conn)(nil)), reflect.TypeOf((*tether.Conn)(nil))
	all := reflect.TypeOf((*wsConnAll)(nil)).Elem()
	require.Equal(t, ws.NumMethod(), all.NumMethod(), "wsConnAll lists every method of *websocket.Conn")
	for i := range ws.NumMethod() {
		m := ws.Method(i)
		tm, ok := tc.MethodByName(m.Name)
		require.True(t, ok, "*tether.Conn has %s", m.Name)
		// Without the receiver, the signatures match.
		require.Equal(t, m.Type.NumIn(), tm.Type.NumIn(), m.Name)
		for j := 1; j < m.Type.NumIn(); j++ {
			require.Equal(t, m.Type.In(j), tm.Type.In(j), "%s argument %d", m.Name, j)
		}
		require.Equal(t, m.Type.NumOut(), tm.Type.NumOut(), m.Name)
		for j := range m.Type.NumOut() {
			require.Equal(t, m.Type.Out(j), tm.Type.Out(j), "%s result %d", m.Name, j)
		}
	}
}

// dropinRoutine is application code written for a *websocket.Conn: echo
// round trips, a ping while a Read waits, a close handshake, and the
// behaviour after Close.
func dropinRoutine(ctx context.Context, c wsConn) error {
	for i, typ := range []websocket.MessageType{websocket.MessageText, websocket.MessageBinary, websocket.MessageText} {
		msg := []byte(fmt.Sprintf("message %d", i))
		if err := c.Write(ctx, typ, msg); err != nil {
			return fmt.Errorf("write %d: %w", i, err)
		}
		gotTyp, got, err := c.Read(ctx)
		if err != nil {
			return fmt.Errorf("read %d: %w", i, err)
		}
		if gotTyp != typ || !bytes.Equal(got, msg) {
			return fmt.Errorf("read %d: got %v %q, want %v %q", i, gotTyp, got, typ, msg)
		}
	}

	// coder/websocket delivers pongs only inside a Read: ping while one waits.
	type result struct {
		p   []byte
		err error
	}
	read := make(chan result, 1)
	go func() {
		_, p, err := c.Read(ctx)
		read <- result{p, err}
	}()
	if err := c.Ping(ctx); err != nil {
		return fmt.Errorf("ping: %w", err)
	}
	if err := c.Write(ctx, websocket.MessageText, []byte("after ping")); err != nil {
		return fmt.Errorf("write after ping: %w", err)
	}
	if r := <-read; r.err != nil || string(r.p) != "after ping" {
		return fmt.Errorf("read after ping: %q, %v", r.p, r.err)
	}

	if err := c.Close(websocket.StatusNormalClosure, "done"); err != nil {
		return fmt.Errorf("close: %w", err)
	}
	if err := c.Close(websocket.StatusNormalClosure, "again"); !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("second close: got %v, want an error wrapping net.ErrClosed", err)
	}
	if err := c.Write(ctx, websocket.MessageText, []byte("late")); err == nil {
		return errors.New("write after close succeeded")
	}
	if _, _, err := c.Read(ctx); err == nil {
		return errors.New("read after close succeeded")
	}
	return nil
}

func TestDropinSameRoutine(t *testing.T) {
	t.Parallel()
	s := newTestServer(t, nil)
	t.Run("websocket.Conn", func(t *testing.T) {
		t.Parallel()
		ctx := ctxT(t, 10*time.Second)
		raw, _, err := websocket.Dial(ctx, s.URL(), nil)
		require.NoError(t, err)
		t.Cleanup(func() { _ = raw.CloseNow() })
		require.NoError(t, dropinRoutine(ctx, raw))
	})
	t.Run("tether.Conn", func(t *testing.T) {
		t.Parallel()
		ctx := ctxT(t, 10*time.Second)
		c := dial(t, s.URL())
		require.NoError(t, dropinRoutine(ctx, c))
		require.Equal(t, tether.Closed, c.State())
	})
}

// After Close, every method fails with net.ErrClosed, as coder's do.
func TestDropinAfterClose(t *testing.T) {
	t.Parallel()
	s := newTestServer(t, nil)
	c := dial(t, s.URL())
	require.NoError(t, c.Close(websocket.StatusNormalClosure, "bye"))
	ctx := ctxT(t, 5*time.Second)
	require.ErrorIs(t, c.Close(websocket.StatusNormalClosure, "bye"), net.ErrClosed)
	require.ErrorIs(t, c.CloseNow(), net.ErrClosed)
	_, _, err := c.Read(ctx)
	require.ErrorIs(t, err, net.ErrClosed)
	require.ErrorIs(t, c.Write(ctx, websocket.MessageText, []byte("x")), net.ErrClosed)
	require.ErrorIs(t, c.Ping(ctx), net.ErrClosed)
	require.Equal(t, tether.Closed, c.State())
	require.NoError(t, ctx.Err(), "nothing waited for ctx")
}

// Close from many goroutines at once: exactly one wins, the others wait for
// it and report net.ErrClosed; nobody hangs.
func TestDropinConcurrentClose(t *testing.T) {
	t.Parallel()
	for _, mixed := range []bool{false, true} {
		t.Run(fmt.Sprintf("mixed=%v", mixed), func(t *testing.T) {
			t.Parallel()
			s := newTestServer(t, nil)
			c := dial(t, s.URL())
			const n = 8
			start := make(chan struct{})
			errs := make(chan error, n)
			var wg sync.WaitGroup
			var earlyReturn atomic.Int64
			for i := range n {
				wg.Go(func() {
					<-start
					var err error
					if mixed && i%2 == 1 {
						err = c.CloseNow()
					} else {
						err = c.Close(websocket.StatusNormalClosure, "bye")
					}
					// Every call, winner or not, returns only once the Conn
					// is closed for good.
					if c.State() != tether.Closed {
						earlyReturn.Add(1)
					}
					errs <- err
				})
			}
			close(start)
			done := make(chan struct{})
			go func() { wg.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				t.Fatal("concurrent Close calls did not all return within 5s")
			}
			close(errs)
			nilCount := 0
			for err := range errs {
				if err == nil {
					nilCount++
					continue
				}
				require.ErrorIs(t, err, net.ErrClosed)
			}
			require.Equal(t, 1, nilCount, "exactly one Close returns nil")
			require.Zero(t, earlyReturn.Load(), "a Close returned before the Conn was closed")
			require.Equal(t, tether.Closed, c.State())
		})
	}
}

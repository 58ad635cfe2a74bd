package wsjson_test

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/tetherws/tether"
	"github.com/tetherws/tether/wsjson"
)

// The three connection types wsjson serves.
var (
	_ wsjson.Reader = (*websocket.Conn)(nil)
	_ wsjson.Writer = (*websocket.Conn)(nil)
	_ wsjson.Reader = (*tether.Conn)(nil)
	_ wsjson.Writer = (*tether.Conn)(nil)
	_ wsjson.Reader = (*tether.Session)(nil)
	_ wsjson.Writer = (*tether.Session)(nil)
)

type point struct {
	X, Y int
}

// hostile is what a peer sends: a binary message, a text message that is
// not JSON, one that is JSON of the wrong shape, then a good one.
var hostile = []struct {
	typ websocket.MessageType
	p   string
}{
	{websocket.MessageBinary, `{"X":1,"Y":2}`},
	{websocket.MessageText, `{"X":1,`},
	{websocket.MessageText, `["not","a","point"]`},
	{websocket.MessageText, `{"X":3,"Y":4}`},
}

// readHostile reads the hostile messages with wsjson.Read from c, checks
// each error, and that the good message after them still arrives.
func readHostile(ctx context.Context, c wsjson.Reader) error {
	var p point
	if err := wsjson.Read(ctx, c, &p); !errors.Is(err, wsjson.ErrNotText) {
		return errors.Join(errors.New("binary message: want ErrNotText"), err)
	}
	for range 2 {
		err := wsjson.Read(ctx, c, &p)
		if !errors.Is(err, wsjson.ErrInvalidJSON) {
			return errors.Join(errors.New("bad JSON: want ErrInvalidJSON"), err)
		}
	}
	if err := wsjson.Read(ctx, c, &p); err != nil {
		return errors.Join(errors.New("the message after the bad ones"), err)
	}
	if p != (point{3, 4}) {
		return errors.New("the message after the bad ones decoded wrong")
	}
	return nil
}

func writeHostile(ctx context.Context, w wsjson.Writer) error {
	for _, m := range hostile {
		if err := w.Write(ctx, m.typ, []byte(m.p)); err != nil {
			return err
		}
	}
	return nil
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// serve starts h on 127.0.0.1 and returns its ws:// URL.
func serve(t testing.TB, h http.Handler) string {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	return "ws://" + ln.Addr().String()
}

// rawServer is a coder/websocket server that sends the hostile messages,
// then reads one message and sends back its type and bytes, as received.
func rawServer(t *testing.T) string {
	done := make(chan struct{})
	t.Cleanup(func() { <-done })
	var once sync.Once
	return serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer once.Do(func() { close(done) })
		defer c.CloseNow()
		ctx := r.Context()
		if writeHostile(ctx, c) != nil {
			return
		}
		typ, p, err := c.Read(ctx)
		if err != nil {
			return
		}
		_ = c.Write(ctx, typ, p)
		_, _, _ = c.Read(ctx) // until the client closes
	}))
}

// checkWrite writes a point with wsjson.Write on c and reads the server's
// copy of what arrived: one text message, the JSON without a newline.
func checkWrite(t *testing.T, ctx context.Context, c interface {
	wsjson.Reader
	wsjson.Writer
}) {
	t.Helper()
	require.NoError(t, wsjson.Write(ctx, c, point{5, 6}))
	typ, p, err := c.Read(ctx)
	require.NoError(t, err)
	require.Equal(t, websocket.MessageText, typ)
	require.Equal(t, `{"X":5,"Y":6}`, string(p))
}

func TestWebSocketConn(t *testing.T) {
	url := rawServer(t)
	ctx := ctxT(t)
	c, _, err := websocket.Dial(ctx, url, nil)
	require.NoError(t, err)
	defer c.CloseNow()
	require.NoError(t, readHostile(ctx, c))
	checkWrite(t, ctx, c)
	require.NoError(t, c.Close(websocket.StatusNormalClosure, ""))
}

func TestTetherConn(t *testing.T) {
	url := rawServer(t)
	ctx := ctxT(t)
	c, err := tether.Dial(ctx, url)
	require.NoError(t, err)
	defer c.CloseNow()
	require.NoError(t, readHostile(ctx, c))
	checkWrite(t, ctx, c)
	require.Zero(t, c.Stats().Reconnects, "the bad messages did not cost the link")
	require.NoError(t, c.Close(websocket.StatusNormalClosure, ""))
}

// On the server: a Session reads the hostile messages a client sends, then
// writes a point back with wsjson.Write.
func TestTetherSession(t *testing.T) {
	result := make(chan error, 1)
	h := tether.NewHandler(func(ctx context.Context, s *tether.Session) {
		err := readHostile(ctx, s)
		if err == nil {
			err = wsjson.Write(ctx, s, point{7, 8})
		}
		result <- err
		_, _, _ = s.Read(ctx) // until the client closes
	})
	url := serve(t, h)
	t.Cleanup(func() { _ = h.Close() })

	ctx := ctxT(t)
	c, err := tether.Dial(ctx, url)
	require.NoError(t, err)
	defer c.CloseNow()
	require.Equal(t, tether.Subprotocol, c.Subprotocol(), "session mode")
	require.NoError(t, writeHostile(ctx, c))
	select {
	case err := <-result:
		require.NoError(t, err)
	case <-ctx.Done():
		t.Fatal("the session did not read the messages")
	}
	typ, p, err := c.Read(ctx)
	require.NoError(t, err)
	require.Equal(t, websocket.MessageText, typ)
	require.Equal(t, `{"X":7,"Y":8}`, string(p))
	require.NoError(t, c.Close(websocket.StatusNormalClosure, ""))
}

// fakeConn replays canned messages and records writes, for the error paths
// that need no network.
type fakeConn struct {
	msgs  []string
	wrote [][]byte
	err   error
}

func (f *fakeConn) Read(context.Context) (websocket.MessageType, []byte, error) {
	if f.err != nil {
		return 0, nil, f.err
	}
	m := f.msgs[0]
	f.msgs = f.msgs[1:]
	return websocket.MessageText, []byte(m), nil
}

func (f *fakeConn) Write(_ context.Context, _ websocket.MessageType, p []byte) error {
	if f.err != nil {
		return f.err
	}
	f.wrote = append(f.wrote, append([]byte(nil), p...))
	return nil
}

func TestErrors(t *testing.T) {
	ctx := context.Background()

	// A value that is not a pointer is refused before a message is read.
	f := &fakeConn{msgs: []string{`{"X":1}`}}
	var p point
	require.ErrorContains(t, wsjson.Read(ctx, f, p), "want a non-nil pointer")
	require.ErrorContains(t, wsjson.Read(ctx, f, (*point)(nil)), "want a non-nil pointer")
	require.Len(t, f.msgs, 1, "nothing was read")
	require.NoError(t, wsjson.Read(ctx, f, &p))
	require.Equal(t, point{X: 1}, p)

	// The connection's errors come back wrapped.
	f.err = net.ErrClosed
	err := wsjson.Read(ctx, f, &p)
	require.ErrorIs(t, err, net.ErrClosed)
	require.ErrorContains(t, err, "tether: wsjson: read: ")
	err = wsjson.Write(ctx, f, p)
	require.ErrorIs(t, err, net.ErrClosed)
	require.ErrorContains(t, err, "tether: wsjson: write: ")

	// A value encoding/json cannot encode is an error, and nothing is sent;
	// the pooled buffer is clean for the next Write.
	f.err = nil
	err = wsjson.Write(ctx, f, map[string]any{"f": func() {}})
	var ue *json.UnsupportedTypeError
	require.ErrorAs(t, err, &ue)
	require.Empty(t, f.wrote)
	require.NoError(t, wsjson.Write(ctx, f, []int{1, 2}))
	require.Equal(t, "[1,2]", string(f.wrote[0]))

	// The error strings say what went wrong.
	require.Equal(t, "tether: wsjson: binary message, want JSON text", wsjson.ErrNotText.Error())
	var syn *json.SyntaxError
	f.msgs = []string{"{"}
	err = wsjson.Read(ctx, f, &p)
	require.ErrorIs(t, err, wsjson.ErrInvalidJSON)
	require.ErrorAs(t, err, &syn, "encoding/json's error is wrapped too")
}

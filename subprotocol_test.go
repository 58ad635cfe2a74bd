package tether_test

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/tetherws/tether"
)

// firstPicker is a WebSocket server that, like Node's ws by default, takes
// whatever subprotocol the client offers first. It records the offers.
type firstPicker struct {
	mu     sync.Mutex
	offers []string
	wg     sync.WaitGroup
}

func (f *firstPicker) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	offer := r.Header.Get("Sec-WebSocket-Protocol")
	f.mu.Lock()
	f.offers = append(f.offers, offer)
	f.mu.Unlock()
	var opts websocket.AcceptOptions
	if first, _, _ := strings.Cut(offer, ","); first != "" {
		opts.Subprotocols = []string{strings.TrimSpace(first)}
	}
	c, err := websocket.Accept(w, r, &opts)
	if err != nil {
		return
	}
	f.wg.Add(1)
	defer f.wg.Done()
	defer c.CloseNow()
	echo(r.Context(), c)
}

func newFirstPicker(t *testing.T) (*firstPicker, string) {
	t.Helper()
	f := &firstPicker{}
	srv := httptest.NewUnstartedServer(f)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv.Listener = ln
	srv.Start()
	t.Cleanup(func() { srv.CloseClientConnections(); srv.Close(); f.wg.Wait() })
	return f, "ws://" + ln.Addr().String()
}

// Subprotocol says tether.v1 only in session mode: a server that echoes
// whatever comes first leaves the Conn in plain mode, with no subprotocol.
// WithSessionMode(false) does not offer tether.v1 at all.
func TestSubprotocolTetherOnlyInSessionMode(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		opts     []tether.Option
		offer    string
		subproto string
	}{
		{"default", nil, tether.Subprotocol, ""},
		{"user's own first", []tether.Option{tether.WithDialOptions(&websocket.DialOptions{Subprotocols: []string{"chat"}})},
			"chat," + tether.Subprotocol, "chat"},
		{"session mode off", []tether.Option{tether.WithSessionMode(false)}, "", ""},
		{"session mode off, user's own", []tether.Option{tether.WithSessionMode(false),
			tether.WithDialOptions(&websocket.DialOptions{Subprotocols: []string{"chat"}})}, "chat", "chat"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f, url := newFirstPicker(t)
			c := dial(t, url, tc.opts...)
			require.Equal(t, tc.subproto, c.Subprotocol())
			f.mu.Lock()
			require.Equal(t, []string{tc.offer}, f.offers)
			f.mu.Unlock()
			ctx := ctxT(t, 5*time.Second)
			require.NoError(t, c.Write(ctx, websocket.MessageText, []byte("plain")))
			_, p, err := c.Read(ctx)
			require.NoError(t, err)
			require.Equal(t, "plain", string(p), "plain mode: no session framing")
		})
	}
}

// Session mode still starts against a Handler, and says so; with session mode
// off the Handler serves the Conn as a plain client.
func TestSubprotocolSessionModeOff(t *testing.T) {
	t.Parallel()
	ss := newSessionServer(t, sessionEcho)
	require.Equal(t, tether.Subprotocol, dial(t, ss.URL()).Subprotocol())
	c := dial(t, ss.URL(), tether.WithSessionMode(false))
	require.Equal(t, "", c.Subprotocol())
	ctx := ctxT(t, 5*time.Second)
	require.NoError(t, c.Write(ctx, websocket.MessageText, []byte("x")))
	_, p, err := c.Read(ctx)
	require.NoError(t, err)
	require.Equal(t, "x", string(p))

	_, err = tether.Dial(context.Background(), ss.URL(), tether.WithSessionMode(false), tether.WithFallback(""))
	require.ErrorIs(t, err, tether.ErrInvalidOption)
}

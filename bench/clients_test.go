package bench

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"strconv"
	"sync"
	"testing"

	"github.com/coder/websocket"
	gorilla "github.com/gorilla/websocket"

	"github.com/tetherws/tether"
	"github.com/tetherws/tether/bench/internal/echo"
)

// client is the part of a WebSocket client the benchmarks use. Each
// implementation is the thinnest possible adapter, so that only the library
// under it differs.
type client interface {
	write(ctx context.Context, p []byte) error
	read(ctx context.Context) ([]byte, error)
	close() error
}

// dialer dials one client of a kind.
type dialer struct {
	name string
	dial func(ctx context.Context, url string) (client, error)
	// ctx says whether Read honours its ctx; gorilla's has none.
	ctx bool
}

// RotateEnv rotates the order in which the clients run by its value, so that
// run.sh can vary which client goes first from one round to the next.
const RotateEnv = "TETHER_BENCH_ROTATE"

// dialers are the client kinds, raw first unless TETHER_BENCH_ROTATE says
// otherwise: benchstat orders columns by first appearance, and raw is the
// baseline.
var dialers = rotate([]dialer{
	{name: "raw", dial: dialRaw, ctx: true},
	{name: "tether", dial: dialTether, ctx: true},
	{name: "gorilla", dial: dialGorilla},
}, os.Getenv(RotateEnv))

// rotation is TETHER_BENCH_ROTATE as a number, 0 when unset.
func rotation() int {
	k, _ := strconv.Atoi(os.Getenv(RotateEnv))
	if k < 0 {
		k = -k
	}
	return k
}

func rotate(ds []dialer, by string) []dialer {
	k, _ := strconv.Atoi(by)
	k %= len(ds)
	if k < 0 {
		k += len(ds)
	}
	return append(ds[k:], ds[:k]...)
}

type rawClient struct{ c *websocket.Conn }

func dialRaw(ctx context.Context, url string) (client, error) {
	c, _, err := websocket.Dial(ctx, url, nil)
	if err != nil {
		return nil, err
	}
	return rawClient{c}, nil
}

func (r rawClient) write(ctx context.Context, p []byte) error {
	return r.c.Write(ctx, websocket.MessageBinary, p)
}

func (r rawClient) read(ctx context.Context) ([]byte, error) {
	_, p, err := r.c.Read(ctx)
	return p, err
}

func (r rawClient) close() error { return r.c.CloseNow() }

type tetherClient struct{ c *tether.Conn }

// dialTether dials tether in plain mode with its defaults.
func dialTether(ctx context.Context, url string) (client, error) {
	c, err := tether.Dial(ctx, url)
	if err != nil {
		return nil, err
	}
	return tetherClient{c}, nil
}

func (t tetherClient) write(ctx context.Context, p []byte) error {
	return t.c.Write(ctx, websocket.MessageBinary, p)
}

func (t tetherClient) read(ctx context.Context) ([]byte, error) {
	_, p, err := t.c.Read(ctx)
	return p, err
}

func (t tetherClient) close() error { return t.c.CloseNow() }

type gorillaClient struct{ c *gorilla.Conn }

func dialGorilla(ctx context.Context, url string) (client, error) {
	c, _, err := gorilla.DefaultDialer.DialContext(ctx, url, nil)
	if err != nil {
		return nil, err
	}
	return gorillaClient{c}, nil
}

func (g gorillaClient) write(_ context.Context, p []byte) error {
	return g.c.WriteMessage(gorilla.BinaryMessage, p)
}

func (g gorillaClient) read(context.Context) ([]byte, error) {
	_, p, err := g.c.ReadMessage()
	return p, err
}

func (g gorillaClient) close() error { return g.c.Close() }

var (
	sharedOnce sync.Once
	sharedSrv  *echo.Server
)

// sharedServer is the in-process echo server every throughput benchmark
// shares. It lives as long as the test binary.
func sharedServer(b *testing.B) *echo.Server {
	b.Helper()
	sharedOnce.Do(func() {
		s, err := echo.Listen("127.0.0.1:0")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		sharedSrv = s
	})
	return sharedSrv
}

func mustDial(b *testing.B, d dialer, url string) client {
	b.Helper()
	c, err := d.dial(context.Background(), url)
	if err != nil {
		b.Fatalf("dial %s: %v", d.name, err)
	}
	return c
}

func payload(n int) []byte {
	p := make([]byte, n)
	_, _ = rand.Read(p)
	return p
}

// roundTrip writes p and reads its echo.
func roundTrip(b *testing.B, c client, wctx, rctx context.Context, p []byte) {
	if err := c.write(wctx, p); err != nil {
		b.Fatal(err)
	}
	q, err := c.read(rctx)
	if err != nil {
		b.Fatal(err)
	}
	if len(q) != len(p) {
		b.Fatalf("echo of %d bytes came back as %d", len(p), len(q))
	}
}

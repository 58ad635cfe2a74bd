package bench

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
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

// The clients read in one of two ways, the api element of a benchmark's
// name: api=read takes each message as a new []byte (Read, gorilla's
// ReadMessage); api=reader reads each message with Reader (gorilla's
// NextReader) into a buffer the client reuses, the way to read without an
// allocation per message. Each library is compared with raw coder/websocket
// using the same API.
const (
	apiRead   = "read"
	apiReader = "reader"
)

var apis = []string{apiRead, apiReader}

// withAPI returns d reading with api.
func withAPI(d dialer, api string) dialer {
	dial := d.dial
	d.dial = func(ctx context.Context, url string) (client, error) {
		c, err := dial(ctx, url)
		if err != nil {
			return nil, err
		}
		c.(apiSetter).setAPI(api)
		return c, nil
	}
	return d
}

type apiSetter interface{ setAPI(api string) }

// readInto reads r to its end into *buf, growing it as needed, and returns
// the message.
func readInto(r io.Reader, buf *[]byte) ([]byte, error) {
	b := (*buf)[:0]
	for {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
		n, err := r.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err == io.EOF {
			*buf = b
			return b, nil
		}
		if err != nil {
			return nil, err
		}
	}
}

type rawClient struct {
	c      *websocket.Conn
	reader bool
	buf    []byte
}

func dialRaw(ctx context.Context, url string) (client, error) {
	c, _, err := websocket.Dial(ctx, url, nil)
	if err != nil {
		return nil, err
	}
	return &rawClient{c: c}, nil
}

func (r *rawClient) setAPI(api string) { r.reader = api == apiReader }

func (r *rawClient) write(ctx context.Context, p []byte) error {
	return r.c.Write(ctx, websocket.MessageBinary, p)
}

func (r *rawClient) read(ctx context.Context) ([]byte, error) {
	if r.reader {
		_, rd, err := r.c.Reader(ctx)
		if err != nil {
			return nil, err
		}
		return readInto(rd, &r.buf)
	}
	_, p, err := r.c.Read(ctx)
	return p, err
}

func (r *rawClient) close() error { return r.c.CloseNow() }

type tetherClient struct {
	c      *tether.Conn
	reader bool
	buf    []byte
}

// dialTether dials tether in plain mode with its defaults.
func dialTether(ctx context.Context, url string) (client, error) {
	c, err := tether.Dial(ctx, url)
	if err != nil {
		return nil, err
	}
	return &tetherClient{c: c}, nil
}

func (t *tetherClient) setAPI(api string) { t.reader = api == apiReader }

func (t *tetherClient) write(ctx context.Context, p []byte) error {
	return t.c.Write(ctx, websocket.MessageBinary, p)
}

func (t *tetherClient) read(ctx context.Context) ([]byte, error) {
	if t.reader {
		_, rd, err := t.c.Reader(ctx)
		if err != nil {
			return nil, err
		}
		return readInto(rd, &t.buf)
	}
	_, p, err := t.c.Read(ctx)
	return p, err
}

func (t *tetherClient) close() error { return t.c.CloseNow() }

type gorillaClient struct {
	c      *gorilla.Conn
	reader bool
	buf    []byte
}

func dialGorilla(ctx context.Context, url string) (client, error) {
	c, _, err := gorilla.DefaultDialer.DialContext(ctx, url, nil)
	if err != nil {
		return nil, err
	}
	return &gorillaClient{c: c}, nil
}

func (g *gorillaClient) setAPI(api string) { g.reader = api == apiReader }

func (g *gorillaClient) write(_ context.Context, p []byte) error {
	return g.c.WriteMessage(gorilla.BinaryMessage, p)
}

func (g *gorillaClient) read(context.Context) ([]byte, error) {
	if g.reader {
		_, rd, err := g.c.NextReader()
		if err != nil {
			return nil, err
		}
		return readInto(rd, &g.buf)
	}
	_, p, err := g.c.ReadMessage()
	return p, err
}

func (g *gorillaClient) close() error { return g.c.Close() }

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

package tether

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"net/url"
	"sync"
	"time"
)

// A Read whose ctx can be cancelled must return when ctx ends, but
// coder/websocket closes a link whose Read ctx ends. Handing such Reads to a
// background reader costs a goroutine wake-up per message. Instead, tether
// dials through its own transport and wraps the socket in a watchConn, which
// follows the WebSocket frames going by. When a caller's ctx ends while
// coder/websocket waits for the first byte of a new frame, outside any
// fragmented message, nothing has been consumed that a retry would need: the
// watchConn sets a read deadline in the past, the blocked read fails with
// errInterrupted, and the link is left exactly as it was.

// errInterrupted is what a watchConn's Read returns when it was interrupted.
var errInterrupted = &interruptedError{}

type interruptedError struct{}

func (*interruptedError) Error() string   { return "tether: read interrupted" }
func (*interruptedError) Timeout() bool   { return true }
func (*interruptedError) Temporary() bool { return true }

var aLongTimeAgo = time.Unix(1, 0)

// watchConn tracks, over the bytes the client has read, where the WebSocket
// frames begin and end, so that a blocked read can be interrupted when that
// is safe.
type watchConn struct {
	net.Conn
	src net.Conn // what Read reads, if not Conn: the socket, below a writeGate

	mu sync.Mutex
	// Where the bytes delivered so far end: still in the HTTP response, in a
	// frame header (hdr holds its first hdrN bytes), or in a payload.
	inHTTP    bool
	crlf      int // progress through "\r\n\r\n"
	hdr       [14]byte
	hdrN      int
	payload   uint64 // payload bytes left in the current frame
	inMessage bool   // a fragmented data message is open

	guarded      bool            // a Read that may be interrupted is in progress
	guardCtx     context.Context // the ctx of that Read
	interrupting bool            // the read deadline is set in the past
	interrupted  bool            // the guarded Read was interrupted

	// The ctx watched for interrupts, and how to stop watching it. lastCtx
	// is the previous Read's ctx.
	armedCtx context.Context
	disarm   func() bool
	lastCtx  context.Context
	repeated bool // the guarded Read's ctx is the previous one's
}

func newWatchConn(c net.Conn) *watchConn {
	w := &watchConn{Conn: c, inHTTP: true, src: c}
	if g, ok := c.(*writeGate); ok {
		// Reads skip the write side's layer.
		w.src = g.Conn
	}
	return w
}

func (w *watchConn) Read(p []byte) (int, error) {
	src := w.src
	if src == nil {
		src = w.Conn
	}
	n, err := src.Read(p)
	w.mu.Lock()
	if n > 0 {
		w.scan(p[:n])
	}
	if w.interrupting {
		w.interrupting = false
		_ = w.Conn.SetReadDeadline(time.Time{})
		if n == 0 && isTimeout(err) {
			w.interrupted = true
			err = errInterrupted
		}
	}
	w.mu.Unlock()
	return n, err
}

// scan follows the frames in b, the next bytes of the stream.
func (w *watchConn) scan(b []byte) {
	for len(b) > 0 {
		switch {
		case w.inHTTP:
			for i, c := range b {
				if (c == '\r' && w.crlf%2 == 0) || (c == '\n' && w.crlf%2 == 1) {
					w.crlf++
				} else {
					w.crlf = 0
					if c == '\r' {
						w.crlf = 1
					}
				}
				if w.crlf == 4 {
					w.inHTTP = false
					b = b[i+1:]
					break
				}
			}
			if w.inHTTP {
				return
			}
		case w.payload > 0:
			k := uint64(len(b))
			if k > w.payload {
				k = w.payload
			}
			w.payload -= k
			b = b[k:]
		default:
			w.hdr[w.hdrN] = b[0]
			w.hdrN++
			b = b[1:]
			if need := w.headerLen(); w.hdrN == need {
				w.endHeader()
			}
		}
	}
}

// headerLen is the length of the frame header being read, as far as its
// first bytes tell.
func (w *watchConn) headerLen() int {
	if w.hdrN < 2 {
		return 2
	}
	n := 2
	switch w.hdr[1] & 0x7f {
	case 126:
		n += 2
	case 127:
		n += 8
	}
	if w.hdr[1]&0x80 != 0 {
		n += 4 // masked: not sent by servers, but followed all the same
	}
	return n
}

func (w *watchConn) endHeader() {
	fin, opcode := w.hdr[0]&0x80 != 0, w.hdr[0]&0x0f
	var n uint64
	switch l := w.hdr[1] & 0x7f; l {
	case 126:
		n = uint64(w.hdr[2])<<8 | uint64(w.hdr[3])
	case 127:
		for _, c := range w.hdr[2:10] {
			n = n<<8 | uint64(c)
		}
	default:
		n = uint64(l)
	}
	if opcode < 8 { // data and continuation frames
		w.inMessage = !fin
	}
	w.payload, w.hdrN = n, 0
}

// atBoundary reports whether the stream so far ends between frames, outside
// a fragmented message.
func (w *watchConn) atBoundary() bool {
	return !w.inHTTP && w.hdrN == 0 && w.payload == 0 && !w.inMessage
}

// guard marks the start of a Read that ctx may cut short. Only one
// goroutine reads at a time.
//
// Watching a ctx (context.AfterFunc) costs a registration, and a watch left
// on a ctx that is cancelled right after its Read costs a goroutine. So a
// ctx passed again and again (a serve or request ctx) stays watched across
// Reads, while a fresh ctx per Read is unwatched as soon as its Read ends.
func (w *watchConn) guard(ctx context.Context) {
	w.mu.Lock()
	w.guarded, w.interrupted, w.guardCtx = true, false, ctx
	w.repeated = ctx == w.lastCtx
	w.lastCtx = ctx
	if w.armedCtx == ctx {
		w.mu.Unlock()
		return
	}
	old := w.disarm
	w.armedCtx, w.disarm = nil, nil
	w.mu.Unlock()
	if old != nil {
		old()
	}
	stop := context.AfterFunc(ctx, func() { w.interrupt(ctx) })
	w.mu.Lock()
	w.armedCtx, w.disarm = ctx, stop
	w.mu.Unlock()
}

// release stops watching ctxs: the link is done. It may run while a Read
// is still returning.
func (w *watchConn) release() {
	w.mu.Lock()
	stop := w.disarm
	w.armedCtx, w.disarm, w.lastCtx = nil, nil, nil
	w.mu.Unlock()
	if stop != nil {
		stop()
	}
}

// unguard ends it and reports whether it was interrupted.
func (w *watchConn) unguard() bool {
	w.mu.Lock()
	if !w.repeated && w.disarm != nil {
		stop := w.disarm
		w.armedCtx, w.disarm = nil, nil
		w.mu.Unlock()
		stop()
		w.mu.Lock()
	}
	defer w.mu.Unlock()
	if w.interrupting {
		w.interrupting = false
		_ = w.Conn.SetReadDeadline(time.Time{})
	}
	w.guarded, w.guardCtx = false, nil
	return w.interrupted
}

// interrupt makes a guarded Read that waits for a new frame return
// errInterrupted. Elsewhere in the stream it does nothing, and the Read goes
// on until its message is complete.
func (w *watchConn) interrupt(ctx context.Context) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.guarded && w.guardCtx == ctx && !w.interrupting && w.atBoundary() {
		w.interrupting = true
		_ = w.Conn.SetReadDeadline(aLongTimeAgo)
	}
}

type watchKey struct{}

// watchSlot is where a dial records the watchConn and writeGate it made.
type watchSlot struct {
	target string // host:port of the WebSocket server
	conn   *watchConn
	gate   *writeGate
}

// watchTransport dials WebSocket handshakes so that the socket below
// coder/websocket is a watchConn, over a writeGate right above TCP. A
// connection through a proxy, which the watchConn could not follow, gets
// the writeGate only: the write side needs no knowledge of the stream.
var watchTransport = func() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.DisableKeepAlives = true // a failed handshake's connection is not reused
	t.ForceAttemptHTTP2 = false
	var d net.Dialer
	dial := func(ctx context.Context, network, addr string) (net.Conn, *watchSlot, error) {
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, nil, err
		}
		slot, ok := ctx.Value(watchKey{}).(*watchSlot)
		if !ok {
			return c, nil, nil
		}
		// The last connection dialed is the one the handshake ends on.
		slot.conn, slot.gate = nil, newWriteGate(c)
		return slot.gate, slot, nil
	}
	follow := func(slot *watchSlot, addr string, c net.Conn) net.Conn {
		if slot == nil || slot.target != addr {
			return c
		}
		slot.conn = newWatchConn(c)
		return slot.conn
	}
	t.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, slot, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return follow(slot, addr, c), nil
	}
	t.DialTLSContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, slot, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			_ = c.Close()
			return nil, err
		}
		// Below TLS, a write cut by a deadline would corrupt the TLS
		// state; the writeGate is under it, where bytes are bytes.
		tc := tls.Client(c, &tls.Config{ServerName: host, NextProtos: []string{"http/1.1"}})
		if err := tc.HandshakeContext(ctx); err != nil {
			_ = c.Close()
			return nil, err
		}
		return follow(slot, addr, tc), nil
	}
	return t
}()

var watchClient = &http.Client{Transport: watchTransport, CheckRedirect: checkRedirect(nil)}

// watchTarget is the address the transport dials for a WebSocket URL.
func watchTarget(u *url.URL) string {
	port := u.Port()
	if port == "" {
		port = "80"
		if u.Scheme == "wss" || u.Scheme == "https" {
			port = "443"
		}
	}
	return net.JoinHostPort(u.Hostname(), port)
}

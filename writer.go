package tether

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/coder/websocket"
)

// Writer returns an io.WriteCloser for the next message, of type typ, as
// websocket.Conn.Writer does: what is written to it is one message, sent
// when it is closed. Only one Writer is open at a time: Writer waits, with
// ctx, until the previous one is closed, and so does a Write made while one
// is open, so that messages keep the order in which they were begun. Close
// the Writer whatever happens, or every later Write waits.
//
// The message is kept whole until Close, then sent as Write sends a
// message: straight through on a live link, bounded by ctx without ever
// cutting a frame; queued while the Conn reconnects; in session mode,
// numbered, kept for replay and delivered exactly once. So a message that a
// dropped link cuts is sent again whole, never in part. ctx bounds Writer's
// wait and the send at Close. Unlike coder/websocket's Writer, which sends
// every Write as a frame at once, the peer sees nothing of the message
// before Close, and the whole message is held in memory until then.
//
// In session mode a message over the read limit the server told (see
// Write) could never be sent: the Write that takes it past that limit
// fails with an error wrapping ErrMessageTooLarge and the message is
// dropped at once; every later Write fails, and Close returns that error
// and sends nothing. In plain mode no limit is known, and the message grows
// as long as Write is called: bound it yourself.
//
// The io.WriteCloser is reused by the next Writer, as coder/websocket's is,
// so keep none; and, as with coder/websocket's, use it from one goroutine
// at a time.
func (c *Conn) Writer(ctx context.Context, typ websocket.MessageType) (io.WriteCloser, error) {
	if err := c.lockWriter(ctx); err != nil {
		return nil, fmt.Errorf("tether: writer: %w", err)
	}
	w := c.mw
	if w == nil {
		w = &msgWriter{c: c}
		c.mw = w
	}
	w.ctx, w.typ, w.closed, w.err = ctx, typ, false, nil
	w.buf = writerBufs.Get().(*[]byte)
	return w, nil
}

// msgWriter is the Writer's io.WriteCloser: one per Conn, reused from one
// message to the next as *websocket.Conn's is. Its buffer comes from a pool
// while it is open, so that a Writer costs no allocation per message once
// warm and an idle Conn keeps none.
type msgWriter struct {
	c      *Conn
	ctx    context.Context
	typ    websocket.MessageType
	buf    *[]byte
	closed bool
	err    error // sticky: the message was dropped
}

// writerBufKeep is the largest buffer given back to the pool.
const writerBufKeep = 64 << 10

var writerBufs = sync.Pool{New: func() any { return new([]byte) }}

var errWriterClosed = errors.New("tether: writer: already closed")

// Write adds p to the message. It fails after Close, and in session mode
// once the message is over the server's read limit.
func (w *msgWriter) Write(p []byte) (int, error) {
	if w.closed {
		return 0, errWriterClosed
	}
	if w.err != nil {
		return 0, w.err
	}
	if pl := w.c.server.Load(); pl != nil {
		if limit := pl.messageLimit(); limit >= 0 && int64(len(*w.buf))+int64(len(p)) > limit {
			w.err = fmt.Errorf("tether: writer: a message of %d bytes or more is over the server's read limit of %d bytes: %w",
				len(*w.buf)+len(p), limit, ErrMessageTooLarge)
			w.release()
			return 0, w.err
		}
	}
	*w.buf = append(*w.buf, p...)
	return len(p), nil
}

// Close sends the message and lets the next Writer open.
func (w *msgWriter) Close() error {
	if w.closed {
		return errWriterClosed
	}
	w.closed = true
	err := w.err
	if err == nil {
		err = w.c.write(w.ctx, w.typ, *w.buf)
		// Every path that keeps a message copies it: the buffer is free.
		w.release()
	}
	w.ctx = nil
	w.c.unlockWriter()
	return err
}

// release gives the message's buffer back.
func (w *msgWriter) release() {
	bp := w.buf
	w.buf = nil
	if bp != nil && cap(*bp) <= writerBufKeep {
		*bp = (*bp)[:0]
		writerBufs.Put(bp)
	}
}

// lockWriter waits, with ctx, until no other Writer is open, and opens one.
func (c *Conn) lockWriter(ctx context.Context) error {
	c.mu.Lock()
	if c.final != nil {
		err := c.final
		c.mu.Unlock()
		return err
	}
	if c.wslot == nil {
		c.wslot = make(chan struct{}, 1)
	}
	slot := c.wslot
	c.mu.Unlock()
	select {
	case slot <- struct{}{}:
	default:
		select {
		case slot <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
		case <-c.ctx.Done():
			return errClosedLocally
		}
	}
	c.writerOpen.Store(true)
	return nil
}

func (c *Conn) unlockWriter() {
	c.writerOpen.Store(false)
	<-c.wslot
}

// awaitWriter makes a Write wait, with ctx, for the Writer open when it
// began to be closed.
func (c *Conn) awaitWriter(ctx context.Context) error {
	if _, ok := ctx.Value(onConnectKey{}).(*liveLink); ok {
		// The OnConnect hook runs before the queue, where a Writer's
		// message may wait for it, is sent.
		return nil
	}
	if err := c.lockWriter(ctx); err != nil {
		return err
	}
	c.unlockWriter()
	return nil
}

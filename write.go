package tether

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/coder/websocket"
)

// Write writes a message. On a live link it writes straight through on the
// caller's goroutine. While the Conn is reconnecting the message is copied
// into the send queue and goes out, in order, after the next connect; when the
// queue is full, the queue policy decides (see WithQueuePolicy).
//
// ctx bounds the call, but never reaches the link, so a short ctx cannot make
// the link look dead, and no frame is ever cut short. On a plain link, a
// Write whose ctx ends while it waits for its turn (behind another Write, or
// a server that stopped reading) returns ctx's error and nothing of it was
// sent; one whose ctx ends while its message is going out returns at once
// with an error wrapping ctx's error and ErrInFlight: the rest of the
// message follows what is already in the socket, so it may still be
// delivered, and later Writes wait their turn behind it. With an
// http.Client of your own in WithDialOptions, tether cannot watch the
// socket, and a Write whose ctx can end copies the message and writes it on
// a goroutine of its own. In session mode ctx bounds the wait for room in
// the replay buffer, which the server frees as the application reads; the
// send that follows is not cut short by ctx, and once numbered a message is
// delivered exactly once while the session lives.
//
// In session mode a message the server could never take is refused before
// it is numbered, without harm to the link: one over the read limit the
// server told (a tether Handler tells it on every link), with an error
// wrapping ErrMessageTooLarge, and a text message that is not valid UTF-8,
// with ErrInvalidUTF8.
//
// A Write that fails on a dying link is queued for the next one. After the
// Conn is closed, Write fails.
func (c *Conn) Write(ctx context.Context, typ websocket.MessageType, p []byte) error {
	if c.writerOpen.Load() {
		if err := c.awaitWriter(ctx); err != nil {
			return fmt.Errorf("tether: write: waiting for the open Writer: %w", err)
		}
	}
	return c.write(ctx, typ, p)
}

// write writes a message, as Write does once no Writer is in the way.
func (c *Conn) write(ctx context.Context, typ websocket.MessageType, p []byte) error {
	if done := ctx.Done(); done != nil {
		select {
		case <-done:
			return fmt.Errorf("tether: write: %w", ctx.Err())
		default:
		}
	}
	l := c.live.Load()
	if pl := c.server.Load(); pl != nil && (l == nil || !l.session) {
		// A session link checks for itself, against what its server told.
		if err := checkNumbered(typ, p, pl.messageLimit(), "server"); err != nil {
			return err
		}
	}
	if l != nil {
		err := l.write(ctx, typ, p)
		if err == nil {
			c.stats.msgsOut.Add(1)
			c.stats.bytesOut.Add(uint64(len(p)))
			return nil
		}
		if refused(err) {
			return err
		}
		if ctx.Err() != nil {
			return fmt.Errorf("tether: write: %w", err)
		}
		l.fail(err)
	}
	return c.writeSlow(ctx, typ, p)
}

type onConnectKey struct{}

// writeSlow handles a Write while there is no live link to write to.
func (c *Conn) writeSlow(ctx context.Context, typ websocket.MessageType, p []byte) error {
	// Writes made inside the OnConnect hook go straight to the new link.
	if l, ok := ctx.Value(onConnectKey{}).(*liveLink); ok && !l.failed() {
		if err := l.write(ctx, typ, p); err != nil {
			if refused(err) {
				return err
			}
			l.fail(err)
			return fmt.Errorf("tether: write during OnConnect: %w", err)
		}
		c.stats.msgsOut.Add(1)
		c.stats.bytesOut.Add(uint64(len(p)))
		return nil
	}
	for {
		c.mu.Lock()
		if c.final != nil {
			err := c.final
			c.mu.Unlock()
			return fmt.Errorf("tether: write: %w", err)
		}
		if l := c.live.Load(); l != nil {
			c.mu.Unlock()
			if err := l.write(ctx, typ, p); err != nil {
				if refused(err) {
					return err
				}
				if ctx.Err() != nil {
					return fmt.Errorf("tether: write: %w", err)
				}
				l.fail(err)
				continue
			}
			c.stats.msgsOut.Add(1)
			c.stats.bytesOut.Add(uint64(len(p)))
			return nil
		}
		q := &c.queue
		q.dropExpired(c.opts.queueMaxAge, time.Now())
		if q.max > 0 && len(p) > q.max {
			c.mu.Unlock()
			return fmt.Errorf("tether: write of %d bytes: %w: the send queue holds %d bytes", len(p), ErrMessageTooLarge, q.max)
		}
		if q.fits(len(p)) || (c.opts.queuePolicy == QueueDropOldest && q.max > 0) {
			for !q.fits(len(p)) {
				q.dropOldest()
			}
			q.push(typ, p)
			c.mu.Unlock()
			return nil
		}
		if c.opts.queuePolicy == QueueFailFast {
			c.mu.Unlock()
			return fmt.Errorf("tether: write: %w", ErrQueueFull)
		}
		room := q.roomChan()
		c.mu.Unlock()
		select {
		case <-room:
		case <-ctx.Done():
			return fmt.Errorf("tether: write: waiting for queue room: %w", ctx.Err())
		}
	}
}

type queued struct {
	typ websocket.MessageType
	p   []byte
	at  time.Time
}

// sendQueue holds, in order, the messages written while reconnecting. It is
// guarded by Conn.mu.
type sendQueue struct {
	msgs    []queued
	head    int
	bytes   int
	max     int
	dropped uint64
	room    chan struct{} // closed when room appears or the queue's fate changes
}

func (q *sendQueue) len() int { return len(q.msgs) - q.head }

func (q *sendQueue) fits(n int) bool { return q.max > 0 && q.bytes+n <= q.max }

func (q *sendQueue) push(typ websocket.MessageType, p []byte) {
	q.msgs = append(q.msgs, queued{typ: typ, p: append([]byte(nil), p...), at: time.Now()})
	q.bytes += len(p)
}

// pop removes the oldest message.
func (q *sendQueue) pop() (queued, bool) {
	if q.len() == 0 {
		return queued{}, false
	}
	m := q.msgs[q.head]
	q.msgs[q.head] = queued{}
	q.head++
	q.bytes -= len(m.p)
	if q.head == len(q.msgs) {
		q.msgs, q.head = q.msgs[:0], 0
	}
	q.wake()
	return m, true
}

// unpop puts m back at the front, after a failed send.
func (q *sendQueue) unpop(m queued) {
	if q.head > 0 {
		q.head--
		q.msgs[q.head] = m
	} else {
		q.msgs = append([]queued{m}, q.msgs...)
	}
	q.bytes += len(m.p)
}

func (q *sendQueue) dropOldest() {
	if _, ok := q.pop(); ok {
		q.dropped++
	}
}

func (q *sendQueue) dropExpired(maxAge time.Duration, now time.Time) {
	for maxAge > 0 && q.len() > 0 && now.Sub(q.msgs[q.head].at) > maxAge {
		q.dropOldest()
	}
}

func (q *sendQueue) roomChan() chan struct{} {
	if q.room == nil {
		q.room = make(chan struct{})
	}
	return q.room
}

// wake releases every Write waiting for room.
func (q *sendQueue) wake() {
	if q.room != nil {
		close(q.room)
		q.room = nil
	}
}

// flush sends the queue on l, oldest first, and then makes l the live link
// for direct writes. The queue lock is not held while writing, so new Writes
// queue behind the flush and keep their order.
func (c *Conn) flush(l *liveLink) error {
	for {
		c.mu.Lock()
		c.queue.dropExpired(c.opts.queueMaxAge, time.Now())
		m, ok := c.queue.pop()
		if !ok {
			c.live.Store(l)
			c.queue.wake()
			c.mu.Unlock()
			return nil
		}
		c.mu.Unlock()
		// l.ctx ends when the link is retired or the Conn closed: a session
		// link may wait here for acknowledgements.
		if err := l.write(l.ctx, m.typ, m.p); err != nil {
			if refused(err) {
				// Queued before this server told a smaller limit: sent, it
				// would be refused on every link.
				c.mu.Lock()
				c.queue.dropped++
				c.mu.Unlock()
				c.logf(slog.LevelWarn, "queued message dropped: the server would refuse it", l.transport, 0, slog.Any("err", err))
				continue
			}
			c.mu.Lock()
			c.queue.unpop(m)
			c.mu.Unlock()
			l.fail(err)
			return err
		}
		c.stats.msgsOut.Add(1)
		c.stats.bytesOut.Add(uint64(len(m.p)))
	}
}

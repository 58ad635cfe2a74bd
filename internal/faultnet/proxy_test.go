package faultnet

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// waitTimeout bounds how long a test waits for something that should happen
// promptly. It is a failure bound, not a timing assertion.
const waitTimeout = 5 * time.Second

// target is a TCP server on 127.0.0.1 used as the proxy target. In echo mode
// it echoes every connection and reports how each one ended on errs;
// otherwise it hands accepted connections to the test on conns.
type target struct {
	ln    net.Listener
	echo  bool
	conns chan net.Conn
	errs  chan error

	wg  sync.WaitGroup
	mu  sync.Mutex
	all []net.Conn
}

func newTarget(t *testing.T, echo bool) *target {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	s := &target{ln: ln, echo: echo, conns: make(chan net.Conn, 16), errs: make(chan error, 16)}
	s.wg.Go(s.serve)
	t.Cleanup(func() {
		ln.Close()
		s.mu.Lock()
		for _, c := range s.all {
			c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
	return s
}

func (s *target) addr() string { return s.ln.Addr().String() }

func (s *target) serve() {
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		s.all = append(s.all, c)
		s.mu.Unlock()
		if !s.echo {
			s.conns <- c
			continue
		}
		s.wg.Go(func() {
			_, err := io.Copy(c, c)
			c.Close()
			s.errs <- err
		})
	}
}

// accept returns the next connection accepted by a non-echo target.
func (s *target) accept(t *testing.T) net.Conn {
	t.Helper()
	select {
	case c := <-s.conns:
		return c
	case <-time.After(waitTimeout):
		t.Fatal("target did not accept a connection")
		return nil
	}
}

func newProxy(t *testing.T, target string) *Proxy {
	t.Helper()
	p, err := Listen(target)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, p.Close()) })
	return p
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, waitTimeout)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

// roundTrip writes msg to c and requires it to be echoed back.
func roundTrip(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	require.NoError(t, c.SetDeadline(time.Now().Add(waitTimeout)))
	_, err := c.Write([]byte(msg))
	require.NoError(t, err)
	expect(t, c, msg)
}

// expect requires the next bytes read from c to be msg.
func expect(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	require.NoError(t, c.SetReadDeadline(time.Now().Add(waitTimeout)))
	buf := make([]byte, len(msg))
	_, err := io.ReadFull(c, buf)
	require.NoError(t, err)
	require.Equal(t, msg, string(buf))
}

// requireTimeout requires a read on c with a 200 ms deadline to time out.
func requireTimeout(t *testing.T, c net.Conn) {
	t.Helper()
	require.NoError(t, c.SetReadDeadline(time.Now().Add(200*time.Millisecond)))
	n, err := c.Read(make([]byte, 1))
	require.Zero(t, n)
	require.ErrorIs(t, err, os.ErrDeadlineExceeded)
}

func waitActive(t *testing.T, p *Proxy, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	defer cancel()
	require.NoError(t, p.WaitActive(ctx, n))
}

func isReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET)
}

func TestForward(t *testing.T) {
	tg := newTarget(t, true)
	p := newProxy(t, tg.addr())
	require.Regexp(t, `^127\.0\.0\.1:\d+$`, p.Addr())

	c := dial(t, p.Addr())
	roundTrip(t, c, "hello")
	roundTrip(t, c, "world")
	require.EqualValues(t, 1, p.Accepted())
	require.Equal(t, 1, p.Active())

	c.Close()
	waitActive(t, p, 0)
	require.EqualValues(t, 1, p.Accepted())
}

func TestHalfClose(t *testing.T) {
	tg := newTarget(t, true)
	p := newProxy(t, tg.addr())

	c := dial(t, p.Addr())
	_, err := c.Write([]byte("bye"))
	require.NoError(t, err)
	require.NoError(t, c.(*net.TCPConn).CloseWrite())
	require.NoError(t, c.SetReadDeadline(time.Now().Add(waitTimeout)))
	got, err := io.ReadAll(c)
	require.NoError(t, err)
	require.Equal(t, "bye", string(got))
	waitActive(t, p, 0)
}

func TestSetTarget(t *testing.T) {
	a := newTarget(t, true)
	b := newTarget(t, false)
	p := newProxy(t, a.addr())

	c1 := dial(t, p.Addr())
	roundTrip(t, c1, "to a")

	p.SetTarget(b.addr())
	c2 := dial(t, p.Addr())
	s2 := b.accept(t)
	_, err := c2.Write([]byte("to b"))
	require.NoError(t, err)
	expect(t, s2, "to b")

	roundTrip(t, c1, "still a")
}

func TestReset(t *testing.T) {
	tg := newTarget(t, true)
	p := newProxy(t, tg.addr())

	c := dial(t, p.Addr())
	roundTrip(t, c, "hello")

	p.Reset()

	require.NoError(t, c.SetReadDeadline(time.Now().Add(waitTimeout)))
	_, err := c.Read(make([]byte, 1))
	require.Truef(t, isReset(err), "client: want connection reset, got %v", err)

	select {
	case err := <-tg.errs:
		require.Truef(t, isReset(err), "target: want connection reset, got %v", err)
	case <-time.After(waitTimeout):
		t.Fatal("target connection did not end")
	}
	waitActive(t, p, 0)

	// New connections work.
	roundTrip(t, dial(t, p.Addr()), "again")
}

func TestBlackhole(t *testing.T) {
	tg := newTarget(t, false)
	p := newProxy(t, tg.addr())

	c := dial(t, p.Addr())
	s := tg.accept(t)
	_, err := c.Write([]byte("up"))
	require.NoError(t, err)
	expect(t, s, "up")
	require.False(t, p.DroppedOn(s.RemoteAddr().String()))

	p.Blackhole(true)
	_, err = c.Write([]byte("lost"))
	require.NoError(t, err)
	_, err = s.Write([]byte("gone"))
	require.NoError(t, err)

	// Wait until the proxy has read and dropped both writes.
	deadline := time.Now().Add(waitTimeout)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for p.dropped.Load() < 8 {
		require.True(t, time.Now().Before(deadline), "proxy did not drop data")
		<-tick.C
	}
	requireTimeout(t, c)
	requireTimeout(t, s)
	require.True(t, p.DroppedOn(s.RemoteAddr().String()), "the connection that lost bytes is known by its address")

	// New connections are accepted and dialled while blackholed.
	c2 := dial(t, p.Addr())
	s2 := tg.accept(t)
	waitActive(t, p, 2)
	_, err = c2.Write([]byte("x"))
	require.NoError(t, err)
	requireTimeout(t, s2)

	p.Blackhole(false)
	_, err = c.Write([]byte("ping"))
	require.NoError(t, err)
	expect(t, s, "ping")
	_, err = s.Write([]byte("pong"))
	require.NoError(t, err)
	expect(t, c, "pong")
	require.EqualValues(t, 2, p.Accepted())
}

func TestRefuse(t *testing.T) {
	tg := newTarget(t, true)
	p := newProxy(t, tg.addr())
	c := dial(t, p.Addr())
	roundTrip(t, c, "before")

	require.NoError(t, p.Refuse(true))
	require.NoError(t, p.Refuse(true))
	_, err := net.DialTimeout("tcp", p.Addr(), waitTimeout)
	require.ErrorIs(t, err, syscall.ECONNREFUSED)
	roundTrip(t, c, "during")

	require.NoError(t, p.Refuse(false))
	require.NoError(t, p.Refuse(false))
	roundTrip(t, dial(t, p.Addr()), "after")
	roundTrip(t, c, "still")
	require.EqualValues(t, 2, p.Accepted())
}

func TestDelay(t *testing.T) {
	const d = 100 * time.Millisecond
	tg := newTarget(t, true)
	p := newProxy(t, tg.addr())
	c := dial(t, p.Addr())
	roundTrip(t, c, "warm")

	p.SetDelay(d)
	start := time.Now()
	roundTrip(t, c, "slow")
	require.GreaterOrEqual(t, time.Since(start), 2*d) // delayed both ways

	p.SetDelay(0)
	roundTrip(t, c, "fast")
}

func TestDropAfter(t *testing.T) {
	tg := newTarget(t, false)
	p := newProxy(t, tg.addr())

	p.DropAfter(5)
	c := dial(t, p.Addr())
	s := tg.accept(t)
	_, err := s.Write([]byte("0123456789"))
	require.NoError(t, err)

	require.NoError(t, c.SetReadDeadline(time.Now().Add(waitTimeout)))
	got, err := io.ReadAll(c)
	require.Equal(t, "01234", string(got))
	require.Truef(t, isReset(err), "client: want connection reset, got %v", err)

	require.NoError(t, s.SetReadDeadline(time.Now().Add(waitTimeout)))
	_, err = s.Read(make([]byte, 1))
	require.Truef(t, isReset(err), "target: want connection reset, got %v", err)

	// Only the next connection is affected.
	c2 := dial(t, p.Addr())
	s2 := tg.accept(t)
	_, err = s2.Write([]byte("0123456789"))
	require.NoError(t, err)
	expect(t, c2, "0123456789")
}

func TestWaitActiveContext(t *testing.T) {
	tg := newTarget(t, true)
	p := newProxy(t, tg.addr())
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	err := p.WaitActive(ctx, 3)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.ErrorContains(t, err, "faultnet: ")
}

func TestClose(t *testing.T) {
	tg := newTarget(t, true)
	p, err := Listen(tg.addr())
	require.NoError(t, err)

	c := dial(t, p.Addr())
	roundTrip(t, c, "hello")
	require.NoError(t, p.Close())
	require.NoError(t, p.Close())
	require.Zero(t, p.Active())

	require.NoError(t, c.SetReadDeadline(time.Now().Add(waitTimeout)))
	_, err = c.Read(make([]byte, 1))
	require.Error(t, err)

	_, err = net.DialTimeout("tcp", p.Addr(), waitTimeout)
	require.ErrorIs(t, err, syscall.ECONNREFUSED)
	require.ErrorContains(t, p.Refuse(false), "faultnet: ")
}

func TestCloseWhileRefused(t *testing.T) {
	tg := newTarget(t, true)
	p, err := Listen(tg.addr())
	require.NoError(t, err)
	c := dial(t, p.Addr())
	roundTrip(t, c, "hello")
	require.NoError(t, p.Refuse(true))
	require.NoError(t, p.Close())
	require.Zero(t, p.Active())
}

package tetherredis_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/coder/websocket"

	"github.com/tetherws/tether"
	"github.com/tetherws/tether/tetherredis/internal/redistest"
)

// Handler benchmarks: several instances on a real redis-server, in one
// process, on loopback, with tetherredis's default lease and call timeout.
// See BENCHMARKS.md, "Several instances".

// plainEcho echoes every message, as the bench module's servers do.
func plainEcho(ctx context.Context, s *tether.Session) {
	for {
		typ, p, err := s.Read(ctx)
		if err != nil {
			return
		}
		if s.Write(ctx, typ, p) != nil {
			return
		}
	}
}

// forwardedPair returns two Conns with sessions on the instance owner:
// one whose link goes to it, one whose link goes to the instance fwd,
// which forwards it. Both go through a TCP balancer first, as in a
// deployment.
func forwardedPair(b *testing.B) (direct, forwarded *tether.Conn) {
	direct, forwarded, _ = forwardedTrio(b)
	return direct, forwarded
}

// forwardedTrio is forwardedPair, and a third Conn whose link goes to the
// owner through a second TCP balancer after the first: one more hop that
// only copies bytes, what any relay costs at the least.
func forwardedTrio(b *testing.B) (direct, forwarded, relayed *tether.Conn) {
	b.Helper()
	srv := redistest.Start(b)
	owner := startDefaults(b, srv, "owner", plainEcho)
	fwd := startDefaults(b, srv, "fwd", plainEcho)
	pd, p := newBalancer(b, owner.addr()), newBalancer(b, owner.addr())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dial := func(url string) *tether.Conn {
		c, err := tether.Dial(ctx, url, tether.WithBackoff(fastRetry))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = c.CloseNow() })
		return c
	}
	direct = dial(pd.wsURL())
	relayed = dial(newBalancer(b, newBalancer(b, owner.addr()).ln.Addr().String()).wsURL())
	forwarded = dial(p.wsURL())
	p.setBackends(fwd.addr())
	p.cut()
	for fwd.h.Stats().Forwarded == 0 || forwarded.State() != tether.Connected {
		if ctx.Err() != nil {
			b.Fatal("the client did not come back through the forwarding instance")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if fwd.h.Sessions() != 0 || owner.h.Sessions() != 3 {
		b.Fatalf("sessions: %d on the owner, %d on the forwarder", owner.h.Sessions(), fwd.h.Sessions())
	}
	return direct, forwarded, relayed
}

// BenchmarkForwardEcho is the round trip of one message, client to
// session and back, directly to the instance that holds the session and
// through another instance that forwards the link.
func BenchmarkForwardEcho(b *testing.B) {
	direct, forwarded := forwardedPair(b)
	for _, size := range []int{16, 1024} {
		for _, c := range []struct {
			via  string
			conn *tether.Conn
		}{{"direct", direct}, {"forward", forwarded}} {
			b.Run(fmt.Sprintf("size=%d/via=%s", size, c.via), func(b *testing.B) {
				msg := make([]byte, size)
				ctx := context.Background()
				b.SetBytes(int64(size))
				for b.Loop() {
					if err := c.conn.Write(ctx, websocket.MessageBinary, msg); err != nil {
						b.Fatal(err)
					}
					if _, _, err := c.conn.Read(ctx); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkForwardPipeline is the throughput of 1 KiB messages written
// by one goroutine and echoes read by another, directly and forwarded.
func BenchmarkForwardPipeline(b *testing.B) {
	direct, forwarded := forwardedPair(b)
	for _, c := range []struct {
		via  string
		conn *tether.Conn
	}{{"direct", direct}, {"forward", forwarded}} {
		b.Run("size=1024/via="+c.via, func(b *testing.B) {
			msg := make([]byte, 1024)
			ctx := context.Background()
			b.SetBytes(1024)
			b.ResetTimer()
			start := time.Now()
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range b.N {
					if err := c.conn.Write(ctx, websocket.MessageBinary, msg); err != nil {
						b.Error(err)
						return
					}
				}
			}()
			for range b.N {
				if _, _, err := c.conn.Read(ctx); err != nil {
					b.Fatal(err)
				}
			}
			wg.Wait()
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
		})
	}
}

// BenchmarkForwardRatio measures the same as BenchmarkForwardEcho and
// BenchmarkForwardPipeline, with direct and forwarded rounds interleaved
// (100 round trips, or 1,000 pipelined messages, each in turn), so that
// other load on the machine weighs on both alike: it reports each one's
// messages a second and their ratio, forwarded to direct; and the same
// for a link relayed by one more TCP balancer, for scale.
func BenchmarkForwardRatio(b *testing.B) {
	direct, forwarded, relayed := forwardedTrio(b)
	echo := func(c *tether.Conn, msg []byte, n int) {
		ctx := context.Background()
		for range n {
			if err := c.Write(ctx, websocket.MessageBinary, msg); err != nil {
				b.Fatal(err)
			}
			if _, _, err := c.Read(ctx); err != nil {
				b.Fatal(err)
			}
		}
	}
	pipeline := func(c *tether.Conn, msg []byte, n int) {
		ctx := context.Background()
		errc := make(chan error, 1)
		go func() {
			for range n {
				if err := c.Write(ctx, websocket.MessageBinary, msg); err != nil {
					errc <- err
					return
				}
			}
			errc <- nil
		}()
		for range n {
			if _, _, err := c.Read(ctx); err != nil {
				b.Fatal(err)
			}
		}
		if err := <-errc; err != nil {
			b.Fatal(err)
		}
	}
	for _, c := range []struct {
		name  string
		size  int
		round int
		run   func(*tether.Conn, []byte, int)
	}{
		{"echo/size=16", 16, 100, echo},
		{"echo/size=1024", 1024, 100, echo},
		{"pipeline/size=1024", 1024, 1000, pipeline},
	} {
		b.Run(c.name, func(b *testing.B) {
			msg := make([]byte, c.size)
			var tDirect, tForward, tRelay time.Duration
			msgs := 0
			for b.Loop() {
				t0 := time.Now()
				c.run(direct, msg, c.round)
				t1 := time.Now()
				c.run(forwarded, msg, c.round)
				t2 := time.Now()
				c.run(relayed, msg, c.round)
				tDirect += t1.Sub(t0)
				tForward += t2.Sub(t1)
				tRelay += time.Since(t2)
				msgs += c.round
			}
			d := float64(msgs) / tDirect.Seconds()
			f := float64(msgs) / tForward.Seconds()
			r := float64(msgs) / tRelay.Seconds()
			b.ReportMetric(d, "direct-msgs/s")
			b.ReportMetric(f, "forward-msgs/s")
			b.ReportMetric(f/d, "forward/direct")
			b.ReportMetric(r/d, "relay/direct")
		})
	}
}

// BenchmarkShutdownIdle is the time Shutdown takes to hand over 1,000
// idle sessions, and the time until all their clients have resumed on the
// instance that stays.
func BenchmarkShutdownIdle(b *testing.B) {
	const sessions = 1000
	srv := redistest.Start(b)
	var totalShutdown, totalResumed, worstShutdown time.Duration
	n := 0
	for b.Loop() {
		b.StopTimer()
		old := startDefaults(b, srv, "old", plainEcho)
		next := startDefaults(b, srv, "next", plainEcho)
		lb := newBalancer(b, old.addr())
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		conns := make([]*tether.Conn, sessions)
		for i := range conns {
			c, err := tether.Dial(ctx, lb.wsURL(), tether.WithBackoff(func() backoff.BackOff { return backoff.NewConstantBackOff(50 * time.Millisecond) }))
			if err != nil {
				b.Fatal(err)
			}
			conns[i] = c
		}
		lb.setBackends(next.addr())
		b.StartTimer()

		start := time.Now()
		if err := old.h.Shutdown(ctx); err != nil {
			b.Fatal(err)
		}
		shutdown := time.Since(start)
		b.StopTimer()
		for next.h.Sessions() < sessions && ctx.Err() == nil {
			time.Sleep(5 * time.Millisecond)
		}
		resumed := time.Since(start)
		if old.h.Stats().HandedOver != sessions || next.h.Stats().TakenOver != sessions {
			b.Fatalf("%d handed over, %d taken over, of %d", old.h.Stats().HandedOver, next.h.Stats().TakenOver, sessions)
		}
		totalShutdown += shutdown
		totalResumed += resumed
		worstShutdown = max(worstShutdown, shutdown)
		n++
		for _, c := range conns {
			_ = c.CloseNow()
		}
		cancel()
		lb.close()
		old.stop()
		next.stop()
		b.StartTimer()
	}
	b.ReportMetric(float64(totalShutdown.Milliseconds())/float64(n), "shutdown-ms")
	b.ReportMetric(float64(worstShutdown.Milliseconds()), "worst-shutdown-ms")
	b.ReportMetric(float64(totalResumed.Milliseconds())/float64(n), "all-resumed-ms")
}

// BenchmarkResumeAfterHandoff is the time a client takes to resume its
// session on another instance after its instance shut down: from the
// start of Shutdown until the client has the echo of a message sent
// then. With tether's default backoff the client waits a random step of
// up to 2 s before it reconnects after a lost link; backoff=50ms shows the
// rest.
func BenchmarkResumeAfterHandoff(b *testing.B) {
	srv := redistest.Start(b)
	for _, bo := range []struct {
		name string
		opt  []tether.Option
	}{
		{"default", nil},
		{"50ms", []tether.Option{tether.WithBackoff(func() backoff.BackOff { return backoff.NewConstantBackOff(50 * time.Millisecond) })}},
	} {
		b.Run("backoff="+bo.name, func(b *testing.B) {
			var total time.Duration
			for b.Loop() {
				b.StopTimer()
				old := startDefaults(b, srv, "old", plainEcho)
				next := startDefaults(b, srv, "next", plainEcho)
				lb := newBalancer(b, old.addr())
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				c, err := tether.Dial(ctx, lb.wsURL(), bo.opt...)
				if err != nil {
					b.Fatal(err)
				}
				lb.setBackends(next.addr())
				b.StartTimer()
				start := time.Now()
				if err := old.h.Shutdown(ctx); err != nil {
					b.Fatal(err)
				}
				if err := c.Write(ctx, websocket.MessageText, []byte("back")); err != nil {
					b.Fatal(err)
				}
				if _, _, err := c.Read(ctx); err != nil {
					b.Fatal(err)
				}
				total += time.Since(start)
				b.StopTimer()
				if next.h.Stats().TakenOver != 1 {
					b.Fatal("the session was not taken over")
				}
				_ = c.CloseNow()
				cancel()
				lb.close()
				old.stop()
				next.stop()
				b.StartTimer()
			}
			b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms/resume")
		})
	}
}

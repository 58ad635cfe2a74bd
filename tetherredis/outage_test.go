package tetherredis_test

import (
	"context"
	"errors"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tetherws/tether"
	"github.com/tetherws/tether/clustertest"
	"github.com/tetherws/tether/tetherredis"
	"github.com/tetherws/tether/tetherredis/internal/redistest"
)

// recorder is a slog.Handler that keeps the messages of the records it
// gets, by level.
type recorder struct {
	mu   sync.Mutex
	msgs []string
}

func (r *recorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *recorder) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r *recorder) WithGroup(string) slog.Handler            { return r }
func (r *recorder) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.msgs = append(r.msgs, rec.Level.String()+" "+rec.Message)
	return nil
}

func (r *recorder) count(msg string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, m := range r.msgs {
		if m == msg {
			n++
		}
	}
	return n
}

func (r *recorder) all() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.msgs...)
}

func newCluster(t *testing.T, srv *redistest.Server, name string, opts ...tetherredis.Option) *tetherredis.Cluster {
	t.Helper()
	opts = append([]tetherredis.Option{tetherredis.WithLease(testLease), tetherredis.WithCallTimeout(testCallTimeout)}, opts...)
	c := tetherredis.New(srv.Client(t), "http://127.0.0.1:8080/"+name, opts...)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = c.Leave(ctx)
	})
	return c
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// waitFor polls cond every 10 ms until it is true, or fails the test after
// within.
func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %s", within, what)
		}
		<-time.After(10 * time.Millisecond)
	}
}

// callGoroutines counts the goroutines running a Cluster's store calls.
func callGoroutines() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	count := 0
	for g := range strings.SplitSeq(string(buf), "\n\n") {
		if strings.Contains(g, "created by github.com/tetherws/tether/tetherredis.run[") {
			count++
		}
	}
	return count
}

// TestFrozenRedis: while Redis does not answer, every call fails within the
// call timeout, at most one goroutine waits on Redis whatever the number of
// calls, the outage is logged once, and the first answer ends it.
func TestFrozenRedis(t *testing.T) {
	srv := redistest.Start(t)
	rec := &recorder{}
	c := newCluster(t, srv, "a", tetherredis.WithLogger(slog.New(rec)))
	l, err := c.Claim(ctxT(t), clustertest.NewSessionID())
	if err != nil {
		t.Fatal(err)
	}
	base := runtime.NumGoroutine()
	srv.Freeze()
	thawed := false
	defer func() {
		if !thawed {
			srv.Thaw()
		}
	}()
	// The first call finds the outage: it waits for the call timeout, and
	// its goroutine waits on for Redis.
	if _, err := c.Lookup(ctxT(t), l.ID); !errors.Is(err, tether.ErrClusterUnavailable) {
		t.Fatalf("first call while Redis was frozen: %v, want ErrClusterUnavailable", err)
	}

	// 16 callers, each calling every 10 ms for 2 s: ten call timeouts.
	const callers = 16
	stop := time.Now().Add(10 * testCallTimeout)
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		calls int
		peak  int
	)
	for i := range callers {
		wg.Go(func() {
			for time.Now().Before(stop) {
				t0 := time.Now()
				var err error
				if i%2 == 0 {
					_, err = c.Lookup(ctxT(t), l.ID)
				} else {
					_, err = c.Renew(ctxT(t), []tether.Lease{l})
				}
				if took := time.Since(t0); took > testCallTimeout+500*time.Millisecond {
					t.Errorf("a call took %v while Redis was frozen; want at most the call timeout %v", took, testCallTimeout)
				}
				if !errors.Is(err, tether.ErrClusterUnavailable) {
					t.Errorf("call while Redis was frozen: %v, want ErrClusterUnavailable", err)
				}
				mu.Lock()
				calls++
				peak = max(peak, callGoroutines())
				mu.Unlock()
				<-time.After(10 * time.Millisecond)
			}
		})
	}
	wg.Wait()
	// One probe at a time waits on Redis, however many calls time out:
	// with the first call's, two of the Cluster's goroutines. (go-redis
	// may have a dial of its own going on, within its own bounds.)
	if ours := callGoroutines(); ours > 2 || peak > 2 {
		t.Errorf("%d of the Cluster's goroutines left waiting on Redis after %d calls (peak %d); want at most 2", ours, calls, peak)
	}
	t.Logf("%d calls during the outage; peak of %d call goroutines; at the end %d, and %d goroutines more than before in all",
		calls, peak, callGoroutines(), runtime.NumGoroutine()-base)
	if n := rec.count("WARN cluster store unavailable"); n != 1 {
		t.Errorf("outage logged %d times, want once: %q", n, rec.all())
	}

	srv.Thaw()
	thawed = true
	waitFor(t, 5*time.Second, "calls to succeed after Redis came back", func() bool {
		_, err := c.Renew(ctxT(t), []tether.Lease{l})
		return err == nil
	})
	if n := rec.count("INFO cluster store available again"); n != 1 {
		t.Errorf("end of the outage logged %d times, want once: %q", n, rec.all())
	}
	if n := rec.count("WARN cluster store unavailable"); n != 1 {
		t.Errorf("outage logged %d times, want once: %q", n, rec.all())
	}
}

// TestRedisRestartedEmpty: Redis killed (calls fail fast: connection
// refused), then started again empty. The owners write their sessions
// again on their next Renew, and until they do, another instance answers
// "recovering", never "lost".
func TestRedisRestartedEmpty(t *testing.T) {
	srv := redistest.Start(t)
	rec := &recorder{}
	a := newCluster(t, srv, "a", tetherredis.WithLogger(slog.New(rec)))
	b := newCluster(t, srv, "b")
	var leases []tether.Lease
	for range 100 {
		l, err := a.Claim(ctxT(t), clustertest.NewSessionID())
		if err != nil {
			t.Fatal(err)
		}
		leases = append(leases, l)
	}
	if _, err := a.Renew(ctxT(t), leases); err != nil {
		t.Fatal(err)
	}

	srv.Kill()
	for range 5 {
		t0 := time.Now()
		_, err := b.Lookup(ctxT(t), leases[0].ID)
		if !errors.Is(err, tether.ErrClusterUnavailable) {
			t.Fatalf("Lookup with Redis down: %v, want ErrClusterUnavailable", err)
		}
		if took := time.Since(t0); took > testCallTimeout+500*time.Millisecond {
			t.Fatalf("Lookup with Redis down took %v", took)
		}
	}

	srv.Restart()
	// b asks before a wrote anything back.
	waitFor(t, 5*time.Second, "Lookup to answer after the restart", func() bool {
		o, err := b.Lookup(ctxT(t), leases[0].ID)
		if err == nil && o.Status != tether.OwnerRecovering {
			t.Fatalf("Lookup after Redis restarted empty, before the owner renewed: %v, want recovering", o.Status)
		}
		return err == nil
	})
	t0 := time.Now()
	waitFor(t, 5*time.Second, "the owner to write its sessions again", func() bool {
		lost, err := a.Renew(ctxT(t), leases)
		if len(lost) > 0 {
			t.Fatalf("Renew after the restart lost %d sessions", len(lost))
		}
		return err == nil
	})
	t.Logf("sessions written again %v after Redis answered", time.Since(t0))
	for _, l := range leases {
		o, err := b.Lookup(ctxT(t), l.ID)
		if err != nil || o.Status != tether.OwnerRemote || o.Instance != a.ID() || o.Epoch != l.Epoch {
			t.Fatalf("Lookup after re-registration: %+v, %v; want remote, owned by a, epoch %d", o, err, l.Epoch)
		}
	}
	if n := rec.count("INFO sessions written again: the store had lost them"); n != 1 {
		t.Errorf("re-registration logged %d times, want once: %q", n, rec.all())
	}
}

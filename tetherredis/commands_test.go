package tetherredis_test

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tetherws/tether"
	"github.com/tetherws/tether/clustertest"
	"github.com/tetherws/tether/tetherredis"
	"github.com/tetherws/tether/tetherredis/internal/redistest"
)

// commandsDuring returns the commands Redis ran during fn, by name, INFO
// itself left out.
func commandsDuring(t *testing.T, srv *redistest.Server, fn func()) map[string]int64 {
	t.Helper()
	before := srv.CommandCalls(t)
	fn()
	after := srv.CommandCalls(t)
	delta := make(map[string]int64)
	for name, n := range after {
		if d := n - before[name]; d > 0 && name != "info" {
			delta[name] = d
		}
	}
	return delta
}

// leasesFor registers n sessions of c at epoch 1 in one Renew (a record
// that is missing is written from the lease).
func leasesFor(t testing.TB, c tether.Cluster, n int) []tether.Lease {
	t.Helper()
	leases := make([]tether.Lease, n)
	for i := range leases {
		leases[i] = tether.Lease{ID: clustertest.NewSessionID(), Epoch: 1}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if lost, err := c.Renew(ctx, leases); err != nil || len(lost) > 0 {
		t.Fatalf("Renew of %d new leases: lost %d, %v", n, len(lost), err)
	}
	return leases
}

// TestRenewIsBatched: a Renew of 1,000 sessions is two Redis commands
// (two scripts of 500 in one pipeline), of 10,000 twenty. INFO
// commandstats also counts what the scripts run inside: per session one
// HMGET and one PEXPIRE, per script the liveness SET and an EXISTS.
func TestRenewIsBatched(t *testing.T) {
	srv := redistest.Start(t)
	// A long lease and call timeout: this test counts, it does not time.
	c := newCluster(t, srv, "a", tetherredis.WithLease(time.Minute), tetherredis.WithCallTimeout(10*time.Second))
	for _, n := range []int{1000, 10000} {
		leases := leasesFor(t, c, n)
		got := commandsDuring(t, srv, func() {
			if lost, err := c.Renew(ctxT(t), leases); err != nil || len(lost) > 0 {
				t.Fatalf("Renew: lost %d, %v", len(lost), err)
			}
		})
		b := int64(n / 500)
		want := map[string]int64{"evalsha": b, "set": b, "exists": b, "hmget": int64(n), "pexpire": int64(n)}
		if !maps.Equal(got, want) {
			t.Errorf("Renew of %d sessions ran %v; want %v", n, got, want)
		}
		t.Logf("Renew of %d sessions: %v", n, got)
	}
}

// TestOneCommandPerCall: Claim, Lookup, Release, Park and TakeParked are
// one script each; nothing else goes to Redis.
func TestOneCommandPerCall(t *testing.T) {
	srv := redistest.Start(t)
	a, b := newCluster(t, srv, "a"), newCluster(t, srv, "b")
	flow := func() {
		id := clustertest.NewSessionID()
		l, err := a.Claim(ctxT(t), id)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := b.Lookup(ctxT(t), id); err != nil {
			t.Fatal(err)
		}
		if err := a.Park(ctxT(t), l, []byte("state"), time.Minute); err != nil {
			t.Fatal(err)
		}
		l, _, err = b.TakeParked(ctxT(t), id)
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Release(ctxT(t), l, nil, 0); err != nil {
			t.Fatal(err)
		}
	}
	flow() // the first run loads the scripts
	got := commandsDuring(t, srv, flow)
	if got["evalsha"] != 5 {
		t.Errorf("Claim, Lookup, Park, TakeParked, Release ran %v; want 5 EVALSHA", got)
	}
	// Everything else ran inside the scripts.
	inside := map[string]bool{"evalsha": true, "exists": true, "set": true, "get": true, "hmget": true, "hget": true, "hset": true, "hdel": true, "del": true, "pexpire": true}
	for name := range got {
		if !inside[name] {
			t.Errorf("Claim, Lookup, Park, TakeParked, Release ran %s: %v", name, got)
		}
	}
}

// TestKeys: every key is under the prefix, and each has the lifetime the
// docs give: liveness one lease, a session's record three, a parked state
// or an ended note the ttl given.
func TestKeys(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	const lease = 20 * time.Second
	for _, prefix := range []string{"", "{app1}:"} {
		t.Run("prefix="+prefix, func(t *testing.T) {
			if err := rdb.FlushAll(ctxT(t)).Err(); err != nil {
				t.Fatal(err)
			}
			opts := []tetherredis.Option{tetherredis.WithLease(lease)}
			want := "tether:"
			if prefix != "" {
				opts = append(opts, tetherredis.WithPrefix(prefix))
				want = prefix
			}
			c := newCluster(t, srv, "a", opts...)
			x, y := clustertest.NewSessionID(), clustertest.NewSessionID()
			lx, err := c.Claim(ctxT(t), x)
			if err != nil {
				t.Fatal(err)
			}
			ly, err := c.Claim(ctxT(t), y)
			if err != nil {
				t.Fatal(err)
			}
			pttl := func(key string) time.Duration {
				t.Helper()
				d, err := rdb.PTTL(ctxT(t), key).Result()
				if err != nil {
					t.Fatal(err)
				}
				return d
			}
			near := func(key string, d time.Duration) {
				t.Helper()
				if got := pttl(key); got > d || got < d-2*time.Second {
					t.Errorf("%s: time to live %v, want about %v", key, got, d)
				}
			}
			near(want+"i:"+c.ID(), lease)
			near(want+"s:"+x.String(), 3*lease)
			near(want+"settle", lease)
			if got := pttl(want + "dir"); got != -1 {
				t.Errorf("%sdir: time to live %v, want none", want, got)
			}
			if err := c.Park(ctxT(t), lx, []byte("s"), 7*time.Second); err != nil {
				t.Fatal(err)
			}
			near(want+"s:"+x.String(), 7*time.Second)
			if err := c.Release(ctxT(t), ly, []byte("bye"), 5*time.Second); err != nil {
				t.Fatal(err)
			}
			near(want+"s:"+y.String(), 5*time.Second)
			keys, err := rdb.Keys(ctxT(t), "*").Result()
			if err != nil {
				t.Fatal(err)
			}
			if len(keys) != 5 {
				t.Errorf("keys %q: want liveness, two records, dir and settle", keys)
			}
			for _, k := range keys {
				if !strings.HasPrefix(k, want) {
					t.Errorf("key %q is not under the prefix %q", k, want)
				}
			}
			if err := c.Leave(ctxT(t)); err != nil {
				t.Fatal(err)
			}
			if n, _ := rdb.Exists(ctxT(t), want+"i:"+c.ID()).Result(); n != 0 {
				t.Errorf("liveness key still there after Leave")
			}
		})
	}
}

// TestInvalidConfig: New cannot fail, so a bad advertise URL or option
// makes every call fail, saying which, without going to Redis and without
// repeating credentials.
func TestInvalidConfig(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	tests := []struct {
		name string
		rdb  redis.UniversalClient
		url  string
		opt  tetherredis.Option
		want error
		says string
	}{
		{"nil client", nil, "http://127.0.0.1:8080/ws", nil, tether.ErrInvalidOption, "nil client"},
		{"ws scheme", rdb, "ws://127.0.0.1:8080/ws", nil, tether.ErrInvalidURL, "want http or https"},
		{"no host", rdb, "http:///ws", nil, tether.ErrInvalidURL, "no host"},
		{"malformed", rdb, "http://[::1", nil, tether.ErrInvalidURL, "advertise URL"},
		{"credentials", rdb, "http://user:hunter2@127.0.0.1:8080/ws", nil, tether.ErrInvalidURL, "credentials"},
		{"negative lease", rdb, "http://127.0.0.1:8080/ws", tetherredis.WithLease(-time.Second), tether.ErrInvalidOption, "WithLease"},
		{"tiny lease", rdb, "http://127.0.0.1:8080/ws", tetherredis.WithLease(time.Millisecond), tether.ErrInvalidOption, "WithLease"},
		{"negative timeout", rdb, "http://127.0.0.1:8080/ws", tetherredis.WithCallTimeout(-1), tether.ErrInvalidOption, "WithCallTimeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var opts []tetherredis.Option
			if tt.opt != nil {
				opts = append(opts, tt.opt)
			}
			c := tetherredis.New(tt.rdb, tt.url, opts...)
			got := commandsDuring(t, srv, func() {
				_, err := c.Claim(ctxT(t), clustertest.NewSessionID())
				if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.says) || !strings.HasPrefix(err.Error(), "tether: ") {
					t.Errorf("Claim: %v; want an error wrapping %v that says %q", err, tt.want, tt.says)
				}
				if err != nil && strings.Contains(err.Error(), "hunter2") {
					t.Errorf("the error repeats the password: %v", err)
				}
				if _, err := c.Renew(ctxT(t), nil); !errors.Is(err, tt.want) {
					t.Errorf("Renew: %v, want %v", err, tt.want)
				}
				if err := c.Leave(ctxT(t)); err != nil {
					t.Errorf("Leave: %v", err)
				}
			})
			if len(got) > 0 {
				t.Errorf("a misconfigured Cluster went to Redis: %v", got)
			}
		})
	}
	// Zero values keep the defaults.
	c := tetherredis.New(rdb, "https://127.0.0.1:8443/ws", tetherredis.WithLease(0), tetherredis.WithCallTimeout(0), tetherredis.WithPrefix(""), tetherredis.WithLogger(nil))
	if got := c.RenewInterval(); got != tetherredis.DefaultLease/3 {
		t.Errorf("RenewInterval with the default lease: %v", got)
	}
	if _, err := c.Claim(ctxT(t), clustertest.NewSessionID()); err != nil {
		t.Errorf("Claim with zero options: %v", err)
	}
	_ = c.Leave(ctxT(t))
}

// TestCallerDeadline: a caller's deadline shorter than the call timeout
// ends the call with the caller's error, and does not count as an outage.
func TestCallerDeadline(t *testing.T) {
	srv := redistest.Start(t)
	rec := &recorder{}
	c := newCluster(t, srv, "a", tetherredis.WithLogger(slog.New(rec)), tetherredis.WithCallTimeout(time.Minute))
	if _, err := c.Claim(ctxT(t), clustertest.NewSessionID()); err != nil {
		t.Fatal(err)
	}
	srv.Freeze()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	t0 := time.Now()
	_, err := c.Lookup(ctx, clustertest.NewSessionID())
	took := time.Since(t0)
	srv.Thaw()
	if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, tether.ErrClusterUnavailable) {
		t.Errorf("Lookup past the caller's deadline: %v; want the caller's deadline, not an outage", err)
	}
	if took > time.Second {
		t.Errorf("Lookup past a 50 ms deadline took %v", took)
	}
	if msgs := rec.all(); len(msgs) > 0 {
		t.Errorf("a caller's deadline was logged: %q", msgs)
	}
	if _, err := c.Lookup(ctxT(t), clustertest.NewSessionID()); err != nil {
		t.Errorf("Lookup after: %v", err)
	}
}

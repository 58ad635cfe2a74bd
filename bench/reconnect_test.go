package bench

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/coder/websocket"

	"github.com/tetherws/tether"
	"github.com/tetherws/tether/bench/internal/blackhole"
	"github.com/tetherws/tether/bench/internal/echo"
)

// events collects a Conn's state changes from its state hook.
type events chan tether.StateChange

func (ev events) hook(sc tether.StateChange) {
	select {
	case ev <- sc:
	default: // a benchmark that stopped listening does not block the Conn
	}
}

// wait returns the next change into state to, failing b after d.
func (ev events) wait(b *testing.B, to tether.State, d time.Duration) tether.StateChange {
	b.Helper()
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		select {
		case sc := <-ev:
			if sc.To == to {
				return sc
			}
		case <-t.C:
			b.Fatalf("no change to %v within %v", to, d)
		}
	}
}

// recorder passes on a BackOff's delays and reports the first one of each
// outage, so that a benchmark knows the delay the Conn actually drew.
type recorder struct {
	backoff.BackOff
	first chan<- time.Duration
	sent  bool
}

func (r *recorder) NextBackOff() time.Duration {
	d := r.BackOff.NextBackOff()
	if !r.sent {
		r.sent = true
		select {
		case r.first <- d:
		default:
		}
	}
	return d
}

func tetherRoundTrip(b *testing.B, c *tether.Conn, p []byte) {
	b.Helper()
	roundTrip(b, &tetherClient{c: c}, context.Background(), context.Background(), p)
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// BenchmarkBlackhole measures how long a Conn takes to find that its link has
// become a black hole (the proxy between it and the server drops every byte
// but keeps the sockets open) and how long until it is back on a new link.
// found/bound is the time to the Reconnecting state over interval + timeout,
// the bound the heartbeat promises; back/bound is the time to Connected
// again, with a zero backoff so the figure is detection plus one dial.
func BenchmarkBlackhole(b *testing.B) {
	const interval, timeout = 250 * time.Millisecond, 250 * time.Millisecond
	bound := interval + timeout
	px, err := blackhole.Listen(sharedServer(b).Addr())
	if err != nil {
		b.Fatal(err)
	}
	defer px.Close()
	name := fmt.Sprintf("interval=%v/timeout=%v/client=tether", interval, timeout)
	b.Run(name, func(b *testing.B) {
		var found, back time.Duration
		for range b.N {
			f, bk := blackholeOnce(b, px, interval, timeout)
			found += f
			back += bk
		}
		n := time.Duration(b.N)
		b.ReportMetric(0, "ns/op")
		b.ReportMetric(ms(found/n), "found-ms")
		b.ReportMetric(ms(back/n), "back-ms")
		b.ReportMetric(float64(found/n)/float64(bound), "found/bound")
		b.ReportMetric(float64(back/n)/float64(bound), "back/bound")
	})
}

func blackholeOnce(b *testing.B, px *blackhole.Proxy, interval, timeout time.Duration) (found, back time.Duration) {
	ev := make(events, 64)
	c, err := tether.Dial(context.Background(), "ws://"+px.Addr(),
		tether.WithHeartbeat(interval, timeout),
		tether.WithBackoff(func() backoff.BackOff { return &backoff.ZeroBackOff{} }),
		tether.WithStateHook(ev.hook))
	if err != nil {
		b.Fatal(err)
	}
	defer c.CloseNow()
	ev.wait(b, tether.Connected, time.Second)
	p := payload(16)
	tetherRoundTrip(b, c, p) // the last sign of life
	t0 := time.Now()
	px.Blackhole()
	found = ev.wait(b, tether.Reconnecting, 10*(interval+timeout)).At.Sub(t0)
	back = ev.wait(b, tether.Connected, 10*time.Second).At.Sub(t0)
	tetherRoundTrip(b, c, p)
	return found, back
}

// BenchmarkRestart measures how long a Conn takes to be back after its server
// restarts (the listener closed and every link dropped, then listening again
// on the same port at once), counted from the moment the links dropped,
// against the bound: the first backoff delay the Conn drew plus one
// handshake, timed by raw dials to the restarted server. found-ms is the time
// until the Conn noticed (the Reconnecting state).
// The backoff is exponential from 100 ms without jitter, so that the figure
// is tether's own cost, not the luck of the draw.
//
// after=idle restarts the server while nobody has read for 200 ms, as for
// most idle Conns. after=read restarts it right after a Read returned: the
// link is then unread until tether's reader hand-over, which shows here.
func BenchmarkRestart(b *testing.B) {
	const first = 100 * time.Millisecond
	srv, err := echo.Listen("127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Close()
	for _, after := range []string{"idle", "read"} {
		b.Run(fmt.Sprintf("after=%s/client=tether", after), func(b *testing.B) {
			var found, back, bound time.Duration
			for range b.N {
				f, bk, bd := restartOnce(b, srv, first, after == "idle")
				found += f
				back += bk
				bound += bd
			}
			n := time.Duration(b.N)
			b.ReportMetric(0, "ns/op")
			b.ReportMetric(ms(found/n), "found-ms")
			b.ReportMetric(ms(back/n), "back-ms")
			b.ReportMetric(ms(bound/n), "bound-ms")
			b.ReportMetric(ms((back-bound)/n), "over-ms")
			b.ReportMetric(float64(back)/float64(bound), "back/bound")
		})
	}
}

func restartOnce(b *testing.B, srv *echo.Server, first time.Duration, idle bool) (found, back, bound time.Duration) {
	delays := make(chan time.Duration, 1)
	newBackoff := func() backoff.BackOff {
		exp := backoff.NewExponentialBackOff(
			backoff.WithInitialInterval(first),
			backoff.WithRandomizationFactor(0),
			backoff.WithMaxElapsedTime(0))
		return &recorder{BackOff: exp, first: delays}
	}
	ev := make(events, 64)
	c, err := tether.Dial(context.Background(), srv.URL(),
		tether.WithBackoff(newBackoff), tether.WithStateHook(ev.hook))
	if err != nil {
		b.Fatal(err)
	}
	defer c.CloseNow()
	ev.wait(b, tether.Connected, time.Second)
	p := payload(16)
	tetherRoundTrip(b, c, p)
	if idle {
		time.Sleep(200 * time.Millisecond)
	}
	t0, err := srv.Restart()
	if err != nil {
		b.Fatal(err)
	}
	found = ev.wait(b, tether.Reconnecting, 5*time.Second).At.Sub(t0)
	back = ev.wait(b, tether.Connected, 10*time.Second).At.Sub(t0)
	tetherRoundTrip(b, c, p)

	hs := handshake(b, srv.URL())
	select {
	case d := <-delays:
		return found, back, d + hs
	default:
		b.Fatal("the Conn reconnected without asking its backoff for a delay")
		return 0, 0, 0
	}
}

// handshake times one raw coder/websocket dial to url: the median of three.
func handshake(b *testing.B, url string) time.Duration {
	b.Helper()
	var ds [3]time.Duration
	for i := range ds {
		h0 := time.Now()
		raw, _, err := websocket.Dial(context.Background(), url, nil)
		ds[i] = time.Since(h0)
		if err != nil {
			b.Fatal(err)
		}
		_ = raw.CloseNow()
	}
	slices.Sort(ds[:])
	return ds[1]
}

// BenchmarkHerd dials 500 Conns with tether's default backoff, restarts the
// server under them, and sorts the times at which they are back into 100 ms
// buckets. maxbucket-% is the share of the fullest bucket: the most a
// restarted server sees in any 100 ms (target: at most 10%).
func BenchmarkHerd(b *testing.B) {
	const conns = 500
	const bucket = 100 * time.Millisecond
	raiseNofile(b, 2*conns+512)
	b.Run(fmt.Sprintf("conns=%d/client=tether", conns), func(b *testing.B) {
		var maxShare, p50, p99, last float64
		for range b.N {
			times := herdOnce(b, conns)
			var hist []int
			for _, t := range times {
				i := int(t / bucket)
				for len(hist) <= i {
					hist = append(hist, 0)
				}
				hist[i]++
			}
			top := slices.Max(hist)
			maxShare += 100 * float64(top) / conns
			p50 += ms(times[conns/2])
			p99 += ms(times[conns*99/100])
			last += ms(times[conns-1])
			b.Logf("herd: %d Conns back within %v; per 100 ms: %s", conns, times[conns-1].Round(time.Millisecond), histString(hist))
		}
		n := float64(b.N)
		b.ReportMetric(0, "ns/op")
		b.ReportMetric(maxShare/n, "maxbucket-%")
		b.ReportMetric(p50/n, "p50-ms")
		b.ReportMetric(p99/n, "p99-ms")
		b.ReportMetric(last/n, "last-ms")
	})
}

func histString(h []int) string {
	var sb strings.Builder
	for i, n := range h {
		if i > 0 {
			sb.WriteByte(' ')
		}
		fmt.Fprint(&sb, n)
	}
	return sb.String()
}

// herdOnce returns, sorted, how long after the restart each Conn was back.
func herdOnce(b *testing.B, n int) []time.Duration {
	srv, err := echo.Listen("127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Close()
	var (
		mu      sync.Mutex
		backAt  []time.Time
		allBack = make(chan struct{})
	)
	hook := func(sc tether.StateChange) {
		if sc.From != tether.Reconnecting || sc.To != tether.Connected {
			return
		}
		mu.Lock()
		backAt = append(backAt, sc.At)
		if len(backAt) == n {
			close(allBack)
		}
		mu.Unlock()
	}
	cs := make([]*tether.Conn, 0, n)
	defer func() {
		for _, c := range cs {
			_ = c.CloseNow()
		}
	}()
	for range n {
		c, err := tether.Dial(context.Background(), srv.URL(), tether.WithStateHook(hook))
		if err != nil {
			b.Fatal(err)
		}
		cs = append(cs, c)
	}
	time.Sleep(200 * time.Millisecond) // every Conn idle, its reader on the link
	t0, err := srv.Restart()
	if err != nil {
		b.Fatal(err)
	}
	select {
	case <-allBack:
	case <-time.After(30 * time.Second):
		mu.Lock()
		got := len(backAt)
		mu.Unlock()
		b.Fatalf("only %d of %d Conns back 30 s after the restart", got, n)
	}
	mu.Lock()
	defer mu.Unlock()
	times := make([]time.Duration, n)
	for i, at := range backAt {
		times[i] = at.Sub(t0)
	}
	slices.Sort(times)
	return times
}

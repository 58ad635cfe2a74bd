package tether_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/tetherws/tether"
	"github.com/tetherws/tether/internal/faultnet"
)

// The soak: many Conns in session mode against one Handler, through
// faultnet proxies that reset, blackhole and delay their connections, while
// the Handler now and then refuses WebSocket so that Conns fall back to long
// polling and later come back. Both sides send numbered messages all along;
// every message must arrive exactly once, in order, and no session may be
// lost. The short form runs with the suite; TETHER_SOAK=10m runs the long
// form, 1,000 Conns for that long (TETHER_SOAK_CONNS changes the number),
// and logs its totals:
//
//	TETHER_SOAK=10m go test -run TestSoak -timeout 30m -v .

// soakStats are the soak's totals.
type soakStats struct {
	toServer, toClient  atomic.Int64
	resets, blackholes  atomic.Int64
	delays, blocks      atomic.Int64
	violations          atomic.Int64
	switchesToPolling   atomic.Int64
	switchesToWebSocket atomic.Int64
	lost                atomic.Int64
	// abandoned counts sessions that ended lost without a message from
	// their client: opened by a handshake the client had given up on (a
	// loaded machine answers some seconds late), they were never its
	// session. A client's own session lost is seen by the client too.
	abandoned atomic.Int64
	// gaps counts links replaced because messages were missing from the
	// middle of their stream, either way; a blackhole that a link lives
	// through makes such gaps (see faultnet's Blackhole), and nothing else
	// may. The Handler names the connection, which the proxies know;
	// blackholeEnd is, for each proxy, when its last blackhole ended (unix
	// ns), 1 while one is on, for the gaps a Conn sees.
	gaps         atomic.Int64
	proxies      atomic.Pointer[[]*faultnet.Proxy] // set once the Handler runs
	blackholeEnd [soakProxies]atomic.Int64

	mu     sync.Mutex
	errors []string
}

// soakProxies is how many faultnet proxies the soak's Conns go through.
const soakProxies = 4

// handlerGap counts a gap the Handler saw on the connection from remote,
// and fails the soak unless a blackhole cut into that connection.
func (s *soakStats) handlerGap(remote string) {
	s.gaps.Add(1)
	for _, p := range *s.proxies.Load() {
		if p.DroppedOn(remote) {
			return
		}
	}
	s.fail("handler: messages missing from the stream of the connection from %s, which no blackhole cut into", remote)
}

// connGap counts a gap Conn i saw, through proxy pi, and fails the soak
// unless a blackhole on that proxy is on or ended in the last 10 s.
func (s *soakStats) connGap(i, pi int) {
	s.gaps.Add(1)
	end := s.blackholeEnd[pi].Load()
	if end == 1 || (end != 0 && time.Since(time.Unix(0, end)) < 10*time.Second) {
		return
	}
	s.fail("conn %d: messages missing from a link's stream with no blackhole to explain it", i)
}

// gapLog passes the Handler's log on, and counts the links it replaced for
// a gap in the client's numbering.
type gapLog struct {
	slog.Handler
	st *soakStats
}

func (g gapLog) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelWarn || g.Handler.Enabled(ctx, l)
}

func (g gapLog) Handle(ctx context.Context, r slog.Record) error {
	if strings.HasPrefix(r.Message, "client's messages lost on the link") {
		remote := ""
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "remote" {
				remote = a.Value.String()
			}
			return true
		})
		g.st.handlerGap(remote)
	}
	if !g.Handler.Enabled(ctx, r.Level) {
		return nil
	}
	return g.Handler.Handle(ctx, r)
}

func (g gapLog) WithAttrs(as []slog.Attr) slog.Handler {
	return gapLog{g.Handler.WithAttrs(as), g.st}
}

func (g gapLog) WithGroup(name string) slog.Handler { return gapLog{g.Handler.WithGroup(name), g.st} }

func (s *soakStats) fail(format string, args ...any) {
	s.violations.Add(1)
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.errors) < 20 {
		s.errors = append(s.errors, fmt.Sprintf(format, args...))
	}
}

// soakServe checks the client's numbered messages ("c<n>") and sends its own
// ("s<n>"); on "fin <n>" it checks it has had n, answers "fin <m>" with the
// number it sent, and waits for the session to end.
func soakServe(st *soakStats, every time.Duration) func(ctx context.Context, s *tether.Session) {
	return func(ctx context.Context, s *tether.Session) {
		var sent atomic.Int64
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			t := time.NewTicker(every)
			defer t.Stop()
			for {
				select {
				case <-stop:
					return
				case <-ctx.Done():
					return
				case <-t.C:
				}
				n := sent.Load() + 1
				if s.Write(ctx, websocket.MessageText, []byte("s"+strconv.FormatInt(n, 10))) != nil {
					return
				}
				sent.Store(n)
				st.toClient.Add(1)
			}
		}()
		defer func() { <-done }()
		var got int64
		for {
			_, p, err := s.Read(ctx)
			if err != nil {
				close(stop)
				switch {
				case errors.Is(err, tether.ErrSessionLost) && got == 0:
					st.abandoned.Add(1)
				case errors.Is(err, tether.ErrSessionLost):
					st.lost.Add(1)
					st.fail("session %s lost: %v", s.ID(), err)
				}
				return
			}
			msg := string(p)
			if n, ok := strings.CutPrefix(msg, "fin "); ok {
				close(stop)
				<-done
				if want, _ := strconv.ParseInt(n, 10, 64); want != got {
					st.fail("session %s: client sent %d, server got %d", s.ID(), want, got)
				}
				_ = s.Write(ctx, websocket.MessageText, []byte("fin "+strconv.FormatInt(sent.Load(), 10)))
				<-ctx.Done()
				return
			}
			n, err := strconv.ParseInt(strings.TrimPrefix(msg, "c"), 10, 64)
			if err != nil || n != got+1 {
				st.fail("session %s: got %q after c%d", s.ID(), msg, got)
			}
			got = n
			st.toServer.Add(1)
		}
	}
}

func TestSoak(t *testing.T) {
	t.Parallel()
	conns, dur, every := 12, 2*time.Second, 50*time.Millisecond
	long := os.Getenv("TETHER_SOAK") != ""
	if long {
		d, err := time.ParseDuration(os.Getenv("TETHER_SOAK"))
		require.NoError(t, err, "TETHER_SOAK")
		conns, dur, every = 1000, d, 500*time.Millisecond
		if v := os.Getenv("TETHER_SOAK_CONNS"); v != "" {
			conns, err = strconv.Atoi(v)
			require.NoError(t, err, "TETHER_SOAK_CONNS")
		}
	}
	var st soakStats
	hopts := []tether.HandlerOption{tether.WithHandlerHeartbeat(time.Second, 2*time.Second)}
	// The faults go in the Handler's log too, so that what it records can be
	// matched with what the network did.
	faultLog := slog.New(slog.DiscardHandler)
	if path := os.Getenv("TETHER_SOAK_LOG"); path != "" {
		f, err := os.Create(path)
		require.NoError(t, err)
		t.Cleanup(func() { _ = f.Close() })
		faultLog = slog.New(slog.NewTextHandler(f, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	hopts = append(hopts, tether.WithHandlerLogger(slog.New(gapLog{faultLog.Handler(), &st})))
	ss := newSessionServer(t, soakServe(&st, every), hopts...)
	const nproxies = soakProxies
	proxies := make([]*faultnet.Proxy, nproxies)
	for i := range proxies {
		proxies[i] = lostProxy(t, ss.Addr())
	}
	st.proxies.Store(&proxies)

	jittered := func(d time.Duration) func() backoff.BackOff {
		return func() backoff.BackOff {
			return &backoff.ConstantBackOff{Interval: d/2 + rand.N(d)}
		}
	}
	type client struct {
		c       *tether.Conn
		sent    atomic.Int64
		got     int64
		stopped chan struct{} // closed when the writer has returned
	}
	clients := make([]*client, conns)
	ctx, cancel := context.WithTimeout(context.Background(), dur+5*time.Minute)
	defer cancel()
	var dialWG sync.WaitGroup
	sem := make(chan struct{}, 32)
	for i := range clients {
		cl := &client{}
		clients[i] = cl
		dialWG.Add(1)
		sem <- struct{}{}
		go func() {
			defer dialWG.Done()
			defer func() { <-sem }()
			hook := func(sc tether.StateChange) {
				if errors.Is(sc.Cause, tether.ErrSessionLost) {
					st.lost.Add(1)
					st.fail("conn %d: %v", i, sc.Cause)
				}
				if sc.To == tether.Reconnecting && sc.Cause != nil && strings.Contains(sc.Cause.Error(), "message missing in sequence") {
					st.connGap(i, i%nproxies)
				}
				if sc.From == tether.Connected && sc.To == tether.Connected {
					st.switchesToWebSocket.Add(1)
				} else if sc.To == tether.Connected && sc.Transport == tether.Polling {
					st.switchesToPolling.Add(1)
				}
			}
			c, err := tether.Dial(ctx, "ws://"+proxies[i%nproxies].Addr(),
				tether.WithBackoff(jittered(200*time.Millisecond)),
				tether.WithProbeBackoff(jittered(2*time.Second)),
				tether.WithHeartbeat(500*time.Millisecond, time.Second),
				tether.WithHandshakeTimeout(2*time.Second),
				tether.WithFallback(""),
				tether.WithStateHook(hook))
			if err != nil {
				st.fail("conn %d: dial: %v", i, err)
				return
			}
			cl.c = c
		}()
	}
	dialWG.Wait()
	require.Zero(t, st.violations.Load(), "%v", st.errors)
	t.Cleanup(func() {
		for _, cl := range clients {
			_ = cl.c.CloseNow()
		}
	})

	// Traffic both ways.
	stopWriting := make(chan struct{})
	finSeen := make(chan int64, conns)
	var traffic sync.WaitGroup
	for i, cl := range clients {
		traffic.Add(2)
		cl.stopped = make(chan struct{})
		go func() {
			defer traffic.Done()
			defer close(cl.stopped)
			t := time.NewTicker(every/2 + rand.N(every))
			defer t.Stop()
			for {
				select {
				case <-stopWriting:
					return
				case <-t.C:
				}
				n := cl.sent.Load() + 1
				if err := cl.c.Write(ctx, websocket.MessageText, []byte("c"+strconv.FormatInt(n, 10))); err != nil {
					st.fail("conn %d: write: %v", i, err)
					return
				}
				cl.sent.Store(n)
			}
		}()
		go func() {
			defer traffic.Done()
			for {
				_, p, err := cl.c.Read(ctx)
				if err != nil {
					if !errors.Is(err, tether.ErrSessionLost) {
						st.fail("conn %d: read: %v", i, err)
						return
					}
					continue
				}
				msg := string(p)
				if n, ok := strings.CutPrefix(msg, "fin "); ok {
					if want, _ := strconv.ParseInt(n, 10, 64); want != cl.got {
						st.fail("conn %d: server sent %d, client got %d", i, want, cl.got)
					}
					finSeen <- cl.got
					return
				}
				n, err := strconv.ParseInt(strings.TrimPrefix(msg, "s"), 10, 64)
				if err != nil || n != cl.got+1 {
					st.fail("conn %d: got %q after s%d", i, msg, cl.got)
				}
				cl.got = n
			}
		}()
	}

	// Faults, one at a time, until the time is up: first one of each kind,
	// then at random.
	end := time.Now().Add(dur)
	for step := 0; step < 5 || time.Now().Before(end); step++ {
		pi := rand.N(nproxies)
		p := proxies[pi]
		kind := step
		if step >= 5 {
			kind = rand.N(5)
		}
		faultLog.Info("soak fault", slog.String("fault", [...]string{"reset", "reset", "blackhole", "delay", "refuse WebSocket"}[kind]), slog.Int("proxy", pi))
		switch kind {
		case 0, 1:
			p.Reset()
			st.resets.Add(1)
			time.Sleep(300 * time.Millisecond)
		case 2: // longer than the client's heartbeat timeout
			st.blackholeEnd[pi].Store(1)
			p.Blackhole(true)
			st.blackholes.Add(1)
			time.Sleep(1500 * time.Millisecond)
			p.Blackhole(false)
			st.blackholeEnd[pi].Store(time.Now().UnixNano())
			faultLog.Info("soak fault over", slog.String("fault", "blackhole"), slog.Int("proxy", pi))
		case 3:
			p.SetDelay(20 * time.Millisecond)
			st.delays.Add(1)
			time.Sleep(time.Second)
			p.SetDelay(0)
		case 4: // WebSocket refused for a while: Conns that reconnect fall back
			ss.setBlock(true)
			p.Reset()
			st.blocks.Add(1)
			time.Sleep(2 * time.Second)
			ss.setBlock(false)
		}
		time.Sleep(time.Duration(rand.N(int64(500 * time.Millisecond))))
	}

	// Calm: every Conn sends "fin" with its count, and reads the server's.
	close(stopWriting)
	finDeadline := time.After(3 * time.Minute)
	traffic.Add(1)
	go func() {
		defer traffic.Done()
		for _, cl := range clients {
			// Once its writer has stopped, sent is final: a Write it had
			// begun may have been numbered, and reach the server, before
			// this one.
			select {
			case <-cl.stopped:
			case <-ctx.Done():
				return
			}
			_ = cl.c.Write(ctx, websocket.MessageText, []byte("fin "+strconv.FormatInt(cl.sent.Load(), 10)))
		}
	}()
	// The totals are logged however the soak ends.
	report := func() {
		var reconnects, dials uint64
		polling := 0
		for _, cl := range clients {
			if cl.c == nil {
				continue
			}
			s := cl.c.Stats()
			reconnects += s.Reconnects
			dials += s.Dials
			if cl.c.Transport() == tether.Polling {
				polling++
			}
		}
		t.Logf("soak: %d Conns for %v: %d messages to the server, %d to the clients; "+
			"faults: %d resets, %d blackholes, %d delays, %d WebSocket refusals; %d reconnects, %d dials, "+
			"%d moves to polling, %d back to WebSocket (%d on polling at the end); "+
			"%d links replaced for messages missing from their stream (each one a blackhole cut into, or a violation); "+
			"%d sessions lost; %d violations; %d sessions opened by handshakes their clients had given up on, expired unused",
			conns, dur, st.toServer.Load(), st.toClient.Load(), st.resets.Load(), st.blackholes.Load(),
			st.delays.Load(), st.blocks.Load(), reconnects, dials, st.switchesToPolling.Load(),
			st.switchesToWebSocket.Load(), polling, st.gaps.Load(), st.lost.Load(), st.violations.Load(), st.abandoned.Load())
	}
	for i := range conns {
		select {
		case <-finSeen:
		case <-finDeadline:
			report()
			t.Fatalf("only %d of %d Conns finished; violations: %v", i, conns, st.errors)
		}
	}
	report()
	require.Zero(t, st.violations.Load(), "%v", st.errors)
	require.Zero(t, st.lost.Load())
	require.Positive(t, st.toServer.Load())
	require.Positive(t, st.toClient.Load())
	for _, cl := range clients {
		_ = cl.c.Close(websocket.StatusNormalClosure, "")
	}
	close(finSeen)
	traffic.Wait()
}

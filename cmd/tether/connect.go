package main

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/tetherws/tether"
)

const connectUsage = `Usage: tether connect [flags] URL

Connects to the WebSocket server at URL (ws, wss, http or https) with a
resilient tether.Conn. Each line read on stdin is sent as a text message;
each message received is printed on its own line on stdout (a binary message
in base64). State changes (connected, reconnecting and why, moved to polling
and back), ping round-trip times and errors go to stderr.

Against a server built on tether.Handler (such as "tether serve") the Conn
runs in session mode: nothing is lost or repeated across drops.

When stdin ends, the Conn waits until no message has arrived for -linger,
then closes cleanly and the command exits 0. Lines written while the link
was down are sent first: the Conn waits for a link (at most -timeout; 0:
until SIGINT) and then for -linger again. SIGINT or SIGTERM close it the
same way at once. A permanent error (a handshake answered 401, say) exits 1.
Credentials (the URL's query values and user info, -H values) are never
printed.

Flags:
`

type connectConfig struct {
	url         string
	headers     headerFlags
	heartbeat   time.Duration
	pingTimeout time.Duration
	timeout     time.Duration
	linger      time.Duration
	readLimit   int64
	fallback    bool
	json        bool
}

func cmdConnect(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	var cfg connectConfig
	fs := flag.NewFlagSet("connect", flag.ContinueOnError)
	fs.Var(&cfg.headers, "H", "request header `'Name: value'` sent on every handshake (repeatable)")
	fs.DurationVar(&cfg.heartbeat, "heartbeat", tether.DefaultHeartbeatInterval, "ping a link quiet for this long; 0: no pings")
	fs.DurationVar(&cfg.pingTimeout, "ping-timeout", tether.DefaultHeartbeatTimeout, "replace a link whose pong takes longer; 0: never, for a server that goes quiet during long work")
	fs.DurationVar(&cfg.timeout, "timeout", 10*time.Second, "bound on each handshake, and on the first connect, retries included; 0: no bound")
	fs.DurationVar(&cfg.linger, "linger", time.Second, "after stdin ends, close once no message has arrived for this long")
	fs.Int64Var(&cfg.readLimit, "read-limit", 1<<20, "largest message accepted, in bytes")
	fs.BoolVar(&cfg.fallback, "fallback", false, "fall back to HTTP long polling when a proxy blocks WebSocket (needs a tether.Handler server)")
	fs.BoolVar(&cfg.json, "json", false, "print state events on stderr as JSON objects, one per line")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), connectUsage)
		fs.PrintDefaults()
	}
	pos, code := parseFlags(fs, args, stderr)
	if code >= 0 {
		return code
	}
	if len(pos) != 1 {
		return usageError(fs, stderr, "want one URL, got %d arguments", len(pos))
	}
	cfg.url = pos[0]
	u, err := url.Parse(cfg.url)
	if err != nil {
		return usageError(fs, stderr, "bad URL")
	}
	switch u.Scheme {
	case "ws", "wss", "http", "https":
	default:
		return usageError(fs, stderr, "URL scheme must be ws, wss, http or https")
	}
	if cfg.heartbeat < 0 || cfg.pingTimeout < 0 || cfg.timeout < 0 || cfg.linger < 0 {
		return usageError(fs, stderr, "durations must not be negative")
	}
	ev := &eventPrinter{w: stderr, json: cfg.json, r: newRedactor(u, cfg.headers)}
	return connect(ctx, cfg, stdin, stdout, ev)
}

func connect(ctx context.Context, cfg connectConfig, stdin io.Reader, stdout io.Writer, ev *eventPrinter) int {
	header := http.Header{}
	for _, h := range cfg.headers {
		name, value, _ := splitHeader(h)
		header.Add(name, value)
	}
	opts := []tether.Option{
		tether.WithHeartbeat(cfg.heartbeat, cfg.pingTimeout),
		tether.WithHandshakeTimeout(cfg.timeout),
		tether.WithReadLimit(cfg.readLimit),
		tether.WithHeader(func(context.Context) (http.Header, error) { return header.Clone(), nil }),
		tether.WithStateHook(ev.state),
	}
	if cfg.fallback {
		opts = append(opts, tether.WithFallback(""))
	}
	dctx := ctx
	if cfg.timeout > 0 {
		var cancel context.CancelFunc
		dctx, cancel = context.WithTimeout(ctx, cfg.timeout)
		defer cancel()
	}
	ev.info("connecting", "connecting to "+ev.r.redact(cfg.url))
	c, err := tether.Dial(dctx, cfg.url, opts...)
	if err != nil {
		ev.fail(err)
		return exitFailure
	}
	defer c.CloseNow()

	// Messages: printed as they come, on this goroutine's behalf.
	type readResult struct{ err error }
	got := make(chan struct{}, 1)
	readDone := make(chan readResult, 1)
	out := bufio.NewWriter(stdout)
	go func() {
		for {
			typ, p, err := c.Read(context.Background())
			if err != nil {
				readDone <- readResult{err}
				return
			}
			if typ == websocket.MessageBinary {
				p = []byte(base64.StdEncoding.EncodeToString(p))
			}
			out.Write(p)
			out.WriteByte('\n')
			out.Flush()
			select {
			case got <- struct{}{}:
			default:
			}
		}
	}()

	// Lines of stdin, sent in order; the channel closes at EOF.
	lines := make(chan []byte)
	stopLines := make(chan struct{})
	defer close(stopLines)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdin)
		sc.Buffer(make([]byte, 64<<10), int(min(cfg.readLimit, 16<<20)))
		for sc.Scan() {
			line := append([]byte(nil), sc.Bytes()...)
			select {
			case lines <- line:
			case <-stopLines:
				return
			}
		}
		if err := sc.Err(); err != nil {
			ev.info("stdin", "stdin: "+err.Error())
		}
	}()

	stopRTT := ev.watchRTT(c, cfg.heartbeat)
	defer stopRTT()

	// After stdin ends, linger fires once no message has come for cfg.linger.
	// Closing while lines wait for a link would drop them: lines still in
	// the send queue, or written since the last message came while no link
	// is up (in session mode, a link that died may not have delivered
	// them). Then linger waits for a link, at most cfg.timeout after stdin
	// ended, and gives the answers cfg.linger once the lines are out.
	var linger *time.Timer
	var lingerC <-chan time.Time
	var eof time.Time
	unanswered := 0 // lines written since the last message came
	held := false
	defer func() {
		if linger != nil {
			linger.Stop()
		}
	}()
	for {
		select {
		case line, ok := <-lines:
			if !ok {
				lines = nil
				eof = time.Now()
				linger = time.NewTimer(cfg.linger)
				lingerC = linger.C
				continue
			}
			if err := c.Write(ctx, websocket.MessageText, line); err != nil {
				if ctx.Err() != nil {
					return closeConn(c, ev, readDone)
				}
				ev.fail(err)
				return exitFailure
			}
			unanswered++
		case <-got:
			unanswered = 0
			if linger != nil {
				linger.Reset(cfg.linger)
			}
		case <-lingerC:
			waiting := c.Stats().QueueDepth > 0 || (unanswered > 0 && c.State() != tether.Connected)
			if waiting && (cfg.timeout == 0 || time.Since(eof) < cfg.timeout) {
				held = true
				linger.Reset(50 * time.Millisecond)
				continue
			}
			if held && !waiting {
				held = false
				linger.Reset(cfg.linger)
				continue
			}
			return closeConn(c, ev, readDone)
		case <-ctx.Done():
			return closeConn(c, ev, readDone)
		case r := <-readDone:
			var ce websocket.CloseError
			if errors.As(r.err, &ce) && ce.Code == websocket.StatusNormalClosure {
				ev.info("closed", fmt.Sprintf("the server closed the connection (%d %s)", int(ce.Code), ce.Reason))
				return exitOK
			}
			ev.fail(r.err)
			return exitFailure
		}
	}
}

// closeConn closes c with a close handshake and waits for the reader.
func closeConn[T any](c *tether.Conn, ev *eventPrinter, readDone <-chan T) int {
	err := c.Close(websocket.StatusNormalClosure, "")
	<-readDone
	if err != nil {
		ev.fail(err)
		return exitFailure
	}
	return exitOK
}

// eventPrinter prints state events and errors on stderr, as text or JSON
// lines, with credentials removed.
type eventPrinter struct {
	mu   sync.Mutex
	w    io.Writer
	json bool
	r    *redactor
}

type event struct {
	Time      string  `json:"time"`
	Event     string  `json:"event"`
	From      string  `json:"from,omitempty"`
	To        string  `json:"to,omitempty"`
	Transport string  `json:"transport,omitempty"`
	Attempt   int     `json:"attempt,omitempty"`
	Cause     string  `json:"cause,omitempty"`
	Message   string  `json:"message,omitempty"`
	RTTms     float64 `json:"rtt_ms,omitempty"`
	MinMs     float64 `json:"min_ms,omitempty"`
	MeanMs    float64 `json:"mean_ms,omitempty"`
	MaxMs     float64 `json:"max_ms,omitempty"`
}

func (p *eventPrinter) print(e event, text string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	e.Cause = p.r.redact(e.Cause)
	if p.json {
		e.Time = time.Now().UTC().Format(time.RFC3339Nano)
		e.Message = p.r.redact(text)
		b, _ := json.Marshal(e)
		fmt.Fprintf(p.w, "%s\n", b)
		return
	}
	fmt.Fprintf(p.w, "%s %s\n", time.Now().Format("15:04:05.000"), p.r.redact(text))
}

func (p *eventPrinter) info(kind, text string) { p.print(event{Event: kind}, text) }

func (p *eventPrinter) fail(err error) {
	text := "error: " + err.Error()
	var he *tether.HandshakeError
	if errors.As(err, &he) && (he.StatusCode == http.StatusUnauthorized || he.StatusCode == http.StatusForbidden) {
		text = fmt.Sprintf("error: the server refuses: %d %s", he.StatusCode, http.StatusText(he.StatusCode))
	}
	p.print(event{Event: "error", Cause: err.Error()}, text)
}

// state prints a state change; it runs on the Conn's supervisor, in order.
func (p *eventPrinter) state(sc tether.StateChange) {
	e := event{Event: "state", From: sc.From.String(), To: sc.To.String(), Transport: sc.Transport.String(), Attempt: sc.Attempt}
	cause := ""
	if sc.Cause != nil {
		e.Cause = sc.Cause.Error()
		cause = ": " + e.Cause
	}
	var text string
	switch {
	case sc.From == tether.Connected && sc.To == tether.Connected && sc.Transport == tether.Polling:
		text = "moved to polling" + cause
	case sc.From == tether.Connected && sc.To == tether.Connected:
		text = "moved back to " + sc.Transport.String()
	case sc.To == tether.Connected && sc.Transport == tether.Polling && sc.Cause != nil:
		text = fmt.Sprintf("connected over polling (attempt %d), WebSocket blocked%s", sc.Attempt, cause)
	case sc.To == tether.Connected && errors.Is(sc.Cause, tether.ErrSessionLost):
		text = fmt.Sprintf("connected over %v (attempt %d), with a new session%s", sc.Transport, sc.Attempt, cause)
	case sc.To == tether.Connected && sc.From == tether.Reconnecting:
		text = fmt.Sprintf("reconnected over %v (attempt %d)", sc.Transport, sc.Attempt)
	case sc.To == tether.Connected:
		text = fmt.Sprintf("connected over %v (attempt %d)", sc.Transport, sc.Attempt)
	case sc.To == tether.Reconnecting:
		text = "reconnecting" + cause
	case sc.To == tether.Closed && (sc.Cause == nil || errors.Is(sc.Cause, net.ErrClosed)):
		text = "closed"
	case sc.To == tether.Closed:
		text = "closed" + cause
	default:
		text = fmt.Sprintf("%v -> %v%s", sc.From, sc.To, cause)
	}
	p.print(e, text)
}

// watchRTT prints the ping round-trip times each time a heartbeat ping is
// answered, and returns a function that stops it.
func (p *eventPrinter) watchRTT(c *tether.Conn, interval time.Duration) (stop func()) {
	if interval <= 0 {
		return func() {}
	}
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		// Pings go out at most once per interval: looking twice as often
		// sees each answer.
		t := time.NewTicker(max(interval/2, 10*time.Millisecond))
		defer t.Stop()
		var seen uint64
		for {
			select {
			case <-t.C:
			case <-done:
				return
			}
			st := c.Stats()
			if st.PingsAnswered == seen {
				continue
			}
			seen = st.PingsAnswered
			p.print(event{Event: "rtt", RTTms: ms(st.RTTLast), MinMs: ms(st.RTTMin), MeanMs: ms(st.RTTMean), MaxMs: ms(st.RTTMax)},
				fmt.Sprintf("ping rtt %v (min %v, mean %v, max %v)", round(st.RTTLast), round(st.RTTMin), round(st.RTTMean), round(st.RTTMax)))
		}
	}()
	return func() {
		close(done)
		<-finished
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func round(d time.Duration) time.Duration { return d.Round(time.Microsecond) }

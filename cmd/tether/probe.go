package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/coder/websocket"

	"github.com/tetherws/tether"
	"github.com/tetherws/tether/internal/frame"
)

const probeUsage = `Usage: tether probe [flags] URL

Diagnoses the path to the WebSocket server at URL (ws, wss, http or https),
step by step, each with its time: DNS, TCP, TLS (version, certificate
subject and expiry), the HTTP answer to the Upgrade request (status, and
the Server and Via headers that name a proxy), whether the Upgrade header
was stripped on the way, a ping round trip, and whether tether's HTTP long
polling answers (against a tether.Handler). It ends with a one-line verdict
and what to change.

It exits 0 only when WebSocket works (the handshake is answered 101 and a
ping comes back), 1 otherwise, 2 on bad usage. Credentials (the URL's query
values and user info, -H values) are sent but never printed.

For wss and https, the server's certificate is checked against the system's
roots, or against the CA certificates in the PEM file given with -cacert;
-insecure skips the check (and says so).

Flags:
`

type prober struct {
	out      io.Writer
	r        *redactor
	u        *url.URL
	header   http.Header
	timeout  time.Duration
	tls      *tls.Config
	insecure bool
}

func cmdProbe(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var headers headerFlags
	fs := flag.NewFlagSet("probe", flag.ContinueOnError)
	fs.Var(&headers, "H", "request header `'Name: value'` sent with the requests (repeatable)")
	timeout := fs.Duration("timeout", 10*time.Second, "bound on each step")
	cacert := fs.String("cacert", "", "PEM `file` of CA certificates to trust for wss/https, instead of the system's")
	insecure := fs.Bool("insecure", false, "do not verify the server's certificate")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), probeUsage)
		fs.PrintDefaults()
	}
	pos, code := parseFlags(fs, args, stderr)
	if code >= 0 {
		return code
	}
	if len(pos) != 1 {
		return usageError(fs, stderr, "want one URL, got %d arguments", len(pos))
	}
	u, err := url.Parse(pos[0])
	if err != nil || u.Host == "" {
		return usageError(fs, stderr, "bad URL: want ws://host[:port]/path (or wss, http, https)")
	}
	switch u.Scheme {
	case "ws", "wss", "http", "https":
	default:
		return usageError(fs, stderr, "URL scheme must be ws, wss, http or https")
	}
	if *timeout <= 0 {
		return usageError(fs, stderr, "-timeout must be positive")
	}
	p := &prober{out: stdout, r: newRedactor(u, headers), u: u, header: http.Header{}, timeout: *timeout, insecure: *insecure}
	for _, h := range headers {
		name, value, _ := splitHeader(h)
		p.header.Add(name, value)
	}
	p.tls = &tls.Config{ServerName: u.Hostname(), InsecureSkipVerify: *insecure, NextProtos: []string{"http/1.1"}}
	if *cacert != "" {
		pem, err := os.ReadFile(*cacert)
		if err != nil {
			fmt.Fprintf(stderr, "tether probe: -cacert: %v\n", err)
			return exitUsage
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			fmt.Fprintf(stderr, "tether probe: -cacert: no PEM certificate in %s\n", *cacert)
			return exitUsage
		}
		p.tls.RootCAs = pool
	}
	if p.probe(ctx) {
		return exitOK
	}
	return exitFailure
}

// step prints one step: its name, how long it took, and what it found.
func (p *prober) step(name string, d time.Duration, format string, args ...any) {
	took := "-"
	if d > 0 {
		took = fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
	}
	fmt.Fprintf(p.out, "%-8s %9s  %s\n", name, took, p.r.redact(fmt.Sprintf(format, args...)))
}

// verdict prints the conclusion and reports whether WebSocket works.
func (p *prober) verdict(works bool, format string, args ...any) bool {
	fmt.Fprintf(p.out, "verdict: %s\n", p.r.redact(fmt.Sprintf(format, args...)))
	return works
}

func (p *prober) ctx(parent context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(parent, p.timeout)
}

// probe runs the steps in order and stops at the first that fails.
func (p *prober) probe(ctx context.Context) bool {
	wsURL := *p.u
	wsURL.Scheme = map[string]string{"http": "ws", "https": "wss"}[p.u.Scheme]
	if wsURL.Scheme == "" {
		wsURL.Scheme = p.u.Scheme
	}
	secure := wsURL.Scheme == "wss"
	p.step("url", 0, "%s", redactURL(&wsURL))

	// DNS.
	host, port := p.u.Hostname(), p.u.Port()
	if port == "" {
		port = map[bool]string{true: "443", false: "80"}[secure]
	}
	var ips []net.IP
	if ip := net.ParseIP(host); ip != nil {
		ips = []net.IP{ip}
		p.step("dns", 0, "%s is an IP address: no lookup", host)
	} else {
		cctx, cancel := p.ctx(ctx)
		start := time.Now()
		addrs, err := net.DefaultResolver.LookupIPAddr(cctx, host)
		cancel()
		if err != nil {
			p.step("dns", time.Since(start), "lookup failed: %v", err)
			return p.verdict(false, "DNS: %s does not resolve (%v): check the host name", host, err)
		}
		for _, a := range addrs {
			ips = append(ips, a.IP)
		}
		shown := make([]string, 0, 4)
		for i, ip := range ips {
			if i == 4 {
				shown = append(shown, fmt.Sprintf("and %d more", len(ips)-4))
				break
			}
			shown = append(shown, ip.String())
		}
		p.step("dns", time.Since(start), "%s -> %s", host, strings.Join(shown, ", "))
	}

	// TCP, to the first address.
	target := net.JoinHostPort(ips[0].String(), port)
	cctx, cancel := p.ctx(ctx)
	start := time.Now()
	var d net.Dialer
	conn, err := d.DialContext(cctx, "tcp", target)
	cancel()
	if err != nil {
		p.step("tcp", time.Since(start), "connect to %s failed: %v", target, err)
		switch {
		case errors.Is(err, syscall.ECONNREFUSED):
			return p.verdict(false, "nothing listens on %s (connection refused): is the server running, on this port?", target)
		case isTimeout(err):
			return p.verdict(false, "TCP connect to %s timed out: the host is down, or a firewall drops the packets", target)
		}
		return p.verdict(false, "TCP connect to %s failed: %v", target, err)
	}
	p.step("tcp", time.Since(start), "connected to %s", target)
	used := false // the connection is handed to the Upgrade request
	defer func() {
		if !used {
			conn.Close()
		}
	}()

	// TLS.
	if secure {
		tc := tls.Client(conn, p.tls)
		conn = tc
		cctx, cancel := p.ctx(ctx)
		start := time.Now()
		err := tc.HandshakeContext(cctx)
		cancel()
		if err != nil {
			p.step("tls", time.Since(start), "handshake failed: %v", err)
			var unknown x509.UnknownAuthorityError
			var invalid x509.CertificateInvalidError
			var host x509.HostnameError
			switch {
			case errors.As(err, &unknown):
				return p.verdict(false, "TLS: the server's certificate is signed by an authority this machine does not trust: pass its CA with -cacert (or look past it with -insecure)")
			case errors.As(err, &invalid) && invalid.Reason == x509.Expired:
				return p.verdict(false, "TLS: the server's certificate has expired or is not yet valid: renew it")
			case errors.As(err, &host):
				return p.verdict(false, "TLS: the server's certificate is not for %s: %v", host.Host, err)
			}
			return p.verdict(false, "TLS handshake failed: %v", err)
		}
		st := tc.ConnectionState()
		leaf := st.PeerCertificates[0]
		note := ""
		if p.insecure {
			note = "; NOT verified (-insecure)"
		}
		p.step("tls", time.Since(start), "%s, certificate %q issued by %q, expires %s (in %d days)%s",
			tls.VersionName(st.Version), leaf.Subject.String(), leaf.Issuer.String(),
			leaf.NotAfter.UTC().Format("2006-01-02"), int(time.Until(leaf.NotAfter).Hours()/24), note)
	} else {
		p.step("tls", 0, "not used (%s://)", wsURL.Scheme)
	}

	// The Upgrade request, on the connection made above.
	used = true
	ws, resp, upDur, err := p.upgrade(ctx, conn, wsURL.String())
	tetherServer := resp != nil && resp.Header.Get("Tether-Protocol") != ""
	if err == nil {
		defer ws.CloseNow()
		p.step("upgrade", upDur, "101 Switching Protocols%s%s", proxyHeaders(resp), map[bool]string{true: "; a tether.Handler", false: ""}[tetherServer])
		rtt, err := p.ping(ctx, ws)
		if err != nil {
			p.step("ping", rtt, "no pong: %v", err)
			p.pollStep(ctx, tetherServer)
			return p.verdict(false, "the WebSocket opens but a ping gets no pong within %v: something on the path holds or drops control frames", p.timeout)
		}
		p.step("ping", rtt, "pong received")
		_ = ws.Close(websocket.StatusNormalClosure, "")
		if tetherServer {
			p.pollStep(ctx, true)
		}
		return p.verdict(true, "WebSocket works")
	}
	if resp == nil {
		p.step("upgrade", upDur, "no HTTP answer: %v", err)
		if isTimeout(err) || errors.Is(err, context.DeadlineExceeded) {
			return p.verdict(false, "the Upgrade request got no answer within %v: a proxy on the path holds WebSocket handshakes; use WithFallback or raise its timeouts", p.timeout)
		}
		return p.verdict(false, "the Upgrade request failed before an answer: %v", err)
	}
	status := fmt.Sprintf("%d %s", resp.StatusCode, http.StatusText(resp.StatusCode))
	p.step("upgrade", upDur, "%s where 101 was expected%s", status, proxyHeaders(resp))
	code := resp.StatusCode
	switch {
	case code == http.StatusUnauthorized || code == http.StatusForbidden:
		return p.verdict(false, "server refuses: %s: check the credentials (-H 'Authorization: ...' or the URL's token)", status)
	case code == http.StatusNotFound:
		return p.verdict(false, "server answers %s: no WebSocket endpoint at this path", status)
	case code >= 300 && code < 400:
		loc := "nowhere"
		if l, err := resp.Location(); err == nil {
			loc = (&url.URL{Scheme: l.Scheme, Host: l.Host, Path: l.Path}).String()
		}
		return p.verdict(false, "server redirects (%s) to %s: dial that URL instead (tether follows no redirect on a handshake)", status, loc)
	case code == http.StatusTooManyRequests || code == http.StatusServiceUnavailable:
		return p.verdict(false, "server busy: %s (Retry-After: %q): try again later", status, resp.Header.Get("Retry-After"))
	case code == http.StatusBadGateway || code == http.StatusGatewayTimeout:
		return p.verdict(false, "a proxy on the path cannot reach the server: %s", status)
	}
	// A 200, 400, 426 or another non-101 answer: the Upgrade header did not
	// reach a WebSocket server. If tether's long polling answers on the same
	// URL, a tether.Handler is there and something in between strips it.
	polls := p.pollStep(ctx, true)
	fix := `fix the proxy (nginx: proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection "upgrade";)`
	switch {
	case polls:
		return p.verdict(false, "a proxy on the path strips the Upgrade header (%s where 101 was expected, and long polling works): use WithFallback or %s", status, fix)
	case code == http.StatusUpgradeRequired || resp.Header.Get("Via") != "":
		return p.verdict(false, "the Upgrade header did not reach the server (%s where 101 was expected): a proxy on the path strips it: %s", status, fix)
	}
	return p.verdict(false, "%s where 101 was expected: a proxy on the path strips the Upgrade header, or this URL is not a WebSocket endpoint; if a proxy is there, %s", status, fix)
}

// upgrade sends the WebSocket handshake on conn with coder/websocket, and
// returns the answer. No redirect is followed and no proxy from the
// environment is used: the probe is about the path it measured.
func (p *prober) upgrade(ctx context.Context, conn net.Conn, wsURL string) (*websocket.Conn, *http.Response, time.Duration, error) {
	once := func(context.Context, string, string) (net.Conn, error) {
		if conn == nil {
			return nil, errors.New("tether probe: one connection only")
		}
		c := conn
		conn = nil
		return c, nil
	}
	tr := &http.Transport{DialContext: once, DialTLSContext: once, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	hc := &http.Client{
		Transport:     tr,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	cctx, cancel := p.ctx(ctx)
	defer cancel()
	start := time.Now()
	ws, resp, err := websocket.Dial(cctx, wsURL, &websocket.DialOptions{HTTPClient: hc, HTTPHeader: p.header.Clone()})
	d := time.Since(start)
	if conn != nil {
		conn.Close() // never used
	}
	return ws, resp, d, err
}

// ping sends a WebSocket ping and waits for its pong, while a reader
// discards whatever the server sends (coder/websocket sees pongs only
// inside a Read).
func (p *prober) ping(ctx context.Context, ws *websocket.Conn) (time.Duration, error) {
	rctx, stop := context.WithCancel(context.Background())
	read := make(chan struct{})
	go func() {
		defer close(read)
		for {
			if _, _, err := ws.Read(rctx); err != nil {
				return
			}
		}
	}()
	defer func() {
		stop()
		<-read
	}()
	cctx, cancel := p.ctx(ctx)
	defer cancel()
	start := time.Now()
	err := ws.Ping(cctx)
	return time.Since(start), err
}

// pollStep checks, when worth it, whether tether's long polling answers on
// the URL: it opens a session and closes it at once. It reports whether a
// tether.Handler answered.
func (p *prober) pollStep(ctx context.Context, worth bool) bool {
	if !worth {
		return false
	}
	pollURL := *p.u
	pollURL.Scheme = map[string]string{"ws": "http", "wss": "https"}[p.u.Scheme]
	if pollURL.Scheme == "" {
		pollURL.Scheme = p.u.Scheme
	}
	hc := &http.Client{
		Timeout:       p.timeout,
		Transport:     &http.Transport{TLSClientConfig: p.tls, DisableKeepAlives: true},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	start := time.Now()
	hello, err := p.pollRequest(ctx, hc, &pollURL, "open", "", "", nil)
	d := time.Since(start)
	if err != nil {
		p.step("polling", d, "no tether long polling here: %v", err)
		return false
	}
	if len(hello) != 1 || hello[0].Kind != frame.Hello {
		p.step("polling", d, "no tether long polling here: the answer is not a session")
		return false
	}
	// Close the session rather than leave it to expire on the server.
	sid, secret := fmt.Sprintf("%x", hello[0].Session), fmt.Sprintf("%x", hello[0].Secret)
	body := frame.AppendBatch(nil, []frame.Frame{{Kind: frame.Close, Code: uint16(websocket.StatusNormalClosure), Reason: "tether probe"}})
	_, _ = p.pollRequest(ctx, hc, &pollURL, "send", sid, secret, body)
	p.step("polling", d, "tether long polling answers (a session opened and closed)")
	return true
}

// pollRequest makes one tether polling request and decodes its answer.
func (p *prober) pollRequest(ctx context.Context, hc *http.Client, base *url.URL, op, sid, secret string, body []byte) ([]frame.Frame, error) {
	u := *base
	q := u.Query()
	q.Set("tether", op)
	if sid != "" {
		q.Set("sid", sid)
	}
	u.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header = p.header.Clone()
	req.Header.Set("Content-Type", "application/octet-stream")
	if secret != "" {
		req.Header.Set("Tether-Secret", secret)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/octet-stream" {
		return nil, fmt.Errorf("POST answered %d %s", resp.StatusCode, http.StatusText(resp.StatusCode))
	}
	fs, err := frame.DecodeBatch(b, tether.DefaultMaxBatch, 64<<10)
	if err != nil {
		return nil, fmt.Errorf("the answer is not tether frames: %w", err)
	}
	return fs, nil
}

// proxyHeaders describes the answer's headers that name the software on
// the path.
func proxyHeaders(resp *http.Response) string {
	var parts []string
	for _, h := range []string{"Server", "Via", "X-Powered-By"} {
		if v := resp.Header.Get(h); v != "" {
			parts = append(parts, fmt.Sprintf("%s: %q", h, v))
		}
	}
	if len(parts) == 0 {
		return ""
	}
	return "; " + strings.Join(parts, ", ")
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

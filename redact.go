package tether

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strings"
)

// Credentials ride in URLs more often than they should: a token in the query
// string, a user and password before the host. tether never puts them in a
// log record or an error string: every URL there has its userinfo and query
// values replaced by "REDACTED", as the tether command shows them.

const redactedMark = "REDACTED"

// redactURL returns raw with its userinfo and query values hidden, and
// without its fragment; raw itself when it has none of them.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return redactUnparsed(raw)
	}
	if u.User == nil && u.RawQuery == "" && u.Fragment == "" && !strings.Contains(raw, "#") {
		return raw
	}
	if u.User != nil {
		u.User = url.User(redactedMark)
	}
	if u.RawQuery != "" {
		q := u.Query()
		for _, vs := range q {
			for i := range vs {
				vs[i] = redactedMark
			}
		}
		u.RawQuery = q.Encode()
	}
	u.Fragment, u.RawFragment = "", ""
	return u.String()
}

// redactUnparsed hides what looks like userinfo, a query or a fragment in a
// string that is not a valid URL, keeping the rest to say what was wrong.
func redactUnparsed(raw string) string {
	if i := strings.IndexByte(raw, '#'); i >= 0 {
		raw = raw[:i]
	}
	if i := strings.IndexByte(raw, '?'); i >= 0 {
		raw = raw[:i+1] + redactedMark
	}
	start := 0
	if i := strings.Index(raw, "://"); i >= 0 {
		start = i + 3
	}
	end := len(raw)
	if i := strings.IndexAny(raw[start:], "/?"); i >= 0 {
		end = start + i
	}
	if at := strings.LastIndexByte(raw[start:end], '@'); at >= 0 {
		raw = raw[:start] + redactedMark + raw[start+at:]
	}
	return raw
}

// urlsIn finds the URLs in an error string, as Go's HTTP client and
// coder/websocket quote them.
var urlsIn = regexp.MustCompile(`(?i)\b(?:https?|wss?)://[^\s"']+`)

// redactErr returns err with every URL in its message redacted. The error
// returned wraps err, for errors.Is and errors.As; a *url.Error in it has its
// URL redacted too.
func redactErr(err error) error {
	if err == nil {
		return nil
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		ue.URL = redactURL(ue.URL)
	}
	msg := err.Error()
	clean := urlsIn.ReplaceAllStringFunc(msg, redactURL)
	if clean == msg {
		return err
	}
	return &redactedError{msg: clean, err: err}
}

type redactedError struct {
	msg string
	err error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.err }

// ErrRedirect is wrapped by the error of a handshake or a long-polling
// request that the server redirected to another host, or from https to
// http. tether does not follow such a redirect, whatever http.Client it was
// given: the credentials and session secrets on the request would go in
// cleartext or to someone else. It is permanent, like a certificate error.
var ErrRedirect = errors.New("tether: redirect refused")

// checkRedirect refuses a redirect to another host or from https to http,
// then applies next, the http.Client's own policy (Go's default when nil).
func checkRedirect(next func(*http.Request, []*http.Request) error) func(*http.Request, []*http.Request) error {
	return func(req *http.Request, via []*http.Request) error {
		first := via[0].URL
		switch {
		case first.Scheme == "https" && req.URL.Scheme != "https":
			return fmt.Errorf("%w: from https to http", ErrRedirect)
		case !strings.EqualFold(first.Host, req.URL.Host):
			return fmt.Errorf("%w: to another host", ErrRedirect)
		}
		if next != nil {
			return next(req, via)
		}
		if len(via) >= 10 {
			return errors.New("tether: stopped after 10 redirects")
		}
		return nil
	}
}

// guardedClient returns a copy of hc (http.DefaultClient when nil) that
// refuses dangerous redirects.
func guardedClient(hc *http.Client) *http.Client {
	if hc == nil {
		hc = http.DefaultClient
	}
	c := *hc
	c.CheckRedirect = checkRedirect(hc.CheckRedirect)
	return &c
}

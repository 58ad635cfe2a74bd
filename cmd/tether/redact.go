package main

import (
	"net/url"
	"sort"
	"strings"
)

// redacted replaces credentials in what the command prints.
const redacted = "REDACTED"

// redactor removes credentials from text: the URL's user info and query
// values, and the values given with -H. The URL is replaced as a whole
// wherever it appears (errors from net/http quote it), and each secret
// value of 4 bytes or more is replaced wherever it appears, as given and
// query-escaped.
type redactor struct {
	urls    []string // forms of the URL, longest first, and their redacted form
	safeURL []string
	secrets []string // longest first
}

func newRedactor(u *url.URL, headers []string) *redactor {
	r := &redactor{}
	var secrets []string
	add := func(s string) {
		if len(s) >= 4 {
			secrets = append(secrets, s, url.QueryEscape(s), url.PathEscape(s))
		}
	}
	if u != nil {
		safe := redactURL(u)
		for _, scheme := range []string{u.Scheme, httpScheme(u.Scheme)} {
			v := *u
			v.Scheme = scheme
			s := v.String()
			w := *safe
			w.Scheme = scheme
			r.urls = append(r.urls, s)
			r.safeURL = append(r.safeURL, w.String())
		}
		if u.User != nil {
			add(u.User.Username())
			if p, ok := u.User.Password(); ok {
				add(p)
			}
		}
		for _, vs := range u.Query() {
			for _, v := range vs {
				add(v)
			}
		}
		if u.RawQuery != "" {
			add(u.RawQuery)
		}
	}
	for _, h := range headers {
		_, v, _ := splitHeader(h)
		add(v)
		for _, word := range strings.Fields(v) {
			add(word)
		}
	}
	sort.Slice(secrets, func(i, j int) bool { return len(secrets[i]) > len(secrets[j]) })
	r.secrets = secrets
	return r
}

// redact returns s without the credentials r knows.
func (r *redactor) redact(s string) string {
	for i, u := range r.urls {
		s = strings.ReplaceAll(s, u, r.safeURL[i])
	}
	for _, sec := range r.secrets {
		s = strings.ReplaceAll(s, sec, redacted)
	}
	return s
}

// redactURL returns u with its user info and every query value replaced.
func redactURL(u *url.URL) *url.URL {
	v := *u
	if v.User != nil {
		v.User = url.User(redacted)
	}
	if v.RawQuery != "" {
		q := v.Query()
		keys := make([]string, 0, len(q))
		for k := range q {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		var b strings.Builder
		for _, k := range keys {
			for range q[k] {
				if b.Len() > 0 {
					b.WriteByte('&')
				}
				b.WriteString(url.QueryEscape(k) + "=" + redacted)
			}
		}
		v.RawQuery = b.String()
	}
	v.Fragment, v.RawFragment = "", ""
	return &v
}

func httpScheme(scheme string) string {
	switch scheme {
	case "ws":
		return "http"
	case "wss":
		return "https"
	case "http":
		return "ws"
	case "https":
		return "wss"
	}
	return scheme
}

// splitHeader splits "Name: value". The name must be an HTTP token and the
// value free of control characters.
func splitHeader(h string) (name, value string, ok bool) {
	name, value, ok = strings.Cut(h, ":")
	if !ok {
		return "", "", false
	}
	name, value = strings.TrimSpace(name), strings.TrimSpace(value)
	if name == "" {
		return "", "", false
	}
	for _, c := range name {
		if c <= ' ' || c >= 0x7f || strings.ContainsRune("()<>@,;:\\\"/[]?={}", c) {
			return "", "", false
		}
	}
	for _, c := range value {
		if (c < ' ' && c != '\t') || c == 0x7f {
			return "", "", false
		}
	}
	return name, value, true
}

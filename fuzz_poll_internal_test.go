package tether

import (
	"bytes"
	"context"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tetherws/tether/internal/frame"
)

// FuzzPollRequest feeds the polling request parser, and then the whole
// Handler, arbitrary requests: method, query, the resume headers and a
// body. In query and headers, SID, SECRET and SEQ stand for a live
// session's id, secret and the Handler's last sequence number, so that
// inputs reach a session as well as the parser. Nothing panics; every
// refusal is a 4xx with a message (503 only when the Handler is full or
// closed); what parses keeps to the rules the Handler relies on.
func FuzzPollRequest(f *testing.F) {
	batch := func(fs ...frame.Frame) []byte { return frame.AppendBatch(nil, fs) }
	f.Add("POST", "tether=open", "", "", "", []byte(nil))
	f.Add("POST", "tether=open", "SID", "SECRET", "SEQ", []byte("ignored"))
	f.Add("POST", "tether=open", "SID", "00000000000000000000000000000000", "0", []byte(nil))
	f.Add("GET", "tether=poll&sid=SID&ack=0", "", "SECRET", "", []byte(nil))
	f.Add("GET", "tether=poll&sid=SID&ack=SEQ", "", "SECRET", "", []byte(nil))
	f.Add("POST", "tether=send&sid=SID", "", "SECRET", "", batch(frame.Frame{Kind: frame.Data, Seq: 1, Payload: []byte("hi")}))
	f.Add("POST", "tether=send&sid=SID", "", "SECRET", "", batch(frame.Frame{Kind: frame.Ack, Ack: 1}, frame.Frame{Kind: frame.Close, Code: 1000}))
	f.Add("POST", "tether=send&sid=SID", "", "SECRET", "", batch(frame.Frame{Kind: frame.Data, Seq: 2, Payload: []byte("gap")}))
	f.Add("POST", "tether=send&sid=SID", "", "SECRET", "", batch(frame.Frame{Kind: frame.Close, Code: 1005, Reason: "bad code"}))
	f.Add("POST", "tether=send&sid=SID", "", "SECRET", "", batch(frame.Frame{Kind: frame.Data, Seq: 1, Payload: []byte("caf\xe9")}))
	f.Add("PUT", "tether=send&sid=SID", "", "SECRET", "", []byte{1, 2, 3})
	f.Add("GET", "tether=%zz&sid=", "", "", "", []byte(nil))
	f.Fuzz(func(t *testing.T, method, rawQuery, session, secret, ack string, body []byte) {
		h := NewHandler(func(ctx context.Context, s *Session) {
			for {
				typ, p, err := s.Read(ctx)
				if err != nil || s.Write(ctx, typ, p) != nil {
					return
				}
			}
		}, WithPollLimits(64<<10, 16, time.Millisecond), WithMaxSessions(4))
		defer h.Close()

		// A live session for the placeholders to name.
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/?tether=open", nil))
		require.Equal(t, http.StatusOK, rec.Code)
		hello, err := frame.DecodeBatch(rec.Body.Bytes(), 1, 1<<10)
		require.NoError(t, err)
		fill := strings.NewReplacer(
			"SID", hex.EncodeToString(hello[0].Session[:]),
			"SECRET", hex.EncodeToString(hello[0].Secret[:]),
			"SEQ", "0",
		)
		r := &http.Request{
			Method:        method,
			URL:           &url.URL{Path: "/", RawQuery: fill.Replace(rawQuery)},
			Proto:         "HTTP/1.1",
			ProtoMajor:    1,
			ProtoMinor:    1,
			Header:        http.Header{},
			Body:          io.NopCloser(bytes.NewReader(body)),
			ContentLength: int64(len(body)),
			Host:          "example.com",
			RemoteAddr:    "192.0.2.1:1234",
		}
		r = r.WithContext(context.Background())
		for k, v := range map[string]string{headerSession: session, headerSecret: secret, headerAck: ack} {
			if v != "" {
				r.Header.Set(k, fill.Replace(v))
			}
		}

		req, perr := parsePollRequest(r)
		if perr != nil {
			require.GreaterOrEqual(t, perr.status, 400)
			require.Less(t, perr.status, 500)
			require.True(t, strings.HasPrefix(perr.msg, "tether: "), perr.msg)
		} else {
			switch req.op {
			case pollGet:
				require.Equal(t, http.MethodGet, method)
			case pollOpen, pollSend:
				require.Equal(t, http.MethodPost, method)
			default:
				t.Fatalf("parsed an unknown operation %q", req.op)
			}
		}

		fs, err := parseSendBody(body, 16, 32768)
		if err != nil {
			var se *sendError
			require.ErrorAs(t, err, &se)
			require.Contains(t, []int{http.StatusBadRequest, http.StatusRequestEntityTooLarge}, se.status)
			require.Nil(t, fs)
		} else {
			require.LessOrEqual(t, len(fs), 16)
			for _, fr := range fs {
				require.NotEqual(t, frame.Hello, fr.Kind)
				require.LessOrEqual(t, len(fr.Payload), 32768)
			}
		}

		// The whole Handler, on a recorder: WebSocket handshakes need a
		// real connection, so Upgrade is left out.
		r.Header.Del("Upgrade")
		rec = httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		if rec.Code >= 500 {
			require.Equal(t, http.StatusServiceUnavailable, rec.Code, "%s", rec.Body.Bytes())
		}
		if rec.Code != http.StatusOK {
			require.True(t, strings.HasPrefix(rec.Body.String(), "tether: "), "%d %q", rec.Code, rec.Body.String())
			return
		}
		_, err = frame.DecodeBatch(rec.Body.Bytes(), 1<<10, 1<<20)
		require.NoError(t, err, "a 200 answers a batch")
	})
}

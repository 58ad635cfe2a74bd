// Package wsjson reads and writes JSON messages on a *tether.Conn, a
// *tether.Session or a *websocket.Conn: one helper for client, server and
// raw coder/websocket code.
//
// Messages are JSON in text frames, as with coder/websocket's wsjson. Unlike
// it, a binary message or one that is not valid JSON is an error for that
// message only ([ErrNotText], [ErrInvalidJSON]): the connection stays open
// and the next Read reads the next message. A Conn that is meant to stay up
// should not be closed by one bad message.
package wsjson

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"sync"

	"github.com/coder/websocket"
)

// Reader is what Read needs: *tether.Conn, *tether.Session and
// *websocket.Conn have this method.
type Reader interface {
	Read(ctx context.Context) (websocket.MessageType, []byte, error)
}

// Writer is what Write needs: *tether.Conn, *tether.Session and
// *websocket.Conn have this method.
type Writer interface {
	Write(ctx context.Context, typ websocket.MessageType, p []byte) error
}

var (
	// ErrNotText is wrapped by the error Read returns for a binary message.
	// The message is consumed; the connection stays open.
	ErrNotText = errors.New("tether: wsjson: binary message, want JSON text")

	// ErrInvalidJSON is wrapped, with encoding/json's error, by the error
	// Read returns for a text message that does not decode into v. The
	// message is consumed; the connection stays open.
	ErrInvalidJSON = errors.New("tether: wsjson: message is not valid JSON for the value")
)

// Read reads the next message from c and decodes it, as JSON, into v, which
// must be a non-nil pointer (checked before anything is read). A binary
// message gives an error wrapping ErrNotText, and a message that does not
// decode into v an error wrapping ErrInvalidJSON; in both cases the message
// is consumed and c is left open. Errors from c's Read are returned wrapped.
func Read(ctx context.Context, c Reader, v any) error {
	if rv := reflect.ValueOf(v); rv.Kind() != reflect.Pointer || rv.IsNil() {
		return fmt.Errorf("tether: wsjson: Read into %T: want a non-nil pointer", v)
	}
	typ, p, err := c.Read(ctx)
	if err != nil {
		return fmt.Errorf("tether: wsjson: read: %w", err)
	}
	if typ != websocket.MessageText {
		return fmt.Errorf("%w (%d bytes)", ErrNotText, len(p))
	}
	if err := json.Unmarshal(p, v); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidJSON, err)
	}
	return nil
}

// encoder is a pooled encoding buffer with an Encoder that writes into it,
// so that a Write allocates nothing of its own.
type encoder struct {
	buf bytes.Buffer
	enc *json.Encoder
}

var encoders = sync.Pool{New: func() any {
	e := new(encoder)
	e.enc = json.NewEncoder(&e.buf)
	return e
}}

// maxPooled is the largest buffer given back to the pool: one big message
// should not pin its buffer for ever.
const maxPooled = 64 << 10

// Write encodes v as JSON (as json.Marshal does, without a trailing newline)
// and writes it to c as one text message. The encoding buffer is pooled; c
// does not keep it after its Write returns (tether's Conn and Session copy
// what they keep for the send queue or replay).
func Write(ctx context.Context, c Writer, v any) error {
	e := encoders.Get().(*encoder)
	defer func() {
		if e.buf.Cap() <= maxPooled {
			e.buf.Reset()
			encoders.Put(e)
		}
	}()
	if err := e.enc.Encode(v); err != nil {
		return fmt.Errorf("tether: wsjson: encode %T: %w", v, err)
	}
	b := e.buf.Bytes()
	b = b[:len(b)-1] // the Encoder's newline
	if err := c.Write(ctx, websocket.MessageText, b); err != nil {
		return fmt.Errorf("tether: wsjson: write: %w", err)
	}
	return nil
}

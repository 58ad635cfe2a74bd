package tether

import (
	"context"
	"io"

	"github.com/coder/websocket"
)

// readBufKeep is the largest read buffer a session link keeps between
// messages. Larger messages are read into a buffer of their own.
const readBufKeep = 8 << 10

// readBuf reads whole WebSocket messages of a session link into a buffer
// kept across reads. coder/websocket's Read grows a new buffer for every
// message (four allocations for 1 KiB); session frames are decoded from the
// kept buffer and only their payload is copied out, once, at its size.
type readBuf struct {
	b []byte
}

// read reads the next message of ws. The bytes returned are valid until the
// next call, unless owned is true: then they are the caller's to keep.
func (rb *readBuf) read(ctx context.Context, ws *websocket.Conn) (typ websocket.MessageType, b []byte, owned bool, err error) {
	typ, r, err := ws.Reader(ctx)
	if err != nil {
		return 0, nil, false, err
	}
	if rb.b == nil {
		rb.b = make([]byte, 0, 512)
	}
	b = rb.b[:0]
	for {
		if len(b) == cap(b) {
			// A message larger than the kept buffer: go on in a buffer of
			// its own, handed to the caller.
			b = append(b, 0)[:len(b)]
			owned = true
		}
		n, err := r.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err == io.EOF {
			break
		}
		if err != nil {
			return 0, nil, false, err
		}
	}
	if owned && cap(b) <= readBufKeep {
		// Keep the larger buffer for the messages to come; the caller
		// copies out of it like any other.
		rb.b, owned = b[:0], false
	}
	return typ, b, owned, nil
}

// payloadCopy returns a copy of p that the caller may keep, or p itself when
// it is already the caller's and no larger than the buffer msgCost charges
// for it: a message read ahead costs both sides of a session the same.
func payloadCopy(p []byte, owned bool) []byte {
	if len(p) == 0 || (owned && cap(p) <= bufSize(len(p))) {
		return p
	}
	return append([]byte(nil), p...)
}

package frame

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"slices"
	"strconv"
	"unicode/utf8"
)

// Kind is the type of a frame, its first byte on the wire.
type Kind uint8

const (
	// Hello is sent by the server as the first frame on every link: session
	// id, resume secret, Status, the server's ack, and the session's window.
	Hello Kind = 1
	// Data is a numbered application message.
	Data Kind = 2
	// Ack carries an acknowledgement only, when there is no Data to carry it.
	Ack Kind = 3
	// Close ends the session, with a WebSocket close code and reason.
	Close Kind = 4
)

// String returns the kind's name in lower case, or "Kind(n)" for an unknown
// kind.
func (k Kind) String() string {
	switch k {
	case Hello:
		return "hello"
	case Data:
		return "data"
	case Ack:
		return "ack"
	case Close:
		return "close"
	}
	return "Kind(" + strconv.Itoa(int(k)) + ")"
}

// Status says, in a Hello, what became of the session the client asked for.
type Status uint8

const (
	// StatusNew: a new session (the client asked for none).
	StatusNew Status = 1
	// StatusResumed: the session asked for was resumed.
	StatusResumed Status = 2
	// StatusLost: the session asked for is gone; this Hello opens a new one.
	StatusLost Status = 3
)

// String returns the status's name in lower case, or "Status(n)" for an
// unknown status.
func (s Status) String() string {
	switch s {
	case StatusNew:
		return "new"
	case StatusResumed:
		return "resumed"
	case StatusLost:
		return "lost"
	}
	return "Status(" + strconv.Itoa(int(s)) + ")"
}

// MaxReason is the longest Close reason in bytes, the same limit as a
// WebSocket close frame's.
const MaxReason = 123

const (
	flagBinary = 1 << 0

	// Fixed part of a Hello after the kind byte: status, session, secret.
	helloFixed = 1 + 16 + 16
)

// Frame is one decoded frame. Fields not used by its Kind are zero after
// Decode and ignored by Append.
type Frame struct {
	Kind Kind

	// Seq is the sequence number of a Data frame, from 1.
	Seq uint64
	// Ack, in every kind, is the highest sequence number received in order
	// from the peer; 0 before the first.
	Ack uint64

	// Binary is the Data message type: websocket.MessageBinary when true,
	// websocket.MessageText when false.
	Binary bool
	// Payload is the Data message. After Decode it aliases the input buffer
	// (with its capacity clipped), so it is valid only as long as that buffer
	// is; it is nil when the message is empty.
	Payload []byte

	// Status, Session and Secret are the fields of a Hello: what became of
	// the session asked for, the session id, and the secret that resumes it.
	Status  Status
	Session [16]byte
	Secret  [16]byte

	// WindowBytes and WindowMessages, in a Hello, are the session's window:
	// how much each side may send without acknowledgement, in bytes as the
	// tether package counts them and in messages. Both are zero when the
	// Hello does not say (it is then encoded without them); when present,
	// both are at least 1.
	WindowBytes    uint64
	WindowMessages uint64

	// Code and Reason are the fields of a Close: a WebSocket close code and
	// a UTF-8 reason of at most MaxReason bytes.
	Code   uint16
	Reason string
}

// Append appends the encoding of f to dst and returns the extended slice.
// It grows dst at most once, and does not allocate when dst has room.
//
// Append checks only the Kind, and panics on an unknown one: frames are built
// by this module, not by peers. Other fields are encoded as given, so a
// frame that breaks the rules (a Data Seq of 0, an unknown Status, a Reason
// over MaxReason bytes or not UTF-8) is encoded and then refused by Decode;
// callers that take a reason from users must check it first.
func Append(dst []byte, f *Frame) []byte {
	dst = slices.Grow(dst, size(f))
	dst = append(dst, byte(f.Kind))
	switch f.Kind {
	case Hello:
		dst = append(dst, byte(f.Status))
		dst = append(dst, f.Session[:]...)
		dst = append(dst, f.Secret[:]...)
		dst = binary.AppendUvarint(dst, f.Ack)
		if f.WindowBytes != 0 {
			dst = binary.AppendUvarint(dst, f.WindowBytes)
			dst = binary.AppendUvarint(dst, f.WindowMessages)
		}
	case Data:
		var flags byte
		if f.Binary {
			flags |= flagBinary
		}
		dst = append(dst, flags)
		dst = binary.AppendUvarint(dst, f.Seq)
		dst = binary.AppendUvarint(dst, f.Ack)
		dst = append(dst, f.Payload...)
	case Ack:
		dst = binary.AppendUvarint(dst, f.Ack)
	case Close:
		dst = binary.BigEndian.AppendUint16(dst, f.Code)
		dst = binary.AppendUvarint(dst, f.Ack)
		dst = append(dst, f.Reason...)
	default:
		panic("frame: Append: unknown kind " + f.Kind.String())
	}
	return dst
}

// size returns the length of f's encoding; 1 for an unknown kind.
func size(f *Frame) int {
	switch f.Kind {
	case Hello:
		n := 1 + helloFixed + uvarintLen(f.Ack)
		if f.WindowBytes != 0 {
			n += uvarintLen(f.WindowBytes) + uvarintLen(f.WindowMessages)
		}
		return n
	case Data:
		return 2 + uvarintLen(f.Seq) + uvarintLen(f.Ack) + len(f.Payload)
	case Ack:
		return 1 + uvarintLen(f.Ack)
	case Close:
		return 3 + uvarintLen(f.Ack) + len(f.Reason)
	}
	return 1
}

// uvarintLen returns the length of v's shortest uvarint encoding.
func uvarintLen(v uint64) int {
	return (bits.Len64(v|1) + 6) / 7
}

// Decode decodes the one frame that occupies all of b. A Data Payload
// aliases b; everything else is copied.
func Decode(b []byte) (Frame, error) {
	if len(b) == 0 {
		return Frame{}, fmt.Errorf("%w: empty input", ErrShort)
	}
	f := Frame{Kind: Kind(b[0])}
	rest := b[1:]
	var err error
	switch f.Kind {
	case Hello:
		if len(rest) < helloFixed {
			return Frame{}, fmt.Errorf("%w: hello needs %d bytes, has %d", ErrShort, 1+helloFixed+1, len(b))
		}
		f.Status = Status(rest[0])
		if f.Status < StatusNew || f.Status > StatusLost {
			return Frame{}, fmt.Errorf("%w: hello with unknown status %d", ErrMalformed, rest[0])
		}
		copy(f.Session[:], rest[1:17])
		copy(f.Secret[:], rest[17:33])
		if f.Ack, rest, err = uvarint(rest[helloFixed:], "hello ack"); err != nil {
			return Frame{}, err
		}
		if len(rest) != 0 {
			// The window, which a Hello may leave out, but never as zeros:
			// every Hello has one encoding.
			if f.WindowBytes, rest, err = uvarint(rest, "hello window bytes"); err != nil {
				return Frame{}, err
			}
			if f.WindowBytes == 0 {
				return Frame{}, fmt.Errorf("%w: hello with a window of 0 bytes", ErrMalformed)
			}
			if f.WindowMessages, rest, err = uvarint(rest, "hello window messages"); err != nil {
				return Frame{}, err
			}
			if f.WindowMessages == 0 {
				return Frame{}, fmt.Errorf("%w: hello with a window of 0 messages", ErrMalformed)
			}
		}
		if len(rest) != 0 {
			return Frame{}, trailing(f.Kind, len(rest))
		}
	case Data:
		if len(rest) == 0 {
			return Frame{}, fmt.Errorf("%w: data without flags", ErrShort)
		}
		flags := rest[0]
		if flags&^flagBinary != 0 {
			return Frame{}, fmt.Errorf("%w: data with unknown flags %#02x", ErrMalformed, flags)
		}
		f.Binary = flags&flagBinary != 0
		if f.Seq, rest, err = uvarint(rest[1:], "data seq"); err != nil {
			return Frame{}, err
		}
		if f.Seq == 0 {
			return Frame{}, fmt.Errorf("%w: data with seq 0", ErrMalformed)
		}
		if f.Ack, rest, err = uvarint(rest, "data ack"); err != nil {
			return Frame{}, err
		}
		if len(rest) > 0 {
			// Clip the capacity so that appending to one payload cannot
			// overwrite the frames that follow it in a batch.
			f.Payload = rest[:len(rest):len(rest)]
		}
	case Ack:
		if f.Ack, rest, err = uvarint(rest, "ack"); err != nil {
			return Frame{}, err
		}
		if len(rest) != 0 {
			return Frame{}, trailing(f.Kind, len(rest))
		}
	case Close:
		if len(rest) < 2 {
			return Frame{}, fmt.Errorf("%w: close without code", ErrShort)
		}
		f.Code = binary.BigEndian.Uint16(rest)
		if f.Ack, rest, err = uvarint(rest[2:], "close ack"); err != nil {
			return Frame{}, err
		}
		if len(rest) > MaxReason {
			return Frame{}, fmt.Errorf("%w: close reason of %d bytes, limit %d", ErrMalformed, len(rest), MaxReason)
		}
		if !utf8.Valid(rest) {
			return Frame{}, fmt.Errorf("%w: close reason not UTF-8", ErrMalformed)
		}
		f.Reason = string(rest)
	default:
		return Frame{}, fmt.Errorf("%w: %d", ErrKind, b[0])
	}
	return f, nil
}

// uvarint reads one shortest-form uvarint from the front of b. what names it
// in errors.
func uvarint(b []byte, what string) (uint64, []byte, error) {
	v, n := binary.Uvarint(b)
	switch {
	case n == 0:
		return 0, nil, fmt.Errorf("%w: %s", ErrShort, what)
	case n < 0:
		return 0, nil, fmt.Errorf("%w: %s overflows 64 bits", ErrMalformed, what)
	case n > 1 && b[n-1] == 0:
		// A final group of zero bits: the same value fits in fewer bytes.
		// Refusing it keeps every frame's encoding unique.
		return 0, nil, fmt.Errorf("%w: %s not in shortest form", ErrMalformed, what)
	}
	return v, b[n:], nil
}

func trailing(k Kind, n int) error {
	return fmt.Errorf("%w: %v with %d trailing bytes", ErrMalformed, k, n)
}

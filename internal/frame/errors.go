package frame

import "errors"

// Errors returned by Decode and DecodeBatch wrap one of these, with details
// in the message; test them with errors.Is.
var (
	// ErrShort reports input that ends before the frame or batch does,
	// including empty input.
	ErrShort = errors.New("frame: truncated")

	// ErrKind reports a frame whose first byte is not a known Kind.
	ErrKind = errors.New("frame: unknown kind")

	// ErrMalformed reports a frame that breaks the wire format: trailing
	// bytes, an overlong or overflowing varint, unknown flag bits, a Data seq
	// of 0, an unknown Hello status, a Close reason that is too long or not
	// UTF-8.
	ErrMalformed = errors.New("frame: malformed")

	// ErrTooLarge reports a batch entry longer than the caller's limit.
	ErrTooLarge = errors.New("frame: too large")

	// ErrTooMany reports a batch that claims more frames than the caller's
	// limit.
	ErrTooMany = errors.New("frame: too many frames in batch")
)

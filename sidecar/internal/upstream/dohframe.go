package upstream

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// HTTP/2 framing (RFC 9113 §4, §6): the frame types, flags, settings and
// error codes a DoH client meets, and the few frames it writes.

// h2Preface is the client connection preface (RFC 9113 §3.4).
const h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// Frame types.
const (
	h2FrameData         = 0x0
	h2FrameHeaders      = 0x1
	h2FramePriority     = 0x2
	h2FrameRSTStream    = 0x3
	h2FrameSettings     = 0x4
	h2FramePushPromise  = 0x5
	h2FramePing         = 0x6
	h2FrameGoAway       = 0x7
	h2FrameWindowUpdate = 0x8
	h2FrameContinuation = 0x9
)

// Frame flags.
const (
	h2FlagEndStream  = 0x1
	h2FlagAck        = 0x1 // SETTINGS, PING
	h2FlagEndHeaders = 0x4
	h2FlagPadded     = 0x8
	h2FlagPriority   = 0x20
)

// Settings.
const (
	h2SettingHeaderTableSize   = 0x1
	h2SettingEnablePush        = 0x2
	h2SettingMaxStreams        = 0x3
	h2SettingInitialWindowSize = 0x4
	h2SettingMaxFrameSize      = 0x5
	h2SettingMaxHeaderListSize = 0x6
)

// Error codes (RFC 9113 §7) this client sends or acts on.
const (
	h2NoError          = 0x0
	h2ProtocolError    = 0x1
	h2FlowControlError = 0x3
	h2FrameSizeError   = 0x6
	h2RefusedStream    = 0x7
	h2Cancel           = 0x8
	h2CompressionError = 0x9
)

const (
	h2FrameHeaderLen = 9
	h2SettingLen     = 6
	// h2MaxFrameSize is the largest frame payload this client accepts: the
	// protocol's default, which it never raises.
	h2MaxFrameSize = 16 << 10
	// h2DefaultWindow is every flow-control window until SETTINGS or
	// WINDOW_UPDATE say otherwise.
	h2DefaultWindow = 65535
	h2MaxWindow     = 1<<31 - 1
	h2MaxStreamID   = 1<<31 - 1
)

// What this client asks of the server in its preface. No stream ever
// carries more than one DNS message (at most 65535 bytes, plus padding),
// so a stream's window of 128 KiB never needs an update, and one that
// exceeds it is refused for its size at once instead of stalling. The
// connection's window is raised to h2ConnWindow and topped up as answers
// are read, which they are as soon as they arrive.
const (
	h2StreamWindow = 128 << 10
	h2ConnWindow   = 4 << 20
	// h2MaxHeaderList bounds the header list of a response (and is what
	// the client announces); a DoH answer's is a few dozen bytes.
	h2MaxHeaderList = 16 << 10
	// h2HeaderTableSize is the HPACK dynamic table of our decoder: the
	// default, so no SETTINGS entry is needed for it.
	h2HeaderTableSize = 4096
)

// h2FrameHeader is the fixed part of a frame.
type h2FrameHeader struct {
	length int
	typ    byte
	flags  byte
	stream uint32
}

func parseFrameHeader(b []byte) h2FrameHeader {
	return h2FrameHeader{
		length: int(b[0])<<16 | int(b[1])<<8 | int(b[2]),
		typ:    b[3],
		flags:  b[4],
		stream: binary.BigEndian.Uint32(b[5:9]) & h2MaxStreamID,
	}
}

func appendFrameHeader(b []byte, length int, typ, flags byte, stream uint32) []byte {
	return append(b, byte(length>>16), byte(length>>8), byte(length), typ, flags,
		byte(stream>>24), byte(stream>>16), byte(stream>>8), byte(stream))
}

// appendClientPreface appends what a client sends first: the preface, its
// SETTINGS (push off, the stream window, the header list bound) and the
// connection window's increase.
func appendClientPreface(b []byte) []byte {
	b = append(b, h2Preface...)
	settings := [][2]uint32{
		{h2SettingEnablePush, 0},
		{h2SettingInitialWindowSize, h2StreamWindow},
		{h2SettingMaxHeaderListSize, h2MaxHeaderList},
	}
	b = appendFrameHeader(b, len(settings)*h2SettingLen, h2FrameSettings, 0, 0)
	for _, s := range settings {
		b = append(b, byte(s[0]>>8), byte(s[0]))
		b = binary.BigEndian.AppendUint32(b, s[1])
	}
	return appendWindowUpdate(b, 0, h2ConnWindow-h2DefaultWindow)
}

func appendWindowUpdate(b []byte, stream, inc uint32) []byte {
	b = appendFrameHeader(b, 4, h2FrameWindowUpdate, 0, stream)
	return binary.BigEndian.AppendUint32(b, inc)
}

func appendRSTStream(b []byte, stream, code uint32) []byte {
	b = appendFrameHeader(b, 4, h2FrameRSTStream, 0, stream)
	return binary.BigEndian.AppendUint32(b, code)
}

func appendGoAway(b []byte, code uint32) []byte {
	// This client accepts no streams, so the last one it processed is 0.
	b = appendFrameHeader(b, 8, h2FrameGoAway, 0, 0)
	b = binary.BigEndian.AppendUint32(b, 0)
	return binary.BigEndian.AppendUint32(b, code)
}

// appendHeaderBlock appends a header block as HEADERS and, when it exceeds
// maxFrame, CONTINUATION frames.
func appendHeaderBlock(b []byte, stream uint32, block []byte, endStream bool, maxFrame int) []byte {
	flags := byte(0)
	if endStream {
		flags |= h2FlagEndStream
	}
	typ := byte(h2FrameHeaders)
	for {
		n := min(len(block), maxFrame)
		f := flags
		if n == len(block) {
			f |= h2FlagEndHeaders
		}
		b = appendFrameHeader(b, n, typ, f, stream)
		b = append(b, block[:n]...)
		block = block[n:]
		if len(block) == 0 {
			return b
		}
		typ, flags = h2FrameContinuation, 0
	}
}

// unpad strips the padding of a DATA or HEADERS payload (RFC 9113 §6.1).
func unpad(h h2FrameHeader, p []byte) ([]byte, error) {
	if h.flags&h2FlagPadded == 0 {
		return p, nil
	}
	if len(p) == 0 {
		return nil, errors.New("padded frame without its pad length")
	}
	pad := int(p[0])
	if pad >= len(p) {
		return nil, fmt.Errorf("padding of %d bytes in a payload of %d", pad, len(p))
	}
	return p[1 : len(p)-pad], nil
}

// h2ConnError is a connection error (RFC 9113 §5.4.1) this client found:
// the connection ends, with a GOAWAY carrying code.
type h2ConnError struct {
	code uint32
	why  string
}

func (e h2ConnError) Error() string {
	return fmt.Sprintf("HTTP/2 connection error %s: %s", h2ErrCode(e.code), e.why)
}

func connErr(code uint32, format string, args ...any) error {
	return h2ConnError{code: code, why: fmt.Sprintf(format, args...)}
}

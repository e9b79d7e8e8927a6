package upstream

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/dnswire"
)

// dnsMessage is the media type of a DNS message in wire format (RFC 8484 §6).
const dnsMessage = "application/dns-message"

// requestTemplates returns the POST and GET requests every query copies:
// URL, headers and :authority are the same for all of them. Both are only
// ever read (RoundTrip does not change a request), so many queries share
// them at once.
func requestTemplates(authority, path string) (post, get *http.Request) {
	u := &url.URL{Scheme: "https", Host: authority, Path: path}
	header := func(h http.Header) http.Header {
		h["Accept"] = []string{dnsMessage}
		// An empty User-Agent sends none: it would tell the upstream
		// nothing it needs, in every request.
		h["User-Agent"] = []string{""}
		return h
	}
	post = &http.Request{
		Method: http.MethodPost, URL: u, Host: authority,
		Proto: "HTTP/2.0", ProtoMajor: 2,
		Header: header(http.Header{"Content-Type": []string{dnsMessage}}),
	}
	get = &http.Request{
		Method: http.MethodGet, URL: u, Host: authority,
		Proto: "HTTP/2.0", ProtoMajor: 2,
		Header: header(http.Header{}),
	}
	return post, get
}

// newRequest makes the HTTP request of q: its message with ID 0 (RFC 8484
// §4.1: the ID adds nothing over HTTP/2, and 0 lets answers be cached), as
// a POST body or, with GET, as the dns parameter in base64url without
// padding (§4.1.1).
func (d *DoH) newRequest(ctx context.Context, q *dnswire.Msg) *http.Request {
	if d.opts.GET {
		wire := q.AppendTo(make([]byte, 0, len(q.Wire())), 0)
		r := d.get.WithContext(ctx)
		u := *r.URL
		u.RawQuery = "dns=" + base64.RawURLEncoding.EncodeToString(wire)
		r.URL = &u
		return r
	}
	body := new(queryBody)
	body.b = q.AppendTo(body.small[:0], 0)
	r := d.post.WithContext(ctx)
	r.Body = body
	r.ContentLength = int64(len(body.b))
	return r
}

// queryBody is a POST body: the query's bytes, read once. A query of
// typical size fits in small, so that body and bytes are one allocation.
type queryBody struct {
	b     []byte
	off   int
	small [128]byte
}

func (b *queryBody) Read(p []byte) (int, error) {
	if b.off >= len(b.b) {
		return 0, io.EOF
	}
	n := copy(p, b.b[b.off:])
	b.off += n
	return n, nil
}

func (b *queryBody) Close() error { return nil }

// roundTrip sends q on c, in the slot reserved there, and returns its answer
// with q's ID. It gives the slot back once the stream is over, before
// judging the connection by how it ended.
func (d *DoH) roundTrip(ctx context.Context, c *dohConn, q *dnswire.Msg) (dnswire.Msg, error) {
	sent, answered := time.Now(), c.answers.Load()
	resp, err := c.cc.RoundTrip(d.newRequest(ctx, q))
	if err != nil {
		c.release()
		return dnswire.Msg{}, d.failed(ctx, c, err, sent, answered)
	}
	ans, err := d.readAnswer(resp, q)
	// readAnswer read the body to its end but on failures, when closing it
	// resets the stream: nothing more of it is wanted.
	_ = resp.Body.Close()
	c.release()
	switch {
	case err == nil, errors.Is(err, ErrBadResponse):
		c.answers.Add(1)
		return ans, err
	case errors.Is(err, ErrHTTP):
		return dnswire.Msg{}, err
	case errors.Is(err, io.ErrUnexpectedEOF) && ctx.Err() == nil && c.cc.Err() == nil:
		// The stream ended short of its Content-Length, on a connection
		// that lives on (its death reads the same).
		return dnswire.Msg{}, d.badHTTP(httpBody, "body truncated")
	}
	return dnswire.Msg{}, d.failed(ctx, c, err, sent, answered)
}

// readAnswer checks the response and reads the DNS answer in its body. A
// response that cannot carry the answer to q is ErrHTTP; a body that ends
// early or a stream that breaks returns the transport's error
// (io.ErrUnexpectedEOF for the first).
func (d *DoH) readAnswer(resp *http.Response, q *dnswire.Msg) (dnswire.Msg, error) {
	if resp.StatusCode != http.StatusOK {
		return dnswire.Msg{}, d.badHTTP(httpStatus, "HTTP status "+strconv.Itoa(resp.StatusCode))
	}
	if ct := resp.Header["Content-Type"]; len(ct) != 1 || !isDNSMessage(ct[0]) {
		return dnswire.Msg{}, d.badHTTP(httpContentType, fmt.Sprintf("content type %q, want %s", strings.Join(ct, ", "), dnsMessage))
	}
	n := resp.ContentLength
	if n > dnswire.MaxMsgSize {
		return dnswire.Msg{}, d.badHTTP(httpBody, fmt.Sprintf("body of %d bytes, above the 65535 of a DNS message", n))
	}
	var body []byte
	var err error
	if n >= 0 {
		// The caller owns the answer, so it gets its own exact-size buffer.
		body = make([]byte, n)
		if _, err = io.ReadFull(resp.Body, body); err == io.EOF {
			err = io.ErrUnexpectedEOF // not one byte of it came
		} else if err == nil {
			// END_STREAM usually comes with the last bytes; reading it
			// keeps Close from resetting the stream.
			var one [1]byte
			if m, rerr := resp.Body.Read(one[:]); m > 0 {
				err = errors.New("body longer than its Content-Length")
			} else if rerr != io.EOF {
				err = rerr
			}
		}
	} else {
		body, err = io.ReadAll(io.LimitReader(resp.Body, dnswire.MaxMsgSize+1))
		if err == nil && len(body) > dnswire.MaxMsgSize {
			return dnswire.Msg{}, d.badHTTP(httpBody, "body longer than the 65535 bytes of a DNS message")
		}
	}
	if err != nil {
		return dnswire.Msg{}, err
	}
	ans, perr := dnswire.Parse(body)
	switch {
	case ans.ID == 0 && ans.Answers(q):
	case perr != nil && ans.QName() == nil:
		return dnswire.Msg{}, d.badHTTP(httpBody, "body is not a DNS message: "+perr.Error())
	default:
		// The stream says this answers q; it does not.
		d.m.mismatched.Inc()
		return dnswire.Msg{}, d.badHTTP(httpQuestion, fmt.Sprintf("not an answer to the query (ID %d, QR %v, question %s type %d)",
			ans.ID, ans.Response(), ans.QNameText(), ans.QType()))
	}
	ans.SetID(q.ID)
	if perr != nil {
		return ans, fmt.Errorf("%w from %s: %w", ErrBadResponse, d.name, perr)
	}
	return ans, nil
}

// isDNSMessage accepts application/dns-message, in any case, with or
// without parameters.
func isDNSMessage(ct string) bool {
	mt, _, _ := strings.Cut(ct, ";")
	return strings.EqualFold(strings.TrimSpace(mt), dnsMessage)
}

// badHTTP counts and returns an ErrHTTP. The first of a series is logged
// at Warn: a wrong path (404) or a front end refusing the name (421) is a
// configuration error that every query repeats.
func (d *DoH) badHTTP(reason, why string) error {
	d.m.httpErrs[reason].Inc()
	err := fmt.Errorf("%w: %s: %s", ErrHTTP, d.name, why)
	if warnLimited(&d.lastHTTPWarn) {
		d.log.Warn("upstream HTTP response without a usable answer", "upstream", d.name, "error", err)
	} else if d.log.Enabled(context.Background(), slog.LevelDebug) {
		d.log.Debug("upstream HTTP response without a usable answer", "upstream", d.name, "error", err)
	}
	return err
}

// h2StreamError has the shape of net/http's HTTP/2 stream error, which is
// not exported but converts itself into any struct of that shape
// (errors.As), as it does into golang.org/x/net/http2.StreamError.
type h2StreamError struct {
	StreamID uint32
	Code     uint32
	Cause    error
}

func (e h2StreamError) Error() string {
	return fmt.Sprintf("stream %d reset (%s)", e.StreamID, h2ErrCode(e.Code))
}

// HTTP/2 error codes (RFC 9113 §7) worth a name in logs.
const h2RefusedStream = 0x7

func h2ErrCode(c uint32) string {
	names := []string{"NO_ERROR", "PROTOCOL_ERROR", "INTERNAL_ERROR", "FLOW_CONTROL_ERROR", "SETTINGS_TIMEOUT",
		"STREAM_CLOSED", "FRAME_SIZE_ERROR", "REFUSED_STREAM", "CANCEL", "COMPRESSION_ERROR", "CONNECT_ERROR",
		"ENHANCE_YOUR_CALM", "INADEQUATE_SECURITY", "HTTP_1_1_REQUIRED"}
	if int(c) < len(names) {
		return names[c]
	}
	return "0x" + strconv.FormatUint(uint64(c), 16)
}

// failed turns the failure of a query's stream on c into this package's
// errors:
//   - the query's deadline: ErrSlowAnswer when c answered other queries
//     meanwhile (a slow name, as for DoT), else the deadline alone, and c
//     is retired if it stayed silent for silentAfter;
//   - a stream the server refused unprocessed (REFUSED_STREAM): resent
//     (ErrConnClosed), as the server invites;
//   - any other stream reset: ErrHTTP, like a 5xx;
//   - anything else ends the connection for this query (closed, reset,
//     GOAWAY before the query was processed, a write that failed): c is
//     retired and the query resent or failed by the DoT's rule (lostErr).
func (d *DoH) failed(ctx context.Context, c *dohConn, err error, sent time.Time, answered uint64) error {
	if d.ctx.Err() != nil {
		return fmt.Errorf("%w: %w", ErrClosed, err)
	}
	if ctx.Err() != nil {
		if c.answers.Load() != answered {
			return fmt.Errorf("no answer from %s: %w: %w", d.name, ErrSlowAnswer, ctx.Err())
		}
		if waited := time.Since(sent); waited >= silentAfter {
			c.retire("no response within " + waited.Round(time.Millisecond).String())
		}
		return fmt.Errorf("no answer from %s: %w", d.name, ctx.Err())
	}
	var se h2StreamError
	if errors.As(err, &se) {
		if se.Code == h2RefusedStream {
			return fmt.Errorf("%w: %s refused the stream unprocessed", ErrConnClosed, d.name)
		}
		return d.badHTTP(httpStreamReset, se.Error())
	}
	c.lose(err)
	if cause := c.deathCause(); cause != nil {
		return cause // one value for every query it took down
	}
	return c.lostErr(err)
}

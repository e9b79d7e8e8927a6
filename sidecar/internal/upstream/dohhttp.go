package upstream

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/dnswire"
)

// dnsMessage is the media type of a DNS message in wire format (RFC 8484 §6).
const dnsMessage = "application/dns-message"

// request is the HTTP/2 request of q: its message with ID 0 (RFC 8484
// §4.1: the ID adds nothing over HTTP/2, and 0 lets answers be cached),
// padded (RFC 8467 §4.1) and without its client's hop options, as a POST
// body or, with GET, as the dns parameter in base64url without padding
// (§4.1.1).
func (d *DoH) request(q *dnswire.Msg) h2Request {
	if d.opts.GET {
		wire := q.AppendQuery(make([]byte, 0, q.QueryLen(d.rewrite)), 0, d.rewrite)
		return h2Request{authority: d.authority, path: d.opts.Path + "?dns=" + base64.RawURLEncoding.EncodeToString(wire)}
	}
	return h2Request{authority: d.authority, path: d.opts.Path, q: q, rewrite: d.rewrite}
}

// roundTrip sends q on c, in the slot reserved there, and returns its answer
// with q's ID. It gives the slot back once the stream is over, before
// judging the connection by how it ended.
func (d *DoH) roundTrip(ctx context.Context, c *dohConn, q *dnswire.Msg) (dnswire.Msg, error) {
	sent, answered, upAnswered := time.Now(), c.answers.Load(), d.answered.Load()
	r := d.request(q)
	res := c.h2.roundTrip(ctx, &r)
	c.release()
	if res.err != nil {
		var be h2BodyError
		if errors.As(res.err, &be) {
			return dnswire.Msg{}, d.badHTTP(httpBody, be.why)
		}
		return dnswire.Msg{}, d.failed(ctx, c, res.err, sent, answered, upAnswered)
	}
	ans, err := d.readAnswer(&res, q)
	if err == nil || errors.Is(err, ErrBadResponse) {
		if c.answers.Add(1) == 1 {
			d.servedNew()
		}
		d.answered.Add(1)
	}
	return ans, err
}

// readAnswer checks the response and reads the DNS answer in its body. A
// response that cannot carry the answer to q is ErrHTTP. (The reader has
// refused bodies above a DNS message's size or longer than announced.)
func (d *DoH) readAnswer(res *h2Result, q *dnswire.Msg) (dnswire.Msg, error) {
	if res.status != http.StatusOK {
		return dnswire.Msg{}, d.badHTTP(httpStatus, "HTTP status "+strconv.Itoa(res.status))
	}
	if res.contentTypes != 1 || !isDNSMessage(res.contentType) {
		return dnswire.Msg{}, d.badHTTP(httpContentType, fmt.Sprintf("content type %q (%d of them), want %s", res.contentType, res.contentTypes, dnsMessage))
	}
	if res.contentLength >= 0 && int64(len(res.body)) < res.contentLength {
		return dnswire.Msg{}, d.badHTTP(httpBody, fmt.Sprintf("body truncated: %d of %d bytes", len(res.body), res.contentLength))
	}
	ans, perr := dnswire.Parse(res.body)
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
	return ans, stripHop(&ans, d.name)
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

// h2StreamError is a stream the server reset (RST_STREAM) with Code.
type h2StreamError struct {
	StreamID uint32
	Code     uint32
}

func (e h2StreamError) Error() string {
	return fmt.Sprintf("stream %d reset (%s)", e.StreamID, h2ErrCode(e.Code))
}

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
//   - the query's deadline: ErrSlowAnswer when c, or another connection to
//     the upstream, answered other queries meanwhile (a slow name, as for
//     DoT), else the deadline alone; c is retired if it stayed silent for
//     silentAfter;
//   - a stream the server refused unprocessed (REFUSED_STREAM): resent
//     (ErrConnClosed), as the server invites;
//   - any other stream reset: ErrHTTP, like a 5xx;
//   - anything else ends the connection for this query (closed, reset,
//     GOAWAY before the query was processed, a write that failed): c is
//     retired and the query resent or failed by the DoT's rule (lostErr).
func (d *DoH) failed(ctx context.Context, c *dohConn, err error, sent time.Time, answered, upAnswered uint64) error {
	if d.ctx.Err() != nil {
		return fmt.Errorf("%w: %w", ErrClosed, err)
	}
	if ctx.Err() != nil {
		silent := c.answers.Load() == answered
		if waited := time.Since(sent); silent && waited >= silentAfter {
			c.retire("no response within " + waited.Round(time.Millisecond).String())
		}
		if !silent || d.answered.Load() != upAnswered {
			return fmt.Errorf("no answer from %s: %w: %w", d.name, ErrSlowAnswer, ctx.Err())
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

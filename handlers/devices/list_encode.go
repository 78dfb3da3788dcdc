package devices

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"

	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/livestate"
)

// The device list is the API's biggest read. Through the generated response
// (api.DeviceList200JSONResponse: encoding/json by reflection), with every
// device's tags decoded from jsonb into a map only to be encoded again, the
// decoding and encoding took over 40% of the server's CPU for a page of 100
// devices (bench/devices, profiled). The list writes its page itself
// instead, in the shape encoding/json gives api.DevicePage: the same fields
// in the same order, the same omissions, strings escaped alike. Tags are the
// exception that changes no value: they are the jsonb's own text (without
// its spaces), so their keys come in jsonb's order (shorter keys first) and
// their strings are escaped as PostgreSQL escapes them (< stays <, where
// encoding/json writes \u003c). Reported states still go through
// api.ReportedState, as in every other response: that is what drops what
// the schema does not know from a stored state. TestDeviceListEncoding holds
// the list to the generic encoding.

// deviceListPage is an encoded page of the device list; it answers behind
// the generated interface, as api.DeviceList200JSONResponse would.
type deviceListPage struct{ body *[]byte }

// VisitDeviceListResponse sends the page once. A Write does not keep its
// slice (io.Writer's contract), so the buffer can serve the next page.
func (p deviceListPage) VisitDeviceListResponse(w http.ResponseWriter) error {
	defer pageBuffers.Put(p.body)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_, err := w.Write(*p.body)
	return err
}

// pageBuffers keeps page buffers between requests: a page of 100 devices is
// about 30 KB.
var pageBuffers = sync.Pool{New: func() any { return new([]byte) }}

// encodeDeviceList encodes a page of devices, with their live states, as
// encoding/json encodes api.DevicePage (trailing newline included).
func encodeDeviceList(rows []db.DeviceListRow, live map[uuid.UUID]*livestate.State, next *string, now time.Time,
	publicURL func(uuid.UUID) string) (deviceListPage, error) {
	buf := pageBuffers.Get().(*[]byte)
	b := append((*buf)[:0], `{"items":[`...)
	for i := range rows {
		if i > 0 {
			b = append(b, ',')
		}
		var err error
		if b, err = appendDevice(b, &rows[i], live[rows[i].ID], now, publicURL); err != nil {
			pageBuffers.Put(buf)
			return deviceListPage{}, err
		}
	}
	b = append(b, ']')
	if next != nil {
		b = append(b, `,"next_cursor":`...)
		b = appendString(b, *next)
	}
	*buf = append(b, "}\n"...)
	return deviceListPage{body: buf}, nil
}

// appendDevice encodes one device as withLive and encoding/json would show
// it, in api.Device's field order.
func appendDevice(b []byte, r *db.DeviceListRow, live *livestate.State, now time.Time, publicURL func(uuid.UUID) string) ([]byte, error) {
	reported, lastSeen, err := shown(r.ID, r.Reported, r.ReportedAt, r.ReportedSeq, r.LastSeenAt, live)
	if err != nil {
		return nil, err
	}
	b = append(b, `{"architecture":`...)
	b = appendString(b, r.Architecture)
	b = append(b, `,"created_at":`...)
	if b, err = appendTime(b, r.CreatedAt); err != nil {
		return nil, err
	}
	b = append(b, `,"device_type":`...)
	b = appendString(b, r.DeviceType)
	b = append(b, `,"fleet_id":`...)
	b = appendUUID(b, r.FleetID)
	b = append(b, `,"id":`...)
	b = appendUUID(b, r.ID)
	if lastSeen != nil {
		b = append(b, `,"last_seen_at":`...)
		if b, err = appendTime(b, *lastSeen); err != nil {
			return nil, err
		}
	}
	b = append(b, `,"name":`...)
	b = appendString(b, r.Name)
	if online(r.ConnectionKey, r.Connected, r.LastSeenAt, now) {
		b = append(b, `,"online":true`...)
	} else {
		b = append(b, `,"online":false`...)
	}
	b = append(b, `,"org_id":`...)
	b = appendUUID(b, r.OrgID)
	if r.PinnedReleaseID.Valid {
		b = append(b, `,"pinned_release_id":`...)
		b = appendUUID(b, r.PinnedReleaseID.UUID)
	}
	b = append(b, `,"public_url":{"enabled":`...)
	b = strconv.AppendBool(b, r.PublicUrlEnabled)
	b = append(b, `,"port":`...)
	b = strconv.AppendInt(b, int64(r.PublicUrlPort), 10)
	if publicURL != nil {
		b = append(b, `,"url":`...)
		b = appendString(b, publicURL(r.ID))
	}
	b = append(b, '}')
	if reported != nil {
		rs, err := json.Marshal(reported)
		if err != nil {
			return nil, fmt.Errorf("encode reported state of %s: %w", r.ID, err)
		}
		b = append(b, `,"reported_state":`...)
		b = append(b, rs...)
	}
	b = append(b, `,"tags":`...)
	b = appendTags(b, r.TagsJson)
	b = append(b, `,"updated_at":`...)
	if b, err = appendTime(b, r.UpdatedAt); err != nil {
		return nil, err
	}
	return append(b, '}'), nil
}

// appendTags writes the tags' jsonb text without the spaces PostgreSQL puts
// after every colon and comma. Tags are always an object: JSON null (or no
// value) is the empty one, as a nil map is in api.Device.
func appendTags(b, tags []byte) []byte {
	if len(tags) == 0 || string(tags) == "null" {
		return append(b, "{}"...)
	}
	inString, escaped := false, false
	run := 0 // start of the bytes not yet copied
	for i, c := range tags {
		switch {
		case inString:
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			}
		case c == '"':
			inString = true
		case c == ' ' || c == '\n' || c == '\t' || c == '\r':
			b = append(b, tags[run:i]...)
			run = i + 1
		}
	}
	return append(b, tags[run:]...)
}

// appendTime writes t as time.Time's MarshalJSON does (RFC 3339 with
// nanoseconds, refusing years it cannot write).
func appendTime(b []byte, t time.Time) ([]byte, error) {
	b = append(b, '"')
	b, err := t.AppendText(b)
	if err != nil {
		return nil, fmt.Errorf("encode time: %w", err)
	}
	return append(b, '"'), nil
}

// appendUUID writes u as its MarshalText does, quoted.
func appendUUID(b []byte, u uuid.UUID) []byte {
	b = append(b, '"')
	for i, c := range u {
		if i == 4 || i == 6 || i == 8 || i == 10 {
			b = append(b, '-')
		}
		b = append(b, hex[c>>4], hex[c&0xf])
	}
	return append(b, '"')
}

const hex = "0123456789abcdef"

// appendString writes s as a JSON string the way encoding/json does: <, >
// and & escaped for HTML, U+2028 and U+2029 escaped for JavaScript, invalid
// UTF-8 replaced by U+FFFD.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	run := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[run:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			run = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(b, s[run:i]...)
			b = append(b, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			b = append(b, s[run:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xf])
		default:
			i += size
			continue
		}
		i += size
		run = i
	}
	b = append(b, s[run:]...)
	return append(b, '"')
}

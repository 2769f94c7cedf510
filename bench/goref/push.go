package main

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"golang.org/x/crypto/blake2b"
)

var (
	guidPattern  = regexp.MustCompile(`^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}(?:\.([A-Za-z0-9_-]{1,64}))?$`)
	tokenPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,50}$`)
	successBody  = []byte(`{"message":"success","retcode":"0"}`)
)

const maxEventTime = 99_999_999_999_999 // eventGenTime: epoch ms of at most 14 digits, as the bridge

// refusal is a push answered with a failure: HTTP status, the gateway's retcode, and what is wrong.
type refusal struct {
	status  int
	retcode string
	message string
}

func badMessage(format string, args ...any) *refusal {
	return &refusal{http.StatusBadRequest, "000-006", fmt.Sprintf(format, args...)}
}

type handler struct {
	s       *settings
	client  *kgo.Client
	pushIDs func() string
	order   sync.Mutex // a push's records reach the producer together, in order
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	received := time.Now()
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		answer(w, &refusal{http.StatusMethodNotAllowed, "000-001", "method " + r.Method + " is not allowed; use POST"})
		return
	}
	node, problem := h.admit(r)
	if problem == nil {
		var records []*kgo.Record
		if records, problem = h.read(w, r, node, received); problem == nil {
			problem = h.publish(r.Context(), records)
		}
	}
	answer(w, problem)
}

// admit checks the Guid's format and the service_token; it returns the gateway node the Guid names.
func (h *handler) admit(r *http.Request) (string, *refusal) {
	guid := strings.TrimSpace(r.Header.Get("Guid"))
	if guid == "" {
		return "", &refusal{http.StatusUnauthorized, "000-002", "Guid header is missing"}
	}
	match := guidPattern.FindStringSubmatch(guid)
	if match == nil {
		return "", &refusal{http.StatusUnauthorized, "000-002",
			"Guid header is not a UUID optionally followed by '.' and a node name"}
	}
	token, given := r.Header["Service_token"]
	if !given {
		return "", &refusal{http.StatusForbidden, "000-003", "service_token header is missing"}
	}
	if !tokenPattern.MatchString(token[0]) {
		return "", &refusal{http.StatusBadRequest, "100-001",
			"service_token header must be 1-50 characters of A-Z, a-z, 0-9, '-' or '_'"}
	}
	known := false
	for t := range h.s.tokens { // every configured token, each in constant time
		known = hmac.Equal([]byte(token[0]), []byte(t)) || known
	}
	if !known {
		return "", &refusal{http.StatusForbidden, "000-003", "service_token is not accepted"}
	}
	return match[1], nil
}

// read checks the Content-Type and the size, reads and parses the body, and builds the records.
func (h *handler) read(w http.ResponseWriter, r *http.Request, node string, received time.Time) ([]*kgo.Record, *refusal) {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		media, params, err := mime.ParseMediaType(ct)
		if err != nil || (media != "application/json" && !strings.HasSuffix(media, "+json")) {
			return nil, &refusal{http.StatusUnsupportedMediaType, "000-006", fmt.Sprintf("Content-Type %q is not application/json", ct)}
		}
		if cs, ok := params["charset"]; ok && !strings.EqualFold(cs, "utf-8") && !strings.EqualFold(cs, "utf8") {
			return nil, &refusal{http.StatusUnsupportedMediaType, "000-006", fmt.Sprintf("charset %q is not UTF-8", cs)}
		}
	}
	tooLarge := &refusal{http.StatusRequestEntityTooLarge, "000-006", fmt.Sprintf("request body is larger than %d bytes", h.s.maxBody)}
	if r.ContentLength > int64(h.s.maxBody) {
		return nil, tooLarge
	}
	var body bytes.Buffer
	if _, err := body.ReadFrom(http.MaxBytesReader(w, r.Body, int64(h.s.maxBody))); err != nil {
		var large *http.MaxBytesError
		if errors.As(err, &large) {
			return nil, tooLarge
		}
		return nil, badMessage("request body could not be read")
	}
	return h.records(body.Bytes(), node, received)
}

type pushBody struct {
	WorkNo    json.RawMessage   `json:"workNo"`
	EventList []json.RawMessage `json:"eventList"`
}

type eventFields struct {
	EventType    *string         `json:"eventType"`
	WorkNo       json.RawMessage `json:"workNo"`
	EventGenTime json.RawMessage `json:"eventGenTime"`
}

// workNoText: a non-empty string or an integer, as text ("" when it is neither).
func workNoText(raw json.RawMessage) string {
	var text string
	if json.Unmarshal(raw, &text) == nil {
		if strings.TrimSpace(text) == "" {
			return ""
		}
		return text
	}
	if n, err := strconv.ParseInt(string(raw), 10, 64); err == nil {
		return strconv.FormatInt(n, 10)
	}
	return ""
}

func (h *handler) records(body []byte, node string, received time.Time) ([]*kgo.Record, *refusal) {
	if len(body) == 0 {
		return nil, badMessage("request body is empty; expected a JSON object with workNo and eventList")
	}
	var push pushBody
	if err := json.Unmarshal(body, &push); err != nil {
		return nil, badMessage("request body is not a JSON object with workNo and eventList: %v", err)
	}
	if push.WorkNo == nil {
		return nil, badMessage("workNo is missing")
	}
	workNo := workNoText(push.WorkNo)
	if workNo == "" {
		return nil, badMessage("workNo must be a non-empty string or an integer")
	}
	switch n := len(push.EventList); {
	case n == 0:
		return nil, badMessage("eventList is missing or empty")
	case n > h.s.maxEvents:
		return nil, &refusal{http.StatusRequestEntityTooLarge, "000-006",
			fmt.Sprintf("eventList has %d events; the limit is %d", n, h.s.maxEvents)}
	}
	source := []byte("/cc-gateway")
	if node != "" {
		source = []byte("/cc-gateway/" + node)
	}
	shared := []kgo.RecordHeader{
		{Key: "ce_specversion", Value: []byte("1.0")},
		{Key: "ce_source", Value: source},
		{Key: "ce_time", Value: []byte(received.UTC().Format("2006-01-02T15:04:05.000Z"))},
		{Key: "content-type", Value: []byte("application/json")},
		{Key: "ce_pushid", Value: []byte(h.pushIDs())},
		{Key: "ce_pushsize", Value: []byte(strconv.Itoa(len(push.EventList)))},
	}
	if h.s.replica != "" {
		shared = append(shared, kgo.RecordHeader{Key: "bridge_replica", Value: []byte(h.s.replica)})
	}
	seen := map[string]int{}
	records := make([]*kgo.Record, 0, len(push.EventList))
	for i, raw := range push.EventList {
		var event eventFields
		if raw[0] != '{' || json.Unmarshal(raw, &event) != nil {
			return nil, badMessage("eventList[%d] must be an object", i)
		}
		if event.EventType == nil || *event.EventType == "" {
			return nil, badMessage("eventList[%d].eventType must be a non-empty string", i)
		}
		agent := workNo
		if own := string(event.WorkNo); own != "" && own != "null" && own != `""` {
			if agent = workNoText(event.WorkNo); agent == "" {
				return nil, badMessage("eventList[%d].workNo must be a non-empty string or an integer", i)
			}
		}
		if t := string(event.EventGenTime); t != "" && t != "null" {
			if n, err := strconv.ParseInt(t, 10, 64); err != nil || n < 0 || n > maxEventTime {
				return nil, badMessage("eventList[%d].eventGenTime must be epoch milliseconds", i)
			}
		}
		key := []byte(agent)
		digest, _ := blake2b.New(16, nil)
		digest.Write(key)
		digest.Write([]byte{0})
		digest.Write(raw)
		id := hex.EncodeToString(digest.Sum(nil))
		if repeat := seen[id]; repeat > 0 {
			seen[id] = repeat + 1
			id = fmt.Sprintf("%s-%d", id, repeat)
		} else {
			seen[id] = 1
		}
		headers := make([]kgo.RecordHeader, 0, 4+len(shared))
		headers = append(headers, kgo.RecordHeader{Key: "ce_id", Value: []byte(id)},
			kgo.RecordHeader{Key: "ce_type", Value: []byte(*event.EventType)},
			kgo.RecordHeader{Key: "ce_subject", Value: key})
		headers = append(headers, shared...)
		headers = append(headers, kgo.RecordHeader{Key: "ce_pushindex", Value: []byte(strconv.Itoa(i))})
		records = append(records, &kgo.Record{Topic: h.s.topic, Key: key, Value: raw, Headers: headers})
	}
	return records, nil
}

// publish hands the records to the producer in order and waits until Kafka acknowledged all of
// them, or one failed, or the publish timeout passed.
func (h *handler) publish(ctx context.Context, records []*kgo.Record) *refusal {
	ctx, cancel := context.WithTimeout(ctx, h.s.publishTimeout)
	defer cancel()
	var wait sync.WaitGroup
	var failure atomic.Pointer[error]
	wait.Add(len(records))
	done := func(_ *kgo.Record, err error) {
		if err != nil {
			failure.CompareAndSwap(nil, &err)
		}
		wait.Done()
	}
	h.order.Lock()
	for _, record := range records {
		h.client.Produce(ctx, record, done)
	}
	h.order.Unlock()
	wait.Wait()
	if err := failure.Load(); err != nil {
		return &refusal{http.StatusServiceUnavailable, "100-007", "Kafka did not acknowledge the events: " + (*err).Error()}
	}
	return nil
}

func answer(w http.ResponseWriter, problem *refusal) {
	header := w.Header()
	header.Set("Content-Type", "application/json; charset=UTF-8")
	if problem == nil {
		header.Set("Content-Length", strconv.Itoa(len(successBody)))
		w.Write(successBody)
		return
	}
	body, _ := json.Marshal(map[string]string{"message": problem.message, "retcode": problem.retcode})
	if problem.status == http.StatusServiceUnavailable {
		header.Set("Retry-After", "10")
	}
	header.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(problem.status)
	w.Write(body)
}

// newPushIDs: push ids unique per process start (random prefix), then a counter, as the bridge.
func newPushIDs() func() string {
	prefix := make([]byte, 6)
	rand.Read(prefix)
	process := hex.EncodeToString(prefix)
	var count atomic.Uint64
	return func() string { return process + "-" + strconv.FormatUint(count.Add(1)-1, 16) }
}

// Command loadgen is the HTTP load generator of the bridge benchmark (bench/benchmark.py drives it).
//
// It POSTs bodies read from a file, one JSON body per line, taking the lines in turn: with N
// lines, any run of at least N requests has sent every line, so a file of N agents' pushes
// really reaches N distinct agents. HTTP/1.1 over TLS with keep-alive, one connection per worker.
// The client is a minimal HTTP/1.1 one (one write per request, a buffered read of the answer)
// rather than net/http's, which costs about twice the CPU per request: on a 2-core machine every
// cycle the generator spends is taken from the servers it measures.
//
// Two modes:
//   - closed loop (no -rate): each of -conns workers sends its next request as soon as the
//     previous answer is in. This measures saturation throughput.
//   - open loop (-rate R): a request falls due every 1/R seconds whatever the server does, and
//     its latency counts from the moment the schedule released it, so time spent waiting for a
//     free connection is included (no coordinated omission). How late the schedule itself ran
//     (the generator's own timing error, from sharing the CPU) is reported apart, and also the
//     latency counted from the due time, which includes it.
//
// Closed loop counts the answers completed during the -duration window that follows -warmup
// (with -cover the window goes on until every body was sent at least once); open loop counts
// the requests that fell due during the window, waiting for their answers. A success is
// HTTP 200 with the -expect text in the body; anything else is an error, counted by kind. It
// prints one JSON object on stdout, with the generator's own CPU time over the window so the
// caller can tell whether the generator was the limit.
package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

type options struct {
	urls     listFlag
	headers  listFlag
	cacert   string
	bodies   string
	conns    int
	duration time.Duration
	warmup   time.Duration
	rate     float64
	cover    bool
	maxDur   time.Duration
	timeout  time.Duration
	expect   string
}

func main() {
	var o options
	flag.Var(&o.urls, "url", "target https:// or http:// URL (repeat for several servers; workers are spread over them)")
	flag.Var(&o.headers, "H", "request header 'Name: value' (repeatable)")
	flag.StringVar(&o.cacert, "cacert", "", "PEM file of the CA that signed the server certificate")
	flag.StringVar(&o.bodies, "bodies", "", "file with one request body per line")
	flag.IntVar(&o.conns, "conns", 64, "concurrent connections (one request in flight on each)")
	flag.DurationVar(&o.duration, "duration", 10*time.Second, "measured window")
	flag.DurationVar(&o.warmup, "warmup", 2*time.Second, "load before the window, not counted")
	flag.Float64Var(&o.rate, "rate", 0, "open loop at this many requests per second (0: closed loop)")
	flag.BoolVar(&o.cover, "cover", false,
		"closed loop: after -duration, go on until every body was sent at least once (at most -max-duration)")
	flag.DurationVar(&o.maxDur, "max-duration", 0, "longest window with -cover")
	flag.DurationVar(&o.timeout, "timeout", 15*time.Second, "limit for one request")
	flag.StringVar(&o.expect, "expect", `"retcode":"0"`, "text a successful answer body contains")
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
}

// ---------------------------------------------------------------------------------------------
// A minimal HTTP/1.1 client: one keep-alive connection, one request at a time.

type target struct {
	addr   string // host:port
	tls    *tls.Config
	prefix []byte // request line and fixed headers, up to and including "Content-Length: "
}

type conn struct {
	target  *target
	net     net.Conn
	reader  *bufio.Reader
	request []byte // reused buffer for the request bytes
	answer  []byte // reused buffer for the response body
	dials   *int64
}

var errProtocol = errors.New("malformed HTTP response")

func (c *conn) close() {
	if c.net != nil {
		c.net.Close()
		c.net = nil
	}
}

// roundTrip sends one POST and reads its answer; on any error the connection is dropped and the
// next call opens a new one.
func (c *conn) roundTrip(body []byte, timeout time.Duration) (int, []byte, error) {
	if c.net == nil {
		atomic.AddInt64(c.dials, 1)
		raw, err := net.DialTimeout("tcp", c.target.addr, 5*time.Second)
		if err != nil {
			return 0, nil, err
		}
		if c.target.tls != nil {
			secure := tls.Client(raw, c.target.tls)
			secure.SetDeadline(time.Now().Add(timeout))
			if err := secure.Handshake(); err != nil {
				raw.Close()
				return 0, nil, err
			}
			c.net = secure
		} else {
			c.net = raw
		}
		c.reader = bufio.NewReaderSize(c.net, 16<<10)
	}
	c.net.SetDeadline(time.Now().Add(timeout))
	c.request = append(c.request[:0], c.target.prefix...)
	c.request = strconv.AppendInt(c.request, int64(len(body)), 10)
	c.request = append(c.request, "\r\n\r\n"...)
	c.request = append(c.request, body...)
	if _, err := c.net.Write(c.request); err != nil {
		c.close()
		return 0, nil, err
	}
	status, keepAlive, err := c.readResponse()
	if err != nil || !keepAlive {
		c.close()
	}
	return status, c.answer, err
}

func (c *conn) readResponse() (status int, keepAlive bool, err error) {
	line, err := c.reader.ReadSlice('\n')
	if err != nil {
		return 0, false, err
	}
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) {
		return 0, false, errProtocol
	}
	if status, err = strconv.Atoi(string(line[9:12])); err != nil {
		return 0, false, errProtocol
	}
	keepAlive = line[7] == '1'
	length, chunked := -1, false
	for {
		line, err = c.reader.ReadSlice('\n')
		if err != nil {
			return status, false, err
		}
		line = bytes.TrimRight(line, "\r\n")
		if len(line) == 0 {
			break
		}
		name, value, found := bytes.Cut(line, []byte(":"))
		if !found {
			return status, false, errProtocol
		}
		value = bytes.TrimSpace(value)
		switch strings.ToLower(string(name)) {
		case "content-length":
			if length, err = strconv.Atoi(string(value)); err != nil {
				return status, false, errProtocol
			}
		case "transfer-encoding":
			chunked = bytes.EqualFold(value, []byte("chunked"))
		case "connection":
			if bytes.EqualFold(value, []byte("close")) {
				keepAlive = false
			}
		}
	}
	c.answer = c.answer[:0]
	switch {
	case chunked:
		for {
			line, err = c.reader.ReadSlice('\n')
			if err != nil {
				return status, false, err
			}
			size, err := strconv.ParseInt(string(bytes.TrimSpace(bytes.SplitN(line, []byte(";"), 2)[0])), 16, 32)
			if err != nil {
				return status, false, errProtocol
			}
			if size == 0 {
				for { // trailers, up to the blank line
					if line, err = c.reader.ReadSlice('\n'); err != nil {
						return status, false, err
					}
					if len(bytes.TrimRight(line, "\r\n")) == 0 {
						return status, keepAlive, nil
					}
				}
			}
			if err = c.readBody(int(size) + 2); err != nil { // the chunk and its CRLF
				return status, false, err
			}
			c.answer = c.answer[:len(c.answer)-2]
		}
	case length >= 0:
		return status, keepAlive, c.readBody(length)
	default: // the body runs to the end of the connection
		rest, err := io.ReadAll(c.reader)
		c.answer = append(c.answer, rest...)
		return status, false, err
	}
}

func (c *conn) readBody(n int) error {
	start := len(c.answer)
	if cap(c.answer) < start+n {
		grown := make([]byte, start, 2*(start+n))
		copy(grown, c.answer)
		c.answer = grown
	}
	c.answer = c.answer[:start+n]
	_, err := io.ReadFull(c.reader, c.answer[start:])
	return err
}

func newTarget(raw string, headers []string, tlsConfig *tls.Config) (*target, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, err
	}
	t := &target{addr: u.Host}
	switch u.Scheme {
	case "https":
		config := tlsConfig.Clone()
		config.ServerName = u.Hostname()
		t.tls = config
		if u.Port() == "" {
			t.addr = net.JoinHostPort(u.Hostname(), "443")
		}
	case "http":
		if u.Port() == "" {
			t.addr = net.JoinHostPort(u.Hostname(), "80")
		}
	default:
		return nil, fmt.Errorf("%s: only http:// and https:// URLs", raw)
	}
	prefix := fmt.Sprintf("POST %s HTTP/1.1\r\nHost: %s\r\n", u.RequestURI(), u.Host)
	for _, h := range headers {
		name, value, found := strings.Cut(h, ":")
		if !found {
			return nil, fmt.Errorf("header %q is not 'Name: value'", h)
		}
		prefix += strings.TrimSpace(name) + ": " + strings.TrimSpace(value) + "\r\n"
	}
	t.prefix = []byte(prefix + "Content-Length: ")
	return t, nil
}

// ---------------------------------------------------------------------------------------------
// The run

// tally is one worker's count; workers never share one, so recording takes no lock.
type tally struct {
	latencies []int64 // ns, successful answers in the window
	fromDue   []int64 // ns, open loop only: latency counted from the due time (adds the schedule's lateness)
	lags      []int64 // ns, open loop only: how long a request waited for a free connection
	ok        int64
	statuses  map[int]int64
	badBody   int64
	transport int64
	firstErr  string
}

func readBodies(path string) ([][]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var bodies [][]byte
	for _, line := range bytes.Split(data, []byte("\n")) {
		if line = bytes.TrimSpace(line); len(line) > 0 {
			bodies = append(bodies, line)
		}
	}
	if len(bodies) == 0 {
		return nil, fmt.Errorf("%s holds no body", path)
	}
	return bodies, nil
}

func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return math.NaN()
	}
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

func run(o options) error {
	if len(o.urls) == 0 || o.bodies == "" {
		return fmt.Errorf("-url and -bodies are required")
	}
	if o.conns < 1 || o.duration <= 0 || o.warmup < 0 || o.rate < 0 {
		return fmt.Errorf("-conns, -duration, -warmup and -rate must be positive")
	}
	bodies, err := readBodies(o.bodies)
	if err != nil {
		return err
	}
	tlsConfig := &tls.Config{MinVersion: tls.VersionTLS12}
	if o.cacert != "" {
		pem, err := os.ReadFile(o.cacert)
		if err != nil {
			return err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("no certificate in %s", o.cacert)
		}
		tlsConfig.RootCAs = pool
	}
	targets := make([]*target, len(o.urls))
	for i, raw := range o.urls {
		if targets[i], err = newTarget(raw, o.headers, tlsConfig); err != nil {
			return err
		}
	}
	expect := []byte(o.expect)
	var dials int64

	// The window opens after the warm-up; it closes after -duration (open loop: the schedule
	// ends then), or with -cover once every body was sent. Both moments are announced on
	// stderr ("window start", "window end") so the caller can sample other processes' CPU then.
	start := time.Now()
	windowStart := start.Add(o.warmup)
	plannedEnd := windowStart.Add(o.duration)
	var endNs atomic.Int64 // the window's end, Unix ns, once decided
	var stopped atomic.Bool
	var next uint64 // index of the next body; shared so the lines are taken in turn
	var cpuAtStart float64
	startSampled := make(chan struct{})
	time.AfterFunc(o.warmup, func() {
		cpuAtStart = cpuSeconds()
		fmt.Fprintln(os.Stderr, "window start")
		close(startSampled)
	})

	// send makes one request; it is counted when `counted` says so for its completion time
	// (closed loop: completed within the window) or its due time (open loop: fell due within
	// the window, however long it then took).
	send := func(t *tally, c *conn, counted func(done time.Time) bool) (time.Time, bool) {
		body := bodies[(atomic.AddUint64(&next, 1)-1)%uint64(len(bodies))]
		status, answer, err := c.roundTrip(body, o.timeout)
		done := time.Now()
		if !counted(done) {
			return done, false
		}
		switch {
		case err != nil:
			t.transport++
			if t.firstErr == "" {
				t.firstErr = err.Error()
			}
		case status != 200:
			t.statuses[status]++
			if t.firstErr == "" {
				t.firstErr = fmt.Sprintf("HTTP %d: %.200s", status, answer)
			}
		case !bytes.Contains(answer, expect):
			t.badBody++
			if t.firstErr == "" {
				t.firstErr = fmt.Sprintf("unexpected body: %.200s", answer)
			}
		default:
			t.ok++
			return done, true
		}
		return done, false
	}

	tallies := make([]*tally, o.conns)
	var dropped int64
	var late []int64 // ns, open loop: how late the schedule itself ran (the generator's own error)
	dispatched := make(chan struct{})
	type slot struct{ at, released time.Time } // when a request fell due, when the schedule let it go
	var due chan slot
	if o.rate > 0 {
		// Open loop: the schedule is fixed in advance; a full queue means the server is far
		// behind, and the requests that did not fit are reported as dropped.
		due = make(chan slot, 1<<16)
		go func() {
			defer close(dispatched)
			defer close(due)
			interval := float64(time.Second) / o.rate
			for i := 0; ; i++ {
				at := start.Add(time.Duration(float64(i) * interval))
				if !at.Before(plannedEnd) {
					return
				}
				if wait := time.Until(at); wait > 0 {
					time.Sleep(wait)
				}
				inWindow := !at.Before(windowStart)
				released := time.Now()
				select {
				case due <- slot{at, released}:
					if inWindow {
						late = append(late, int64(released.Sub(at)))
					}
				default:
					if inWindow {
						atomic.AddInt64(&dropped, 1)
					}
				}
			}
		}()
	}
	finishedWorkers := make(chan struct{}, o.conns)
	finished := make([]atomic.Bool, o.conns)
	for w := 0; w < o.conns; w++ {
		t := &tally{statuses: map[int]int64{}}
		tallies[w] = t
		c := &conn{target: targets[w%len(targets)], dials: &dials}
		go func(w int) {
			defer func() { c.close(); finished[w].Store(true); finishedWorkers <- struct{}{} }()
			if due == nil {
				// Completed in the window. `done` was taken before this check, so if the end is
				// not decided yet, it lies before the end.
				inWindow := func(done time.Time) bool {
					end := endNs.Load()
					return !done.Before(windowStart) && (end == 0 || done.UnixNano() <= end)
				}
				for !stopped.Load() {
					sent := time.Now()
					if done, ok := send(t, c, inWindow); ok {
						t.latencies = append(t.latencies, int64(done.Sub(sent)))
					}
				}
				return
			}
			for s := range due {
				sent := time.Now()
				dueInWindow := !s.at.Before(windowStart)
				if done, ok := send(t, c, func(time.Time) bool { return dueInWindow }); ok {
					t.latencies = append(t.latencies, int64(done.Sub(s.released)))
					t.fromDue = append(t.fromDue, int64(done.Sub(s.at)))
					t.lags = append(t.lags, int64(sent.Sub(s.released)))
				}
			}
		}(w)
	}
	// The window ends; workers finish what they have in hand (closed loop: not counted; open
	// loop: counted if it fell due in the window) within -timeout, so the run is bounded. A
	// worker still busy after that is left out of the figures and reported.
	time.Sleep(time.Until(plannedEnd))
	windowEnd := plannedEnd
	if due != nil {
		<-dispatched
	} else {
		if o.cover {
			limit := windowStart.Add(max(o.maxDur, o.duration))
			for atomic.LoadUint64(&next) < uint64(len(bodies)) && time.Now().Before(limit) {
				time.Sleep(20 * time.Millisecond)
			}
		}
		windowEnd = time.Now()
		endNs.Store(windowEnd.UnixNano())
		stopped.Store(true)
	}
	<-startSampled
	cpuUsed := cpuSeconds() - cpuAtStart
	fmt.Fprintln(os.Stderr, "window end")
	all := tally{statuses: map[int]int64{}}
	deadline := time.After(o.timeout + time.Second)
	unfinished := o.conns
collect:
	for unfinished > 0 {
		select {
		case <-finishedWorkers:
			unfinished--
		case <-deadline:
			break collect
		}
	}
	for w, t := range tallies {
		if !finished[w].Load() {
			continue
		}
		all.latencies = append(all.latencies, t.latencies...)
		all.lags = append(all.lags, t.lags...)
		all.fromDue = append(all.fromDue, t.fromDue...)
		all.ok += t.ok
		all.badBody += t.badBody
		all.transport += t.transport
		for code, n := range t.statuses {
			all.statuses[code] += n
		}
		if all.firstErr == "" {
			all.firstErr = t.firstErr
		}
	}
	window := windowEnd.Sub(windowStart).Seconds()
	errorsByKind := map[string]int64{}
	for code, n := range all.statuses {
		errorsByKind[fmt.Sprintf("http_%d", code)] = n
	}
	if all.transport > 0 {
		errorsByKind["transport"] = all.transport
	}
	if all.badBody > 0 {
		errorsByKind["bad_body"] = all.badBody
	}
	var errorCount int64
	for _, n := range errorsByKind {
		errorCount += n
	}
	sent := atomic.LoadUint64(&next)
	bodiesUsed := uint64(len(bodies))
	if sent < bodiesUsed {
		bodiesUsed = sent
	}
	mode := "closed"
	if o.rate > 0 {
		mode = "open"
	}
	out := map[string]any{
		"mode":          mode,
		"rate":          o.rate,
		"conns":         o.conns,
		"targets":       len(o.urls),
		"window_s":      window,
		"ok":            all.ok,
		"ok_per_s":      float64(all.ok) / window,
		"errors":        errorCount,
		"errors_by":     errorsByKind,
		"first_error":   all.firstErr,
		"dropped":       atomic.LoadInt64(&dropped),
		"latency_ms":    percentiles(all.latencies),
		"wait_ms":       percentiles(all.lags),
		"from_due_ms":   percentiles(all.fromDue),
		"late_ms":       percentiles(late),
		"cpu_s":         cpuUsed,
		"cpu_cores":     cpuUsed / window,
		"connections":   atomic.LoadInt64(&dials),
		"bodies":        len(bodies),
		"bodies_used":   bodiesUsed,
		"requests_sent": sent,
		"unfinished":    unfinished,
	}
	return json.NewEncoder(os.Stdout).Encode(out)
}

func percentiles(ns []int64) map[string]float64 {
	if len(ns) == 0 {
		return map[string]float64{}
	}
	sort.Slice(ns, func(i, j int) bool { return ns[i] < ns[j] })
	at := func(p float64) float64 {
		i := int(math.Ceil(p*float64(len(ns)))) - 1
		if i < 0 {
			i = 0
		}
		return float64(ns[i]) / 1e6
	}
	var sum float64
	for _, v := range ns {
		sum += float64(v)
	}
	return map[string]float64{
		"p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "p99.9": at(0.999),
		"max": float64(ns[len(ns)-1]) / 1e6, "mean": sum / float64(len(ns)) / 1e6,
		"count": float64(len(ns)),
	}
}

// Command goref is the benchmark's Go reference receiver: the bridge's push contract on the hot
// path, written the plain way with net/http and franz-go, as a floor for CPU per push.
//
// Same contract as `python -m bridge serve` for a push: POST over HTTPS (TLS 1.2 or later, the
// same certificate), the Guid header's format and the service_token checked, the Content-Type and
// the body size checked, the body parsed as {"workNo", "eventList": [{eventType, workNo, ...}]},
// one Kafka record per event keyed by the event's workNo (else the push's), the event's JSON as
// the value, the bridge's CloudEvents-style headers (and its bridge_replica header), acks=all with the idempotent producer over
// mutual TLS, and {"message":"success","retcode":"0"} only once every record of the push is
// acknowledged. A push's records are handed to the one producer in order, and no other push's
// records come between them.
//
// What it leaves out, on purpose (it is a floor, not a competitor): no spool (Kafka down means
// 503), no quarantine or dead-letter topic (a malformed event refuses the push), no eventGenTime
// normalisation (anything but an integer is refused), no routing rules (one topic), no metrics,
// no log line per push, no connection bounds or deadlines beyond net/http's.
//
// It reads the bridge's own BRIDGE_* settings, so the benchmark starts it like the bridge; its
// management port answers /readyz with 200 once the producer reached the broker.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

type settings struct {
	listen, management string
	certFile, keyFile  string
	pushPath, topic    string
	replica            string // the bridge_replica header
	tokens             map[string]bool
	bootstrap          []string
	kafkaTLS           *tls.Config
	linger             time.Duration
	maxBody, maxEvents int
	publishTimeout     time.Duration
}

func env(name, fallback string) string {
	if v, ok := os.LookupEnv("BRIDGE_" + name); ok && v != "" {
		return v
	}
	return fallback
}

func envInt(name string, fallback int) (int, error) {
	n, err := strconv.Atoi(env(name, strconv.Itoa(fallback)))
	if err != nil {
		return 0, fmt.Errorf("BRIDGE_%s: not an integer", name)
	}
	return n, nil
}

func load() (*settings, error) {
	s := &settings{
		listen:     net.JoinHostPort(env("HOST", "127.0.0.1"), env("PORT", "8043")),
		management: net.JoinHostPort(env("HOST", "127.0.0.1"), env("MANAGEMENT_PORT", "8081")),
		certFile:   env("TLS_CERTFILE", ""),
		keyFile:    env("TLS_KEYFILE", ""),
		pushPath:   env("PUSH_PATH", "/service-cloud/rest/cc-ai/v1/agentevent/pushresult"),
		topic:      env("TOPIC", "cc.agent.events"),
		tokens:     map[string]bool{},
		bootstrap:  strings.Split(env("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"), ","),
	}
	if s.replica = env("REPLICA_NAME", ""); s.replica == "" {
		s.replica, _ = os.Hostname() // as the bridge: the host name names the replica
	}
	if s.certFile == "" || s.keyFile == "" {
		return nil, errors.New("BRIDGE_TLS_CERTFILE and BRIDGE_TLS_KEYFILE are required")
	}
	for _, t := range strings.Split(env("SERVICE_TOKENS", ""), ",") {
		if t = strings.TrimSpace(t); t != "" {
			s.tokens[t] = true
		}
	}
	if len(s.tokens) == 0 {
		return nil, errors.New("BRIDGE_SERVICE_TOKENS is required")
	}
	var err error
	lingerMs, err := envInt("KAFKA_LINGER_MS", 0)
	if err != nil {
		return nil, err
	}
	s.linger = time.Duration(lingerMs) * time.Millisecond
	if s.maxBody, err = envInt("MAX_BODY_BYTES", 1<<20); err != nil {
		return nil, err
	}
	if s.maxEvents, err = envInt("MAX_EVENTS_PER_PUSH", 1000); err != nil {
		return nil, err
	}
	timeout, err := strconv.ParseFloat(env("PUBLISH_TIMEOUT_S", "5"), 64)
	if err != nil {
		return nil, errors.New("BRIDGE_PUBLISH_TIMEOUT_S: not a number")
	}
	s.publishTimeout = time.Duration(timeout * float64(time.Second))
	switch protocol := env("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT"); protocol {
	case "PLAINTEXT":
	case "SSL":
		if s.kafkaTLS, err = clientTLS(env("KAFKA_SSL_CAFILE", ""), env("KAFKA_SSL_CERTFILE", ""),
			env("KAFKA_SSL_KEYFILE", "")); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("BRIDGE_KAFKA_SECURITY_PROTOCOL %q: only PLAINTEXT and SSL are supported here", protocol)
	}
	return s, nil
}

// clientTLS: the broker's certificate checked against the CA file, and this client's own
// certificate when given (mutual TLS).
func clientTLS(caFile, certFile, keyFile string) (*tls.Config, error) {
	config := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("BRIDGE_KAFKA_SSL_CAFILE: %w", err)
		}
		config.RootCAs = x509.NewCertPool()
		if !config.RootCAs.AppendCertsFromPEM(pem) {
			return nil, errors.New("BRIDGE_KAFKA_SSL_CAFILE: no PEM certificate in it")
		}
	}
	if certFile != "" {
		pair, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("BRIDGE_KAFKA_SSL_CERTFILE/KEYFILE: %w", err)
		}
		config.Certificates = []tls.Certificate{pair}
	}
	return config, nil
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "goref:", err)
		os.Exit(1)
	}
}

func run() error {
	s, err := load()
	if err != nil {
		return err
	}
	opts := []kgo.Opt{
		kgo.SeedBrokers(s.bootstrap...), kgo.ClientID("cc-gateway-bridge-goref"),
		kgo.RequiredAcks(kgo.AllISRAcks()), // idempotent writes are franz-go's default with acks=all
		// What the bridge's producer does: no compression, and its linger (0 by default).
		kgo.ProducerBatchCompression(kgo.NoCompression()), kgo.ProducerLinger(s.linger),
	}
	if s.kafkaTLS != nil {
		opts = append(opts, kgo.DialTLSConfig(s.kafkaTLS))
	}
	client, err := kgo.NewClient(opts...)
	if err != nil {
		return err
	}
	defer client.Close()
	h := &handler{s: s, client: client, pushIDs: newPushIDs()}

	var ready atomic.Bool
	go func() { // ready once the broker answered; the bench waits for /readyz
		for !ready.Load() {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			if client.Ping(ctx) == nil {
				ready.Store(true)
			} else {
				time.Sleep(200 * time.Millisecond)
			}
			cancel()
		}
	}()
	management := &http.Server{Addr: s.management, ReadHeaderTimeout: 5 * time.Second,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/readyz" && !ready.Load() {
				w.WriteHeader(http.StatusServiceUnavailable)
			}
		})}

	mux := http.NewServeMux()
	mux.Handle(s.pushPath, h)
	server := &http.Server{
		Addr: s.listen, Handler: mux, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 75 * time.Second,
		MaxHeaderBytes: 16 << 10,
		TLSConfig: &tls.Config{MinVersion: tls.VersionTLS12, CipherSuites: []uint16{ // TLS 1.2: forward secrecy and AEAD only
			tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
			tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
			tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
		}},
	}
	failed := make(chan error, 2)
	go func() { failed <- server.ListenAndServeTLS(s.certFile, s.keyFile) }()
	go func() { failed <- management.ListenAndServe() }()
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	select {
	case err = <-failed:
		return err
	case <-stop:
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = management.Shutdown(ctx)
	return server.Shutdown(ctx) // waits for pushes in progress, which wait for their acknowledgements
}

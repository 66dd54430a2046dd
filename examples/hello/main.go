// Command hello is Berth's example service: a small static HTTP server used by
// the examples, the runtime tests and the end-to-end tests. It depends only on
// the standard library and is built with CGO_ENABLED=0, so it uses Go's pure
// resolver, which honours /etc/resolv.conf search domains and ndots.
//
// Endpoints:
//
//	GET /          JSON {"service","version","instance","hostname","client"}
//	GET /healthz   200 "ok"
//	GET /call?url= fetches url from inside the container (5 s timeout) and
//	               returns JSON {"url","status","body"}; status 0, "error"
//	               and HTTP 502 on failure
//	GET /resolv    the contents of /etc/resolv.conf (text/plain)
//	PUT /files/NAME, GET /files/NAME  store and read a file under DATA_DIR
//	GET /resolve?name=  looks name up with the container's resolver and
//	               returns JSON {"name","addresses"}
//
// With arguments it is a tool for `berth exec` (the image has nothing
// else): "echo ARGS", "cat" (stdin to stdout), "exit N", "tty" (whether
// stdin is a terminal, and its size), "env", "ls DIR", "stderr ARGS".
//
// Environment: PORT (default 8080), DATA_DIR, BERTH_SERVICE, BERTH_INSTANCE, VERSION
// (overrides the -ldflags "-X main.version=..." value) and FAIL_RATE (0..1:
// that fraction of "GET /" answers 500) and DELAY (a duration "GET /" waits
// before it answers). SIGTERM or SIGINT shut the server down gracefully.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// version is set at build time with -ldflags "-X main.version=v1".
var version = "dev"

type info struct {
	Service  string `json:"service"`
	Version  string `json:"version"`
	Instance string `json:"instance"`
	Hostname string `json:"hostname"`
	// Client is the caller's address as this server sees it.
	Client string `json:"client,omitempty"`
}

type callResult struct {
	URL    string `json:"url"`
	Status int    `json:"status"`
	Body   string `json:"body,omitempty"`
	Error  string `json:"error,omitempty"`
}

func main() {
	if len(os.Args) > 1 && os.Args[1] != "serve" {
		os.Exit(tool(os.Args[1], os.Args[2:]))
	}
	port := envOr("PORT", "8080")
	v := envOr("VERSION", version)
	failRate, _ := strconv.ParseFloat(os.Getenv("FAIL_RATE"), 64)
	delay, _ := time.ParseDuration(os.Getenv("DELAY"))
	host, _ := os.Hostname()
	self := info{
		Service:  os.Getenv("BERTH_SERVICE"),
		Version:  v,
		Instance: os.Getenv("BERTH_INSTANCE"),
		Hostname: host,
	}
	client := &http.Client{Timeout: 5 * time.Second}

	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		if delay > 0 {
			time.Sleep(delay)
		}
		if failRate > 0 && rand.Float64() < failRate {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusInternalServerError)
			json.NewEncoder(w).Encode(map[string]string{"error": "injected failure", "instance": self.Instance, "version": self.Version})
			return
		}
		reply := self
		if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
			reply.Client = host
		}
		writeJSON(w, http.StatusOK, reply)
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok")
	})
	mux.HandleFunc("GET /resolv", func(w http.ResponseWriter, r *http.Request) {
		b, err := os.ReadFile("/etc/resolv.conf")
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write(b)
	})
	// Files under DATA_DIR, for the volume examples and tests.
	dataDir := os.Getenv("DATA_DIR")
	filePath := func(w http.ResponseWriter, r *http.Request) (string, bool) {
		name := r.PathValue("name")
		if dataDir == "" {
			http.Error(w, "DATA_DIR is not set", http.StatusNotFound)
			return "", false
		}
		if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\\") {
			http.Error(w, "bad file name", http.StatusBadRequest)
			return "", false
		}
		return filepath.Join(dataDir, name), true
	}
	mux.HandleFunc("PUT /files/{name}", func(w http.ResponseWriter, r *http.Request) {
		path, ok := filePath(w, r)
		if !ok {
			return
		}
		b, err := io.ReadAll(io.LimitReader(r.Body, 16<<20))
		if err == nil {
			err = os.WriteFile(path, b, 0o644)
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusCreated)
	})
	mux.HandleFunc("GET /files/{name}", func(w http.ResponseWriter, r *http.Request) {
		path, ok := filePath(w, r)
		if !ok {
			return
		}
		b, err := os.ReadFile(path)
		if errors.Is(err, os.ErrNotExist) {
			http.Error(w, "no such file", http.StatusNotFound)
			return
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Write(b)
	})
	mux.HandleFunc("GET /resolve", func(w http.ResponseWriter, r *http.Request) {
		name := r.URL.Query().Get("name")
		if name == "" {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "missing name parameter"})
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		addrs, err := net.DefaultResolver.LookupHost(ctx, name)
		if err != nil {
			writeJSON(w, http.StatusBadGateway, map[string]any{"name": name, "error": err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"name": name, "addresses": addrs})
	})
	mux.HandleFunc("GET /call", func(w http.ResponseWriter, r *http.Request) {
		target := r.URL.Query().Get("url")
		res := callResult{URL: target}
		if target == "" {
			res.Error = "missing url parameter"
			writeJSON(w, http.StatusBadRequest, res)
			return
		}
		req, err := http.NewRequestWithContext(r.Context(), http.MethodGet, target, nil)
		if err == nil {
			var resp *http.Response
			resp, err = client.Do(req)
			if err == nil {
				defer resp.Body.Close()
				var body []byte
				body, err = io.ReadAll(io.LimitReader(resp.Body, 1<<20))
				res.Status = resp.StatusCode
				res.Body = string(body)
			}
		}
		if err != nil {
			res.Status = 0
			res.Error = err.Error()
			writeJSON(w, http.StatusBadGateway, res)
			return
		}
		writeJSON(w, http.StatusOK, res)
	})

	srv := &http.Server{
		Addr:              net.JoinHostPort("", port),
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()
	log.Printf("hello %s listening on :%s (service=%q instance=%q)", v, port, self.Service, self.Instance)

	select {
	case err := <-errc:
		log.Fatalf("hello: %v", err)
	case <-ctx.Done():
	}
	log.Printf("hello: shutting down")
	shutCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutCtx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Printf("hello: shutdown: %v", err)
	}
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

// tool runs one of hello's exec helpers and returns its exit code.
func tool(name string, args []string) int {
	switch name {
	case "echo":
		fmt.Println(strings.Join(args, " "))
	case "stderr":
		fmt.Fprintln(os.Stderr, strings.Join(args, " "))
	case "cat":
		if _, err := io.Copy(os.Stdout, os.Stdin); err != nil {
			fmt.Fprintln(os.Stderr, "cat:", err)
			return 1
		}
	case "exit":
		if len(args) != 1 {
			return 2
		}
		n, _ := strconv.Atoi(args[0])
		return n
	case "tty":
		st, err := os.Stdin.Stat()
		if err == nil && st.Mode()&os.ModeCharDevice != 0 {
			fmt.Println("tty")
		} else {
			fmt.Println("notty")
		}
	case "env":
		for _, e := range os.Environ() {
			fmt.Println(e)
		}
	case "ls":
		dir := "/"
		if len(args) > 0 {
			dir = args[0]
		}
		entries, err := os.ReadDir(dir)
		if err != nil {
			fmt.Fprintln(os.Stderr, "ls:", err)
			return 1
		}
		for _, e := range entries {
			fmt.Println(e.Name())
		}
	default:
		fmt.Fprintf(os.Stderr, "hello: unknown tool %q (echo, stderr, cat, exit, tty, env, ls)\n", name)
		return 127
	}
	return 0
}

# Berth. `make demo` runs the whole thing on this machine; `make test` passes
# the tests. Both install what is missing first (Debian, as root).

SHELL := /bin/bash
export PATH := $(PATH):/usr/local/go/bin
GO ?= go
BIN := bin
IMAGES := images
GOFLAGS_BUILD := -trimpath
# What `berth version` prints: the commit, marked when the tree differs.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)
TEST_TIMEOUT ?= 10m

.PHONY: vendor-ui docs all build images test unit integration chaos demo deps containerd lint h2spec promql-names proto fuzz bench bench-xds bench-startup bench-gateway bench-scheduler bench-dns bench-xds-gateways bench-cp-scale bench-cp-curve clean

all: build

deps:
	@scripts/install-deps.sh

containerd: deps
	@scripts/start-containerd.sh

build:
	$(GO) build $(GOFLAGS_BUILD) -ldflags "-X github.com/berth-dev/berth/internal/buildinfo.version=$(VERSION)" -o $(BIN)/berth ./cmd/berth

# The example app as OCI image tarballs, built without Docker.
images:
	@mkdir -p $(BIN) $(IMAGES)
	CGO_ENABLED=0 $(GO) build $(GOFLAGS_BUILD) -ldflags "-s -w -X main.version=v1" -o $(BIN)/hello-v1 ./examples/hello
	CGO_ENABLED=0 $(GO) build $(GOFLAGS_BUILD) -ldflags "-s -w -X main.version=v2" -o $(BIN)/hello-v2 ./examples/hello
	$(GO) run ./cmd/mkimage -binary $(BIN)/hello-v1 -ref berth.local/hello:v1 -o $(IMAGES)/hello-v1.tar
	$(GO) run ./cmd/mkimage -binary $(BIN)/hello-v2 -ref berth.local/hello:v2 -o $(IMAGES)/hello-v2.tar

# Everything: unit tests, in-process component tests and the end-to-end
# tests on the real containerd, CNI, gateway and DNS. Needs root.
RACE_PKGS := ./controlplane/... ./discovery/... ./dns/... ./xds/... ./gateway/... ./manifests/... ./nodeagent/ ./nodeagent/probe/...

# The dashboard's browser test writes its screenshots to bin/artifacts.
test: containerd lint h2spec promql-names
	BERTH_ARTIFACTS=$(CURDIR)/$(BIN)/artifacts $(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./...
	$(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) $(RACE_PKGS)

# unit: the packages that need neither root nor containerd (the end-to-end
# and runtime tests never skip: without their prerequisites they fail).
unit: h2spec
	$(GO) test -count=1 -short $$($(GO) list ./... | grep -v -e /integration -e /nodeagent/runtime)

integration: containerd promql-names
	BERTH_ARTIFACTS=$(CURDIR)/$(BIN)/artifacts $(GO) test -count=1 -timeout $(TEST_TIMEOUT) -v ./integration/...

# chaos: issue #16's chaos suite in full (integration/chaos_test.go): three
# servers on a three-member etcd, two agents in network namespaces, a
# gateway per server, constant load; kills servers, the leader, quorum, an
# agent, every server for two minutes (and a gateway meanwhile), and cuts a
# node's link, then prints the figures. make test runs its short form.
chaos: containerd
	BERTH_CHAOS=full $(GO) test -count=1 -timeout 30m -v -run '^TestChaos$$' ./integration/

# h2spec, the HTTP/2 conformance suite the gateway's tests run
# (gateway/h2spec_test.go finds it in bin/), from the Go module proxy at
# the versions tools/h2spec/go.mod pins.
h2spec: $(BIN)/h2spec

$(BIN)/h2spec: tools/h2spec/go.mod tools/h2spec/go.sum
	cd tools/h2spec && GOBIN=$(CURDIR)/$(BIN) $(GO) install tool
	@touch $@

# promql-names, Prometheus' own PromQL parser, with which the Grafana
# dashboard's test (integration/grafana_test.go finds it in bin/) reads the
# metric names of every panel and alerting rule; at the version
# tools/promql-names/go.mod pins, a module of its own so Prometheus'
# dependencies do not move the project's.
promql-names: $(BIN)/promql-names

$(BIN)/promql-names: tools/promql-names/go.mod tools/promql-names/go.sum tools/promql-names/main.go
	cd tools/promql-names && GOBIN=$(CURDIR)/$(BIN) $(GO) install .
	@touch $@

# lint: gofmt, go vet, go.mod tidy (direct dependencies listed as such),
# and staticcheck at the version tools/staticcheck/go.mod pins.
lint: $(BIN)/staticcheck
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) mod tidy -diff
	$(BIN)/staticcheck ./...

$(BIN)/staticcheck: tools/staticcheck/go.mod tools/staticcheck/go.sum
	cd tools/staticcheck && GOBIN=$(CURDIR)/$(BIN) $(GO) install tool
	@touch $@

demo: containerd build images
	@scripts/demo.sh

# docs/manifest.md, the manifest field reference, from api/types.go (a
# test fails when it is out of date).
docs:
	$(GO) run ./cmd/gendocs

# vendor-ui: uPlot for the dashboard, from npm at the version and sha512
# scripts/vendor-ui.sh pins, into ui/assets/vendor (checked in: the build
# needs no network). Only to change the version.
vendor-ui:
	@scripts/vendor-ui.sh

proto:
	cd api/pb && protoc -I . -I /usr/include --go_out=. --go_opt=paths=source_relative \
		--go-grpc_out=. --go-grpc_opt=paths=source_relative berth.proto

FUZZTIME ?= 30s
fuzz:
	$(GO) test ./manifests -run '^$$' -fuzz FuzzParse -fuzztime $(FUZZTIME)
	$(GO) test ./dns -run '^$$' -fuzz FuzzServeDNS -fuzztime $(FUZZTIME)
	$(GO) test ./gateway -run '^$$' -fuzz FuzzRequestHead -fuzztime $(FUZZTIME)
	$(GO) test ./gateway -run '^$$' -fuzz FuzzH2Guard -fuzztime $(FUZZTIME)
	$(GO) test ./controlplane/imagecheck -run '^$$' -fuzz FuzzInspect -fuzztime $(FUZZTIME)
	$(GO) test ./nodeagent/logs -run '^$$' -fuzz FuzzParseLine -fuzztime $(FUZZTIME)
	$(GO) test ./gateway -run '^$$' -fuzz FuzzSavedFile -fuzztime $(FUZZTIME) -fuzzminimizetime 2s

# Benchmarks. bench-startup: apply of a 3-replica service to 3 ready
# endpoints, Berth against plain `ctr run` on the same containerd. Needs root.
bench: bench-startup bench-gateway bench-scheduler bench-dns bench-xds bench-xds-gateways bench-cp-scale

bench-startup: containerd build images
	@bench/startup.sh

# bench-gateway: wrk through Berth's gateway, nginx and HAProxy (Debian
# packages, installed if missing) over the same three loopback upstreams,
# each proxy pinned to CPU 0, wrk on CPU 1; prints req/s, p99, CPU/request
# and the ratios to nginx.
bench-gateway:
	@bench/gateway.sh

# bench-dns: Berth's DNS against CoreDNS (file, file+cache) with dnsperf,
# 10,000 services x 3 A over loopback, servers on CPU 0, dnsperf on CPU 1;
# prints qps, CPU per query, the ratios and p99 at half Berth's peak.
bench-dns:
	@bench/dns.sh

# bench-xds: 100 simulated gateways (real gRPC delta ADS streams in a child
# process, each ACKing) on 1,000 services x 10,000 endpoints; times one
# endpoint change -> all 100 ACKs (p50, p99 over 100 changes) and the
# control plane's CPU per change. Loopback only; stops by itself.
# BENCH_XDS_FLAGS=-protocol=sotw measures state-of-the-world streams.
bench-xds:
	$(GO) run ./bench/xdsbench -timeout 5m $(BENCH_XDS_FLAGS)

# bench-xds-gateways: Berth's own gateways (5) on delta against state of the
# world, same snapshot and changes; prints the ratios.
bench-xds-gateways:
	@bench/xds-gateways.sh

# bench-cp-scale: the control plane (embedded etcd, controllers, API, xDS)
# with simulated node agents and gateways (delta ADS) in a child process,
# no containerd: services applied -> all ready, steady-state CPU per
# heartbeat, endpoint changes timed to every node's DNS and every gateway's
# ACK, rolling changes, a scale, one node lost; RSS; the issue's goals
# beside the figures. Loopback only; stops by itself. Runs twice, without
# TLS and with mutual TLS (the plaintext mode exists only in this
# -tags berthbench build), and prints the two side by side.
# BENCH_CP_SCALE_FLAGS changes the size (-nodes, -gateways, -services,
# -replicas, -batch, -paced, -tls); the README gives the 1,000-node run.
bench-cp-scale:
	$(GO) run -tags berthbench ./bench/cpscale -timeout 10m $(BENCH_CP_SCALE_FLAGS)

# bench-cp-curve: the same benchmark (mutual TLS) at 100, 300 and 1,000
# nodes, each with as many simulated gateways and ten instances a node;
# prints how CPU per heartbeat, deploy rate, propagation p99 and RSS grow
# with N, and writes the plot to bench/out/cp-curve.png. About 5 minutes.
BENCH_CP_CURVE ?= 100,300,1000
bench-cp-curve:
	$(GO) run -tags berthbench ./bench/cpscale -timeout 20m -curve $(BENCH_CP_CURVE) -curve-out bench/out/cp-curve.png $(BENCH_CP_SCALE_FLAGS)

clean:
	rm -rf $(BIN) $(IMAGES)

# Scheduler: 5,000 simulated nodes, 1,000 services, 50,000 replicas (pure
# scheduler, no etcd): placements/s, p99 per placement, heap.
bench-scheduler:
	$(GO) test -run '^$$' -bench Schedule5000Nodes -benchtime 3x ./controlplane/scheduler/

# Berth. `make demo` runs the whole thing on this machine; `make test` passes
# the tests. Both install what is missing first (Debian, as root).

SHELL := /bin/bash
export PATH := $(PATH):/usr/local/go/bin
GO ?= go
BIN := bin
IMAGES := images
GOFLAGS_BUILD := -trimpath
TEST_TIMEOUT ?= 10m

.PHONY: all build images test unit integration demo deps containerd lint proto fuzz bench bench-startup clean

all: build

deps:
	@scripts/install-deps.sh

containerd: deps
	@scripts/start-containerd.sh

build:
	$(GO) build $(GOFLAGS_BUILD) -o $(BIN)/berth ./cmd/berth

# The example app as OCI image tarballs, built without Docker.
images:
	@mkdir -p $(BIN) $(IMAGES)
	CGO_ENABLED=0 $(GO) build $(GOFLAGS_BUILD) -ldflags "-s -w -X main.version=v1" -o $(BIN)/hello-v1 ./manifests/examples/hello
	CGO_ENABLED=0 $(GO) build $(GOFLAGS_BUILD) -ldflags "-s -w -X main.version=v2" -o $(BIN)/hello-v2 ./manifests/examples/hello
	$(GO) run ./cmd/mkimage -binary $(BIN)/hello-v1 -ref berth.local/hello:v1 -o $(IMAGES)/hello-v1.tar
	$(GO) run ./cmd/mkimage -binary $(BIN)/hello-v2 -ref berth.local/hello:v2 -o $(IMAGES)/hello-v2.tar

# Everything: unit tests, in-process component tests and the end-to-end
# tests on the real containerd, CNI, gateway and DNS. Needs root.
RACE_PKGS := ./controlplane/... ./discovery/... ./dns/... ./xds/... ./gateway/... ./manifests/... ./nodeagent/probe/...

test: containerd lint
	BERTH_REQUIRE_CONTAINERD=1 $(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./...
	$(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) $(RACE_PKGS)

unit:
	$(GO) test -count=1 -short ./...

integration: containerd
	BERTH_REQUIRE_CONTAINERD=1 $(GO) test -count=1 -timeout $(TEST_TIMEOUT) -v ./integration/...

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

demo: containerd build images
	@scripts/demo.sh

proto:
	cd api/pb && protoc -I . -I /usr/include --go_out=. --go_opt=paths=source_relative \
		--go-grpc_out=. --go-grpc_opt=paths=source_relative berth.proto

FUZZTIME ?= 30s
fuzz:
	$(GO) test ./manifests -run '^$$' -fuzz FuzzParse -fuzztime $(FUZZTIME)
	$(GO) test ./dns -run '^$$' -fuzz FuzzServeDNS -fuzztime $(FUZZTIME)

# Benchmarks. bench-startup: apply of a 3-replica service to 3 ready
# endpoints, Berth against plain `ctr run` on the same containerd. Needs root.
bench: bench-startup

bench-startup: containerd build images
	@bench/startup.sh

clean:
	rm -rf $(BIN) $(IMAGES)

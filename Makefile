# ci: a self-hosted CI service for Python projects.
#   make run    build, get the Python image ready, start ci-server on :8000
#   make test   lint and run every test (e2e tests need a Docker engine)
#   make bench  the benchmarks of BENCHMARKS.md (Docker engine and image needed)

GO          ?= go
IMAGE       ?= ci-python:latest
ADDR        ?= :8000
DATA        ?= ./data
STATICCHECK ?= $(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2
GOBIN       := $(shell $(GO) env GOPATH)/bin

.PHONY: all build install image run test unit lint fuzz bench fmt clean

all: build

build:
	$(GO) build -o bin/ ./cmd/ci ./cmd/ci-server

# install puts ci (and ci-server) where `go install` puts programs.
install:
	$(GO) install ./cmd/ci ./cmd/ci-server
	@case ":$$PATH:" in *":$(GOBIN):"*) ;; *) \
		echo; echo "note: $(GOBIN) is not on your PATH; to use ci from any directory run:"; \
		echo "  export PATH=\"$(GOBIN):\$$PATH\""; echo;; esac

# image builds the local Python+pytest image the server runs tests in
# (idempotent; see scripts/build-image).
image:
	scripts/build-image $(IMAGE)

run: build install image
	./bin/ci-server --addr $(ADDR) --data $(DATA) --image $(IMAGE)

test: lint
	$(GO) test -race -count=1 ./...
	$(MAKE) fuzz

# fuzz runs the upload-intake fuzz test briefly (longer: FUZZTIME=10m).
FUZZTIME ?= 15s
fuzz:
	$(GO) test -run '^$$' -fuzz FuzzValidateZip -fuzztime $(FUZZTIME) ./jobs

# unit runs the tests that need no Docker engine, quickly.
unit:
	$(GO) test -race -count=1 $$($(GO) list ./... | grep -v /e2e)

# bench runs every benchmark of BENCHMARKS.md against the binaries it
# builds (3 to 4 minutes on 2 cores; the server-level ones start their own
# ci-server on a free port): small-job overhead, the dependency cache, the
# store's batched writes, then bench/load (latency, flood, fan-out, upload).
bench: build
	CI_TEST_IMAGE=$(IMAGE) bench/overhead.sh
	CI_TEST_IMAGE=$(IMAGE) bench/deps.sh
	$(GO) test -run xxx -bench . -benchtime 2s ./persistence/
	$(GO) run ./bench/load --bin bin --image $(IMAGE)

lint:
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(STATICCHECK) ./...

fmt:
	gofmt -w .

clean:
	rm -rf bin

# nsflow: build, test, generate.
#
#   make run       the demo on the embedded seed topology for 20 s (root)
#   make seed      bring up examples/seed.yaml, show it, draw it, take it down (root)
#   make test      install what the tests need, then vet and run every test (root)
#   make generate  rebuild the eBPF objects with clang (Debian clang-19)
#   make bench     run the benchmarks whose figures the README quotes

GO      ?= go
BIN     := bin/nsflow
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)
LDFLAGS := -s -w -X github.com/nsflow/nsflow/internal/version.Version=$(VERSION)
CLANG   ?= $(shell command -v clang-19 || command -v clang)
# Debian packages the tests need: gcc and libc6-dev for the race detector
# (cgo); and as tools and independent witnesses:
# clang/llvm to check the committed eBPF objects are fresh, bpftool/iproute2/
# tcpdump as witnesses, iperf3 for bench, prometheus/promtool for the agent's
# end-to-end test, nftables/iptables for the isolation checks, systemd for
# systemd-analyze on the shipped unit.
DEB_PKGS := gcc libc6-dev clang-19 llvm-19 libbpf-dev bpftool iproute2 iperf3 tcpdump prometheus nftables iptables systemd
TEST_TIMEOUT ?= 30m

.PHONY: all build run seed test deps bpffs vet fmt-check generate generate-check bench clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/nsflow

# The main job on the embedded default: topology, agent, traffic and verify
# together on the seed scenarios, then everything taken down again.
run: build bpffs
	./$(BIN) demo --duration 20s

seed: build
	./$(BIN) topology up -f examples/seed.yaml
	./$(BIN) topology show -f examples/seed.yaml
	./$(BIN) topology graph -f examples/seed.yaml
	./$(BIN) topology down -f examples/seed.yaml

# deps installs only what is missing, so a warm machine pays nothing.
deps:
	@missing=""; for p in $(DEB_PKGS); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi
	$(GO) mod download

# The agent and the datapath tests pin maps under /sys/fs/bpf.
bpffs:
	@mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf

vet:
	$(GO) vet ./...

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

generate:
	cd bpf && BPF_CLANG=$(CLANG) $(GO) generate ./...

# Fails when the committed eBPF objects do not match the C source.
generate-check:
	@if [ -z "$(CLANG)" ]; then echo "generate-check: no clang, skipped"; exit 0; fi; \
	if [ ! -d bpf ]; then exit 0; fi; \
	$(MAKE) --no-print-directory generate >/dev/null && \
	git diff --exit-code --stat -- bpf || { echo "committed eBPF output is stale: run make generate"; exit 1; }

# -p 1: the kernel-facing packages share one host; run them one at a time so
# that leak checks and counters see only their own package's objects.
test: deps bpffs fmt-check vet generate-check
	CGO_ENABLED=1 $(GO) test -race -p 1 -count=1 -timeout $(TEST_TIMEOUT) ./...

bench: bpffs
	$(GO) test -run '^$$' -bench . -benchtime 1x -timeout 60m -p 1 \
		./topology/ ./bpf/ ./agent/ ./verify/ ./bench/ ./traffic/

clean:
	rm -rf bin

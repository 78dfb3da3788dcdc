# flock-api: `make run` starts everything on embedded defaults, `make test`
# runs every check CI runs. See README.md.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := build

GO        ?= go
TOOL      := $(GO) tool -modfile=tools/go.mod
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT    ?= $(shell c=$$(git rev-parse --short=12 HEAD 2>/dev/null) && { git diff --quiet HEAD 2>/dev/null && echo $$c || echo $$c-dirty; })
LDFLAGS   := -X github.com/flock-io/flock-api/internal/buildinfo.Version=$(VERSION) \
             -X github.com/flock-io/flock-api/internal/buildinfo.Commit=$(COMMIT)
BIN       := bin/flock-api
SDK       := sdk/typescript
# make image: the OCI image (deploy/README.md). IMAGE=registry/repo:tag also pushes it.
IMAGE           ?=
IMAGE_DIR       ?= build/image
IMAGE_PLATFORMS ?= linux/$(shell $(GO) env GOARCH)
IMAGE_SOURCE    ?= https://github.com/flock-io/flock-api
# The commit's time, so one commit builds one image digest.
IMAGE_CREATED   ?= $(shell git log -1 --format=%cI 2>/dev/null)
export REDOCLY_TELEMETRY := off
export REDOCLY_SUPPRESS_UPDATE_NOTICE := true

.PHONY: build run services generate check-generate sdk test test-go test-deploy image bench bench-devices bench-ingest bench-rollout bench-summary bench-commands bench-streams bench-deltas bench-registry bench-tunnel bench-events clean

build:
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN) .

## run: flock-api --target=all --dev on http://127.0.0.1:8080 (Swagger UI at /docs); loopback only, since dev mode opens the MQTT hooks and the dev OIDC provider
run: build
	scripts/services.sh postgres
	scripts/services.sh builder-tools
	$(BIN) --target=all --dev --http-addr=127.0.0.1:8080 --mqtt-listen=127.0.0.1:1884 --tunnel-listen=127.0.0.1:51820 --proxy-addr=127.0.0.1:8081

## services: install-if-missing and start PostgreSQL, Redis, Mosquitto, ClickHouse; install docker-registry, skopeo, buildah and busybox-static
services:
	scripts/services.sh

node_modules/.package-lock.json: package.json package-lock.json
	npm ci --no-audit --no-fund
	@touch $@

$(SDK)/node_modules/.package-lock.json: $(SDK)/package.json $(SDK)/package-lock.json
	cd $(SDK) && npm ci --no-audit --no-fund
	@touch $@

## generate: rebuild gen/ and the TypeScript SDK's types from openapi/, asyncapi/, queries/ and migrations/
generate: node_modules/.package-lock.json $(SDK)/node_modules/.package-lock.json
	npx --no-install redocly bundle openapi/flock.yaml --output gen/api/openapi.yaml >/dev/null
	npx --no-install redocly lint gen/api/openapi.yaml --format=stylish
	cd gen && $(GO) generate ./...
	node scripts/asyncapi.mjs
	gofmt -w gen/events
	rm -rf gen/asyncapiui && mkdir -p gen/asyncapiui
	cp node_modules/@asyncapi/react-component/browser/standalone/index.js gen/asyncapiui/asyncapi-standalone.js
	cp node_modules/@asyncapi/react-component/browser/standalone/index.js.LICENSE.txt gen/asyncapiui/asyncapi-standalone.js.LICENSE.txt
	cp node_modules/@asyncapi/react-component/styles/default.min.css gen/asyncapiui/asyncapi.css
	cp node_modules/@asyncapi/react-component/LICENSE gen/asyncapiui/LICENSE
	rm -rf gen/swaggerui && mkdir -p gen/swaggerui
	cp $(addprefix node_modules/swagger-ui-dist/,swagger-ui-bundle.js swagger-ui-bundle.js.LICENSE.txt \
	  swagger-ui.css favicon-32x32.png favicon-16x16.png oauth2-redirect.html oauth2-redirect.js LICENSE NOTICE) gen/swaggerui/
	cd $(SDK) && npm run --silent generate

## check-generate: regenerate and fail when anything differs from what is committed
check-generate: generate
	@if [ -n "$$(git status --porcelain -- gen $(SDK)/src)" ]; then \
	  echo "generated code is out of date with its sources; run make generate and commit:"; \
	  git status --porcelain -- gen $(SDK)/src; git --no-pager diff --stat -- gen $(SDK)/src; exit 1; fi
	@echo "generated code matches its sources"

## sdk: compile the TypeScript SDK
sdk: $(SDK)/node_modules/.package-lock.json
	cd $(SDK) && npm run --silent build

## test: everything CI runs
test: services check-generate sdk test-go test-deploy

test-go:
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 15m ./...

## image: the flock-api OCI image, built without a Docker daemon, in $(IMAGE_DIR)/oci (OCI layout) and $(IMAGE_DIR)/flock-api.tar
image:
	cd deploy && $(GO) run ./cmd/flock-image --go '$(GO)' --src .. --out '$(abspath $(IMAGE_DIR))' \
	  --platforms '$(IMAGE_PLATFORMS)' --ldflags '$(LDFLAGS)' --version '$(VERSION)' --revision '$(COMMIT)' \
	  --source '$(IMAGE_SOURCE)' $(if $(IMAGE_CREATED),--created '$(IMAGE_CREATED)') $(if $(IMAGE),--push '$(IMAGE)')

## test-deploy: the Helm chart rendered and validated against the Kubernetes types; make image built and read back
test-deploy:
	cd deploy && $(GO) vet ./... && $(GO) test -count=1 -timeout 15m ./...

## bench: the Go benchmarks the issues quote (not part of test)
bench:
	$(GO) test -run '^$$' -bench . -benchmem ./internal/app/ ./internal/auth/... ./internal/devicetoken/

## bench-devices: 100k devices: list through the API vs bare SQL, target-state rate
bench-devices: services
	$(GO) run ./bench/devices

## bench-ingest: MQTT fan-in vs end-to-end ingest, publish-to-Kafka latency, 10k connections
bench-ingest: services
	$(GO) run ./bench/ingest

## bench-rollout: 100k-device rollout in 5 groups: reports applied/s vs a bare consumer, group-to-group latency, target-state rate, takeover after kill -9
bench-rollout: services
	$(GO) run ./bench/rollout

## bench-summary: fleet summary of 100k devices through the API while devices change (p50/p99) vs counters and a full GROUP BY bare; the counter triggers' cost to the ingester's batch updates
bench-summary: services
	$(GO) run ./bench/summary

## bench-commands: device commands on --target=all with simulated devices: created to delivered and to completed (p50/p99) per type
bench-commands: services
	$(GO) run ./bench/commands

## bench-tunnel: remote access over WireGuard (wireguard-go + netstack on both ends): a 100 MB download through the proxy and the tunnel WebSocket vs loopback TCP, added round-trip latency; and the wgtunnel benchmarks (handshakes/s, memory per idle peer)
bench-tunnel: services
	$(GO) run ./bench/tunnel
	$(GO) test -run '^$$' -bench Handshakes -benchtime=5s ./internal/wgtunnel/
	$(GO) test -run '^$$' -bench IdlePeers -benchtime=3x ./internal/wgtunnel/

## bench-events: the events-gateway: deliveries/s to 100 webhook receivers vs a bare loop (healthy and with 10% timing out), MQTT-to-webhook latency, how far dead endpoints delay the others
bench-events: services
	$(GO) run ./bench/events

## bench-deltas: layer deltas (internal/layerdelta) on npm, Go binary and Go source layer pairs vs whole-tar bsdiff, xdelta3 -9, zstd -19 --long=31 --patch-from: size, time, peak RSS
bench-deltas:
	scripts/services.sh delta-tools
	$(GO) run ./bench/deltas

## bench-registry: layer pull throughput through the registry-proxy vs straight from a Distribution registry (docker-registry)
bench-registry: services
	$(GO) run ./bench/registry

## bench-streams: 10k SSE clients over 1,000 organisations while 9,000 MQTT devices change state 2,000 times/s (broker, ingester, Kafka, hub): delivered vs expected, MQTT publish to client p50/p99, memory per idle stream, vs a bare loop on the same sockets (-source kafka skips MQTT)
bench-streams: services
	$(GO) run ./bench/streams

clean:
	rm -rf bin $(SDK)/dist

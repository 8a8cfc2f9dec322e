# AsyncUDP: `make demo` runs the main example, `make test` runs the tests.
# Both first install libuv1-dev and pkg-config when they are missing (with sudo when not root).
SWIFT ?= swift

.PHONY: deps build demo test test-tsan clean

deps:
	@scripts/install-deps.sh

build: deps
	$(SWIFT) build

demo: deps
	$(SWIFT) run -c release udp-echo

test: deps
	$(SWIFT) test --disable-xctest

test-tsan: deps
	$(SWIFT) test --disable-xctest --sanitize=thread --scratch-path .build-tsan

clean:
	rm -rf .build .build-tsan

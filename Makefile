# AsyncUDP: `make demo` runs the main example, `make test` runs the tests.
# Both first install libuv1-dev and pkg-config when they are missing (with sudo when not root).
SWIFT ?= swift

.PHONY: deps build demo test test-tsan bench clean

deps:
	@.ci/install-deps

build: deps
	$(SWIFT) build

demo: deps
	$(SWIFT) run -c release udp-echo

test: deps
	$(SWIFT) test --disable-xctest

test-tsan: deps
	$(SWIFT) test --disable-xctest --sanitize=thread --scratch-path .build-tsan

bench: deps
	cd Benchmarks && ./run.sh

clean:
	rm -rf .build .build-tsan

# AsyncUDP: `make demo` runs the main example, `make test` runs the tests.
# Both first install libuv1-dev, pkg-config and dnsmasq-base when they are missing (with sudo when
# not root; see .ci/install-deps).
SWIFT ?= swift

.PHONY: deps build demo test test-release test-tsan docs bench clean

deps:
	@.ci/install-deps

build: deps
	$(SWIFT) build

demo: deps
	$(SWIFT) run -c release udp-echo

test: deps
	$(SWIFT) test --disable-xctest

# The suite built with optimisation: races and ordering bugs often hide in debug builds.
test-release: deps
	$(SWIFT) test -c release --disable-xctest --scratch-path .build-release

test-tsan: deps
	$(SWIFT) test --disable-xctest --sanitize=thread --scratch-path .build-tsan

# DocC for the library products, as one archive; any warning (a broken symbol link, an
# undocumented parameter) fails. Output: .build/plugins/Swift-DocC/outputs/.
DOCC_TARGETS ?= --target UVCore --target AsyncUDP --target AsyncUDPTesting
docs: deps
	$(SWIFT) package --disable-sandbox generate-documentation $(DOCC_TARGETS) \
		--enable-experimental-combined-documentation --warnings-as-errors

bench: deps
	cd Benchmarks && ./run.sh

clean:
	rm -rf .build .build-release .build-tsan .build-asan .build-soak .build-leaks Benchmarks/.build

# Reliability (issue 6): AddressSanitizer suite, leak check, soak.
.PHONY: test-asan check-leaks soak

# Leak detection is off for the test process (Foundation and Swift Testing keep allocations
# that LeakSanitizer reports); `make check-leaks` is the leak check. See .ci/asan-suppressions.txt.
test-asan: deps
	ASAN_OPTIONS="suppressions=$(CURDIR)/.ci/asan-suppressions.txt:detect_leaks=0:$$ASAN_OPTIONS" \
	$(SWIFT) test --disable-xctest --sanitize=address --scratch-path .build-asan

# LeakSanitizer (in the AddressSanitizer runtime) over `reliability-tool leak-check`.
check-leaks: deps
	.ci/check-leaks

# 60 s flood of a slow consumer; not part of CI. SOAK_SECONDS=n to change the length.
soak: deps
	.ci/soak

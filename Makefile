# Bagou: one Makefile for the server, its tools, tests and benchmarks.
#
#   make              build build/bagou-server (and bagou-bench)
#   make deps         install missing Debian packages, build libwebsockets
#   make run          deps + build + start standalone on :9000
#   make test         deps + every test (unit, fuzz corpora, integration,
#                     sanitizer builds of the unit tests)
#   make test-integration-tsan   the integration suite against the
#                     ThreadSanitizer build of the server
#   make test-sanitizers-full    both: ASan+UBSan, then TSan
#   make bench        the load benchmarks of bench/
#   make SANITIZER=address|undefined|thread ...   build into build/<san>/
#   V=1               show the commands

SANITIZER ?=
BUILD     := build
LWS_DIR   := $(BUILD)/lws
LWS_LIB   := $(LWS_DIR)/lib/libwebsockets.a
LWS_VER   := 4.1.6-3

ifeq ($(SANITIZER),)
OUT       := $(BUILD)
SANFLAGS  :=
OPT       ?= -O2
else
OUT       := $(BUILD)/$(SANITIZER)
SANFLAGS  := -fsanitize=$(SANITIZER) -fno-omit-frame-pointer
OPT       ?= -O1
endif

ifeq ($(V),1)
Q :=
else
Q := @
endif

CC       ?= cc
CFLAGS   := -std=gnu11 $(OPT) -g -Wall -Wextra -Werror -Wshadow \
            -Wstrict-prototypes -Wmissing-prototypes -Wno-unused-parameter \
            -D_GNU_SOURCE -DCK_USE_CC_BUILTINS=1 -I. -I$(LWS_DIR)/include \
            -pthread -MMD -MP $(SANFLAGS) $(EXTRA_CFLAGS)
LDFLAGS  := -pthread $(SANFLAGS)
LIBS     := $(LWS_LIB) -levent -lrabbitmq -ljwt -lssl -lcrypto -lz -lcap \
            -ljansson -linih -lm

# Packages: what building needs, and what the tests add.
BUILD_PKGS := gcc make pkg-config cmake dpkg-dev patch ca-certificates \
              libevent-dev libjansson-dev libck-dev libinih-dev \
              libssl-dev libcap-dev zlib1g-dev librabbitmq-dev libjwt-dev
TEST_PKGS  := libcmocka-dev python3 python3-websockets python3-pytest curl \
              rabbitmq-server python3-pika python3-kombu python3-celery \
              python3-jwt chromium python3-prometheus-client

LIB_SRC  := $(wildcard common/*.c) \
            $(filter-out amqp/bagou_broadcast.c,$(wildcard amqp/*.c)) \
            $(wildcard handlers/*.c) \
            $(filter-out server/main.c,$(wildcard server/*.c))
LIB_OBJ  := $(LIB_SRC:%.c=$(OUT)/obj/%.o) $(OUT)/obj/server/bagou_js.o
SRV_OBJ  := $(OUT)/obj/server/main.o
BENCH_OBJ := $(patsubst %.c,$(OUT)/obj/%.o,$(wildcard bench/*.c))
UNIT_SRC := $(wildcard tests/unit/test_*.c)
UNIT_BIN := $(UNIT_SRC:tests/unit/%.c=$(OUT)/tests/%)
FUZZ_SRC := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_BIN := $(FUZZ_SRC:tests/fuzz/%.c=$(OUT)/tests/%)

.PHONY: all deps packages test-packages run test test-unit test-fuzz \
        test-integration test-js js-packages test-sanitizers fuzz bench \
        test-integration-asan test-integration-tsan test-sanitizers-full \
        test-integration-memory \
        clean

BROADCAST_BIN := $(if $(wildcard amqp/bagou_broadcast.c),$(OUT)/bagou-broadcast)

all: $(OUT)/bagou-server $(BROADCAST_BIN) $(OUT)/bagou-bench

# ---------------------------------------------------------------- deps
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# Installs only what is missing; apt-get update runs first, once per call.
define apt_install
	$(Q)missing=""; for p in $(1); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' \
	    || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "  APT    $$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
	    --no-install-recommends $$missing >/dev/null; fi
endef

packages:
	$(call apt_install,$(BUILD_PKGS))

test-packages: packages
	$(call apt_install,$(TEST_PKGS))

deps: packages $(LWS_LIB)

# libwebsockets 4.1.6 from Debian's own source package, built with libevent
# (Debian's binary package has no libevent support), with our patches from
# deps/lws/ on top (see their headers) and without HTTP/2. A private sources
# list under build/, pointing at the mirror the system already uses, keeps
# the system's apt configuration untouched. The stamp holds the version, the
# cmake flags and the patches' checksum: when any changes, an existing
# checkout rebuilds libwebsockets by itself.
LWS_PATCHES := $(sort $(wildcard deps/lws/*.patch))
LWS_CMAKE := -DLWS_WITH_LIBEVENT=ON -DLWS_WITH_EVLIB_PLUGINS=OFF \
	-DLWS_WITH_SHARED=OFF -DLWS_WITH_STATIC=ON -DLWS_WITHOUT_TESTAPPS=ON \
	-DLWS_WITHOUT_EXTENSIONS=ON -DLWS_WITH_HTTP2=OFF -DDISABLE_WERROR=ON \
	-DLWS_WITHOUT_CLIENT=ON -DLWS_WITH_UDP=OFF -DLWS_ROLE_RAW_FILE=OFF \
	-DCMAKE_BUILD_TYPE=Release
LWS_CONFIG := $(LWS_VER) $(LWS_CMAKE) \
	$(firstword $(shell cat $(LWS_PATCHES) /dev/null | sha256sum))
LWS_STAMP := $(BUILD)/lws-config.stamp

$(LWS_STAMP): FORCE
	@mkdir -p $(BUILD)
	$(Q)echo '$(LWS_CONFIG)' | cmp -s - $@ || echo '$(LWS_CONFIG)' > $@

$(LWS_LIB): $(LWS_STAMP)
	$(Q)$(MAKE) --no-print-directory packages
	@echo "  LWS    libwebsockets $(LWS_VER) from Debian source (once)"
	$(Q)set -e; top=$$(pwd); apt=$$top/$(BUILD)/apt; \
	mkdir -p $$apt/lists/partial $(BUILD)/src $(BUILD)/lws-build; \
	uri=$$(sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/*.sources \
	  2>/dev/null | head -n1 | cut -d' ' -f1); \
	[ -n "$$uri" ] || uri=$$(awk '$$1 == "deb" {print ($$2 ~ /^\[/ ? $$3 : $$2); exit}' \
	  /etc/apt/sources.list 2>/dev/null); \
	suite=$$(. /etc/os-release && echo $$VERSION_CODENAME); \
	[ -n "$$uri" ] && [ -n "$$suite" ] || { echo "cannot find the Debian mirror in /etc/apt"; exit 1; }; \
	echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $$uri $$suite main" > $$apt/sources.list; \
	A="-o Dir::Etc::SourceList=$$apt/sources.list -o Dir::Etc::SourceParts=/dev/null -o Dir::State::Lists=$$apt/lists"; \
	apt-get $$A update -qq >$(BUILD)/lws-fetch.log 2>&1; \
	rm -rf $(BUILD)/src/libwebsockets-4.1.6 $(BUILD)/lws-build $(LWS_DIR); \
	mkdir -p $(BUILD)/lws-build; \
	(cd $(BUILD)/src && apt-get $$A source libwebsockets=$(LWS_VER)) >>$(BUILD)/lws-fetch.log 2>&1 \
	  || { cat $(BUILD)/lws-fetch.log; exit 1; }; \
	for p in $(LWS_PATCHES); do \
	  echo "  PATCH  $$p"; \
	  patch -d $(BUILD)/src/libwebsockets-4.1.6 -p1 -s --no-backup-if-mismatch \
	    < $$p || exit 1; \
	done; \
	cd $(BUILD)/lws-build && cmake ../src/libwebsockets-4.1.6 \
	  $(LWS_CMAKE) -DCMAKE_INSTALL_PREFIX=$$top/$(LWS_DIR) \
	  >../lws-cmake.log 2>&1 || { cat ../lws-cmake.log; exit 1; }; \
	$(MAKE) -j2 >../lws-make.log 2>&1 || { tail -50 ../lws-make.log; exit 1; }; \
	$(MAKE) install >../lws-install.log 2>&1

# ---------------------------------------------------------------- build
$(OUT)/obj/%.o: %.c | $(LWS_LIB)
	@mkdir -p $(dir $@)
	@echo "  CC     $<"
	$(Q)$(CC) $(CFLAGS) -c -o $@ $<

# The browser client is compiled into the binary so /bagou.js always
# matches the server that serves it: the committed minified build (see
# js-dist) and the readable source.
$(OUT)/obj/server/bagou_js.o: server/bagou_js.S js/bagou.js \
                              js/dist/bagou.min.js js/dist/bagou.min.js.map
	@mkdir -p $(dir $@)
	@echo "  AS     $<"
	$(Q)$(CC) -c -o $@ $<

$(OUT)/bagou-server: $(SRV_OBJ) $(LIB_OBJ) $(LWS_LIB)
	@echo "  LD     $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $(SRV_OBJ) $(LIB_OBJ) $(LIBS)

$(OUT)/bagou-broadcast: $(OUT)/obj/amqp/bagou_broadcast.o $(LIB_OBJ) \
                        $(LWS_LIB)
	@echo "  LD     $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $< $(LIB_OBJ) $(LIBS)

$(OUT)/bagou-bench: $(BENCH_OBJ)
	@echo "  LD     $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $(BENCH_OBJ) -levent -lm

$(OUT)/tests/test_%: tests/unit/test_%.c $(LIB_OBJ) $(LWS_LIB)
	@mkdir -p $(dir $@)
	@echo "  TEST   $@"
	$(Q)$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(LIB_OBJ) $(LIBS) -lcmocka

# Fuzz drivers build with a plain main() that replays files, so make test
# can run the corpora without libFuzzer; `make fuzz` builds them for real.
$(OUT)/tests/fuzz_%: tests/fuzz/fuzz_%.c tests/fuzz/replay.c $(LIB_OBJ)
	@mkdir -p $(dir $@)
	@echo "  FUZZ   $@"
	$(Q)$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< tests/fuzz/replay.c $(LIB_OBJ) $(LIBS)

# ---------------------------------------------------------------- run
run: deps all
	@echo "Bagou standalone on $${BAGOU_SERVER_LISTEN:-0.0.0.0:9000}," \
	      "API on $${BAGOU_HTTP_API_LISTEN:-127.0.0.1:9001}; Ctrl-C stops it"
	$(Q)exec ./$(OUT)/bagou-server --config etc/bagou.ini --amqp-url none

# ---------------------------------------------------------------- tests
# The integration suite runs once, against the ASan+UBSan build (make
# test-integration runs it against the plain one); the memory-sensitive
# files also run against the plain build.
test: test-packages deps all check-includes test-unit test-fuzz \
      test-integration-asan \
      test-integration-memory test-js test-sanitizers test-promises
	@echo "make test: all suites passed"

test-unit: $(UNIT_BIN)
	$(Q)set -e; for t in $(UNIT_BIN); do echo "  RUN    $$t"; ./$$t; done

test-fuzz: $(FUZZ_BIN)
	$(Q)set -e; for t in $(FUZZ_BIN); do n=$${t##*/fuzz_}; \
	  echo "  REPLAY tests/fuzz/corpus/$$n"; \
	  ./$$t tests/fuzz/corpus/$$n; done

# Two passes: every file but IT_SERIAL on IT_JOBS pytest-xdist workers
# (whole files per worker: module fixtures and a file's order stay as
# they are; each worker has its own session broker), then the IT_SERIAL
# files alone, whose figures (RSS, a canary's latency, publishers that
# must outpace readers) need the CPUs to themselves. Both passes run;
# either fails it.
test-integration: $(OUT)/bagou-server $(BROADCAST_BIN)
	$(Q)export BAGOU_BIN=$(abspath $(OUT)/bagou-server) $(SAN_ENV) \
	  BAGOU_START_TIMEOUT=$(BAGOU_START_TIMEOUT) \
	  BAGOU_SANITIZER=$(SANITIZER); rc=0; \
	if [ -n "$(strip $(IT_PAR))" ]; then \
	  /usr/bin/python3 -m pytest -q -p no:cacheprovider \
	    $(if $(filter-out 0 1,$(IT_JOBS)),-n $(IT_JOBS) --dist loadfile,-p no:xdist) \
	    $(IT_PAR) $(if $(IT_WHOLE),$(addprefix --ignore=,$(IT_SERIAL))) \
	    || rc=1; fi; \
	if [ -n "$(strip $(IT_SER))" ]; then \
	  /usr/bin/python3 -m pytest -q -p no:cacheprovider -p no:xdist \
	    $(IT_SER) || rc=1; fi; \
	exit $$rc

# Which integration tests a run takes (all by default), on how many
# parallel workers, and which files run alone after the others.
IT_TESTS  ?= tests/integration
IT_JOBS   ?= 2
IT_SERIAL ?= tests/integration/test_attacks.py tests/integration/test_link.py \
             tests/integration/test_limits.py \
             tests/integration/test_resources.py
IT_WHOLE  = $(filter tests/integration tests/integration/,$(IT_TESTS))
IT_SER    = $(if $(IT_WHOLE),$(IT_SERIAL),$(filter $(IT_SERIAL),$(IT_TESTS)))
IT_PAR    = $(filter-out $(IT_SERIAL),$(IT_TESTS))

# The memory figures of the attack and resource tests, against the plain
# build (make test runs the whole suite under ASan+UBSan, where RSS says
# nothing about the server's own memory).
test-integration-memory: $(OUT)/bagou-server $(BROADCAST_BIN)
	$(Q)$(MAKE) --no-print-directory test-integration \
	  IT_TESTS="tests/integration/test_attacks.py tests/integration/test_resources.py"

# What the sanitizers do when the integration suite runs a sanitizer
# build: every report ends up in the server's log, which the fixtures
# scan (tests/integration/support.py), and a leak makes the exit status
# non-zero, which the fixtures check too. Servers under a sanitizer start
# slower, hence the longer start-up bound.
BAGOU_START_TIMEOUT ?= 10
SAN_ENV := ASAN_OPTIONS=detect_leaks=1 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=0 \
  LSAN_OPTIONS=suppressions=$(abspath tests/lsan.supp) \
  TSAN_OPTIONS="halt_on_error=0 exitcode=66 suppressions=$(abspath tests/tsan.supp)"

# The whole integration suite against the server built with
# AddressSanitizer + UndefinedBehaviorSanitizer (part of make test), and
# against the ThreadSanitizer build (make test-integration-tsan): the
# acceptor, the workers and the bus thread under real traffic.
test-integration-asan: deps
	$(Q)$(MAKE) --no-print-directory SANITIZER=address,undefined \
	  BAGOU_START_TIMEOUT=30 test-integration

test-integration-tsan: deps
	$(Q)$(MAKE) --no-print-directory SANITIZER=thread \
	  BAGOU_START_TIMEOUT=30 test-integration

# Both (issue 8's name for it): the whole integration suite under
# ASan+UBSan, then under TSan.
test-sanitizers-full: test-integration-asan test-integration-tsan

# The browser client: node's test runner against the real server, then
# the end-to-end test in Debian's headless chromium (playwright-core, no
# browser download). npm ci installs the pinned dev dependencies once.
test-js: $(OUT)/bagou-server
	$(Q)command -v node >/dev/null && command -v npm >/dev/null || \
	  $(MAKE) --no-print-directory js-packages
	$(Q)cd js && { [ -d node_modules ] && \
	  [ node_modules/.package-lock.json -nt package-lock.json ] || \
	  npm ci --no-audit --no-fund --loglevel=error; }
	$(Q)cd js && BAGOU_BIN=$(abspath $(OUT)/bagou-server) npm test --silent
	$(Q)cd js && BAGOU_BIN=$(abspath $(OUT)/bagou-server) \
	  npm run e2e --silent

js-packages:
	$(call apt_install,nodejs npm)

# The unit tests again under AddressSanitizer (all) and ThreadSanitizer
# (the modules whose objects cross threads).
test-sanitizers:
	$(Q)$(MAKE) --no-print-directory SANITIZER=address test-unit test-fuzz
	$(Q)$(MAKE) --no-print-directory SANITIZER=thread \
	  $(BUILD)/thread/tests/test_ring $(BUILD)/thread/tests/test_msg
	$(Q)export TSAN_OPTIONS="halt_on_error=1 suppressions=$(abspath tests/tsan.supp)"; \
	  ./$(BUILD)/thread/tests/test_ring && ./$(BUILD)/thread/tests/test_msg

fuzz:
	$(Q)$(MAKE) --no-print-directory CC=clang SANITIZER=fuzzer,address \
	  $(FUZZ_BIN:$(OUT)/%=$(BUILD)/fuzzer,address/%)

bench: deps all
	$(Q)BAGOU_BIN=$(abspath $(OUT)/bagou-server) \
	  BAGOU_BENCH=$(abspath $(OUT)/bagou-bench) bench/run.sh

clean:
	rm -rf $(BUILD)/obj $(BUILD)/tests $(BUILD)/bagou-* \
	  $(BUILD)/address $(BUILD)/undefined $(BUILD)/thread \
	  "$(BUILD)/address,undefined" \
	  "$(BUILD)/fuzzer,address"

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)

# Every promise of README.md, docs/PROTOCOL.md and docs/client.md has a
# row in docs/PROMISES.md naming the tests that pin it; this fails when a
# named test does not exist or a row is UNTESTED without a reason.
.PHONY: test-promises
test-promises:
	$(Q)/usr/bin/python3 tests/check_promises.py

# Rules that must always run (the libwebsockets stamp checks itself).
FORCE:
.PHONY: FORCE

# ---------------------------------------------------------------- python
# The Python package (python/) installed with pip into a venv that sees
# Debian's packages, tested against the real server and RabbitMQ with
# Debian's Django 3.2 and with Django 4.2 LTS from bookworm-backports.
# 4.2 is fetched with a private sources list under build/ and unpacked
# into build/django42 (dpkg -x): the system's apt setup is not touched.
PY_PKGS    := python3-django python3-venv python3-setuptools python3-wheel \
              python3-pip python3-pika python3-pytest python3-websockets \
              python3-mypy chromium
DJANGO42   := $(BUILD)/django42/usr/lib/python3/dist-packages
VENV       := $(BUILD)/venv

.PHONY: test-python python-packages
test: test-python

python-packages:
	$(call apt_install,$(PY_PKGS) rabbitmq-server)

$(DJANGO42)/django/__init__.py:
	$(Q)$(MAKE) --no-print-directory python-packages
	@echo "  APT    python3-django from bookworm-backports (once)"
	$(Q)set -e; top=$$(pwd); apt=$$top/$(BUILD)/apt-backports; \
	mkdir -p $$apt/lists/partial $$apt/archives/partial; \
	uri=$$(sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/*.sources \
	  2>/dev/null | head -n1 | cut -d' ' -f1); \
	[ -n "$$uri" ] || uri=$$(awk '$$1 == "deb" {print ($$2 ~ /^\[/ ? $$3 : $$2); exit}' \
	  /etc/apt/sources.list 2>/dev/null); \
	suite=$$(. /etc/os-release && echo $$VERSION_CODENAME); \
	[ -n "$$uri" ] && [ -n "$$suite" ] || { echo "cannot find the Debian mirror in /etc/apt"; exit 1; }; \
	echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $$uri $$suite-backports main" > $$apt/sources.list; \
	A="-o Dir::Etc::SourceList=$$apt/sources.list -o Dir::Etc::SourceParts=/dev/null -o Dir::State::Lists=$$apt/lists -o Dir::Cache::Archives=$$apt/archives"; \
	apt-get $$A update -qq >$(BUILD)/django42-fetch.log 2>&1; \
	rm -f $$apt/python3-django_*.deb; \
	(cd $$apt && apt-get $$A download python3-django/$$suite-backports) \
	  >>$(BUILD)/django42-fetch.log 2>&1 || { cat $(BUILD)/django42-fetch.log; exit 1; }; \
	rm -rf $(BUILD)/django42; dpkg -x $$apt/python3-django_*.deb $(BUILD)/django42; \
	test -f $@

$(VENV)/bin/python:
	$(Q)$(MAKE) --no-print-directory python-packages
	$(Q)/usr/bin/python3 -m venv --system-site-packages $(VENV)

# tests/python on 2 xdist workers, whole files each (a broker per worker).
PY_JOBS ?= -n 2 --dist loadfile
test-python: $(OUT)/bagou-server $(VENV)/bin/python $(DJANGO42)/django/__init__.py
	@echo "  MYPY   python/bagou"
	$(Q)cd python && /usr/bin/python3 -m mypy \
	  --cache-dir $(abspath $(BUILD)/mypy-cache) bagou
	@echo "  PIP    ./python into $(VENV)"
	$(Q)$(VENV)/bin/pip install -q --no-index --no-build-isolation \
	  --force-reinstall --no-deps ./python; rm -rf python/build python/*.egg-info
	@echo "  PYTEST tests/python (Debian's Django 3.2)"
	$(Q)BAGOU_BIN=$(abspath $(OUT)/bagou-server) BAGOU_EXPECT_DJANGO=3.2 \
	  BAGOU_EXPECT_INSTALLED=1 \
	  $(VENV)/bin/python -m pytest -q -p no:cacheprovider $(PY_JOBS) tests/python
	@echo "  PYTEST tests/python (Django 4.2 from bookworm-backports)"
	$(Q)BAGOU_BIN=$(abspath $(OUT)/bagou-server) BAGOU_EXPECT_DJANGO=4.2 \
	  BAGOU_EXPECT_INSTALLED=1 PYTHONPATH=$(abspath $(DJANGO42)) \
	  $(VENV)/bin/python -m pytest -q -p no:cacheprovider $(PY_JOBS) tests/python

# The minified client the server embeds (js/dist/bagou.min.js and its
# map), rebuilt with the pinned terser after editing js/bagou.js; the
# outputs are committed so building the server needs no node, and
# js/test/dist.test.js (make test-js) fails when they are stale.
.PHONY: js-dist
js-dist:
	$(Q)cd js && { [ -d node_modules ] && \
	  [ node_modules/.package-lock.json -nt package-lock.json ] || \
	  npm ci --no-audit --no-fund --loglevel=error; }
	$(Q)cd js && npm run dist --silent

# ---------------------------------------------------------------- install
# make install [PREFIX=/usr/local] [DESTDIR=]: the binaries, the systemd
# unit (its paths rewritten for BINDIR and SYSCONFDIR), the man page,
# bagou.js (the minified client the server serves, its source map, and
# the readable source as bagou.src.js) and a copy of the default ini. The ini goes to
# $(SYSCONFDIR)/bagou/bagou.ini, /etc/bagou by default whatever PREFIX is
# (where the unit and the docs look); an existing one is kept, never
# overwritten (the new defaults are in share/bagou/bagou.ini.example).
PREFIX     ?= /usr/local
BINDIR     ?= $(PREFIX)/bin
SYSCONFDIR ?= /etc
DATADIR    ?= $(PREFIX)/share/bagou
MANDIR     ?= $(PREFIX)/share/man
UNITDIR    ?= $(PREFIX)/lib/systemd/system

# tests/integration/test_service.py renders the man page (man -l) and
# scores the unit (systemd-analyze security --offline=true).
TEST_PKGS  += man-db systemd

.PHONY: install
install: $(OUT)/bagou-server $(BROADCAST_BIN)
	@echo "  INSTALL $(DESTDIR)$(PREFIX)"
	$(Q)set -e; d='$(DESTDIR)'; \
	install -d "$$d$(BINDIR)" "$$d$(DATADIR)" "$$d$(MANDIR)/man8" \
	  "$$d$(UNITDIR)" "$$d$(SYSCONFDIR)/bagou"; \
	install -m 755 $(OUT)/bagou-server $(BROADCAST_BIN) "$$d$(BINDIR)/"; \
	install -m 644 js/dist/bagou.min.js "$$d$(DATADIR)/bagou.js"; \
	install -m 644 js/dist/bagou.min.js.map "$$d$(DATADIR)/bagou.js.map"; \
	install -m 644 js/bagou.js "$$d$(DATADIR)/bagou.src.js"; \
	install -m 644 etc/bagou.ini "$$d$(DATADIR)/bagou.ini.example"; \
	gzip -9nc docs/man/bagou-server.8 > "$$d$(MANDIR)/man8/bagou-server.8.gz"; \
	chmod 644 "$$d$(MANDIR)/man8/bagou-server.8.gz"; \
	sed -e 's|/usr/local/bin/|$(BINDIR)/|g' \
	    -e 's|/etc/bagou/|$(SYSCONFDIR)/bagou/|g' etc/bagou.service \
	  > "$$d$(UNITDIR)/bagou.service"; \
	chmod 644 "$$d$(UNITDIR)/bagou.service"; \
	if [ -e "$$d$(SYSCONFDIR)/bagou/bagou.ini" ]; then \
	  echo "  KEEP   $$d$(SYSCONFDIR)/bagou/bagou.ini (the new defaults:" \
	       "$(DATADIR)/bagou.ini.example)"; \
	else install -m 644 etc/bagou.ini "$$d$(SYSCONFDIR)/bagou/bagou.ini"; fi

# ---------------------------------------------------------------- stress
# The long forms of tests/integration/test_attacks.py (docs/STRESS.md):
# each starts its own server on 127.0.0.1 and prints a JSON report.
# Run them alone on the machine: they measure latency.
STRESS_RUN = BAGOU_BIN=$(abspath $(OUT)/bagou-server) nice \
  /usr/bin/python3 tests/stress/stress.py

.PHONY: stress stress-churn stress-slow stress-soak fuzz-run

stress: stress-churn stress-slow stress-soak

stress-churn: $(OUT)/bagou-server
	$(Q)$(STRESS_RUN) reset --conns 15000 --rounds 3

stress-slow: $(OUT)/bagou-server
	$(Q)$(STRESS_RUN) slow --conns 2000

stress-soak: $(OUT)/bagou-server
	$(Q)$(STRESS_RUN) soak --seconds 600 --csv $(BUILD)/stress/soak.csv

# Every fuzzer FUZZ_RUNS executions from its committed corpus (new inputs
# go to build/fuzz-work/, not the corpus; see docs/STRESS.md to merge).
FUZZ_RUNS ?= 10000000
fuzz-run: fuzz
	$(Q)set -e; for t in $(FUZZ_SRC:tests/fuzz/fuzz_%.c=%); do \
	  mkdir -p $(BUILD)/fuzz-work/$$t; echo "  FUZZ   $$t"; \
	  nice -n 19 "./$(BUILD)/fuzzer,address/tests/fuzz_$$t" \
	    $(BUILD)/fuzz-work/$$t tests/fuzz/corpus/$$t \
	    -runs=$(FUZZ_RUNS) -max_len=4096 -timeout=10 \
	    -rss_limit_mb=2048 -print_final_stats=1 \
	    -artifact_prefix=$(BUILD)/fuzz-work/$$t-; done

# The integration suite runs its files on parallel workers (IT_JOBS).
TEST_PKGS  += python3-pytest-xdist


# What one broadcast costs the server (allocations and CPU), HTTP and
# AMQP paths (bench/broadcast_cost.py; needs RabbitMQ for the second).
.PHONY: bench-cost bench-workers
$(BUILD)/malloc_count.so: bench/tools/malloc_count.c
	$(Q)$(CC) -O2 -shared -fPIC -o $@ $< -pthread
bench-cost: $(OUT)/bagou-server $(BUILD)/malloc_count.so
	$(Q)BAGOU_BIN=$(abspath $(OUT)/bagou-server) nice \
	  /usr/bin/python3 bench/broadcast_cost.py

# --workers 16 against --workers 2 on the many-channel load (issue 12,
# item 2): deliveries/s and server CPU per delivery, interleaved rounds.
bench-workers: $(OUT)/bagou-server $(OUT)/bagou-bench
	$(Q)BAGOU_BIN=$(abspath $(OUT)/bagou-server) \
	  BAGOU_BENCH=$(abspath $(OUT)/bagou-bench) \
	  /usr/bin/python3 bench/workers.py


# History (issue 10), the long run: 1,000 clients reconnecting at once to
# another node after theirs was SIGKILLed, and a three-node RabbitMQ
# cluster losing a broker node while clients resume (tests/integration/
# test_history_long.py; sized by HISTORY_LONG_CLIENTS, _RATE, _MISSED).
# About a minute on the plain build; part of make test.
test: test-history-long
.PHONY: test-history-long
test-history-long: $(OUT)/bagou-server
	cd tests/integration && HISTORY_LONG_RUN=1 \
	  BAGOU_BIN=$(abspath $(OUT)/bagou-server) nice /usr/bin/python3 -m pytest \
	  -q -s -p no:cacheprovider test_history_long.py


# ---------------------------------------------------------------- peers
# Bagou beside uWebSockets.js, node ws, Socket.IO and a Tornado+Pika server
# built as the original Bagou was (docs/BENCHMARKS.md; about 12 min). The
# node peers come from npm at the versions of bench/peers/package-lock.json,
# installed into build/peers; Tornado, Pika and RabbitMQ from Debian. Not
# part of make test. BENCH_PEERS_ARGS: environment for bench/peers/run.py,
# e.g. make bench-peers BENCH_PEERS_ARGS="QUICK=1" (a one-minute check).
PEERS_DIR := $(BUILD)/peers
.PHONY: bench-peers bench-peers-deps

bench-peers-deps: test-packages
	$(call apt_install,python3-tornado)
	$(Q)command -v node >/dev/null && command -v npm >/dev/null || \
	  $(MAKE) --no-print-directory js-packages
	$(Q)mkdir -p $(PEERS_DIR) && \
	  cp -p bench/peers/package.json bench/peers/package-lock.json \
	    $(PEERS_DIR)/ && cd $(PEERS_DIR) && \
	  { [ -d node_modules ] && \
	    [ node_modules/.package-lock.json -nt package-lock.json ] || \
	    npm ci --no-audit --no-fund --ignore-scripts --loglevel=error; }

bench-peers: deps all bench-peers-deps
	$(Q)env BAGOU_BIN=$(abspath $(OUT)/bagou-server) \
	  BAGOU_BENCH=$(abspath $(OUT)/bagou-bench) \
	  PEERS_MODULES=$(abspath $(PEERS_DIR))/node_modules \
	  $(BENCH_PEERS_ARGS) /usr/bin/python3 bench/peers/run.py


# Presence at scale (tests/integration/presence_long.py, run by `make
# test` after the other suites): 10,000 members (PRESENCE_MEMBERS) in one
# presence channel on three nodes and one RabbitMQ; prints convergence
# and node-death times and memory per member. About 30 s on an idle
# 2-core machine (50 million join frames read by the test client).
test: test-presence-long
.PHONY: test-presence-long bench-presence
test-presence-long: $(OUT)/bagou-server
	$(Q)BAGOU_BIN=$(abspath $(OUT)/bagou-server) nice /usr/bin/python3 \
	  -m pytest -s -q -p no:cacheprovider \
	  tests/integration/presence_long.py

# What presence costs on subscribe/unsubscribe (bench/presence_cost.py).
bench-presence: $(OUT)/bagou-server
	$(Q)BAGOU_BIN=$(abspath $(OUT)/bagou-server) nice /usr/bin/python3 \
	  bench/presence_cost.py


# The layering of docs/DESIGN.md: handlers/ sees the server only through
# handlers/bagou_handler.h, amqp/ only through the bus sink; neither
# includes server/ (nor each other), common/ includes only common/.
.PHONY: check-includes
check-includes:
	$(Q)sh tests/check_includes.sh

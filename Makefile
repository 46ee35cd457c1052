# eas-kcd-proxy — GNU make, pkg-config, no autotools.
#
#   make            release build: build/eas-kcd-proxy, build/libeaskcdproxy.a,
#                   build/libeaskcdproxy.so, build/eas-kcd-proxy.pc
#   make examples   build/examples/mdm-gateway (the embedding example)
#   make install    PREFIX=/usr/local (DESTDIR too): binary, library, header,
#                   pkg-config file, man pages, example config, systemd unit
#   make check      bootstrap if needed, sanitizer build, unit + integration tests
#   make demo       local lab + proxy + a device's requests
#   make fuzz       libFuzzer targets (clang)
#   make bench      load generator + side-by-side runs against nginx
#   make clean
#
# BUILD=dir puts every output under another directory (parallel work trees).

BUILD    ?= build
SAN      := $(BUILD)/san
PYTHON   ?= /usr/bin/python3
CC       ?= cc
VERSION  := $(shell cat VERSION 2>/dev/null || echo 0.0.0)

# MIT krb5 has no run-time version call: `-V` shows the version built against.
KRB5_VERSION := $(shell pkg-config --modversion krb5 2>/dev/null || echo unknown)

PKGS     := openssl krb5-gssapi krb5 libevent libevent_openssl libevent_pthreads ldap lber inih
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lpthread

WARN     := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
            -Wformat=2 -Wno-format-nonliteral -Wvla
BASE_CFLAGS := -std=c11 -D_GNU_SOURCE -DEKP_VERSION='"$(VERSION)"' \
            -DEKP_KRB5_VERSION='"$(KRB5_VERSION)"' -Isrc -Iinclude \
            $(WARN) $(PKG_CFLAGS) -fPIC
OPT_CFLAGS  := -O2 -g -D_FORTIFY_SOURCE=2 -fstack-protector-strong
SAN_CFLAGS  := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined \
               -fno-sanitize-recover=undefined
SAN_LDFLAGS := -fsanitize=address,undefined
LDFLAGS_HARDEN := -Wl,-z,relro,-z,now

# Every src/*.c but the daemon's main() is the library; new modules need no
# Makefile edit.
LIB_SRCS  := $(filter-out src/main.c,$(wildcard src/*.c))
UNIT_SRCS := $(wildcard tests/unit/test_*.c)
TOOL_SRCS := $(wildcard tests/tools/*.c)
FUZZ_SRCS := $(wildcard tests/fuzz/fuzz_*.c)
HDRS      := $(wildcard src/*.h src/tbl/*.h include/*.h)

REL_OBJS  := $(LIB_SRCS:src/%.c=$(BUILD)/obj/%.o)
SAN_OBJS  := $(LIB_SRCS:src/%.c=$(SAN)/obj/%.o)
UNIT_BINS := $(UNIT_SRCS:tests/unit/%.c=$(SAN)/tests/%)
TOOL_BINS := $(TOOL_SRCS:tests/tools/%.c=$(SAN)/tools/%)

.PHONY: all check unit integration demo fuzz clean bootstrap san tools bench examples install
.DELETE_ON_ERROR:

# The shared library exports only the public API (include/eas_kcd_proxy.h):
# the version script keeps every other symbol local. Its soname carries
# EAS_KCD_PROXY_ABI_VERSION.
ABI       := $(shell sed -n 's/^\#define EAS_KCD_PROXY_ABI_VERSION[[:space:]]*//p' include/eas_kcd_proxy.h)
SONAME    := libeaskcdproxy.so.$(ABI)
SO_MAP    := src/libeaskcdproxy.map
EXAMPLE_SRCS := $(wildcard examples/*.c)

all: $(BUILD)/eas-kcd-proxy $(BUILD)/libeaskcdproxy.a $(BUILD)/libeaskcdproxy.so \
	$(BUILD)/eas-kcd-proxy.pc

bootstrap:
	@scripts/bootstrap --check 2>/dev/null || scripts/bootstrap

# ---- release build -------------------------------------------------------
$(BUILD)/obj/%.o: src/%.c $(HDRS) | $(BUILD)/obj
	$(CC) $(BASE_CFLAGS) $(OPT_CFLAGS) $(CFLAGS) -c -o $@ $<

$(BUILD)/libeaskcdproxy.a: $(REL_OBJS)
	rm -f $@ && ar rcs $@ $^

$(BUILD)/eas-kcd-proxy: src/main.c $(BUILD)/libeaskcdproxy.a $(HDRS)
	$(CC) $(BASE_CFLAGS) $(OPT_CFLAGS) $(CFLAGS) -o $@ src/main.c \
		$(BUILD)/libeaskcdproxy.a $(PKG_LIBS) $(LDFLAGS_HARDEN) $(LDFLAGS)

# the same -fPIC objects as the .a
$(BUILD)/$(SONAME): $(REL_OBJS) $(SO_MAP)
	$(CC) -shared -o $@ -Wl,-soname,$(SONAME) -Wl,--version-script=$(SO_MAP) \
		-Wl,--no-undefined $(REL_OBJS) $(PKG_LIBS) $(LDFLAGS_HARDEN) $(LDFLAGS)

$(BUILD)/libeaskcdproxy.so: $(BUILD)/$(SONAME)
	ln -sf $(SONAME) $@

$(BUILD)/eas-kcd-proxy.pc: eas-kcd-proxy.pc.in VERSION | $(BUILD)/obj
	sed -e 's|@PREFIX@|$(abspath $(PREFIX))|' -e 's|@VERSION@|$(VERSION)|' $< > $@

# ---- examples (docs/embedding.md) ---------------------------------------------
# Linked against the shared library, the way a vendor links it.
examples: $(EXAMPLE_SRCS:examples/%.c=$(BUILD)/examples/%)

$(BUILD)/examples/%: examples/%.c $(BUILD)/libeaskcdproxy.so include/eas_kcd_proxy.h | $(BUILD)/examples
	$(CC) -std=c11 -D_GNU_SOURCE $(WARN) $(OPT_CFLAGS) $(CFLAGS) -Iinclude \
		$(shell pkg-config --cflags libevent) -o $@ $< -L$(BUILD) -leaskcdproxy \
		-Wl,-rpath,$(abspath $(BUILD)) $(shell pkg-config --libs libevent) $(LDFLAGS)

# ---- install --------------------------------------------------------------------
PREFIX  ?= /usr/local
DESTDIR ?=
IDIR    := $(DESTDIR)$(abspath $(PREFIX))
MANS    := $(wildcard docs/*.[1-8])

install: all
	install -d $(IDIR)/sbin $(IDIR)/lib/pkgconfig $(IDIR)/include \
		$(IDIR)/share/doc/eas-kcd-proxy/examples $(IDIR)/lib/systemd/system
	install -m 0755 $(BUILD)/eas-kcd-proxy $(IDIR)/sbin/eas-kcd-proxy
	install -m 0644 $(BUILD)/libeaskcdproxy.a $(IDIR)/lib/libeaskcdproxy.a
	install -m 0755 $(BUILD)/$(SONAME) $(IDIR)/lib/$(SONAME)
	ln -sf $(SONAME) $(IDIR)/lib/libeaskcdproxy.so
	install -m 0644 include/eas_kcd_proxy.h $(IDIR)/include/eas_kcd_proxy.h
	sed -e 's|@PREFIX@|$(abspath $(PREFIX))|' -e 's|@VERSION@|$(VERSION)|' \
		eas-kcd-proxy.pc.in > $(IDIR)/lib/pkgconfig/eas-kcd-proxy.pc
	install -m 0644 eas-kcd-proxy.conf.example README.md docs/*.md \
		$(IDIR)/share/doc/eas-kcd-proxy/
	install -m 0644 $(EXAMPLE_SRCS) $(IDIR)/share/doc/eas-kcd-proxy/examples/
	sed -e 's|/usr/local/|$(abspath $(PREFIX))/|g' conf/eas-kcd-proxy.service \
		> $(IDIR)/lib/systemd/system/eas-kcd-proxy.service
	for m in $(MANS); do \
		s=$${m##*.}; install -d $(IDIR)/share/man/man$$s && \
		install -m 0644 $$m $(IDIR)/share/man/man$$s/ || exit 1; \
	done

# ---- sanitizer build (what make check runs) ------------------------------
SAN_EXAMPLES := $(EXAMPLE_SRCS:examples/%.c=$(SAN)/examples/%)

san: $(SAN)/eas-kcd-proxy $(UNIT_BINS) $(TOOL_BINS) $(SAN_EXAMPLES)

$(SAN)/obj/%.o: src/%.c $(HDRS) | $(SAN)/obj
	$(CC) $(BASE_CFLAGS) $(SAN_CFLAGS) -c -o $@ $<

$(SAN)/libeaskcdproxy.a: $(SAN_OBJS)
	rm -f $@ && ar rcs $@ $^

$(SAN)/eas-kcd-proxy: src/main.c $(SAN)/libeaskcdproxy.a $(HDRS)
	$(CC) $(BASE_CFLAGS) $(SAN_CFLAGS) -o $@ src/main.c \
		$(SAN)/libeaskcdproxy.a $(PKG_LIBS) $(SAN_LDFLAGS)

$(SAN)/tests/%: tests/unit/%.c $(SAN)/libeaskcdproxy.a $(HDRS) | $(SAN)/tests
	$(CC) $(BASE_CFLAGS) $(SAN_CFLAGS) -Itests/unit -o $@ $< \
		$(SAN)/libeaskcdproxy.a $(PKG_LIBS) -lcmocka $(SAN_LDFLAGS)

$(SAN)/tools/%: tests/tools/%.c $(SAN)/libeaskcdproxy.a $(HDRS) | $(SAN)/tools
	$(CC) $(BASE_CFLAGS) $(SAN_CFLAGS) -o $@ $< \
		$(SAN)/libeaskcdproxy.a $(PKG_LIBS) $(SAN_LDFLAGS)

# the examples under the sanitizers, linked statically (tests drive them)
$(SAN)/examples/%: examples/%.c $(SAN)/libeaskcdproxy.a $(HDRS) | $(SAN)/examples
	$(CC) -std=c11 -D_GNU_SOURCE $(WARN) $(SAN_CFLAGS) -Iinclude $(PKG_CFLAGS) -o $@ $< \
		$(SAN)/libeaskcdproxy.a $(PKG_LIBS) $(SAN_LDFLAGS)

$(BUILD)/obj $(SAN)/obj $(SAN)/tests $(SAN)/tools $(BUILD)/fuzz $(BUILD)/examples $(SAN)/examples:
	mkdir -p $@

# ---- tests ---------------------------------------------------------------
check: bootstrap
	$(MAKE) --no-print-directory all san
	$(PYTHON) tests/run.py --build $(BUILD)

unit: san
	$(PYTHON) tests/run.py --build $(BUILD) --unit-only

integration: san
	$(PYTHON) tests/run.py --build $(BUILD) --integration-only

# ---- fuzzing (clang + libFuzzer) -----------------------------------------
FUZZ_CFLAGS := -O1 -g -fsanitize=fuzzer,address,undefined
fuzz: bootstrap
	@mkdir -p $(BUILD)/fuzz
	@for f in $(FUZZ_SRCS); do \
		n=$$(basename $$f .c); \
		echo "  FUZZ $$n"; \
		clang -std=c11 -D_GNU_SOURCE -DEKP_FUZZ -DEKP_VERSION='"$(VERSION)"' -Isrc -Iinclude $(PKG_CFLAGS) \
			$(FUZZ_CFLAGS) -o $(BUILD)/fuzz/$$n $$f $(LIB_SRCS) $(PKG_LIBS) || exit 1; \
	done
	@echo "fuzz targets in $(BUILD)/fuzz; run e.g. $(BUILD)/fuzz/fuzz_http -max_total_time=60 tests/fuzz/corpus/http"

# ---- benchmarks (docs/performance.md; not part of make check) ------------
# build/eas-loadgen: the device-fleet load generator, release flags. The
# sanitizer copy for the smoke test is tests/tools/eas_loadgen.c, which
# includes the same source.
BENCH_SRCS := $(wildcard tests/bench/*.c)

$(BUILD)/eas-loadgen: $(BENCH_SRCS) | $(BUILD)/obj
	$(CC) $(BASE_CFLAGS) $(OPT_CFLAGS) $(CFLAGS) -o $@ $(BENCH_SRCS) \
		$(PKG_LIBS) $(LDFLAGS_HARDEN) $(LDFLAGS)

$(SAN)/tools/eas_loadgen: $(BENCH_SRCS)

bench: bootstrap all $(BUILD)/eas-loadgen
	$(PYTHON) tests/bench/run.py --build $(BUILD)

# ---- demo ----------------------------------------------------------------
demo: bootstrap all
	$(PYTHON) scripts/demo.py --build $(BUILD) $(if $(DEMO_ONCE),--once)

clean:
	rm -rf $(BUILD)

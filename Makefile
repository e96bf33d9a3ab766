# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= etc/mailapp.toml
STAMP := $(VENV)/.installed
SOURCES := pyproject.toml $(shell find mailapp twisted -name '*.py' 2>/dev/null)

.PHONY: install run check test bench clean test-packages

install: $(STAMP) test-packages

# The tests drive real peers from Debian's packages: chromium (the webmail, through
# Playwright, whose own browser download is not used), swaks, mbsync (isync) and
# fetchmail, iproute2 for the network-namespace rig, opendkim-tools (an
# independent DKIM verifier), rspamd with redis-server (the content scanner
# and its Bayes store, started on loopback by the spam tests), and postfix (an MTA
# delivering into mailapp over LMTP, a private instance the LMTP test starts and
# stops; the package's own service is not used), sieve-connect (a ManageSieve
# client). Installed here when a
# command is missing, as root (CI runs as root on a clean Debian machine); anyone
# else is told what to run. The packages' own services (postfix, rspamd,
# redis) are never started by the install (a policy-rc.d for its length, and
# postfix left unconfigured): the tests start private instances on loopback,
# and nothing else may listen on the machine's addresses.
TEST_PACKAGES := chromium:chromium swaks:swaks mbsync:isync fetchmail:fetchmail ip:iproute2 opendkim-testmsg:opendkim-tools rspamd:rspamd redis-server:redis-server postfix:postfix sieve-connect:sieve-connect
test-packages:
	@missing=""; for pair in $(TEST_PACKAGES); do \
	  command -v "$${pair%%:*}" >/dev/null 2>&1 || PATH="$$PATH:/usr/sbin:/sbin" command -v "$${pair%%:*}" >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian packages for the tests:$$missing"; \
	    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections 2>/dev/null; \
	    guard=""; if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && guard=1; fi; \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; status=$$?; \
	    if [ -n "$$guard" ]; then rm -f /usr/sbin/policy-rc.d; fi; \
	    [ $$status = 0 ] || exit $$status; \
	  else \
	    echo "the tests need Debian packages:$$missing: run 'sudo apt-get install$$missing' (or 'make install' as root)"; \
	    exit 1; \
	  fi; \
	fi

# A strict editable install: edits show at once, and twistd finds the dropin in
# twisted/plugins (a lenient editable install hides it from twistd). The stamp
# depends on the sources so that a new module is linked in on the next run.
# Then the bytecode, in both places the sources are imported from (the checkout,
# as the tests' servers run it, and the install's links, as twistd does): pip
# compiles what it installs but not an editable install's sources, and where
# PYTHONDONTWRITEBYTECODE is set (CI machines, containers) every server process,
# and each of its workers, would otherwise compile 140 modules at every start
# (0.3-0.5 s of a 1.3 s start).
$(STAMP): $(SOURCES)
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "mailapp needs Python 3.11 or newer: set PYTHON=/path/to/python3.11"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || \
	  { echo "could not create $(VENV): on Debian, run 'apt-get install python3-venv'"; exit 1; }
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q --config-settings editable_mode=strict -e '.[test]'
	@rm -f twisted/plugins/dropin.cache
	@$(BIN)/python -m compileall -q mailapp twisted/plugins "$$(cd / && $(abspath $(BIN))/python -c 'import mailapp, os; print(os.path.dirname(mailapp.__file__))')" >/dev/null
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/twistd -n --pidfile= mailapp --config $(CONFIG)

# The static checks, with the settings in pyproject.toml: mypy (with the
# mypy_zope plugin, strict but for the per-module debts listed there) and ruff.
# `make test` runs them first, so CI does.
check: $(STAMP)
	$(BIN)/mypy mailapp
	$(BIN)/ruff check mailapp tests

# pytest exits 5 when it collected nothing: that is a failure here, never a pass.
test: check test-packages
	$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "no tests were collected: failing"; exit 1; fi; exit $$rc

clean:
	rm -rf $(VENV) build *.egg-info twisted/plugins/dropin.cache

# A benchmark, not a test: run by hand, never by `make test` or CI.
# Pass options with BENCH_ARGS, e.g. make bench BENCH_ARGS="--workloads smtp-4k --runs 1".
bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)
